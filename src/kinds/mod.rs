//! The stage-kind seam: each kind is one module behind `StageKind` (its parameters, its
//! inputs and outputs, its fingerprint parameters, its device and tool, how it runs).

pub mod command;
pub mod dataset;
pub mod engine;
pub mod export;
pub mod quantize;
pub mod report;
mod worker;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use toml::Spanned;
use toml::de::DeValue;

use crate::spec::{Device, NamedInput, NamedOutput, SpanError, suggest};

/// What every stage kind provides to the engine.
pub trait StageKind: Debug + Send + Sync {
    /// The kind's name as written in `kind = "..."`.
    fn kind(&self) -> &'static str;
    /// Named inputs: files, directories, or other stages' outputs.
    fn inputs(&self) -> &[NamedInput];
    /// Named outputs; the first is the primary one (`@stage`).
    fn outputs(&self) -> &[NamedOutput];
    /// Every parameter that shapes the output, besides inputs' content and env, as JSON
    /// (serialized canonically into the fingerprint).
    fn params(&self) -> serde_json::Value;
    /// The device when the stage names none.
    fn default_device(&self) -> Device {
        Device::Cpu
    }
    /// The device when the stage names none, knowing the kind of the stage that produces
    /// each `@stage` input (`producer` maps a stage name to its kind's name).
    fn default_device_given(&self, producer: &dyn Fn(&str) -> Option<&'static str>) -> Device {
        let _ = producer;
        self.default_device()
    }
    /// Whether the stage still runs, without a GPU, on a machine that has none although its
    /// device is `cuda` (a report then times the ONNX models on the CPU and lists TensorRT
    /// engines as unavailable). Other kinds fail at once: their request is impossible.
    fn gpu_optional(&self) -> bool {
        false
    }
    /// The tool whose identity (versions) is part of the fingerprint.
    fn tool(&self) -> Tool {
        Tool::None
    }
    /// Work done before `action` once the inputs exist (for example, reading the input
    /// model to decide shapes, or writing a request file next to the temporary outputs).
    /// An error fails the stage before anything is started.
    fn prepare(&self, context: &InvocationContext) -> Result<(), String> {
        let _ = context;
        Ok(())
    }
    /// How the stage produces its outputs: a process, or work done inside pochi.
    fn action(&self, context: &InvocationContext) -> Action;
    /// Work done inside pochi (for kinds whose `action` is `InProcess`), writing to the
    /// temporary output paths in `context`. It should return early once `cancel` is set.
    fn run_in_process(
        &self,
        context: &InvocationContext,
        cancel: &AtomicBool,
    ) -> Result<(), String> {
        let _ = (context, cancel);
        Err(format!(
            "the `{}` kind has no in-process action",
            self.kind()
        ))
    }
    /// Whether the stage still runs when an input comes from a stage that is unavailable on
    /// this machine (its output then counts as missing). A report does: it covers the
    /// artifacts that exist and lists the others as unavailable.
    fn tolerates_unavailable_inputs(&self) -> bool {
        false
    }
    /// Checks the outputs after the action succeeded and before they are published (for
    /// example, a worker's JSON result). An error fails the stage and publishes nothing.
    fn verify(&self, context: &InvocationContext) -> Result<(), String> {
        let _ = context;
        Ok(())
    }
    /// The Python modules the stage imports, checked against the toolchain before a build
    /// (a missing one is named in the error instead of failing the stage).
    fn python_modules(&self) -> Vec<&'static str> {
        Vec::new()
    }
    /// Called once the toolchain is attached, before any key is computed: a kind whose
    /// fingerprint holds facts about the machine's tools (the engine's TensorRT version
    /// and GPU) learns them here, so `build`, `status` and `explain` agree.
    fn observe_toolchain(&self, python: &Path) {
        let _ = python;
    }
    /// Whether the stage can run on this machine at all (e.g. TensorRT and a GPU for an
    /// engine). `Err` says what is missing: the build reports the stage as unavailable
    /// and builds everything else, or fails at once when the stage is a target or the
    /// build is strict. Called once per build, before anything is scheduled.
    fn availability(&self, host: &Host) -> Result<(), String> {
        let _ = host;
        Ok(())
    }
    /// Rewrites the message of a failed process (`status` says how it ended, e.g. "exit
    /// status 1" or "signal 9 ..."): for example, a worker's JSON error, or the remedy for
    /// running out of memory.
    fn explain_failure(
        &self,
        context: &InvocationContext,
        status: &str,
        message: String,
    ) -> String {
        let _ = (context, status);
        message
    }
}

/// What the machine offers a stage, for `StageKind::availability`.
#[derive(Debug, Clone, Copy)]
pub struct Host<'a> {
    /// The toolchain's interpreter.
    pub python: &'a Path,
    /// The GPUs the scheduler may hand out (detected or declared in `[resources]`).
    pub gpus: &'a [u32],
}

/// How a stage kind does its work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Process(Invocation),
    InProcess,
}

/// The Python interpreter stages run, and its identity (Python and package versions)
/// that goes into the fingerprint of every stage whose tool is `Tool::Python`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Toolchain {
    pub python: PathBuf,
    pub identity: String,
}

/// A tool a stage depends on beyond its inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    None,
    Python,
}

/// Paths resolved for one run, relative to the pipeline directory (the working directory).
#[derive(Debug)]
pub struct InvocationContext<'a> {
    /// The pipeline directory, absolute (for in-process work, which has no working directory).
    pub dir: &'a Path,
    pub inputs: &'a BTreeMap<String, PathBuf>,
    /// Temporary paths: the engine publishes them once the stage succeeded.
    pub outputs: &'a BTreeMap<String, PathBuf>,
    pub python: &'a Path,
    pub build_dir: &'a Path,
    /// The pipeline's state directory (`.pochi/v1/<pipeline>/`), absolute: where a kind may
    /// keep files for inspection after a failure (temporary outputs are discarded).
    pub state_dir: &'a Path,
    /// The stage's name.
    pub stage: &'a str,
    /// The GPU the stage holds, if any (processes see only it, as CUDA_VISIBLE_DEVICES;
    /// in-process work passes it on to the workers it starts).
    pub gpu: Option<u32>,
}

/// A process to run in the pipeline directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub program: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
}

/// Parses a stage table of one kind.
pub type ParseFn =
    fn(&crate::spec::parse_api::Parser, &Spanned<DeValue>) -> Result<Box<dyn StageKind>, SpanError>;

/// A registered stage kind.
pub struct KindInfo {
    pub name: &'static str,
    /// The kind's own keys (besides the common ones).
    pub keys: &'static [&'static str],
    pub parse: ParseFn,
    pub schema: fn(&mut schemars::SchemaGenerator) -> schemars::Schema,
}

/// Every stage kind this build of pochi knows.
pub static KINDS: &[&KindInfo] = &[
    &command::INFO,
    &dataset::INFO,
    &export::INFO,
    &quantize::INFO,
    &engine::INFO,
    &report::INFO,
];

/// Kinds the pipeline format defines that this version does not implement yet.
const PLANNED: &[&str] = &[];

/// Finds a kind by name, or returns a hint for the error.
pub fn lookup(name: &str) -> Result<&'static KindInfo, String> {
    if let Some(info) = KINDS.iter().find(|info| info.name == name) {
        return Ok(info);
    }
    if PLANNED.contains(&name) {
        return Err(format!(
            "the `{name}` kind is part of the pipeline format but not implemented in this version of pochi; use kind = \"command\""
        ));
    }
    let known: Vec<&str> = KINDS
        .iter()
        .map(|info| info.name)
        .chain(PLANNED.iter().copied())
        .collect();
    Err(suggest::hint(name, &known))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind's registered keys (what the parser accepts) are exactly the properties of
    /// its JSON Schema (what `pochi schema` documents).
    #[test]
    fn every_kinds_registered_keys_are_its_schema_keys() {
        for info in KINDS {
            let mut generator = schemars::SchemaGenerator::default();
            let reference = (info.schema)(&mut generator);
            let name = reference
                .get("$ref")
                .and_then(|r| r.as_str())
                .and_then(|r| r.rsplit('/').next())
                .unwrap_or_else(|| panic!("{}: the schema is not a reference", info.name))
                .to_string();
            let definitions = generator.take_definitions(true);
            let mut properties: Vec<String> = definitions[&name]["properties"]
                .as_object()
                .unwrap_or_else(|| panic!("{}: no properties", info.name))
                .keys()
                .cloned()
                .collect();
            properties.sort();
            let mut keys: Vec<String> = info.keys.iter().map(|k| k.to_string()).collect();
            keys.sort();
            assert_eq!(properties, keys, "kind `{}`", info.name);
        }
    }
}
