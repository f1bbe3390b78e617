//! One build over one or more pipelines: load and check them, take their locks, plan which
//! stages are stale, hand them to the scheduler with a `StageJobs`, and summarize.
//! It neither prints nor spawns: events go to an observer, processes to a `ProcessRunner`.

//!
//! The phases, one file each: `project` (one pipeline loaded and checked), `workspace`
//! (the pipelines of a build: hosts, placement, targets, locks, `clean`), `plan` (every
//! stage's status without running anything), `run` (the build: scheduler, events,
//! warnings), `standing` (a stage's key and whether it is up to date: the one place that
//! decides it), `executor` (one stage: restore or run, verify, publish, record) with `outputs`
//! (its temporary outputs and their publication), `summary` (the result, `--json`).

mod availability;
mod cached;
pub(crate) mod explain;
mod jobs;
pub(crate) mod noop;
mod outputs;
mod plan;
pub(crate) mod portable;
mod project;
pub(crate) mod remote;
mod run;
mod standing;
mod summary;
mod temp;
#[cfg(test)]
mod tests;
mod workspace;

use std::path::PathBuf;

pub(crate) use availability::Verdict;
pub(crate) use cached::cache_key_of;
pub(crate) use plan::{PlanStatus, StagePlan};
pub(crate) use project::{Project, default_toolchain};
pub(crate) use run::{BuildEvent, BuildOptions};
pub(crate) use standing::{Standing, standing};
pub(crate) use summary::{BuildSummary, StageStatus};
pub(crate) use workspace::{StageId, Workspace, clean};

use crate::graph::GraphError;
use crate::pipeline::PipelineError;
use crate::state::StateError;

/// Why a build could not start or finish its bookkeeping.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub(crate) enum BuildError {
    #[error(transparent)]
    #[diagnostic(transparent)]
    Pipeline(#[from] PipelineError),
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
