//! The `quantize` stage kind: bakes a precision into an ONNX model on the CPU, through the
//! embedded script (`src/kinds/quantize/script.py`): fp16/bf16 with ModelOpt
//! AutoCast, int8/fp8 with ModelOpt's ONNX PTQ (explicit Q/DQ) calibrated on a dataset
//! stage's `.npy`. Outputs: the ONNX (primary) and a manifest (JSON). The calibration
//! data is an input, so its digest is in the fingerprint: new data recalibrates, the same
//! data never does.

use std::collections::BTreeMap;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};
use toml::Spanned;
use toml::de::DeValue;

use super::StageKind;
use super::request::{Choice, Program, RequestStage, choice};
use super::{InvocationContext, KindInfo, MachineFacts, Requirements, StageError, Tool};
use crate::pipeline::parse_api::Parser;
use crate::pipeline::{NamedInput, NamedOutput, SpanError};
use crate::toolchain::scripts::Script;

pub(crate) static INFO: KindInfo = KindInfo {
    name: "quantize",
    keys: super::keys_of::<QuantizeKeys>,
    parse,
    scripts: &[SCRIPT],
    schema: |generator| generator.subschema_for::<QuantizeKeys>(),
};

/// Bakes fp16/bf16 (AutoCast) or int8/fp8 (PTQ with Q/DQ) into an ONNX model on the CPU.
pub(crate) const SCRIPT: Script = Script {
    name: "quantize.py",
    source: include_str!("script.py"),
};

const MODULES: &[&str] = &["numpy", "onnx", "onnxruntime", "modelopt"];

/// `kind = "quantize"`: precision baked into the ONNX.
#[derive(Debug, Deserialize, JsonSchema)]
struct QuantizeKeys {
    /// The ONNX model: "@stage" (e.g. an export) or a path.
    #[schemars(with = "String")]
    onnx: Spanned<String>,
    /// fp16 | bf16 (ModelOpt AutoCast, I/O kept fp32) | int8 | fp8 (ModelOpt PTQ, Q/DQ).
    #[schemars(with = "String")]
    precision: Spanned<String>,
    /// Required for int8 and fp8: { data = "@dataset_stage", samples, batch_size, method }.
    #[schemars(with = "Option<CalibrationKeys>")]
    calibration: Option<Spanned<CalibrationKeys>>,
    /// Op types (e.g. "Softmax") or node names kept in fp32 for accuracy.
    #[serde(default)]
    keep_fp32: Vec<String>,
    /// An existing TensorRT calibration cache to import instead of calibrating (int8).
    #[schemars(with = "Option<String>")]
    calibration_cache: Option<Spanned<String>>,
    /// int8/fp8 only: the type of what is not quantized, "fp16" (ModelOpt's default) or
    /// "fp32" (faster to produce on the CPU, larger engine).
    #[schemars(with = "Option<String>")]
    high_precision: Option<Spanned<String>>,
    /// fp16/bf16 only: whether AutoCast first runs the model (on random data, keeping every
    /// intermediate tensor) to keep nodes whose values exceed `data_max` in fp32 (the
    /// default, true). false passes ModelOpt `data_max = inf` and skips that run: large 3-D
    /// models need it on a small machine (the full SwinUNETR took over 20 GB).
    #[schemars(with = "Option<bool>")]
    range_check: Option<Spanned<bool>>,
    /// fp16/bf16 only: [H, W] (or [D, H, W]), the spatial size the range check (and the
    /// check of the result) runs the model at when the ONNX's spatial axes are dynamic;
    /// without it such a model is an error before AutoCast runs it at 1 x 1.
    #[schemars(with = "Option<Vec<u64>>")]
    input_size: Option<Spanned<Vec<u64>>>,
    /// Where the ONNX goes (default "{build_dir}/<stage>.onnx"); the manifest goes next to
    /// it as <stem>.manifest.json.
    #[schemars(with = "Option<String>")]
    output: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct CalibrationKeys {
    /// The calibration data: a dataset stage ("@calib") or a float32 .npy of N samples.
    data: String,
    /// How many samples to use (default: all).
    samples: Option<u64>,
    /// Calibration batch size (default 1).
    batch_size: Option<u64>,
    /// "entropy" (the default), "max", "minmax", "percentile", ...
    method: Option<String>,
}

#[derive(Debug)]
struct Quantize {
    precision: Precision,
    calibration: Calibration,
    keep_fp32: Vec<String>,
    high_precision: HighPrecision,
    /// `range_check = false` (None: ModelOpt's default range check).
    range_check: Option<bool>,
    /// `input_size = [H, W]` or `[D, H, W]`, for a model with dynamic spatial axes.
    input_size: Option<Vec<u64>>,
    inputs: Vec<NamedInput>,
    outputs: Vec<NamedOutput>,
}

choice! {
    /// The precision baked into the ONNX.
    enum Precision {
        Fp16 = "fp16",
        Bf16 = "bf16",
        Int8 = "int8",
        Fp8 = "fp8",
    }
}

impl Precision {
    /// int8 and fp8: ModelOpt's PTQ, calibrated on data.
    fn calibrated(self) -> bool {
        matches!(self, Precision::Int8 | Precision::Fp8)
    }

    /// fp16 and bf16: ModelOpt's AutoCast.
    fn autocast(self) -> bool {
        !self.calibrated()
    }
}

choice! {
    /// How the calibration computes its ranges.
    enum Method {
        Entropy = "entropy",
        Max = "max",
        MinMax = "minmax",
        Percentile = "percentile",
        AwqClip = "awq_clip",
        RtnDq = "rtn_dq",
    }
}

choice! {
    /// The type of what int8/fp8 leaves unquantized.
    enum HighPrecision {
        Fp16 = "fp16",
        Fp32 = "fp32",
    }
}

impl HighPrecision {
    fn parse(parser: &Parser, written: &Spanned<String>) -> Result<Self, SpanError> {
        HighPrecision::named(written.get_ref()).ok_or_else(|| {
            parser
                .src
                .error(
                    written.span(),
                    format!(
                        "`high_precision = \"{}\"` is not a setting",
                        written.get_ref()
                    ),
                )
                .with_help("use \"fp16\" (the default) or \"fp32\"")
        })
    }
}

/// The calibration's settings (int8/fp8 with `calibration`; none otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Calibration {
    samples: Option<u64>,
    batch_size: u64,
    method: Option<Method>,
}

impl Calibration {
    const NONE: Calibration = Calibration {
        samples: None,
        batch_size: 1,
        method: None,
    };

    /// `calibration = { ... }` checked against the precision; its data becomes the
    /// `calibration_data` input.
    fn parse(
        parser: &Parser,
        keys: &QuantizeKeys,
        precision: Precision,
        inputs: &mut Vec<NamedInput>,
    ) -> Result<Calibration, SpanError> {
        let src = parser.src;
        let name = precision.name();
        let calibration = match (&keys.calibration, precision.calibrated()) {
            (None, true) if keys.calibration_cache.is_none() => {
                return Err(src
                    .error(keys.precision.span(), format!("{name} needs calibration data"))
                    .with_help("add calibration = { data = \"@calib\", samples = 500, batch_size = 1, method = \"entropy\" } with a dataset stage `calib`"));
            }
            (Some(calibration), false) => {
                return Err(src
                    .error(calibration.span(), format!("{name} needs no calibration"))
                    .with_help("remove `calibration`; it is for int8 and fp8"));
            }
            (Some(calibration), true) => calibration,
            _ => return Ok(Calibration::NONE),
        };
        let span = calibration.span();
        let c = calibration.get_ref();
        inputs.push(parser.input(
            "calibration_data",
            &Spanned::new(span.clone(), c.data.clone()),
        )?);
        if c.samples == Some(0) || c.batch_size == Some(0) {
            return Err(src.error(span, "`samples` and `batch_size` must be 1 or more"));
        }
        let method = match &c.method {
            None => Method::Entropy,
            Some(m) => Method::parse(parser, &Spanned::new(span, m.clone()), "calibration method")?,
        };
        Ok(Calibration {
            samples: c.samples,
            batch_size: c.batch_size.unwrap_or(1),
            method: Some(method),
        })
    }
}

fn parse(parser: &Parser, value: &Spanned<DeValue>) -> Result<Box<dyn StageKind>, SpanError> {
    let keys: QuantizeKeys = parser.deserialize(value)?;
    let mut inputs = vec![parser.input("onnx", &keys.onnx)?];
    let precision = Precision::parse(parser, &keys.precision, "precision")?;
    let calibration = Calibration::parse(parser, &keys, precision, &mut inputs)?;
    if let Some(cache) = &keys.calibration_cache {
        if precision != Precision::Int8 {
            return Err(parser
                .src
                .error(cache.span(), "`calibration_cache` is for int8")
                .with_help("remove it, or set precision = \"int8\""));
        }
        inputs.push(parser.input("calibration_cache", cache)?);
    }
    let high_precision = match &keys.high_precision {
        None => HighPrecision::Fp16,
        Some(written) => HighPrecision::parse(parser, written)?,
    };
    let input_size = autocast_keys(parser, &keys, precision)?;
    let outputs = super::request::primary_and_manifest(
        parser,
        value.span(),
        keys.output.as_ref(),
        "onnx",
        "onnx",
    )?;
    Ok(Box::new(Quantize {
        range_check: keys.range_check.as_ref().map(|c| *c.get_ref()),
        input_size,
        precision,
        calibration,
        keep_fp32: keys.keep_fp32,
        high_precision,
        inputs,
        outputs,
    }))
}

/// `range_check` and `input_size`, which only AutoCast (fp16, bf16) takes; the size.
fn autocast_keys(
    parser: &Parser,
    keys: &QuantizeKeys,
    precision: Precision,
) -> Result<Option<Vec<u64>>, SpanError> {
    let autocast = precision.autocast();
    let spans = [
        ("range_check", keys.range_check.as_ref().map(Spanned::span)),
        ("input_size", keys.input_size.as_ref().map(Spanned::span)),
    ];
    for (key, span) in spans {
        if let Some(span) = span.filter(|_| !autocast) {
            return Err(parser
                .src
                .error(span, format!("`{key}` is for fp16 and bf16 (AutoCast)"))
                .with_help("remove it"));
        }
    }
    let Some(size) = &keys.input_size else {
        return Ok(None);
    };
    let sizes = size.get_ref();
    if matches!(sizes.len(), 2 | 3) && sizes.iter().all(|&n| n > 0) {
        return Ok(Some(sizes.clone()));
    }
    Err(parser
        .src
        .error(
            size.span(),
            "`input_size` is [H, W] or [D, H, W], sizes of 1 or more",
        )
        .with_help("for example input_size = [224, 224]"))
}

impl Quantize {
    fn request_for(&self, context: &InvocationContext) -> Value {
        let path = |map: &BTreeMap<String, PathBuf>, key: &str| {
            map.get(key).map(|p| p.to_string_lossy().into_owned())
        };
        let calibration = path(&context.inputs, "calibration_data").map(|data| {
            json!({
                "data": data,
                "samples": self.calibration.samples,
                "batch_size": self.calibration.batch_size,
                "method": self.calibration.method.map(Choice::name),
            })
        });
        json!({
            "protocol": 1,
            "onnx": path(&context.inputs, "onnx"),
            "precision": self.precision.name(),
            "calibration": calibration,
            "keep_fp32": self.keep_fp32,
            "calibration_cache": path(&context.inputs, "calibration_cache"),
            "high_precision": self.high_precision.name(),
            "range_check": self.range_check,
            "input_size": self.input_size,
            "outputs": {
                "onnx": path(&context.outputs, "onnx"),
                "manifest": path(&context.outputs, "manifest"),
            },
        })
    }
}

impl RequestStage for Quantize {
    fn kind(&self) -> &'static str {
        "quantize"
    }

    fn inputs(&self) -> &[NamedInput] {
        &self.inputs
    }

    fn outputs(&self) -> &[NamedOutput] {
        &self.outputs
    }

    fn params(&self, _host: &MachineFacts) -> Value {
        let mut params = json!({
            "precision": self.precision.name(),
            "samples": self.calibration.samples,
            "batch_size": self.calibration.batch_size,
            "method": self.calibration.method.map(Choice::name),
            "keep_fp32": self.keep_fp32,
            "high_precision": self.high_precision.name(),
            "worker": SCRIPT.hash(),
        });
        // Only when given, so that other stages' keys stay as they were.
        if let Some(check) = self.range_check {
            params["range_check"] = json!(check);
        }
        if let Some(size) = &self.input_size {
            params["input_size"] = json!(size);
        }
        params
    }

    fn requirements(&self) -> Requirements {
        Requirements {
            tool: Tool::Python,
            python_modules: MODULES.to_vec(),
            ..Requirements::default()
        }
    }

    fn program(&self) -> Program {
        Program::Python(&SCRIPT)
    }

    fn request(&self, context: &InvocationContext) -> Result<Value, StageError> {
        Ok(self.request_for(context))
    }
}
