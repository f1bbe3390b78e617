//! Running a stage on a remote executor (REAPI): where each stage runs (`executor =
//! auto | local | remote`, and what keeps a stage here), and the remote run itself. A
//! remote run is the local one with another runner: the kind writes its request and argv
//! for the run's root-relative paths as always, the executor runs the stage's portable
//! Action (`driver::portable`, the one the remote cache looks up too), the worker's
//! outputs come back verified into the stage's temporary paths, and the stage is then
//! verified, published and recorded like one that ran here.

use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use super::Project;
use crate::action::{ANSWER_OUTPUT, PortableAction};
use crate::pipeline::Device;
use crate::pipeline::kind::StageError;
use crate::pipeline::placement::ExecutorChoice;
use crate::remote::{
    ExecutionError, ExecutionJob, ExecutionPhase, RemoteExecutor, input_root_files, stage_action,
};

/// A build's remote executor and how pochi uses it.
pub(crate) struct RemoteExecution {
    pub executor: RemoteExecutor,
    /// How long an action may wait for a worker before it fails.
    pub queue_timeout: Duration,
}

impl RemoteExecution {
    pub(crate) fn new(executor: RemoteExecutor, queue_timeout: Duration) -> Self {
        RemoteExecution {
            executor,
            queue_timeout,
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

/// Why a stage's remote action could not be put together.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub(crate) enum RemoteRunError {
    #[error("remote executor")]
    DigestFunction(#[source] crate::remote::RemoteError),
    #[error("cannot describe the remote action")]
    Describe(#[source] crate::remote::RemoteError),
}

/// What a remote run of one stage is made of.
pub(crate) struct RemoteRun<'a> {
    pub project: &'a Project,
    pub stage: usize,
    /// The stage's portable Action for this run.
    pub action: &'a PortableAction,
    pub log: &'a Path,
    pub shown_log: &'a Path,
}

/// How a remote run failed: the command ran and failed (its status for the kind's
/// explanation, and the error), or something else did.
pub(crate) enum RemoteFailure {
    Ran { status: String, error: StageError },
    Other(StageError),
}

/// Runs the stage's action on the executor; its outputs (and a script's answer file)
/// are in the stage's temporary paths when it returns `Ok`.
pub(crate) fn run_remotely(
    remote: &RemoteExecution,
    run: &RemoteRun,
    cancel: &AtomicBool,
) -> Result<RanRemotely, RemoteFailure> {
    let other = |e: RemoteRunError| RemoteFailure::Other(e.into());
    let function = remote
        .executor
        .digest_function()
        .map_err(|e| other(RemoteRunError::DigestFunction(e)))?;
    let stage_action =
        stage_action(function, run.action).map_err(|e| other(RemoteRunError::Describe(e)))?;
    let files =
        input_root_files(function, run.action).map_err(|e| other(RemoteRunError::Describe(e)))?;
    let dir = &run.project.pipeline.dir;
    let dest_for = |name: &str| {
        let written = run.action.outputs.iter().find(|(output, _)| output == name);
        dir.join(written.map_or(name, |(_, path)| path.as_str()))
    };
    let job = ExecutionJob {
        action: &stage_action,
        files: &files,
        dest_for: &dest_for,
        queue_timeout: remote.queue_timeout,
        log: run.log,
        skip_cache_lookup: false,
        kept_on_failure: &[ANSWER_OUTPUT],
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
            error: failed_remotely(run.action, &executed, run.shown_log),
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

/// The error of a command that failed on a worker: like a local failure, naming the worker.
fn failed_remotely(
    action: &PortableAction,
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
        action.argv.first().map(String::as_str).unwrap_or_default(),
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

#[cfg(test)]
mod tests {
    use super::*;

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
