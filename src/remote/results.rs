//! A stage's outputs as a REAPI `ActionResult`, both ways: made from pochi's local cache
//! entry for an upload (output files by digest, output directories as `Tree` blobs), and
//! checked and downloaded for a restore (the entry must name exactly the stage's declared
//! outputs, each once; every blob must be in the store and arrive with its digest).

use std::path::{Path, PathBuf};

use super::CacheBackend;
use super::action::{Blob, InputFile, build_directory_tree};
use super::digest::{Digest, DigestFunction};
use super::error::RemoteError;
use super::proto;
use super::stage::StageAction;
use super::tree::{fetch_tree, tree_files, write_tree};
use super::verify::set_mode;
use crate::cache::{Entry, FileRecord, Node};

/// What an upload sends: the entry, the blobs sent from memory (the `Tree` blobs of its
/// output directories, each `Directory` in them, the Action's other outputs), and each
/// file blob with the local record it is read from.
#[derive(Debug, Clone)]
pub(crate) struct ResultUpload {
    pub result: proto::ActionResult,
    pub from_memory: Vec<Blob>,
    pub files: Vec<(Digest, FileRecord)>,
}

/// A file record's digest under `function`.
pub(crate) fn record_digest(
    function: DigestFunction,
    file: &FileRecord,
) -> Result<Digest, RemoteError> {
    let hash = match function {
        DigestFunction::Sha256 => &file.sha256,
        DigestFunction::Blake3 => &file.blake3,
    };
    Digest::new(hash, file.size)
}

/// The `ActionResult` for a stage whose declared outputs the local cache stored as
/// `entry`, and whose other outputs (a script's answer file) are `other_outputs`.
pub(crate) fn action_result(
    stage: &StageAction,
    entry: &Entry,
    other_outputs: &[(String, Vec<u8>)],
) -> Result<ResultUpload, RemoteError> {
    let function = stage.function;
    let mut upload = ResultUpload {
        result: proto::ActionResult::default(),
        from_memory: Vec::new(),
        files: Vec::new(),
    };
    for (name, path) in &stage.outputs {
        if let Some((_, bytes)) = other_outputs.iter().find(|(other, _)| other == name) {
            let blob = Blob {
                digest: Digest::of_bytes(function, bytes),
                bytes: bytes.clone(),
            };
            upload.result.output_files.push(proto::OutputFile {
                path: path.clone(),
                digest: Some(blob.digest.to_proto()),
                ..Default::default()
            });
            upload.from_memory.push(blob);
            continue;
        }
        let output = entry
            .outputs
            .iter()
            .find(|o| &o.name == name)
            .ok_or_else(|| RemoteError::InputTree(format!("the entry has no output `{name}`")))?;
        match &output.node {
            Node::File(file) => {
                let digest = record_digest(function, file)?;
                upload.result.output_files.push(proto::OutputFile {
                    path: path.clone(),
                    digest: Some(digest.to_proto()),
                    is_executable: file.executable,
                    ..Default::default()
                });
                upload.files.push((digest, file.clone()));
            }
            Node::Dir { entries } => add_directory(&mut upload, function, path, entries)?,
        }
    }
    Ok(upload)
}

/// Adds an output directory (`entries`, from the local entry) to an upload at `path`: its
/// files by digest, its `Tree` and each `Directory` in it as blobs of their own (a server
/// may check that the directories an entry names are in its CAS: buildbox-casd treats an
/// entry without them as missing).
fn add_directory(
    upload: &mut ResultUpload,
    function: DigestFunction,
    path: &str,
    entries: &[crate::cache::TreeEntry],
) -> Result<(), RemoteError> {
    let mut files = Vec::new();
    let mut dirs = Vec::new();
    for item in entries {
        match &item.file {
            Some(file) => {
                let digest = record_digest(function, file)?;
                files.push(InputFile {
                    path: item.path.clone(),
                    digest: digest.clone(),
                    executable: file.executable,
                });
                upload.files.push((digest, file.clone()));
            }
            None => dirs.push(item.path.clone()),
        }
    }
    let directories = build_directory_tree(function, &files, &dirs)?;
    let tree = directories
        .to_tree()
        .map_err(|e| RemoteError::InputTree(e.to_string()))?;
    let blob = Blob::of_message(function, &tree);
    upload.from_memory.extend(directories.directories);
    upload
        .result
        .output_directories
        .push(proto::OutputDirectory {
            path: path.to_string(),
            tree_digest: Some(blob.digest.to_proto()),
            ..Default::default()
        });
    upload.from_memory.push(blob);
    Ok(())
}

/// Why an entry on the server cannot be used (the stage runs instead).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemoteMiss {
    #[error("no entry")]
    NoEntry,
    #[error("the entry does not match the stage: {0}")]
    Mismatch(String),
    #[error("{0} blob(s) of the entry are gone from the server")]
    BlobsMissing(usize),
    #[error("the server returned other bytes for blob {0} (corrupt on the server)")]
    Corrupt(Digest),
    /// An output tree that would write outside its output, or breaks REAPI's rules for one;
    /// nothing of it was written.
    #[error("{0}")]
    Refused(String),
}

/// One declared output as the entry names it.
enum Planned {
    File { digest: Digest, executable: bool },
    Dir(proto::Tree),
}

/// What a restore wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Downloaded {
    pub files: u64,
    pub bytes: u64,
}

/// Checks an entry against the stage and downloads its outputs: output `name` goes to
/// `dest_for(name)` (replaced if it exists). `Ok(Err(miss))` when the entry cannot be used
/// (what was written is removed then); `Err` when the server failed.
pub(super) fn download_result(
    backend: &dyn CacheBackend,
    stage: &StageAction,
    result: &proto::ActionResult,
    dest_for: &dyn Fn(&str) -> PathBuf,
) -> Result<Result<Downloaded, RemoteMiss>, RemoteError> {
    let planned = match plan(backend, stage, result)? {
        Ok(planned) => planned,
        Err(miss) => return Ok(Err(miss)),
    };
    let mut wanted = Vec::new();
    for (_, plan) in &planned {
        match plan {
            Planned::File { digest, .. } => wanted.push(digest.clone()),
            Planned::Dir(tree) => wanted.extend(tree_files(tree)?),
        }
    }
    if let Some(miss) = room_for(&planned, &wanted, dest_for) {
        return Ok(Err(miss));
    }
    wanted.sort();
    wanted.dedup();
    let missing = backend.find_missing(&wanted)?;
    if !missing.is_empty() {
        return Ok(Err(RemoteMiss::BlobsMissing(missing.len())));
    }
    let mut placed = Vec::new();
    let outcome = write_planned(backend, &planned, dest_for, &mut placed);
    if !matches!(outcome, Ok(Ok(_))) {
        for path in placed {
            let _ = crate::fsutil::remove_path(&path);
        }
    }
    outcome.map(|done| {
        done.map(|()| Downloaded {
            files: wanted.len() as u64,
            bytes: wanted.iter().map(Digest::size).sum(),
        })
    })
}

/// A miss when the files an entry claims would not fit where they go: a server's claim is
/// not written to disk until it fills it.
fn room_for(
    planned: &[(String, Planned)],
    files: &[Digest],
    dest_for: &dyn Fn(&str) -> PathBuf,
) -> Option<RemoteMiss> {
    let claimed: u64 = files.iter().map(Digest::size).sum();
    let (name, _) = planned.first()?;
    let dest = dest_for(name);
    let free = free_bytes(&dest)?;
    (claimed > free).then(|| {
        RemoteMiss::Refused(format!(
            "its outputs take {claimed} bytes, more than the {free} free on the disk of `{}`",
            dest.display()
        ))
    })
}

/// The bytes free for this user on the file system of `path` (its nearest existing
/// ancestor), if it can be asked.
fn free_bytes(path: &Path) -> Option<u64> {
    let existing = path.ancestors().find(|a| a.exists())?;
    let stats = rustix::fs::statvfs(existing).ok()?;
    Some(stats.f_bavail.saturating_mul(stats.f_frsize))
}

/// Each declared output with what the entry says of it (trees fetched, verified).
fn plan(
    backend: &dyn CacheBackend,
    stage: &StageAction,
    result: &proto::ActionResult,
) -> Result<Result<Vec<(String, Planned)>, RemoteMiss>, RemoteError> {
    let mismatch = |why: String| Ok(Err(RemoteMiss::Mismatch(why)));
    if result.exit_code != 0 {
        return mismatch(format!("it records exit code {}", result.exit_code));
    }
    let declared = stage.outputs.len();
    if result.output_files.len() + result.output_directories.len() != declared {
        return mismatch("it names other outputs".into());
    }
    let mut planned = Vec::new();
    for (name, path) in &stage.outputs {
        let file = result.output_files.iter().find(|f| &f.path == path);
        let dir = result.output_directories.iter().find(|d| &d.path == path);
        let plan = match (file, dir) {
            (Some(file), None) => Planned::File {
                digest: proto_digest(file.digest.as_ref(), path)?,
                executable: file.is_executable,
            },
            (None, Some(dir)) => {
                let digest = proto_digest(dir.tree_digest.as_ref(), path)?;
                match fetch_tree(backend, &digest) {
                    Ok(tree) => Planned::Dir(tree),
                    Err(RemoteError::NotFound { .. }) => {
                        return Ok(Err(RemoteMiss::BlobsMissing(1)));
                    }
                    Err(RemoteError::DigestMismatch { expected, .. }) => {
                        return Ok(Err(RemoteMiss::Corrupt(expected)));
                    }
                    Err(e @ RemoteError::RefusedTree { .. }) => {
                        return Ok(Err(RemoteMiss::Refused(e.to_string())));
                    }
                    Err(e) => return Err(e),
                }
            }
            _ => return mismatch(format!("output `{path}` is not named once")),
        };
        planned.push((name.clone(), plan));
    }
    Ok(Ok(planned))
}

fn proto_digest(digest: Option<&proto::Digest>, path: &str) -> Result<Digest, RemoteError> {
    match digest {
        Some(digest) => Digest::from_proto(digest),
        None => Err(RemoteError::InvalidDigest {
            digest: String::new(),
            reason: format!("output `{path}` has no digest"),
        }),
    }
}

/// Writes every planned output; a blob gone or corrupt meanwhile is a miss.
fn write_planned(
    backend: &dyn CacheBackend,
    planned: &[(String, Planned)],
    dest_for: &dyn Fn(&str) -> PathBuf,
    placed: &mut Vec<PathBuf>,
) -> Result<Result<(), RemoteMiss>, RemoteError> {
    for (name, plan) in planned {
        let dest = dest_for(name);
        clear(&dest)?;
        placed.push(dest.clone());
        let written = match plan {
            Planned::File { digest, executable } => backend
                .download_to_file(digest, &dest)
                .and_then(|()| mode(&dest, *executable)),
            Planned::Dir(tree) => write_tree(backend, tree, &dest),
        };
        match written {
            Ok(()) => {}
            Err(RemoteError::DigestMismatch { expected, .. }) => {
                return Ok(Err(RemoteMiss::Corrupt(expected)));
            }
            Err(RemoteError::NotFound { .. }) => return Ok(Err(RemoteMiss::BlobsMissing(1))),
            Err(e @ (RemoteError::UnsafePath { .. } | RemoteError::RefusedTree { .. })) => {
                return Ok(Err(RemoteMiss::Refused(e.to_string())));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(Ok(()))
}

fn clear(dest: &Path) -> Result<(), RemoteError> {
    let io = |source| RemoteError::Io {
        action: "replace",
        path: dest.to_path_buf(),
        source,
    };
    crate::fsutil::remove_path(dest).map_err(io)?;
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    Ok(())
}

fn mode(path: &Path, executable: bool) -> Result<(), RemoteError> {
    set_mode(path, executable).map_err(|source| RemoteError::Io {
        action: "set the mode of",
        path: path.to_path_buf(),
        source,
    })
}
