//! The local content-addressed cache of stage outputs, shared by every project and clone
//! of one user: blobs by BLAKE3 digest (`cas/`), one action-cache entry per stage key
//! (`ac/`) naming the outputs a stage produced, and a synchronous API (`store`, `restore`,
//! `info`, `gc`) for the executor and the CLI.
//!
//! Layout, under the per-user cache directory (`toolchain::cache::CacheDir`, so
//! `$POCHI_CACHE_DIR/v1`, else `$XDG_CACHE_HOME/pochi/v1`, else `~/.cache/pochi/v1`):
//!
//! ```text
//! cas/<2 hex>/<blake3 hex>   blobs, read-only (0444), named by their content's BLAKE3
//! ac/<2 hex>/<key hex>       entries, JSON (`Entry`); the file's mtime is its last use
//! cache-tmp/                 files being stored (renamed into cas/ or ac/ when complete)
//! cache-stats.json           the last build's hits and misses (`BuildStats`)
//! cache-gc.lock              held by `gc` only
//! ```
//!
//! Concurrency without a global lock: everything is written to a unique temporary file in
//! `cache-tmp/` and renamed into place, blobs first, the entry last; so a reader sees a
//! complete blob or none, and an entry only once all its blobs exist. Two processes storing
//! the same blob or key write identical content and the last rename wins. `gc` takes
//! `cache-gc.lock` (one collector at a time) and never deletes an unreferenced blob or a
//! temporary file younger than `GRACE`: a store in progress refreshes the mtime of every
//! blob it reuses before it writes its entry. Whatever slips through (an entry removed
//! while another process restores it) is a cache miss, never a wrong output, because every
//! restored byte is hashed and compared with its digest.
//!
//! Files are copied into and out of the store with a reflink where the filesystem has one
//! (btrfs, XFS, APFS...), else with a plain copy; never with a hard link, so editing a
//! restored output cannot change the store.
//!
//! How a build uses it:
//!
//! ```text
//! let cache = LocalCache::from_env()?;                    // once per process
//! match cache.restore(&key_hex, |name| temp_path(name)) {  // before running a stage
//!     Ok(restored) => publish the temp paths; restored.entry.outputs[i].digest is each
//!                     output's content digest (no need to hash it again)
//!     Err(miss)    => log `miss` ("no entry", "blob X corrupt"...), run the stage
//! }
//! cache.store(&key_hex, &[(name, published_path)], &meta)  // after a stage ran; an Err
//!                                                          // is a warning
//! cache.record_build_stats(&BuildStats::new(local, remote, ran));
//! cache.gc_if_over_limit()                                 // if anything was stored
//! ```

mod digest;
mod duration;
mod entry;
mod gc;
mod restore;
mod stats;
mod store;
#[cfg(test)]
mod tests;
mod tier;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use digest::FileDigests;
pub(crate) use duration::parse_duration;
pub use entry::{Entry, EntryMeta};
pub(crate) use entry::{FileRecord, Node, TreeEntry};
pub(crate) use gc::CacheInfo;
pub(crate) use restore::{Miss, Restored};
pub(crate) use stats::BuildStats;
pub(crate) use tier::{
    ActionSource, CacheRequest, Origin, OutputCache, PublishedOutput, StoreError, Tier, Tiered,
    cache_key,
};

use crate::size::ByteSize;
use crate::toolchain::cache::CacheDir;

/// The size limit `gc_if_over_limit` keeps the store under unless told otherwise: 10 GiB.
/// One configuration of a large model (a 250 MB ONNX export, its fp16 and int8 variants and
/// an engine for each) is about 1 GB, so about ten configurations fit; sccache's default
/// local cache is also 10 GiB. `POCHI_CACHE_MAX_SIZE` changes it.
pub const DEFAULT_MAX_SIZE: u64 = 10 << 30;

/// When the limit is exceeded, `gc_if_over_limit` trims to this fraction of it (in
/// percent), so the next few builds do not each collect again.
const TRIM_TO_PERCENT: u64 = 90;

/// An unreferenced blob or a temporary file younger than this may belong to a store in
/// progress (its entry not yet written), so `gc` keeps it.
pub const GRACE: Duration = Duration::from_secs(3600);

/// Why the cache could not do what was asked. A failed store is for the caller to warn
/// about; it never fails a build, and a failed lookup is a `Miss`, not an error.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum CacheError {
    #[error("`{key}` is not a cache key (16 to 128 lowercase hex digits)")]
    InvalidKey { key: String },
    #[error("output `{name}` is named twice")]
    DuplicateOutput { name: String },
    #[error("cannot cache `{}`: it is not a regular file or directory", path.display())]
    NotAFile { path: PathBuf },
    #[error("cannot cache `{}`: its name is not UTF-8", path.display())]
    NotUtf8 { path: PathBuf },
    #[error("`{}` changed while it was being stored in the cache", path.display())]
    Changed { path: PathBuf },
    #[error("`{value}` is not a size for POCHI_CACHE_MAX_SIZE: {reason}")]
    BadMaxSize {
        value: String,
        reason: crate::size::SizeError,
    },
    #[error(transparent)]
    NoCacheDir(#[from] crate::toolchain::cache::CacheDirError),
    #[error("another pochi is collecting the cache")]
    #[diagnostic(help("wait for it to finish, then run `pochi cache gc` again"))]
    GcBusy,
    #[error("cache I/O failed on `{}`", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl CacheError {
    /// An `Io` error on `path`, for `map_err`.
    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
        move |source| CacheError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The local cache store at one directory. Opening it does no I/O; directories are made
/// when something is stored.
#[derive(Debug, Clone)]
pub struct LocalCache {
    root: PathBuf,
    max_size: u64,
    grace: Duration,
}

impl LocalCache {
    /// The store in the per-user cache directory, or under `$POCHI_OUTPUT_CACHE_DIR` (its
    /// `v1` layout directory) when that is set (the store apart from the toolchains, e.g.
    /// on a filesystem with reflinks), with the size limit from `POCHI_CACHE_MAX_SIZE`
    /// (e.g. `20GiB`) or `DEFAULT_MAX_SIZE`.
    pub fn from_env() -> Result<LocalCache, CacheError> {
        LocalCache::from_vars(|name| std::env::var_os(name))
    }

    /// Like `from_env`, with `var` as the environment lookup (tests).
    pub fn from_vars(var: impl Fn(&str) -> Option<OsString>) -> Result<LocalCache, CacheError> {
        let max_size = var("POCHI_CACHE_MAX_SIZE").filter(|v| !v.is_empty());
        let own_dir = var("POCHI_OUTPUT_CACHE_DIR").filter(|v| !v.is_empty());
        let dir = match own_dir {
            Some(dir) => {
                let dir = PathBuf::from(dir);
                CacheDir::at(&std::path::absolute(&dir).unwrap_or(dir))
            }
            None => CacheDir::from_vars(var)?,
        };
        let mut cache = LocalCache::in_dir(&dir);
        if let Some(value) = max_size {
            let value = value.to_string_lossy().into_owned();
            let size = ByteSize::parse(&value)
                .map_err(|reason| CacheError::BadMaxSize { value, reason })?;
            cache.max_size = size.0;
        }
        Ok(cache)
    }

    /// The store inside a cache directory (its `v1` layout directory).
    pub fn in_dir(dir: &CacheDir) -> LocalCache {
        LocalCache::at(dir.root())
    }

    /// The store with its layout directly under `root` (`root/cas`, `root/ac`...).
    pub fn at(root: &Path) -> LocalCache {
        LocalCache {
            root: root.to_path_buf(),
            max_size: DEFAULT_MAX_SIZE,
            grace: GRACE,
        }
    }

    /// The same store with another size limit for `gc_if_over_limit`.
    pub fn with_max_size(mut self, bytes: u64) -> LocalCache {
        self.max_size = bytes;
        self
    }

    /// The same store with another grace period (tests).
    #[cfg(test)]
    fn with_grace(mut self, grace: Duration) -> LocalCache {
        self.grace = grace;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn max_size(&self) -> u64 {
        self.max_size
    }

    /// Where the blob with this BLAKE3 digest (hex) lives, whether or not it exists.
    pub fn blob_path(&self, blake3: &str) -> PathBuf {
        sharded(&self.root.join("cas"), blake3)
    }

    /// Where the entry for this key lives, whether or not it exists.
    pub fn entry_path(&self, key: &str) -> PathBuf {
        sharded(&self.root.join("ac"), key)
    }

    fn temp_dir(&self) -> PathBuf {
        self.root.join("cache-tmp")
    }

    fn stats_path(&self) -> PathBuf {
        self.root.join("cache-stats.json")
    }

    fn gc_lock_path(&self) -> PathBuf {
        self.root.join("cache-gc.lock")
    }

    /// Removes the entry for `key` (its blobs go at the next `gc`); true when there was one.
    pub fn remove(&self, key: &str) -> Result<bool, CacheError> {
        check_key(key)?;
        let path = self.entry_path(key);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(CacheError::io(&path)(e)),
        }
    }
}

/// `dir/<first two characters>/<name>`.
fn sharded(dir: &Path, name: &str) -> PathBuf {
    let shard = name.get(..2).unwrap_or("__");
    dir.join(shard).join(name)
}

/// A key is 16 to 128 lowercase hex digits (a BLAKE3 or SHA-256 hex digest in practice),
/// so it is a safe file name and one key has one spelling.
fn check_key(key: &str) -> Result<(), CacheError> {
    let hex = key
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if hex && (16..=128).contains(&key.len()) {
        Ok(())
    } else {
        Err(CacheError::InvalidKey {
            key: key.chars().take(140).collect(),
        })
    }
}

/// Whether `text` is a digest as the store writes them: 64 lowercase hex digits (BLAKE3's
/// and SHA-256's length).
fn is_blake3_hex(text: &str) -> bool {
    text.len() == 64
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}
