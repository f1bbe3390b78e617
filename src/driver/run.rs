//! Running a build: the options, the events it reports, the scheduler over the stages
//! with the `StageJobs`, and what it tells after.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use rayon::prelude::*;

use super::workspace::Verdicts;
use super::*;
use crate::machine::Hardware;
use crate::process::ProcessRunner;
use crate::scheduler::{self, Check, Job, Outcome};

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

/// Checks every wanted stage before the scheduler starts (in parallel) and tells the
/// observer how many are out of date and how many may follow them.
fn precheck(
    stage_jobs: &jobs::StageJobs,
    jobs: &[Job],
    wanted: &[bool],
    observer: &mut dyn FnMut(BuildEvent),
) -> Vec<Option<Check>> {
    let prechecked: Vec<Option<Check>> = (0..jobs.len())
        .into_par_iter()
        .map(|job| wanted[job].then(|| scheduler::JobHandler::check(stage_jobs, job)))
        .collect();
    let cannot_run = downstream(jobs, stage_jobs.unavailable.keys().copied());
    let out_of_date: Vec<usize> = (0..jobs.len())
        .filter(|&job| {
            matches!(prechecked[job], Some(Check::Run(_) | Check::Restorable(_)))
                && !cannot_run[job]
        })
        .collect();
    let affected = downstream(jobs, out_of_date.iter().copied());
    let may_follow = (0..jobs.len())
        .filter(|&job| affected[job] && wanted[job] && !cannot_run[job])
        .count()
        - out_of_date.len();
    observer(BuildEvent::Planned {
        stages: wanted.iter().filter(|w| **w).count(),
        to_run: out_of_date.len(),
        may_follow,
    });
    prechecked
}

/// How to run a build.
#[derive(Debug, Clone, Default)]
pub(crate) struct BuildOptions {
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
    /// How stages' Actions are made portable, in a build with a remote server (a shared
    /// cache or an executor).
    pub portable: Option<Arc<super::portable::PortableActions>>,
}

/// What a build reports while it runs.
#[derive(Debug)]
pub(crate) enum BuildEvent<'a> {
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

impl Workspace {
    /// Runs the build; returns its summary (also when stages failed).
    pub(crate) fn build(
        &self,
        options: &BuildOptions,
        machine: &Hardware,
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
        let mut stage_jobs = jobs::StageJobs::new(
            Arc::clone(&self.projects),
            ids.clone(),
            runner,
            Arc::clone(&cancel),
        )
        .with_cache(options.cache.clone())
        .with_remote(options.remote.clone(), options.portable.clone());
        stage_jobs.unavailable = unavailable;
        stage_jobs.invalid = invalid;
        let stage_jobs = Arc::new(stage_jobs);
        let prechecked = precheck(&stage_jobs, &jobs, &wanted, observer);
        tracing::debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "stages checked"
        );
        let scheduler_options = scheduler::Options {
            keep_going: options.keep_going,
            cancel: Arc::clone(&cancel),
        };
        let outcomes = scheduler::run(
            &jobs,
            &wanted,
            prechecked,
            capacity,
            Arc::clone(&stage_jobs) as Arc<dyn scheduler::JobHandler>,
            &scheduler_options,
            &mut |event| self.forward(&ids, &stage_jobs, event, observer),
        );
        tracing::debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "scheduler finished"
        );
        Ok(self.finish_build(&ids, &stage_jobs, &outcomes, started, &cancel, observer))
    }

    /// After the scheduler: warnings told, the no-op stamp of every complete pipeline
    /// recorded, the summary made.
    fn finish_build(
        &self,
        ids: &[StageId],
        stage_jobs: &jobs::StageJobs,
        outcomes: &[Option<Outcome>],
        started: Instant,
        cancel: &AtomicBool,
        observer: &mut dyn FnMut(BuildEvent),
    ) -> BuildSummary {
        let restored = stage_jobs.restored();
        self.tell_warnings(ids, stage_jobs, &cache_stats(outcomes, &restored), observer);
        let interrupted = cancel.load(std::sync::atomic::Ordering::Relaxed);
        for (p, project) in self.projects.iter().enumerate() {
            let complete = ids
                .iter()
                .zip(outcomes)
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
        let ran_remotely = stage_jobs.ran_remotely();
        self.summary(
            ids,
            outcomes,
            (&restored, &ran_remotely),
            started.elapsed(),
            interrupted,
        )
    }

    /// Passes a scheduler event on to the build's observer, with the stage's name (and
    /// where it ran, when remotely).
    fn forward(
        &self,
        ids: &[StageId],
        stage_jobs: &jobs::StageJobs,
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
                let ran_remotely = stage_jobs.ran_remotely_as(job);
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
        stage_jobs: &jobs::StageJobs,
        stats: &crate::cache::BuildStats,
        observer: &mut dyn FnMut(BuildEvent),
    ) {
        let cache_warnings = stage_jobs.finish_cache(stats);
        for (job, warning) in stage_jobs.take_warnings() {
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
