//! What the script kinds share: every kind but `command` runs a script (a Python script
//! of its folder, or pochi itself for the kinds built in Rust) that reads a JSON request
//! file and writes a JSON answer. A kind implements `RequestStage` (its keys, its request)
//! and gets `StageKind` from the one implementation here: the request written to the
//! run's scratch directory, the script's argv, the answer checked in `verify`, and a failed
//! answer turned into a `StageError` (error, hint, traceback).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use serde_json::{Value, json};
use toml::Spanned;

use super::{Action, InvocationContext, MachineFacts, Requirements, StageError, StageKind};
use crate::pipeline::parse_api::Parser;
use crate::pipeline::{NamedInput, NamedOutput, SpanError, suggest};
use crate::toolchain::scripts::Script;

/// The version of the request file pochi writes for `pochi run-stage`.
pub(crate) const RUN_STAGE_PROTOCOL: u32 = 1;

/// The program of a script stage.
#[derive(Debug, Clone, Copy)]
pub enum Program {
    /// `python -I SCRIPT REQUEST ANSWER`, a script embedded in pochi.
    Python(&'static Script),
    /// `pochi run-stage REQUEST ANSWER`: the kind's `run_in_process`, in a child process.
    Pochi,
}

/// A stage kind run by a script. Implementing it gives the kind its `StageKind`.
pub trait RequestStage: Debug + Send + Sync {
    fn kind(&self) -> &'static str;
    fn inputs(&self) -> &[NamedInput];
    fn outputs(&self) -> &[NamedOutput];
    fn params(&self, facts: &MachineFacts) -> Value;
    fn requirements(&self) -> Requirements;
    fn program(&self) -> Program;
    /// The request a Python script reads, for the run's paths in `context` (pochi's own
    /// request, `run_stage_request`, needs none from the kind).
    fn request(&self, context: &InvocationContext) -> Result<Value, StageError> {
        let _ = context;
        Ok(Value::Null)
    }
    /// What the kind keeps after a run its script answered `ok` for, besides its outputs
    /// (the engine's TensorRT timing cache, from the stage's scratch directory).
    fn after_success(&self, context: &InvocationContext) {
        let _ = context;
    }
    /// Variables the script needs besides the stage's `env`.
    fn env(&self) -> BTreeMap<String, String> {
        BTreeMap::new()
    }
    /// See `StageKind::check_inputs`.
    fn check_inputs(
        &self,
        dir: &Path,
        inputs: &BTreeMap<String, PathBuf>,
    ) -> Result<(), StageError> {
        let _ = (dir, inputs);
        Ok(())
    }
    /// The error for a script that ended without an answer (`status`: how it ended), when
    /// the kind knows more than the exit status (the export's out-of-memory remedy).
    fn explain_no_answer(&self, context: &InvocationContext, status: &str) -> Option<StageError> {
        let _ = (context, status);
        None
    }
    /// See `StageKind::run_in_process` (for `Program::Pochi`).
    fn run_in_process(
        &self,
        context: &InvocationContext,
        cancel: &AtomicBool,
    ) -> Result<Vec<String>, StageError> {
        let _ = (context, cancel);
        Err(StageError::new(format!(
            "the `{}` kind does not run inside pochi",
            self.kind()
        )))
    }
}

/// The request file of a run, relative to the pipeline directory.
pub(crate) fn request_file(context: &InvocationContext) -> PathBuf {
    context.scratch.join("request.json")
}

/// The answer file of a run, relative to the pipeline directory.
pub(crate) fn answer_file(context: &InvocationContext) -> PathBuf {
    context.scratch.join("answer.json")
}

impl<T: RequestStage> StageKind for T {
    fn kind(&self) -> &'static str {
        RequestStage::kind(self)
    }

    fn inputs(&self) -> &[NamedInput] {
        RequestStage::inputs(self)
    }

    fn outputs(&self) -> &[NamedOutput] {
        RequestStage::outputs(self)
    }

    fn params(&self, facts: &MachineFacts) -> Value {
        RequestStage::params(self, facts)
    }

    fn requirements(&self) -> Requirements {
        RequestStage::requirements(self)
    }

    fn check_inputs(
        &self,
        dir: &Path,
        inputs: &BTreeMap<String, PathBuf>,
    ) -> Result<(), StageError> {
        RequestStage::check_inputs(self, dir, inputs)
    }

    fn action(&self, context: &InvocationContext) -> Result<Action, StageError> {
        let request = match self.program() {
            Program::Python(_) => RequestStage::request(self, context)?,
            Program::Pochi => {
                let environment = RequestStage::requirements(self).reports_environment;
                run_stage_request(context, environment)?
            }
        };
        let file = request_file(context);
        let written = context.on_disk(&file);
        std::fs::create_dir_all(context.on_disk(&context.scratch))
            .and_then(|()| std::fs::write(&written, request.to_string()))
            .map_err(|e| StageError::new(format!("cannot write {}: {e}", written.display())))?;
        let shown = |path: &Path| path.to_string_lossy().into_owned();
        let (mut argv, tool) = match self.program() {
            Program::Python(script) => {
                let script = script.path();
                (
                    vec![shown(context.python()), "-I".into(), shown(&script)],
                    script,
                )
            }
            Program::Pochi => {
                let pochi = context.facts.pochi.clone();
                let python = ["--python".into(), shown(context.python())];
                let argv = [vec![shown(&pochi), "run-stage".into()], python.to_vec()].concat();
                (argv, pochi)
            }
        };
        argv.extend([shown(&file), shown(&answer_file(context))]);
        let mut env = RequestStage::env(self);
        env.insert("PYTHONUNBUFFERED".to_string(), "1".to_string());
        let mut inputs: Vec<PathBuf> = context.inputs.values().cloned().collect();
        inputs.extend([tool, file]);
        Ok(Action {
            env,
            inputs,
            outputs: context.outputs.values().cloned().collect(),
            platform: RequestStage::requirements(self).platform(&context.facts),
            ..Action::new(argv)
        })
    }

    fn verify(&self, context: &InvocationContext) -> Result<Vec<String>, StageError> {
        check_answer(
            RequestStage::kind(self),
            &context.on_disk(&answer_file(context)),
        )?;
        RequestStage::after_success(self, context);
        Ok(answer_warnings(context))
    }

    fn explain_failure(
        &self,
        context: &InvocationContext,
        status: &str,
        error: StageError,
    ) -> StageError {
        let log = error.log.clone();
        let explained = match read_json(&context.on_disk(&answer_file(context))) {
            Some(answer) => Some(describe_failure(RequestStage::kind(self), &answer)),
            None => self.explain_no_answer(context, status),
        };
        match (explained, log) {
            (Some(explained), Some(log)) => explained.with_log(log),
            (Some(explained), None) => explained,
            (None, _) => error,
        }
    }

    fn run_in_process(
        &self,
        context: &InvocationContext,
        cancel: &AtomicBool,
    ) -> Result<Vec<String>, StageError> {
        RequestStage::run_in_process(self, context, cancel)
    }
}

/// The warnings a script's answer lists (`"warnings": [...]`), e.g. a report's parity
/// failure under `on_parity_failure = "warn"`.
pub(crate) fn answer_warnings(context: &InvocationContext) -> Vec<String> {
    read_json(&context.on_disk(&answer_file(context)))
        .and_then(|answer| answer.get("warnings").cloned())
        .and_then(|warnings| serde_json::from_value(warnings).ok())
        .unwrap_or_default()
}

/// The request of a stage that pochi runs itself (`pochi run-stage`): the pipeline's
/// text as this build parsed it (the child parses it again and takes the stage named in
/// the context) and the run's context, without this machine's paths: the child takes
/// the pipeline directory from its working directory, itself from `current_exe`, the
/// interpreter from its `--python` argument and the interpreter's site directories from
/// the interpreter (`pochi run-stage` fills them in again). A kind that does not report
/// the machine it ran on (`reports_environment`) gets none of the machine's facts but the
/// toolchain's identity: its request is the same on a machine with other GPUs.
pub(crate) fn run_stage_request(
    context: &InvocationContext,
    reports_environment: bool,
) -> Result<Value, StageError> {
    let mut without_machine = context.clone();
    if !reports_environment {
        without_machine.facts =
            crate::facts::MachineFacts::plain(without_machine.facts.toolchain.clone());
    }
    without_machine.facts.pochi = PathBuf::new();
    without_machine.facts.toolchain.python = PathBuf::new();
    if let Some(python) = &mut without_machine.facts.python {
        python.site_dirs.clear();
    }
    let described = serde_json::to_value(&without_machine)
        .map_err(|e| StageError::new(format!("cannot describe the run: {e}")))?;
    Ok(json!({
        "protocol": RUN_STAGE_PROTOCOL,
        "pipeline_text": &*context.pipeline_text,
        "context": described,
    }))
}

/// Runs a script from in-process work (`python -I SCRIPT ARGS...`) in the pipeline
/// directory, on the stage's GPU, logging to `log`; stopped when `cancel` is set. Returns
/// the script's `ok` answer at `result`, or the error for a failure.
pub(crate) fn run_script_now(
    context: &InvocationContext,
    script: &Script,
    args: &[&Path],
    result: &Path,
    log: PathBuf,
    cancel: &AtomicBool,
) -> Result<Value, StageError> {
    use crate::process::{ProcessResult, ProcessSpec};
    let mut command_args = vec![
        "-I".to_string(),
        script.path().to_string_lossy().into_owned(),
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
        program: context.python().to_string_lossy().into_owned(),
        args: command_args,
        env,
        cwd: context.dir.clone(),
        log: log.clone(),
        outputs: Vec::new(),
    };
    let name = script.name.trim_end_matches(".py");
    let shown_log = log.strip_prefix(&context.dir).unwrap_or(&log).to_path_buf();
    match crate::process::run_borrowing_cancel(&spec, cancel) {
        ProcessResult::Success | ProcessResult::Failed { .. } if read_json(result).is_some() => {
            check_answer(name, result).map_err(|e| e.with_log(&shown_log))?;
            read_json(result)
                .ok_or_else(|| StageError::new(format!("the {name} script's answer vanished")))
        }
        ProcessResult::Success => Err(StageError::new(format!(
            "the {name} script exited without an answer"
        ))
        .with_log(shown_log)),
        ProcessResult::Failed {
            status,
            stderr_tail,
        } => Err(StageError::new(format!(
            "the {name} script ended with {status} and no answer{}",
            stderr_tail
                .iter()
                .map(|line| format!("\n  {line}"))
                .collect::<String>()
        ))
        .with_log(shown_log)),
        ProcessResult::Cancelled => Err(StageError::new("interrupted")),
        ProcessResult::SpawnError(e) => Err(StageError::new(format!(
            "cannot start {}: {e}",
            context.python().display()
        ))),
    }
}

/// A script's JSON answer, if the file exists and parses.
pub(crate) fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// The message for a failed answer: the error, its hint, and the Python traceback when the
/// script hit an exception.
pub(crate) fn describe_failure(script: &str, result: &Value) -> StageError {
    let text = |key: &str| result.get(key).and_then(Value::as_str).unwrap_or_default();
    let mut message = text("error").to_string();
    if message.is_empty() {
        message = format!("the {script} script failed without a message");
    }
    if text("kind") == "exception" && !text("traceback").is_empty() {
        message.push_str("\nPython traceback:");
        for line in text("traceback").lines() {
            message.push_str("\n  ");
            message.push_str(line);
        }
    }
    let error = StageError::new(message);
    match text("hint") {
        "" => error,
        hint => error.with_hint(hint),
    }
}

/// `verify` for a script kind: the answer at `path` must exist and say `ok`.
pub(crate) fn check_answer(script: &str, path: &Path) -> Result<(), StageError> {
    let Some(result) = read_json(path) else {
        return Err(StageError::new(format!(
            "the {script} script exited without an answer ({} is missing or not JSON)",
            path.display()
        )));
    };
    if result.get("ok").and_then(Value::as_bool) != Some(true) {
        return Err(describe_failure(script, &result));
    }
    Ok(())
}

/// A script kind's outputs: the primary one under `key` (the `output` key, else
/// `{build_dir}/<stage>.<extension>`) and its `<stem>.manifest.json` beside it. `span` is
/// where errors about the default path point (the stage table).
pub(crate) fn primary_and_manifest(
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

/// A key whose value is one of a closed set of names (`precision = "fp16"`): the enum lists
/// its names once; a name parses to its value, an unknown one is an error with the nearest
/// name as the hint.
pub(crate) trait Choice: Copy + PartialEq + 'static {
    /// Every value with its name as written (and as the script and the key read it).
    const ALL: &'static [(&'static str, Self)];

    /// The value named `name`, if any.
    fn named(name: &str) -> Option<Self> {
        Self::ALL
            .iter()
            .find(|(known, _)| *known == name)
            .map(|&(_, value)| value)
    }

    /// The value's name as written.
    fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|&&(_, value)| value == self)
            .map_or("", |&(name, _)| name)
    }

    /// The value `written` names, else "unknown WHAT `...`" at its span with a "did you mean".
    fn parse(parser: &Parser, written: &Spanned<String>, what: &str) -> Result<Self, SpanError> {
        let name = written.get_ref();
        Self::named(name).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|&(known, _)| known).collect();
            parser
                .src
                .error(written.span(), format!("unknown {what} `{name}`"))
                .with_help(suggest::hint(name, &names))
        })
    }
}

/// Declares an enum of named values and its `Choice` (each name written once):
/// `choice! { enum Precision { Fp16 = "fp16", Int8 = "int8" } }`.
macro_rules! choice {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $($(#[$variant_meta:meta])* $variant:ident = $text:literal),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        $vis enum $name {
            $($(#[$variant_meta])* $variant),+
        }

        impl $crate::kinds::request::Choice for $name {
            const ALL: &'static [(&'static str, Self)] = &[$(($text, $name::$variant)),+];
        }
    };
}
pub(crate) use choice;

/// `<dir>/<stem>.<suffix>` for `path` = `<dir>/<stem>.<ext>`.
pub(crate) fn beside(path: &Path, suffix: &str) -> PathBuf {
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
    fn a_run_stage_request_holds_no_path_of_this_machine() {
        let mut context = InvocationContext::sample("/home/me/project", "/home/me/.cache/py");
        context.gpu = Some(3);
        context.facts.gpus = vec![0, 3];
        context.facts.python = Some(crate::facts::PythonFacts {
            python: "3.11.9".into(),
            versions: BTreeMap::from([("numpy".to_string(), "2.1.0".to_string())]),
            site_dirs: vec![PathBuf::from("/home/me/.cache/site-packages")],
        });
        context.pipeline_text = std::sync::Arc::new("[stages.x]\n".into());
        for reports_environment in [false, true] {
            let request = run_stage_request(&context, reports_environment).unwrap();
            let text = request.to_string();
            assert!(!text.contains("/home/me"), "{text}");
            assert_eq!(
                request["context"].get("gpu"),
                None,
                "the lease is not in it"
            );
            assert_eq!(request["pipeline_text"], "[stages.x]\n");
            let gpus = &request["context"]["facts"]["gpus"];
            let versions = &request["context"]["facts"]["python"]["versions"];
            if reports_environment {
                assert_eq!(gpus, &serde_json::json!([0, 3]), "what a report records");
                assert_eq!(versions["numpy"], "2.1.0");
            } else {
                assert_eq!(gpus, &serde_json::json!([]), "the same on any machine");
                assert!(versions.is_null());
            }
        }
    }

    #[test]
    fn a_failed_answer_reads_as_error_hint_and_traceback() {
        let answer = serde_json::json!({
            "ok": false, "kind": "exception", "error": "boom", "hint": "try again",
            "traceback": "line 1\nline 2"
        });
        let error = describe_failure("export", &answer);
        assert_eq!(error.message, "boom\nPython traceback:\n  line 1\n  line 2");
        assert_eq!(error.hint.as_deref(), Some("try again"));
        assert_eq!(
            describe_failure("quantize", &serde_json::json!({"ok": false})).message,
            "the quantize script failed without a message"
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
        let error = check_answer("engine", Path::new("/nonexistent/result.json"))
            .unwrap_err()
            .message;
        assert!(
            error.contains("the engine script exited without an answer"),
            "{error}"
        );
    }
}
