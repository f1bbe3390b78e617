//! Running a stage on a remote executor (REAPI): where each stage runs (`executor =
//! auto | local | remote`, and what keeps a stage here), and the remote run itself. A
//! remote run is the local one with another runner: the kind writes its request and argv
//! for this run's temporary paths as always; the paths of the project, the run, the
//! worker script, the pochi binary and the managed toolchain are rewritten to what the
//! worker sees (the input root mirrors the project directory; tools go to
//! `.pochi-remote/`; the toolchain is the workers' own, at `--remote-toolchain-dir`); the
//! worker's outputs come back verified into the temporary paths, and the stage is then
//! verified, published and recorded like one that ran here.

use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::Project;
use crate::action::Action;
use crate::pipeline::Device;
use crate::pipeline::kind::{InvocationContext, StageError, Tool};
use crate::pipeline::placement::ExecutorChoice;
use crate::remote::{
    DigestFunction, DigestMemo, ExecutionError, ExecutionJob, ExecutionPhase, InputFile,
    RemoteExecutor, StageDescription, StageOutput, input_files, rewrite_paths, stage_action,
};

/// Where the input root keeps the files of tools that live outside the project (the
/// worker script, the pochi binary).
pub(crate) const TOOLS_DIR: &str = ".pochi-remote";

/// The output name of a worker's answer file in a remote action.
const ANSWER: &str = ".answer";

/// A build's remote executor and how pochi uses it.
pub(crate) struct RemoteExecution {
    pub executor: RemoteExecutor,
    /// How long an action may wait for a worker before it fails.
    pub queue_timeout: Duration,
    /// This machine's managed toolchains directory and the workers' one (their
    /// `POCHI_CACHE_DIR`'s `v1/toolchains`): the interpreter's path is rewritten from one
    /// to the other.
    pub toolchains: (PathBuf, PathBuf),
    memo: DigestMemo,
}

impl RemoteExecution {
    pub(crate) fn new(
        executor: RemoteExecutor,
        queue_timeout: Duration,
        toolchains: (PathBuf, PathBuf),
    ) -> Self {
        RemoteExecution {
            executor,
            queue_timeout,
            toolchains,
            memo: DigestMemo::default(),
        }
    }
}

impl std::fmt::Debug for RemoteExecution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteExecution")
            .field("executor", &self.executor.endpoint().to_string())
            .finish()
    }
}

/// Where a stage ran remotely.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct RanRemotely {
    /// The executor's URL.
    pub executor: String,
    /// The worker's name from the result's metadata (empty if the farm gives none).
    pub worker: String,
    /// The farm answered from its action cache without running the action.
    pub cached: bool,
}

/// Why a stage cannot run on a remote worker, if it cannot.
pub(crate) fn remote_obstacle(project: &Project, stage: usize) -> Option<String> {
    let spec = &project.pipeline.stages[stage];
    if !spec.cache {
        return Some(
            "it opts out of the cache (`cache = false`): it reads something pochi cannot see, which a worker would not have"
                .into(),
        );
    }
    for (key, input) in project.graph.inputs(stage) {
        if relative_inside(input.path()).is_none() {
            return Some(format!(
                "input `{key}` ({}) lies outside the project, and a worker gets only the project's files",
                input.path().display()
            ));
        }
    }
    let needs_gpu_model = matches!(spec.device, Device::Cuda(_))
        && spec.kind.requirements().accelerator.is_required();
    if needs_gpu_model && spec.placement.gpu.is_none() {
        return Some(
            "it is a `cuda` stage that names no GPU model: add `gpu = \"a100\"` (or another model, see docs/remote.md)"
                .into(),
        );
    }
    None
}

/// Where a stage runs in a build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Placed {
    Here,
    Remotely,
    /// It must run remotely (`executor = "remote"`) and no executor is configured: it
    /// cannot run in this build (unavailable, like an engine without TensorRT).
    Nowhere(String),
    /// It must run remotely, an executor is configured, and the stage cannot run there:
    /// the build cannot start (why).
    Refused(String),
}

/// Where a stage runs in a build with (or without, `configured`) a remote executor.
pub(crate) fn place(project: &Project, stage: usize, configured: bool) -> Placed {
    let choice = project.pipeline.stages[stage].placement.executor;
    match (choice, configured) {
        (ExecutorChoice::Local, _) | (ExecutorChoice::Auto, false) => Placed::Here,
        (ExecutorChoice::Remote, false) => Placed::Nowhere(
            "it must run remotely (`executor = \"remote\"`) and no remote executor is configured (--remote-executor)".into(),
        ),
        (ExecutorChoice::Auto, true) => match remote_obstacle(project, stage) {
            None => Placed::Remotely,
            Some(_) => Placed::Here,
        },
        (ExecutorChoice::Remote, true) => match remote_obstacle(project, stage) {
            None => Placed::Remotely,
            Some(why) => Placed::Refused(format!("it has `executor = \"remote\"`, but {why}")),
        },
    }
}

/// `path` as a clean relative path inside the project, if it is one.
fn relative_inside(path: &Path) -> Option<PathBuf> {
    let mut clean = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => clean.push(part),
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(clean)
}

/// A path as REAPI writes them: relative, `/`-separated.
fn slash(path: &Path) -> String {
    path.components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

/// Why a stage's remote action could not be put together.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub(crate) enum RemoteRunError {
    #[error("remote executor")]
    DigestFunction(#[source] crate::remote::RemoteError),
    #[error("cannot read {}", path.display())]
    Tool {
        path: PathBuf,
        #[source]
        source: crate::remote::RemoteError,
    },
    #[error("cannot read {}", path.display())]
    ToolMetadata {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Inputs(#[source] crate::remote::RemoteError),
    #[error("cannot read {}", path.display())]
    ReadRequest {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {}", path.display())]
    WriteRequest {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot describe the remote action")]
    Describe(#[source] crate::remote::RemoteError),
}

/// What a remote run of one stage is made of.
pub(crate) struct RemoteRun<'a> {
    pub project: &'a Project,
    pub stage: usize,
    pub context: &'a InvocationContext,
    /// pochi's key of the stage (the Action's salt).
    pub fingerprint: &'a str,
    pub log: &'a Path,
    pub shown_log: &'a Path,
}

/// How a remote run failed: the command ran and failed (its status for the kind's
/// explanation, and the error), or something else did.
pub(crate) enum RemoteFailure {
    Ran { status: String, error: StageError },
    Other(StageError),
}

/// Runs the stage's action on the executor; its outputs (and a worker's answer file) are
/// in the run's temporary paths when it returns `Ok`.
pub(crate) fn run_remotely(
    remote: &RemoteExecution,
    run: &RemoteRun,
    action: Action,
    cancel: &AtomicBool,
) -> Result<RanRemotely, RemoteFailure> {
    let other = |e: RemoteRunError| RemoteFailure::Other(e.into());
    let function = remote
        .executor
        .digest_function()
        .map_err(|e| other(RemoteRunError::DigestFunction(e)))?;
    let tools = tool_files(&run.project.pipeline.dir, &action);
    let rewrites = path_rewrites(remote, run, &tools);
    rewrite_scratch_files(&run.context.scratch, &rewrites).map_err(other)?;
    let outputs = declared_outputs(run, &action);
    let files = input_root(remote, run, &action, &tools, function).map_err(other)?;
    let action = with_remote_platform(action, run);
    let inputs: Vec<InputFile> = files.iter().map(|(file, _)| file.clone()).collect();
    let stage_action = stage_action(
        function,
        &StageDescription {
            action: &action,
            env: &run.project.pipeline.stages[run.stage].env,
            outputs: &outputs,
            rewrites: &rewrites,
            inputs: &inputs,
            salt: run.fingerprint,
        },
    )
    .map_err(|e| other(RemoteRunError::Describe(e)))?;
    let dest_for = |name: &str| {
        outputs
            .iter()
            .find(|o| o.name == name)
            .map(|o| o.temp.clone())
            .unwrap_or_else(|| run.context.scratch.join(name))
    };
    let job = ExecutionJob {
        action: &stage_action,
        files: &files,
        dest_for: &dest_for,
        queue_timeout: remote.queue_timeout,
        log: run.log,
        skip_cache_lookup: false,
        kept_on_failure: &[ANSWER],
    };
    let clock = PhaseClock::new();
    let executed = remote
        .executor
        .execute(&job, cancel, &|phase| clock.enter(phase));
    clock.log(&run.project.pipeline.stages[run.stage].name);
    let executed = executed.map_err(|error| match error {
        ExecutionError::Cancelled => RemoteFailure::Other(StageError::new("interrupted")),
        error => {
            let mut failure = StageError::new(format!("remote execution failed: {error}"))
                .with_log(run.shown_log.to_path_buf());
            if let Some(hint) = miette::Diagnostic::help(&error) {
                failure = failure.with_hint(hint.to_string());
            }
            RemoteFailure::Other(failure)
        }
    })?;
    if executed.exit_code != 0 {
        return Err(RemoteFailure::Ran {
            status: format!("exit code {}", executed.exit_code),
            error: failed_remotely(&action, &executed, run.shown_log),
        });
    }
    Ok(RanRemotely {
        executor: remote.executor.endpoint().to_string(),
        worker: executed.worker,
        cached: executed.cached,
    })
}

/// When each phase of a remote execution began, for `POCHI_LOG=pochi::driver::remote=debug`
/// (the benchmark of BENCHMARKS.md §1f reads it).
struct PhaseClock {
    started: Instant,
    entered: Mutex<Vec<(ExecutionPhase, Duration)>>,
}

impl PhaseClock {
    fn new() -> PhaseClock {
        PhaseClock {
            started: Instant::now(),
            entered: Mutex::new(Vec::new()),
        }
    }

    fn enter(&self, phase: ExecutionPhase) {
        let mut entered = self.entered.lock().unwrap_or_else(|e| e.into_inner());
        if entered.last().is_none_or(|(last, _)| *last != phase) {
            entered.push((phase, self.started.elapsed()));
        }
    }

    /// One debug line: milliseconds spent in each phase, and in all.
    fn log(&self, stage: &str) {
        let total = self.started.elapsed();
        let entered = self.entered.lock().unwrap_or_else(|e| e.into_inner());
        let phases: Vec<String> = entered
            .iter()
            .enumerate()
            .map(|(i, (phase, at))| {
                let end = entered.get(i + 1).map_or(total, |(_, next)| *next);
                format!("{phase:?}={}", (end - *at).as_millis())
            })
            .collect();
        tracing::debug!(
            "remote phases of {stage}: {} total={}",
            phases.join(" "),
            total.as_millis()
        );
    }
}

/// A file the action runs from outside the project (the worker script, the pochi
/// binary): where it is here, and its name under `TOOLS_DIR` in the input root.
struct ToolFile {
    local: PathBuf,
    name: String,
}

/// What the worker sees in place of this machine's paths: the tools under `TOOLS_DIR`,
/// the project directory as the input root (`.`), this machine's managed toolchains as
/// the workers' ones.
fn path_rewrites(
    remote: &RemoteExecution,
    run: &RemoteRun,
    tools: &[ToolFile],
) -> Vec<(PathBuf, String)> {
    let mut rewrites: Vec<(PathBuf, String)> = tools
        .iter()
        .map(|tool| (tool.local.clone(), format!("{TOOLS_DIR}/{}", tool.name)))
        .collect();
    rewrites.push((run.project.pipeline.dir.clone(), ".".into()));
    let (here, workers) = &remote.toolchains;
    if run.context.python().starts_with(here) {
        rewrites.push((here.clone(), workers.to_string_lossy().into_owned()));
    }
    rewrites
}

/// The input root's files with where each is here: the project's (inputs and the run's
/// request) and the tools.
fn input_root(
    remote: &RemoteExecution,
    run: &RemoteRun,
    action: &Action,
    tools: &[ToolFile],
    function: DigestFunction,
) -> Result<Vec<(InputFile, PathBuf)>, RemoteRunError> {
    let mut files = project_files(remote, &run.project.pipeline.dir, action, function)?;
    for tool in tools {
        let metadata =
            std::fs::metadata(&tool.local).map_err(|source| RemoteRunError::ToolMetadata {
                path: tool.local.clone(),
                source,
            })?;
        let digest = remote
            .memo
            .digest(&tool.local, &metadata, function)
            .map_err(|source| RemoteRunError::Tool {
                path: tool.local.clone(),
                source,
            })?;
        files.push((
            InputFile {
                path: format!("{TOOLS_DIR}/{}", tool.name),
                digest,
                executable: metadata.permissions().mode() & 0o111 != 0,
            },
            tool.local.clone(),
        ));
    }
    Ok(files)
}

/// The action's platform with what a worker must also offer: the stage's `platform`,
/// its declared `gpu`, and for a Python stage the toolchain's property.
fn with_remote_platform(mut action: Action, run: &RemoteRun) -> Action {
    let spec = &run.project.pipeline.stages[run.stage];
    if spec.placement.gpu.is_none() {
        // Nothing names the worker's GPU: what the accelerator's probe found here (a
        // report's `WhenPresent`) says nothing of it, and would match no worker but this
        // machine.
        if let Some(accelerator) = spec.kind.requirements().accelerator.accelerator() {
            for key in accelerator.properties {
                action.platform.remove(*key);
            }
        }
    }
    action.platform.extend(spec.placement.platform.clone());
    if let Some(gpu) = &spec.placement.gpu {
        action.platform.insert("gpu".into(), gpu.clone());
    }
    if spec.kind.requirements().tool == Tool::Python {
        action.platform.insert(
            crate::toolchain::PLATFORM_PROPERTY.into(),
            crate::toolchain::platform_value(&run.context.facts.toolchain.identity),
        );
    }
    action
}

/// The error of a command that failed on a worker: like a local failure, naming the worker.
fn failed_remotely(
    action: &Action,
    executed: &crate::remote::Executed,
    shown_log: &Path,
) -> StageError {
    let worker = if executed.worker.is_empty() {
        "a remote worker".to_string()
    } else {
        format!("remote worker `{}`", executed.worker)
    };
    let mut message = format!(
        "`{}` failed on {worker} with exit code {}",
        action.program(),
        executed.exit_code
    );
    if !executed.stderr_tail.is_empty() {
        message.push_str("\nlast lines of stderr:");
        for line in &executed.stderr_tail {
            message.push_str("\n  ");
            message.push_str(line);
        }
    }
    StageError::new(message).with_log(shown_log.to_path_buf())
}

/// The tools the action reads from outside the project (absolute paths outside it).
fn tool_files(dir: &Path, action: &Action) -> Vec<ToolFile> {
    action
        .inputs
        .iter()
        .filter(|input| input.is_absolute() && !input.starts_with(dir))
        .filter_map(|input| {
            Some(ToolFile {
                name: input.file_name()?.to_string_lossy().into_owned(),
                local: input.clone(),
            })
        })
        .collect()
}

/// The files of the input root that come from the project: the stage's inputs and the
/// run's scratch files (the request), with where each is on this machine.
fn project_files(
    remote: &RemoteExecution,
    dir: &Path,
    action: &Action,
    function: DigestFunction,
) -> Result<Vec<(InputFile, PathBuf)>, RemoteRunError> {
    let paths: Vec<PathBuf> = action
        .inputs
        .iter()
        .filter_map(|input| match input.strip_prefix(dir) {
            Ok(inside) => Some(inside.to_path_buf()),
            Err(_) if input.is_relative() => Some(input.clone()),
            Err(_) => None,
        })
        .collect();
    let files = input_files(dir, &paths, function, &remote.memo).map_err(RemoteRunError::Inputs)?;
    Ok(files
        .into_iter()
        .map(|file| {
            let local = dir.join(&file.path);
            (file, local)
        })
        .collect())
}

/// The action's outputs: every declared output at its temporary path, and the answer file
/// of a worker kind (the last argument of its argv).
fn declared_outputs(run: &RemoteRun, action: &Action) -> Vec<StageOutput> {
    let dir = &run.project.pipeline.dir;
    let mut outputs: Vec<StageOutput> = run
        .context
        .outputs
        .iter()
        .map(|(name, path)| StageOutput {
            name: name.clone(),
            path: slash(path),
            temp: dir.join(path),
        })
        .collect();
    let answer = crate::kinds::request::answer_file(run.context);
    let shown = answer.to_string_lossy();
    if action.argv.iter().any(|a| *a == shown)
        && let Ok(inside) = answer.strip_prefix(dir)
    {
        outputs.push(StageOutput {
            name: ANSWER.into(),
            path: slash(inside),
            temp: answer.clone(),
        });
    }
    outputs
}

/// Rewrites the paths in the run's JSON request files to what the worker sees.
fn rewrite_scratch_files(
    scratch: &Path,
    rewrites: &[(PathBuf, String)],
) -> Result<(), RemoteRunError> {
    let Ok(entries) = std::fs::read_dir(scratch) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let text =
            std::fs::read_to_string(&path).map_err(|source| RemoteRunError::ReadRequest {
                path: path.clone(),
                source,
            })?;
        let Ok(mut value) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        rewrite_strings(&mut value, rewrites);
        std::fs::write(&path, value.to_string()).map_err(|source| {
            RemoteRunError::WriteRequest {
                path: path.clone(),
                source,
            }
        })?;
    }
    Ok(())
}

fn rewrite_strings(value: &mut Value, rewrites: &[(PathBuf, String)]) {
    match value {
        Value::String(text) => *text = rewrite_paths(text, rewrites),
        Value::Array(items) => items.iter_mut().for_each(|v| rewrite_strings(v, rewrites)),
        Value::Object(map) => map.values_mut().for_each(|v| rewrite_strings(v, rewrites)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_rewritten_and_other_values_kept() {
        let rewrites = vec![
            (PathBuf::from("/home/u/proj"), ".".to_string()),
            (
                PathBuf::from("/home/u/.cache/x/worker.py"),
                ".pochi-remote/worker.py".to_string(),
            ),
        ];
        let mut value = serde_json::json!({
            "onnx": "/home/u/proj/build/m.onnx",
            "list": ["/home/u/.cache/x/worker.py", 3, true],
            "nested": {"dir": "/home/u/proj"},
            "other": "/elsewhere/file",
        });
        rewrite_strings(&mut value, &rewrites);
        assert_eq!(value["onnx"], "./build/m.onnx");
        assert_eq!(value["list"][0], ".pochi-remote/worker.py");
        assert_eq!(value["list"][1], 3);
        assert_eq!(value["nested"]["dir"], ".");
        assert_eq!(value["other"], "/elsewhere/file");
    }

    #[test]
    fn only_clean_relative_paths_are_inside() {
        assert_eq!(
            relative_inside(Path::new("./data/a.npy")),
            Some(PathBuf::from("data/a.npy"))
        );
        assert_eq!(relative_inside(Path::new("../x")), None);
        assert_eq!(relative_inside(Path::new("/abs/x")), None);
    }
}
