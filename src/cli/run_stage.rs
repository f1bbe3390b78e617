//! `pochi run-stage REQUEST ANSWER` (hidden): runs a stage that pochi does itself (the
//! `dataset` and `report` kinds) as the process of its Action, so that it runs like any
//! other stage (its own process group, log, cancellation) and could run on another machine
//! with the pochi binary as an input. The request holds the pipeline text as the build
//! parsed it and the run's `InvocationContext`; the answer is the scripts' JSON protocol:
//! `{"ok": true, "warnings": [...]}` or `{"ok": false, "error": ..., "hint": ...}`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde::Deserialize;
use serde_json::json;

use crate::kinds::request::RUN_STAGE_PROTOCOL;
use crate::kinds::{InvocationContext, StageError};

#[derive(Debug, clap::Args)]
pub(super) struct RunStageArgs {
    /// The toolchain's interpreter (on the machine that runs the stage).
    #[arg(long, value_name = "PATH")]
    python: PathBuf,
    /// The request file pochi wrote for the stage.
    request: PathBuf,
    /// Where to write the answer.
    answer: PathBuf,
}

#[derive(Debug, Deserialize)]
struct Request {
    protocol: u32,
    pipeline_text: String,
    context: InvocationContext,
}

pub(super) fn run(args: RunStageArgs) -> miette::Result<ExitCode> {
    let cancel = super::signals::cancel_flag();
    let (answer, code) = match run_request(&args.request, &args.python, &cancel) {
        Ok(warnings) => (
            json!({ "ok": true, "warnings": warnings }),
            ExitCode::SUCCESS,
        ),
        Err(error) => (
            json!({ "ok": false, "kind": "stage", "error": error.message, "hint": error.hint }),
            ExitCode::FAILURE,
        ),
    };
    crate::fsutil::write_atomic(&args.answer, answer.to_string().as_bytes()).map_err(|e| {
        super::output::failure(
            format!("cannot write the answer {}: {e}", args.answer.display()),
            "check that the stage's temporary directory is writable",
        )
    })?;
    if super::signals::was_interrupted() {
        return Ok(super::signals::interrupted_exit_code());
    }
    Ok(code)
}

/// Parses the request's pipeline, finds the stage and runs it.
fn run_request(
    path: &Path,
    python: &Path,
    cancel: &std::sync::atomic::AtomicBool,
) -> Result<Vec<String>, StageError> {
    let text = std::fs::read(path)
        .map_err(|e| StageError::new(format!("cannot read {}: {e}", path.display())))?;
    let request: Request = serde_json::from_slice(&text)
        .map_err(|e| StageError::new(format!("{} is not a stage request: {e}", path.display())))?;
    if request.protocol != RUN_STAGE_PROTOCOL {
        return Err(StageError::new(format!(
            "the request's protocol {} is not {RUN_STAGE_PROTOCOL}",
            request.protocol
        ))
        .with_hint("the request was written by another version of pochi"));
    }
    let mut context = request.context;
    on_this_machine(&mut context, python)?;
    let pipeline = crate::pipeline::parse_pipeline(
        &context.pipeline_file,
        request.pipeline_text,
        crate::kinds::KINDS,
    )
    .map_err(|e| StageError::new(format!("the pipeline does not parse: {e}")))?;
    context.pipeline_text = std::sync::Arc::clone(&pipeline.source.text);
    let stage = pipeline
        .stages
        .iter()
        .find(|stage| stage.name == context.stage)
        .ok_or_else(|| StageError::new(format!("no stage `{}` in the pipeline", context.stage)))?;
    stage.kind.run_in_process(&context, cancel)
}

/// Fills in what the request leaves out because it is this machine's
/// (`kinds::request::run_stage_request`): the pipeline directory (the working directory),
/// this binary, the interpreter and its site directories, and the GPU the stage holds
/// (the one CUDA_VISIBLE_DEVICES names, as the build or the worker set it).
fn on_this_machine(context: &mut InvocationContext, python: &Path) -> Result<(), StageError> {
    context.dir = std::env::current_dir()
        .map_err(|e| StageError::new(format!("cannot read the working directory: {e}")))?;
    context.facts.pochi = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("pochi"));
    context.facts.toolchain.python = python.to_path_buf();
    if let Some(facts) = &mut context.facts.python
        && let Some(found) = crate::toolchain::python_facts(python)
    {
        facts.site_dirs = found.site_dirs;
    }
    context.gpu = std::env::var("CUDA_VISIBLE_DEVICES")
        .ok()
        .and_then(|visible| visible.split(',').next()?.trim().parse().ok());
    Ok(())
}
