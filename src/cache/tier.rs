//! The seam between a build and its caches: `OutputCache`, the blocking interface the
//! executor restores through before a stage runs and stores through after it ran; `Origin`,
//! where a hit came from (shown by `explain` and the run summary); the local store as a
//! tier; and `Tiered`, the local store first, then an optional remote tier.
//!
//! A remote tier implements `OutputCache` as well and is plugged in with
//! `Tiered::with_remote`: its hits come back with `Tier::Remote` and are copied into the
//! local store, so the next build restores them locally.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{BuildStats, EntryMeta, LocalCache, Miss, Restored};
use crate::action::PortableAction;
use crate::fingerprint::StageKey;

/// The kind of cache a restore came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Local,
    Remote,
}

/// Where a restore came from: the tier and its location.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Origin {
    pub tier: Tier,
    /// The local store's directory, or the remote cache's URL (without credentials).
    pub location: String,
}

impl Origin {
    pub fn local(root: &Path) -> Origin {
        Origin {
            tier: Tier::Local,
            location: root.display().to_string(),
        }
    }

    pub fn remote(url: impl Into<String>) -> Origin {
        Origin {
            tier: Tier::Remote,
            location: url.into(),
        }
    }
}

impl fmt::Display for Origin {
    /// `local: /home/me/.cache/pochi/v1`, `remote: grpcs://cache.example.com`.
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let tier = match self.tier {
            Tier::Local => "local",
            Tier::Remote => "remote",
        };
        write!(f, "{tier}: {}", self.location)
    }
}

/// One stage as the caches see it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CacheRequest<'a> {
    /// What its entries are stored under locally: `cache_key` of its fingerprint and
    /// platform.
    pub key: &'a str,
    /// The key the fingerprint was computed from: kind, parameters, inputs by digest,
    /// declared outputs, tool identity.
    pub stage_key: &'a StageKey,
    /// Pipeline, stage, kind, platform properties; when storing, how long the stage ran.
    pub meta: &'a EntryMeta,
    /// The stage's portable Action, which a remote tier looks up and stores under (none
    /// in a build without a remote server, and where only the local store asks).
    pub action: Option<&'a dyn ActionSource>,
}

/// A stage's portable Action, built the first time a tier asks for it (a restore the
/// local store answers never does), and what else the Action wrote.
pub(crate) trait ActionSource: fmt::Debug + Sync {
    /// The Action, or why it cannot be built.
    fn portable(&self) -> Result<&PortableAction, String>;
    /// The Action's outputs besides the declared ones, with their bytes (a script's
    /// answer file), for an upload; empty when restoring.
    fn other_outputs(&self) -> &[(String, Vec<u8>)] {
        &[]
    }
    /// The remote executor that ran the Action (its URL), which keeps the result in its
    /// own action cache: a tier on the same server has nothing to upload.
    fn executed_at(&self) -> Option<&str> {
        None
    }
}

/// An output a stage published, to be stored.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PublishedOutput<'a> {
    /// The output's name in the stage (`outputs.NAME`).
    pub name: &'a str,
    /// Where it was published.
    pub path: &'a Path,
    /// Its content digest as pochi recorded it: a store that reads other content (the
    /// output changed since) stores nothing.
    pub digest: &'a str,
}

/// Why a tier stored nothing. For the build, a warning: its outputs are published already.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[error("cannot store the outputs in the cache ({origin}): {message}")]
pub(crate) struct StoreError {
    pub origin: Origin,
    pub message: String,
}

/// A cache of stage outputs, as the executor uses it. Blocking: the engine is threads.
///
/// Promises every implementation keeps: a restore verifies every byte against its digest
/// and is a `Miss` (never an error, never a wrong output) when anything is missing or
/// damaged, leaving nothing at the destinations; a store writes the blobs first and the
/// entry last, so a partial store is never an entry; a failed stage is never stored (the
/// executor only stores outputs it verified and published).
pub(crate) trait OutputCache: Send + Sync + fmt::Debug {
    /// Cheap (no transfer): whether `restore` is worth trying. The local store looks for
    /// the entry's file; a remote tier may answer true and find out in `restore`.
    fn may_have(&self, request: &CacheRequest) -> bool;

    /// Writes the outputs stored under `request.key` at `dest_for(name)`, temporary paths
    /// of the caller, which publishes them.
    fn restore(
        &self,
        request: &CacheRequest,
        dest_for: &dyn Fn(&str) -> PathBuf,
    ) -> Result<Restored, Miss>;

    /// Stores the published outputs of a stage that ran and succeeded under `request.key`,
    /// replacing an earlier entry for it.
    fn store(&self, request: &CacheRequest, outputs: &[PublishedOutput]) -> Result<(), StoreError>;

    /// After a build: remembers its figures (for `pochi cache info`) and, when something
    /// was stored, keeps the store under its size limit. What went wrong, as warnings.
    fn finish_build(&self, stats: &BuildStats, stored: bool) -> Vec<String>;
}

/// The key a stage's outputs are cached under: its fingerprint and the platform it ran on
/// (`OSFamily`, `ISA`; an engine's GPU and TensorRT are in its parameters already), so a
/// store shared across machines never gives a Linux x86_64 output to another platform.
pub(crate) fn cache_key(fingerprint: &str, platform: &BTreeMap<String, String>) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"pochi-cache-key\n");
    hasher.update(&serde_json::to_vec(&(fingerprint, platform)).unwrap_or_default());
    hasher.finalize().to_hex().to_string()
}

/// An error with its causes, `a: b: c`.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl OutputCache for LocalCache {
    fn may_have(&self, request: &CacheRequest) -> bool {
        self.entry_path(request.key).is_file()
    }

    fn restore(
        &self,
        request: &CacheRequest,
        dest_for: &dyn Fn(&str) -> PathBuf,
    ) -> Result<Restored, Miss> {
        LocalCache::restore(self, request.key, dest_for)
    }

    fn store(&self, request: &CacheRequest, outputs: &[PublishedOutput]) -> Result<(), StoreError> {
        let pairs: Vec<(&str, &Path)> = outputs.iter().map(|o| (o.name, o.path)).collect();
        let expected: Vec<&str> = outputs.iter().map(|o| o.digest).collect();
        self.store_expecting(request.key, &pairs, &expected, request.meta)
            .map(|_| ())
            .map_err(|error| StoreError {
                origin: Origin::local(self.root()),
                message: with_causes(&error),
            })
    }

    fn finish_build(&self, stats: &BuildStats, stored: bool) -> Vec<String> {
        let mut warnings = Vec::new();
        let looked_up = stats.ran + stats.restored_local + stats.restored_remote;
        if looked_up > 0
            && let Err(error) = self.record_build_stats(stats)
        {
            warnings.push(format!(
                "cannot record the cache's figures of this build: {}",
                with_causes(&error)
            ));
        }
        if stored {
            match self.gc_if_over_limit() {
                Ok(Some(report)) => tracing::info!(
                    entries_removed = report.entries_removed,
                    bytes_freed = report.bytes_freed,
                    "cache trimmed to its size limit"
                ),
                Ok(None) => {}
                Err(error) => warnings.push(format!(
                    "cannot keep the cache under its size limit: {}",
                    with_causes(&error)
                )),
            }
        }
        warnings
    }
}

/// The local store first, then an optional remote tier (either may be absent).
#[derive(Debug, Clone, Default)]
pub(crate) struct Tiered {
    local: Option<LocalCache>,
    remote: Option<Arc<dyn OutputCache>>,
}

impl Tiered {
    /// The local store alone.
    pub(crate) fn local(cache: LocalCache) -> Tiered {
        Tiered {
            local: Some(cache),
            remote: None,
        }
    }

    /// The same tiers with `remote` asked after a local miss.
    pub(crate) fn with_remote(mut self, remote: Arc<dyn OutputCache>) -> Tiered {
        self.remote = Some(remote);
        self
    }

    /// The local store, if there is one.
    #[cfg(test)]
    pub(crate) fn local_store(&self) -> Option<&LocalCache> {
        self.local.as_ref()
    }

    /// Copies a remote hit into the local store (from its temporary paths), so the next
    /// build restores it locally. Only an optimization: a failure is logged.
    fn keep_locally(
        &self,
        request: &CacheRequest,
        hit: &Restored,
        dest_for: &dyn Fn(&str) -> PathBuf,
    ) {
        let Some(local) = &self.local else { return };
        // A remote tier that keeps its downloads in this store already (the REAPI tier
        // does, to describe them) needs no second store.
        if local
            .lookup(request.key)
            .is_ok_and(|entry| entry.outputs == hit.entry.outputs)
        {
            return;
        }
        let paths: Vec<(String, PathBuf)> = hit
            .entry
            .outputs
            .iter()
            .map(|o| (o.name.clone(), dest_for(&o.name)))
            .collect();
        let outputs: Vec<PublishedOutput> = hit
            .entry
            .outputs
            .iter()
            .zip(&paths)
            .map(|(record, (name, path))| PublishedOutput {
                name,
                path,
                digest: &record.digest,
            })
            .collect();
        if let Err(error) = OutputCache::store(local, request, &outputs) {
            tracing::warn!(%error, "a remote hit was not kept in the local cache");
        }
    }
}

/// The miss to report when every tier missed: a damaged local entry before a remote one.
fn worse(local: Option<Miss>, remote: Miss) -> Miss {
    match local {
        Some(local) if local.is_notable() => local,
        _ => remote,
    }
}

impl OutputCache for Tiered {
    fn may_have(&self, request: &CacheRequest) -> bool {
        self.local.as_ref().is_some_and(|l| l.may_have(request))
            || self.remote.as_ref().is_some_and(|r| r.may_have(request))
    }

    fn restore(
        &self,
        request: &CacheRequest,
        dest_for: &dyn Fn(&str) -> PathBuf,
    ) -> Result<Restored, Miss> {
        let local_miss = match &self.local {
            Some(local) => match OutputCache::restore(local, request, dest_for) {
                Ok(hit) => return Ok(hit),
                Err(miss) => Some(miss),
            },
            None => None,
        };
        let Some(remote) = &self.remote else {
            return Err(local_miss.unwrap_or(Miss::NoEntry));
        };
        match remote.restore(request, dest_for) {
            Ok(hit) => {
                self.keep_locally(request, &hit, dest_for);
                Ok(hit)
            }
            Err(remote_miss) => Err(worse(local_miss, remote_miss)),
        }
    }

    fn store(&self, request: &CacheRequest, outputs: &[PublishedOutput]) -> Result<(), StoreError> {
        let tiers = self
            .local
            .iter()
            .map(|l| l as &dyn OutputCache)
            .chain(self.remote.iter().map(|r| r.as_ref()));
        let mut failed: Option<StoreError> = None;
        for tier in tiers {
            let Err(error) = tier.store(request, outputs) else {
                continue;
            };
            failed = Some(match failed {
                None => error,
                Some(first) => StoreError {
                    message: format!(
                        "{}; and in {}: {}",
                        first.message, error.origin, error.message
                    ),
                    origin: first.origin,
                },
            });
        }
        failed.map_or(Ok(()), Err)
    }

    fn finish_build(&self, stats: &BuildStats, stored: bool) -> Vec<String> {
        let mut warnings = Vec::new();
        if let Some(local) = &self.local {
            warnings.extend(local.finish_build(stats, stored));
        }
        if let Some(remote) = &self.remote {
            warnings.extend(remote.finish_build(stats, stored));
        }
        warnings
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::KEY_FORMAT;

    /// A STAND-IN for a remote tier (a test double; the real one speaks REAPI): a second
    /// local store whose hits say `remote`, counting what it is asked to store.
    #[derive(Debug)]
    struct StandInRemote {
        store: LocalCache,
        stores: std::sync::atomic::AtomicU64,
    }

    impl OutputCache for StandInRemote {
        fn may_have(&self, request: &CacheRequest) -> bool {
            self.store.may_have(request)
        }
        fn restore(
            &self,
            request: &CacheRequest,
            dest_for: &dyn Fn(&str) -> PathBuf,
        ) -> Result<Restored, Miss> {
            let mut hit = OutputCache::restore(&self.store, request, dest_for)?;
            hit.origin = Origin::remote("grpc://stand-in");
            Ok(hit)
        }
        fn store(
            &self,
            request: &CacheRequest,
            outputs: &[PublishedOutput],
        ) -> Result<(), StoreError> {
            self.stores
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            OutputCache::store(&self.store, request, outputs)
        }
        fn finish_build(&self, _: &BuildStats, _: bool) -> Vec<String> {
            Vec::new()
        }
    }

    fn stage_key() -> StageKey {
        StageKey {
            format: KEY_FORMAT,
            kind: "command".into(),
            params: serde_json::json!({ "run": ["true"] }),
            outputs: vec![("out".into(), "out.bin".into())],
            device: "cpu".into(),
            env: BTreeMap::new(),
            inputs: BTreeMap::new(),
            needs: BTreeMap::new(),
            tool: None,
        }
    }

    struct Setup {
        dir: tempfile::TempDir,
        tiers: Tiered,
        remote: Arc<StandInRemote>,
        key: String,
        stage_key: StageKey,
        meta: EntryMeta,
    }

    impl Setup {
        fn new() -> Setup {
            let dir = tempfile::tempdir().unwrap();
            let remote = Arc::new(StandInRemote {
                store: LocalCache::at(&dir.path().join("remote")),
                stores: Default::default(),
            });
            let tiers = Tiered::local(LocalCache::at(&dir.path().join("local")))
                .with_remote(Arc::clone(&remote) as Arc<dyn OutputCache>);
            let stage_key = stage_key();
            Setup {
                key: cache_key(&stage_key.fingerprint(), &crate::action::base_platform()),
                dir,
                tiers,
                remote,
                stage_key,
                meta: EntryMeta::default(),
            }
        }

        fn request(&self) -> CacheRequest<'_> {
            CacheRequest {
                key: &self.key,
                stage_key: &self.stage_key,
                meta: &self.meta,
                action: None,
            }
        }

        fn output(&self, bytes: &[u8]) -> (PathBuf, String) {
            let path = self.dir.path().join("out.bin");
            std::fs::write(&path, bytes).unwrap();
            (path, blake3::hash(bytes).to_hex().to_string())
        }

        fn restore(&self) -> Result<Restored, Miss> {
            let base = self.dir.path().join("restored");
            self.tiers.restore(&self.request(), &|name| base.join(name))
        }
    }

    #[test]
    fn a_store_reaches_both_tiers_and_a_local_hit_says_local() {
        let s = Setup::new();
        let (path, digest) = s.output(b"model");
        let published = [PublishedOutput {
            name: "out",
            path: &path,
            digest: &digest,
        }];
        s.tiers.store(&s.request(), &published).unwrap();
        assert_eq!(
            s.remote.stores.load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        let hit = s.restore().unwrap();
        assert_eq!(hit.origin, Origin::local(&s.dir.path().join("local")));
        assert_eq!(
            std::fs::read(s.dir.path().join("restored/out")).unwrap(),
            b"model"
        );
    }

    #[test]
    fn a_remote_hit_says_remote_and_is_kept_locally() {
        let s = Setup::new();
        let (path, digest) = s.output(b"only remote");
        let published = [PublishedOutput {
            name: "out",
            path: &path,
            digest: &digest,
        }];
        OutputCache::store(s.remote.as_ref(), &s.request(), &published).unwrap();
        assert!(s.tiers.may_have(&s.request()));
        let hit = s.restore().unwrap();
        assert_eq!(hit.origin.tier, Tier::Remote);
        assert_eq!(hit.origin.to_string(), "remote: grpc://stand-in");
        // The next restore is local: the hit was copied into the local store.
        let again = s.restore().unwrap();
        assert_eq!(again.origin.tier, Tier::Local);
        assert_eq!(
            std::fs::read(s.dir.path().join("restored/out")).unwrap(),
            b"only remote"
        );
    }

    #[test]
    fn a_damaged_local_entry_falls_back_to_the_remote_and_a_double_miss_names_the_damage() {
        let s = Setup::new();
        let (path, digest) = s.output(b"good bytes");
        let published = [PublishedOutput {
            name: "out",
            path: &path,
            digest: &digest,
        }];
        s.tiers.store(&s.request(), &published).unwrap();
        let local = s.tiers.local_store().unwrap();
        let blob = local.blob_path(&digest);
        let mut perms = std::fs::metadata(&blob).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
        std::fs::set_permissions(&blob, perms).unwrap();
        std::fs::write(&blob, b"bad bytes!").unwrap();
        let hit = s.restore().unwrap();
        assert_eq!(hit.origin.tier, Tier::Remote);
        assert_eq!(
            std::fs::read(s.dir.path().join("restored/out")).unwrap(),
            b"good bytes"
        );
        // Both tiers damaged: the miss says what was wrong locally, not "no entry".
        std::fs::remove_file(s.remote.store.entry_path(&s.key)).unwrap();
        std::fs::write(local.entry_path(&s.key), b"{torn").unwrap();
        let miss = s.restore().unwrap_err();
        assert!(matches!(miss, Miss::EntryUnreadable(_)), "{miss:?}");
        assert!(miss.is_notable());
        assert!(!Miss::NoEntry.is_notable());
    }

    #[test]
    fn an_output_that_changed_after_it_was_published_is_not_stored() {
        let s = Setup::new();
        let (path, _) = s.output(b"edited since");
        let recorded = blake3::hash(b"as published").to_hex().to_string();
        let published = [PublishedOutput {
            name: "out",
            path: &path,
            digest: &recorded,
        }];
        let error = s.tiers.store(&s.request(), &published).unwrap_err();
        assert!(error.to_string().contains("changed"), "{error}");
        assert_eq!(s.restore().unwrap_err(), Miss::NoEntry);
    }

    #[test]
    fn the_cache_key_depends_on_the_fingerprint_and_the_platform() {
        let platform = crate::action::base_platform();
        let key = cache_key("abc", &platform);
        assert_eq!(key, cache_key("abc", &platform));
        assert_ne!(key, cache_key("abd", &platform));
        let mut other = platform.clone();
        other.insert("ISA".into(), "riscv64".into());
        assert_ne!(key, cache_key("abc", &other));
        assert_eq!(key.len(), 64);
    }
}
