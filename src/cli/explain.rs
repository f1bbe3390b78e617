//! `pochi explain`: the exact reasons a stage would run, against its last successful run.

use super::output::show;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::driver::{PlanStatus, Workspace};
use crate::toolchain::Mode;

#[derive(Debug, Args)]
#[command(override_usage = "pochi explain [PIPELINE] STAGE")]
pub struct ExplainArgs {
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

pub fn run(args: ExplainArgs) -> miette::Result<ExitCode> {
    let (pipelines, stage) = args.split();
    let mut workspace = Workspace::load(&pipelines, crate::kinds::KINDS)?;
    super::attach_host(&mut workspace, Mode::Inspect)?;
    let targets = workspace.resolve_targets(std::slice::from_ref(&stage))?;
    let plans = workspace.plan(&targets);
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
        show!("{name} is up to date (fingerprint {fingerprint}); nothing would run");
        return Ok(ExitCode::SUCCESS);
    }
    if plan.status == PlanStatus::Unavailable {
        show!("{name} does not run on this machine:");
    } else {
        show!("{name} would run ({}):", super::status::label(plan.status));
    }
    for reason in &plan.reasons {
        show!("  - {reason}");
    }
    Ok(ExitCode::SUCCESS)
}
