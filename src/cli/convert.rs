//! `pochi convert`: pochitrain's ONNX -> TensorRT conversion as one command. It writes a
//! pipeline (calibration dataset when --int8, quantize when --fp16/--int8, engine) into
//! `.pochi/oneshot/<hash>/`, builds it with the same engine as `pochi build` (cached), and
//! copies the engine next to the model as `<stem>.engine`, `<stem>_fp16.engine` or
//! `<stem>_int8.engine` (or to `-o`). Unlike pochitrain it exits non-zero on any failure,
//! including a machine without TensorRT or a GPU: the user asked for an engine; there the
//! quantized ONNX (built on the CPU) is still built, and kept where the error says.

use super::output::note;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

use super::output::failure;

#[derive(Debug, Args)]
pub(super) struct ConvertArgs {
    /// The ONNX model.
    model: PathBuf,
    #[command(flatten)]
    cache: super::cache::CacheArgs,
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
    /// The calibration images' transform, as a `dataset` stage's `transform` list (like
    /// pochitrain's `val_transform`): a TOML file holding `transform = [...]`, or the list
    /// inline, e.g. '[{ resize = 256 }, { center_crop = 224 }, { normalize = { mean = [0.485,
    /// 0.456, 0.406], std = [0.229, 0.224, 0.225] } }]'. Default: the ImageNet transform at
    /// the input size.
    #[arg(long, value_name = "FILE.toml|TOML", requires = "calib_data")]
    transform: Option<String>,
    /// Calibration samples.
    #[arg(long, default_value_t = 500, value_name = "N")]
    calib_samples: u64,
    /// Calibration batch size.
    #[arg(long, default_value_t = 1, value_name = "N")]
    calib_batch_size: u64,
    /// The spatial size (H W or D H W); required when the ONNX has dynamic spatial axes
    /// (for the engine's profile and, with --fp16, for AutoCast's range check).
    #[arg(long, num_args = 2..=3, value_name = "SIZE")]
    input_size: Option<Vec<u64>>,
    /// --fp16: skip AutoCast's range check (a run of the model on random data that keeps
    /// nodes whose values exceed fp16's range in fp32). A model with dynamic spatial axes
    /// needs --input-size for the check, or this.
    #[arg(long, requires = "fp16")]
    no_range_check: bool,
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
pub(super) fn engine_name(model: &Path, precision: &str) -> PathBuf {
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

pub(super) fn run(args: ConvertArgs) -> miette::Result<ExitCode> {
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
    if args.transform.is_some() && calib.as_deref().is_some_and(|c| !c.is_dir()) {
        return Err(failure(
            "--transform applies to a folder of images; this --calib-data is a .npy file",
            "a .npy is used as it is: preprocess it before, or give the image folder",
        ));
    }
    let (text, transform) = pipeline_text(&args, &model, calib.as_deref())?;
    if let Some(transform) = transform {
        note!("calibration images: {transform}");
    }
    // Everything that can run here: on a machine without TensorRT or a GPU the engine is
    // unavailable, but the quantized ONNX is still built (on the CPU) and kept.
    let failed = |_: &_| {
        failure(
            "the conversion failed; no engine was written",
            "the failing stage and its error are above",
        )
    };
    let Some(super::oneshot::OneShot { dir, summary, .. }) =
        super::oneshot::build(&text, &args.cache, failed)?
    else {
        return Ok(super::signals::interrupted_exit_code());
    };
    if let Some(engine) = summary
        .stages
        .iter()
        .find(|s| s.stage == "engine" && s.status == crate::driver::StageStatus::Unavailable)
    {
        return Err(no_engine(&dir, engine.reason.as_deref(), precision));
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
    note!(
        "wrote {} ({precision}; manifest: {})",
        output.display(),
        dir.join("out").join("model.manifest.json").display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The engine could not be built here: what is missing, and where the quantized ONNX
/// that was built anyway is (also printed on a line of its own, unwrapped).
fn no_engine(dir: &Path, reason: Option<&str>, precision: &str) -> miette::Report {
    let reason = reason.unwrap_or("TensorRT or a GPU is missing");
    let kept = match precision {
        "fp32" => String::new(),
        other => {
            let onnx = dir.join("out").join(format!("model_{other}.onnx"));
            let onnx = std::path::absolute(&onnx).unwrap_or(onnx);
            note!("the {other} ONNX was built and kept: {}", onnx.display());
            format!("; the {other} ONNX was built and kept: {}", onnx.display())
        }
    };
    failure(
        format!(
            "no engine was written: the engine cannot be built on this machine: {reason}{kept}"
        ),
        "run the same command on a machine with TensorRT and an NVIDIA GPU",
    )
}

/// What the calibration images go through: `--transform` (a file holding `transform =
/// [...]`, or the list inline), or the ImageNet transform at the input `crop`. Returns the
/// list and a line saying which it is.
fn calibration_transform(
    given: Option<&str>,
    crop: impl FnOnce() -> miette::Result<[u64; 2]>,
) -> miette::Result<(toml::Value, String)> {
    let Some(given) = given else {
        let crop = crop()?;
        let transform = super::oneshot::ImageTransform {
            resize: crop[0].max(crop[1]) * 256 / 224,
            crop,
            mean: super::oneshot::IMAGENET_MEAN.to_vec(),
            std: super::oneshot::IMAGENET_STD.to_vec(),
        };
        let steps = super::oneshot::transform_steps(&transform);
        let line = format!(
            "transform = {steps} (the default: ImageNet's at the input size {}x{}; give --transform to change it)",
            crop[0], crop[1]
        );
        return Ok((steps, line));
    };
    let path = Path::new(given);
    let (text, origin) = if path.is_file() {
        let text = std::fs::read_to_string(path).map_err(|e| {
            failure(
                format!("cannot read --transform {given}: {e}"),
                "give a TOML file holding transform = [...], or the list inline",
            )
        })?;
        (text, format!("from {given}"))
    } else {
        (given.to_string(), "from --transform".to_string())
    };
    let table = toml::from_str::<toml::Table>(&text)
        .or_else(|_| toml::from_str::<toml::Table>(&format!("transform = {text}")))
        .map_err(|e| {
            failure(
                format!("--transform is neither a TOML file nor a TOML list: {e}"),
                "for example --transform '[{ resize = 256 }, { center_crop = 224 }]', or a file holding transform = [...]",
            )
        })?;
    let steps = match (table.get("transform"), table.len()) {
        (Some(steps @ toml::Value::Array(_)), 1) => steps.clone(),
        _ => {
            return Err(failure(
                format!("--transform {given} must hold one key, `transform`, a list of steps"),
                "for example transform = [{ resize = 256 }, { center_crop = 224 }] (the steps of a dataset stage, docs/dataset.md)",
            ));
        }
    };
    let line = format!("transform = {steps} ({origin})");
    Ok((steps, line))
}

/// The pipeline, as TOML (serialized, so every value is escaped correctly), and for an
/// image folder a line saying which transform its images go through.
/// The `quantize` stage of `--fp16`: AutoCast's range check at `--input-size` (which a
/// model with dynamic H and W needs), or none with `--no-range-check`.
fn fp16_stage(args: &ConvertArgs, model: toml::Value) -> toml::Table {
    let mut quantize = toml::Table::new();
    quantize.insert("kind".into(), "quantize".into());
    quantize.insert("onnx".into(), model);
    quantize.insert("precision".into(), "fp16".into());
    if args.no_range_check {
        quantize.insert("range_check".into(), toml::Value::Boolean(false));
    } else if let Some(size) = &args.input_size {
        let sizes = size
            .iter()
            .map(|&n| toml::Value::Integer(n as i64))
            .collect();
        quantize.insert("input_size".into(), toml::Value::Array(sizes));
    }
    quantize.insert("output".into(), "out/model_fp16.onnx".into());
    quantize
}

fn pipeline_text(
    args: &ConvertArgs,
    model: &Path,
    calib: Option<&Path>,
) -> miette::Result<(String, Option<String>)> {
    use toml::{Table, Value};
    let path = |p: &Path| Value::String(p.to_string_lossy().into_owned());
    let ints = |v: &[u64]| Value::Array(v.iter().map(|&n| Value::Integer(n as i64)).collect());
    let mut stages = Table::new();
    let precision = args.precision();
    let mut engine_onnx = path(model);
    let mut shown = None;
    if let Some(calib) = calib {
        let data = if calib.is_dir() {
            // --transform, or ImageNet-style evaluation preprocessing at the model's input
            // size (the ONNX input's H and W, or --input-size).
            let given = super::oneshot::given_image_size(args.input_size.as_deref());
            let crop = || super::oneshot::image_input_size(model, given);
            let (steps, line) = calibration_transform(args.transform.as_deref(), crop)?;
            shown = Some(line);
            let dataset = super::oneshot::dataset_stage_with(
                calib,
                Some(args.calib_samples),
                42,
                Some(steps),
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
        stages.insert(
            "quantize".into(),
            Value::Table(fp16_stage(args, path(model))),
        );
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
    Ok((
        super::oneshot::pipeline_text("convert", pipeline, stages)?,
        shown,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_calibration_transform_is_given_inline_in_a_file_or_defaulted() {
        let no_crop = || -> miette::Result<[u64; 2]> { panic!("the crop is not needed") };
        let inline = "[{ resize = 20 }, { center_crop = 16 }]";
        let (steps, line) = calibration_transform(Some(inline), no_crop).unwrap();
        assert_eq!(steps.as_array().unwrap().len(), 2);
        assert_eq!(line, format!("transform = {inline} (from --transform)"));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("val.toml");
        std::fs::write(&file, format!("transform = {inline}\n")).unwrap();
        let shown = file.to_string_lossy().into_owned();
        let (from_file, line) = calibration_transform(Some(&shown), no_crop).unwrap();
        assert_eq!(from_file, steps);
        assert!(line.ends_with(&format!("(from {shown})")), "{line}");
        std::fs::write(&file, "transform = []\nsamples = 3\n").unwrap();
        assert!(calibration_transform(Some(&shown), no_crop).is_err());
        assert!(calibration_transform(Some("{ resize"), no_crop).is_err());
        let (default, line) = calibration_transform(None, || Ok([16, 16])).unwrap();
        assert_eq!(
            default.to_string(),
            "[{ resize = 18 }, { center_crop = 16 }, { normalize = { mean = [0.485, 0.456, 0.406], std = [0.229, 0.224, 0.225] } }]"
        );
        assert!(line.contains("the default"), "{line}");
    }

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
