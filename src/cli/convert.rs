//! `pochi convert`: pochitrain's ONNX -> TensorRT conversion as one command. It writes a
//! pipeline (calibration dataset when --int8, quantize when --fp16/--int8, engine) into
//! `.pochi/oneshot/<hash>/`, builds it with the same engine as `pochi build` (cached), and
//! copies the engine next to the model as `<stem>.engine`, `<stem>_fp16.engine` or
//! `<stem>_int8.engine` (or to `-o`). Unlike pochitrain it exits non-zero on any failure,
//! including a machine without TensorRT or a GPU: the user asked for an engine.

use super::output::say;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

use super::output::failure;
use crate::build::BuildOptions;

#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// The ONNX model.
    model: PathBuf,
    /// Build an fp16 engine (the ONNX is converted to fp16 first, as TensorRT 11 needs).
    #[arg(long, conflicts_with = "int8")]
    fp16: bool,
    /// Build an int8 engine (explicit Q/DQ from ModelOpt PTQ, calibrated on --calib-data).
    #[arg(long, requires = "calib_data")]
    int8: bool,
    /// Calibration data: a class-per-folder image directory (preprocessed with the
    /// ImageNet transform: resize, center crop to the input size, normalize) or a float32
    /// .npy of N samples already preprocessed.
    #[arg(long, value_name = "DIR|FILE.npy")]
    calib_data: Option<PathBuf>,
    /// Calibration samples.
    #[arg(long, default_value_t = 500, value_name = "N")]
    calib_samples: u64,
    /// Calibration batch size.
    #[arg(long, default_value_t = 1, value_name = "N")]
    calib_batch_size: u64,
    /// The spatial size (H W or D H W); required when the ONNX has dynamic spatial axes.
    #[arg(long, num_args = 2..=3, value_name = "SIZE")]
    input_size: Option<Vec<u64>>,
    /// The TensorRT workspace limit in bytes (default 1 GiB).
    #[arg(long, value_name = "BYTES", default_value_t = crate::kinds::engine::DEFAULT_WORKSPACE)]
    workspace_size: u64,
    /// Where to write the engine (default: next to the model, <stem>[_fp16|_int8].engine).
    #[arg(short, long, value_name = "OUT.engine")]
    output: Option<PathBuf>,
}

impl ConvertArgs {
    fn precision(&self) -> &'static str {
        if self.int8 {
            "int8"
        } else if self.fp16 {
            "fp16"
        } else {
            "fp32"
        }
    }
}

/// pochitrain's engine name for a model and precision.
pub fn engine_name(model: &Path, precision: &str) -> PathBuf {
    let stem = model
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let name = match precision {
        "fp32" => format!("{stem}.engine"),
        other => format!("{stem}_{other}.engine"),
    };
    model.with_file_name(name)
}

pub fn run(args: ConvertArgs) -> miette::Result<ExitCode> {
    let model = std::path::absolute(&args.model).unwrap_or_else(|_| args.model.clone());
    if !model.is_file() {
        return Err(failure(
            format!("the model {} does not exist", args.model.display()),
            "give the path of an .onnx file",
        ));
    }
    let calib = match &args.calib_data {
        Some(path) if args.int8 => {
            let absolute = std::path::absolute(path).unwrap_or_else(|_| path.clone());
            if !absolute.exists() {
                return Err(failure(
                    format!("the calibration data {} does not exist", path.display()),
                    "give a folder of class-per-folder images or a .npy file",
                ));
            }
            Some(absolute)
        }
        _ => None,
    };
    let precision = args.precision();
    let output = args
        .output
        .clone()
        .unwrap_or_else(|| engine_name(&args.model, precision));
    let text = pipeline_text(&args, &model, calib.as_deref())?;
    let dir = super::oneshot::write(&text)?;
    let workspace = super::oneshot::load(&dir)?;
    let options = BuildOptions {
        targets: vec!["engine".into()],
        require_all: true,
        ..BuildOptions::default()
    };
    let summary = super::build::run_build(&workspace, &options)?;
    if summary.interrupted {
        return Ok(super::signals::interrupted_exit_code());
    }
    if !summary.ok {
        return Err(failure(
            "the conversion failed; no engine was written",
            "the failing stage and its error are above",
        ));
    }
    let built = dir.join("out").join("model.engine");
    let bytes = std::fs::read(&built).map_err(|e| {
        failure(
            format!("cannot read the built engine {}: {e}", built.display()),
            "report this as a bug",
        )
    })?;
    crate::fsutil::write_atomic(&output, &bytes).map_err(|e| {
        failure(
            format!("cannot write {}: {e}", output.display()),
            "check the -o path",
        )
    })?;
    say!(
        "pochi: wrote {} ({precision}; manifest: {})",
        output.display(),
        dir.join("out").join("model.manifest.json").display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The pipeline, as TOML (serialized, so every value is escaped correctly).
fn pipeline_text(args: &ConvertArgs, model: &Path, calib: Option<&Path>) -> miette::Result<String> {
    use toml::{Table, Value};
    let path = |p: &Path| Value::String(p.to_string_lossy().into_owned());
    let ints = |v: &[u64]| Value::Array(v.iter().map(|&n| Value::Integer(n as i64)).collect());
    let mut stages = Table::new();
    let precision = args.precision();
    let mut engine_onnx = path(model);
    if let Some(calib) = calib {
        let data = if calib.is_dir() {
            // ImageNet-style evaluation preprocessing at the model's input size (the
            // ONNX input's H and W, or --input-size).
            let crop = match args.input_size.as_deref() {
                Some([.., h, w]) => [*h, *w],
                Some([n]) => [*n, *n],
                _ => super::oneshot::image_input_size(model)?,
            };
            let transform = super::oneshot::ImageTransform {
                resize: crop[0].max(crop[1]) * 256 / 224,
                crop,
                mean: super::oneshot::IMAGENET_MEAN.to_vec(),
                std: super::oneshot::IMAGENET_STD.to_vec(),
            };
            let dataset = super::oneshot::dataset_stage(
                calib,
                Some(args.calib_samples),
                42,
                Some(&transform),
            );
            stages.insert("calib".into(), dataset);
            Value::String("@calib".into())
        } else {
            path(calib)
        };
        let mut calibration = Table::new();
        calibration.insert("data".into(), data);
        calibration.insert("samples".into(), Value::Integer(args.calib_samples as i64));
        calibration.insert(
            "batch_size".into(),
            Value::Integer(args.calib_batch_size as i64),
        );
        calibration.insert("method".into(), "entropy".into());
        let mut quantize = Table::new();
        quantize.insert("kind".into(), "quantize".into());
        quantize.insert("onnx".into(), path(model));
        quantize.insert("precision".into(), "int8".into());
        quantize.insert("calibration".into(), Value::Table(calibration));
        quantize.insert("output".into(), "out/model_int8.onnx".into());
        stages.insert("quantize".into(), Value::Table(quantize));
        engine_onnx = Value::String("@quantize".into());
    } else if precision == "fp16" {
        let mut quantize = Table::new();
        quantize.insert("kind".into(), "quantize".into());
        quantize.insert("onnx".into(), path(model));
        quantize.insert("precision".into(), "fp16".into());
        quantize.insert("output".into(), "out/model_fp16.onnx".into());
        stages.insert("quantize".into(), Value::Table(quantize));
        engine_onnx = Value::String("@quantize".into());
    }
    let mut engine = Table::new();
    engine.insert("kind".into(), "engine".into());
    engine.insert("onnx".into(), engine_onnx);
    engine.insert("precision".into(), precision.into());
    engine.insert("batch".into(), Value::Integer(1));
    engine.insert(
        "workspace".into(),
        Value::Integer(args.workspace_size as i64),
    );
    if let Some(size) = &args.input_size {
        engine.insert("input_size".into(), ints(size));
    }
    engine.insert("output".into(), "out/model.engine".into());
    stages.insert("engine".into(), Value::Table(engine));
    let mut pipeline = Table::new();
    pipeline.insert("name".into(), "convert".into());
    pipeline.insert("build_dir".into(), "out".into());
    super::oneshot::pipeline_text("convert", pipeline, stages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_names_follow_pochitrain() {
        let model = Path::new("models/resnet18.onnx");
        assert_eq!(
            engine_name(model, "fp32"),
            Path::new("models/resnet18.engine")
        );
        assert_eq!(
            engine_name(model, "fp16"),
            Path::new("models/resnet18_fp16.engine")
        );
        assert_eq!(
            engine_name(model, "int8"),
            Path::new("models/resnet18_int8.engine")
        );
    }
}
