//! The `export` stage kind: a checkpoint to a verified ONNX model, run by the embedded
//! export worker (`src/kinds/export/worker.py`) in the Python toolchain. Outputs: the
//! `.onnx` (primary), the reference input and PyTorch outputs (`.npz`) and a manifest
//! (JSON); all three are published only when the worker answered `ok` (verification
//! included).

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use toml::Spanned;
use toml::de::DeValue;

use super::worker::{Program, WorkerStage, answer_file, read_json};
use super::{Host, InvocationContext, KindInfo, Requirements, StageError, StageKind, Tool};
use crate::pipeline::parse_api::Parser;
use crate::pipeline::{NamedInput, NamedOutput, SpanError, suggest};
use crate::toolchain::workers::Worker;

pub static INFO: KindInfo = KindInfo {
    name: "export",
    keys: super::keys_of::<ExportKeys>,
    parse,
    workers: &[WORKER],
    schema: |generator| generator.subschema_for::<ExportKeys>(),
};

/// Exports a checkpoint to ONNX, verifies it and writes its reference outputs and manifest.
pub const WORKER: Worker = Worker {
    name: "export.py",
    source: include_str!("worker.py"),
};

/// The modules every export imports.
const MODULES: &[&str] = &["numpy", "onnx", "onnxruntime", "torch"];
const DEFAULT_OPSET: u32 = 17;
const DEFAULT_RTOL: f64 = 1e-3;
const DEFAULT_ATOL: f64 = 1e-5;

/// `kind = "export"`: a PyTorch checkpoint to ONNX, verified against PyTorch.
#[derive(Debug, Deserialize, JsonSchema)]
struct ExportKeys {
    /// The checkpoint: a path, or "@stage". A state_dict (also nested under `state_dict` or
    /// `model_state_dict`), a pickled model, or a TorchScript archive.
    #[schemars(with = "String")]
    checkpoint: Spanned<String>,
    /// The model's class or factory: "package.module:Name", or "file.py:Name" relative to
    /// the pipeline. Required for a state_dict.
    #[schemars(with = "Option<String>")]
    model: Option<Spanned<String>>,
    /// Keyword arguments for `model`.
    #[serde(default)]
    model_args: BTreeMap<String, Value>,
    /// One sample's shape, batch excluded, channels first: [1, 96, 96, 96] or [3, 224, 224].
    #[schemars(with = "Vec<u64>", length(min = 1, max = 5))]
    input_shape: Spanned<Vec<i64>>,
    /// Dynamic axes by name: "batch" (the default), "channels", "depth", "height", "width",
    /// "length", or "spatial" (all spatial axes); [] exports fully static shapes.
    #[schemars(with = "Option<Vec<String>>")]
    dynamic: Option<Spanned<Vec<Spanned<String>>>>,
    /// The ONNX opset (default 17).
    #[schemars(with = "Option<u32>")]
    opset: Option<Spanned<i64>>,
    /// The input tensor's name (default ["input"]).
    #[schemars(with = "Option<Vec<String>>")]
    input_names: Option<Spanned<Vec<String>>>,
    /// Output tensor names (default "output", or "output_0", "output_1", ...).
    #[schemars(with = "Option<Vec<String>>")]
    output_names: Option<Spanned<Vec<String>>>,
    /// "legacy" (TorchScript-based, the default) or "dynamo" (torch.export-based).
    #[schemars(with = "Option<String>")]
    exporter: Option<Spanned<String>>,
    /// ONNX Runtime against PyTorch on a seeded random input: { rtol = 1e-3, atol = 1e-5 }
    /// (the default), or false to skip it.
    #[schemars(with = "Option<VerifyKeys>")]
    verify: Option<Spanned<VerifyKeys>>,
    /// Seed of the random input (default 0).
    #[serde(default)]
    #[schemars(range(min = 0))]
    seed: u64,
    /// Weights in a separate `<name>.onnx.data` file: true, false, or "auto" (the default:
    /// one file, and a clear error for models over 2 GB).
    #[schemars(with = "Option<ExternalData>")]
    external_data: Option<Spanned<ExternalData>>,
    /// Where the .onnx goes (default "{build_dir}/<stage>.onnx"); the reference and the
    /// manifest go next to it as <stem>.reference.npz and <stem>.manifest.json.
    #[schemars(with = "Option<String>")]
    output: Option<Spanned<String>>,
}

/// `verify = false` or `verify = { rtol = ..., atol = ... }`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
enum VerifyKeys {
    Enabled(bool),
    Tolerances {
        rtol: Option<f64>,
        atol: Option<f64>,
    },
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
enum ExternalData {
    Bool(bool),
    Mode(String),
}

/// Verification tolerances.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
struct Tolerances {
    rtol: f64,
    atol: f64,
}

/// Where the model comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ModelRef {
    /// `package.module:Name`
    Import(String),
    /// `file.py:Name`: the file is the input `model_file`.
    File { name: String },
}

#[derive(Debug)]
struct Export {
    model: Option<ModelRef>,
    /// `model` as written (for messages and the fingerprint).
    model_text: Option<String>,
    model_args: BTreeMap<String, Value>,
    input_shape: Vec<u64>,
    /// Input axis -> name.
    dynamic_axes: BTreeMap<usize, String>,
    opset: u32,
    input_names: Option<Vec<String>>,
    output_names: Option<Vec<String>>,
    exporter: &'static str,
    verify: Option<Tolerances>,
    seed: u64,
    /// "auto", or true / false.
    external_data: Value,
    inputs: Vec<NamedInput>,
    outputs: Vec<NamedOutput>,
}

fn parse(parser: &Parser, value: &Spanned<DeValue>) -> Result<Box<dyn StageKind>, SpanError> {
    let keys: ExportKeys = parser.deserialize(value)?;
    let src = parser.src;
    let mut inputs = vec![parser.input("checkpoint", &keys.checkpoint)?];

    let (model, model_text) = match &keys.model {
        None => (None, None),
        Some(model) => {
            let (reference, file) = parse_model(model.get_ref())
                .map_err(|(message, help)| src.error(model.span(), message).with_help(help))?;
            if let Some(file) = file {
                inputs.push(parser.input("model_file", &Spanned::new(model.span(), file))?);
            }
            (Some(reference), Some(model.get_ref().clone()))
        }
    };

    let input_shape = parse_shape(keys.input_shape.get_ref())
        .map_err(|(message, help)| src.error(keys.input_shape.span(), message).with_help(help))?;
    let dynamic_axes = match &keys.dynamic {
        None => BTreeMap::from([(0, "batch".to_string())]),
        Some(list) => {
            let mut axes = BTreeMap::new();
            for name in list.get_ref() {
                let found = axes_named(name.get_ref(), input_shape.len())
                    .map_err(|(message, help)| src.error(name.span(), message).with_help(help))?;
                for (axis, axis_name) in found {
                    if axes.insert(axis, axis_name).is_some() {
                        return Err(src.error(
                            name.span(),
                            format!("axis `{}` is named twice in `dynamic`", name.get_ref()),
                        ));
                    }
                }
            }
            axes
        }
    };
    let opset = match &keys.opset {
        None => DEFAULT_OPSET,
        Some(opset) => match u32::try_from(*opset.get_ref()) {
            Ok(n) if (7..=30).contains(&n) => n,
            _ => {
                return Err(src
                    .error(
                        opset.span(),
                        format!(
                            "opset {} is not an ONNX opset pochi can export",
                            opset.get_ref()
                        ),
                    )
                    .with_help("use an opset from 7 to 30; 17 is the default"));
            }
        },
    };
    let input_names = names(&keys.input_names, "input_names", parser)?;
    if let (Some(list), Some(spanned)) = (&input_names, &keys.input_names)
        && list.len() != 1
    {
        return Err(src
            .error(
                spanned.span(),
                "the export stage feeds the model one input tensor: give one name",
            )
            .with_help("e.g. input_names = [\"input\"]"));
    }
    let output_names = names(&keys.output_names, "output_names", parser)?;
    let exporter = match &keys.exporter {
        None => "legacy",
        Some(exporter) => match exporter.get_ref().as_str() {
            "legacy" => "legacy",
            "dynamo" => "dynamo",
            other => {
                return Err(src
                    .error(exporter.span(), format!("unknown exporter `{other}`"))
                    .with_help(suggest::hint(other, &["legacy", "dynamo"])));
            }
        },
    };
    let verify = parse_verify(keys.verify.as_ref()).map_err(|(span, message)| {
        src.error(span, message)
            .with_help("verify = { rtol = 1e-3, atol = 1e-5 } (the default) or verify = false")
    })?;
    let external_data = match &keys.external_data {
        None => json!("auto"),
        Some(spanned) => match spanned.get_ref() {
            ExternalData::Bool(b) => json!(b),
            ExternalData::Mode(mode) if mode == "auto" => json!("auto"),
            ExternalData::Mode(mode) => {
                return Err(src
                    .error(
                        spanned.span(),
                        format!("`external_data = \"{mode}\"` is not a setting"),
                    )
                    .with_help("use true, false or \"auto\""));
            }
        },
    };
    let onnx_path = match &keys.output {
        Some(output) => output.clone(),
        None => Spanned::new(
            value.span(),
            parser
                .build_dir
                .join(format!("{}.onnx", parser.stage))
                .to_string_lossy()
                .into_owned(),
        ),
    };
    let outputs = declared_outputs(parser, &onnx_path, external_data == json!(true))?;
    Ok(Box::new(Export {
        model,
        model_text,
        model_args: keys.model_args,
        input_shape,
        dynamic_axes,
        opset,
        input_names,
        output_names,
        exporter,
        verify,
        seed: keys.seed,
        external_data,
        inputs,
        outputs,
    }))
}

type Problem = (String, String);

/// `package.module:Name` or `file.py:Name` (the file path comes back separately).
fn parse_model(text: &str) -> Result<(ModelRef, Option<String>), Problem> {
    let help = || {
        "write \"package.module:Name\" (e.g. \"monai.networks.nets:SwinUNETR\") or \"file.py:Name\" (relative to the pipeline)".to_string()
    };
    let Some((target, name)) = text.rsplit_once(':') else {
        return Err((format!("`model = \"{text}\"` has no `:Name`"), help()));
    };
    let identifier = |s: &str| {
        !s.is_empty()
            && !s.starts_with(|c: char| c.is_ascii_digit())
            && s.chars().all(|c| c.is_alphanumeric() || c == '_')
    };
    if !name.split('.').all(identifier) {
        return Err((format!("`{name}` is not a Python name"), help()));
    }
    if target.ends_with(".py") {
        return Ok((
            ModelRef::File {
                name: name.to_string(),
            },
            Some(target.to_string()),
        ));
    }
    if target.is_empty() || !target.split('.').all(identifier) {
        return Err((format!("`{target}` is not a module path"), help()));
    }
    Ok((ModelRef::Import(text.to_string()), None))
}

fn parse_shape(shape: &[i64]) -> Result<Vec<u64>, Problem> {
    let help = "give one sample's shape, channels first and batch excluded: [1, 96, 96, 96] for a 3-D volume, [3, 224, 224] for an image";
    if shape.is_empty() || shape.len() > 5 {
        return Err((format!("input_shape has {} axes", shape.len()), help.into()));
    }
    shape
        .iter()
        .map(|&dim| {
            u64::try_from(dim)
                .ok()
                .filter(|d| *d > 0)
                .ok_or_else(|| (format!("input_shape has a dimension of {dim}"), help.into()))
        })
        .collect()
}

/// The names of the axes of the input [batch, *input_shape] for a sample of `rank` axes.
fn axis_names(rank: usize) -> Vec<&'static str> {
    let spatial: &[&str] = match rank {
        2 => &["length"],
        3 => &["height", "width"],
        4 => &["depth", "height", "width"],
        _ => &[],
    };
    let mut names = vec!["batch"];
    if rank >= 1 {
        names.push(if rank == 1 { "features" } else { "channels" });
    }
    names.extend(spatial);
    names
}

/// The input axes `name` makes dynamic (with the name each gets in the ONNX).
fn axes_named(name: &str, rank: usize) -> Result<Vec<(usize, String)>, Problem> {
    let names = axis_names(rank);
    if name == "spatial" && names.len() > 2 {
        return Ok((2..names.len())
            .map(|axis| (axis, names[axis].to_string()))
            .collect());
    }
    match names.iter().position(|n| *n == name) {
        Some(axis) => Ok(vec![(axis, name.to_string())]),
        None => {
            let mut known: Vec<&str> = names.clone();
            if names.len() > 2 {
                known.push("spatial");
            }
            let help = match suggest::nearest(name, known.iter().copied()) {
                Some(best) => format!(
                    "did you mean `{best}`? (the axes of an input_shape of {rank} dimensions are: {})",
                    known.join(", ")
                ),
                None => format!(
                    "the axes of an input_shape of {rank} dimensions are: {}",
                    known.join(", ")
                ),
            };
            Err((format!("unknown axis `{name}` in `dynamic`"), help))
        }
    }
}

fn names(
    keys: &Option<Spanned<Vec<String>>>,
    what: &str,
    parser: &Parser,
) -> Result<Option<Vec<String>>, SpanError> {
    let Some(list) = keys else { return Ok(None) };
    let mut seen = std::collections::BTreeSet::new();
    for name in list.get_ref() {
        if name.is_empty() || !seen.insert(name) {
            return Err(parser
                .src
                .error(list.span(), format!("{what} has an empty or repeated name")));
        }
    }
    if list.get_ref().is_empty() {
        return Err(parser
            .src
            .error(list.span(), format!("{what} is empty"))
            .with_help(format!("leave {what} out for the default")));
    }
    Ok(Some(list.get_ref().clone()))
}

fn parse_verify(
    verify: Option<&Spanned<VerifyKeys>>,
) -> Result<Option<Tolerances>, (Range<usize>, String)> {
    let default = Tolerances {
        rtol: DEFAULT_RTOL,
        atol: DEFAULT_ATOL,
    };
    let Some(verify) = verify else {
        return Ok(Some(default));
    };
    match verify.get_ref() {
        VerifyKeys::Enabled(false) => Ok(None),
        VerifyKeys::Enabled(true) => Ok(Some(default)),
        VerifyKeys::Tolerances { rtol, atol } => {
            let tolerances = Tolerances {
                rtol: rtol.unwrap_or(DEFAULT_RTOL),
                atol: atol.unwrap_or(DEFAULT_ATOL),
            };
            if !(tolerances.rtol.is_finite()
                && tolerances.rtol >= 0.0
                && tolerances.atol.is_finite()
                && tolerances.atol >= 0.0)
            {
                return Err((
                    verify.span(),
                    "rtol and atol must be finite and not negative".into(),
                ));
            }
            Ok(Some(tolerances))
        }
    }
}

/// `onnx`, `reference`, `manifest` (and `onnx_data` with external data), next to each other.
fn declared_outputs(
    parser: &Parser,
    onnx: &Spanned<String>,
    external: bool,
) -> Result<Vec<NamedOutput>, SpanError> {
    let path = Path::new(onnx.get_ref());
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let file_name = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let sibling = |name: String| -> Spanned<String> {
        let joined: PathBuf = path
            .parent()
            .map(|p| p.join(&name))
            .unwrap_or_else(|| PathBuf::from(&name));
        Spanned::new(onnx.span(), joined.to_string_lossy().into_owned())
    };
    let mut outputs = vec![
        parser.output("onnx", onnx)?,
        parser.output("reference", &sibling(format!("{stem}.reference.npz")))?,
        parser.output("manifest", &sibling(format!("{stem}.manifest.json")))?,
    ];
    if external {
        outputs.push(parser.output("onnx_data", &sibling(format!("{file_name}.data")))?);
    }
    Ok(outputs)
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
            "exporter": self.exporter,
            "verify": self.verify,
            "seed": self.seed,
            "external_data": self.external_data,
            "outputs": outputs,
        })
    }
}

/// Where the worker records its phase and peak memory while it runs (beside its answer).
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

impl WorkerStage for Export {
    fn kind(&self) -> &'static str {
        "export"
    }

    fn inputs(&self) -> &[NamedInput] {
        &self.inputs
    }

    fn outputs(&self) -> &[NamedOutput] {
        &self.outputs
    }

    fn params(&self, _host: &Host) -> Value {
        json!({
            "model": self.model_text,
            "model_args": self.model_args,
            "input_shape": self.input_shape,
            "dynamic_axes": self.dynamic_axes,
            "opset": self.opset,
            "input_names": self.input_names,
            "output_names": self.output_names,
            "exporter": self.exporter,
            "verify": self.verify,
            "seed": self.seed,
            "external_data": self.external_data,
            "worker": WORKER.hash(),
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
        Program::Python(&WORKER)
    }

    fn request(&self, context: &InvocationContext) -> Result<Value, StageError> {
        Ok(self.request_for(context))
    }

    /// A worker killed by signal 9 without an answer ran out of memory, most likely: the
    /// remedy, with the phase and peak memory its progress file recorded.
    fn explain_no_answer(&self, context: &InvocationContext, status: &str) -> Option<StageError> {
        if !status.starts_with("signal 9") {
            return None;
        }
        let progress = read_json(&progress_file(context));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::SourceFile;

    fn parse_stage(table: &str) -> Result<Box<dyn StageKind>, SpanError> {
        let text = format!("[stages.onnx]\nkind = \"export\"\n{table}");
        let src = SourceFile::new("pipeline.toml".into(), text.clone());
        let root = toml::de::DeTable::parse(&text).unwrap();
        let stage = root
            .get_ref()
            .get("stages")
            .unwrap()
            .get_ref()
            .as_table()
            .unwrap()
            .get("onnx")
            .unwrap()
            .clone();
        let dir = Path::new("/project");
        let parser = Parser {
            src: &src,
            dir,
            build_dir: Path::new("build/p"),
            stage: "onnx",
            kinds: crate::kinds::KINDS,
        };
        parse(&parser, &stage)
    }

    fn export(table: &str) -> Value {
        parse_stage(table)
            .unwrap()
            .params(&crate::pipeline::kind::sample_host("/py"))
    }

    fn error(table: &str) -> String {
        let error = parse_stage(table).unwrap_err();
        let help = miette::Diagnostic::help(&error)
            .map(|h| h.to_string())
            .unwrap_or_default();
        format!("{error} | {help}")
    }

    const BASE: &str = "checkpoint = \"ckpt.pth\"\nmodel = \"monai.networks.nets:SwinUNETR\"\ninput_shape = [1, 96, 96, 96]\n";

    #[test]
    fn defaults_follow_the_pipeline_format() {
        let params = export(BASE);
        assert_eq!(params["opset"], 17);
        assert_eq!(params["dynamic_axes"], json!({ "0": "batch" }));
        assert_eq!(params["exporter"], "legacy");
        assert_eq!(params["verify"], json!({ "rtol": 1e-3, "atol": 1e-5 }));
        assert_eq!(params["seed"], 0);
        assert_eq!(params["external_data"], "auto");
        assert_eq!(params["worker"], WORKER.hash());
        let kind = parse_stage(BASE).unwrap();
        let outputs: Vec<(String, PathBuf)> = kind
            .outputs()
            .iter()
            .map(|o| (o.key.clone(), o.path.clone()))
            .collect();
        assert_eq!(
            outputs,
            vec![
                ("onnx".into(), "build/p/onnx.onnx".into()),
                ("reference".into(), "build/p/onnx.reference.npz".into()),
                ("manifest".into(), "build/p/onnx.manifest.json".into()),
            ]
        );
        let requirements = kind.requirements();
        assert_eq!(requirements.tool, Tool::Python);
        assert_eq!(requirements.default_device, crate::pipeline::Device::Cpu);
        assert!(
            requirements.python_modules.contains(&"einops"),
            "SwinUNETR needs einops"
        );
    }

    #[test]
    fn every_key_is_read() {
        let params = export(
            "checkpoint = \"@train\"\nmodel = \"nets/model.py:Net\"\nmodel_args = { width = 2, act = \"relu\" }\n\
             input_shape = [3, 224, 224]\ndynamic = [\"batch\", \"spatial\"]\nopset = 18\ninput_names = [\"x\"]\n\
             output_names = [\"logits\"]\nexporter = \"dynamo\"\nverify = { atol = 1e-4 }\nseed = 7\nexternal_data = true\noutput = \"out/net.onnx\"\n",
        );
        assert_eq!(
            params["dynamic_axes"],
            json!({ "0": "batch", "2": "height", "3": "width" })
        );
        assert_eq!(params["model_args"], json!({ "act": "relu", "width": 2 }));
        assert_eq!(params["verify"], json!({ "rtol": 1e-3, "atol": 1e-4 }));
        assert_eq!(params["exporter"], "dynamo");
        assert_eq!(params["seed"], 7);
        let kind = parse_stage(
            "checkpoint = \"@train\"\nmodel = \"nets/model.py:Net\"\ninput_shape = [3, 8, 8]\nexternal_data = true\noutput = \"out/net.onnx\"\n",
        )
        .unwrap();
        let inputs: Vec<&str> = kind.inputs().iter().map(|i| i.key.as_str()).collect();
        assert_eq!(inputs, vec!["checkpoint", "model_file"]);
        let outputs: Vec<PathBuf> = kind.outputs().iter().map(|o| o.path.clone()).collect();
        assert_eq!(
            outputs,
            vec![
                PathBuf::from("out/net.onnx"),
                "out/net.reference.npz".into(),
                "out/net.manifest.json".into(),
                "out/net.onnx.data".into()
            ]
        );
    }

    #[test]
    fn static_and_named_axes() {
        assert_eq!(
            export(&format!("{BASE}dynamic = []\n"))["dynamic_axes"],
            json!({})
        );
        assert_eq!(
            export(&format!("{BASE}dynamic = [\"batch\", \"depth\"]\n"))["dynamic_axes"],
            json!({ "0": "batch", "2": "depth" })
        );
        assert!(
            error(&format!("{BASE}dynamic = [\"hieght\"]\n")).contains("did you mean `height`?")
        );
        assert!(error(&format!("{BASE}dynamic = [\"batch\", \"batch\"]\n")).contains("twice"));
        assert!(
            error("checkpoint = \"c\"\ninput_shape = [3, 224, 224]\ndynamic = [\"depth\"]\n")
                .contains("height, width")
        );
    }

    #[test]
    fn invalid_values_are_refused_with_a_hint() {
        assert!(error("checkpoint = \"c\"\ninput_shape = []\n").contains("input_shape has 0 axes"));
        assert!(error("checkpoint = \"c\"\ninput_shape = [1, 0, 96]\n").contains("dimension of 0"));
        assert!(error("checkpoint = \"c\"\ninput_shape = [1, -1]\n").contains("dimension of -1"));
        assert!(
            error(&format!("{BASE}exporter = \"dynamic\"\n")).contains("did you mean `dynamo`?")
        );
        assert!(error(&format!("{BASE}opset = 3\n")).contains("opset 3"));
        assert!(error(&format!("{BASE}verify = {{ rtol = -1.0 }}\n")).contains("not negative"));
        assert!(
            error(&format!("{BASE}external_data = \"sometimes\"\n"))
                .contains("true, false or \"auto\"")
        );
        assert!(
            error(&format!("{BASE}input_names = [\"a\", \"b\"]\n")).contains("one input tensor")
        );
        assert!(
            error("checkpoint = \"c\"\nmodel = \"SwinUNETR\"\ninput_shape = [1]\n")
                .contains("no `:Name`")
        );
        assert!(
            error("checkpoint = \"c\"\nmodel = \"monai nets:X\"\ninput_shape = [1]\n")
                .contains("not a module path")
        );
        assert!(
            error("checkpoint = \"c\"\ninput_shape = [1]\noutput = \"../elsewhere.onnx\"\n")
                .contains("outside the project")
        );
    }

    #[test]
    fn verify_false_skips_verification() {
        assert_eq!(
            export(&format!("{BASE}verify = false\n"))["verify"],
            Value::Null
        );
    }

    #[test]
    fn the_request_names_the_temporary_paths() {
        let dir = tempfile::tempdir().unwrap();
        let kind = parse_stage(
            "checkpoint = \"ckpt.pth\"\nmodel = \"m.py:Net\"\ninput_shape = [3, 8, 8]\n",
        )
        .unwrap();
        let mut context = InvocationContext::sample(&dir.path().to_string_lossy(), "/py");
        context.inputs = BTreeMap::from([
            ("checkpoint".to_string(), PathBuf::from("ckpt.pth")),
            ("model_file".to_string(), PathBuf::from("m.py")),
        ]);
        context.outputs = kind
            .outputs()
            .iter()
            .map(|o| {
                (
                    o.key.clone(),
                    PathBuf::from(".pochi/tmp")
                        .join(&o.key)
                        .join(o.path.file_name().unwrap()),
                )
            })
            .collect();
        let action = kind.action(&context).unwrap();
        assert_eq!(action.argv[..2], ["/py", "-I"]);
        assert!(action.argv[2].ends_with("export.py"));
        let request: Value =
            serde_json::from_slice(&std::fs::read(&action.argv[3]).unwrap()).unwrap();
        assert_eq!(request["model"], "m.py:Net");
        assert_eq!(request["outputs"]["onnx"], ".pochi/tmp/onnx/onnx.onnx");
        assert_eq!(
            PathBuf::from(&action.argv[4]),
            answer_file(&context),
            "the answer goes to the run's scratch directory"
        );
        assert!(action.inputs.contains(&PathBuf::from("ckpt.pth")));
    }

    #[test]
    fn failures_read_the_workers_answer() {
        let dir = tempfile::tempdir().unwrap();
        let kind = parse_stage(BASE).unwrap();
        let mut context = InvocationContext::sample(&dir.path().to_string_lossy(), "/py");
        context.scratch = dir.path().to_path_buf();
        // Killed with no answer: out of memory, with the peak from the progress file.
        std::fs::write(
            progress_file(&context),
            r#"{"phase": "the ONNX export", "peak_rss_bytes": 7516192768}"#,
        )
        .unwrap();
        let error = kind.explain_failure(
            &context,
            "signal 9 (killed; out of memory?)",
            StageError::new("`/py` failed").with_log(".pochi/log"),
        );
        assert!(
            error
                .message
                .contains("during the ONNX export after a peak of 7.00 GiB"),
            "{error:?}"
        );
        let hint = error.hint.clone().unwrap_or_default();
        assert!(
            hint.contains("device = \"cpu\"") && hint.contains("resources = { memory"),
            "{error:?}"
        );
        assert_eq!(error.log, Some(PathBuf::from(".pochi/log")));
        // An answer: its error and hint.
        std::fs::write(answer_file(&context), r#"{"ok": false, "kind": "state_dict", "error": "missing: a.weight", "hint": "check model_args", "traceback": "T"}"#).unwrap();
        let error = kind.explain_failure(&context, "exit status 1", StageError::new("x"));
        assert_eq!(error.message, "missing: a.weight");
        assert_eq!(error.hint.as_deref(), Some("check model_args"));
        assert_eq!(
            kind.verify(&context).unwrap_err().message,
            "missing: a.weight"
        );
        std::fs::write(answer_file(&context), r#"{"ok": true}"#).unwrap();
        assert!(kind.verify(&context).is_ok());
    }
}
