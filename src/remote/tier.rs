//! The remote tier of a build's cache (`cache::OutputCache`): after a local miss it looks
//! the stage up on the remote server and downloads its outputs, verified; after a stage
//! ran it uploads the outputs the local store just took (read from the local store's
//! immutable copies) on a background thread, so the build does not wait for the network
//! until its end (`finish_build`).
//!
//! The stage's REAPI Action is the one its remote execution runs: the seam hands over
//! the stage's portable Action (`CacheRequest::action`, built by the driver once per
//! run), and the tier digests it under the server's function (SHA-256 unless the server
//! offers BLAKE3). An entry a farm wrote when it executed the stage answers a lookup, and
//! an entry uploaded after a local run answers the farm's own lookup; the upload carries
//! the Action's other outputs (a script's answer file) beside the declared ones.
//!
//! A server that fails costs one warning (a lookup's through the executor, which warns of
//! a `Miss::Remote`; an upload's from `finish_build`) and the rest of the build runs
//! locally; `failure` tells the command line whether it failed, for
//! `--remote-cache-required`.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::cache::{Lookup, RemoteCache};
use super::error::RemoteError;
use super::stage::{StageAction, stage_action};
use crate::cache::{
    BuildStats, CacheRequest, LocalCache, Miss, Origin, OutputCache, PublishedOutput, Restored,
    StoreError,
};

/// Why the tier has no Action for a request.
enum NoAction {
    /// The request carries none (a build without portable Actions).
    NotGiven,
    /// It could not be built here (an input unreadable...): this stage only.
    Local(String),
    /// The server failed (its Capabilities).
    Server(RemoteError),
}

/// What the background uploader is given: a stage's Action, its local entry's key and
/// the Action's other outputs.
struct UploadJob {
    action: StageAction,
    key: String,
    stage: String,
    other_outputs: Vec<(String, Vec<u8>)>,
}

/// The remote tier: a `RemoteCache` and the local store it reads uploads from and keeps
/// downloads in.
pub(crate) struct RemoteTier {
    inner: Arc<Inner>,
    uploads: Mutex<Option<(mpsc::Sender<UploadJob>, JoinHandle<()>)>>,
}

struct Inner {
    remote: RemoteCache,
    local: LocalCache,
    /// What went wrong, once per kind of failure, for `finish_build`.
    warnings: Mutex<Vec<String>>,
    /// The first failure of the server, for `--remote-cache-required`.
    failure: Mutex<Option<String>>,
}

impl std::fmt::Debug for RemoteTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteTier")
            .field("endpoint", &self.inner.remote.endpoint().to_string())
            .finish()
    }
}

impl RemoteTier {
    /// A tier over `remote`; `local` is the build's local store.
    pub(crate) fn new(remote: RemoteCache, local: LocalCache) -> Self {
        RemoteTier {
            inner: Arc::new(Inner {
                remote,
                local,
                warnings: Mutex::new(Vec::new()),
                failure: Mutex::new(None),
            }),
            uploads: Mutex::new(None),
        }
    }

    /// The first time the server failed in this build, if it did.
    pub(crate) fn failure(&self) -> Option<String> {
        self.inner
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn origin(&self) -> Origin {
        Origin::remote(self.inner.remote.endpoint().to_string())
    }

    /// Queues an upload, starting the uploader thread on first use.
    fn queue(&self, job: UploadJob) {
        let sender = {
            let mut uploads = self.uploads.lock().unwrap_or_else(|e| e.into_inner());
            let (sender, _) = uploads.get_or_insert_with(|| {
                let (sender, receiver) = mpsc::channel::<UploadJob>();
                let inner = Arc::clone(&self.inner);
                let handle = std::thread::spawn(move || {
                    for job in receiver {
                        inner.upload(&job);
                    }
                });
                (sender, handle)
            });
            sender.clone()
        };
        // The uploader is gone (it panicked): upload here, without holding the lock.
        if let Err(mpsc::SendError(job)) = sender.send(job) {
            self.inner.upload(&job);
        }
    }

    /// Waits for the queued uploads (each bounded by the endpoint's timeouts).
    fn wait_for_uploads(&self) {
        let taken = self
            .uploads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some((sender, handle)) = taken {
            drop(sender);
            if handle.join().is_err() {
                self.inner
                    .warn("the remote cache's uploader stopped unexpectedly".into());
            }
        }
    }
}

impl Inner {
    /// Records a failure of the server as the first one, for `failure` (a server that
    /// went down is told once: later calls answer `Down`); returns its text.
    fn failed(&self, what: &str, error: &RemoteError) -> Option<String> {
        if let RemoteError::Down { .. } = error {
            return None;
        }
        let text = format!("remote cache {}: {what}: {error}", self.remote.endpoint());
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert_with(|| text.clone());
        Some(text)
    }

    fn warn(&self, text: String) {
        let mut warnings = self.warnings.lock().unwrap_or_else(|e| e.into_inner());
        if !warnings.contains(&text) {
            warnings.push(text);
        }
    }

    /// The stage's REAPI Action for this request, under the server's digest function.
    fn action(&self, request: &CacheRequest) -> Result<StageAction, NoAction> {
        let source = request.action.ok_or(NoAction::NotGiven)?;
        let portable = source.portable().map_err(NoAction::Local)?;
        let function = self.remote.digest_function().map_err(NoAction::Server)?;
        stage_action(function, portable).map_err(|e| NoAction::Local(e.to_string()))
    }

    /// Uploads one stage's outputs from the local store's copies.
    fn upload(&self, job: &UploadJob) {
        let entry = match self.local.lookup(&job.key) {
            Ok(entry) => entry,
            Err(miss) => {
                self.warn(format!(
                    "stage `{}` was not uploaded to the remote cache: its local entry is gone ({miss})",
                    job.stage
                ));
                return;
            }
        };
        let local = &self.local;
        let blob_path = |file: &crate::cache::FileRecord| local.blob_path(&file.blake3);
        match self
            .remote
            .upload(&job.action, &entry, &blob_path, &job.other_outputs)
        {
            Ok(_) => {}
            Err(error) => {
                if let Some(text) = self.failed(&format!("upload of stage `{}`", job.stage), &error)
                {
                    self.warn(text);
                }
            }
        }
    }
}

impl OutputCache for RemoteTier {
    fn may_have(&self, _request: &CacheRequest) -> bool {
        self.failure().is_none()
    }

    fn restore(
        &self,
        request: &CacheRequest,
        dest_for: &dyn Fn(&str) -> PathBuf,
    ) -> Result<Restored, Miss> {
        let inner = &self.inner;
        let found = match inner.action(request) {
            Ok(action) => inner.remote.lookup(&action, dest_for),
            Err(NoAction::NotGiven) => return Err(Miss::NoEntry),
            Err(NoAction::Local(why)) => return Err(Miss::Remote(why)),
            Err(NoAction::Server(error)) => Err(error),
        };
        match found {
            Ok(Lookup::Hit(done)) => {
                // Described (and kept) by the local store, which hashes every byte again.
                let outputs: Vec<(String, PathBuf)> = request
                    .stage_key
                    .outputs
                    .iter()
                    .map(|(name, _)| (name.clone(), dest_for(name)))
                    .collect();
                let pairs: Vec<(&str, &Path)> = outputs
                    .iter()
                    .map(|(n, p)| (n.as_str(), p.as_path()))
                    .collect();
                match inner.local.store(request.key, &pairs, request.meta) {
                    Ok(stored) => Ok(Restored {
                        entry: stored.entry,
                        origin: self.origin(),
                        files: done.files,
                        bytes: done.bytes,
                        reflinked: 0,
                    }),
                    Err(error) => Err(Miss::Remote(format!(
                        "downloaded, but the local cache cannot take it: {error}"
                    ))),
                }
            }
            // The executor warns of a notable miss (`Miss::Remote`), once per stage.
            Ok(Lookup::Miss(super::results::RemoteMiss::NoEntry)) => Err(Miss::NoEntry),
            Ok(Lookup::Miss(miss)) => Err(Miss::Remote(miss.to_string())),
            Err(error) => match inner.failed("lookup", &error) {
                Some(_) => Err(Miss::Remote(error.to_string())),
                // Already told: the server is out of this build.
                None => Err(Miss::NoEntry),
            },
        }
    }

    fn store(
        &self,
        request: &CacheRequest,
        _outputs: &[PublishedOutput],
    ) -> Result<(), StoreError> {
        if self.inner.remote.read_only() || self.failure().is_some() {
            return Ok(());
        }
        let endpoint = self.inner.remote.endpoint().to_string();
        if request.action.and_then(|a| a.executed_at()) == Some(endpoint.as_str()) {
            return Ok(());
        }
        let what = || format!("upload of stage `{}`", request.meta.stage);
        match self.inner.action(request) {
            Err(NoAction::NotGiven) => Ok(()),
            Err(NoAction::Local(why)) => {
                self.inner.warn(format!("{}: {why}", what()));
                Ok(())
            }
            Ok(action) => {
                self.queue(UploadJob {
                    action,
                    key: request.key.to_string(),
                    stage: request.meta.stage.clone(),
                    other_outputs: request
                        .action
                        .map(|source| source.other_outputs().to_vec())
                        .unwrap_or_default(),
                });
                Ok(())
            }
            Err(NoAction::Server(error)) => {
                if let Some(text) = self.inner.failed(&what(), &error) {
                    self.inner.warn(text);
                }
                Ok(())
            }
        }
    }

    fn finish_build(&self, _stats: &BuildStats, _stored: bool) -> Vec<String> {
        self.wait_for_uploads();
        std::mem::take(
            &mut *self
                .inner
                .warnings
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        )
    }
}
