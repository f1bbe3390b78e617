//! A stage as a REAPI `Action`, the key of its action-cache entry: the `Command` (the
//! stage's argv and environment with run- and machine-specific paths made stable, and its
//! declared output paths), the input root (the stage's inputs inside the project, as a
//! Merkle tree of `Directory` messages) and the platform properties on the Action, with
//! pochi's own stage key (its fingerprint) as the Action's salt.
//!
//! The salt is what makes an entry safe to reuse: it changes with everything pochi's key
//! holds (inputs' content, parameters, the toolchain's identity, the worker scripts), so two
//! stages share an entry only when pochi would call them the same stage. The rest is what
//! other REAPI tools read, and what remote execution (issue 11) will run; a path left
//! unstable there only costs hits, never correctness.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;

use super::action::{
    ActionSpec, Blob, CommandSpec, InputFile, build_action, build_command, build_input_tree,
    check_relative,
};
use super::digest::{Digest, DigestFunction};
use super::error::RemoteError;
use crate::action::Action;

/// One declared output of a stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageOutput {
    /// The output's key in the pipeline (`outputs.<key>`), its name in pochi's cache.
    pub name: String,
    /// Where it is published, relative to the pipeline directory (`/`-separated).
    pub path: String,
    /// Where this run's action writes it (the temporary path in its argv).
    pub temp: PathBuf,
}

/// What a stage's REAPI Action is made of.
#[derive(Debug, Clone)]
pub struct StageDescription<'a> {
    /// The Action the stage's kind made for this run.
    pub action: &'a Action,
    /// The stage's own `env` (the process gets it besides the action's).
    pub env: &'a BTreeMap<String, String>,
    pub outputs: &'a [StageOutput],
    /// Paths in the argv and environment that differ between runs or machines, and the
    /// stable text that replaces them (the run's scratch directory, the interpreter, the
    /// pochi binary, the project directory...). Longer paths are replaced first.
    pub rewrites: &'a [(PathBuf, String)],
    /// The input root's files, relative to the project directory.
    pub inputs: &'a [InputFile],
    /// pochi's stage key (its fingerprint, hex).
    pub salt: &'a str,
}

/// A stage's Action, ready to look up or to store under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageAction {
    /// The Action's digest: the action-cache key.
    pub digest: Digest,
    pub function: DigestFunction,
    /// The declared outputs, (name, path), in the stage's order.
    pub outputs: Vec<(String, String)>,
    /// The Action, its Command and the input root's Directory messages, for upload (so
    /// another REAPI tool can read the entry's Action).
    pub blobs: Vec<Blob>,
    /// The Action's platform properties, sorted.
    pub platform: Vec<(String, String)>,
}

/// Builds the REAPI Action of a stage.
pub fn stage_action(
    function: DigestFunction,
    stage: &StageDescription,
) -> Result<StageAction, RemoteError> {
    let rewrites = ordered_rewrites(stage);
    let stable = |text: &str| rewrite(text, &rewrites);
    let mut environment: BTreeMap<String, String> = stage
        .action
        .env
        .iter()
        .chain(stage.env)
        .map(|(name, value)| (name.clone(), stable(value)))
        .collect();
    // The GPU lease is the scheduler's choice, not part of what the stage computes.
    environment.remove("CUDA_VISIBLE_DEVICES");
    let command = build_command(&CommandSpec {
        arguments: stage.action.argv.iter().map(|a| stable(a)).collect(),
        environment,
        output_paths: stage.outputs.iter().map(|o| o.path.clone()).collect(),
        working_directory: String::new(),
    })?;
    let command = Blob::of_message(function, &command);
    let tree = build_input_tree(function, stage.inputs)?;
    let platform: Vec<(String, String)> = stage
        .action
        .platform
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let (_, action) = build_action(
        function,
        &ActionSpec {
            command: command.digest.clone(),
            input_root: tree.root.clone(),
            platform: platform.clone(),
            salt: stage.salt.as_bytes().to_vec(),
            do_not_cache: false,
            timeout: None,
        },
    );
    let mut blobs = vec![action.clone(), command];
    blobs.extend(tree.directories);
    Ok(StageAction {
        digest: action.digest,
        function,
        outputs: stage
            .outputs
            .iter()
            .map(|o| (o.name.clone(), o.path.clone()))
            .collect(),
        blobs,
        platform,
    })
}

/// The rewrites with each output's temporary path first (it lies inside the scratch
/// root), then the rest, longest first.
fn ordered_rewrites(stage: &StageDescription) -> Vec<(String, String)> {
    let rewrites = stage
        .outputs
        .iter()
        .map(|o| (o.temp.to_string_lossy().into_owned(), o.path.clone()))
        .chain(text_rewrites(stage.rewrites))
        .collect();
    longest_first(rewrites)
}

/// Path rewrites as text pairs.
fn text_rewrites(rewrites: &[(PathBuf, String)]) -> impl Iterator<Item = (String, String)> + '_ {
    rewrites
        .iter()
        .map(|(path, text)| (path.to_string_lossy().into_owned(), text.clone()))
}

/// The rewrites without empty paths, longest path first (so a path inside another one
/// is replaced as a whole).
fn longest_first(mut rewrites: Vec<(String, String)>) -> Vec<(String, String)> {
    rewrites.retain(|(from, _)| !from.is_empty());
    rewrites.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
    rewrites
}

/// `text` with every occurrence of each of `rewrites`' paths replaced by its text, longest
/// path first (as a stage's argv is made stable), for the files a remote action reads.
pub(crate) fn rewrite_paths(text: &str, rewrites: &[(PathBuf, String)]) -> String {
    rewrite(text, &longest_first(text_rewrites(rewrites).collect()))
}

/// `text` with every occurrence of each rewrite's path replaced, longest path first, each
/// part of the text replaced at most once. A path matches only where it ends a path
/// component (`/p` in `/p/a` or `/p"`, not in `/p2/a` or `/p.txt`).
fn rewrite(text: &str, rewrites: &[(String, String)]) -> String {
    let ends_component = |tail: &str| {
        tail.chars()
            .next()
            .is_none_or(|c| !(c.is_alphanumeric() || matches!(c, '.' | '-' | '_')))
    };
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    'scan: while !rest.is_empty() {
        for (from, to) in rewrites {
            if let Some(tail) = rest
                .strip_prefix(from.as_str())
                .filter(|tail| ends_component(tail))
            {
                out.push_str(to);
                rest = tail;
                continue 'scan;
            }
        }
        let mut chars = rest.chars();
        if let Some(c) = chars.next() {
            out.push(c);
        }
        rest = chars.as_str();
    }
    out
}

/// A file's digests, remembered by its path and stat for one build, so a file that is
/// the input of several stages is read once.
#[derive(Debug, Default)]
pub(crate) struct DigestMemo {
    known: Mutex<HashMap<(PathBuf, FileIdentity), (Digest, Digest)>>,
}

/// What identifies a file's content for one build (as the stat cache does).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct FileIdentity {
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    inode: u64,
}

impl FileIdentity {
    fn of(metadata: &fs::Metadata) -> FileIdentity {
        FileIdentity {
            size: metadata.len(),
            mtime_ns: i128::from(metadata.mtime()) * 1_000_000_000
                + i128::from(metadata.mtime_nsec()),
            ctime_ns: i128::from(metadata.ctime()) * 1_000_000_000
                + i128::from(metadata.ctime_nsec()),
            inode: metadata.ino(),
        }
    }
}

impl DigestMemo {
    /// The file's digest under `function`, read (both digests at once) unless known.
    pub(crate) fn digest(
        &self,
        path: &Path,
        metadata: &fs::Metadata,
        function: DigestFunction,
    ) -> Result<Digest, RemoteError> {
        let key = (path.to_path_buf(), FileIdentity::of(metadata));
        let known = self
            .known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        let (sha256, blake3) = match known {
            Some(pair) => pair,
            None => {
                let digests =
                    crate::cache::FileDigests::of_path(path).map_err(|source| RemoteError::Io {
                        action: "read",
                        path: path.to_path_buf(),
                        source,
                    })?;
                let pair = (
                    Digest::new(&digests.sha256, digests.size)?,
                    Digest::new(&digests.blake3, digests.size)?,
                );
                self.known
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key, pair.clone());
                pair
            }
        };
        Ok(match function {
            DigestFunction::Sha256 => sha256,
            DigestFunction::Blake3 => blake3,
        })
    }
}

/// The input root's files for the stage inputs at `paths` (relative to `dir`, files or
/// directories, walked recursively). Inputs that do not exist (an upstream output a
/// tolerant stage runs without) or lie outside the project are left out: the salt holds
/// their digests.
pub(crate) fn input_files(
    dir: &Path,
    paths: &[PathBuf],
    function: DigestFunction,
    memo: &DigestMemo,
) -> Result<Vec<InputFile>, RemoteError> {
    let mut files = BTreeMap::new();
    for path in paths {
        let Some(relative) = inside(path) else {
            continue;
        };
        let full = dir.join(path);
        let Ok(metadata) = fs::metadata(&full) else {
            continue;
        };
        collect(&full, &relative, &metadata, function, memo, &mut files)?;
    }
    Ok(files.into_values().collect())
}

/// `path` as a clean relative `/`-separated path, if it has no `..`, root or `.` part.
fn inside(path: &Path) -> Option<String> {
    let mut parts = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => parts.push(part.to_str()?),
            Component::CurDir => {}
            _ => return None,
        }
    }
    let joined = parts.join("/");
    check_relative(&joined, "input").ok().map(|()| joined)
}

fn collect(
    full: &Path,
    relative: &str,
    metadata: &fs::Metadata,
    function: DigestFunction,
    memo: &DigestMemo,
    files: &mut BTreeMap<String, InputFile>,
) -> Result<(), RemoteError> {
    let io = |source| RemoteError::Io {
        action: "read",
        path: full.to_path_buf(),
        source,
    };
    if metadata.is_file() {
        let digest = memo.digest(full, metadata, function)?;
        files.insert(
            relative.to_string(),
            InputFile {
                path: relative.to_string(),
                digest,
                executable: metadata.permissions().mode() & 0o111 != 0,
            },
        );
    } else if metadata.is_dir() {
        let mut names: Vec<_> = fs::read_dir(full)
            .and_then(|list| list.map(|e| e.map(|e| e.file_name())).collect())
            .map_err(io)?;
        names.sort();
        for name in names {
            let Some(name) = name.to_str() else {
                continue;
            };
            let child = full.join(name);
            let metadata = fs::metadata(&child).map_err(io)?;
            collect(
                &child,
                &format!("{relative}/{name}"),
                &metadata,
                function,
                memo,
                files,
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::proto;
    use prost::Message;

    const F: DigestFunction = DigestFunction::Sha256;

    fn outputs(temp_root: &str) -> Vec<StageOutput> {
        vec![StageOutput {
            name: "onnx".into(),
            path: "build/model.onnx".into(),
            temp: PathBuf::from(format!("{temp_root}/onnx/model.onnx")),
        }]
    }

    fn action(dir: &str, temp_root: &str, gpu: Option<&str>) -> Action {
        let mut action = Action::new(vec![
            format!("{dir}/.cache/python"),
            "-I".into(),
            format!("{temp_root}/.scratch/request.json"),
            format!("--out={temp_root}/onnx/model.onnx"),
        ]);
        action.env.insert("PYTHONUNBUFFERED".into(), "1".into());
        if let Some(gpu) = gpu {
            action.platform.insert("gpu".into(), gpu.into());
        }
        action
    }

    fn build(dir: &str, temp_root: &str, gpu: Option<&str>, salt: &str) -> StageAction {
        let action = action(dir, temp_root, gpu);
        let outputs = outputs(temp_root);
        let rewrites = vec![
            (
                PathBuf::from(format!("{temp_root}/.scratch")),
                ".scratch".into(),
            ),
            (
                PathBuf::from(format!("{dir}/.cache/python")),
                "python".into(),
            ),
        ];
        let env = BTreeMap::from([
            ("CUDA_VISIBLE_DEVICES".to_string(), "3".to_string()),
            ("SEED".to_string(), "1".to_string()),
        ]);
        let inputs = vec![InputFile {
            path: "model.pth".into(),
            digest: Digest::of_bytes(F, b"weights"),
            executable: false,
        }];
        stage_action(
            F,
            &StageDescription {
                action: &action,
                env: &env,
                outputs: &outputs,
                rewrites: &rewrites,
                inputs: &inputs,
                salt,
            },
        )
        .unwrap()
    }

    #[test]
    fn the_action_is_the_same_in_another_clone_and_run() {
        let a = build("/home/a/p", ".pochi/v1/p/tmp/run.1.0", None, "key");
        let b = build("/srv/ci/q", ".pochi/v1/p/tmp/run.77.5", None, "key");
        assert_eq!(a, b);
        let command = proto::Command::decode(a.blobs[1].bytes.as_slice()).unwrap();
        assert_eq!(
            command.arguments,
            [
                "python",
                "-I",
                ".scratch/request.json",
                "--out=build/model.onnx"
            ]
        );
        let names: Vec<_> = command
            .environment_variables
            .iter()
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(
            names,
            ["PYTHONUNBUFFERED", "SEED"],
            "no CUDA_VISIBLE_DEVICES"
        );
        assert_eq!(command.output_paths, ["build/model.onnx"]);
        let stored = proto::Action::decode(a.blobs[0].bytes.as_slice()).unwrap();
        assert_eq!(a.digest, Digest::of_bytes(F, &a.blobs[0].bytes));
        assert_eq!(stored.salt, b"key");
        let platform = stored.platform.unwrap();
        assert!(platform.properties.iter().any(|p| p.name == "OSFamily"));
        // Deprecated in REAPI (the platform belongs on the Action): asserted unset.
        #[allow(deprecated)]
        let platform = &command.platform;
        assert!(platform.is_none(), "the platform is on the Action");
    }

    #[test]
    fn the_salt_and_the_platform_change_the_key() {
        let base = build("/p", "t", None, "key");
        assert_ne!(build("/p", "t", None, "other key").digest, base.digest);
        let h100 = build("/p", "t", Some("NVIDIA H100"), "key");
        let a100 = build("/p", "t", Some("NVIDIA A100"), "key");
        assert_ne!(h100.digest, a100.digest);
        assert_ne!(h100.digest, base.digest);
        assert!(
            h100.platform
                .contains(&("gpu".into(), "NVIDIA H100".into()))
        );
    }

    #[test]
    fn rewrites_replace_the_longest_path_first_and_once() {
        let rewrites = vec![
            ("/p/tmp/x".to_string(), "out".to_string()),
            ("/p".to_string(), ".".to_string()),
        ];
        assert_eq!(rewrite("/p/tmp/x /p/a", &rewrites), "out ./a");
        assert_eq!(rewrite("none", &rewrites), "none");
        assert_eq!(rewrite("é/p", &rewrites), "é.");
        // Only whole path components: another directory that starts alike is kept.
        assert_eq!(rewrite("/p2/a /p.txt /p-x", &rewrites), "/p2/a /p.txt /p-x");
        assert_eq!(rewrite("--out=/p/tmp/x,/p", &rewrites), "--out=out,.");
    }

    #[test]
    fn inputs_are_walked_and_each_file_read_once() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("data/sub")).unwrap();
        fs::write(dir.path().join("data/a.npy"), b"a").unwrap();
        fs::write(dir.path().join("data/sub/b.npy"), b"b").unwrap();
        fs::write(dir.path().join("model.pth"), b"w").unwrap();
        fs::set_permissions(
            dir.path().join("model.pth"),
            fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let memo = DigestMemo::default();
        let paths = [
            PathBuf::from("model.pth"),
            PathBuf::from("data"),
            PathBuf::from("missing.onnx"),
            PathBuf::from("../outside"),
        ];
        let files = input_files(dir.path(), &paths, F, &memo).unwrap();
        let names: Vec<_> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(names, ["data/a.npy", "data/sub/b.npy", "model.pth"]);
        assert_eq!(files[0].digest, Digest::of_bytes(F, b"a"));
        assert!(files[2].executable && !files[0].executable);
        let blake = input_files(dir.path(), &paths, DigestFunction::Blake3, &memo).unwrap();
        assert_eq!(blake[0].digest.hash(), blake3::hash(b"a").to_hex().as_str());
        assert_eq!(memo.known.lock().unwrap().len(), 3, "one read per file");
    }
}
