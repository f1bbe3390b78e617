//! `kind = "report"`: its keys, parsed and checked.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use toml::Spanned;
use toml::de::DeValue;

use super::metrics::{self, Tolerance, default_tolerance};
use super::segmentation::{DiceOptions, Reduction};
use super::sliding_window::{Blend, Padding, Settings};
use crate::pipeline::parse_api::Parser;
use crate::pipeline::{InputSource, NamedInput, NamedOutput, SpanError, suggest};

/// `kind = "report"`: latency, throughput, parity and task metrics of every model.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct ReportKeys {
    /// The models: "@stage" (ONNX, or a TensorRT .engine) or paths.
    #[schemars(with = "Vec<String>", length(min = 1))]
    pub models: Spanned<Vec<Spanned<String>>>,
    /// The input data: a float32 .npy (N x C x ...), e.g. a dataset stage ("@testset"), or
    /// an export's reference .npz. Default: the first model's export reference inputs.
    #[schemars(with = "Option<String>")]
    pub data: Option<Spanned<String>>,
    /// The reference outputs: "@stage" of an ONNX model run as the reference, or an
    /// export's reference .npz ("@onnx.reference"). Default: the export's PyTorch outputs
    /// when `data` is not given, else the first model.
    #[schemars(with = "Option<String>")]
    pub reference: Option<Spanned<String>>,
    /// Labels: int64 .npy, one per sample (classification) or one volume per sample
    /// (segmentation); -1 = no label.
    #[schemars(with = "Option<String>")]
    pub labels: Option<Spanned<String>>,
    /// "classification", "segmentation" or "none" (the default).
    #[schemars(with = "Option<String>")]
    pub task: Option<Spanned<String>>,
    /// Untimed runs before timing (default 10).
    #[serde(default)]
    pub warmup: Option<u32>,
    /// Timed runs, at least (default 100).
    #[serde(default)]
    pub iterations: Option<u32>,
    /// Time runs for at least this long: "1s" (the default), "500ms", "0s".
    #[schemars(with = "Option<String>")]
    pub min_duration: Option<Spanned<String>>,
    /// ONNX Runtime intra-op threads (default: ONNX Runtime's own choice).
    #[serde(default)]
    pub threads: Option<u32>,
    /// Samples per run (default 1, or the model's fixed batch), or a list of batch sizes to
    /// time each model at (a sweep: `batch = [1, 4, 16]`; the data pass uses the first).
    #[schemars(with = "Option<BatchKeys>")]
    pub batch: Option<Spanned<BatchKeys>>,
    /// Per-precision overrides: { fp16 = { atol = 1e-2, rtol = 1e-2, cosine = 0.999 } }.
    #[serde(default)]
    pub tolerances: BTreeMap<String, ToleranceKeys>,
    /// "fail" (the default) or "warn".
    #[schemars(with = "Option<String>")]
    pub on_parity_failure: Option<Spanned<String>>,
    /// Where the files go (default "{build_dir}/<stage>").
    #[schemars(with = "Option<String>")]
    pub output: Option<Spanned<String>>,
    /// Segmentation: how Dice (and IoU) are computed; defaults as MONAI's `DiceMetric()`:
    /// { reduction = "mean_batch", include_background = true, ignore_empty = true }.
    #[serde(default)]
    pub dice: Option<DiceKeys>,
    /// Write each model's first output to `outputs/<model>.npy` (default false).
    #[serde(default)]
    pub save_outputs: Option<bool>,
    /// Sliding-window inference (MONAI's `sliding_window_inference`) for samples larger
    /// than the model's input: { roi = [96, 96, 96], overlap = 0.25, mode = "gaussian",
    /// sw_batch_size = 4 }.
    #[serde(default)]
    pub sliding_window: Option<SlidingWindowKeys>,
    /// `pochi diff`'s rules for this report, checked against the revision compared with
    /// (not part of the stage's key): ["accuracy < -0.5pp", "@onnx_int8:p50_ms > +10%"].
    #[schemars(with = "Option<Vec<String>>")]
    pub gates: Option<Vec<Spanned<String>>>,
}

/// `batch = 4` or `batch = [1, 4, 16]`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum BatchKeys {
    One(i64),
    Sweep(Vec<i64>),
}

/// One value for every axis, or one per axis.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum PerAxis {
    One(f64),
    Each(Vec<f64>),
}

/// `sliding_window = { ... }`, MONAI's `sliding_window_inference` arguments.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SlidingWindowKeys {
    /// The window, one size per spatial axis (the model's input), e.g. [96, 96, 96].
    #[schemars(with = "Vec<u32>", length(min = 1))]
    pub roi: Spanned<Vec<i64>>,
    /// Overlap of neighbouring windows, in [0, 1): one value or one per axis (default 0.25).
    #[schemars(with = "Option<PerAxis>")]
    pub overlap: Option<Spanned<PerAxis>>,
    /// How overlapping windows blend: "constant" (the default, as MONAI) or "gaussian".
    #[schemars(with = "Option<String>")]
    pub mode: Option<Spanned<String>>,
    /// The Gaussian's sigma as a share of the window (default 0.125): one value or per axis.
    #[schemars(with = "Option<PerAxis>")]
    pub sigma_scale: Option<Spanned<PerAxis>>,
    /// Windows per model run (default 1).
    #[schemars(with = "Option<u32>")]
    pub sw_batch_size: Option<Spanned<i64>>,
    /// How a sample smaller than the window is padded: "constant" (the default),
    /// "reflect", "replicate" or "circular".
    #[schemars(with = "Option<String>")]
    pub padding_mode: Option<Spanned<String>>,
    /// The value of constant padding (default 0).
    pub cval: Option<f64>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DiceKeys {
    /// "mean_batch" (per sample, then the mean over samples: MONAI's DiceMetric) or
    /// "pooled" (over all voxels of all samples at once).
    #[schemars(with = "Option<String>")]
    pub reduction: Option<Spanned<String>>,
    /// Whether class 0 (background) enters Dice and IoU (default true, as MONAI).
    pub include_background: Option<bool>,
    /// A class absent from a sample's truth is NaN (left out of the means) when true (the
    /// default, as MONAI); when false it is 1 if also absent from the prediction, else 0.
    pub ignore_empty: Option<bool>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ToleranceKeys {
    pub atol: Option<f64>,
    pub rtol: Option<f64>,
    pub cosine: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    Classification,
    Segmentation,
    None,
}

/// A parsed report stage.
#[derive(Debug)]
pub struct Config {
    /// Input keys of the models, in order, with the text as written.
    pub models: Vec<(String, String)>,
    pub has_data: bool,
    pub has_labels: bool,
    pub has_reference: bool,
    pub task: Task,
    pub warmup: usize,
    pub iterations: usize,
    pub min_duration: Duration,
    pub threads: usize,
    pub batch: Option<usize>,
    /// `batch = [...]`: the batch sizes each model is timed at (empty: no sweep).
    pub sweep: Vec<usize>,
    pub sliding_window: Option<Settings>,
    pub tolerances: BTreeMap<String, Tolerance>,
    pub fail_on_parity: bool,
    pub dice: DiceOptions,
    pub save_outputs: bool,
    /// A short, unique name per model for charts and file names: the stage of "@stage",
    /// else the file's stem.
    pub labels: Vec<String>,
    pub inputs: Vec<NamedInput>,
    pub outputs: Vec<NamedOutput>,
}

/// "1s", "500ms", "2.5s", "1m", "0".
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let value: f64 = number.trim().parse().ok()?;
    let seconds = match unit {
        "ms" => value / 1e3,
        "s" => value,
        "m" | "min" => value * 60.0,
        _ => return None,
    };
    // `try_`: a finite value of 2^64 seconds or more does not fit a Duration (found by
    // fuzzing: `min_duration = "18446744073709551616s"` panicked).
    Duration::try_from_secs_f64(seconds).ok()
}

pub fn parse(parser: &Parser, value: &Spanned<DeValue>) -> Result<Config, SpanError> {
    let keys: ReportKeys = parser.deserialize(value)?;
    let src = parser.src;
    let mut inputs = Vec::new();
    if keys.models.get_ref().is_empty() {
        return Err(src
            .error(keys.models.span(), "`models` is empty")
            .with_help("list the models to compare, e.g. models = [\"@onnx\"]"));
    }
    let mut models = Vec::new();
    for (i, model) in keys.models.get_ref().iter().enumerate() {
        let key = format!("model{i}");
        inputs.push(parser.input(&key, model)?);
        models.push((key, model.get_ref().clone()));
    }
    let first_stage = match &inputs[0].source {
        InputSource::Output { stage, key: None } => Some(stage.clone()),
        _ => None,
    };
    let has_data = keys.data.is_some();
    match &keys.data {
        Some(data) => inputs.push(parser.input("data", data)?),
        None => {
            let Some(stage) = &first_stage else {
                return Err(src
                    .error(keys.models.span(), "no `data`, and the first model is not an export stage whose reference inputs could be used")
                    .with_help("give data = \"@dataset_stage\" or a float32 .npy file"));
            };
            let reference = Spanned::new(keys.models.span(), format!("@{stage}.reference"));
            inputs.push(parser.input("data", &reference)?);
        }
    }
    if let Some(reference) = &keys.reference {
        inputs.push(parser.input("reference", reference)?);
    }
    if let Some(labels) = &keys.labels {
        inputs.push(parser.input("labels", labels)?);
    }
    let task = match &keys.task {
        None => Task::None,
        Some(task) => match task.get_ref().as_str() {
            "classification" => Task::Classification,
            "segmentation" => Task::Segmentation,
            "none" => Task::None,
            other => {
                return Err(src
                    .error(task.span(), format!("unknown task `{other}`"))
                    .with_help(suggest::hint(
                        other,
                        &["classification", "segmentation", "none"],
                    )));
            }
        },
    };
    let min_duration = match &keys.min_duration {
        None => Duration::from_secs(1),
        Some(text) => parse_duration(text.get_ref()).ok_or_else(|| {
            src.error(
                text.span(),
                format!("`{}` is not a duration", text.get_ref()),
            )
            .with_help("write e.g. \"1s\", \"500ms\" or \"0s\"")
        })?,
    };
    let mut tolerances = BTreeMap::new();
    for &precision in metrics::PRECISIONS {
        tolerances.insert(precision.to_string(), default_tolerance(precision));
    }
    for (precision, given) in &keys.tolerances {
        let Some(base) = tolerances.get(precision).copied() else {
            return Err(src
                .error(
                    value.span(),
                    format!("`tolerances.{precision}`: unknown precision"),
                )
                .with_help(suggest::hint(precision, metrics::PRECISIONS)));
        };
        let merged = Tolerance {
            atol: given.atol.unwrap_or(base.atol),
            rtol: given.rtol.unwrap_or(base.rtol),
            cosine: given.cosine.unwrap_or(base.cosine),
        };
        if !(merged.atol >= 0.0 && merged.rtol >= 0.0 && merged.cosine <= 1.0) {
            return Err(src.error(
                value.span(),
                format!("`tolerances.{precision}`: atol and rtol must be >= 0 and cosine <= 1"),
            ));
        }
        tolerances.insert(precision.clone(), merged);
    }
    let fail_on_parity = match &keys.on_parity_failure {
        None => true,
        Some(mode) => match mode.get_ref().as_str() {
            "fail" => true,
            "warn" => false,
            other => {
                return Err(src
                    .error(mode.span(), format!("`on_parity_failure = \"{other}\"`"))
                    .with_help("use \"fail\" (the default) or \"warn\""));
            }
        },
    };
    for gate in keys.gates.iter().flatten() {
        crate::diff::rule::parse(gate.get_ref()).map_err(|e| {
            src.error(gate.span(), format!("`gates`: {}", e.message))
                .with_help(e.help)
        })?;
    }
    let labels = model_labels(&models);
    let save_outputs = keys.save_outputs.unwrap_or(false);
    let outputs = declare_outputs(parser, &keys, value, task, save_outputs.then_some(&labels))?;
    let dice = parse_dice(parser, keys.dice.as_ref())?;
    let (batch, sweep) = parse_batch(parser, keys.batch.as_ref())?;
    let sliding_window = keys
        .sliding_window
        .as_ref()
        .map(|sw| parse_sliding_window(parser, sw, value))
        .transpose()?;
    Ok(Config {
        models,
        has_data,
        has_labels: keys.labels.is_some(),
        has_reference: keys.reference.is_some(),
        task,
        warmup: keys.warmup.unwrap_or(10) as usize,
        iterations: keys.iterations.unwrap_or(100).max(1) as usize,
        min_duration,
        threads: keys.threads.unwrap_or(0) as usize,
        batch,
        sweep,
        sliding_window,
        tolerances,
        fail_on_parity,
        dice,
        save_outputs,
        labels,
        inputs,
        outputs,
    })
}

/// The files the stage writes, in `output` (default `{build_dir}/<stage>`); with `saved`,
/// one `outputs/<label>.npy` per model.
fn declare_outputs(
    parser: &Parser,
    keys: &ReportKeys,
    value: &Spanned<DeValue>,
    task: Task,
    saved: Option<&Vec<String>>,
) -> Result<Vec<NamedOutput>, SpanError> {
    let dir = match &keys.output {
        Some(output) => output.get_ref().clone(),
        None => parser
            .build_dir
            .join(parser.stage)
            .to_string_lossy()
            .into_owned(),
    };
    let span = keys
        .output
        .as_ref()
        .map(Spanned::span)
        .unwrap_or_else(|| value.span());
    let file = |name: &str| {
        Spanned::new(
            span.clone(),
            Path::new(&dir).join(name).to_string_lossy().into_owned(),
        )
    };
    let mut outputs = vec![
        parser.output("summary", &file("summary.json"))?,
        parser.output("report", &file("report.md"))?,
        parser.output("latency_chart", &file("latency.svg"))?,
        parser.output("error_chart", &file("errors.svg"))?,
    ];
    if task == Task::Classification {
        outputs.push(parser.output("predictions", &file("predictions.csv"))?);
        outputs.push(parser.output("disagreements", &file("disagreements.csv"))?);
        if keys.labels.is_some() {
            outputs
                .push(parser.output("classification_report", &file("classification_report.csv"))?);
            outputs.push(parser.output("confusion_matrix", &file("confusion_matrix.svg"))?);
        }
    }
    if task == Task::Segmentation {
        outputs.push(parser.output("per_sample", &file("per_sample_dice.csv"))?);
    }
    if matches!(
        keys.batch.as_ref().map(Spanned::get_ref),
        Some(BatchKeys::Sweep(_))
    ) {
        outputs.push(parser.output("throughput_chart", &file("throughput.svg"))?);
    }
    for (i, label) in saved.into_iter().flatten().enumerate() {
        let path = file(&format!("outputs/{label}.npy"));
        outputs.push(parser.output(&format!("output_model{i}"), &path)?);
    }
    Ok(outputs)
}

/// `batch = N` (0 counts as 1, as before) or a sweep `[a, b, ...]` (each at least 1, no
/// repeats; the data pass runs at the first).
fn parse_batch(
    parser: &Parser,
    keys: Option<&Spanned<BatchKeys>>,
) -> Result<(Option<usize>, Vec<usize>), SpanError> {
    let Some(keys) = keys else {
        return Ok((None, Vec::new()));
    };
    let error = |message: String| {
        parser
            .src
            .error(keys.span(), message)
            .with_help("write batch = 4, or a sweep such as batch = [1, 4, 16]")
    };
    match keys.get_ref() {
        BatchKeys::One(b) => Ok((Some(usize::try_from(*b).unwrap_or(0).max(1)), Vec::new())),
        BatchKeys::Sweep(list) => {
            if list.is_empty() {
                return Err(error("`batch = []`: the sweep lists no batch size".into()));
            }
            let mut sweep = Vec::new();
            for &b in list {
                let b = usize::try_from(b).ok().filter(|&b| b >= 1).ok_or_else(|| {
                    error(format!("`batch`: {b} is not a batch size (1 or more)"))
                })?;
                if sweep.contains(&b) {
                    return Err(error(format!("`batch`: {b} is listed twice")));
                }
                sweep.push(b);
            }
            Ok((Some(sweep[0]), sweep))
        }
    }
}

/// `sliding_window = { ... }`, checked, with MONAI's defaults filled in.
fn parse_sliding_window(
    parser: &Parser,
    keys: &SlidingWindowKeys,
    stage: &Spanned<DeValue>,
) -> Result<Settings, SpanError> {
    let src = parser.src;
    let roi: Vec<usize> = keys
        .roi
        .get_ref()
        .iter()
        .map(|&r| usize::try_from(r).ok().filter(|&r| r >= 1))
        .collect::<Option<Vec<usize>>>()
        .filter(|r| !r.is_empty())
        .ok_or_else(|| {
            src.error(
                keys.roi.span(),
                "`sliding_window.roi` needs one size of 1 or more per spatial axis",
            )
            .with_help("e.g. roi = [96, 96, 96], the model's input size")
        })?;
    let overlap = per_axis(parser, &roi, "overlap", keys.overlap.as_ref(), 0.25, |o| {
        (0.0..1.0).contains(&o)
    })?;
    let sigma_scale = per_axis(
        parser,
        &roi,
        "sigma_scale",
        keys.sigma_scale.as_ref(),
        0.125,
        |s| s > 0.0 && s.is_finite(),
    )?;
    let mode = match &keys.mode {
        None => Blend::Constant,
        Some(mode) => [Blend::Constant, Blend::Gaussian][one_of(
            parser,
            mode,
            "sliding-window mode",
            &["constant", "gaussian"],
        )?],
    };
    let padding_mode = match &keys.padding_mode {
        None => Padding::Constant,
        Some(mode) => {
            let modes = [
                Padding::Constant,
                Padding::Reflect,
                Padding::Replicate,
                Padding::Circular,
            ];
            modes[one_of(parser, mode, "padding_mode", Padding::NAMES)?]
        }
    };
    let sw_batch_size = match &keys.sw_batch_size {
        None => 1,
        Some(b) => usize::try_from(*b.get_ref())
            .ok()
            .filter(|&b| b >= 1)
            .ok_or_else(|| {
                src.error(
                    b.span(),
                    format!(
                        "`sliding_window.sw_batch_size = {}`: at least 1 window per run",
                        b.get_ref()
                    ),
                )
                .with_help("e.g. sw_batch_size = 4")
            })?,
    };
    let cval = keys.cval.unwrap_or(0.0);
    if !cval.is_finite() {
        return Err(src.error(
            stage.span(),
            "`sliding_window.cval` must be a finite number",
        ));
    }
    Ok(Settings {
        roi,
        overlap,
        mode,
        sigma_scale,
        sw_batch_size,
        padding_mode,
        cval,
    })
}

/// A value per axis of `roi` (one value applies to every axis), each passing `ok`.
fn per_axis(
    parser: &Parser,
    roi: &[usize],
    name: &str,
    given: Option<&Spanned<PerAxis>>,
    default: f64,
    ok: fn(f64) -> bool,
) -> Result<Vec<f64>, SpanError> {
    let axes = roi.len();
    let Some(given) = given else {
        return Ok(vec![default; axes]);
    };
    let values = match given.get_ref() {
        PerAxis::One(v) => vec![*v; axes],
        PerAxis::Each(list) => list.clone(),
    };
    let rule = match name {
        "overlap" => "it must be >= 0 and < 1 (as in MONAI)",
        _ => "it must be above 0",
    };
    if values.len() != axes {
        return Err(parser
            .src
            .error(
                given.span(),
                format!(
                    "`sliding_window.{name}` has {} values for the {axes} axes of `roi`",
                    values.len()
                ),
            )
            .with_help(format!("give one value, or one per axis of roi = {roi:?}")));
    }
    match values.iter().find(|v| !ok(**v)) {
        Some(bad) => Err(parser.src.error(
            given.span(),
            format!("`sliding_window.{name}` = {bad}: {rule}"),
        )),
        None => Ok(values),
    }
}

/// The position of `value` among `names`, else an error with the nearest name.
fn one_of(
    parser: &Parser,
    value: &Spanned<String>,
    what: &str,
    names: &[&str],
) -> Result<usize, SpanError> {
    names
        .iter()
        .position(|n| *n == value.get_ref().as_str())
        .ok_or_else(|| {
            parser
                .src
                .error(
                    value.span(),
                    format!("unknown {what} `{}`", value.get_ref()),
                )
                .with_help(suggest::hint(value.get_ref(), names))
        })
}

/// `dice = { ... }`, over MONAI `DiceMetric()`'s defaults.
fn parse_dice(parser: &Parser, keys: Option<&DiceKeys>) -> Result<DiceOptions, SpanError> {
    let mut options = DiceOptions::default();
    let Some(keys) = keys else {
        return Ok(options);
    };
    if let Some(reduction) = &keys.reduction {
        options.reduction = match reduction.get_ref().as_str() {
            "mean_batch" => Reduction::MeanBatch,
            "pooled" => Reduction::Pooled,
            other => {
                return Err(parser
                    .src
                    .error(
                        reduction.span(),
                        format!("unknown Dice reduction `{other}`"),
                    )
                    .with_help(suggest::hint(other, &["mean_batch", "pooled"])));
            }
        };
    }
    options.include_background = keys
        .include_background
        .unwrap_or(options.include_background);
    options.ignore_empty = keys.ignore_empty.unwrap_or(options.ignore_empty);
    Ok(options)
}

/// Short, unique model names: "@onnx" -> "onnx", "models/a.onnx" -> "a"; a repeated name
/// gets its position appended ("a-2").
pub fn model_labels(models: &[(String, String)]) -> Vec<String> {
    let short: Vec<String> = models
        .iter()
        .map(|(_, text)| match text.strip_prefix('@') {
            Some(stage) => stage.to_string(),
            None => Path::new(text)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| text.clone()),
        })
        .map(|name| {
            name.chars()
                .map(|c| {
                    if c.is_alphanumeric() || "._-".contains(c) {
                        c
                    } else {
                        '_'
                    }
                })
                .collect()
        })
        .collect();
    short
        .iter()
        .enumerate()
        .map(|(i, name)| {
            if short.iter().filter(|n| *n == name).count() > 1 {
                format!("{name}-{}", i + 1)
            } else {
                name.clone()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::SourceFile;

    fn parse_stage(table: &str) -> Result<Config, String> {
        let text = format!("[stages.rep]\nkind = \"report\"\n{table}");
        let src = SourceFile::new("pipeline.toml".into(), text.clone());
        let root = toml::de::DeTable::parse(&text).unwrap();
        let stage = root.get_ref()["stages"].get_ref().as_table().unwrap()["rep"].clone();
        let parser = Parser {
            src: &src,
            dir: Path::new("/project"),
            build_dir: Path::new("build/p"),
            stage: "rep",
            kinds: crate::kinds::KINDS,
        };
        parse(&parser, &stage).map_err(|e| {
            let help = miette::Diagnostic::help(&e)
                .map(|h| h.to_string())
                .unwrap_or_default();
            format!("{e} | {help}")
        })
    }

    fn keys(config: &Config) -> Vec<String> {
        config.outputs.iter().map(|o| o.key.clone()).collect()
    }

    #[test]
    fn defaults_and_the_export_reference_as_data() {
        let c = parse_stage("models = [\"@onnx\", \"@int8\"]\n").unwrap();
        assert_eq!((c.warmup, c.iterations), (10, 100));
        assert_eq!(c.min_duration, Duration::from_secs(1));
        assert!(c.fail_on_parity && c.task == Task::None && !c.has_data);
        let data = c.inputs.iter().find(|i| i.key == "data").unwrap();
        assert_eq!(
            data.source,
            InputSource::Output {
                stage: "onnx".into(),
                key: Some("reference".into())
            }
        );
        assert_eq!(
            keys(&c),
            ["summary", "report", "latency_chart", "error_chart"]
        );
        assert_eq!(
            c.outputs[0].path,
            std::path::PathBuf::from("build/p/rep/summary.json")
        );
    }

    #[test]
    fn classification_outputs_follow_the_labels() {
        let c = parse_stage("models = [\"m.onnx\"]\ndata = \"d.npy\"\ntask = \"classification\"\n")
            .unwrap();
        assert_eq!(
            keys(&c),
            [
                "summary",
                "report",
                "latency_chart",
                "error_chart",
                "predictions",
                "disagreements"
            ]
        );
        let c = parse_stage("models = [\"m.onnx\"]\ndata = \"d.npy\"\nlabels = \"l.npy\"\ntask = \"classification\"\noutput = \"out\"\n").unwrap();
        assert!(keys(&c).contains(&"confusion_matrix".to_string()));
        assert!(keys(&c).contains(&"classification_report".to_string()));
        assert_eq!(
            c.outputs[0].path,
            std::path::PathBuf::from("out/summary.json")
        );
    }

    #[test]
    fn tolerance_overrides_merge_with_the_defaults() {
        let c = parse_stage(
            "models = [\"@onnx\"]\ntolerances = { fp16 = { atol = 0.5 } }\non_parity_failure = \"warn\"\n",
        )
        .unwrap();
        assert_eq!(c.tolerances["fp16"].atol, 0.5);
        assert_eq!(c.tolerances["fp16"].rtol, default_tolerance("fp16").rtol);
        assert_eq!(c.tolerances["fp32"], default_tolerance("fp32"));
        assert!(!c.fail_on_parity);
    }

    #[test]
    fn gates_are_checked_as_diff_rules() {
        parse_stage(
            "models = [\"@onnx\"]\ngates = [\"accuracy < -1pp\", \"@onnx:p50_ms > +10%\"]\n",
        )
        .unwrap();
        let error =
            parse_stage("models = [\"@onnx\"]\ngates = [\"acuracy < -1pp\"]\n").unwrap_err();
        assert!(
            error.contains("`gates`: rule `acuracy < -1pp`: unknown metric"),
            "{error}"
        );
        assert!(error.contains("known metrics: accuracy"), "{error}");
    }

    #[test]
    fn bad_settings_are_named() {
        let error =
            parse_stage("models = [\"@onnx\"]\ntolerances = { fp4 = { atol = 1 } }\n").unwrap_err();
        assert!(error.contains("unknown precision"), "{error}");
        let error = parse_stage("models = [\"@onnx\"]\nmin_duration = \"soon\"\n").unwrap_err();
        assert!(error.contains("not a duration"), "{error}");
        let error =
            parse_stage("models = [\"@onnx\"]\non_parity_failure = \"ignore\"\n").unwrap_err();
        assert!(error.contains("\"warn\""), "{error}");
        let error = parse_stage("models = []\n").unwrap_err();
        assert!(error.contains("`models` is empty"), "{error}");
    }

    #[test]
    fn dice_options_default_to_monai_and_are_checked() {
        let c = parse_stage("models = [\"m.onnx\"]\ndata = \"d.npy\"\ntask = \"segmentation\"\n")
            .unwrap();
        assert_eq!(c.dice, DiceOptions::default());
        assert!(c.dice.include_background && c.dice.ignore_empty);
        assert_eq!(c.dice.reduction, Reduction::MeanBatch);
        assert!(keys(&c).contains(&"per_sample".to_string()));
        let c = parse_stage(
            "models = [\"m.onnx\"]\ndata = \"d.npy\"\ndice = { reduction = \"pooled\", include_background = false }\n",
        )
        .unwrap();
        assert_eq!(c.dice.reduction, Reduction::Pooled);
        assert!(!c.dice.include_background && c.dice.ignore_empty);
        let error = parse_stage(
            "models = [\"m.onnx\"]\ndata = \"d.npy\"\ndice = { reduction = \"mean_btach\" }\n",
        )
        .unwrap_err();
        assert!(
            error.contains("unknown Dice reduction `mean_btach`") && error.contains("mean_batch"),
            "{error}"
        );
        let error =
            parse_stage("models = [\"m.onnx\"]\ndata = \"d.npy\"\ndice = { background = false }\n")
                .unwrap_err();
        assert!(error.contains("background"), "{error}");
    }

    #[test]
    fn saved_outputs_are_declared_per_model_under_short_names() {
        let c = parse_stage(
            "models = [\"@onnx\", \"/abs/models/a.onnx\", \"b/a.onnx\"]\ndata = \"d.npy\"\nsave_outputs = true\n",
        )
        .unwrap();
        assert_eq!(c.labels, ["onnx", "a-2", "a-3"]);
        let saved: Vec<_> = c
            .outputs
            .iter()
            .filter(|o| o.key.starts_with("output_model"))
            .map(|o| o.path.clone())
            .collect();
        assert_eq!(
            saved,
            [
                std::path::PathBuf::from("build/p/rep/outputs/onnx.npy"),
                "build/p/rep/outputs/a-2.npy".into(),
                "build/p/rep/outputs/a-3.npy".into()
            ]
        );
        let c = parse_stage("models = [\"@onnx\"]\n").unwrap();
        assert!(!c.save_outputs);
    }

    #[test]
    fn a_batch_list_is_a_sweep_and_sliding_windows_get_monais_defaults() {
        let c =
            parse_stage("models = [\"m.onnx\"]\ndata = \"d.npy\"\nbatch = [4, 1, 16]\n").unwrap();
        assert_eq!((c.batch, c.sweep.clone()), (Some(4), vec![4, 1, 16]));
        assert!(keys(&c).contains(&"throughput_chart".to_string()));
        let c = parse_stage("models = [\"m.onnx\"]\ndata = \"d.npy\"\nbatch = 2\n").unwrap();
        assert_eq!((c.batch, c.sweep.len()), (Some(2), 0));
        assert!(!keys(&c).contains(&"throughput_chart".to_string()));
        for (bad, needle) in [
            ("[]", "lists no batch size"),
            ("[1, 0]", "0 is not a batch size"),
            ("[2, 2]", "2 is listed twice"),
        ] {
            let error = parse_stage(&format!(
                "models = [\"m.onnx\"]\ndata = \"d.npy\"\nbatch = {bad}\n"
            ))
            .unwrap_err();
            assert!(error.contains(needle), "{bad}: {error}");
        }
        let c = parse_stage(
            "models = [\"m.onnx\"]\ndata = \"d.npy\"\nsliding_window = { roi = [96, 96, 64] }\n",
        )
        .unwrap();
        let sw = c.sliding_window.unwrap();
        assert_eq!(sw.roi, [96, 96, 64]);
        assert_eq!(
            (sw.overlap.clone(), sw.sigma_scale.clone()),
            (vec![0.25; 3], vec![0.125; 3])
        );
        assert_eq!(
            (sw.mode, sw.padding_mode, sw.sw_batch_size, sw.cval),
            (Blend::Constant, Padding::Constant, 1, 0.0)
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1s"), Some(Duration::from_secs(1)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_duration("1m"), Some(Duration::from_secs(60)));
        assert_eq!(parse_duration("fast"), None);
        assert_eq!(parse_duration("-1s"), None);
    }
}
