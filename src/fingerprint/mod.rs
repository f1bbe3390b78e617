//! Content digests: blake3 of files (mmap + rayon when large) and directories (recursive,
//! sorted), behind a stat cache so unchanged files are not read again; and stage keys.

mod key;

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub(crate) use key::{InputDigest, KEY_FORMAT, StageKey};

/// A blake3 digest in hex.
pub(crate) type Digest = String;

/// Files at least this large are hashed with mmap and rayon.
const PARALLEL_HASH_BYTES: u64 = 1 << 20;
/// A file modified this recently may change again within the same timestamp tick, so its
/// digest is not cached (the "racily clean" problem).
const RACY_WINDOW_NS: i128 = 2_000_000_000;

/// Hashes one file's content. Anything but a regular file (a FIFO, a device, a socket) is
/// an error: reading one may never end.
pub(crate) fn hash_file(path: &Path) -> io::Result<blake3::Hash> {
    let metadata = std::fs::metadata(path)?;
    check_hashable(path, &metadata)?;
    let size = metadata.len();
    let mut hasher = blake3::Hasher::new();
    if size >= PARALLEL_HASH_BYTES {
        hasher.update_mmap_rayon(path)?;
    } else {
        hasher.update_reader(std::fs::File::open(path)?)?;
    }
    Ok(hasher.finalize())
}

/// Only regular files and directories have a content digest.
fn check_hashable(path: &Path, metadata: &std::fs::Metadata) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let file_type = metadata.file_type();
    let what = if file_type.is_file() || file_type.is_dir() {
        return Ok(());
    } else if file_type.is_fifo() {
        "a FIFO (named pipe)"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_block_device() {
        "a block device"
    } else if file_type.is_socket() {
        "a socket"
    } else {
        "a special file"
    };
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "`{}` is {what}, not a regular file or directory: pochi reads and hashes only files and directories",
            path.display()
        ),
    ))
}

/// What identifies a file's version without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct FileStat {
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
    pub inode: u64,
}

impl FileStat {
    pub(crate) fn of(metadata: &std::fs::Metadata) -> FileStat {
        FileStat {
            size: metadata.len(),
            mtime_ns: metadata.mtime() as i128 * 1_000_000_000 + metadata.mtime_nsec() as i128,
            ctime_ns: metadata.ctime() as i128 * 1_000_000_000 + metadata.ctime_nsec() as i128,
            inode: metadata.ino(),
        }
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct CacheEntry {
    stat: FileStat,
    digest: Digest,
    /// Kept for this process only, never saved: a racily fresh output pochi just published
    /// and hashed (its dependents' checks need not read it again in the same build).
    #[serde(skip)]
    this_build_only: bool,
}

/// Digests of files keyed by path, valid while their stat is unchanged. Shared across threads.
#[derive(Debug, Default)]
pub(crate) struct StatCache {
    /// Read by every parallel check, written only on a miss: a reader-writer lock.
    entries: RwLock<HashMap<PathBuf, CacheEntry>>,
    changed: AtomicBool,
}

impl StatCache {
    /// Loads a saved cache; a missing or unreadable one is an empty cache (it is only a cache).
    pub(crate) fn load(path: &Path) -> StatCache {
        let entries = std::fs::read(path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Vec<(PathBuf, CacheEntry)>>(&bytes).ok())
            .map(|entries| entries.into_iter().collect())
            .unwrap_or_default();
        StatCache {
            entries: RwLock::new(entries),
            changed: AtomicBool::new(false),
        }
    }

    /// Saves the cache atomically if anything changed.
    pub(crate) fn save(&self, path: &Path) -> io::Result<()> {
        if !self.changed.load(Ordering::Relaxed) {
            return Ok(());
        }
        let entries = self.read();
        let mut sorted: Vec<(&PathBuf, &CacheEntry)> =
            entries.iter().filter(|(_, e)| !e.this_build_only).collect();
        sorted.sort_by(|a, b| a.0.cmp(b.0));
        let bytes = serde_json::to_vec(&sorted).map_err(io::Error::other)?;
        crate::fsutil::write_cache(path, &bytes)
    }

    /// The digest of a file or directory at `root/path` (`path` as the pipeline names it).
    pub(crate) fn digest(&self, root: &Path, path: &Path) -> io::Result<Digest> {
        self.digest_as(root, path, Freshness::Saved)
    }

    /// The digest of an output pochi has just published: like `digest`, but a racily fresh
    /// file's digest is still remembered for the rest of this build (not saved), so the
    /// checks of the stages that read it do not hash it again. Only pochi wrote it, and the
    /// process that produced it has ended.
    pub(crate) fn digest_published(&self, root: &Path, path: &Path) -> io::Result<Digest> {
        self.digest_as(root, path, Freshness::ThisBuild)
    }

    fn digest_as(&self, root: &Path, path: &Path, fresh: Freshness) -> io::Result<Digest> {
        let full = root.join(path);
        let metadata = std::fs::metadata(&full)?;
        check_hashable(&full, &metadata)?;
        if metadata.is_dir() {
            self.dir_digest(root, path, fresh)
        } else {
            self.file_digest(path, &full, &metadata, fresh)
        }
    }

    fn file_digest(
        &self,
        key: &Path,
        full: &Path,
        metadata: &std::fs::Metadata,
        fresh: Freshness,
    ) -> io::Result<Digest> {
        let stat = FileStat::of(metadata);
        if let Some(entry) = self.read().get(key)
            && entry.stat == stat
        {
            return Ok(entry.digest.clone());
        }
        let digest = hash_file(full)?.to_hex().to_string();
        let racy = is_racy(stat);
        if !racy || fresh == Freshness::ThisBuild {
            let entry = CacheEntry {
                stat,
                digest: digest.clone(),
                this_build_only: racy,
            };
            self.write().insert(key.to_path_buf(), entry);
            self.changed.store(true, Ordering::Relaxed);
        }
        Ok(digest)
    }

    /// A directory's digest: its entries' names, types and digests, in sorted order.
    fn dir_digest(&self, root: &Path, path: &Path, fresh: Freshness) -> io::Result<Digest> {
        let mut names: Vec<_> = std::fs::read_dir(root.join(path))?
            .map(|entry| entry.map(|e| e.file_name()))
            .collect::<Result<_, _>>()?;
        names.sort();
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"pochi-dir\n");
        for name in names {
            let child = path.join(&name);
            let full = root.join(&child);
            let metadata = std::fs::metadata(&full)?;
            let (kind, digest) = if metadata.is_dir() {
                ("d", self.dir_digest(root, &child, fresh)?)
            } else {
                ("f", self.file_digest(&child, &full, &metadata, fresh)?)
            };
            hasher.update(name.as_encoded_bytes());
            hasher.update(format!("\0{kind}\0{digest}\n").as_bytes());
        }
        Ok(hasher.finalize().to_hex().to_string())
    }

    /// Remembers `digest` for the file at `root/path` as it is now, without reading it: for
    /// a file pochi has just written and verified itself (restored from the cache, every
    /// byte hashed), and published. As with `digest_published`, a racily fresh file's
    /// digest is kept for this build only.
    pub(crate) fn remember_published(
        &self,
        root: &Path,
        path: &Path,
        digest: &str,
    ) -> io::Result<()> {
        let metadata = std::fs::metadata(root.join(path))?;
        let stat = FileStat::of(&metadata);
        let entry = CacheEntry {
            stat,
            digest: digest.to_string(),
            this_build_only: is_racy(stat),
        };
        self.write().insert(path.to_path_buf(), entry);
        self.changed.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Forgets a path after pochi rewrote it; `is_dir` also forgets everything under it
    /// (a scan of the cache, so only for directories).
    pub(crate) fn forget(&self, path: &Path, is_dir: bool) {
        let mut entries = self.write();
        entries.remove(path);
        if is_dir {
            entries.retain(|key, _| !key.starts_with(path));
        }
        self.changed.store(true, Ordering::Relaxed);
    }

    /// Whether a digest for `path` is cached.
    pub(crate) fn contains(&self, path: &Path) -> bool {
        self.read().contains_key(path)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<PathBuf, CacheEntry>> {
        self.entries.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<PathBuf, CacheEntry>> {
        self.entries.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// Whether a racily fresh file's digest may be remembered (see `digest_published`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Freshness {
    Saved,
    ThisBuild,
}

fn is_racy(stat: FileStat) -> bool {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0);
    stat.mtime_ns > now - RACY_WINDOW_NS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backdate(path: &Path) {
        let old = SystemTime::now() - std::time::Duration::from_secs(60);
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(old)
            .unwrap();
    }

    #[test]
    fn file_digest_is_blake3_of_content() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), b"hello").unwrap();
        let cache = StatCache::default();
        let digest = cache.digest(dir.path(), Path::new("a")).unwrap();
        assert_eq!(digest, blake3::hash(b"hello").to_hex().to_string());
    }

    #[test]
    fn large_files_hash_the_same_in_parallel() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(dir.path().join("big"), &data).unwrap();
        assert_eq!(
            hash_file(&dir.path().join("big")).unwrap(),
            blake3::hash(&data)
        );
    }

    #[test]
    fn cache_hit_skips_reading_and_a_change_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a");
        std::fs::write(&file, b"one").unwrap();
        backdate(&file);
        let cache = StatCache::default();
        let first = cache.digest(dir.path(), Path::new("a")).unwrap();
        // Poison the cached digest: a hit returns it without reading the file.
        cache.write().get_mut(Path::new("a")).unwrap().digest = "cached".into();
        assert_eq!(cache.digest(dir.path(), Path::new("a")).unwrap(), "cached");
        std::fs::write(&file, b"two!").unwrap();
        let second = cache.digest(dir.path(), Path::new("a")).unwrap();
        assert_ne!(second, "cached");
        assert_ne!(second, first);
    }

    #[test]
    fn recently_modified_files_are_not_cached() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("fresh"), b"x").unwrap();
        let cache = StatCache::default();
        cache.digest(dir.path(), Path::new("fresh")).unwrap();
        assert!(cache.read().is_empty());
    }

    #[test]
    fn a_fresh_published_output_is_remembered_for_this_build_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("out"), b"x").unwrap();
        let cache = StatCache::default();
        let digest = cache
            .digest_published(dir.path(), Path::new("out"))
            .unwrap();
        // A reader's check gets it from the cache (poisoned here to show it is not re-read).
        cache.write().get_mut(Path::new("out")).unwrap().digest = "remembered".into();
        assert_eq!(
            cache.digest(dir.path(), Path::new("out")).unwrap(),
            "remembered"
        );
        assert_ne!(digest, "remembered");
        let saved = dir.path().join("cache.json");
        cache.save(&saved).unwrap();
        assert!(
            StatCache::load(&saved).read().is_empty(),
            "a racy entry is never saved"
        );
    }

    #[test]
    fn directory_digest_covers_names_and_content() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("d/sub")).unwrap();
        std::fs::write(root.join("d/a"), b"1").unwrap();
        std::fs::write(root.join("d/sub/b"), b"2").unwrap();
        let cache = StatCache::default();
        let before = cache.digest(root, Path::new("d")).unwrap();
        assert_eq!(before, cache.digest(root, Path::new("d")).unwrap());
        std::fs::write(root.join("d/sub/b"), b"3").unwrap();
        let changed = cache.digest(root, Path::new("d")).unwrap();
        assert_ne!(before, changed);
        std::fs::rename(root.join("d/a"), root.join("d/c")).unwrap();
        assert_ne!(changed, cache.digest(root, Path::new("d")).unwrap());
    }

    #[test]
    fn saved_cache_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a");
        std::fs::write(&file, b"one").unwrap();
        backdate(&file);
        let cache = StatCache::default();
        let digest = cache.digest(dir.path(), Path::new("a")).unwrap();
        cache.save(&dir.path().join("cache.json")).unwrap();
        let loaded = StatCache::load(&dir.path().join("cache.json"));
        assert_eq!(loaded.read().get(Path::new("a")).unwrap().digest, digest);
    }
}
