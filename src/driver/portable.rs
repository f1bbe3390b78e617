//! A stage's portable Action (`action::PortableAction`), built once per run from what the
//! kind declared (`StageKind::action` with the run's root-relative paths): the one Action
//! the remote cache looks up and stores under and the remote executor runs, so an entry
//! one of them wrote answers the other, in any clone.
//!
//! The kind's Action is already relative to the pipeline directory (the input root) but
//! for its tools: the script or the pochi binary, which live outside the project, go
//! under one alias (`.pochi-remote/<name>`, as files of the input root), and this
//! machine's managed toolchains directory becomes the workers' (`--remote-toolchain-dir`),
//! in the argv and the environment. Nothing else is rewritten: a path the kind or the user
//! wrote stays as written. A local run runs the kind's Action itself, in the pipeline
//! directory: the same argv but for those tool paths.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use super::Project;
use crate::action::{ANSWER_OUTPUT, Action, PortableAction, PortableInput};
use crate::cache::{ActionSource, FileDigests};
use crate::pipeline::kind::{InvocationContext, StageError, Tool};

/// Where the input root keeps the files of tools that live outside the project (the
/// script, the pochi binary).
pub(crate) const TOOLS_DIR: &str = ".pochi-remote";

/// How a build makes its stages' Actions portable: where the workers keep the managed
/// toolchains, and the digests of the files it has read.
#[derive(Debug)]
pub(crate) struct PortableActions {
    /// This machine's managed toolchains directory and the workers' one (their
    /// `POCHI_CACHE_DIR`'s `v1/toolchains`).
    toolchains: (PathBuf, PathBuf),
    memo: DigestMemo,
}

impl PortableActions {
    pub(crate) fn new(local_toolchains: PathBuf, worker_toolchains: PathBuf) -> Self {
        PortableActions {
            toolchains: (local_toolchains, worker_toolchains),
            memo: DigestMemo::default(),
        }
    }
}

/// Why a stage's portable Action could not be built.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub(crate) enum PortableError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{path}` cannot be a path of the input root")]
    #[diagnostic(help(
        "input paths must be relative, without `..`, and valid UTF-8; rename the file"
    ))]
    BadPath { path: String },
}

/// The portable Action of one run of `stage`: `action` is what its kind made of
/// `context`, `fingerprint` pochi's key of the stage.
pub(super) fn portable_action(
    actions: &PortableActions,
    project: &Project,
    stage: usize,
    context: &InvocationContext,
    action: &Action,
    fingerprint: &str,
) -> Result<PortableAction, PortableError> {
    let dir = &project.pipeline.dir;
    let tools = tool_files(dir, action);
    let mut mapping: Vec<(String, String)> = tools
        .iter()
        .map(|(local, alias)| (local.to_string_lossy().into_owned(), alias.clone()))
        .collect();
    let (here, workers) = &actions.toolchains;
    mapping.push((
        here.to_string_lossy().into_owned(),
        workers.to_string_lossy().into_owned(),
    ));
    let mapping = longest_first(mapping);
    let mapped = |text: &str| map_paths(text, &mapping);
    let mut env: BTreeMap<String, String> = project.pipeline.stages[stage]
        .env
        .iter()
        .chain(&action.env)
        .map(|(name, value)| (name.clone(), mapped(value)))
        .collect();
    env.remove("CUDA_VISIBLE_DEVICES");
    Ok(PortableAction {
        argv: action.argv.iter().map(|a| mapped(a)).collect(),
        env,
        inputs: input_root(actions, dir, action, &tools)?,
        outputs: written(context, action),
        platform: remote_platform(project, stage, context, action),
        salt: fingerprint.to_string(),
    })
}

/// The tools the action reads from outside the project (absolute paths outside it), with
/// their alias in the input root.
fn tool_files(dir: &Path, action: &Action) -> Vec<(PathBuf, String)> {
    action
        .inputs
        .iter()
        .filter(|input| input.is_absolute() && !input.starts_with(dir))
        .filter_map(|input| {
            let name = input.file_name()?.to_string_lossy().into_owned();
            Some((input.clone(), format!("{TOOLS_DIR}/{name}")))
        })
        .collect()
}

/// The input root: the action's inputs inside the project (files, or directories walked)
/// and its tools under their alias. An input that does not exist (an upstream output a
/// tolerant stage runs without) is left out: the salt holds its digest.
fn input_root(
    actions: &PortableActions,
    dir: &Path,
    action: &Action,
    tools: &[(PathBuf, String)],
) -> Result<Vec<PortableInput>, PortableError> {
    let mut files = BTreeMap::new();
    for input in &action.inputs {
        let inside = match input.strip_prefix(dir) {
            Ok(inside) => inside,
            Err(_) if input.is_relative() => input.as_path(),
            Err(_) => continue,
        };
        // An input outside the project (`..`) is left out: the stage cannot run remotely
        // (`remote_obstacle`), and the salt holds its digest.
        let Some(relative) = clean_relative(inside)? else {
            continue;
        };
        let full = dir.join(inside);
        if let Ok(metadata) = fs::metadata(&full) {
            actions
                .memo
                .collect(&full, &relative, &metadata, &mut files)?;
        }
    }
    for (local, alias) in tools {
        let metadata = fs::metadata(local).map_err(|source| PortableError::Read {
            path: local.clone(),
            source,
        })?;
        let file = actions.memo.input(local, alias, &metadata)?;
        files.insert(alias.clone(), file);
    }
    Ok(files.into_values().collect())
}

/// What the action writes: every declared output at its temporary path, and the answer
/// file of a script kind (an argument of its argv).
fn written(context: &InvocationContext, action: &Action) -> Vec<(String, String)> {
    let mut outputs: Vec<(String, String)> = context
        .outputs
        .iter()
        .map(|(name, path)| (name.clone(), slash(path)))
        .collect();
    let answer = slash(&crate::kinds::request::answer_file(context));
    if action.argv.contains(&answer) {
        outputs.push((ANSWER_OUTPUT.into(), answer));
    }
    outputs
}

/// The action's platform with what a worker must also offer: the stage's `platform`,
/// its declared `gpu`, and for a Python stage the toolchain's property.
fn remote_platform(
    project: &Project,
    stage: usize,
    context: &InvocationContext,
    action: &Action,
) -> BTreeMap<String, String> {
    let spec = &project.pipeline.stages[stage];
    let mut platform = action.platform.clone();
    if spec.placement.gpu.is_none() && project.remote.contains(&stage) {
        // Nothing names the worker's GPU: what the accelerator's probe found here (a
        // report's `WhenPresent`) says nothing of it, and would match no worker but this
        // machine. (A stage that runs here keeps what it runs on.)
        if let Some(accelerator) = spec.kind.requirements().accelerator.accelerator() {
            for key in accelerator.properties {
                platform.remove(*key);
            }
        }
    }
    platform.extend(spec.placement.platform.clone());
    if let Some(gpu) = &spec.placement.gpu {
        platform.insert("gpu".into(), gpu.clone());
    }
    if spec.kind.requirements().tool == Tool::Python {
        platform.insert(
            crate::toolchain::PLATFORM_PROPERTY.into(),
            crate::toolchain::platform_value(&context.facts.toolchain.identity),
        );
    }
    platform
}

/// A path as REAPI writes them: `/`-separated.
fn slash(path: &Path) -> String {
    path.components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

/// `path` as a clean relative `/`-separated path; none if it leaves the project (a `..`
/// or root part) or is the project itself; an error if it is not UTF-8 (REAPI paths are).
fn clean_relative(path: &Path) -> Result<Option<String>, PortableError> {
    let mut parts = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => match part.to_str() {
                Some(part) => parts.push(part),
                None => {
                    return Err(PortableError::BadPath {
                        path: path.to_string_lossy().into_owned(),
                    });
                }
            },
            Component::CurDir => {}
            _ => return Ok(None),
        }
    }
    Ok((!parts.is_empty()).then(|| parts.join("/")))
}

/// The mapping without empty paths, longest path first (so a path inside another one is
/// replaced as a whole).
fn longest_first(mut mapping: Vec<(String, String)>) -> Vec<(String, String)> {
    mapping.retain(|(from, _)| !from.is_empty());
    mapping.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
    mapping
}

/// `text` with every occurrence of each mapped path replaced, longest path first, each
/// part of the text replaced at most once. A path matches only where it ends a path
/// component (`/p` in `/p/a` or `/p"`, not in `/p2/a` or `/p.txt`).
fn map_paths(text: &str, mapping: &[(String, String)]) -> String {
    let ends_component = |tail: &str| {
        tail.chars()
            .next()
            .is_none_or(|c| !(c.is_alphanumeric() || matches!(c, '.' | '-' | '_')))
    };
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    'scan: while !rest.is_empty() {
        for (from, to) in mapping {
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
/// an input of several stages (or of a restore and then a run) is read once.
#[derive(Debug, Default)]
struct DigestMemo {
    known: Mutex<HashMap<(PathBuf, FileIdentity), FileDigests>>,
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
        let ns = |seconds: i64, nanos: i64| i128::from(seconds) * 1_000_000_000 + i128::from(nanos);
        FileIdentity {
            size: metadata.len(),
            mtime_ns: ns(metadata.mtime(), metadata.mtime_nsec()),
            ctime_ns: ns(metadata.ctime(), metadata.ctime_nsec()),
            inode: metadata.ino(),
        }
    }
}

impl DigestMemo {
    /// The input-root file at `path` (`local` here), its digests read unless known.
    fn input(
        &self,
        local: &Path,
        path: &str,
        metadata: &fs::Metadata,
    ) -> Result<PortableInput, PortableError> {
        let key = (local.to_path_buf(), FileIdentity::of(metadata));
        let known = self
            .known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        let digests = match known {
            Some(digests) => digests,
            None => {
                let digests =
                    FileDigests::of_path(local).map_err(|source| PortableError::Read {
                        path: local.to_path_buf(),
                        source,
                    })?;
                self.known
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key, digests.clone());
                digests
            }
        };
        Ok(PortableInput {
            path: path.to_string(),
            local: local.to_path_buf(),
            executable: metadata.permissions().mode() & 0o111 != 0,
            size: digests.size,
            sha256: digests.sha256,
            blake3: digests.blake3,
        })
    }

    /// The files at `full` (a file, or a directory walked in name order), by their path
    /// in the input root.
    fn collect(
        &self,
        full: &Path,
        relative: &str,
        metadata: &fs::Metadata,
        files: &mut BTreeMap<String, PortableInput>,
    ) -> Result<(), PortableError> {
        let read = |source| PortableError::Read {
            path: full.to_path_buf(),
            source,
        };
        if metadata.is_file() {
            files.insert(relative.to_string(), self.input(full, relative, metadata)?);
        } else if metadata.is_dir() {
            let mut names: Vec<_> = fs::read_dir(full)
                .and_then(|list| list.map(|e| e.map(|e| e.file_name())).collect())
                .map_err(read)?;
            names.sort();
            for name in names {
                let Some(name) = name.to_str() else {
                    return Err(PortableError::BadPath {
                        path: full.join(&name).to_string_lossy().into_owned(),
                    });
                };
                let child = full.join(name);
                let metadata = fs::metadata(&child).map_err(read)?;
                self.collect(&child, &format!("{relative}/{name}"), &metadata, files)?;
            }
        }
        Ok(())
    }
}

/// A stage's portable Action for a restore, built when a tier first asks for it.
pub(super) struct LazyPortable<'a> {
    build: Box<dyn Fn() -> Result<PortableAction, String> + Sync + 'a>,
    built: OnceLock<Result<PortableAction, String>>,
}

impl<'a> LazyPortable<'a> {
    /// The portable Action of a run of `stage` with `context` (its kind's Action made, and
    /// its request written, only when asked).
    pub(super) fn of_run(
        actions: &'a PortableActions,
        (project, stage): (&'a Project, usize),
        context: InvocationContext,
        fingerprint: String,
    ) -> Self {
        let build = move || {
            let action = project.pipeline.stages[stage].kind.action(&context)?;
            portable_action(actions, project, stage, &context, &action, &fingerprint)
                .map_err(StageError::from)
        };
        LazyPortable {
            build: Box::new(move || build().map_err(|error| error.message)),
            built: OnceLock::new(),
        }
    }
}

impl std::fmt::Debug for LazyPortable<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyPortable")
            .field("built", &self.built.get())
            .finish()
    }
}

impl ActionSource for LazyPortable<'_> {
    fn portable(&self) -> Result<&PortableAction, String> {
        self.built
            .get_or_init(|| (self.build)())
            .as_ref()
            .map_err(Clone::clone)
    }
}

/// The portable Action of a stage that ran, with the bytes of its answer file (gone from
/// the stage's directory by the time the outputs are stored), for an upload.
#[derive(Debug, Clone)]
pub(super) struct RanPortable {
    pub action: PortableAction,
    pub other_outputs: Vec<(String, Vec<u8>)>,
    /// The executor that ran it, which keeps the result itself.
    pub executed_at: Option<String>,
}

impl RanPortable {
    /// The Action that ran in `dir` (on the executor `executed_at`, if remotely), with
    /// its answer file read now.
    pub(super) fn read(
        action: PortableAction,
        dir: &Path,
        executed_at: Option<String>,
    ) -> RanPortable {
        let other_outputs = action
            .outputs
            .iter()
            .filter(|(name, _)| name == ANSWER_OUTPUT)
            .filter_map(|(name, path)| Some((name.clone(), fs::read(dir.join(path)).ok()?)))
            .collect();
        RanPortable {
            action,
            other_outputs,
            executed_at,
        }
    }
}

impl ActionSource for RanPortable {
    fn portable(&self) -> Result<&PortableAction, String> {
        Ok(&self.action)
    }

    fn other_outputs(&self) -> &[(String, Vec<u8>)] {
        &self.other_outputs
    }

    fn executed_at(&self) -> Option<&str> {
        self.executed_at.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_mapped_longest_first_whole_components_once() {
        let mapping = longest_first(vec![
            ("/p".to_string(), "/w".to_string()),
            ("/p/tmp/x".to_string(), "out".to_string()),
        ]);
        assert_eq!(map_paths("/p/tmp/x /p/a", &mapping), "out /w/a");
        assert_eq!(map_paths("none", &mapping), "none");
        assert_eq!(map_paths("é/p", &mapping), "é/w");
        // Only whole path components: another directory that starts alike is kept.
        assert_eq!(
            map_paths("/p2/a /p.txt /p-x", &mapping),
            "/p2/a /p.txt /p-x"
        );
        assert_eq!(map_paths("--out=/p/tmp/x,/p", &mapping), "--out=out,/w");
    }

    #[test]
    fn tools_outside_the_project_get_their_alias_and_inputs_are_read_once() {
        let project = tempfile::tempdir().unwrap();
        let tools = tempfile::tempdir().unwrap();
        let dir = project.path();
        fs::create_dir_all(dir.join("data/sub")).unwrap();
        fs::write(dir.join("data/a.npy"), b"a").unwrap();
        fs::write(dir.join("data/sub/b.npy"), b"b").unwrap();
        fs::write(dir.join("model.pth"), b"w").unwrap();
        let script = tools.path().join("export.py");
        fs::write(&script, b"print()").unwrap();
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
        let mut action = Action::new(vec!["python".into(), script.to_string_lossy().into()]);
        action.inputs = vec![
            script.clone(),
            PathBuf::from("model.pth"),
            dir.join("data"),
            PathBuf::from("missing.onnx"),
            PathBuf::from("../outside"),
        ];
        let tools = tool_files(dir, &action);
        assert_eq!(
            tools,
            [(script.clone(), ".pochi-remote/export.py".to_string())]
        );
        let actions = PortableActions::new(PathBuf::from("/t"), PathBuf::from("/w"));
        let files = input_root(&actions, dir, &action, &tools).unwrap();
        let names: Vec<_> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            names,
            [
                ".pochi-remote/export.py",
                "data/a.npy",
                "data/sub/b.npy",
                "model.pth"
            ]
        );
        assert!(files[0].executable && !files[1].executable);
        assert_eq!(files[0].local, script);
        assert_eq!(files[1].blake3, blake3::hash(b"a").to_hex().as_str());
        assert_eq!(files[1].size, 1);
        input_root(&actions, dir, &action, &tools).unwrap();
        assert_eq!(
            actions.memo.known.lock().unwrap().len(),
            4,
            "one read per file"
        );
    }
}
