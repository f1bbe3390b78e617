//! `pochi clean`: removes stages' published outputs and forgets their records.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::build::Workspace;

#[derive(Debug, Args)]
pub struct CleanArgs {
    /// Pipeline files (default: pipeline.toml).
    pipelines: Vec<PathBuf>,
    /// Clean only these stages (default: all).
    #[arg(short, long = "target", value_name = "STAGE")]
    targets: Vec<String>,
}

pub fn run(args: CleanArgs) -> miette::Result<ExitCode> {
    let workspace = Workspace::load(&super::pipeline_paths(&args.pipelines))?;
    let targets = workspace.resolve_targets(&args.targets)?;
    let removed = crate::build::clean(&workspace, &targets)?;
    for path in &removed {
        eprintln!("removed {}", path.display());
    }
    eprintln!(
        "pochi: cleaned {} stages, removed {} outputs",
        targets.len(),
        removed.len()
    );
    Ok(ExitCode::SUCCESS)
}
