//! The `quantize` stage kind: bakes a precision into an ONNX model on the CPU, through the
//! embedded worker (`src/kinds/quantize/worker.py`): fp16/bf16 with ModelOpt
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
use super::worker::{Program, WorkerStage};
use super::{Host, InvocationContext, KindInfo, Requirements, StageError, Tool};
use crate::pipeline::parse_api::Parser;
use crate::pipeline::{NamedInput, NamedOutput, SpanError, suggest};
use crate::toolchain::workers::Worker;

pub static INFO: KindInfo = KindInfo {
    name: "quantize",
    keys: super::keys_of::<QuantizeKeys>,
    parse,
    workers: &[WORKER],
    schema: |generator| generator.subschema_for::<QuantizeKeys>(),
};

/// Bakes fp16/bf16 (AutoCast) or int8/fp8 (PTQ with Q/DQ) into an ONNX model on the CPU.
pub const WORKER: Worker = Worker {
    name: "quantize.py",
    source: include_str!("worker.py"),
};

const MODULES: &[&str] = &["numpy", "onnx", "onnxruntime", "modelopt"];
const PRECISIONS: &[&str] = &["fp16", "bf16", "int8", "fp8"];
const METHODS: &[&str] = &[
    "entropy",
    "max",
    "minmax",
    "percentile",
    "awq_clip",
    "rtn_dq",
];

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
    precision: &'static str,
    samples: Option<u64>,
    batch_size: u64,
    method: Option<String>,
    keep_fp32: Vec<String>,
    high_precision: &'static str,
    /// `range_check = false` (None: ModelOpt's default range check).
    range_check: Option<bool>,
    /// `input_size = [H, W]` or `[D, H, W]`, for a model with dynamic spatial axes.
    input_size: Option<Vec<u64>>,
    inputs: Vec<NamedInput>,
    outputs: Vec<NamedOutput>,
}

fn parse(parser: &Parser, value: &Spanned<DeValue>) -> Result<Box<dyn StageKind>, SpanError> {
    let keys: QuantizeKeys = parser.deserialize(value)?;
    let src = parser.src;
    let mut inputs = vec![parser.input("onnx", &keys.onnx)?];
    let precision = match PRECISIONS
        .iter()
        .find(|p| **p == keys.precision.get_ref().as_str())
    {
        Some(p) => *p,
        None => {
            return Err(src
                .error(
                    keys.precision.span(),
                    format!("unknown precision `{}`", keys.precision.get_ref()),
                )
                .with_help(suggest::hint(keys.precision.get_ref(), PRECISIONS)));
        }
    };
    let calibrated = matches!(precision, "int8" | "fp8");
    let (mut samples, mut batch_size, mut method) = (None, 1, None);
    match (&keys.calibration, calibrated) {
        (None, true) if keys.calibration_cache.is_none() => {
            return Err(src
                .error(keys.precision.span(), format!("{precision} needs calibration data"))
                .with_help("add calibration = { data = \"@calib\", samples = 500, batch_size = 1, method = \"entropy\" } with a dataset stage `calib`"));
        }
        (Some(calibration), false) => {
            return Err(src
                .error(
                    calibration.span(),
                    format!("{precision} needs no calibration"),
                )
                .with_help("remove `calibration`; it is for int8 and fp8"));
        }
        (Some(calibration), true) => {
            let c = calibration.get_ref();
            inputs.push(parser.input(
                "calibration_data",
                &Spanned::new(calibration.span(), c.data.clone()),
            )?);
            if c.samples == Some(0) || c.batch_size == Some(0) {
                return Err(src.error(
                    calibration.span(),
                    "`samples` and `batch_size` must be 1 or more",
                ));
            }
            samples = c.samples;
            batch_size = c.batch_size.unwrap_or(1);
            if let Some(m) = &c.method
                && !METHODS.contains(&m.as_str())
            {
                return Err(src
                    .error(
                        calibration.span(),
                        format!("unknown calibration method `{m}`"),
                    )
                    .with_help(suggest::hint(m, METHODS)));
            }
            method = Some(c.method.clone().unwrap_or_else(|| "entropy".into()));
        }
        _ => {}
    }
    if let Some(cache) = &keys.calibration_cache {
        if precision != "int8" {
            return Err(src
                .error(cache.span(), "`calibration_cache` is for int8")
                .with_help("remove it, or set precision = \"int8\""));
        }
        inputs.push(parser.input("calibration_cache", cache)?);
    }
    let high_precision = match &keys.high_precision {
        None => "fp16",
        Some(h) => match h.get_ref().as_str() {
            "fp16" => "fp16",
            "fp32" => "fp32",
            other => {
                return Err(src
                    .error(
                        h.span(),
                        format!("`high_precision = \"{other}\"` is not a setting"),
                    )
                    .with_help("use \"fp16\" (the default) or \"fp32\""));
            }
        },
    };
    let input_size = autocast_keys(parser, &keys, precision)?;
    let outputs = super::worker::primary_and_manifest(
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
        samples,
        batch_size,
        method,
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
    precision: &str,
) -> Result<Option<Vec<u64>>, SpanError> {
    let autocast = matches!(precision, "fp16" | "bf16");
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
                "samples": self.samples,
                "batch_size": self.batch_size,
                "method": self.method,
            })
        });
        json!({
            "protocol": 1,
            "onnx": path(&context.inputs, "onnx"),
            "precision": self.precision,
            "calibration": calibration,
            "keep_fp32": self.keep_fp32,
            "calibration_cache": path(&context.inputs, "calibration_cache"),
            "high_precision": self.high_precision,
            "range_check": self.range_check,
            "input_size": self.input_size,
            "outputs": {
                "onnx": path(&context.outputs, "onnx"),
                "manifest": path(&context.outputs, "manifest"),
            },
        })
    }
}

impl WorkerStage for Quantize {
    fn kind(&self) -> &'static str {
        "quantize"
    }

    fn inputs(&self) -> &[NamedInput] {
        &self.inputs
    }

    fn outputs(&self) -> &[NamedOutput] {
        &self.outputs
    }

    fn params(&self, _host: &Host) -> Value {
        let mut params = json!({
            "precision": self.precision,
            "samples": self.samples,
            "batch_size": self.batch_size,
            "method": self.method,
            "keep_fp32": self.keep_fp32,
            "high_precision": self.high_precision,
            "worker": WORKER.hash(),
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
        Program::Python(&WORKER)
    }

    fn request(&self, context: &InvocationContext) -> Result<Value, StageError> {
        Ok(self.request_for(context))
    }
}
