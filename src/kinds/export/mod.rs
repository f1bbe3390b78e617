//! The `export` stage kind: a checkpoint to a verified ONNX model, run by the embedded
//! export script (`src/kinds/export/script.py`) in the Python toolchain. Outputs: the
//! `.onnx` (primary), the reference input and PyTorch outputs (`.npz`) and a manifest
//! (JSON); all three are published only when the script answered `ok` (verification
//! included).

mod keys;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::{Value, json};

use self::keys::{ExportKeys, Exporter, ModelRef, Opset, Tolerances, WeightsFile, parse};
use super::request::{Choice, Program, RequestStage, answer_file, read_json};
use super::{InvocationContext, KindInfo, MachineFacts, Requirements, StageError, Tool};
use crate::pipeline::{NamedInput, NamedOutput};
use crate::toolchain::scripts::Script;

pub(crate) static INFO: KindInfo = KindInfo {
    name: "export",
    keys: super::keys_of::<ExportKeys>,
    parse,
    scripts: &[SCRIPT],
    schema: |generator| generator.subschema_for::<ExportKeys>(),
};

/// Exports a checkpoint to ONNX, verifies it and writes its reference outputs and manifest.
pub(crate) const SCRIPT: Script = Script {
    name: "export.py",
    source: include_str!("script.py"),
};

/// The modules every export imports.
const MODULES: &[&str] = &["numpy", "onnx", "onnxruntime", "torch"];

#[derive(Debug)]
struct Export {
    model: Option<ModelRef>,
    /// `model` as written (for messages and the fingerprint).
    model_text: Option<String>,
    model_args: BTreeMap<String, Value>,
    input_shape: Vec<u64>,
    /// Input axis -> name.
    dynamic_axes: BTreeMap<usize, String>,
    opset: Opset,
    input_names: Option<Vec<String>>,
    output_names: Option<Vec<String>>,
    exporter: Exporter,
    verify: Option<Tolerances>,
    seed: u64,
    weights_file: WeightsFile,
    inputs: Vec<NamedInput>,
    outputs: Vec<NamedOutput>,
}

impl Export {
    fn request_for(&self, context: &InvocationContext) -> Value {
        let path = |map: &BTreeMap<String, PathBuf>, key: &str| {
            map.get(key).map(|p| p.to_string_lossy().into_owned())
        };
        let model = match &self.model {
            None => None,
            Some(ModelRef::Import(text)) => Some(text.clone()),
            Some(ModelRef::File { name }) => {
                path(&context.inputs, "model_file").map(|file| format!("{file}:{name}"))
            }
        };
        let outputs: BTreeMap<&str, String> = self
            .outputs
            .iter()
            .filter_map(|o| Some((o.key.as_str(), path(&context.outputs, &o.key)?)))
            .collect();
        json!({
            "protocol": 1,
            "checkpoint": path(&context.inputs, "checkpoint"),
            "model": model,
            "model_args": self.model_args,
            "input_shape": self.input_shape,
            "dynamic_axes": self.dynamic_axes.iter().map(|(axis, name)| (axis.to_string(), name.clone())).collect::<BTreeMap<_, _>>(),
            "opset": self.opset,
            "input_names": self.input_names,
            "output_names": self.output_names,
            "exporter": self.exporter.name(),
            "verify": self.verify,
            "seed": self.seed,
            "external_data": self.weights_file.json(),
            "outputs": outputs,
        })
    }
}

/// Where the script records its phase and peak memory while it runs (beside its answer).
fn progress_file(context: &InvocationContext) -> PathBuf {
    let answer = answer_file(context);
    answer.with_file_name(format!(
        "{}.progress",
        answer.file_name().unwrap_or_default().to_string_lossy()
    ))
}

fn gib(bytes: f64) -> String {
    format!("{:.2} GiB", bytes / (1u64 << 30) as f64)
}

impl RequestStage for Export {
    fn kind(&self) -> &'static str {
        "export"
    }

    fn inputs(&self) -> &[NamedInput] {
        &self.inputs
    }

    fn outputs(&self) -> &[NamedOutput] {
        &self.outputs
    }

    fn params(&self, _host: &MachineFacts) -> Value {
        json!({
            "model": self.model_text,
            "model_args": self.model_args,
            "input_shape": self.input_shape,
            "dynamic_axes": self.dynamic_axes,
            "opset": self.opset,
            "input_names": self.input_names,
            "output_names": self.output_names,
            "exporter": self.exporter.name(),
            "verify": self.verify,
            "seed": self.seed,
            "external_data": self.weights_file.json(),
            "worker": SCRIPT.hash(),
        })
    }

    fn requirements(&self) -> Requirements {
        let mut modules = MODULES.to_vec();
        if let Some(ModelRef::Import(text)) = &self.model {
            let top = text.split([':', '.']).next().unwrap_or_default();
            match top {
                "monai" => modules.extend(["monai", "einops"]),
                "torchvision" => modules.push("torchvision"),
                _ => {}
            }
        }
        Requirements {
            tool: Tool::Python,
            python_modules: modules,
            ..Requirements::default()
        }
    }

    fn program(&self) -> Program {
        Program::Python(&SCRIPT)
    }

    fn request(&self, context: &InvocationContext) -> Result<Value, StageError> {
        Ok(self.request_for(context))
    }

    /// A script killed by signal 9 without an answer ran out of memory, most likely: the
    /// remedy, with the phase and peak memory its progress file recorded.
    fn explain_no_answer(&self, context: &InvocationContext, status: &str) -> Option<StageError> {
        if !status.starts_with("signal 9") {
            return None;
        }
        let progress = read_json(&context.on_disk(&progress_file(context)));
        let phase = progress
            .as_ref()
            .and_then(|p| p.get("phase"))
            .and_then(Value::as_str)
            .unwrap_or("the export");
        let peak = progress
            .as_ref()
            .and_then(|p| p.get("peak_rss_bytes"))
            .and_then(Value::as_f64);
        let measured = peak
            .map(|p| format!(" after a peak of {} of host memory", gib(p)))
            .unwrap_or_default();
        Some(StageError::new(format!(
            "the export was killed by signal 9 during {phase}{measured}: most likely out of memory (the OOM killer)"
        )).with_hint("export on the CPU (device = \"cpu\", the default), export a smaller input_shape, or declare the stage's peak memory (resources = { memory = \"...\" }) so that pochi never runs more than the machine holds"))
    }
}
