//! The machine-readable result of a build (`--json`): each stage's status, reason, error
//! and outputs, and the counts.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use super::*;
use crate::scheduler::Outcome;
use crate::state::OutputRecord;

/// What became of a stage in a build (`status` in `--json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum StageStatus {
    Ran,
    Restored,
    /// Up to date.
    Skipped,
    Failed,
    /// A stage it needs did not build.
    Blocked,
    /// Not started: the build stopped after another stage failed.
    Stopped,
    /// Interrupted.
    Cancelled,
    /// Cannot run on this machine (or needs a stage that cannot).
    Unavailable,
}

impl StageStatus {
    /// The name `--json` and the counts use.
    pub(crate) fn name(self) -> &'static str {
        match self {
            StageStatus::Ran => "ran",
            StageStatus::Restored => "restored",
            StageStatus::Skipped => "skipped",
            StageStatus::Failed => "failed",
            StageStatus::Blocked => "blocked",
            StageStatus::Stopped => "stopped",
            StageStatus::Cancelled => "cancelled",
            StageStatus::Unavailable => "unavailable",
        }
    }
}

/// The machine-readable result of a build (`--json`).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct BuildSummary {
    pub schema_version: u32,
    pub ok: bool,
    pub interrupted: bool,
    pub duration_ms: u64,
    pub counts: BTreeMap<&'static str, usize>,
    pub stages: Vec<StageSummary>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct StageSummary {
    pub pipeline: String,
    pub stage: String,
    pub status: StageStatus,
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

impl Workspace {
    pub(super) fn summary(
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
            let (status, reason, error) = self.status_of(outcome, ids);
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

    /// A stage's status, with why (`reason`) or what went wrong (`error`).
    fn status_of(
        &self,
        outcome: &Outcome,
        ids: &[StageId],
    ) -> (StageStatus, Option<String>, Option<String>) {
        match outcome {
            Outcome::Skipped => (StageStatus::Skipped, None, None),
            Outcome::Ran(reason) => (StageStatus::Ran, Some(reason.clone()), None),
            Outcome::Restored(source) => (
                StageStatus::Restored,
                Some(format!("restored from the cache ({source})")),
                None,
            ),
            Outcome::Failed(failure) => (StageStatus::Failed, None, Some(failure.message.clone())),
            Outcome::Blocked(dep) => (
                StageStatus::Blocked,
                Some(format!("`{}` did not build", self.display_name(ids[*dep]))),
                None,
            ),
            Outcome::Stopped => (
                StageStatus::Stopped,
                Some("not started: the build stopped after another stage failed".into()),
                None,
            ),
            Outcome::Cancelled => (StageStatus::Cancelled, Some("interrupted".into()), None),
            Outcome::Unavailable(reason) => (StageStatus::Unavailable, Some(reason.clone()), None),
            Outcome::NeedsUnavailable(dep) => (
                StageStatus::Unavailable,
                Some(format!(
                    "needs `{}`, which cannot run on this machine",
                    self.display_name(ids[*dep])
                )),
                None,
            ),
        }
    }
}

/// The name a stage is counted under in the summary: its status, except that restores
/// are counted per tier (`restored_local`, `restored_remote`).
fn count_name(status: StageStatus, restored_from: Option<&crate::cache::Origin>) -> &'static str {
    match restored_from.map(|origin| origin.tier) {
        Some(crate::cache::Tier::Local) => "restored_local",
        Some(crate::cache::Tier::Remote) => "restored_remote",
        None => status.name(),
    }
}
