//! How a build uses the output cache (`cache::OutputCache`): the request that names a
//! stage to the cache, and the `Storer`, which stores the outputs of stages that ran on a
//! thread of its own, one stage after another, so that a stage's dependents never wait for
//! its store. Restores are the executor's (`StageJobs::restore`): they publish like a run.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::Project;
use super::portable::RanPortable;
use crate::cache::{ActionSource, CacheRequest, EntryMeta, Node, OutputCache, PublishedOutput};
use crate::fingerprint::{StageKey, StatCache};
use crate::state::OutputRecord;

/// The key a stage's outputs are cached under on this machine: its fingerprint and the
/// platform (`cache::cache_key`).
pub(crate) fn cache_key_of(key: &StageKey) -> String {
    crate::cache::cache_key(&key.fingerprint(), &crate::action::base_platform())
}

/// What a stage's cache entry says about it (`duration_ms`: how long it ran, when storing).
pub(super) fn entry_meta(project: &Project, stage: usize, duration_ms: Option<u64>) -> EntryMeta {
    let spec = &project.pipeline.stages[stage];
    EntryMeta {
        pipeline: project.pipeline.name.clone(),
        stage: spec.name.clone(),
        kind: spec.kind.kind().to_string(),
        platform: spec
            .kind
            .requirements()
            .platform(&project.stage_facts(stage)),
        duration_ms,
    }
}

/// Calls `f` with the cache request for a stage whose key is `key` (and whose portable
/// Action `action` builds, in a build with a remote server).
pub(super) fn with_request<T>(
    project: &Project,
    stage: usize,
    key: &StageKey,
    action: Option<&dyn ActionSource>,
    f: impl FnOnce(&CacheRequest) -> T,
) -> T {
    let cache_key = cache_key_of(key);
    let meta = entry_meta(project, stage, None);
    f(&CacheRequest {
        key: &cache_key,
        stage_key: key,
        meta: &meta,
        action,
    })
}

/// Tells the stat cache the digest of every file of a restored output at `path`, so that
/// publishing it does not read it again (the restore hashed every byte it wrote).
pub(super) fn remember_restored(stats: &StatCache, dir: &Path, path: &Path, node: &Node) {
    match node {
        Node::File(file) => {
            let _ = stats.remember_published(dir, path, &file.blake3);
        }
        Node::Dir { entries } => {
            for entry in entries {
                if let Some(file) = &entry.file {
                    let _ = stats.remember_published(dir, &path.join(&entry.path), &file.blake3);
                }
            }
        }
    }
}

/// One stage's published outputs, to be stored.
struct StoreJob {
    job: usize,
    key: String,
    stage_key: StageKey,
    meta: EntryMeta,
    /// (name, absolute path, recorded digest).
    outputs: Vec<(String, PathBuf, String)>,
    /// The portable Action that ran, in a build with a remote server.
    action: Option<RanPortable>,
}

/// Stores the outputs of stages that ran, in the background, in the order they finished.
pub(super) struct Storer {
    cache: Arc<dyn OutputCache>,
    queue: Mutex<Option<mpsc::Sender<StoreJob>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Warnings of failed stores, (job, message).
    warnings: Arc<Mutex<Vec<(usize, String)>>>,
    stored: Arc<AtomicBool>,
}

impl Storer {
    pub(super) fn new(cache: Arc<dyn OutputCache>) -> Storer {
        Storer {
            cache,
            queue: Mutex::new(None),
            thread: Mutex::new(None),
            warnings: Arc::new(Mutex::new(Vec::new())),
            stored: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Queues the outputs of `stage` (just published and recorded as `outputs`) for storing
    /// under `key` (and its portable Action `action`); the stage ran for `duration_ms`.
    pub(super) fn submit(
        &self,
        job: usize,
        (project, stage): (&Project, usize),
        (key, action): (&StageKey, Option<RanPortable>),
        outputs: &[OutputRecord],
        duration_ms: u64,
    ) {
        let store = StoreJob {
            action,
            job,
            key: cache_key_of(key),
            stage_key: key.clone(),
            meta: entry_meta(project, stage, Some(duration_ms)),
            outputs: outputs
                .iter()
                .map(|o| {
                    let path = project.pipeline.dir.join(&o.path);
                    (o.key.clone(), path, o.digest.clone())
                })
                .collect(),
        };
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if queue.is_none() {
            *queue = self.start();
        }
        let unsent = match queue.as_ref() {
            Some(sender) => sender.send(store).err().map(|e| e.0),
            None => Some(store),
        };
        // No thread (it could not start): store here instead.
        if let Some(store) = unsent {
            store_one(self.cache.as_ref(), &store, &self.warnings, &self.stored);
        }
    }

    fn start(&self) -> Option<mpsc::Sender<StoreJob>> {
        let (sender, receiver) = mpsc::channel::<StoreJob>();
        let cache = Arc::clone(&self.cache);
        let warnings = Arc::clone(&self.warnings);
        let stored = Arc::clone(&self.stored);
        let thread = std::thread::Builder::new()
            .name("pochi-cache-store".into())
            .spawn(move || {
                for store in receiver {
                    store_one(cache.as_ref(), &store, &warnings, &stored);
                }
            })
            .ok()?;
        *self.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(thread);
        Some(sender)
    }

    /// Waits for the queued stores; returns their warnings and whether anything was stored.
    pub(super) fn finish(&self) -> (Vec<(usize, String)>, bool) {
        drop(self.queue.lock().unwrap_or_else(|e| e.into_inner()).take());
        if let Some(thread) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = thread.join();
        }
        let warnings =
            std::mem::take(&mut *self.warnings.lock().unwrap_or_else(|e| e.into_inner()));
        (warnings, self.stored.load(Ordering::Relaxed))
    }
}

fn store_one(
    cache: &dyn OutputCache,
    store: &StoreJob,
    warnings: &Mutex<Vec<(usize, String)>>,
    stored: &AtomicBool,
) {
    let outputs: Vec<PublishedOutput> = store
        .outputs
        .iter()
        .map(|(name, path, digest)| PublishedOutput { name, path, digest })
        .collect();
    let request = CacheRequest {
        key: &store.key,
        stage_key: &store.stage_key,
        meta: &store.meta,
        action: store.action.as_ref().map(|a| a as &dyn ActionSource),
    };
    // Even a failed store may have added blobs: the size limit is checked either way.
    stored.store(true, Ordering::Relaxed);
    if let Err(error) = cache.store(&request, &outputs) {
        warnings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((store.job, error.to_string()));
    }
}
