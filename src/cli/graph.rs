//! `pochi graph`: the pipeline's stages, edges, kinds, devices, status and last durations,
//! rendered by `crate::render`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};

use crate::driver::PlanStatus;
use crate::render::{self, GraphFormat, GraphView, StageStatus, StageView};
use crate::toolchain::Mode;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Dot,
    Mermaid,
    Json,
    Html,
}

#[derive(Debug, Args)]
pub(super) struct GraphArgs {
    /// The pipeline file (default: pipeline.toml).
    pipeline: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
}

pub(super) fn run(args: GraphArgs) -> miette::Result<ExitCode> {
    let paths = super::pipeline_paths(args.pipeline.as_slice());
    let workspace = super::open_workspace(&paths, Mode::Inspect, super::remote::executor_in_env())?;
    let project = &workspace.projects[0];
    let plans = workspace.plan(&workspace.stage_ids());
    let mut status = vec![StageStatus::NeverBuilt; project.pipeline.stages.len()];
    let mut problems = vec![Vec::new(); project.pipeline.stages.len()];
    for plan in &plans {
        if matches!(plan.status, PlanStatus::Broken | PlanStatus::Unavailable) {
            problems[plan.id.1] = plan.reasons.clone();
        }
        status[plan.id.1] = match plan.status {
            PlanStatus::UpToDate => StageStatus::UpToDate,
            PlanStatus::Stale => StageStatus::Stale,
            PlanStatus::NeverBuilt => StageStatus::NeverBuilt,
            PlanStatus::Failed | PlanStatus::Broken => StageStatus::Failed,
            PlanStatus::WaitsOnUpstream => StageStatus::WaitsOnUpstream,
            PlanStatus::Unavailable => StageStatus::Unavailable,
        };
    }
    let stages = project
        .pipeline
        .stages
        .iter()
        .enumerate()
        .map(|(index, stage)| StageView {
            name: stage.name.clone(),
            kind: stage.kind.kind().to_string(),
            device: stage.device.to_string(),
            status: status[index],
            problems: problems[index].clone(),
            last_duration_ms: project.last_duration_ms(index),
            deps: project
                .graph
                .deps(index)
                .iter()
                .map(|&d| project.pipeline.stages[d].name.clone())
                .collect(),
            outputs: stage
                .kind
                .outputs()
                .iter()
                .map(|o| o.path.display().to_string())
                .collect(),
            matrix_of: stage.matrix.as_ref().map(|m| m.base.clone()),
            matrix: stage.matrix.as_ref().map(super::status::matrix_json),
        })
        .collect();
    let view = GraphView {
        pipeline: project.pipeline.name.clone(),
        stages,
    };
    let format = match args.format {
        Format::Text => GraphFormat::Text,
        Format::Dot => GraphFormat::Dot,
        Format::Mermaid => GraphFormat::Mermaid,
        Format::Json => GraphFormat::Json,
        Format::Html => GraphFormat::Html,
    };
    super::output::write_stdout(&super::output::sanitize(&render::render(&view, format)));
    super::exit_without_freeing(workspace);
    Ok(ExitCode::SUCCESS)
}
