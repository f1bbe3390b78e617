//! The pipelines of one build together: loaded, given their hosts, placed (here or on the
//! remote executor), their targets resolved, their locks taken, and `pochi clean`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use super::project::{check_state_owner, pipeline_file_name};
use super::*;
use crate::facts::MachineFacts;
use crate::graph::GraphError;
use crate::machine::Hardware;
use crate::pipeline::kind::{Registry, WithoutGpu};
use crate::pipeline::{Device, Pipeline, suggest};
use crate::scheduler::{Capacity, GpuRequest, Job, Request};
use crate::state::{StateError, StateLock, StateStore};

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
    (p, stage): (usize, &crate::pipeline::Stage),
    output: &crate::pipeline::NamedOutput,
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

/// Several pipelines built together: one scheduler, one set of resources.
#[derive(Debug)]
pub(crate) struct Workspace {
    pub projects: Arc<Vec<Project>>,
}

/// The jobs that cannot run here (with what is missing) and those whose inputs are wrong
/// for them (with the error).
pub(super) type Verdicts = (
    BTreeMap<usize, String>,
    BTreeMap<usize, crate::pipeline::kind::StageError>,
);

/// A stage of the workspace: (project index, stage index).
pub(crate) type StageId = (usize, usize);

/// The stages of `targets` in project `project`.
pub(super) fn stages_of(targets: &[StageId], project: usize) -> Vec<usize> {
    targets
        .iter()
        .filter(|(p, _)| *p == project)
        .map(|(_, stage)| *stage)
        .collect()
}

impl Workspace {
    /// `kinds`: the stage kinds the pipelines may use (`pochi::kinds::KINDS`).
    pub(crate) fn load(paths: &[PathBuf], kinds: Registry) -> Result<Workspace, BuildError> {
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
    pub(crate) fn attach_facts<E>(
        &mut self,
        mut host_for: impl FnMut(&Project) -> Result<MachineFacts, E>,
    ) -> Result<(), E> {
        let Some(projects) = Arc::get_mut(&mut self.projects) else {
            return Ok(());
        };
        for project in projects.iter_mut() {
            project.facts = host_for(project)?;
        }
        Ok(())
    }

    /// Decides which stages run on the remote executor (`configured`: one is). A stage
    /// with `executor = "remote"` that cannot run there is an error; without an executor
    /// it is unavailable in this build.
    pub(crate) fn place(&mut self, configured: bool) -> Result<(), BuildError> {
        let several = self.projects.len() > 1;
        let Some(projects) = Arc::get_mut(&mut self.projects) else {
            return Ok(());
        };
        for project in projects.iter_mut() {
            let (mut remote, mut nowhere) = (BTreeSet::new(), BTreeMap::new());
            for stage in 0..project.pipeline.stages.len() {
                match remote::place(project, stage, configured) {
                    remote::Placed::Here => {}
                    remote::Placed::Remotely => {
                        remote.insert(stage);
                    }
                    remote::Placed::Nowhere(why) => {
                        nowhere.insert(stage, why);
                    }
                    remote::Placed::Refused(reason) => {
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
    pub(crate) fn display_name(&self, (project, stage): StageId) -> String {
        let pipeline = &self.projects[project].pipeline;
        if self.projects.len() == 1 {
            pipeline.stages[stage].name.clone()
        } else {
            format!("{}/{}", pipeline.name, pipeline.stages[stage].name)
        }
    }

    /// Every stage, pipeline by pipeline.
    pub(crate) fn stage_ids(&self) -> Vec<StageId> {
        self.projects
            .iter()
            .enumerate()
            .flat_map(|(p, project)| (0..project.pipeline.stages.len()).map(move |s| (p, s)))
            .collect()
    }

    /// Resolves `--target` names (`stage` or `pipeline/stage`; a matrix stage's name selects
    /// every variant); none means every stage.
    pub(crate) fn resolve_targets(&self, targets: &[String]) -> Result<Vec<StageId>, BuildError> {
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
    pub(crate) fn capacity(&self, machine: &Hardware, jobs: Option<u32>) -> Capacity {
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
}

/// A pipeline a build holds: the marker of its temporary root (removed first), then its
/// lock.
#[derive(Debug)]
pub(super) struct Held {
    _in_use: super::temp::InUse,
    _lock: StateLock,
}

impl Workspace {
    pub(super) fn lock_all(
        &self,
        no_wait: bool,
        cancel: &AtomicBool,
        observer: &mut dyn FnMut(BuildEvent),
    ) -> Result<Vec<Held>, BuildError> {
        let mut order: Vec<&Project> = self.projects.iter().collect();
        order.sort_by_key(|p| p.pipeline.state_dir());
        let mut locks = Vec::new();
        for project in order {
            let name = &project.pipeline.name;
            // Nothing of the state is written through a link (a committed `.pochi/`
            // pointing elsewhere would put it outside the project).
            let state_dir = project.pipeline.state_dir();
            crate::fsutil::real_dirs(&project.pipeline.dir, &state_dir).map_err(|source| {
                StateError::Io {
                    path: state_dir.clone(),
                    source,
                }
            })?;
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
            let stages: Vec<&str> = project
                .pipeline
                .stages
                .iter()
                .map(|s| s.name.as_str())
                .collect();
            let in_use = super::temp::tidy(&state.temp_root(), &stages)
                .unwrap_or_else(|_| super::temp::InUse::none());
            drop(state);
            if let Some(file_name) = pipeline_file_name(&project.pipeline) {
                crate::state::claim(&project.pipeline.state_dir(), &file_name)?;
            }
            locks.push(Held {
                _in_use: in_use,
                _lock: lock,
            });
        }
        Ok(locks)
    }

    pub(super) fn wanted(
        &self,
        targets: &[StageId],
        ids: &[StageId],
        index_of: &BTreeMap<StageId, usize>,
    ) -> Vec<bool> {
        let mut wanted = vec![false; ids.len()];
        for (p, project) in self.projects.iter().enumerate() {
            let local = stages_of(targets, p);
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
    pub(super) fn jobs(
        &self,
        ids: &[StageId],
        index_of: &BTreeMap<StageId, usize>,
        gpus: &[u32],
    ) -> Vec<Job> {
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
}

/// Removes the outputs and records of `targets` (every stage when empty), after waiting
/// (told to `observer`, stopped by `cancel`) for a build of the same pipeline to end.
pub(crate) fn clean(
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
