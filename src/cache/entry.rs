//! The action-cache entry: a stage key and the outputs the stage produced under it, each a
//! file or a directory tree with every file's digests, size and executable bit, plus where
//! it came from. One JSON file per key; `Entry::check` refuses an entry that is not
//! self-consistent (paths that leave their output, digests that do not add up), so a
//! damaged entry is a miss.

use std::collections::{BTreeMap, BTreeSet};

use super::is_blake3_hex;

/// The entry's JSON format inside the `v1` layout.
pub(crate) const ENTRY_FORMAT: u32 = 1;

/// What the caller says about an entry's origin; stored, never interpreted.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EntryMeta {
    pub pipeline: String,
    pub stage: String,
    pub kind: String,
    /// Where the outputs can be used, e.g. the GPU model and TensorRT version of an
    /// engine. The caller puts what matters into the key as well; this is for display.
    #[serde(default)]
    pub platform: BTreeMap<String, String>,
    /// How long the stage ran when its outputs were stored, in ms: a restored stage is
    /// recorded with it, so scheduling estimates stay those of a run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

/// A stage key's outputs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    pub format: u32,
    pub key: String,
    /// When it was stored, in milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    pub meta: EntryMeta,
    /// In the order the caller gave them.
    pub outputs: Vec<OutputRecord>,
}

/// One declared output.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OutputRecord {
    pub name: String,
    /// pochi's content digest of the output, as `fingerprint::StatCache::digest` computes
    /// it (a file's BLAKE3; for a directory, the digest of its sorted entries), so a
    /// restored output's digest is known without hashing it again.
    pub digest: String,
    pub node: Node,
}

/// An output is a file or a directory tree.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Node {
    File(FileRecord),
    /// Every file and directory below the output, sorted by path.
    Dir {
        entries: Vec<TreeEntry>,
    },
}

/// One stored file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileRecord {
    /// The blob's name in `cas/`.
    pub blake3: String,
    /// For remote caches (REAPI, Bazel's HTTP cache).
    pub sha256: String,
    pub size: u64,
    pub executable: bool,
}

/// A file or a directory inside a directory output.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TreeEntry {
    /// Relative to the output, `/`-separated, no `.` or `..`.
    pub path: String,
    /// The file, or `None` for a directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileRecord>,
}

impl Entry {
    /// Every file the entry names (blobs may repeat).
    pub fn files(&self) -> impl Iterator<Item = &FileRecord> {
        self.outputs.iter().flat_map(|output| match &output.node {
            Node::File(file) => vec![file],
            Node::Dir { entries } => entries.iter().filter_map(|e| e.file.as_ref()).collect(),
        })
    }

    /// The sum of the sizes of the files the entry names.
    pub fn total_size(&self) -> u64 {
        self.files().map(|file| file.size).sum()
    }

    /// Why this entry cannot be trusted for `key`, if it cannot.
    pub fn check(&self, key: &str) -> Result<(), EntryError> {
        if self.format != ENTRY_FORMAT {
            return Err(EntryError::Format { found: self.format });
        }
        if self.key != key {
            return Err(EntryError::OtherKey {
                key: self.key.clone(),
            });
        }
        let mut names = BTreeSet::new();
        for output in &self.outputs {
            if !names.insert(&output.name) {
                return Err(EntryError::OutputTwice {
                    name: output.name.clone(),
                });
            }
            let digest = match &output.node {
                Node::File(file) => check_file(file).map(|()| file.blake3.clone())?,
                Node::Dir { entries } => tree_digest(entries)?,
            };
            if digest != output.digest {
                return Err(EntryError::DigestMismatch {
                    name: output.name.clone(),
                });
            }
        }
        Ok(())
    }
}

fn check_file(file: &FileRecord) -> Result<(), EntryError> {
    if !is_blake3_hex(&file.blake3) {
        return Err(EntryError::NotBlake3 {
            digest: file.blake3.clone(),
        });
    }
    // A SHA-256 is as long as a BLAKE3 digest in hex.
    if !is_blake3_hex(&file.sha256) {
        return Err(EntryError::NotSha256 {
            digest: file.sha256.clone(),
        });
    }
    Ok(())
}

/// Why an entry (or a directory output's listing) cannot be trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, miette::Diagnostic)]
pub enum EntryError {
    #[error("entry format {found} is not {ENTRY_FORMAT}")]
    Format { found: u32 },
    #[error("entry is for key {key}")]
    OtherKey { key: String },
    #[error("output `{name}` is listed twice")]
    OutputTwice { name: String },
    #[error("output `{name}`: its digest does not match its files")]
    DigestMismatch { name: String },
    #[error("`{digest}` is not a BLAKE3 digest")]
    NotBlake3 { digest: String },
    #[error("`{digest}` is not a SHA-256 digest")]
    NotSha256 { digest: String },
    #[error("unsafe path `{path}` in a directory output")]
    UnsafePath { path: String },
    #[error("`{path}` has no parent directory")]
    NoParent { path: String },
    #[error("`{path}` is listed twice")]
    ListedTwice { path: String },
}

/// A directory being rebuilt from a flat list of entries.
#[derive(Default)]
struct DirNode<'a> {
    children: BTreeMap<&'a str, Child<'a>>,
}

enum Child<'a> {
    File(&'a FileRecord),
    Dir(DirNode<'a>),
}

/// pochi's digest of a directory whose contents are `entries` (as `StatCache::digest`
/// computes it from the files: each entry's name, `d` or `f`, and digest, in sorted
/// order, directories recursively). Fails when a path is unsafe or repeated or its parent
/// is not a listed directory.
pub(super) fn tree_digest(entries: &[TreeEntry]) -> Result<String, EntryError> {
    let mut root = DirNode::default();
    for entry in entries {
        let parts: Vec<&str> = entry.path.split('/').collect();
        if parts
            .iter()
            .any(|p| p.is_empty() || *p == "." || *p == ".." || p.contains('\0'))
        {
            return Err(EntryError::UnsafePath {
                path: entry.path.clone(),
            });
        }
        let (name, parents) = parts.split_last().unwrap_or((&"", &[]));
        let mut dir = &mut root;
        for part in parents {
            dir = match dir.children.get_mut(part) {
                Some(Child::Dir(sub)) => sub,
                _ => {
                    return Err(EntryError::NoParent {
                        path: entry.path.clone(),
                    });
                }
            };
        }
        let child = match &entry.file {
            Some(file) => check_file(file).map(|()| Child::File(file))?,
            None => Child::Dir(DirNode::default()),
        };
        if dir.children.insert(name, child).is_some() {
            return Err(EntryError::ListedTwice {
                path: entry.path.clone(),
            });
        }
    }
    Ok(dir_digest(&root))
}

fn dir_digest(dir: &DirNode) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"pochi-dir\n");
    for (name, child) in &dir.children {
        let (kind, digest) = match child {
            Child::File(file) => ("f", file.blake3.clone()),
            Child::Dir(sub) => ("d", dir_digest(sub)),
        };
        hasher.update(name.as_bytes());
        hasher.update(format!("\0{kind}\0{digest}\n").as_bytes());
    }
    hasher.finalize().to_hex().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::StatCache;
    use std::path::Path;

    fn file(content: &[u8]) -> FileRecord {
        FileRecord {
            blake3: blake3::hash(content).to_hex().to_string(),
            sha256: super::super::FileDigests::of_reader(content)
                .unwrap()
                .sha256,
            size: content.len() as u64,
            executable: false,
        }
    }

    fn entry(path: &str, content: Option<&[u8]>) -> TreeEntry {
        TreeEntry {
            path: path.into(),
            file: content.map(file),
        }
    }

    #[test]
    fn tree_digest_equals_the_fingerprint_of_the_same_directory() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir_all(out.join("sub/deeper")).unwrap();
        std::fs::create_dir_all(out.join("empty")).unwrap();
        std::fs::write(out.join("a.bin"), b"aaa").unwrap();
        std::fs::write(out.join("a-b"), b"dash").unwrap();
        std::fs::write(out.join("sub/x"), b"xx").unwrap();
        std::fs::write(out.join("sub/deeper/y"), b"").unwrap();
        let expected = StatCache::default()
            .digest(dir.path(), Path::new("out"))
            .unwrap();
        let entries = vec![
            entry("a-b", Some(b"dash")),
            entry("a.bin", Some(b"aaa")),
            entry("empty", None),
            entry("sub", None),
            entry("sub/deeper", None),
            entry("sub/deeper/y", Some(b"")),
            entry("sub/x", Some(b"xx")),
        ];
        assert_eq!(tree_digest(&entries).unwrap(), expected);
        // The order of the list does not matter.
        let mut reversed = entries.clone();
        reversed.reverse();
        reversed.sort_by_key(|e| e.path.matches('/').count());
        assert_eq!(tree_digest(&reversed).unwrap(), expected);
    }

    #[test]
    fn unsafe_repeated_and_orphan_paths_are_refused() {
        for bad in [
            vec![entry("../x", Some(b"x"))],
            vec![entry("/abs", Some(b"x"))],
            vec![entry("a/./b", Some(b"x"))],
            vec![entry("a", Some(b"x")), entry("a", Some(b"y"))],
            vec![entry("no-parent/x", Some(b"x"))],
            vec![entry("file", Some(b"x")), entry("file/x", Some(b"x"))],
        ] {
            assert!(tree_digest(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn check_refuses_an_entry_whose_digests_do_not_add_up() {
        let good = Entry {
            format: ENTRY_FORMAT,
            key: "ab".repeat(16),
            created_unix_ms: 0,
            meta: EntryMeta::default(),
            outputs: vec![OutputRecord {
                name: "model".into(),
                digest: file(b"m").blake3,
                node: Node::File(file(b"m")),
            }],
        };
        assert_eq!(good.check(&"ab".repeat(16)), Ok(()));
        assert!(good.check(&"cd".repeat(16)).is_err());
        let mut bad = good.clone();
        bad.outputs[0].digest = file(b"other").blake3;
        assert!(bad.check(&good.key).is_err());
        let mut no_sha = good.clone();
        if let Node::File(file) = &mut no_sha.outputs[0].node {
            file.sha256 = "not hex".into();
        }
        assert!(no_sha.check(&good.key).is_err());
        let mut twice = good.clone();
        twice.outputs.push(good.outputs[0].clone());
        assert!(twice.check(&good.key).is_err());
    }
}
