//! `pochi explain`: the exact reasons a stage would run, against its last successful run.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::build::{PlanStatus, Workspace};
use crate::toolchain::{self, Mode};

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The pipeline file.
    pipeline: PathBuf,
    /// The stage to explain.
    stage: String,
}

pub fn run(args: ExplainArgs) -> miette::Result<ExitCode> {
    let mut workspace = Workspace::load(std::slice::from_ref(&args.pipeline))?;
    workspace.attach_toolchains(|pipeline| toolchain::for_pipeline(pipeline, Mode::Inspect))?;
    let targets = workspace.resolve_targets(std::slice::from_ref(&args.stage))?;
    let plans = workspace.plan(&targets, &super::offered_gpus(&workspace));
    let Some(plan) = plans.iter().find(|plan| targets.contains(&plan.id)) else {
        return Ok(ExitCode::SUCCESS);
    };
    let (p, s) = plan.id;
    let project = &workspace.projects[p];
    let name = &project.pipeline.stages[s].name;
    if plan.status == PlanStatus::UpToDate {
        let state = project.state.lock().unwrap_or_else(|e| e.into_inner());
        let fingerprint = state
            .built(name)
            .map(|r| r.fingerprint.chars().take(16).collect::<String>())
            .unwrap_or_default();
        println!("{name} is up to date (fingerprint {fingerprint}); nothing would run");
        return Ok(ExitCode::SUCCESS);
    }
    if plan.status == PlanStatus::Unavailable {
        println!("{name} does not run on this machine:");
    } else {
        println!("{name} would run ({}):", super::status::label(plan.status));
    }
    for reason in &plan.reasons {
        println!("  - {reason}");
    }
    Ok(ExitCode::SUCCESS)
}
