//! Checking and running one stage: its key from current inputs, the up-to-date test
//! against its record, and a run that writes to temporary paths, verifies, re-checks its
//! inputs, publishes atomically and only then records the stage as built. A stage whose
//! key is in the output cache is restored instead: the cache writes (and verifies) its
//! outputs at the same temporary paths, which are published and recorded the same way.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::Project;
use super::cached::{self, Storer};
use super::outputs::{self, OutputError};
use super::portable::{LazyPortable, PortableActions, RanPortable, portable_action};
use super::remote::{RanRemotely, RemoteExecution, RemoteFailure, RemoteRun, run_remotely};
use super::standing::{Standing, current_key, describe, standing};
use super::temp::TempOutputs;
use crate::action::Action;
use crate::action::PortableAction;
use crate::cache::{ActionSource, Miss, Origin, OutputCache, Restored};
use crate::fingerprint::StageKey;
use crate::pipeline::kind::{InvocationContext, StageError};
use crate::process::{ProcessResult, ProcessRunner, ProcessSpec};
use crate::scheduler::{Check, Failure, JobHandler, Lease, RunResult};
use crate::state::{FailureRecord, OutputRecord, unix_ms_now};

/// The scheduler's executor over all stages of all pipelines in one build.
pub(super) struct StageJobs {
    pub projects: Arc<Vec<Project>>,
    /// Job index -> (project, stage).
    pub jobs: Vec<(usize, usize)>,
    pub runner: Arc<dyn ProcessRunner>,
    pub cancel: Arc<AtomicBool>,
    /// Keys computed by `check`, reused by `run` to detect inputs that change meanwhile.
    keys: Mutex<BTreeMap<usize, StageKey>>,
    /// Jobs that cannot run on this machine, with what is missing.
    pub unavailable: BTreeMap<usize, String>,
    /// Jobs whose inputs are wrong for them (`StageKind::check_inputs`).
    pub invalid: BTreeMap<usize, StageError>,
    /// Warnings of stages that succeeded, (job, message), told after the build.
    warnings: Mutex<Vec<(usize, String)>>,
    /// Each project's directory with symbolic links resolved, for the confinement checks
    /// (resolved once, not per published output).
    canonical_dirs: Vec<std::io::Result<PathBuf>>,
    /// The output cache (none with `--no-cache`), and where each restored job came from.
    cache: Option<Arc<dyn OutputCache>>,
    storer: Option<Storer>,
    restored: Mutex<BTreeMap<usize, Origin>>,
    /// The remote executor (none unless `--remote-executor`), and where each job that ran
    /// there ran.
    remote: Option<Arc<RemoteExecution>>,
    ran_remotely: Mutex<BTreeMap<usize, RanRemotely>>,
    /// How stages' Actions are made portable (none in a build without a remote server).
    portable: Option<Arc<PortableActions>>,
}

impl StageJobs {
    pub(super) fn new(
        projects: Arc<Vec<Project>>,
        jobs: Vec<(usize, usize)>,
        runner: Arc<dyn ProcessRunner>,
        cancel: Arc<AtomicBool>,
    ) -> Self {
        let canonical_dirs = projects
            .iter()
            .map(|p| std::fs::canonicalize(&p.pipeline.dir))
            .collect();
        StageJobs {
            projects,
            jobs,
            runner,
            cancel,
            keys: Mutex::new(BTreeMap::new()),
            unavailable: BTreeMap::new(),
            invalid: BTreeMap::new(),
            warnings: Mutex::new(Vec::new()),
            canonical_dirs,
            cache: None,
            storer: None,
            restored: Mutex::new(BTreeMap::new()),
            remote: None,
            ran_remotely: Mutex::new(BTreeMap::new()),
            portable: None,
        }
    }

    /// The same executor running the stages placed remotely on `remote`, and making
    /// stages' Actions portable with `portable` (for the executor and a remote cache).
    pub(super) fn with_remote(
        mut self,
        remote: Option<Arc<RemoteExecution>>,
        portable: Option<Arc<PortableActions>>,
    ) -> Self {
        self.remote = remote;
        self.portable = portable;
        self
    }

    /// The same executor restoring from and storing to `cache`.
    pub(super) fn with_cache(mut self, cache: Option<Arc<dyn OutputCache>>) -> Self {
        self.storer = cache.clone().map(Storer::new);
        self.cache = cache;
        self
    }

    /// Where each restored job's outputs came from.
    pub(super) fn restored(&self) -> BTreeMap<usize, Origin> {
        self.restored
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// After the scheduler: waits for the stores still queued, then lets the cache record
    /// the build's figures and keep its size limit. Returns the warnings, (job or none,
    /// message).
    pub(super) fn finish_cache(
        &self,
        stats: &crate::cache::BuildStats,
    ) -> Vec<(Option<usize>, String)> {
        let (Some(cache), Some(storer)) = (&self.cache, &self.storer) else {
            return Vec::new();
        };
        let (warnings, stored) = storer.finish();
        let mut all: Vec<(Option<usize>, String)> = warnings
            .into_iter()
            .map(|(job, w)| (Some(job), w))
            .collect();
        all.extend(
            cache
                .finish_build(stats, stored)
                .into_iter()
                .map(|w| (None, w)),
        );
        all
    }

    fn warn(&self, job: usize, message: String) {
        self.warnings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((job, message));
    }

    /// Whether the cache may hold the outputs of `job` under `key`.
    fn may_restore(&self, job: usize, key: &StageKey) -> bool {
        let Some(cache) = &self.cache else {
            return false;
        };
        let (project, stage) = self.jobs[job];
        if !self.projects[project].pipeline.stages[stage].cache {
            return false;
        }
        cached::with_request(&self.projects[project], stage, key, None, |r| {
            cache.may_have(r)
        })
    }

    /// Restores `job` from the cache into temporary paths and publishes it like a run.
    fn restore_stage(&self, job: usize) -> Option<Origin> {
        let cache = self.cache.as_ref()?;
        let key = self
            .keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&job)
            .cloned()?;
        let (project_index, stage) = self.jobs[job];
        let project = &self.projects[project_index];
        let started = Instant::now();
        let temp = TempOutputs::create(project, stage).ok()?;
        let dir = &project.pipeline.dir;
        let scratch = temp.scratch();
        let dest_for = |name: &str| match temp.paths.get(name) {
            Some(path) => dir.join(path),
            None => scratch.join(name),
        };
        let context = invocation_context(project, stage, None, &temp);
        let fingerprint = key.fingerprint();
        let lazy = self
            .portable
            .as_deref()
            .map(|actions| LazyPortable::of_run(actions, (project, stage), context, fingerprint));
        let source = lazy.as_ref().map(|lazy| lazy as &dyn ActionSource);
        let restored = cached::with_request(project, stage, &key, source, |r| {
            cache.restore(r, &dest_for)
        });
        let origin = match restored.and_then(|hit| check_names(&temp, hit)) {
            Ok(hit) => {
                match self.finish(job, &key, &temp, started, Some(&hit)) {
                    Ok(_) => Some(hit.origin),
                    Err(error) => {
                        let message = StageError::from(error).message;
                        self.warn(job, format!("restored from the cache ({}), but: {message}; the stage runs instead", hit.origin));
                        None
                    }
                }
            }
            Err(miss) => {
                if miss.is_notable() {
                    self.warn(
                        job,
                        format!("not restored from the cache ({miss}); the stage runs instead"),
                    );
                }
                None
            }
        };
        temp.empty();
        origin
    }

    /// The warnings of the stages that ran, in the order they finished.
    pub(super) fn take_warnings(&self) -> Vec<(usize, String)> {
        std::mem::take(&mut *self.warnings.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn run_stage(&self, job: usize, lease: &Lease) -> Result<(), StageError> {
        let (project_index, stage) = self.jobs[job];
        let project = &self.projects[project_index];
        let key = self
            .keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&job);
        let key = match key {
            Some(key) => key,
            None => current_key(project, stage).map_err(|s| StageError::new(describe(s)))?,
        };
        let started = Instant::now();
        let temp = TempOutputs::create(project, stage).map_err(|e| {
            StageError::new(format!("cannot create temporary output directory: {e}"))
        })?;
        let result = self.execute(job, lease, &temp, &key.fingerprint());
        let outcome = result.and_then(|(warnings, ran)| {
            let outputs = self.finish(job, &key, &temp, started, None)?;
            if let Some(storer) = self
                .storer
                .as_ref()
                .filter(|_| project.pipeline.stages[stage].cache)
            {
                let took = started.elapsed().as_millis() as u64;
                storer.submit(job, (project, stage), (&key, ran), &outputs, took);
            }
            let mut told = self.warnings.lock().unwrap_or_else(|e| e.into_inner());
            told.extend(warnings.into_iter().map(|w| (job, w)));
            Ok(())
        });
        temp.empty();
        if let Err(message) = &outcome
            && !self.cancel.load(Ordering::Relaxed)
        {
            let log = project.state_log_path(stage);
            let record = FailureRecord {
                stage: project.pipeline.stages[stage].name.clone(),
                message: message.message.clone(),
                log: log
                    .strip_prefix(&project.pipeline.dir)
                    .ok()
                    .map(Path::to_path_buf),
                duration_ms: started.elapsed().as_millis() as u64,
                finished_unix_ms: unix_ms_now(),
            };
            let _ = project
                .state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .record_failed(record);
        }
        outcome
    }

    /// Runs the stage's action into the temporary paths and verifies what it wrote;
    /// returns the warnings it reported and, in a build with a remote server, the
    /// portable Action that ran.
    fn execute(
        &self,
        job: usize,
        lease: &Lease,
        temp: &TempOutputs,
        fingerprint: &str,
    ) -> Result<(Vec<String>, Option<RanPortable>), StageError> {
        let (project_index, stage) = self.jobs[job];
        let project = &self.projects[project_index];
        let spec = &project.pipeline.stages[stage];
        let context = invocation_context(project, stage, lease.gpu, temp);
        let action = spec.kind.action(&context)?;
        let portable = self.portable.as_deref().map(|actions| {
            portable_action(actions, project, stage, &context, &action, fingerprint)
        });
        let (result, portable) = match (&self.remote, lease.remote, portable) {
            (Some(remote), true, Some(portable)) => {
                let portable = portable.map_err(StageError::from)?;
                (self.run_remote(job, remote, &portable), Some(portable))
            }
            (Some(_), true, None) => {
                return Err(StageError::new(
                    "the stage was placed on the remote executor, but the build makes no portable Actions",
                ));
            }
            (_, _, portable) => {
                let portable = portable.and_then(|built| self.uploadable(job, built));
                (self.run_process(project, stage, lease, action), portable)
            }
        };
        result.map_err(|failure| match failure {
            ProcessFailure::Ran { status, error } => {
                spec.kind.explain_failure(&context, &status, error)
            }
            ProcessFailure::Other(error) => error,
        })?;
        if self.cancel.load(Ordering::Relaxed) {
            return Err(StageError::new("interrupted"));
        }
        let warnings = spec.kind.verify(&context)?;
        let executed_at = self.ran_remotely_as(job).map(|ran| ran.executor);
        let ran = portable.map(|p| RanPortable::read(p, &project.pipeline.dir, executed_at));
        Ok((warnings, ran))
    }

    /// The portable Action of a stage that runs here, for the remote cache's upload; a
    /// warning without it when it cannot be built (the stage still runs).
    fn uploadable(
        &self,
        job: usize,
        built: Result<PortableAction, super::portable::PortableError>,
    ) -> Option<PortableAction> {
        match built {
            Ok(portable) => Some(portable),
            Err(error) => {
                let message = StageError::from(error).message;
                self.warn(job, format!("not uploaded to the remote cache: {message}"));
                None
            }
        }
    }

    /// Runs the action on the remote executor; remembers the worker.
    fn run_remote(
        &self,
        job: usize,
        remote: &RemoteExecution,
        portable: &PortableAction,
    ) -> Result<(), ProcessFailure> {
        let (project_index, stage) = self.jobs[job];
        let project = &self.projects[project_index];
        let log = project.state_log_path(stage);
        let shown_log = log
            .strip_prefix(&project.pipeline.dir)
            .unwrap_or(&log)
            .to_path_buf();
        let run = RemoteRun {
            project,
            stage,
            action: portable,
            log: &log,
            shown_log: &shown_log,
        };
        match run_remotely(remote, &run, &self.cancel) {
            Ok(ran) => {
                self.ran_remotely
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(job, ran);
                Ok(())
            }
            Err(RemoteFailure::Ran { status, error }) => Err(ProcessFailure::Ran { status, error }),
            Err(RemoteFailure::Other(error)) => Err(ProcessFailure::Other(error)),
        }
    }

    /// Where a job ran, if it ran remotely.
    pub(super) fn ran_remotely_as(&self, job: usize) -> Option<RanRemotely> {
        self.ran_remotely
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&job)
            .cloned()
    }

    /// Where each job that ran remotely ran.
    pub(super) fn ran_remotely(&self) -> BTreeMap<usize, RanRemotely> {
        self.ran_remotely
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn run_process(
        &self,
        project: &Project,
        stage: usize,
        lease: &Lease,
        action: Action,
    ) -> Result<(), ProcessFailure> {
        let pipeline = &project.pipeline;
        let mut env = pipeline.stages[stage].env.clone();
        env.extend(action.env);
        let visible = lease.gpu.map(|gpu| gpu.to_string()).unwrap_or_default();
        env.insert("CUDA_VISIBLE_DEVICES".into(), visible);
        let log = project.state_log_path(stage);
        let mut argv = action.argv.into_iter();
        let process = ProcessSpec {
            program: argv.next().unwrap_or_default(),
            args: argv.collect(),
            env,
            cwd: pipeline.dir.clone(),
            log: log.clone(),
            outputs: action.outputs,
        };
        let shown_log = log
            .strip_prefix(&pipeline.dir)
            .unwrap_or(&log)
            .to_path_buf();
        match self.runner.run(&process, &self.cancel) {
            ProcessResult::Success => Ok(()),
            ProcessResult::Cancelled => Err(ProcessFailure::Other(StageError::new("interrupted"))),
            ProcessResult::SpawnError(error) => Err(ProcessFailure::Other(StageError::new(
                format!("cannot start `{}`: {error}", process.program),
            ))),
            ProcessResult::Failed {
                status,
                stderr_tail,
            } => {
                let mut message = format!("`{}` failed with {status}", process.program);
                if !stderr_tail.is_empty() {
                    message.push_str("\nlast lines of stderr:");
                    for line in stderr_tail {
                        message.push_str("\n  ");
                        message.push_str(&line);
                    }
                }
                Err(ProcessFailure::Ran {
                    status,
                    error: StageError::new(message).with_log(shown_log),
                })
            }
        }
    }

    /// Finishes `job` like every stage (`outputs::finish`): verified, published, recorded.
    fn finish(
        &self,
        job: usize,
        key: &StageKey,
        temp: &TempOutputs,
        started: Instant,
        restored: Option<&Restored>,
    ) -> Result<Vec<OutputRecord>, OutputError> {
        let (project, stage) = self.jobs[job];
        let canonical_dir = &self.canonical_dirs[project];
        outputs::finish(
            &self.projects[project],
            canonical_dir,
            stage,
            key,
            temp,
            started,
            restored,
        )
    }
}

/// The paths and facts of one run of a stage holding `gpu`.
fn invocation_context(
    project: &Project,
    stage: usize,
    gpu: Option<u32>,
    temp: &TempOutputs,
) -> InvocationContext {
    let pipeline = &project.pipeline;
    let spec = &pipeline.stages[stage];
    let inside = |path: &Path| {
        path.strip_prefix(&pipeline.dir)
            .map(Path::to_path_buf)
            .unwrap_or_else(|_| path.to_path_buf())
    };
    InvocationContext {
        dir: pipeline.dir.clone(),
        inputs: project
            .graph
            .inputs(stage)
            .iter()
            .map(|(key, input)| (key.clone(), input.path().to_path_buf()))
            .collect(),
        outputs: temp.paths.clone(),
        scratch: inside(&temp.scratch()),
        build_dir: pipeline.build_dir.clone(),
        state_dir: inside(&pipeline.state_dir()),
        stage: spec.name.clone(),
        gpu,
        facts: project.stage_facts(stage).into_owned(),
        pipeline_file: inside(&pipeline.file),
        pipeline_text: project.stage_text(stage),
    }
}

/// The hit, if its entry names exactly the stage's declared outputs (the key holds them,
/// so anything else is a damaged or forged entry).
fn check_names(temp: &TempOutputs, hit: Restored) -> Result<Restored, Miss> {
    let mut named: Vec<&str> = hit.entry.outputs.iter().map(|o| o.name.as_str()).collect();
    named.sort_unstable();
    if named
        .iter()
        .copied()
        .eq(temp.paths.keys().map(String::as_str))
    {
        Ok(hit)
    } else {
        Err(Miss::OtherOutputs(named.join(", ")))
    }
}

/// Why a stage's process did not succeed.
enum ProcessFailure {
    /// It ran and failed; the kind may explain the failure (`StageKind::explain_failure`).
    Ran { status: String, error: StageError },
    /// It never ran, or was interrupted.
    Other(StageError),
}

/// A stage's error as the scheduler carries it.
fn failure(error: StageError) -> Failure {
    Failure {
        message: error.message,
        hint: error.hint,
        log: error.log,
    }
}

impl JobHandler for StageJobs {
    fn check(&self, job: usize) -> Check {
        if let Some(error) = self.invalid.get(&job) {
            return Check::Failed(failure(error.clone()));
        }
        let (project_index, stage) = self.jobs[job];
        let (standing, key) = standing(&self.projects[project_index], stage);
        // A stage whose outputs are up to date needs nothing of this machine (it may have
        // been built elsewhere: on a remote worker, or on a machine with its GPU).
        if let Some(reason) = self.unavailable.get(&job)
            && standing != Standing::UpToDate
        {
            return Check::Unavailable(reason.clone());
        }
        // Only a stage that runs needs its key again (to see inputs change meanwhile), and
        // to look it up in the cache.
        let mut restorable = false;
        if let (Some(key), Standing::Stale(_)) = (key, &standing) {
            restorable = self.may_restore(job, &key);
            self.keys
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(job, key);
        }
        match standing {
            Standing::UpToDate => Check::UpToDate,
            Standing::Stale(changes) => {
                let reason = changes.first().map(|c| c.to_string()).unwrap_or_default();
                if restorable {
                    Check::Restorable(reason)
                } else {
                    Check::Run(reason)
                }
            }
            Standing::WaitsOnUpstream(why) => Check::Run(why),
            Standing::Broken(why) => Check::Failed(Failure::new(why)),
        }
    }

    fn restore(&self, job: usize) -> Option<String> {
        let origin = self.restore_stage(job)?;
        self.keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&job);
        let shown = origin.to_string();
        self.restored
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(job, origin);
        Some(shown)
    }

    fn run(&self, job: usize, lease: &Lease) -> RunResult {
        match self.run_stage(job, lease) {
            Ok(()) => RunResult::Done,
            Err(_) if self.cancel.load(Ordering::Relaxed) => RunResult::Cancelled,
            Err(error) => RunResult::Failed(failure(error)),
        }
    }
}
