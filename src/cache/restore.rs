//! Restoring a stage's outputs from its entry: every blob is reflinked or copied to the
//! caller's temporary destination and every byte hashed; anything missing, damaged or
//! unwritable is a `Miss` with its reason, and what was materialized so far is removed.

use std::fs::File;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::digest::{Transfer, clone_or_copy};
use super::entry::{Entry, FileRecord, Node};
use super::tier::Origin;
use super::{LocalCache, check_key};

/// Why a key was not restored. Never an error for the build: the stage runs instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Miss {
    #[error("no entry")]
    NoEntry,
    #[error("`{0}` is not a cache key")]
    BadKey(String),
    #[error("entry unreadable: {0}")]
    EntryUnreadable(String),
    #[error("blob {0} missing")]
    BlobMissing(String),
    #[error("blob {0} corrupt")]
    BlobCorrupt(String),
    #[error("cannot restore to `{}`: {reason}", path.display())]
    Io { path: PathBuf, reason: String },
    /// The entry does not name exactly the outputs the stage declares.
    #[error("entry names other outputs than the stage ({0})")]
    OtherOutputs(String),
    /// A remote tier could not answer (down, slow, refused): the build goes on locally.
    #[error("remote cache: {0}")]
    Remote(String),
}

impl Miss {
    /// Whether the user should hear of this miss (a damaged store, an unreachable server),
    /// not just a key that was never stored.
    pub fn is_notable(&self) -> bool {
        *self != Miss::NoEntry
    }
}

/// What a restore put at the destinations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// The entry; `entry.outputs[i].digest` is each restored output's content digest.
    pub entry: Entry,
    /// Where it came from (the local store's directory, a remote cache's URL).
    pub origin: Origin,
    /// Files written, their bytes, and how many of them were reflinks.
    pub files: u64,
    pub bytes: u64,
    pub reflinked: u64,
}

#[derive(Default)]
struct Tally {
    files: u64,
    bytes: u64,
    reflinked: u64,
}

impl LocalCache {
    /// The entry for `key`, read and checked (its blobs are not looked at).
    pub fn lookup(&self, key: &str) -> Result<Entry, Miss> {
        check_key(key).map_err(|_| Miss::BadKey(key.chars().take(140).collect()))?;
        let bytes = match std::fs::read(self.entry_path(key)) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Miss::NoEntry),
            Err(e) => return Err(Miss::EntryUnreadable(e.to_string())),
        };
        let entry: Entry = serde_json::from_slice(&bytes)
            .map_err(|e| Miss::EntryUnreadable(format!("not an entry ({e})")))?;
        entry
            .check(key)
            .map_err(|e| Miss::EntryUnreadable(e.to_string()))?;
        Ok(entry)
    }

    /// Restores the outputs stored under `key`: output `name` is written at
    /// `dest_for(name)` (a temporary path of the caller's, replaced if it exists; the
    /// caller publishes it), with its executable bits. Every byte is verified against its
    /// digest. On a miss nothing is left at the destinations, and a blob found corrupt is
    /// removed from the store so the next store of it replaces it. A hit marks the entry
    /// used now (for `gc`).
    pub fn restore(&self, key: &str, dest_for: impl Fn(&str) -> PathBuf) -> Result<Restored, Miss> {
        let entry = self.lookup(key)?;
        let mut tally = Tally::default();
        let mut placed = Vec::new();
        let outcome = self.materialize_all(&entry, &dest_for, &mut placed, &mut tally);
        if let Err(miss) = outcome {
            for path in placed {
                let _ = crate::fsutil::remove_path(&path);
            }
            return Err(miss);
        }
        if let Ok(file) = File::open(self.entry_path(key)) {
            let _ = file.set_modified(SystemTime::now());
        }
        Ok(Restored {
            entry,
            origin: Origin::local(&self.root),
            files: tally.files,
            bytes: tally.bytes,
            reflinked: tally.reflinked,
        })
    }

    fn materialize_all(
        &self,
        entry: &Entry,
        dest_for: &impl Fn(&str) -> PathBuf,
        placed: &mut Vec<PathBuf>,
        tally: &mut Tally,
    ) -> Result<(), Miss> {
        for output in &entry.outputs {
            let dest = dest_for(&output.name);
            let failed = |e: std::io::Error| Miss::Io {
                path: dest.clone(),
                reason: e.to_string(),
            };
            crate::fsutil::remove_path(&dest).map_err(failed)?;
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent).map_err(failed)?;
            }
            placed.push(dest.clone());
            match &output.node {
                Node::File(file) => self.materialize(file, &dest, tally)?,
                Node::Dir { entries } => {
                    std::fs::create_dir(&dest).map_err(failed)?;
                    for item in entries {
                        let path = dest.join(&item.path);
                        match &item.file {
                            Some(file) => self.materialize(file, &path, tally)?,
                            None => std::fs::create_dir_all(&path).map_err(|e| Miss::Io {
                                path: path.clone(),
                                reason: e.to_string(),
                            })?,
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Writes one blob at `dest` (which does not exist) and checks what was written.
    fn materialize(&self, file: &FileRecord, dest: &Path, tally: &mut Tally) -> Result<(), Miss> {
        let blob_path = self.blob_path(&file.blake3);
        let mut blob = match File::open(&blob_path) {
            Ok(blob) => blob,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Miss::BlobMissing(file.blake3.clone()));
            }
            Err(e) => {
                return Err(Miss::Io {
                    path: blob_path,
                    reason: e.to_string(),
                });
            }
        };
        let corrupt = |blob: &File| {
            discard_blob(&blob_path, blob);
            Miss::BlobCorrupt(file.blake3.clone())
        };
        if blob.metadata().map(|m| m.len()).ok() != Some(file.size) {
            return Err(corrupt(&blob));
        }
        // The umask applies, as to any file a tool writes.
        let mode = if file.executable { 0o777 } else { 0o666 };
        let failed = |e: std::io::Error| Miss::Io {
            path: dest.to_path_buf(),
            reason: e.to_string(),
        };
        let mut out = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(dest)
            .map_err(failed)?;
        let (transfer, hash, size) = clone_or_copy(&mut blob, &mut out).map_err(failed)?;
        if hash.to_hex().as_str() != file.blake3 || size != file.size {
            return Err(corrupt(&blob));
        }
        tally.files += 1;
        tally.bytes += size;
        if transfer == Transfer::Reflink {
            tally.reflinked += 1;
        }
        Ok(())
    }
}

/// Removes a blob found corrupt, unless the file at its path is no longer the one that was
/// read (another process stored a good copy in the meantime).
fn discard_blob(path: &Path, read: &File) {
    let same = match (std::fs::metadata(path), read.metadata()) {
        (Ok(now), Ok(then)) => now.ino() == then.ino() && now.dev() == then.dev(),
        _ => false,
    };
    if same {
        let _ = std::fs::remove_file(path);
    }
}
