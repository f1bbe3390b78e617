//! What the one-shot commands (`export-onnx`, `convert`, `infer`) share: a generated
//! pipeline written under `.pochi/oneshot/<hash>/` (so the same request is the same,
//! cached pipeline) and loaded with its toolchain, ready for `build::run_build`; and the
//! `dataset` stage that `convert` and `infer` write over a folder of images.

use super::output::note;
use std::path::{Path, PathBuf};

use toml::{Table, Value};

use super::cache::CacheArgs;
use super::output::failure;
use crate::driver::{BuildOptions, BuildSummary, Workspace};
use crate::onnx_info::{self, Dim};
use crate::toolchain::{self, Mode};

/// The text of a generated pipeline: `[pipeline]` and `[stages]`, under a header naming
/// the command that wrote it.
pub(super) fn pipeline_text(
    command: &str,
    pipeline: Table,
    stages: Table,
) -> miette::Result<String> {
    let mut root = Table::new();
    root.insert("pipeline".into(), Value::Table(pipeline));
    root.insert("stages".into(), Value::Table(stages));
    let body = toml::to_string(&root).map_err(|e| {
        failure(
            format!("cannot write the pipeline: {e}"),
            "report this as a bug",
        )
    })?;
    Ok(format!(
        "# Written by `pochi {command}`; rebuilt with the same engine as `pochi build`.\n{body}"
    ))
}

/// A one-shot pipeline built: its directory (outputs under `out/`) and how the build went.
pub(super) struct OneShot {
    pub dir: PathBuf,
    pub summary: BuildSummary,
}

/// The one-shot sequence every such command runs: writes `text` as a pipeline, loads it
/// with its toolchain and builds it (with `cache`) through the same `build::run_build` as
/// `pochi build`. `None` when the build was interrupted (exit with
/// `signals::interrupted_exit_code`); a build that fails returns `failed`'s error.
pub(super) fn build(
    text: &str,
    cache: &CacheArgs,
    failed: impl FnOnce(&Workspace) -> miette::Report,
) -> miette::Result<Option<OneShot>> {
    let dir = write(text)?;
    let workspace = load(&dir)?;
    let options = BuildOptions {
        cache: cache.open()?,
        ..BuildOptions::default()
    };
    let summary = super::build::run_build(&workspace, &options)?;
    if summary.interrupted {
        return Ok(None);
    }
    if !summary.ok {
        return Err(failed(&workspace));
    }
    Ok(Some(OneShot { dir, summary }))
}

/// Writes `text` to `.pochi/oneshot/<hash of text>/pipeline.toml`; returns that directory.
fn write(text: &str) -> miette::Result<PathBuf> {
    let dir = PathBuf::from(crate::pipeline::STATE_ROOT)
        .join("oneshot")
        .join(toolchain::short_hash(text.as_bytes()));
    let file = dir.join("pipeline.toml");
    crate::fsutil::write_atomic(&file, text.as_bytes()).map_err(|e| {
        failure(
            format!("cannot write {}: {e}", file.display()),
            "check that this directory is writable",
        )
    })?;
    Ok(dir)
}

/// Loads the pipeline written by `write`, with its toolchain (created when missing).
fn load(dir: &std::path::Path) -> miette::Result<Workspace> {
    let mut workspace = Workspace::load(&[dir.join("pipeline.toml")], crate::kinds::KINDS)?;
    super::gather_facts(&mut workspace, Mode::Create)?;
    Ok(workspace)
}

/// ImageNet's per-channel mean and std (torchvision's `Normalize` for pretrained models,
/// and pochitrain's default config).
pub(super) const IMAGENET_MEAN: [f64; 3] = [0.485, 0.456, 0.406];
pub(super) const IMAGENET_STD: [f64; 3] = [0.229, 0.224, 0.225];

/// How a folder of images becomes the model's input: the shorter side resized to
/// `resize`, a centre crop of `crop` ([h, w]), then `(x / 255 - mean) / std`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct ImageTransform {
    pub resize: u64,
    pub crop: [u64; 2],
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

/// A `dataset` stage over `source` (absolute): an optional seeded subset of `samples`,
/// and for images the steps of `transform`.
pub(super) fn dataset_stage(
    source: &Path,
    samples: Option<u64>,
    seed: u64,
    transform: Option<&ImageTransform>,
) -> Value {
    dataset_stage_with(source, samples, seed, transform.map(transform_steps))
}

/// `transform`'s steps as a dataset stage's `transform` list: resize, center_crop,
/// normalize.
pub(super) fn transform_steps(t: &ImageTransform) -> Value {
    let int = |n: u64| Value::Integer(i64::try_from(n).unwrap_or(i64::MAX));
    let floats = |v: &[f64]| Value::Array(v.iter().map(|&x| Value::Float(x)).collect());
    let step = |key: &str, value: Value| {
        let mut t = Table::new();
        t.insert(key.into(), value);
        Value::Table(t)
    };
    let crop = match t.crop {
        [h, w] if h == w => int(h),
        [h, w] => Value::Array(vec![int(h), int(w)]),
    };
    let mut normalize = Table::new();
    normalize.insert("mean".into(), floats(&t.mean));
    normalize.insert("std".into(), floats(&t.std));
    Value::Array(vec![
        step("resize", int(t.resize)),
        step("center_crop", crop),
        step("normalize", Value::Table(normalize)),
    ])
}

/// A `dataset` stage over `source` (absolute) with `steps` as its `transform` list.
pub(super) fn dataset_stage_with(
    source: &Path,
    samples: Option<u64>,
    seed: u64,
    steps: Option<Value>,
) -> Value {
    let int = |n: u64| Value::Integer(i64::try_from(n).unwrap_or(i64::MAX));
    let mut dataset = Table::new();
    dataset.insert("kind".into(), "dataset".into());
    dataset.insert(
        "source".into(),
        source.to_string_lossy().into_owned().into(),
    );
    if let Some(samples) = samples {
        dataset.insert("samples".into(), int(samples));
    }
    dataset.insert("seed".into(), int(seed));
    if let Some(steps) = steps {
        dataset.insert("transform".into(), steps);
    }
    Value::Table(dataset)
}

/// The input size of a model whose H and W cannot be read (pochitrain's default).
const DEFAULT_INPUT_SIZE: u64 = 224;

/// `--input-size` as an image's H and W: N gives N x N, H W (or D H W) its last two.
pub(super) fn given_image_size(input_size: Option<&[u64]>) -> Option<[u64; 2]> {
    match input_size? {
        [n] => Some([*n, *n]),
        [.., h, w] => Some([*h, *w]),
        [] => None,
    }
}

/// The model's input size could not be read, and `--input-size` does not give it.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[error("cannot read the model's input size")]
#[diagnostic(help("give --input-size H W, or check that the model is an ONNX file"))]
struct UnreadableInputSize(#[source] onnx_info::OnnxError);

/// H and W of the model's first input: `given` (`--input-size`), else what the ONNX fixes,
/// else 224 (with a note) for an engine or dynamic axes. An ONNX that cannot take RGB
/// images is an error, with or without `given`.
pub(super) fn image_input_size(model: &Path, given: Option<[u64; 2]>) -> miette::Result<[u64; 2]> {
    let fallback = |why: &str| {
        if let Some(size) = given {
            return Ok(size);
        }
        note!(
            "{why}; images are preprocessed to {DEFAULT_INPUT_SIZE}x{DEFAULT_INPUT_SIZE} (give --input-size H W to change it)"
        );
        Ok([DEFAULT_INPUT_SIZE; 2])
    };
    let extension = model.extension().and_then(|e| e.to_str()).unwrap_or("");
    if ["engine", "plan", "trt"].contains(&extension) {
        return fallback("the input size of a TensorRT engine is not read");
    }
    let inputs = match (onnx_info::read_inputs(model), given) {
        (Ok(inputs), _) => inputs,
        // The size is given: the model's reader (ONNX Runtime) says what is wrong with it.
        (Err(_), Some(size)) => return Ok(size),
        (Err(e), None) => return Err(UnreadableInputSize(e).into()),
    };
    let Some(input) = inputs.first() else {
        return Err(failure(
            format!("{} declares no graph input", model.display()),
            "check that the model is the exported ONNX file",
        ));
    };
    let Some(shape) = &input.shape else {
        return fallback(&format!(
            "the ONNX input `{}` declares no shape",
            input.name
        ));
    };
    let shown = shape
        .iter()
        .map(Dim::to_string)
        .collect::<Vec<_>>()
        .join(" x ");
    let rgb = shape.len() == 4 && matches!(shape[1], Dim::Fixed(3) | Dim::Dynamic(_));
    if !rgb {
        return Err(failure(
            format!(
                "the model's input `{}` is {shown}, but a folder of images gives N x 3 x H x W (RGB)",
                input.name
            ),
            "images cannot feed this model: give its data as a .npy shaped for it",
        ));
    }
    // The layout is checked above even with --input-size: an NHWC model fails here, not
    // inside ONNX Runtime.
    if let Some(size) = given {
        return Ok(size);
    }
    match (&shape[2], &shape[3]) {
        (Dim::Fixed(h), Dim::Fixed(w)) => Ok([*h as u64, *w as u64]),
        _ => fallback(&format!(
            "the ONNX input `{}` ({shown}) has dynamic H and W",
            input.name
        )),
    }
}
