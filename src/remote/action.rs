//! The REAPI messages pochi stores and executes, built deterministically: a `Command`
//! (arguments, sorted environment, sorted output paths), an input root as a Merkle tree
//! of `Directory` messages, and an `Action` (platform on the Action, salt, do-not-cache)
//! with its digest. The same inputs in any order give the same digests.

use std::collections::BTreeMap;
use std::time::Duration;

use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use prost::Message;

use super::digest::{Digest, DigestFunction};
use super::error::RemoteError;

/// A serialized message and its digest: a blob ready for upload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blob {
    pub digest: Digest,
    pub bytes: Vec<u8>,
}

impl Blob {
    /// Serializes a message and digests the bytes.
    pub fn of_message<M: Message>(function: DigestFunction, message: &M) -> Self {
        let bytes = message.encode_to_vec();
        Blob {
            digest: Digest::of_bytes(function, &bytes),
            bytes,
        }
    }

    /// A small file's bytes, checked against the digest it should have (a file that
    /// changed since it was hashed is `LocalFileChanged`).
    pub fn of_file(
        path: &std::path::Path,
        digest: &Digest,
        function: DigestFunction,
    ) -> Result<Self, RemoteError> {
        let bytes = std::fs::read(path).map_err(|source| RemoteError::Io {
            action: "read",
            path: path.to_owned(),
            source,
        })?;
        let actual = Digest::of_bytes(function, &bytes);
        if actual != *digest {
            return Err(RemoteError::LocalFileChanged {
                path: path.to_owned(),
                expected: digest.clone(),
                actual,
            });
        }
        Ok(Blob {
            digest: digest.clone(),
            bytes,
        })
    }
}

/// What a `Command` holds; `build_command` sorts and checks it.
#[derive(Clone, Debug, Default)]
pub struct CommandSpec {
    pub arguments: Vec<String>,
    pub environment: BTreeMap<String, String>,
    /// Output files and directories, relative to the working directory.
    pub output_paths: Vec<String>,
    /// Relative to the input root; empty for the root itself.
    pub working_directory: String,
}

/// A REAPI `Command`: environment variables sorted by name, output paths sorted and
/// deduplicated (as the spec requires), no platform (it belongs on the Action).
pub fn build_command(spec: &CommandSpec) -> Result<re::Command, RemoteError> {
    if spec.arguments.is_empty() {
        return Err(RemoteError::InputTree(
            "a command needs at least one argument".into(),
        ));
    }
    for path in &spec.output_paths {
        check_relative(path, "output path")?;
    }
    if !spec.working_directory.is_empty() {
        check_relative(&spec.working_directory, "working directory")?;
    }
    let mut output_paths = spec.output_paths.clone();
    output_paths.sort();
    output_paths.dedup();
    Ok(re::Command {
        arguments: spec.arguments.clone(),
        environment_variables: spec
            .environment
            .iter()
            .map(|(name, value)| re::command::EnvironmentVariable {
                name: name.clone(),
                value: value.clone(),
            })
            .collect(),
        output_paths,
        working_directory: spec.working_directory.clone(),
        ..Default::default()
    })
}

/// One file of an input root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputFile {
    /// Relative, `/`-separated, no `.` or `..` segments.
    pub path: String,
    pub digest: Digest,
    pub executable: bool,
}

/// An input root (or an output directory): its digest, and every `Directory` message as a
/// blob to upload (the root first, then the others depth first in name order, no repeats).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputTree {
    pub root: Digest,
    pub directories: Vec<Blob>,
}

impl InputTree {
    /// The REAPI `Tree` of an output directory: the root and every directory below it.
    pub fn to_tree(&self) -> Result<re::Tree, prost::DecodeError> {
        let mut messages = self
            .directories
            .iter()
            .map(|blob| re::Directory::decode(blob.bytes.as_slice()));
        let root = messages.next().transpose()?.unwrap_or_default();
        Ok(re::Tree {
            root: Some(root),
            children: messages.collect::<Result<_, _>>()?,
        })
    }
}

#[derive(Default)]
struct DirNode {
    files: BTreeMap<String, (Digest, bool)>,
    dirs: BTreeMap<String, DirNode>,
}

/// Builds the Merkle tree of an input root from its files (in any order): each
/// directory's files and subdirectories sorted by name, executable bits kept, nested
/// directories as `DirectoryNode`s. Duplicate paths and a file where a directory is
/// needed are errors.
pub fn build_input_tree(
    function: DigestFunction,
    files: &[InputFile],
) -> Result<InputTree, RemoteError> {
    build_directory_tree(function, files, &[])
}

/// Like `build_input_tree`, with directories that exist even when empty (`dirs`,
/// relative paths like the files').
pub(crate) fn build_directory_tree(
    function: DigestFunction,
    files: &[InputFile],
    dirs: &[String],
) -> Result<InputTree, RemoteError> {
    let mut root = DirNode::default();
    for dir in dirs {
        check_relative(dir, "directory")?;
        let mut node = &mut root;
        for segment in dir.split('/') {
            if node.files.contains_key(segment) {
                return Err(RemoteError::InputTree(format!(
                    "`{dir}` is both a file and a directory"
                )));
            }
            node = node.dirs.entry(segment.to_owned()).or_default();
        }
    }
    for file in files {
        insert(&mut root, file)?;
    }
    let (root_digest, blobs) = encode_dir(function, &root);
    Ok(InputTree {
        root: root_digest,
        directories: blobs,
    })
}

fn insert(root: &mut DirNode, file: &InputFile) -> Result<(), RemoteError> {
    check_relative(&file.path, "input path")?;
    let mut segments: Vec<&str> = file.path.split('/').collect();
    let name = segments.pop().unwrap_or_default();
    let mut node = root;
    for (i, segment) in segments.iter().enumerate() {
        if node.files.contains_key(*segment) {
            let prefix = segments[..=i].join("/");
            return Err(RemoteError::InputTree(format!(
                "`{prefix}` is both a file and the directory of `{}`",
                file.path
            )));
        }
        node = node.dirs.entry((*segment).to_owned()).or_default();
    }
    if node.dirs.contains_key(name) || node.files.contains_key(name) {
        return Err(RemoteError::InputTree(format!(
            "`{}` is given twice (or as a file and a directory)",
            file.path
        )));
    }
    node.files
        .insert(name.to_owned(), (file.digest.clone(), file.executable));
    Ok(())
}

/// Encodes a directory after its children; returns its digest and the blobs of its
/// subtree, itself first, then each child's subtree in name order, without repeats.
fn encode_dir(function: DigestFunction, node: &DirNode) -> (Digest, Vec<Blob>) {
    let mut below = Vec::new();
    let mut directories = Vec::with_capacity(node.dirs.len());
    for (name, child) in &node.dirs {
        let (digest, blobs) = encode_dir(function, child);
        directories.push(re::DirectoryNode {
            name: name.clone(),
            digest: Some(digest.to_proto()),
        });
        below.extend(blobs);
    }
    let files = node
        .files
        .iter()
        .map(|(name, (digest, executable))| re::FileNode {
            name: name.clone(),
            digest: Some(digest.to_proto()),
            is_executable: *executable,
            node_properties: None,
        })
        .collect();
    let message = re::Directory {
        files,
        directories,
        ..Default::default()
    };
    let blob = Blob::of_message(function, &message);
    let digest = blob.digest.clone();
    let mut blobs = vec![blob];
    for b in below {
        if !blobs.iter().any(|seen| seen.digest == b.digest) {
            blobs.push(b);
        }
    }
    (digest, blobs)
}

/// What an `Action` holds; `build_action` sorts it.
#[derive(Clone, Debug)]
pub struct ActionSpec {
    pub command: Digest,
    pub input_root: Digest,
    /// Platform properties (`OSFamily`, `gpu`, ...); sorted by name, then value.
    pub platform: Vec<(String, String)>,
    /// pochi's own key (tool identity, kind parameters), so a changed toolchain never
    /// hits an old entry.
    pub salt: Vec<u8>,
    pub do_not_cache: bool,
    pub timeout: Option<Duration>,
}

/// A REAPI `Action` with the platform on the Action (not the deprecated
/// `Command.platform`), properties sorted by name then value, and its blob.
pub fn build_action(function: DigestFunction, spec: &ActionSpec) -> (re::Action, Blob) {
    let mut properties = spec.platform.clone();
    properties.sort();
    properties.dedup();
    let platform = (!properties.is_empty()).then(|| re::Platform {
        properties: properties
            .into_iter()
            .map(|(name, value)| re::platform::Property { name, value })
            .collect(),
    });
    let action = re::Action {
        command_digest: Some(spec.command.to_proto()),
        input_root_digest: Some(spec.input_root.to_proto()),
        timeout: spec
            .timeout
            .map(|t| bazel_remote_apis::google::protobuf::Duration {
                seconds: i64::try_from(t.as_secs()).unwrap_or(i64::MAX),
                nanos: t.subsec_nanos() as i32,
            }),
        do_not_cache: spec.do_not_cache,
        salt: spec.salt.clone(),
        platform,
    };
    let blob = Blob::of_message(function, &action);
    (action, blob)
}

/// Checks a relative, `/`-separated path with no empty, `.` or `..` segments.
pub(crate) fn check_relative(path: &str, what: &str) -> Result<(), RemoteError> {
    let bad = path.is_empty()
        || path.starts_with('/')
        || path.contains('\0')
        || path
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..");
    if bad {
        return Err(RemoteError::InputTree(format!(
            "{what} `{path}` must be relative, `/`-separated, without empty, `.` or `..` parts"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: DigestFunction = DigestFunction::Sha256;

    fn file(path: &str, content: &[u8], executable: bool) -> InputFile {
        InputFile {
            path: path.into(),
            digest: Digest::of_bytes(F, content),
            executable,
        }
    }

    fn sample() -> Vec<InputFile> {
        vec![
            file("model/weights.pth", b"w", false),
            file("run.sh", b"#!/bin/sh", true),
            file("model/config/a.json", b"{}", false),
            file("data/x.npy", b"x", false),
            file("model/b.txt", b"b", false),
        ]
    }

    #[test]
    fn the_input_tree_is_independent_of_file_order() {
        let tree = build_input_tree(F, &sample()).unwrap();
        let mut reversed = sample();
        reversed.reverse();
        assert_eq!(build_input_tree(F, &reversed).unwrap(), tree);
        let mut rotated = sample();
        rotated.rotate_left(2);
        assert_eq!(build_input_tree(F, &rotated).unwrap(), tree);
        // root, data, model, model/config
        assert_eq!(tree.directories.len(), 4);
        assert_eq!(tree.directories[0].digest, tree.root);
    }

    #[test]
    fn directories_are_sorted_nested_and_keep_executable_bits() {
        let tree = build_input_tree(F, &sample()).unwrap();
        let root = re::Directory::decode(tree.directories[0].bytes.as_slice()).unwrap();
        let names: Vec<_> = root.directories.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["data", "model"]);
        assert_eq!(root.files.len(), 1);
        assert!(root.files[0].is_executable);
        let model_digest =
            Digest::from_proto(root.directories[1].digest.as_ref().unwrap()).unwrap();
        let model_blob = tree
            .directories
            .iter()
            .find(|b| b.digest == model_digest)
            .unwrap();
        let model = re::Directory::decode(model_blob.bytes.as_slice()).unwrap();
        let files: Vec<_> = model.files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(files, ["b.txt", "weights.pth"]);
        assert_eq!(model.directories[0].name, "config");
        // Every blob's digest is the digest of its bytes.
        for blob in &tree.directories {
            assert_eq!(blob.digest, Digest::of_bytes(F, &blob.bytes));
        }
    }

    #[test]
    fn a_changed_bit_or_content_changes_the_root() {
        let base = build_input_tree(F, &sample()).unwrap().root;
        let mut flipped = sample();
        flipped[0].executable = true;
        assert_ne!(build_input_tree(F, &flipped).unwrap().root, base);
        let mut changed = sample();
        changed[3] = file("data/x.npy", b"y", false);
        assert_ne!(build_input_tree(F, &changed).unwrap().root, base);
    }

    #[test]
    fn bad_trees_are_refused() {
        let dup = vec![file("a", b"1", false), file("a", b"2", false)];
        assert!(build_input_tree(F, &dup).is_err());
        let conflict = vec![file("a", b"1", false), file("a/b", b"2", false)];
        assert!(build_input_tree(F, &conflict).is_err());
        let conflict = vec![file("a/b", b"2", false), file("a", b"1", false)];
        assert!(build_input_tree(F, &conflict).is_err());
        for bad in ["", "/abs", "a/../b", "./a", "a//b", "a/"] {
            assert!(
                build_input_tree(F, &[file(bad, b"", false)]).is_err(),
                "{bad}"
            );
        }
        let empty = build_input_tree(F, &[]).unwrap();
        assert_eq!(
            empty.root,
            Digest::of_bytes(F, &re::Directory::default().encode_to_vec())
        );
    }

    #[test]
    fn commands_sort_environment_and_outputs() {
        let mut spec = CommandSpec {
            arguments: vec!["python3".into(), "-I".into(), "w.py".into()],
            output_paths: vec![
                "out/b.onnx".into(),
                "out/a.onnx".into(),
                "out/a.onnx".into(),
            ],
            working_directory: "work".into(),
            ..Default::default()
        };
        spec.environment.insert("Z".into(), "1".into());
        spec.environment.insert("A".into(), "2".into());
        let command = build_command(&spec).unwrap();
        let names: Vec<_> = command
            .environment_variables
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        assert_eq!(names, ["A", "Z"]);
        assert_eq!(command.output_paths, ["out/a.onnx", "out/b.onnx"]);
        // Deprecated in REAPI (the platform belongs on the Action): asserted unset.
        #[allow(deprecated)]
        let platform = &command.platform;
        assert!(platform.is_none());
        assert_eq!(command.working_directory, "work");
        spec.output_paths.push("../escape".into());
        assert!(build_command(&spec).is_err());
        assert!(build_command(&CommandSpec::default()).is_err());
    }

    #[test]
    fn actions_are_deterministic_and_sort_the_platform() {
        let command = Digest::of_bytes(F, b"command");
        let input_root = Digest::of_bytes(F, b"root");
        let spec = |platform: Vec<(&str, &str)>| ActionSpec {
            command: command.clone(),
            input_root: input_root.clone(),
            platform: platform
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            salt: b"pochi-key".to_vec(),
            do_not_cache: false,
            timeout: Some(Duration::from_secs(90)),
        };
        let (action, blob) = build_action(F, &spec(vec![("gpu", "H100"), ("OSFamily", "linux")]));
        let (_, again) = build_action(F, &spec(vec![("OSFamily", "linux"), ("gpu", "H100")]));
        assert_eq!(blob, again);
        let names: Vec<_> = action
            .platform
            .unwrap()
            .properties
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(names, ["OSFamily", "gpu"]);
        let (_, other_gpu) = build_action(F, &spec(vec![("OSFamily", "linux"), ("gpu", "A100")]));
        assert_ne!(blob.digest, other_gpu.digest);
        let mut salted = spec(vec![]);
        salted.salt = b"other".to_vec();
        assert_ne!(
            build_action(F, &salted).1.digest,
            build_action(F, &spec(vec![])).1.digest
        );
        let decoded = re::Action::decode(blob.bytes.as_slice()).unwrap();
        assert_eq!(decoded.salt, b"pochi-key");
        assert_eq!(decoded.timeout.unwrap().seconds, 90);
    }
}
