//! What `status`, `graph`, `explain` and `--dry-run` show: every stage's status without
//! running anything.

use rayon::prelude::*;
use serde::Serialize;

use super::explain::Change;
use super::workspace::stages_of;
use super::*;

/// A stage's status without running anything (`status`, `graph`, `explain`, `--dry-run`).
#[derive(Debug, Clone)]
pub(crate) struct StagePlan {
    pub id: StageId,
    pub status: PlanStatus,
    /// Why it would run (empty when up to date).
    pub reasons: Vec<String>,
    /// Its key as the inputs are now, when known (not for a stage that waits on another):
    /// what a build would look up in the output cache.
    pub key: Option<crate::fingerprint::StageKey>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum PlanStatus {
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
    pub(crate) fn would_run(self) -> bool {
        !matches!(self, PlanStatus::UpToDate | PlanStatus::Unavailable)
    }
}

impl Workspace {
    /// The status of every stage of `targets` (and their dependencies), in topological order
    /// per pipeline: a stage downstream of one that would run waits on it.
    pub(crate) fn plan(&self, targets: &[StageId]) -> Vec<StagePlan> {
        let mut plans = Vec::new();
        for (p, project) in self.projects.iter().enumerate() {
            let local = stages_of(targets, p);
            let wanted = project.graph.closure(&local);
            let mut standings: Vec<Option<(Standing, Option<_>)>> = (0..wanted.len())
                .into_par_iter()
                .map(|stage| wanted[stage].then(|| standing(project, stage)))
                .collect();
            let mut status: Vec<Option<PlanStatus>> = vec![None; wanted.len()];
            for &stage in project.graph.topological() {
                let Some((standing, key)) = standings[stage].take() else {
                    continue;
                };
                let standing = &standing;
                let up_to_date = *standing == Standing::UpToDate;
                if let Some((verdict, reason)) =
                    availability::in_plan(project, stage, &status).filter(|_| !up_to_date)
                {
                    status[stage] = Some(verdict);
                    plans.push(StagePlan {
                        id: (p, stage),
                        status: verdict,
                        reasons: vec![reason],
                        key,
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
                    key,
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
