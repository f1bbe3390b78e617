//! `pochi schema`: the pipeline file's JSON Schema on stdout.

use super::output::show;
use std::process::ExitCode;

pub(super) fn run() -> miette::Result<ExitCode> {
    let schema = crate::pipeline::pipeline_schema(crate::kinds::KINDS);
    show!(
        "{}",
        serde_json::to_string_pretty(&schema).unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}
