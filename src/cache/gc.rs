//! What the store holds (`info`) and collecting it (`gc`): entries unused for longer than
//! a limit go first, then the least recently used until the store fits a size, then every
//! blob no entry references. One collector at a time (`cache-gc.lock`); stores go on
//! meanwhile, so an unreferenced blob or a temporary file younger than the grace period is
//! kept, and the entries are read again just before blobs are deleted.

use std::collections::{BTreeSet, HashMap};
use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::stats::BuildStats;
use super::store::unix_ms;
use super::{CacheError, Entry, LocalCache, TRIM_TO_PERCENT};

/// What the store holds.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CacheInfo {
    pub root: PathBuf,
    /// The limit `gc_if_over_limit` keeps.
    pub max_size: u64,
    /// Blobs and entries together.
    pub bytes: u64,
    pub entries: u64,
    pub blobs: u64,
    pub blob_bytes: u64,
    /// The least and most recent use (store or restore) of an entry, in ms since the epoch.
    pub oldest_use_unix_ms: Option<u64>,
    pub newest_use_unix_ms: Option<u64>,
    pub last_build: Option<BuildStats>,
}

/// What a collection removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct GcReport {
    pub entries_removed: u64,
    pub blobs_removed: u64,
    /// Files left in `cache-tmp/` by stores that were killed.
    pub temp_removed: u64,
    pub bytes_freed: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// A file seen in `cas/` or `ac/`.
struct Seen {
    name: String,
    path: PathBuf,
    size: u64,
    mtime: SystemTime,
}

impl LocalCache {
    /// Sizes, counts and ages of what is stored, and the last build's figures.
    pub fn info(&self) -> Result<CacheInfo, CacheError> {
        let blobs = scan(&self.root.join("cas"))?;
        let entries = scan(&self.root.join("ac"))?;
        let blob_bytes = total(&blobs);
        let uses = entries.iter().map(|e| unix_ms(e.mtime));
        Ok(CacheInfo {
            root: self.root.clone(),
            max_size: self.max_size,
            bytes: blob_bytes + total(&entries),
            entries: entries.len() as u64,
            blobs: blobs.len() as u64,
            blob_bytes,
            oldest_use_unix_ms: uses.clone().min(),
            newest_use_unix_ms: uses.max(),
            last_build: self.last_build_stats(),
        })
    }

    /// Removes entries unused for longer than `older_than`, then the least recently used
    /// until blobs and entries fit in `max_size`, then the blobs no entry references: at
    /// once those of removed entries, after the grace period those no entry ever named (a
    /// store may be writing them). Fails with `GcBusy` while another collects.
    pub fn gc(
        &self,
        max_size: Option<u64>,
        older_than: Option<Duration>,
    ) -> Result<GcReport, CacheError> {
        if !self.root.exists() {
            return Ok(GcReport::default());
        }
        let Some(_lock) = self.gc_lock()? else {
            return Err(CacheError::GcBusy);
        };
        self.collect(max_size, older_than)
    }

    /// After a build: when the store is larger than its limit (`max_size`), collects it
    /// down to 90% of the limit. Nothing when it fits or another process is collecting.
    /// It reads the size of every stored file, so call it after builds that stored something.
    pub fn gc_if_over_limit(&self) -> Result<Option<GcReport>, CacheError> {
        if !self.root.exists() {
            return Ok(None);
        }
        let size = total(&scan(&self.root.join("cas"))?) + total(&scan(&self.root.join("ac"))?);
        if size <= self.max_size {
            return Ok(None);
        }
        let Some(_lock) = self.gc_lock()? else {
            return Ok(None);
        };
        let target = self.max_size / 100 * TRIM_TO_PERCENT;
        self.collect(Some(target), None).map(Some)
    }

    /// The collector's lock, or None when another process holds it.
    pub(super) fn gc_lock(&self) -> Result<Option<File>, CacheError> {
        let path = self.gc_lock_path();
        let file = File::options()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(CacheError::io(&path))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(file)),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(e)) => Err(CacheError::io(&path)(e)),
        }
    }

    fn collect(
        &self,
        max_size: Option<u64>,
        older_than: Option<Duration>,
    ) -> Result<GcReport, CacheError> {
        let now = SystemTime::now();
        // Blobs are listed before entries: a blob stored after this is not a candidate.
        let blobs = scan(&self.root.join("cas"))?;
        let entries = scan(&self.root.join("ac"))?;
        let mut report = GcReport {
            bytes_before: total(&blobs) + total(&entries),
            ..GcReport::default()
        };
        let unused_since = older_than.and_then(|age| now.checked_sub(age));
        let mut live = Vec::new();
        // Blobs some complete entry named when the collection began: no store in progress
        // can be writing them, so they go as soon as no entry names them (unless a store
        // touched them since). Only the others wait out the grace period.
        let mut were_referenced = BTreeSet::new();
        for seen in entries {
            let expired = unused_since.is_some_and(|limit| seen.mtime < limit);
            let names = self.referenced_by(&seen);
            were_referenced.extend(names.iter().flatten().cloned());
            match names {
                Some(names) if !expired => live.push((seen, names)),
                _ => {
                    remove_entry(&seen, &mut report)?;
                }
            }
        }
        if let Some(max_size) = max_size {
            evict_lru(live, &blobs, max_size, &mut report)?;
        }
        // Entries stored meanwhile reference blobs too: read them all again.
        let mut referenced = BTreeSet::new();
        for seen in scan(&self.root.join("ac"))? {
            referenced.extend(self.referenced_by(&seen).unwrap_or_default());
        }
        let fresh_since = now
            .checked_sub(self.grace)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        for blob in blobs.iter().filter(|b| !referenced.contains(&b.name)) {
            let limit = if were_referenced.contains(&blob.name) {
                now
            } else {
                fresh_since
            };
            if remove_if_older(&blob.path, limit)? {
                report.blobs_removed += 1;
                report.bytes_freed += blob.size;
            }
        }
        report.temp_removed = self.remove_stale_temp(fresh_since)?;
        report.bytes_after = report.bytes_before.saturating_sub(report.bytes_freed);
        Ok(report)
    }

    /// The blobs a stored entry names, or None when it is unreadable or damaged.
    fn referenced_by(&self, seen: &Seen) -> Option<BTreeSet<String>> {
        let bytes = std::fs::read(&seen.path).ok()?;
        let entry: Entry = serde_json::from_slice(&bytes).ok()?;
        entry.check(&seen.name).ok()?;
        Some(entry.files().map(|file| file.blake3.clone()).collect())
    }

    fn remove_stale_temp(&self, fresh_since: SystemTime) -> Result<u64, CacheError> {
        let dir = self.temp_dir();
        let list = match std::fs::read_dir(&dir) {
            Ok(list) => list,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(CacheError::io(&dir)(e)),
        };
        let mut removed = 0;
        for item in list {
            let path = item.map_err(CacheError::io(&dir))?.path();
            if remove_if_older(&path, fresh_since)? {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// Removes the least recently used of `live` until entries and the blobs they reference
/// fit in `max_size`.
fn evict_lru(
    mut live: Vec<(Seen, BTreeSet<String>)>,
    blobs: &[Seen],
    max_size: u64,
    report: &mut GcReport,
) -> Result<(), CacheError> {
    live.sort_by_key(|(seen, _)| seen.mtime);
    let sizes: HashMap<&str, u64> = blobs.iter().map(|b| (b.name.as_str(), b.size)).collect();
    let mut refs: HashMap<&str, usize> = HashMap::new();
    let mut size = 0;
    for (seen, names) in &live {
        size += seen.size;
        for name in names {
            let count = refs.entry(name.as_str()).or_insert(0);
            if *count == 0 {
                size += sizes.get(name.as_str()).copied().unwrap_or(0);
            }
            *count += 1;
        }
    }
    for (seen, names) in &live {
        if size <= max_size {
            break;
        }
        if !remove_entry(seen, report)? {
            continue;
        }
        size = size.saturating_sub(seen.size);
        for name in names {
            let count = refs.entry(name.as_str()).or_insert(1);
            *count = count.saturating_sub(1);
            if *count == 0 {
                size = size.saturating_sub(sizes.get(name.as_str()).copied().unwrap_or(0));
            }
        }
    }
    Ok(())
}

/// Removes an entry unless it was used or rewritten since it was seen; true if removed.
fn remove_entry(seen: &Seen, report: &mut GcReport) -> Result<bool, CacheError> {
    let unchanged = std::fs::metadata(&seen.path)
        .and_then(|m| m.modified())
        .is_ok_and(|mtime| mtime == seen.mtime);
    if !unchanged {
        return Ok(false);
    }
    match std::fs::remove_file(&seen.path) {
        Ok(()) => {
            report.entries_removed += 1;
            report.bytes_freed += seen.size;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(CacheError::io(&seen.path)(e)),
    }
}

/// Removes `path` if its mtime, read now, is before `limit`; true if removed.
fn remove_if_older(path: &Path, limit: SystemTime) -> Result<bool, CacheError> {
    let old = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .is_ok_and(|mtime| mtime < limit);
    if !old {
        return Ok(false);
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(CacheError::io(path)(e)),
    }
}

/// The files in `dir/<shard>/`; a missing `dir` holds none.
fn scan(dir: &Path) -> Result<Vec<Seen>, CacheError> {
    let shards = match std::fs::read_dir(dir) {
        Ok(shards) => shards,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(CacheError::io(dir)(e)),
    };
    let mut seen = Vec::new();
    for shard in shards {
        let shard = shard.map_err(CacheError::io(dir))?.path();
        let Ok(files) = std::fs::read_dir(&shard) else {
            continue; // not a directory
        };
        for file in files {
            let file = file.map_err(CacheError::io(&shard))?;
            // A file removed since it was listed is simply not seen.
            let Ok(metadata) = file.metadata() else {
                continue;
            };
            if !metadata.is_file() {
                continue;
            }
            seen.push(Seen {
                name: file.file_name().to_string_lossy().into_owned(),
                path: file.path(),
                size: metadata.len(),
                mtime: metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            });
        }
    }
    Ok(seen)
}

fn total(files: &[Seen]) -> u64 {
    files.iter().map(|f| f.size).sum()
}
