//! The `export` kind's keys as written and their checks: the model reference, the input
//! shape and its dynamic axes, the opset, the exporter, the verification tolerances, the
//! weights file, and the outputs they declare.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use toml::Spanned;
use toml::de::DeValue;

use super::Export;
use crate::kinds::StageKind;
use crate::kinds::request::{Choice, choice};
use crate::pipeline::parse_api::Parser;
use crate::pipeline::{NamedInput, NamedOutput, SpanError, suggest};

const DEFAULT_RTOL: f64 = 1e-3;
const DEFAULT_ATOL: f64 = 1e-5;

/// `kind = "export"`: a PyTorch checkpoint to ONNX, verified against PyTorch.
#[derive(Debug, Deserialize, JsonSchema)]
pub(super) struct ExportKeys {
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
pub(super) struct Tolerances {
    rtol: f64,
    atol: f64,
}

/// Where the model comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ModelRef {
    /// `package.module:Name`
    Import(String),
    /// `file.py:Name`: the file is the input `model_file`.
    File { name: String },
}

choice! {
    /// The exporter torch uses.
    pub(super) enum Exporter {
        /// TorchScript-based.
        Legacy = "legacy",
        /// torch.export-based.
        Dynamo = "dynamo",
    }
}

/// The ONNX opset, 7 to 30.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub(super) struct Opset(u32);

impl Opset {
    const DEFAULT: Opset = Opset(17);

    fn parse(parser: &Parser, opset: &Spanned<i64>) -> Result<Opset, SpanError> {
        match u32::try_from(*opset.get_ref()) {
            Ok(n) if (7..=30).contains(&n) => Ok(Opset(n)),
            _ => Err(parser
                .src
                .error(
                    opset.span(),
                    format!(
                        "opset {} is not an ONNX opset pochi can export",
                        opset.get_ref()
                    ),
                )
                .with_help("use an opset from 7 to 30; 17 is the default")),
        }
    }
}

/// Where the weights go: `"auto"` (one file, a clear error past 2 GB), `false` (one file)
/// or `true` (a separate `<name>.onnx.data`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WeightsFile {
    Auto,
    Inline,
    Separate,
}

impl WeightsFile {
    fn parse(parser: &Parser, written: &Spanned<ExternalData>) -> Result<Self, SpanError> {
        match written.get_ref() {
            ExternalData::Bool(false) => Ok(WeightsFile::Inline),
            ExternalData::Bool(true) => Ok(WeightsFile::Separate),
            ExternalData::Mode(mode) if mode == "auto" => Ok(WeightsFile::Auto),
            ExternalData::Mode(mode) => Err(parser
                .src
                .error(
                    written.span(),
                    format!("`external_data = \"{mode}\"` is not a setting"),
                )
                .with_help("use true, false or \"auto\"")),
        }
    }

    /// As the script and the key read it: "auto", true or false.
    pub(super) fn json(self) -> Value {
        match self {
            WeightsFile::Auto => json!("auto"),
            WeightsFile::Inline => json!(false),
            WeightsFile::Separate => json!(true),
        }
    }
}

/// The model as `model` names it, and the Python file it needs as an input.
fn model(
    parser: &Parser,
    model: &Spanned<String>,
    inputs: &mut Vec<NamedInput>,
) -> Result<ModelRef, SpanError> {
    let (reference, file) = parse_model(model.get_ref())
        .map_err(|(message, help)| parser.src.error(model.span(), message).with_help(help))?;
    if let Some(file) = file {
        inputs.push(parser.input("model_file", &Spanned::new(model.span(), file))?);
    }
    Ok(reference)
}

/// The input axes `dynamic` makes dynamic (input axis -> name); `batch` when not given.
fn dynamic_axes(
    parser: &Parser,
    dynamic: Option<&Spanned<Vec<Spanned<String>>>>,
    rank: usize,
) -> Result<BTreeMap<usize, String>, SpanError> {
    let Some(list) = dynamic else {
        return Ok(BTreeMap::from([(0, "batch".to_string())]));
    };
    let mut axes = BTreeMap::new();
    for name in list.get_ref() {
        let found = axes_named(name.get_ref(), rank)
            .map_err(|(message, help)| parser.src.error(name.span(), message).with_help(help))?;
        for (axis, axis_name) in found {
            if axes.insert(axis, axis_name).is_some() {
                return Err(parser.src.error(
                    name.span(),
                    format!("axis `{}` is named twice in `dynamic`", name.get_ref()),
                ));
            }
        }
    }
    Ok(axes)
}

/// `input_names`: one name, since the stage feeds the model one tensor.
fn input_names(
    parser: &Parser,
    written: &Option<Spanned<Vec<String>>>,
) -> Result<Option<Vec<String>>, SpanError> {
    let names = names(written, "input_names", parser)?;
    if let (Some(list), Some(spanned)) = (&names, written)
        && list.len() != 1
    {
        return Err(parser
            .src
            .error(
                spanned.span(),
                "the export stage feeds the model one input tensor: give one name",
            )
            .with_help("e.g. input_names = [\"input\"]"));
    }
    Ok(names)
}

pub(super) fn parse(
    parser: &Parser,
    value: &Spanned<DeValue>,
) -> Result<Box<dyn StageKind>, SpanError> {
    let keys: ExportKeys = parser.deserialize(value)?;
    let mut inputs = vec![parser.input("checkpoint", &keys.checkpoint)?];
    let model = match &keys.model {
        None => None,
        Some(written) => Some(model(parser, written, &mut inputs)?),
    };
    let input_shape = parse_shape(keys.input_shape.get_ref()).map_err(|(message, help)| {
        parser
            .src
            .error(keys.input_shape.span(), message)
            .with_help(help)
    })?;
    let dynamic_axes = dynamic_axes(parser, keys.dynamic.as_ref(), input_shape.len())?;
    let opset = match &keys.opset {
        None => Opset::DEFAULT,
        Some(opset) => Opset::parse(parser, opset)?,
    };
    let input_names = input_names(parser, &keys.input_names)?;
    let output_names = names(&keys.output_names, "output_names", parser)?;
    let exporter = match &keys.exporter {
        None => Exporter::Legacy,
        Some(exporter) => Exporter::parse(parser, exporter, "exporter")?,
    };
    let verify = parse_verify(keys.verify.as_ref()).map_err(|(span, message)| {
        parser
            .src
            .error(span, message)
            .with_help("verify = { rtol = 1e-3, atol = 1e-5 } (the default) or verify = false")
    })?;
    let weights_file = match &keys.external_data {
        None => WeightsFile::Auto,
        Some(written) => WeightsFile::parse(parser, written)?,
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
    let outputs = declared_outputs(parser, &onnx_path, weights_file == WeightsFile::Separate)?;
    Ok(Box::new(Export {
        model_text: keys.model.as_ref().map(|m| m.get_ref().clone()),
        model,
        model_args: keys.model_args,
        input_shape,
        dynamic_axes,
        opset,
        input_names,
        output_names,
        exporter,
        verify,
        seed: keys.seed,
        weights_file,
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
