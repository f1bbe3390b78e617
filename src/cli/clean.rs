//! `pochi clean`: removes stages' published outputs and forgets their records.

use super::output::{note, say};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::driver::{BuildEvent, Workspace};

#[derive(Debug, Args)]
pub(super) struct CleanArgs {
    /// Pipeline files (default: pipeline.toml).
    pipelines: Vec<PathBuf>,
    /// Clean only these stages (default: all).
    #[arg(short, long = "target", value_name = "STAGE")]
    targets: Vec<String>,
}

pub(super) fn run(args: CleanArgs) -> miette::Result<ExitCode> {
    let workspace = Workspace::load(&super::pipeline_paths(&args.pipelines), crate::kinds::KINDS)?;
    let targets = workspace.resolve_targets(&args.targets)?;
    let cancel = super::signals::cancel_flag();
    let removed = crate::driver::clean(&workspace, &targets, &cancel, &mut |event| match event {
        BuildEvent::WaitingForLock { pipeline, holder } => say!(
            "waiting: another pochi (pid {holder}) is building `{pipeline}`; the clean starts when it ends (Ctrl-C to stop waiting)"
        ),
        BuildEvent::Warning { message } => say!("warning: {message}"),
        _ => {}
    })?;
    for path in &removed {
        say!("removed {}", path.display());
    }
    note!(
        "cleaned {} stages, removed {} outputs",
        targets.len(),
        removed.len()
    );
    Ok(ExitCode::SUCCESS)
}
