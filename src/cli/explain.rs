//! `pochi explain`: the exact reasons a stage would run, against its last successful run.

use super::output::show;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::driver::{PlanStatus, Workspace};
use crate::toolchain::Mode;

#[derive(Debug, Args)]
#[command(override_usage = "pochi explain [PIPELINE] STAGE")]
pub(super) struct ExplainArgs {
    /// `[PIPELINE] STAGE`: the pipeline file (default: pipeline.toml) and the stage to
    /// explain.
    #[arg(value_name = "ARGS", num_args = 1..=2, required = true)]
    words: Vec<String>,
}

impl ExplainArgs {
    /// The pipeline file and the stage.
    fn split(&self) -> (Vec<PathBuf>, String) {
        match self.words.as_slice() {
            [pipeline, stage] => (vec![PathBuf::from(pipeline)], stage.clone()),
            [stage] => (super::pipeline_paths(&[]), stage.clone()),
            _ => (super::pipeline_paths(&[]), String::new()),
        }
    }
}

pub(super) fn run(args: ExplainArgs) -> miette::Result<ExitCode> {
    let (pipelines, stage) = args.split();
    let workspace =
        super::open_workspace(&pipelines, Mode::Inspect, super::remote::executor_in_env())?;
    let targets = workspace.resolve_targets(std::slice::from_ref(&stage))?;
    let plans = workspace.plan(&targets);
    // A matrix stage's name explains each of its variants, in name order.
    let mut explained: Vec<&crate::driver::StagePlan> = plans
        .iter()
        .filter(|plan| targets.contains(&plan.id))
        .collect();
    explained.sort_by_key(|plan| workspace.display_name(plan.id));
    for plan in explained {
        explain_one(&workspace, plan);
    }
    Ok(ExitCode::SUCCESS)
}

fn explain_one(workspace: &Workspace, plan: &crate::driver::StagePlan) {
    let (p, s) = plan.id;
    let project = &workspace.projects[p];
    let name = &project.pipeline.stages[s].name;
    if plan.status == PlanStatus::UpToDate {
        let state = project.state.lock().unwrap_or_else(|e| e.into_inner());
        let record = state.built(name);
        let fingerprint = record
            .map(|r| r.fingerprint.chars().take(16).collect::<String>())
            .unwrap_or_default();
        match record.and_then(|r| r.restored_from.as_deref()) {
            Some(from) => show!(
                "{name} is up to date (fingerprint {fingerprint}): its last build restored it from cache ({from}); nothing would run"
            ),
            None => show!("{name} is up to date (fingerprint {fingerprint}); nothing would run"),
        }
        return;
    }
    if plan.status == PlanStatus::Unavailable {
        show!("{name} does not run on this machine:");
    } else {
        show!("{name} would run ({}):", super::status::label(plan.status));
    }
    for reason in &plan.reasons {
        show!("  - {reason}");
    }
    let cache = crate::cache::LocalCache::from_env().ok();
    if let Some(origin) =
        cache.and_then(|cache| super::cache::restorable_from(&cache, project, plan))
    {
        show!("  it would be restored from cache ({origin}) instead of run");
    }
}
