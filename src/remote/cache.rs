//! `RemoteCache`: what a build asks of a shared cache, on either backend. `lookup` reads a
//! stage's entry, checks that every blob it names is still in the store
//! (FindMissingBlobs, or HEAD over HTTP) and downloads the outputs, verified; `upload`
//! sends the blobs the store lacks, then the Action's own messages, and the entry last, so
//! a failed upload never leaves an entry behind. The first failure that says the server is
//! unusable (unreachable, timed out, refused) takes it out of the rest of the build:
//! later calls answer `RemoteError::Down` at once instead of waiting for their timeouts.

use std::path::PathBuf;
use std::sync::Mutex;

use super::action::Blob;
use super::digest::{Digest, DigestFunction};
use super::endpoint::Endpoint;
use super::error::RemoteError;
use super::results::{Downloaded, RemoteMiss, action_result, download_result};
use super::stage::StageAction;
use super::{CacheBackend, connect};
use crate::cache::{Entry, FileRecord};

/// What a lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The outputs were downloaded and verified.
    Hit(Downloaded),
    Miss(RemoteMiss),
}

/// What an upload sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Uploaded {
    /// Blobs the server lacked, and their bytes.
    pub blobs: u64,
    pub bytes: u64,
}

/// A remote cache for one build. Safe to share between the build's threads.
pub struct RemoteCache {
    backend: Box<dyn CacheBackend>,
    read_only: bool,
    /// Why the server is out of this build, once it is.
    down: Mutex<Option<String>>,
}

impl RemoteCache {
    /// A cache at `endpoint` (nothing is dialed before the first call). A read-only cache
    /// never uploads.
    pub fn connect(endpoint: &Endpoint, read_only: bool) -> Result<RemoteCache, RemoteError> {
        Ok(RemoteCache::over(connect(endpoint)?, read_only))
    }

    /// A cache over a backend already made.
    pub fn over(backend: Box<dyn CacheBackend>, read_only: bool) -> RemoteCache {
        RemoteCache {
            backend,
            read_only,
            down: Mutex::new(None),
        }
    }

    pub fn endpoint(&self) -> &Endpoint {
        self.backend.endpoint()
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The digest function of the server (BLAKE3 where its Capabilities offer it, else
    /// SHA-256); the first call asks the server.
    pub fn digest_function(&self) -> Result<DigestFunction, RemoteError> {
        self.guarded(|| self.backend.digest_function())
    }

    /// Asks the server what it supports: an answer means it is there and usable.
    pub fn check(&self) -> Result<(), RemoteError> {
        self.guarded(|| self.backend.capabilities().map(|_| ()))
    }

    /// Looks up a stage's entry and, when it is usable, downloads output `name` to
    /// `dest_for(name)`. A missing, mismatched or damaged entry is a `Miss`, never an error.
    pub fn lookup(
        &self,
        stage: &StageAction,
        dest_for: &dyn Fn(&str) -> PathBuf,
    ) -> Result<Lookup, RemoteError> {
        self.guarded(|| {
            let Some(result) = self.backend.get_action_result(&stage.digest)? else {
                return Ok(Lookup::Miss(RemoteMiss::NoEntry));
            };
            Ok(
                match download_result(&*self.backend, stage, &result, dest_for)? {
                    Ok(done) => Lookup::Hit(done),
                    Err(miss) => Lookup::Miss(miss),
                },
            )
        })
    }

    /// Stores a stage's outputs under its Action: `entry` is the local cache's entry for
    /// the declared ones, `blob_path(file)` a file holding each blob's bytes (the local
    /// cache's copy, which nobody edits), and `other_outputs` the Action's other outputs
    /// with their bytes (a script's answer file). Blobs first, the Action's messages
    /// next, the entry last.
    pub fn upload(
        &self,
        stage: &StageAction,
        entry: &Entry,
        blob_path: &dyn Fn(&FileRecord) -> PathBuf,
        other_outputs: &[(String, Vec<u8>)],
    ) -> Result<Uploaded, RemoteError> {
        if self.read_only {
            return Ok(Uploaded::default());
        }
        self.guarded(|| {
            let upload = action_result(stage, entry, other_outputs)?;
            let messages: Vec<_> = stage
                .blobs
                .iter()
                .chain(&upload.from_memory)
                .cloned()
                .collect();
            let mut wanted: Vec<Digest> = upload.files.iter().map(|(d, _)| d.clone()).collect();
            wanted.extend(messages.iter().map(|b| b.digest.clone()));
            let missing = self.backend.find_missing(&wanted)?;
            let mut sent = Uploaded::default();
            let mut done: Vec<&Digest> = Vec::new();
            for (digest, file) in &upload.files {
                if missing.contains(digest) && !done.contains(&digest) {
                    self.backend.upload_file(&blob_path(file), digest)?;
                    done.push(digest);
                    sent.blobs += 1;
                    sent.bytes += digest.size();
                }
            }
            let mut small: Vec<Blob> = Vec::new();
            for blob in messages {
                // Two output directories may hold the same directory: sent once.
                if missing.contains(&blob.digest) && !small.iter().any(|b| b.digest == blob.digest)
                {
                    small.push(blob);
                }
            }
            sent.blobs += small.len() as u64;
            sent.bytes += small.iter().map(|b| b.digest.size()).sum::<u64>();
            self.backend.upload_blobs(&small)?;
            self.backend
                .update_action_result(&stage.digest, &upload.result)?;
            Ok(sent)
        })
    }

    /// Runs a call unless the server is out of the build; takes it out when the call
    /// says it is unusable.
    fn guarded<T>(&self, call: impl FnOnce() -> Result<T, RemoteError>) -> Result<T, RemoteError> {
        if let Some(first) = self.down.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            return Err(RemoteError::Down {
                endpoint: self.endpoint().to_string(),
                first,
            });
        }
        let result = call();
        if let Err(error) = &result
            && takes_the_server_out(error)
        {
            let mut down = self.down.lock().unwrap_or_else(|e| e.into_inner());
            down.get_or_insert_with(|| error.to_string());
        }
        result
    }
}

/// Whether an error means later calls would fail too (rather than one blob or one entry
/// being bad).
fn takes_the_server_out(error: &RemoteError) -> bool {
    matches!(
        error,
        RemoteError::Unreachable { .. }
            | RemoteError::Timeout { .. }
            | RemoteError::Stalled { .. }
            | RemoteError::PermissionDenied { .. }
            | RemoteError::ServerCertificate { .. }
            | RemoteError::ClientCertificate { .. }
            | RemoteError::UnsupportedDigestFunction { .. }
            | RemoteError::Runtime(_)
    )
}
