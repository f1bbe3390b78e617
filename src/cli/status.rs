//! `pochi status`: each stage's status and why, without running anything; exit 1 when
//! something would run, so CI can use it as a check.

use super::output::{note, show};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::output::paint;
use crate::driver::{PlanStatus, Workspace};
use crate::toolchain::Mode;

#[derive(Debug, Args)]
pub(super) struct StatusArgs {
    /// Pipeline files (default: pipeline.toml).
    pipelines: Vec<PathBuf>,
    /// Print JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub(super) fn label(status: PlanStatus) -> &'static str {
    match status {
        PlanStatus::UpToDate => "up to date",
        PlanStatus::Stale => "stale",
        PlanStatus::NeverBuilt => "never built",
        PlanStatus::Failed => "failed",
        PlanStatus::WaitsOnUpstream => "waits on upstream",
        PlanStatus::Broken => "broken",
        PlanStatus::Unavailable => "unavailable here",
    }
}

fn color(status: PlanStatus) -> &'static str {
    match status {
        PlanStatus::UpToDate => "32",
        PlanStatus::Failed | PlanStatus::Broken => "31",
        _ => "33",
    }
}

/// One stage of `status --json`; a matrix variant also names the stage it was declared
/// as (`matrix_of`) and its values (`matrix`).
fn stage_json(workspace: &Workspace, plan: &crate::driver::StagePlan) -> serde_json::Value {
    let mut stage = serde_json::json!({
        "stage": workspace.display_name(plan.id),
        "status": plan.status,
        "reasons": plan.reasons,
    });
    let (p, s) = plan.id;
    if let Some(matrix) = &workspace.projects[p].pipeline.stages[s].matrix {
        stage["matrix_of"] = matrix.base.clone().into();
        stage["matrix"] = matrix_json(matrix);
    }
    stage
}

/// A variant's values as a JSON object (keys sorted, as every JSON map pochi writes).
pub(super) fn matrix_json(matrix: &crate::pipeline::matrix::MatrixOf) -> serde_json::Value {
    serde_json::Value::Object(
        matrix
            .values
            .iter()
            .map(|(key, value)| (key.clone(), value.to_json()))
            .collect(),
    )
}

pub(super) fn run(args: StatusArgs) -> miette::Result<ExitCode> {
    let paths = super::pipeline_paths(&args.pipelines);
    let workspace = super::open_workspace(&paths, Mode::Inspect, super::remote::executor_in_env())?;
    let plans = workspace.plan(&workspace.stage_ids());
    let mut sorted = plans.clone();
    sorted.sort_by_key(|plan| workspace.display_name(plan.id));
    if args.json {
        let stages: Vec<serde_json::Value> = sorted
            .iter()
            .map(|plan| stage_json(&workspace, plan))
            .collect();
        show!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "schema_version": 1, "stages": stages })
            )
            .unwrap_or_default()
        );
    } else {
        let width = sorted
            .iter()
            .map(|p| workspace.display_name(p.id).len())
            .max()
            .unwrap_or(0);
        for plan in &sorted {
            let name = workspace.display_name(plan.id);
            let status = format!("{:<17}", label(plan.status));
            let why = plan
                .reasons
                .first()
                .map(|r| format!("  {r}"))
                .unwrap_or_default();
            show!(
                "{name:<width$}  {}{}",
                paint(&status, color(plan.status)).trim_end(),
                why
            );
        }
    }
    super::exit_without_freeing(workspace);
    let pending = plans.iter().filter(|p| p.status.would_run()).count();
    let unavailable = plans
        .iter()
        .filter(|p| p.status == PlanStatus::Unavailable)
        .count();
    if pending == 0 {
        let elsewhere = if unavailable > 0 {
            format!(" ({unavailable} cannot run on this machine)")
        } else {
            String::new()
        };
        note!(
            "all {} stages that can run here are up to date{elsewhere}",
            plans.len() - unavailable
        );
        Ok(ExitCode::SUCCESS)
    } else {
        note!("{pending} of {} stages would run", plans.len());
        Ok(ExitCode::from(1))
    }
}
