//! The stage-kind seam, the one door between the engine and a kind: `StageKind` (what a
//! parsed stage declares and how it becomes an `Action`), `Requirements` (what it needs of
//! the machine, as data the engine applies with one rule), `KindInfo` (the registry entry),
//! the `InvocationContext` of one run and the typed `StageError`.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use toml::Spanned;
use toml::de::DeValue;

use super::{Device, NamedInput, NamedOutput, SpanError};
use crate::action::Action;
use crate::facts::MachineFacts;
use crate::toolchain::scripts::Script;

/// What every stage kind provides to the engine. Everything else a kind needs to say is
/// data (`requirements`), so that the engine applies one rule to every kind.
pub trait StageKind: Debug + Send + Sync {
    /// The kind's name as written in `kind = "..."`.
    fn kind(&self) -> &'static str;
    /// Named inputs: files, directories, or other stages' outputs.
    fn inputs(&self) -> &[NamedInput];
    /// Named outputs; the first is the primary one (`@stage`).
    fn outputs(&self) -> &[NamedOutput];
    /// Every parameter that shapes the output, besides inputs' content and env, as JSON
    /// (serialized canonically into the key). `facts` holds the machine facts gathered once
    /// per build (an engine's TensorRT version and GPU model), never probed here.
    fn params(&self, facts: &MachineFacts) -> Value;
    /// What the stage needs of the machine and the engine.
    fn requirements(&self) -> Requirements {
        Requirements::default()
    }
    /// Checks the stage's inputs that exist (`inputs`: key -> path relative to `dir`)
    /// before anything asks whether the stage can run here: an error in what the user
    /// wrote or gave (an engine's ONNX with dynamic spatial axes and no `input_size`)
    /// comes first, on every machine. Inputs not built yet are absent from `inputs`.
    fn check_inputs(
        &self,
        dir: &Path,
        inputs: &BTreeMap<String, PathBuf>,
    ) -> Result<(), StageError> {
        let _ = (dir, inputs);
        Ok(())
    }
    /// The Action that produces the outputs at the temporary paths of `context`: a
    /// process to run (a kind may write a request file into `context.scratch` first).
    fn action(&self, context: &InvocationContext) -> Result<Action, StageError>;
    /// Checks the outputs after the action succeeded and before they are published (for
    /// example, a script's JSON answer) and returns the run's warnings (told to the user
    /// once the stage is built). An error fails the stage and publishes nothing.
    fn verify(&self, context: &InvocationContext) -> Result<Vec<String>, StageError> {
        let _ = context;
        Ok(Vec::new())
    }
    /// The error for a failed process (`status` says how it ended, e.g. "exit status 1"):
    /// a kind may replace it, e.g. with its script's JSON answer.
    fn explain_failure(
        &self,
        context: &InvocationContext,
        status: &str,
        error: StageError,
    ) -> StageError {
        let _ = (context, status);
        error
    }
    /// Work done by pochi itself in the child process of `pochi run-stage` (the `dataset`
    /// and `report` kinds), writing to the temporary output paths; returns warnings. It
    /// should return early once `cancel` is set.
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

/// What a stage needs, declared by its kind as data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirements {
    /// The tool whose identity (versions) is part of the key.
    pub tool: Tool,
    /// The Python modules the stage imports, checked against the toolchain before a build.
    pub python_modules: Vec<&'static str>,
    /// The device when the stage names none.
    pub default_device: Device,
    /// Input keys whose producing stage's need for a GPU carries over: when one of them
    /// comes from a stage that needs a GPU (a report over an engine), the default device
    /// is `cuda`.
    pub device_follows: Vec<String>,
    /// What happens on a machine without a GPU when the device is `cuda`.
    pub without_gpu: WithoutGpu,
    /// The accelerator runtime the stage builds for or runs on, if any, and whether the
    /// stage is unavailable without it.
    pub accelerator: AcceleratorUse,
    /// The stage still runs when an input's stage is unavailable on this machine (its
    /// output then enters the key as missing): a report covers what exists.
    pub tolerates_unavailable_inputs: bool,
    /// The stage records the versions of the toolchain's packages (a report says what it
    /// measured on): they are read into the `MachineFacts` before the build.
    pub reports_environment: bool,
}

impl Default for Requirements {
    fn default() -> Self {
        Requirements {
            tool: Tool::None,
            python_modules: Vec::new(),
            default_device: Device::Cpu,
            device_follows: Vec::new(),
            without_gpu: WithoutGpu::Fails,
            accelerator: AcceleratorUse::Never,
            tolerates_unavailable_inputs: false,
            reports_environment: false,
        }
    }
}

impl Requirements {
    /// The platform properties of the stage's Action on `facts`: the operating system and
    /// instruction set; for a stage that uses an accelerator also the GPU model, its
    /// compute capability and the accelerator's and CUDA's versions, so its cached outputs
    /// are never restored for another GPU type.
    pub fn platform(&self, facts: &MachineFacts) -> BTreeMap<String, String> {
        let mut platform = crate::action::base_platform();
        if let Some(accelerator) = self.accelerator.accelerator() {
            platform.extend(facts.accelerator_platform(accelerator.id));
        }
        platform
    }
}

/// A `cuda` stage on a machine that has no GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WithoutGpu {
    /// The request is impossible: the stage fails.
    Fails,
    /// The stage cannot run here: reported as unavailable, the rest builds.
    Unavailable,
    /// The stage runs on the CPU (a report times the ONNX models and lists engines as
    /// unavailable).
    RunsOnCpu,
}

/// An accelerator runtime (TensorRT today) as data: declared by the kind that builds for
/// it, in that kind's folder; probed once per build by the command line through `probe`;
/// matched by the engine's one availability rule and put on Actions as platform
/// properties. Nothing outside the declaring kind names the runtime, so a kind for another
/// accelerator touches no file outside its folder.
#[derive(Debug)]
pub struct Accelerator {
    /// Its key in the machine facts, and the platform property of its version
    /// (`platform = { tensorrt = "10.13.0" }`).
    pub id: &'static str,
    /// The name users read in messages ("TensorRT").
    pub name: &'static str,
    /// The Python module that provides it.
    pub module: &'static str,
    /// The platform properties its facts put on an Action (`MachineFacts::accelerator_platform`):
    /// a remote stage that names no GPU model drops them (they describe this machine).
    pub properties: &'static [&'static str],
    /// What the toolchain's interpreter finds (it spawns: only the command line calls it).
    pub probe: fn(&Path) -> crate::facts::AcceleratorFacts,
}

/// Accelerators are one when their ids are.
impl PartialEq for Accelerator {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for Accelerator {}

/// Whether and how a stage uses an accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceleratorUse {
    Never,
    /// Without it the stage is unavailable here.
    Required(&'static Accelerator),
    /// The stage uses it when the machine has it (a report times engines).
    WhenPresent(&'static Accelerator),
}

impl AcceleratorUse {
    /// The accelerator the stage uses, if any.
    pub fn accelerator(self) -> Option<&'static Accelerator> {
        match self {
            AcceleratorUse::Never => None,
            AcceleratorUse::Required(accelerator) | AcceleratorUse::WhenPresent(accelerator) => {
                Some(accelerator)
            }
        }
    }

    /// Whether the stage is unavailable without its accelerator.
    pub fn is_required(self) -> bool {
        matches!(self, AcceleratorUse::Required(_))
    }
}

/// A tool a stage depends on beyond its inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    None,
    Python,
}

/// Paths and facts for one run. Every path is relative to the pipeline directory, the
/// working directory of the action and the input root of its REAPI Action, so what a
/// kind writes into a request is the same in every clone and on a remote worker; a kind
/// that reads or writes a file itself joins it to `dir` (`on_disk`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InvocationContext {
    /// The pipeline directory, absolute. Not part of a request: `pochi run-stage` takes
    /// its working directory.
    #[serde(skip)]
    pub dir: PathBuf,
    pub inputs: BTreeMap<String, PathBuf>,
    /// Temporary paths: the engine publishes them once the stage succeeded.
    pub outputs: BTreeMap<String, PathBuf>,
    /// The stage's directory for request and answer files, emptied after the run.
    pub scratch: PathBuf,
    pub build_dir: PathBuf,
    /// The pipeline's state directory (`.pochi/v1/<pipeline>/`): where a kind may keep
    /// files for inspection after a failure (temporary outputs are discarded).
    pub state_dir: PathBuf,
    /// The stage's name.
    pub stage: String,
    /// The GPU the stage holds, if any (processes see only it, as CUDA_VISIBLE_DEVICES;
    /// in-process work passes it on to the scripts it starts). Not part of a request (the
    /// lease is the scheduler's choice, not what the stage computes): `pochi run-stage`
    /// reads its CUDA_VISIBLE_DEVICES.
    #[serde(skip)]
    pub gpu: Option<u32>,
    /// The machine facts of this build.
    pub facts: MachineFacts,
    /// The pipeline file and its text as parsed for this build: what `pochi run-stage`
    /// parses again to rebuild a stage that pochi runs itself.
    pub pipeline_file: PathBuf,
    #[serde(skip)]
    pub pipeline_text: std::sync::Arc<String>,
}

impl InvocationContext {
    /// The toolchain's interpreter.
    pub fn python(&self) -> &Path {
        &self.facts.toolchain.python
    }

    /// Where a path of the context (relative to the pipeline directory) is on this
    /// machine, for a kind that reads or writes it itself.
    pub fn on_disk(&self, path: &Path) -> PathBuf {
        self.dir.join(path)
    }

    /// A context for unit tests: project `dir`, interpreter `python`, build dir
    /// `build/x`, stage `x`, no inputs or outputs.
    #[cfg(test)]
    pub fn sample(dir: &str, python: &str) -> InvocationContext {
        let dir = PathBuf::from(dir);
        InvocationContext {
            inputs: BTreeMap::new(),
            outputs: BTreeMap::new(),
            scratch: PathBuf::from(".pochi/v1/x/tmp/x/.scratch"),
            build_dir: PathBuf::from("build/x"),
            state_dir: PathBuf::from(".pochi/v1/x"),
            stage: "x".to_string(),
            gpu: None,
            facts: MachineFacts::plain(crate::facts::Toolchain {
                python: PathBuf::from(python),
                identity: "test".to_string(),
            }),
            pipeline_file: PathBuf::from("pipeline.toml"),
            pipeline_text: std::sync::Arc::new(String::new()),
            dir,
        }
    }
}

/// A stage that failed: what happened, what to do, and where its log is. Rendered like
/// every other error (`error:`, `help:`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageError {
    pub message: String,
    pub hint: Option<String>,
    pub log: Option<PathBuf>,
}

impl StageError {
    pub fn new(message: impl Into<String>) -> Self {
        StageError {
            message: message.into(),
            hint: None,
            log: None,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn with_log(mut self, log: impl Into<PathBuf>) -> Self {
        self.log = Some(log.into());
        self
    }
}

/// Every typed error below the seams becomes a stage failure the same way: the message is
/// the error and its causes joined by `: `, the hint is its `#[diagnostic(help)]` (the one
/// place hints are written). `StageError` is not itself a `Diagnostic`, so this is coherent.
impl<E: miette::Diagnostic + Send + Sync + 'static> From<E> for StageError {
    fn from(error: E) -> Self {
        let mut message = error.to_string();
        let mut cause = std::error::Error::source(&error);
        while let Some(inner) = cause {
            let text = inner.to_string();
            if !message.ends_with(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            cause = inner.source();
        }
        StageError {
            message,
            hint: error.help().map(|help| help.to_string()),
            log: None,
        }
    }
}

/// A host for unit tests: the given interpreter, no GPU, nothing probed.
#[cfg(test)]
pub(crate) fn sample_facts(python: &str) -> MachineFacts {
    MachineFacts::plain(crate::facts::Toolchain {
        python: PathBuf::from(python),
        identity: "test".to_string(),
    })
}

impl std::fmt::Display for StageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StageError {}

/// Parses a stage table of one kind.
pub(crate) type ParseFn =
    fn(&super::parse_api::Parser, &Spanned<DeValue>) -> Result<Box<dyn StageKind>, SpanError>;

/// A registered stage kind.
pub struct KindInfo {
    pub name: &'static str,
    /// The kind's own keys (besides the common ones): `keys_of::<ItsKeysStruct>`.
    pub keys: fn() -> &'static [&'static str],
    pub parse: ParseFn,
    /// The Python scripts the kind runs (written to the cache before a build).
    pub scripts: &'static [Script],
    pub schema: fn(&mut schemars::SchemaGenerator) -> schemars::Schema,
}

/// The kinds a parse knows (the `kinds` module's `KINDS`, passed in so that the parser
/// does not depend on the kinds).
pub(crate) type Registry = &'static [&'static KindInfo];

/// Kinds the pipeline format defines that this version does not implement yet.
const PLANNED: &[&str] = &[];

/// A stage kind this pochi cannot parse; its help says what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, miette::Diagnostic)]
pub enum UnknownKind {
    /// No such kind: `hint` names the nearest known one, or lists them all.
    #[error("unknown stage kind `{name}`")]
    #[diagnostic(help("{hint}"))]
    Unknown { name: String, hint: String },
    /// A kind the format defines that this version does not implement.
    #[error("unknown stage kind `{name}`")]
    #[diagnostic(help(
        "the `{name}` kind is part of the pipeline format but not implemented in this version of pochi; use kind = \"command\""
    ))]
    Planned { name: String },
}

/// Finds a kind by name in `kinds`.
pub(crate) fn lookup(kinds: Registry, name: &str) -> Result<&'static KindInfo, UnknownKind> {
    if let Some(info) = kinds.iter().find(|info| info.name == name) {
        return Ok(info);
    }
    if PLANNED.contains(&name) {
        return Err(UnknownKind::Planned {
            name: name.to_string(),
        });
    }
    let known: Vec<&str> = kinds
        .iter()
        .map(|info| info.name)
        .chain(PLANNED.iter().copied())
        .collect();
    Err(UnknownKind::Unknown {
        name: name.to_string(),
        hint: super::suggest::hint(name, &known),
    })
}

#[cfg(test)]
mod tests {
    use super::StageError;

    #[derive(Debug, thiserror::Error, miette::Diagnostic)]
    #[error("cannot read model.onnx")]
    #[diagnostic(help("export the model again"))]
    struct Outer(#[source] std::io::Error);

    /// A typed error becomes a stage failure with its causes in the message and its
    /// `help` as the hint, the one place hints are written.
    #[test]
    fn a_typed_error_becomes_a_stage_failure_with_its_causes_and_help() {
        let error: StageError = Outer(std::io::Error::other("no such file")).into();
        assert_eq!(error.message, "cannot read model.onnx: no such file");
        assert_eq!(error.hint.as_deref(), Some("export the model again"));
        assert_eq!(error.log, None);
    }
}
