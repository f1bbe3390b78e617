//! What the one-shot commands (`export-onnx`, `convert`, `infer`) share: a generated
//! pipeline written under `.pochi/oneshot/<hash>/` (so the same request is the same,
//! cached pipeline) and loaded with its toolchain, ready for `build::run_build`.

use std::path::PathBuf;

use toml::{Table, Value};

use super::output::failure;
use crate::build::Workspace;
use crate::toolchain::{self, Mode};

/// The text of a generated pipeline: `[pipeline]` and `[stages]`, under a header naming
/// the command that wrote it.
pub(super) fn pipeline_text(
    command: &str,
    pipeline: Table,
    stages: Table,
) -> miette::Result<String> {
    let mut root = Table::new();
    root.insert("pipeline".into(), Value::Table(pipeline));
    root.insert("stages".into(), Value::Table(stages));
    let body = toml::to_string(&root).map_err(|e| {
        failure(
            format!("cannot write the pipeline: {e}"),
            "report this as a bug",
        )
    })?;
    Ok(format!(
        "# Written by `pochi {command}`; rebuilt with the same engine as `pochi build`.\n{body}"
    ))
}

/// Writes `text` to `.pochi/oneshot/<hash of text>/pipeline.toml`; returns that directory.
pub(super) fn write(text: &str) -> miette::Result<PathBuf> {
    let dir = PathBuf::from(".pochi")
        .join("oneshot")
        .join(toolchain::short_hash(text.as_bytes()));
    let file = dir.join("pipeline.toml");
    crate::fsutil::write_atomic(&file, text.as_bytes()).map_err(|e| {
        failure(
            format!("cannot write {}: {e}", file.display()),
            "check that this directory is writable",
        )
    })?;
    Ok(dir)
}

/// Loads the pipeline written by `write`, with its toolchain (created when missing).
pub(super) fn load(dir: &std::path::Path) -> miette::Result<Workspace> {
    let mut workspace = Workspace::load(&[dir.join("pipeline.toml")])?;
    workspace.attach_toolchains(|pipeline| toolchain::for_pipeline(pipeline, Mode::Create))?;
    Ok(workspace)
}
