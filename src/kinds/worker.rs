//! What the Python-worker kinds (export, quantize, engine, and the report for TensorRT
//! engines) share: starting a worker, reading its JSON answer and turning a failed one into
//! a message (error, hint, traceback).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use toml::Spanned;

use super::{Action, Invocation, InvocationContext};
use crate::spec::parse_api::Parser;
use crate::spec::{NamedOutput, SpanError};
use crate::toolchain::workers::Worker;

/// A scratch file of this run (request, answer), in the temporary output directory next to
/// the manifest, so it is discarded with the run's other temporary files.
pub fn scratch_file(context: &InvocationContext, name: &str) -> PathBuf {
    let manifest = context.outputs.get("manifest").cloned().unwrap_or_default();
    manifest
        .parent()
        .map(|dir| dir.join(name))
        .unwrap_or_else(|| PathBuf::from(name))
}

/// The process of a worker kind: `python -I WORKER REQUEST RESULT`, unbuffered, plus `env`.
pub fn run_worker(
    context: &InvocationContext,
    worker: &Worker,
    request: String,
    result: &Path,
    env: BTreeMap<String, String>,
) -> Action {
    let mut env = env;
    env.insert("PYTHONUNBUFFERED".to_string(), "1".to_string());
    Action::Process(Invocation {
        program: context.python.to_string_lossy().into_owned(),
        args: vec![
            "-I".into(),
            worker.path().to_string_lossy().into_owned(),
            request,
            result.to_string_lossy().into_owned(),
        ],
        env,
    })
}

/// Runs a worker from in-process work (`python -I WORKER ARGS...`) in the pipeline
/// directory, on the stage's GPU, logging to `log`; stopped when `cancel` is set. Returns
/// the worker's `ok` answer at `result`, or the message for a failure.
pub fn run_worker_now(
    context: &InvocationContext,
    worker: &Worker,
    args: &[&Path],
    result: &Path,
    log: PathBuf,
    cancel: &std::sync::atomic::AtomicBool,
) -> Result<Value, String> {
    use crate::build::process::{ProcessResult, ProcessSpec};
    let mut command_args = vec![
        "-I".to_string(),
        worker.path().to_string_lossy().into_owned(),
    ];
    command_args.extend(args.iter().map(|a| a.to_string_lossy().into_owned()));
    let env = BTreeMap::from([
        ("PYTHONUNBUFFERED".to_string(), "1".to_string()),
        (
            "CUDA_VISIBLE_DEVICES".to_string(),
            context.gpu.map(|g| g.to_string()).unwrap_or_default(),
        ),
    ]);
    let spec = ProcessSpec {
        program: context.python.to_string_lossy().into_owned(),
        args: command_args,
        env,
        cwd: context.dir.to_path_buf(),
        log: log.clone(),
    };
    let name = worker.name.trim_end_matches(".py");
    let shown_log = log
        .strip_prefix(context.dir)
        .unwrap_or(&log)
        .display()
        .to_string();
    match crate::runner::run_borrowing_cancel(&spec, cancel) {
        ProcessResult::Success | ProcessResult::Failed { .. } if read_json(result).is_some() => {
            check_answer(name, result).map_err(|e| format!("{e}\n(log: {shown_log})"))?;
            read_json(result).ok_or_else(|| format!("the {name} worker's answer vanished"))
        }
        ProcessResult::Success => Err(format!(
            "the {name} worker exited without an answer (log: {shown_log})"
        )),
        ProcessResult::Failed {
            status,
            stderr_tail,
        } => Err(format!(
            "the {name} worker ended with {status} and no answer (log: {shown_log}){}",
            stderr_tail
                .iter()
                .map(|line| format!("\n  {line}"))
                .collect::<String>()
        )),
        ProcessResult::Cancelled => Err("interrupted".into()),
        ProcessResult::SpawnError(e) => {
            Err(format!("cannot start {}: {e}", context.python.display()))
        }
    }
}

/// A worker's JSON answer, if the file exists and parses.
pub fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// The message for a failed answer: the error, its hint, and the Python traceback when the
/// worker hit an exception.
pub fn describe_failure(worker: &str, result: &Value) -> String {
    let text = |key: &str| result.get(key).and_then(Value::as_str).unwrap_or_default();
    let mut message = text("error").to_string();
    if message.is_empty() {
        message = format!("the {worker} worker failed without a message");
    }
    if !text("hint").is_empty() {
        message.push_str(&format!("\nhint: {}", text("hint")));
    }
    if text("kind") == "exception" && !text("traceback").is_empty() {
        message.push_str("\nPython traceback:");
        for line in text("traceback").lines() {
            message.push_str("\n  ");
            message.push_str(line);
        }
    }
    message
}

/// `verify` for a worker kind: the answer at `path` must exist and say `ok`.
pub fn check_answer(worker: &str, path: &Path) -> Result<(), String> {
    let Some(result) = read_json(path) else {
        return Err(format!(
            "the {worker} worker exited without an answer ({} is missing or not JSON)",
            path.display()
        ));
    };
    if result.get("ok").and_then(Value::as_bool) != Some(true) {
        return Err(describe_failure(worker, &result));
    }
    Ok(())
}

/// A worker kind's outputs: the primary one under `key` (the `output` key, else
/// `{build_dir}/<stage>.<extension>`) and its `<stem>.manifest.json` beside it. `span` is
/// where errors about the default path point (the stage table).
pub fn primary_and_manifest(
    parser: &Parser,
    span: std::ops::Range<usize>,
    output: Option<&Spanned<String>>,
    key: &str,
    extension: &str,
) -> Result<Vec<NamedOutput>, SpanError> {
    let primary = match output {
        Some(output) => output.clone(),
        None => {
            let path = parser
                .build_dir
                .join(format!("{}.{extension}", parser.stage));
            Spanned::new(span, path.to_string_lossy().into_owned())
        }
    };
    let manifest = beside(Path::new(primary.get_ref()), "manifest.json");
    Ok(vec![
        parser.output(key, &primary)?,
        parser.output(
            "manifest",
            &Spanned::new(primary.span(), manifest.to_string_lossy().into_owned()),
        )?,
    ])
}

/// `<dir>/<stem>.<suffix>` for `path` = `<dir>/<stem>.<ext>`.
pub fn beside(path: &Path, suffix: &str) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = format!("{stem}.{suffix}");
    path.parent()
        .map(|dir| dir.join(&name))
        .unwrap_or_else(|| PathBuf::from(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_answer_reads_as_error_hint_and_traceback() {
        let answer = serde_json::json!({
            "ok": false, "kind": "exception", "error": "boom", "hint": "try again",
            "traceback": "line 1\nline 2"
        });
        assert_eq!(
            describe_failure("export", &answer),
            "boom\nhint: try again\nPython traceback:\n  line 1\n  line 2"
        );
        assert_eq!(
            describe_failure("quantize", &serde_json::json!({"ok": false})),
            "the quantize worker failed without a message"
        );
    }

    #[test]
    fn manifests_sit_beside_their_output() {
        assert_eq!(
            beside(Path::new("build/x/net.onnx"), "manifest.json"),
            PathBuf::from("build/x/net.manifest.json")
        );
        assert_eq!(
            beside(Path::new("net.engine"), "manifest.json"),
            PathBuf::from("net.manifest.json")
        );
    }

    #[test]
    fn a_missing_answer_is_an_error() {
        let error = check_answer("engine", Path::new("/nonexistent/result.json")).unwrap_err();
        assert!(
            error.contains("the engine worker exited without an answer"),
            "{error}"
        );
    }
}
