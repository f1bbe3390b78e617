//! One build over one or more pipelines: load and check them, take their locks, plan which
//! stages are stale, hand them to the scheduler with a `StageExecutor`, and summarize.
//! It neither prints nor spawns: events go to an observer, processes to a `ProcessRunner`.

mod availability;
mod cached;
mod executor;
pub mod explain;
pub mod noop;
pub mod remote;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rayon::prelude::*;
use serde::Serialize;

pub use availability::Verdict;
pub use cached::cache_key_of;
pub use executor::{Standing, standing};
use explain::Change;

use crate::fingerprint::StatCache;
use crate::graph::{GraphError, ResolvedInput, StageGraph};
use crate::host::{Host, Toolchain};
use crate::machine::Machine;
use crate::process::ProcessRunner;
use crate::scheduler::{self, Capacity, Check, GpuRequest, Job, Outcome, Request};
use crate::spec::kind::{Registry, Tool, WithoutGpu};
use crate::spec::{Device, Pipeline, SpecError, suggest};
use crate::state::{OutputRecord, StateError, StateLock, StateStore};

/// Why a build could not start or finish its bookkeeping.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum BuildError {
    #[error(transparent)]
    #[diagnostic(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Graph(#[from] GraphError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    State(#[from] StateError),
    #[error("unknown target `{name}`")]
    #[diagnostic(help("{hint}"))]
    UnknownTarget { name: String, hint: String },
    #[error("stage `{stage}` cannot run on this machine: {reason}")]
    #[diagnostic(help("{help}"))]
    Unavailable {
        stage: String,
        reason: String,
        help: String,
    },
    #[error("stage `{stage}` cannot run remotely: {reason}")]
    #[diagnostic(help("{help}"))]
    Placement {
        stage: String,
        reason: String,
        help: String,
    },
    #[error("two pipelines named `{name}` in one run: {} and {}", first.display(), second.display())]
    #[diagnostic(help("give one of them another `[pipeline] name`"))]
    DuplicatePipeline {
        name: String,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("cannot remove output `{}`", path.display())]
    #[diagnostic(help(
        "nothing outside the project is removed; fix or remove the link yourself, then run `pochi clean` again"
    ))]
    Clean {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("pipelines {} and {} in one directory are both named `{name}`, so they would share (and overwrite) one state directory", first.display(), second.display())]
    #[diagnostic(help("give one of them another `[pipeline] name`"))]
    SharedState {
        name: String,
        first: PathBuf,
        second: PathBuf,
    },
}

/// One pipeline with its graph, state and stat cache.
#[derive(Debug)]
pub struct Project {
    pub pipeline: Pipeline,
    pub graph: StageGraph,
    pub state: Mutex<StateStore>,
    pub stats: StatCache,
    /// The machine facts of this build, set by the caller (`Workspace::attach_hosts`);
    /// until then a host without GPUs whose toolchain is `[toolchain] python` or
    /// `python3` on PATH.
    pub host: Host,
    /// The stages that run on the remote executor in this build (`Workspace::place`).
    pub remote: BTreeSet<usize>,
    /// The stages that must run remotely when no executor is configured, with why they
    /// cannot run in this build.
    pub nowhere: BTreeMap<usize, String>,
}

impl Project {
    /// Parses, resolves and checks a pipeline, and reads its state.
    pub fn load(path: &Path, kinds: Registry) -> Result<Project, BuildError> {
        let started = Instant::now();
        let pipeline = Pipeline::load(path, kinds)?;
        let parsed = started.elapsed();
        let graph = StageGraph::build(&pipeline)?;
        check_sources_exist(&pipeline, &graph)?;
        let checked = started.elapsed();
        let state = StateStore::open(&pipeline.state_dir())?;
        let stats = StatCache::load(&state.stat_cache_path());
        tracing::debug!(
            parse_ms = parsed.as_millis() as u64,
            graph_ms = (checked - parsed).as_millis() as u64,
            state_ms = (started.elapsed() - checked).as_millis() as u64,
            "pipeline loaded"
        );
        Ok(Project {
            graph,
            state: Mutex::new(state),
            host: Host::plain(default_toolchain(&pipeline)),
            remote: BTreeSet::new(),
            nowhere: BTreeMap::new(),
            pipeline,
            stats,
        })
    }

    /// Whether any stage runs the Python toolchain.
    pub fn needs_python(&self) -> bool {
        self.pipeline
            .stages
            .iter()
            .any(|stage| stage.kind.requirements().tool == Tool::Python)
    }

    /// The facts a stage is keyed and run with: the attached host, or for a stage that
    /// names its GPU model (`gpu = ...`) that target instead of the probed GPU, wherever
    /// the stage runs.
    pub fn stage_host(&self, stage: usize) -> std::borrow::Cow<'_, Host> {
        let placement = &self.pipeline.stages[stage].placement;
        match &placement.gpu {
            Some(gpu) => std::borrow::Cow::Owned(
                self.host
                    .targeting(gpu, placement.platform.get("tensorrt").map(String::as_str)),
            ),
            None => std::borrow::Cow::Borrowed(&self.host),
        }
    }

    /// Whether the stage runs on the remote executor in this build.
    pub fn runs_remotely(&self, stage: usize) -> bool {
        self.remote.contains(&stage)
    }

    /// The toolchain of the attached host.
    pub fn toolchain(&self) -> &Toolchain {
        &self.host.toolchain
    }

    pub fn state_log_path(&self, stage: usize) -> PathBuf {
        self.state().log_path(&self.pipeline.stages[stage].name)
    }

    pub fn temp_root(&self) -> PathBuf {
        self.state().temp_root()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, StateStore> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The last recorded duration of a stage, in ms.
    pub fn last_duration_ms(&self, stage: usize) -> Option<u64> {
        self.state()
            .last_duration_ms(&self.pipeline.stages[stage].name)
    }

    /// The published outputs of a stage's last successful run.
    pub fn recorded_outputs(&self, stage: usize) -> Vec<OutputRecord> {
        self.state()
            .built(&self.pipeline.stages[stage].name)
            .map(|r| r.outputs.clone())
            .unwrap_or_default()
    }

    /// The message of the stage's last run, if it failed after its last success.
    pub fn last_failure(&self, stage: usize) -> Option<String> {
        self.state()
            .failed(&self.pipeline.stages[stage].name)
            .map(|f| f.message.clone())
    }

    /// Saves the stat cache and compacts the record log. Both are optimizations (the
    /// records are already on disk), so a failure is a warning, not a failed build.
    fn persist_caches(&self) -> Vec<String> {
        let mut state = self.state();
        let path = state.stat_cache_path();
        let mut warnings = Vec::new();
        if let Err(e) = self.stats.save(&path) {
            warnings.push(format!(
                "cannot save the stat cache {}: {e}; the next build reads every file again to check it",
                path.display()
            ));
        }
        if let Err(e) = state.compact_if_large() {
            warnings.push(format!(
                "cannot compact the record log: {e}; it is compacted next time"
            ));
        }
        warnings
    }
}

/// `[toolchain] python`, or `python3` on PATH, identified by its path only: the toolchain
/// of a project whose caller attached none.
pub fn default_toolchain(pipeline: &Pipeline) -> Toolchain {
    let python = pipeline
        .toolchain
        .python
        .clone()
        .unwrap_or_else(|| PathBuf::from("python3"));
    Toolchain {
        identity: format!("python:{}", python.display()),
        python,
    }
}

/// Source inputs (not produced by a stage) must exist before anything runs.
fn check_sources_exist(pipeline: &Pipeline, graph: &StageGraph) -> Result<(), SpecError> {
    for (index, stage) in pipeline.stages.iter().enumerate() {
        for ((key, input), named) in graph.inputs(index).iter().zip(stage.kind.inputs()) {
            if let ResolvedInput::Source(path) = input
                && std::fs::symlink_metadata(pipeline.dir.join(path)).is_err()
            {
                return Err(pipeline
                    .source
                    .error(named.span.clone(), format!("input `{key}` of stage `{}` does not exist: {}", stage.name, path.display()))
                    .with_label("no such file or directory")
                    .with_help("create it, fix the path (relative to the pipeline file), or refer to a stage's output with \"@stage\"")
                    .into());
            }
        }
    }
    Ok(())
}

/// Two pipeline files in one directory with the same name would share a state directory:
/// refused while the file that last built there still exists and still has that name.
fn check_state_owner(pipeline: &Pipeline, kinds: Registry) -> Result<(), BuildError> {
    let Some(owner) = crate::state::owner(&pipeline.state_dir()) else {
        return Ok(());
    };
    if Some(owner.as_str()) == pipeline_file_name(pipeline).as_deref() {
        return Ok(());
    }
    let other = pipeline.dir.join(&owner);
    match Pipeline::load(&other, kinds) {
        Ok(other_pipeline) if other_pipeline.name == pipeline.name => {
            Err(BuildError::SharedState {
                name: pipeline.name.clone(),
                first: other,
                second: pipeline.file.clone(),
            })
        }
        _ => Ok(()),
    }
}

fn pipeline_file_name(pipeline: &Pipeline) -> Option<String> {
    Some(pipeline.file.file_name()?.to_string_lossy().into_owned())
}

/// No two pipelines of one build may declare the same output, or outputs inside one
/// another (within one pipeline the graph checks this).
fn check_outputs_across(projects: &[Project]) -> Result<(), GraphError> {
    if projects.len() < 2 {
        return Ok(());
    }
    let mut owners: std::collections::HashMap<PathBuf, (usize, usize, usize)> =
        std::collections::HashMap::new();
    for (p, project) in projects.iter().enumerate() {
        for (s, stage) in project.pipeline.stages.iter().enumerate() {
            for (o, output) in stage.kind.outputs().iter().enumerate() {
                owners.insert(project.pipeline.dir.join(&output.path), (p, s, o));
            }
        }
    }
    for (p, project) in projects.iter().enumerate() {
        for stage in &project.pipeline.stages {
            for output in stage.kind.outputs() {
                let path = project.pipeline.dir.join(&output.path);
                let clash = path
                    .ancestors()
                    .find_map(|a| owners.get(a).filter(|(other, ..)| *other != p));
                if let Some(&(other, s, o)) = clash {
                    return Err(shared_output_error(
                        projects,
                        (p, stage),
                        output,
                        (other, s, o),
                    ));
                }
            }
        }
    }
    Ok(())
}

fn shared_output_error(
    projects: &[Project],
    (p, stage): (usize, &crate::spec::Stage),
    output: &crate::spec::NamedOutput,
    (other, s, o): (usize, usize, usize),
) -> GraphError {
    let first = &projects[other].pipeline;
    let first_stage = &first.stages[s];
    let first_output = &first_stage.kind.outputs()[o];
    let (line, column) = first.source.line_column(first_output.span.start);
    projects[p]
        .pipeline
        .source
        .error(
            output.span.clone(),
            format!(
                "output `{}` of stage `{}` is also an output (or inside an output) of stage `{}` of pipeline {}",
                output.path.display(),
                stage.name,
                first_stage.name,
                first.file.display()
            ),
        )
        .with_label("declared twice")
        .with_help(format!(
            "each file is produced by one stage of one pipeline; the other is declared at {}:{line}:{column}; give one of them another path",
            first.source.name
        ))
        .into()
}

/// The jobs in `from` and every job that depends on them, directly or not.
fn downstream(jobs: &[Job], from: impl Iterator<Item = usize>) -> Vec<bool> {
    let mut marked = vec![false; jobs.len()];
    let mut stack: Vec<usize> = from.collect();
    if stack.is_empty() {
        return marked;
    }
    let mut dependents = vec![Vec::new(); jobs.len()];
    for (job, spec) in jobs.iter().enumerate() {
        for &dep in &spec.deps {
            dependents[dep].push(job);
        }
    }
    while let Some(job) = stack.pop() {
        if !std::mem::replace(&mut marked[job], true) {
            stack.extend(&dependents[job]);
        }
    }
    marked
}

/// How to run a build.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    pub targets: Vec<String>,
    pub jobs: Option<u32>,
    pub keep_going: bool,
    /// Fail at once instead of waiting when another build holds a lock.
    pub no_wait: bool,
    /// Fail at once when a wanted stage cannot run on this machine (e.g. an engine
    /// without TensorRT or a GPU) instead of reporting it as unavailable.
    pub require_all: bool,
    /// Where stages are restored from instead of run, and their outputs stored after they
    /// ran; none: nothing is restored or stored (`--no-cache`).
    pub cache: Option<Arc<dyn crate::cache::OutputCache>>,
    /// The remote executor the stages placed there run on (`Workspace::place`), and how
    /// many of them may be in flight.
    pub remote: Option<Arc<remote::RemoteExecution>>,
    pub remote_jobs: u32,
}

/// What a build reports while it runs.
#[derive(Debug)]
pub enum BuildEvent<'a> {
    WaitingForLock {
        pipeline: &'a str,
        holder: &'a str,
    },
    /// `to_run` stages are out of date now; up to `may_follow` more depend on them and run
    /// if their inputs change (early cutoff spares those whose inputs come out the same).
    /// Something went wrong that does not fail the build.
    Warning {
        message: &'a str,
    },
    Planned {
        stages: usize,
        to_run: usize,
        may_follow: usize,
    },
    Started {
        stage: &'a str,
        reason: &'a str,
        gpu: Option<u32>,
        /// It runs on the remote executor.
        remote: bool,
    },
    Finished {
        stage: &'a str,
        outcome: &'a Outcome,
        duration: Duration,
        /// Where it ran, when it ran remotely.
        ran_remotely: Option<&'a remote::RanRemotely>,
    },
}

/// The machine-readable result of a build (`--json`).
#[derive(Debug, Clone, Serialize)]
pub struct BuildSummary {
    pub schema_version: u32,
    pub ok: bool,
    pub interrupted: bool,
    pub duration_ms: u64,
    pub counts: BTreeMap<&'static str, usize>,
    pub stages: Vec<StageSummary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StageSummary {
    pub pipeline: String,
    pub stage: String,
    /// ran | restored | skipped (up to date) | failed | blocked | stopped | cancelled |
    /// unavailable
    pub status: &'static str,
    pub reason: Option<String>,
    pub error: Option<String>,
    /// What to do about the error.
    pub hint: Option<String>,
    /// The failed stage's log, relative to the pipeline directory.
    pub log: Option<PathBuf>,
    pub duration_ms: Option<u64>,
    pub outputs: Vec<OutputRecord>,
    /// Where a `restored` stage's outputs came from (`tier`: local or remote, `location`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restored_from: Option<crate::cache::Origin>,
    /// Where a stage that ran remotely ran (`executor`, `worker`, `cached`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ran_remotely: Option<remote::RanRemotely>,
}

/// Several pipelines built together: one scheduler, one set of resources.
#[derive(Debug)]
pub struct Workspace {
    pub projects: Arc<Vec<Project>>,
}

/// The jobs that cannot run here (with what is missing) and those whose inputs are wrong
/// for them (with the error).
type Verdicts = (
    BTreeMap<usize, String>,
    BTreeMap<usize, crate::spec::kind::StageError>,
);

/// A stage of the workspace: (project index, stage index).
pub type StageId = (usize, usize);

impl Workspace {
    /// `kinds`: the stage kinds the pipelines may use (`pochi::kinds::KINDS`).
    pub fn load(paths: &[PathBuf], kinds: Registry) -> Result<Workspace, BuildError> {
        let projects: Vec<Project> = paths
            .iter()
            .map(|path| Project::load(path, kinds))
            .collect::<Result<_, _>>()?;
        let mut seen: BTreeMap<PathBuf, &Path> = BTreeMap::new();
        for project in &projects {
            if let Some(first) = seen.insert(project.pipeline.state_dir(), &project.pipeline.file) {
                return Err(BuildError::DuplicatePipeline {
                    name: project.pipeline.name.clone(),
                    first: first.to_path_buf(),
                    second: project.pipeline.file.clone(),
                });
            }
            check_state_owner(&project.pipeline, kinds)?;
        }
        check_outputs_across(&projects)?;
        Ok(Workspace {
            projects: Arc::new(projects),
        })
    }

    /// Gives every project its machine facts, gathered once by the caller (which may
    /// create environments and spawn probes; the engine does neither), before any key is
    /// computed.
    pub fn attach_hosts<E>(
        &mut self,
        mut host_for: impl FnMut(&Project) -> Result<Host, E>,
    ) -> Result<(), E> {
        let Some(projects) = Arc::get_mut(&mut self.projects) else {
            return Ok(());
        };
        for project in projects.iter_mut() {
            project.host = host_for(project)?;
        }
        Ok(())
    }

    /// Decides which stages run on the remote executor (`configured`: one is). A stage
    /// with `executor = "remote"` that cannot run there is an error; without an executor
    /// it is unavailable in this build.
    pub fn place(&mut self, configured: bool) -> Result<(), BuildError> {
        let several = self.projects.len() > 1;
        let Some(projects) = Arc::get_mut(&mut self.projects) else {
            return Ok(());
        };
        for project in projects.iter_mut() {
            let (mut remote, mut nowhere) = (BTreeSet::new(), BTreeMap::new());
            for stage in 0..project.pipeline.stages.len() {
                match remote::place(project, stage, configured) {
                    Ok(remote::Placed::Here) => {}
                    Ok(remote::Placed::Remotely) => {
                        remote.insert(stage);
                    }
                    Ok(remote::Placed::Nowhere(why)) => {
                        nowhere.insert(stage, why);
                    }
                    Err(reason) => {
                        let name = &project.pipeline.stages[stage].name;
                        return Err(BuildError::Placement {
                            stage: match several {
                                true => format!("{}/{name}", project.pipeline.name),
                                false => name.clone(),
                            },
                            reason,
                            help: "fix what keeps it here, or set `executor = \"auto\"` to let it run locally".into(),
                        });
                    }
                }
            }
            project.remote = remote;
            project.nowhere = nowhere;
        }
        Ok(())
    }

    /// How a stage is named in messages: `stage`, or `pipeline/stage` with several pipelines.
    pub fn display_name(&self, (project, stage): StageId) -> String {
        let pipeline = &self.projects[project].pipeline;
        if self.projects.len() == 1 {
            pipeline.stages[stage].name.clone()
        } else {
            format!("{}/{}", pipeline.name, pipeline.stages[stage].name)
        }
    }

    /// Every stage, pipeline by pipeline.
    pub fn stage_ids(&self) -> Vec<StageId> {
        self.projects
            .iter()
            .enumerate()
            .flat_map(|(p, project)| (0..project.pipeline.stages.len()).map(move |s| (p, s)))
            .collect()
    }

    /// Resolves `--target` names (`stage` or `pipeline/stage`; a matrix stage's name selects
    /// every variant); none means every stage.
    pub fn resolve_targets(&self, targets: &[String]) -> Result<Vec<StageId>, BuildError> {
        if targets.is_empty() {
            return Ok(self.stage_ids());
        }
        let mut found = Vec::new();
        for target in targets {
            let (pipeline, name) = match target.split_once('/') {
                Some((pipeline, name)) => (Some(pipeline), name),
                None => (None, target.as_str()),
            };
            let matches: Vec<StageId> = self
                .projects
                .iter()
                .enumerate()
                .filter(|(_, project)| pipeline.is_none_or(|p| p == project.pipeline.name))
                .flat_map(|(p, project)| {
                    project.graph.select(name).into_iter().map(move |s| (p, s))
                })
                .collect();
            if matches.is_empty() {
                let names: Vec<String> = self
                    .stage_ids()
                    .into_iter()
                    .map(|id| self.display_name(id))
                    .collect();
                let hint = match suggest::nearest(target, names.iter().map(String::as_str)) {
                    Some(best) => format!("did you mean `{best}`?"),
                    None => format!("the stages are: {}", names.join(", ")),
                };
                return Err(BuildError::UnknownTarget {
                    name: target.clone(),
                    hint,
                });
            }
            found.extend(matches);
        }
        Ok(found)
    }

    /// The pools for this build: `-j` caps cpu slots; memory and GPUs come from the first
    /// pipeline's `[resources]` that declares them, else from the machine.
    pub fn capacity(&self, machine: &Machine, jobs: Option<u32>) -> Capacity {
        let declared = |f: &dyn Fn(&Pipeline) -> Option<u64>| {
            self.projects.iter().find_map(|p| f(&p.pipeline))
        };
        let cpu = declared(&|p| p.resources.cpu.map(u64::from))
            .map(|c| c as u32)
            .unwrap_or(machine.cores);
        let memory = declared(&|p| p.resources.memory.map(|m| m.0)).unwrap_or(machine.memory);
        let gpus = self
            .projects
            .iter()
            .find_map(|p| p.pipeline.resources.gpus.clone())
            .unwrap_or_else(|| machine.gpus.clone());
        Capacity {
            cpu: jobs.unwrap_or(cpu).max(1),
            memory,
            gpus,
            remote: 0,
        }
    }

    /// Runs the build; returns its summary (also when stages failed).
    pub fn build(
        &self,
        options: &BuildOptions,
        machine: &Machine,
        runner: Arc<dyn ProcessRunner>,
        cancel: Arc<AtomicBool>,
        observer: &mut dyn FnMut(BuildEvent),
    ) -> Result<BuildSummary, BuildError> {
        let started = Instant::now();
        let _locks = self.lock_all(options.no_wait, &cancel, observer)?;
        let targets = self.resolve_targets(&options.targets)?;
        let ids = self.stage_ids();
        let index_of: BTreeMap<StageId, usize> =
            ids.iter().enumerate().map(|(job, id)| (*id, job)).collect();
        let wanted = self.wanted(&targets, &ids, &index_of);
        let mut capacity = self.capacity(machine, options.jobs);
        capacity.remote = options
            .remote
            .as_ref()
            .map_or(0, |_| options.remote_jobs.max(1));
        let jobs = self.jobs(&ids, &index_of, &capacity.gpus);
        for project in self.projects.iter() {
            noop::invalidate(project);
        }
        let (unavailable, invalid) = self.unavailable(&ids, &wanted, &targets, options)?;
        let mut executor = executor::StageExecutor::new(
            Arc::clone(&self.projects),
            ids.clone(),
            runner,
            Arc::clone(&cancel),
        )
        .with_cache(options.cache.clone())
        .with_remote(options.remote.clone());
        executor.unavailable = unavailable;
        executor.invalid = invalid;
        let executor = Arc::new(executor);
        let prechecked: Vec<Option<Check>> = (0..ids.len())
            .into_par_iter()
            .map(|job| wanted[job].then(|| scheduler::Executor::check(&*executor, job)))
            .collect();
        tracing::debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "stages checked"
        );
        let cannot_run = downstream(&jobs, executor.unavailable.keys().copied());
        let out_of_date: Vec<usize> = (0..ids.len())
            .filter(|&job| {
                matches!(prechecked[job], Some(Check::Run(_) | Check::Restorable(_)))
                    && !cannot_run[job]
            })
            .collect();
        let affected = downstream(&jobs, out_of_date.iter().copied());
        let may_follow = (0..ids.len())
            .filter(|&job| affected[job] && wanted[job] && !cannot_run[job])
            .count()
            - out_of_date.len();
        observer(BuildEvent::Planned {
            stages: wanted.iter().filter(|w| **w).count(),
            to_run: out_of_date.len(),
            may_follow,
        });
        let scheduler_options = scheduler::Options {
            keep_going: options.keep_going,
            cancel: Arc::clone(&cancel),
        };
        let outcomes = scheduler::run(
            &jobs,
            &wanted,
            prechecked,
            capacity,
            Arc::clone(&executor) as Arc<dyn scheduler::Executor>,
            &scheduler_options,
            &mut |event| self.forward(&ids, &executor, event, observer),
        );
        tracing::debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "scheduler finished"
        );
        executor.discard_spare_roots();
        let restored = executor.restored();
        self.tell_warnings(
            &ids,
            &executor,
            &cache_stats(&outcomes, &restored),
            observer,
        );
        let interrupted = cancel.load(std::sync::atomic::Ordering::Relaxed);
        for (p, project) in self.projects.iter().enumerate() {
            let complete = ids
                .iter()
                .zip(&outcomes)
                .filter(|((id, _), _)| *id == p)
                .all(|(_, o)| o.as_ref().is_some_and(Outcome::is_success));
            if complete && !interrupted {
                noop::record(project);
            }
        }
        tracing::debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "state saved"
        );
        let ran_remotely = executor.ran_remotely();
        Ok(self.summary(
            &ids,
            &outcomes,
            (&restored, &ran_remotely),
            started.elapsed(),
            interrupted,
        ))
    }

    /// Passes a scheduler event on to the build's observer, with the stage's name (and
    /// where it ran, when remotely).
    fn forward(
        &self,
        ids: &[StageId],
        executor: &executor::StageExecutor,
        event: scheduler::Event,
        observer: &mut dyn FnMut(BuildEvent),
    ) {
        match event {
            scheduler::Event::Started { job, lease, reason } => observer(BuildEvent::Started {
                stage: &self.display_name(ids[job]),
                reason,
                gpu: lease.gpu,
                remote: lease.remote,
            }),
            scheduler::Event::Finished {
                job,
                outcome,
                duration,
            } => {
                let ran_remotely = executor.ran_remotely_as(job);
                observer(BuildEvent::Finished {
                    stage: &self.display_name(ids[job]),
                    outcome,
                    duration,
                    ran_remotely: ran_remotely.as_ref(),
                });
            }
        }
    }

    /// After the scheduler: the warnings of the stages that ran, of the cache (once its
    /// stores are done) and of the state files, told to the observer.
    fn tell_warnings(
        &self,
        ids: &[StageId],
        executor: &executor::StageExecutor,
        stats: &crate::cache::BuildStats,
        observer: &mut dyn FnMut(BuildEvent),
    ) {
        let cache_warnings = executor.finish_cache(stats);
        for (job, warning) in executor.take_warnings() {
            let message = format!("{}: {warning}", self.display_name(ids[job]));
            observer(BuildEvent::Warning { message: &message });
        }
        for (job, warning) in cache_warnings {
            let message = match job {
                Some(job) => format!("{}: {warning}", self.display_name(ids[job])),
                None => warning,
            };
            observer(BuildEvent::Warning { message: &message });
        }
        for project in self.projects.iter() {
            for message in project.persist_caches() {
                observer(BuildEvent::Warning { message: &message });
            }
        }
    }

    /// Asks every wanted stage whether it can run here (`availability::verdict`). A stage
    /// whose inputs are wrong fails; one that cannot run here is an error when it is a
    /// target or the build is strict, otherwise it is reported as unavailable.
    fn unavailable(
        &self,
        ids: &[StageId],
        wanted: &[bool],
        targets: &[StageId],
        options: &BuildOptions,
    ) -> Result<Verdicts, BuildError> {
        let mut unavailable = BTreeMap::new();
        let mut invalid = BTreeMap::new();
        for (job, &id) in ids.iter().enumerate() {
            if !wanted[job] {
                continue;
            }
            let reason = match availability::verdict(&self.projects[id.0], id.1) {
                Verdict::Runs => continue,
                Verdict::Invalid(error) => {
                    invalid.insert(job, error);
                    continue;
                }
                Verdict::Unavailable(reason) => reason,
            };
            let named = !options.targets.is_empty() && targets.contains(&id);
            if options.require_all || named {
                return Err(BuildError::Unavailable {
                    stage: self.display_name(id),
                    reason,
                    help: if named {
                        "it is named as a target: run it on a machine with what is missing, or build the other targets".to_string()
                    } else {
                        "every stage is required: run the build on a machine with what is missing, or let pochi report the stage as unavailable and build the rest".to_string()
                    },
                });
            }
            unavailable.insert(job, reason);
        }
        Ok((unavailable, invalid))
    }

    fn lock_all(
        &self,
        no_wait: bool,
        cancel: &AtomicBool,
        observer: &mut dyn FnMut(BuildEvent),
    ) -> Result<Vec<StateLock>, BuildError> {
        let mut order: Vec<&Project> = self.projects.iter().collect();
        order.sort_by_key(|p| p.pipeline.state_dir());
        let mut locks = Vec::new();
        for project in order {
            let name = &project.pipeline.name;
            let lock = StateLock::acquire(
                &project.pipeline.state_dir(),
                name,
                !no_wait,
                cancel,
                |holder| {
                    observer(BuildEvent::WaitingForLock {
                        pipeline: name,
                        holder,
                    });
                },
            )
            .map_err(StateError::from)?;
            // Another build may have finished while we waited: read the state afresh if so,
            // and drop temporary outputs left by builds that were killed.
            let mut state = project.state();
            if state.changed_on_disk() {
                *state = StateStore::open(&project.pipeline.state_dir())?;
            }
            let _ = crate::fsutil::remove_path(&state.temp_root());
            drop(state);
            if let Some(file_name) = pipeline_file_name(&project.pipeline) {
                crate::state::claim(&project.pipeline.state_dir(), &file_name)?;
            }
            locks.push(lock);
        }
        Ok(locks)
    }

    fn wanted(
        &self,
        targets: &[StageId],
        ids: &[StageId],
        index_of: &BTreeMap<StageId, usize>,
    ) -> Vec<bool> {
        let mut wanted = vec![false; ids.len()];
        for (p, project) in self.projects.iter().enumerate() {
            let local: Vec<usize> = targets
                .iter()
                .filter(|(tp, _)| *tp == p)
                .map(|(_, s)| *s)
                .collect();
            for (stage, yes) in project.graph.closure(&local).into_iter().enumerate() {
                if yes {
                    wanted[index_of[&(p, stage)]] = true;
                }
            }
        }
        wanted
    }

    /// The scheduler's jobs. `gpus` are the GPUs this machine offers: a stage whose kind
    /// runs without a GPU (`gpu_optional`) asks for none on a machine that has none.
    fn jobs(&self, ids: &[StageId], index_of: &BTreeMap<StageId, usize>, gpus: &[u32]) -> Vec<Job> {
        ids.iter()
            .map(|&(p, s)| {
                let project = &self.projects[p];
                let stage = &project.pipeline.stages[s];
                Job {
                    deps: project
                        .graph
                        .deps(s)
                        .iter()
                        .map(|&d| index_of[&(p, d)])
                        .collect(),
                    request: Request {
                        cpu: stage.resources.cpu,
                        memory: stage.resources.memory.0,
                        remote: project.runs_remotely(s),
                        gpu: match stage.device {
                            Device::Cpu => GpuRequest::None,
                            Device::Cuda(_)
                                if gpus.is_empty()
                                    && stage.kind.requirements().without_gpu
                                        == WithoutGpu::RunsOnCpu =>
                            {
                                GpuRequest::None
                            }
                            Device::Cuda(None) => GpuRequest::Any,
                            Device::Cuda(Some(id)) => GpuRequest::Id(id),
                        },
                    },
                    estimate_ms: project.last_duration_ms(s).unwrap_or(0),
                    tolerates_unavailable: stage.kind.requirements().tolerates_unavailable_inputs,
                }
            })
            .collect()
    }

    fn summary(
        &self,
        ids: &[StageId],
        outcomes: &[Option<Outcome>],
        (restored, ran_remotely): (
            &BTreeMap<usize, crate::cache::Origin>,
            &BTreeMap<usize, remote::RanRemotely>,
        ),
        elapsed: Duration,
        interrupted: bool,
    ) -> BuildSummary {
        let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
        let mut stages = Vec::new();
        for (job, outcome) in outcomes.iter().enumerate() {
            let Some(outcome) = outcome else { continue };
            let (p, s) = ids[job];
            let project = &self.projects[p];
            let failure = match outcome {
                Outcome::Failed(failure) => Some(failure),
                _ => None,
            };
            let (status, reason, error) = match outcome {
                Outcome::Skipped => ("skipped", None, None),
                Outcome::Ran(reason) => ("ran", Some(reason.clone()), None),
                Outcome::Restored(source) => (
                    "restored",
                    Some(format!("restored from the cache ({source})")),
                    None,
                ),
                Outcome::Failed(failure) => ("failed", None, Some(failure.message.clone())),
                Outcome::Blocked(dep) => (
                    "blocked",
                    Some(format!("`{}` did not build", self.display_name(ids[*dep]))),
                    None,
                ),
                Outcome::Stopped => (
                    "stopped",
                    Some("not started: the build stopped after another stage failed".into()),
                    None,
                ),
                Outcome::Cancelled => ("cancelled", Some("interrupted".into()), None),
                Outcome::Unavailable(reason) => ("unavailable", Some(reason.clone()), None),
                Outcome::NeedsUnavailable(dep) => (
                    "unavailable",
                    Some(format!(
                        "needs `{}`, which cannot run on this machine",
                        self.display_name(ids[*dep])
                    )),
                    None,
                ),
            };
            let restored_from = restored.get(&job).cloned();
            *counts
                .entry(count_name(status, restored_from.as_ref()))
                .or_default() += 1;
            let succeeded = outcome.is_success();
            stages.push(StageSummary {
                pipeline: project.pipeline.name.clone(),
                stage: project.pipeline.stages[s].name.clone(),
                status,
                reason,
                error,
                hint: failure.and_then(|f| f.hint.clone()),
                log: failure.and_then(|f| f.log.clone()),
                duration_ms: matches!(outcome, Outcome::Ran(_))
                    .then(|| project.last_duration_ms(s))
                    .flatten(),
                outputs: if succeeded {
                    project.recorded_outputs(s)
                } else {
                    Vec::new()
                },
                restored_from,
                ran_remotely: ran_remotely.get(&job).cloned(),
            });
        }
        let ok = !interrupted && !outcomes.iter().flatten().any(Outcome::is_failure);
        BuildSummary {
            schema_version: 2,
            ok,
            interrupted,
            duration_ms: elapsed.as_millis() as u64,
            counts,
            stages,
        }
    }
}

/// The name a stage is counted under in the summary: its status, except that restores
/// are counted per tier (`restored_local`, `restored_remote`).
fn count_name(status: &'static str, restored_from: Option<&crate::cache::Origin>) -> &'static str {
    match restored_from.map(|origin| origin.tier) {
        Some(crate::cache::Tier::Local) => "restored_local",
        Some(crate::cache::Tier::Remote) => "restored_remote",
        None => status,
    }
}

/// The cache's figures of a build: stages restored per tier, and stages that ran.
fn cache_stats(
    outcomes: &[Option<Outcome>],
    restored: &BTreeMap<usize, crate::cache::Origin>,
) -> crate::cache::BuildStats {
    let from = |tier| {
        restored
            .values()
            .filter(|origin| origin.tier == tier)
            .count() as u64
    };
    let ran = outcomes
        .iter()
        .filter(|o| matches!(o, Some(Outcome::Ran(_))))
        .count() as u64;
    crate::cache::BuildStats::new(
        from(crate::cache::Tier::Local),
        from(crate::cache::Tier::Remote),
        ran,
    )
}

/// A stage's status without running anything (`status`, `graph`, `explain`, `--dry-run`).
#[derive(Debug, Clone)]
pub struct StagePlan {
    pub id: StageId,
    pub status: PlanStatus,
    /// Why it would run (empty when up to date).
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanStatus {
    UpToDate,
    Stale,
    NeverBuilt,
    Failed,
    WaitsOnUpstream,
    Broken,
    /// Cannot run on this machine, or needs a stage that cannot: not counted as pending.
    Unavailable,
}

impl PlanStatus {
    pub fn would_run(self) -> bool {
        !matches!(self, PlanStatus::UpToDate | PlanStatus::Unavailable)
    }
}

impl Workspace {
    /// The status of every stage of `targets` (and their dependencies), in topological order
    /// per pipeline: a stage downstream of one that would run waits on it.
    pub fn plan(&self, targets: &[StageId]) -> Vec<StagePlan> {
        let mut plans = Vec::new();
        for (p, project) in self.projects.iter().enumerate() {
            let local: Vec<usize> = targets
                .iter()
                .filter(|(tp, _)| *tp == p)
                .map(|(_, s)| *s)
                .collect();
            let wanted = project.graph.closure(&local);
            let standings: Vec<Option<Standing>> = (0..wanted.len())
                .into_par_iter()
                .map(|stage| wanted[stage].then(|| standing(project, stage).0))
                .collect();
            let mut status: Vec<Option<PlanStatus>> = vec![None; wanted.len()];
            for &stage in project.graph.topological() {
                let Some(standing) = &standings[stage] else {
                    continue;
                };
                let up_to_date = *standing == Standing::UpToDate;
                if let Some((verdict, reason)) =
                    availability::in_plan(project, stage, &status).filter(|_| !up_to_date)
                {
                    status[stage] = Some(verdict);
                    plans.push(StagePlan {
                        id: (p, stage),
                        status: verdict,
                        reasons: vec![reason],
                    });
                    continue;
                }
                let upstream = project
                    .graph
                    .deps(stage)
                    .iter()
                    .find(|&&d| status[d].is_some_and(PlanStatus::would_run));
                let (stage_status, mut reasons) = classify(project, stage, standing);
                let stage_status = match upstream {
                    Some(&dep)
                        if stage_status == PlanStatus::UpToDate
                            || stage_status == PlanStatus::WaitsOnUpstream =>
                    {
                        reasons = vec![format!(
                            "upstream `{}` will run first",
                            project.pipeline.stages[dep].name
                        )];
                        PlanStatus::WaitsOnUpstream
                    }
                    _ => stage_status,
                };
                status[stage] = Some(stage_status);
                plans.push(StagePlan {
                    id: (p, stage),
                    status: stage_status,
                    reasons,
                });
            }
        }
        plans
    }
}

fn classify(project: &Project, stage: usize, standing: &Standing) -> (PlanStatus, Vec<String>) {
    let failure = project.last_failure(stage);
    match standing {
        Standing::UpToDate => (PlanStatus::UpToDate, Vec::new()),
        Standing::Broken(why) => (PlanStatus::Broken, vec![why.clone()]),
        Standing::WaitsOnUpstream(why) => (PlanStatus::WaitsOnUpstream, vec![why.clone()]),
        Standing::Stale(changes) => {
            let reasons: Vec<String> = changes.iter().map(Change::to_string).collect();
            if let Some(message) = failure {
                let first = message.lines().next().unwrap_or_default().to_string();
                (
                    PlanStatus::Failed,
                    std::iter::once(format!("last run failed: {first}"))
                        .chain(reasons)
                        .collect(),
                )
            } else if changes == &[Change::NeverBuilt] {
                (PlanStatus::NeverBuilt, reasons)
            } else {
                (PlanStatus::Stale, reasons)
            }
        }
    }
}

/// Removes the outputs and records of `targets` (every stage when empty), after waiting
/// (told to `observer`, stopped by `cancel`) for a build of the same pipeline to end.
pub fn clean(
    workspace: &Workspace,
    targets: &[StageId],
    cancel: &AtomicBool,
    observer: &mut dyn FnMut(BuildEvent),
) -> Result<Vec<PathBuf>, BuildError> {
    let _locks = workspace.lock_all(false, cancel, observer)?;
    for project in workspace.projects.iter() {
        noop::invalidate(project);
    }
    let mut removed = Vec::new();
    for &(p, s) in targets {
        let project = &workspace.projects[p];
        let stage = &project.pipeline.stages[s];
        let root =
            std::fs::canonicalize(&project.pipeline.dir).map_err(|source| StateError::Io {
                path: project.pipeline.dir.clone(),
                source,
            })?;
        for output in stage.kind.outputs() {
            let path = project.pipeline.dir.join(&output.path);
            let remove = crate::fsutil::check_confined(&root, &path)
                .and_then(|()| crate::fsutil::remove_output(&path));
            match remove {
                Ok(true) => removed.push(output.path.clone()),
                Ok(false) => {}
                Err(source) => {
                    return Err(BuildError::Clean {
                        path: output.path.clone(),
                        source,
                    });
                }
            }
            project.stats.forget(&output.path, true);
        }
        project.state().record_cleaned(&stage.name)?;
    }
    for project in workspace.projects.iter() {
        for message in project.persist_caches() {
            observer(BuildEvent::Warning { message: &message });
        }
    }
    Ok(removed)
}
