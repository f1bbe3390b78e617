//! The remote tier of a build's cache (`cache::OutputCache`): after a local miss it looks
//! the stage up on the remote server and downloads its outputs, verified; after a stage
//! ran it uploads the outputs the local store just took (read from the local store's
//! immutable copies) on a background thread, so the build does not wait for the network
//! until its end (`finish_build`).
//!
//! The stage's REAPI Action is built from what the seam hands over (`CacheRequest`): the
//! Command from the stage key (for a `command` stage its `run` list with the declared
//! paths filled in; for the other kinds `pochi-stage KIND`, their parameters being in the
//! salt), its `env` and declared outputs; the input root from the key's inputs, read
//! from the project (SHA-256 unless the server offers BLAKE3); the platform from the
//! entry's metadata; and the cache key, which covers the fingerprint and the platform, as
//! the salt.
//!
//! A server that fails costs one warning (a lookup's through the executor, which warns of
//! a `Miss::Remote`; an upload's from `finish_build`) and the rest of the build runs
//! locally; `failure` tells the command line whether it failed, for
//! `--remote-cache-required`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::cache::{Lookup, RemoteCache};
use super::error::RemoteError;
use super::stage::{
    DigestMemo, StageAction, StageDescription, StageOutput, input_files, stage_action,
};
use crate::action::Action;
use crate::cache::{
    BuildStats, CacheRequest, LocalCache, Miss, Origin, OutputCache, PublishedOutput, Restored,
    StoreError,
};
use crate::fingerprint::StageKey;

/// What the background uploader is given: a stage's Action and its local entry's key.
struct UploadJob {
    action: StageAction,
    key: String,
    stage: String,
}

/// The remote tier: a `RemoteCache`, the local store it reads uploads from and keeps
/// downloads in, and the project directories its requests' input paths are relative to.
pub(crate) struct RemoteTier {
    inner: Arc<Inner>,
    uploads: Mutex<Option<(mpsc::Sender<UploadJob>, JoinHandle<()>)>>,
}

struct Inner {
    remote: RemoteCache,
    local: LocalCache,
    /// Pipeline (as `EntryMeta::pipeline` names it) -> its directory.
    dirs: BTreeMap<String, PathBuf>,
    memo: DigestMemo,
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
    /// A tier over `remote`; `local` is the build's local store, `dirs` each pipeline's
    /// directory by the name the entries' metadata give it.
    pub(crate) fn new(
        remote: RemoteCache,
        local: LocalCache,
        dirs: BTreeMap<String, PathBuf>,
    ) -> Self {
        RemoteTier {
            inner: Arc::new(Inner {
                remote,
                local,
                dirs,
                memo: DigestMemo::default(),
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

    /// The stage's REAPI Action for this request.
    fn action(&self, request: &CacheRequest) -> Result<StageAction, RemoteError> {
        let function = self.remote.digest_function()?;
        let key = request.stage_key;
        let outputs: Vec<StageOutput> = key
            .outputs
            .iter()
            .map(|(name, path)| StageOutput {
                name: name.clone(),
                path: slash_path(path),
                temp: PathBuf::new(),
            })
            .collect();
        let inputs = match self.dirs.get(&request.meta.pipeline) {
            Some(dir) => {
                let paths: Vec<PathBuf> = key.inputs.values().map(|i| i.path.clone()).collect();
                input_files(dir, &paths, function, &self.memo)?
            }
            None => Vec::new(),
        };
        let mut action = Action::new(command_line(key));
        action.platform.extend(request.meta.platform.clone());
        stage_action(
            function,
            &StageDescription {
                action: &action,
                env: &key.env,
                outputs: &outputs,
                rewrites: &[],
                inputs: &inputs,
                salt: request.key,
            },
        )
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
        match self
            .remote
            .upload(&job.action, &entry, &|file| local.blob_path(&file.blake3))
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

/// A path as REAPI writes them: `/`-separated.
fn slash_path(path: &Path) -> String {
    path.components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

/// The Command's arguments for a stage key: a `command` stage's `run` list with
/// `{inputs.K}` and `{outputs.K}` replaced by their paths; `pochi-stage KIND` otherwise.
fn command_line(key: &StageKey) -> Vec<String> {
    let run = key.params.get("run").and_then(|run| run.as_array());
    let (Some(run), "command") = (run, key.kind.as_str()) else {
        return vec!["pochi-stage".into(), key.kind.clone()];
    };
    let mut placeholders: Vec<(String, String)> = key
        .inputs
        .iter()
        .map(|(name, input)| (format!("{{inputs.{name}}}"), slash_path(&input.path)))
        .collect();
    placeholders.extend(
        key.outputs
            .iter()
            .map(|(name, path)| (format!("{{outputs.{name}}}"), slash_path(path))),
    );
    run.iter()
        .map(|argument| {
            let mut text = argument.as_str().unwrap_or_default().to_string();
            for (from, to) in &placeholders {
                text = text.replace(from, to);
            }
            text
        })
        .collect()
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
        let found = inner
            .action(request)
            .and_then(|action| inner.remote.lookup(&action, dest_for));
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
        match self.inner.action(request) {
            Ok(action) => {
                self.queue(UploadJob {
                    action,
                    key: request.key.to_string(),
                    stage: request.meta.stage.clone(),
                });
                Ok(())
            }
            Err(error) => {
                let what = format!("upload of stage `{}`", request.meta.stage);
                if let Some(text) = self.inner.failed(&what, &error) {
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
