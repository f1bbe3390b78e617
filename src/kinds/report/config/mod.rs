//! `kind = "report"`: its keys, parsed and checked.

mod keys;
mod sliding_window;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use toml::Spanned;
use toml::de::DeValue;

use super::metrics::{self, Tolerance, default_tolerance};
use super::segmentation::{DiceOptions, Reduction};
use super::sliding_window::Settings;
use crate::pipeline::parse_api::Parser;
use crate::pipeline::{InputSource, NamedInput, NamedOutput, SpanError, suggest};

pub(super) use keys::ReportKeys;
use keys::{BatchKeys, DiceKeys, ToleranceKeys};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Task {
    Classification,
    Segmentation,
    None,
}

impl Task {
    /// Each task by its name in the pipeline file.
    const CHOICES: &[(&str, Task)] = &[
        ("classification", Task::Classification),
        ("segmentation", Task::Segmentation),
        ("none", Task::None),
    ];
}

/// A parsed report stage.
#[derive(Debug)]
pub(super) struct Config {
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
pub(super) fn parse_duration(text: &str) -> Option<Duration> {
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

/// The stage table of a report, parsed and checked.
pub(super) fn parse(parser: &Parser, value: &Spanned<DeValue>) -> Result<Config, SpanError> {
    let keys: ReportKeys = parser.deserialize(value)?;
    let Declared { models, inputs } = declare_inputs(parser, &keys)?;
    let task = match &keys.task {
        None => Task::None,
        Some(task) => one_of(parser, task, "task", Task::CHOICES)?,
    };
    let min_duration = match &keys.min_duration {
        None => Duration::from_secs(1),
        Some(text) => parse_duration(text.get_ref()).ok_or_else(|| {
            parser
                .src
                .error(
                    text.span(),
                    format!("`{}` is not a duration", text.get_ref()),
                )
                .with_help("write e.g. \"1s\", \"500ms\" or \"0s\"")
        })?,
    };
    let tolerances = parse_tolerances(parser, &keys.tolerances, value)?;
    let fail_on_parity = parse_on_parity_failure(parser, keys.on_parity_failure.as_ref())?;
    check_gates(parser, keys.gates.as_deref())?;
    let labels = model_labels(&models);
    let save_outputs = keys.save_outputs.unwrap_or(false);
    let outputs = declare_outputs(parser, &keys, value, task, save_outputs.then_some(&labels))?;
    let dice = parse_dice(parser, keys.dice.as_ref())?;
    let (batch, sweep) = parse_batch(parser, keys.batch.as_ref())?;
    let sliding_window = keys
        .sliding_window
        .as_ref()
        .map(|sw| sliding_window::parse(parser, sw, value))
        .transpose()?;
    Ok(Config {
        models,
        has_data: keys.data.is_some(),
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

/// The models (their input keys, with the text of each as written) and every input.
struct Declared {
    models: Vec<(String, String)>,
    inputs: Vec<NamedInput>,
}

/// The stage's inputs: the models (`model0`, `model1`, ...; with the text of each as
/// written), the data (default: the first model's export reference inputs), the
/// reference and the labels.
fn declare_inputs(parser: &Parser, keys: &ReportKeys) -> Result<Declared, SpanError> {
    let src = parser.src;
    if keys.models.get_ref().is_empty() {
        return Err(src
            .error(keys.models.span(), "`models` is empty")
            .with_help("list the models to compare, e.g. models = [\"@onnx\"]"));
    }
    let mut inputs = Vec::new();
    let mut models = Vec::new();
    for (i, model) in keys.models.get_ref().iter().enumerate() {
        let key = format!("model{i}");
        inputs.push(parser.input(&key, model)?);
        models.push((key, model.get_ref().clone()));
    }
    let data = match (&keys.data, &inputs[0].source) {
        (Some(data), _) => data.clone(),
        (None, InputSource::Output { stage, key: None }) => {
            Spanned::new(keys.models.span(), format!("@{stage}.reference"))
        }
        (None, _) => {
            return Err(src
                .error(keys.models.span(), "no `data`, and the first model is not an export stage whose reference inputs could be used")
                .with_help("give data = \"@dataset_stage\" or a float32 .npy file"));
        }
    };
    inputs.push(parser.input("data", &data)?);
    if let Some(reference) = &keys.reference {
        inputs.push(parser.input("reference", reference)?);
    }
    if let Some(labels) = &keys.labels {
        inputs.push(parser.input("labels", labels)?);
    }
    Ok(Declared { models, inputs })
}

/// Every precision's tolerance: the defaults, with `tolerances = { ... }` merged over them.
fn parse_tolerances(
    parser: &Parser,
    given: &BTreeMap<String, ToleranceKeys>,
    stage: &Spanned<DeValue>,
) -> Result<BTreeMap<String, Tolerance>, SpanError> {
    let mut tolerances: BTreeMap<String, Tolerance> = metrics::PRECISIONS
        .iter()
        .map(|&precision| (precision.to_string(), default_tolerance(precision)))
        .collect();
    for (precision, given) in given {
        let Some(base) = tolerances.get(precision).copied() else {
            return Err(parser
                .src
                .error(
                    stage.span(),
                    format!("`tolerances.{precision}`: unknown precision"),
                )
                .with_help(suggest::hint(precision, metrics::PRECISIONS)));
        };
        let merged = Tolerance {
            atol: given.atol.unwrap_or(base.atol),
            rtol: given.rtol.unwrap_or(base.rtol),
            cosine: given.cosine.unwrap_or(base.cosine),
        };
        if !is_valid(&merged) {
            return Err(parser.src.error(
                stage.span(),
                format!("`tolerances.{precision}`: atol and rtol must be >= 0 and cosine <= 1"),
            ));
        }
        tolerances.insert(precision.clone(), merged);
    }
    Ok(tolerances)
}

/// Whether a tolerance can be met: atol and rtol at least 0 and cosine at most 1 (none
/// NaN).
fn is_valid(tolerance: &Tolerance) -> bool {
    tolerance.atol >= 0.0 && tolerance.rtol >= 0.0 && tolerance.cosine <= 1.0
}

/// `on_parity_failure`: "fail" (the default: true) or "warn".
fn parse_on_parity_failure(
    parser: &Parser,
    mode: Option<&Spanned<String>>,
) -> Result<bool, SpanError> {
    match mode.map(|m| (m, m.get_ref().as_str())) {
        None | Some((_, "fail")) => Ok(true),
        Some((_, "warn")) => Ok(false),
        Some((mode, other)) => Err(parser
            .src
            .error(mode.span(), format!("`on_parity_failure = \"{other}\"`"))
            .with_help("use \"fail\" (the default) or \"warn\"")),
    }
}

/// `gates`: each one a `pochi diff` rule.
fn check_gates(parser: &Parser, gates: Option<&[Spanned<String>]>) -> Result<(), SpanError> {
    for gate in gates.into_iter().flatten() {
        crate::diff::rule::parse(gate.get_ref()).map_err(|e| {
            parser
                .src
                .error(gate.span(), format!("`gates`: {}", e.message))
                .with_help(e.help)
        })?;
    }
    Ok(())
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
                let b = positive(b).ok_or_else(|| {
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

/// The choice named `value`, else an error with the nearest name.
fn one_of<T: Copy>(
    parser: &Parser,
    value: &Spanned<String>,
    what: &str,
    choices: &[(&str, T)],
) -> Result<T, SpanError> {
    let found = choices.iter().find(|(name, _)| *name == value.get_ref());
    found.map(|&(_, choice)| choice).ok_or_else(|| {
        let names: Vec<&str> = choices.iter().map(|&(name, _)| name).collect();
        parser
            .src
            .error(
                value.span(),
                format!("unknown {what} `{}`", value.get_ref()),
            )
            .with_help(suggest::hint(value.get_ref(), &names))
    })
}

/// `value` as a count of 1 or more.
fn positive(value: i64) -> Option<usize> {
    usize::try_from(value).ok().filter(|&v| v >= 1)
}

/// `dice = { ... }`, over MONAI `DiceMetric()`'s defaults.
fn parse_dice(parser: &Parser, keys: Option<&DiceKeys>) -> Result<DiceOptions, SpanError> {
    let mut options = DiceOptions::default();
    let Some(keys) = keys else {
        return Ok(options);
    };
    if let Some(reduction) = &keys.reduction {
        let choices = [
            ("mean_batch", Reduction::MeanBatch),
            ("pooled", Reduction::Pooled),
        ];
        options.reduction = one_of(parser, reduction, "Dice reduction", &choices)?;
    }
    options.include_background = keys
        .include_background
        .unwrap_or(options.include_background);
    options.ignore_empty = keys.ignore_empty.unwrap_or(options.ignore_empty);
    Ok(options)
}

/// Short, unique model names: "@onnx" -> "onnx", "models/a.onnx" -> "a"; a repeated name
/// gets its position appended ("a-2").
pub(super) fn model_labels(models: &[(String, String)]) -> Vec<String> {
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
