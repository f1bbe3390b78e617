//! Storing a stage's outputs: each file becomes a blob (a reflink or copy into
//! `cache-tmp/`, hashed, renamed into `cas/`; a blob that is already there is reused and
//! its mtime refreshed so `gc` keeps it), then the entry is written, last and atomically.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::{File, Permissions};
use std::io::{Seek, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::SystemTime;

use tempfile::NamedTempFile;

use super::digest::{FileDigests, copy_hashing, try_reflink};
use super::entry::{ENTRY_FORMAT, Entry, EntryMeta, FileRecord, Node, OutputRecord, TreeEntry};
use super::{CacheError, LocalCache, check_key, entry::tree_digest};

/// What a store did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The entry as written.
    pub entry: Entry,
    /// Blobs that were not in the store before, and their bytes.
    pub blobs_added: u64,
    pub bytes_added: u64,
    /// Files that went in by reflink (no data copied).
    pub reflinked: u64,
}

impl LocalCache {
    /// Stores the outputs of the stage whose key is `key`: each `(name, path)` is a
    /// finished output file or directory (symbolic links are followed, as the fingerprint
    /// follows them). Blobs go in first and the entry last, so a reader never sees an entry
    /// whose blobs are still being written. The entry replaces any earlier one for `key`.
    ///
    /// The caller may compare each `entry.outputs[i].digest` with the digest it recorded
    /// for that output, and `remove` the entry if one changed in between.
    pub fn store(
        &self,
        key: &str,
        outputs: &[(&str, &Path)],
        meta: &EntryMeta,
    ) -> Result<Stored, CacheError> {
        self.store_expecting(key, outputs, &[], meta)
    }

    /// Like `store`, but output `i` must have the content digest `expected[i]` (where
    /// given; the digest pochi recorded when it published the output): an output that
    /// changed since is `Changed`, and no entry is written.
    pub fn store_expecting(
        &self,
        key: &str,
        outputs: &[(&str, &Path)],
        expected: &[&str],
        meta: &EntryMeta,
    ) -> Result<Stored, CacheError> {
        check_key(key)?;
        let mut names = BTreeSet::new();
        let mut stored = Stored {
            entry: Entry {
                format: ENTRY_FORMAT,
                key: key.to_string(),
                created_unix_ms: unix_ms(SystemTime::now()),
                meta: meta.clone(),
                outputs: Vec::with_capacity(outputs.len()),
            },
            blobs_added: 0,
            bytes_added: 0,
            reflinked: 0,
        };
        for (name, path) in outputs {
            if !names.insert(*name) {
                return Err(CacheError::DuplicateOutput {
                    name: name.to_string(),
                });
            }
            let record = self.store_output(name, path, &mut stored)?;
            if let Some(digest) = expected.get(stored.entry.outputs.len())
                && *digest != record.digest
            {
                return Err(CacheError::Changed {
                    path: path.to_path_buf(),
                });
            }
            stored.entry.outputs.push(record);
        }
        let bytes = serde_json::to_vec_pretty(&stored.entry).map_err(|e| CacheError::Io {
            path: self.entry_path(key),
            source: e.into(),
        })?;
        self.write_entry(key, &bytes)?;
        Ok(stored)
    }

    fn store_output(
        &self,
        name: &str,
        path: &Path,
        stored: &mut Stored,
    ) -> Result<OutputRecord, CacheError> {
        let metadata = std::fs::metadata(path).map_err(CacheError::io(path))?;
        let (digest, node) = if metadata.is_dir() {
            let mut entries = Vec::new();
            self.walk(path, "", &mut entries, stored)?;
            // Names come from the filesystem, so the tree is well formed.
            let digest = tree_digest(&entries).map_err(|reason| CacheError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::other(reason),
            })?;
            (digest, Node::Dir { entries })
        } else if metadata.is_file() {
            let file = self.ingest(path, stored)?;
            (file.blake3.clone(), Node::File(file))
        } else {
            return Err(CacheError::NotAFile {
                path: path.to_path_buf(),
            });
        };
        Ok(OutputRecord {
            name: name.to_string(),
            digest,
            node,
        })
    }

    /// Stores every file under `dir` (its path in the output is `rel`), sorted by name.
    /// Symbolic links are followed; a cycle of them ends in the kernel's ELOOP (40 links
    /// in one path), an error.
    fn walk(
        &self,
        dir: &Path,
        rel: &str,
        entries: &mut Vec<TreeEntry>,
        stored: &mut Stored,
    ) -> Result<(), CacheError> {
        let io = CacheError::io(dir);
        let mut names: Vec<OsString> = std::fs::read_dir(dir)
            .and_then(|list| list.map(|e| e.map(|e| e.file_name())).collect())
            .map_err(io)?;
        names.sort();
        for name in names {
            let path = dir.join(&name);
            let name = name
                .to_str()
                .ok_or_else(|| CacheError::NotUtf8 { path: path.clone() })?;
            let child = if rel.is_empty() {
                name.to_string()
            } else {
                format!("{rel}/{name}")
            };
            let metadata = std::fs::metadata(&path).map_err(CacheError::io(&path))?;
            if metadata.is_dir() {
                entries.push(TreeEntry {
                    path: child.clone(),
                    file: None,
                });
                self.walk(&path, &child, entries, stored)?;
            } else if metadata.is_file() {
                let file = self.ingest(&path, stored)?;
                entries.push(TreeEntry {
                    path: child,
                    file: Some(file),
                });
            } else {
                return Err(CacheError::NotAFile { path });
            }
        }
        Ok(())
    }

    /// Puts one file into `cas/` (or reuses the blob already there) and describes it.
    pub(super) fn ingest(
        &self,
        path: &Path,
        stored: &mut Stored,
    ) -> Result<FileRecord, CacheError> {
        // Non-blocking: should a FIFO replace the file after it was checked, opening it
        // must not wait for a writer (for a regular file the flag changes nothing).
        let mut source = File::options()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(CacheError::io(path))?;
        let metadata = source.metadata().map_err(CacheError::io(path))?;
        if !metadata.is_file() {
            return Err(CacheError::NotAFile {
                path: path.to_path_buf(),
            });
        }
        let executable = metadata.permissions().mode() & 0o111 != 0;
        let mut temp = self.temp_file()?;
        let temp_path = temp.path().to_path_buf();
        let temp_io = CacheError::io(&temp_path);
        let (digests, reused) = if try_reflink(&source, temp.as_file()) {
            stored.reflinked += 1;
            let digests = FileDigests::of_reader(temp.as_file()).map_err(temp_io)?;
            let reused = self.reuse_blob(&digests);
            (digests, reused)
        } else {
            // Hash first: a blob already stored needs no copy.
            let digests = FileDigests::of_reader(&source).map_err(CacheError::io(path))?;
            let reused = self.reuse_blob(&digests);
            if !reused {
                source.rewind().map_err(CacheError::io(path))?;
                let (hash, size) =
                    copy_hashing(&mut source, temp.as_file_mut()).map_err(temp_io)?;
                if hash.to_hex().as_str() != digests.blake3 || size != digests.size {
                    return Err(CacheError::Changed {
                        path: path.to_path_buf(),
                    });
                }
            }
            (digests, reused)
        };
        if !reused {
            self.publish_blob(temp, &digests.blake3)?;
            stored.blobs_added += 1;
            stored.bytes_added += digests.size;
        }
        let FileDigests {
            blake3,
            sha256,
            size,
        } = digests;
        let record = FileRecord {
            blake3,
            sha256,
            size,
            executable,
        };
        Ok(record)
    }

    /// True when the blob is already stored with the right bytes, after refreshing its
    /// mtime so that `gc` sees it in use until the entry is written. The stored bytes are
    /// hashed: a damaged blob of the right size (restores refuse it) is replaced by the
    /// caller rather than named by one more entry.
    fn reuse_blob(&self, digests: &FileDigests) -> bool {
        let path = self.blob_path(&digests.blake3);
        match File::open(&path) {
            Ok(file) if file.metadata().is_ok_and(|m| m.len() == digests.size) => {
                let intact = crate::fingerprint::hash_file(&path)
                    .is_ok_and(|hash| hash.to_hex().as_str() == digests.blake3);
                if intact {
                    let _ = file.set_modified(SystemTime::now());
                }
                intact
            }
            _ => false,
        }
    }

    fn publish_blob(&self, temp: NamedTempFile, blake3: &str) -> Result<(), CacheError> {
        let dest = self.blob_path(blake3);
        temp.as_file()
            .set_permissions(Permissions::from_mode(0o444))
            .map_err(CacheError::io(temp.path()))?;
        if let Some(shard) = dest.parent() {
            std::fs::create_dir_all(shard).map_err(CacheError::io(shard))?;
        }
        temp.persist(&dest).map_err(|e| CacheError::Io {
            path: dest.clone(),
            source: e.error,
        })?;
        Ok(())
    }

    /// Writes the entry for `key`: a temporary file, renamed over any earlier entry.
    fn write_entry(&self, key: &str, bytes: &[u8]) -> Result<(), CacheError> {
        let dest = self.entry_path(key);
        let mut temp = self.temp_file()?;
        temp.write_all(bytes).map_err(CacheError::io(temp.path()))?;
        if let Some(shard) = dest.parent() {
            std::fs::create_dir_all(shard).map_err(CacheError::io(shard))?;
        }
        temp.persist(&dest).map_err(|e| CacheError::Io {
            path: dest.clone(),
            source: e.error,
        })?;
        Ok(())
    }

    /// A new, empty, uniquely named file in `cache-tmp/`, removed if it is dropped.
    fn temp_file(&self) -> Result<NamedTempFile, CacheError> {
        let dir = self.temp_dir();
        std::fs::create_dir_all(&dir).map_err(CacheError::io(&dir))?;
        NamedTempFile::new_in(&dir).map_err(CacheError::io(&dir))
    }
}

/// Milliseconds since the Unix epoch (0 before it).
pub(super) fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
