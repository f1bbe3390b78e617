//! One run of the report: the data read, ONNX Runtime started, the reference decided,
//! every model measured and evaluated against it, and the figures gathered into the
//! `Summary` the report's files are written from.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use ndarray::ArrayD;
use ort::environment::Environment;

use super::config::Config;
use super::data::{self, DataError};
use super::evaluate::{self, EvaluateError};
use super::inputs::{self, InputError};
use super::measure::{self, MeasureError, Measured, Outcome, Setup};
use super::onnxruntime::{self, OnnxRuntimeError, Provider};
use super::sliding_window::WindowError;
use super::summary::{
    DataInfo, DatasetNames, ModelResult, ReferenceInfo, SLIDING_TIMING_NOTE, SlidingWindowInfo,
    Summary, TimingInfo,
};
use super::{END_TO_END_NOTE, SCHEMA_VERSION, TIMING_NOTE, environment, metrics, provenance};
use crate::kinds::InvocationContext;

/// Why the report could not measure its models.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub(super) enum SummarizeError {
    #[error(transparent)]
    #[diagnostic(transparent)]
    Input(#[from] InputError),
    #[error(
        "cannot find ONNX Runtime's library (onnxruntime/capi/libonnxruntime.so*) in the toolchain's site-packages"
    )]
    #[diagnostic(help(
        "`pochi toolchain sync`, or set POCHI_ONNXRUNTIME_LIB to the library's path"
    ))]
    NoOnnxRuntime,
    #[error(transparent)]
    #[diagnostic(transparent)]
    OnnxRuntime(#[from] OnnxRuntimeError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Data(#[from] DataError),
    /// The reference model could not be run.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Reference(#[from] MeasureError),
    #[error("model input `{key}` is missing")]
    MissingModel { key: String },
    /// A model could not be measured: its name, then why.
    #[error("{model}")]
    #[diagnostic(forward(source))]
    Model {
        model: String,
        #[source]
        source: Box<MeasureError>,
    },
    #[error(transparent)]
    #[diagnostic(transparent)]
    Evaluate(#[from] EvaluateError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Window(#[from] WindowError),
}

/// Runs every model of the report on its data and gathers what it found.
pub(super) fn summarize(
    c: &Config,
    context: &InvocationContext,
    cancel: &AtomicBool,
) -> Result<Summary, SummarizeError> {
    let facts = environment::from_facts(&context.facts);
    let data_path = input_path(context, "data").ok_or(InputError::NoData)?;
    let (data, npz_outputs) = inputs::read_samples(&data_path)?;
    let samples = data.shape()[0];
    let labels_path = input_path(context, "labels");
    let labels = match &labels_path {
        Some(path) => Some(inputs::read_labels(path, samples)?),
        None => None,
    };
    let (environment, provider) = start_onnxruntime(&facts, context.gpu)?;
    let mut warnings: Vec<String> = match &provider {
        Provider::Cpu { warning } => warning.iter().cloned().collect(),
        Provider::Cuda { .. } => Vec::new(),
    };
    let setup = Setup {
        config: c,
        context,
        data: &data,
        environment: &environment,
        provider: &provider,
        machine_gpus: facts.gpus.len(),
        cancel,
    };
    let mut reference = reference(&setup, npz_outputs, &data_path)?;
    let mut models = measure_models(&setup, &mut reference, labels.as_ref(), &mut warnings)?;
    let names = inputs::dataset_names(&data_path);
    name_files(&mut models, &names);
    Ok(Summary {
        schema_version: SCHEMA_VERSION,
        stage: context.stage.to_string(),
        provenance: provenance::query(context),
        task: c.task,
        data: DataInfo {
            path: display_path(context, &data_path),
            samples,
            sample_shape: data.shape()[1..].to_vec(),
            labels: labels_path.map(|p| display_path(context, &p)),
            names,
        },
        reference,
        timing: timing_info(c, &provider),
        environment: facts.info(c.threads),
        models,
        warnings,
        batch_sweep: c.sweep.clone(),
        sliding_window: sliding_info(c, &data)?,
        labels,
    })
}

/// ONNX Runtime loaded from the toolchain's library, and the provider the models get.
fn start_onnxruntime(
    facts: &environment::Facts,
    gpu: Option<u32>,
) -> Result<(Environment, Provider), SummarizeError> {
    let library = facts
        .onnxruntime_library
        .as_deref()
        .ok_or(SummarizeError::NoOnnxRuntime)?;
    let environment = onnxruntime::environment(library)?;
    Ok((environment, onnxruntime::provider_for(gpu)))
}

/// Every model's row: measured, then evaluated against the reference (the reference
/// model's outputs become the reference); warnings of noisy timings go to `warnings`.
fn measure_models(
    setup: &Setup,
    reference: &mut ReferenceInfo,
    labels: Option<&ArrayD<i64>>,
    warnings: &mut Vec<String>,
) -> Result<Vec<ModelResult>, SummarizeError> {
    let (c, context) = (setup.config, setup.context);
    let samples = setup.data.shape()[0];
    let mut models = Vec::new();
    for (index, (key, _)) in c.models.iter().enumerate() {
        let path = input_path(context, key)
            .ok_or_else(|| SummarizeError::MissingModel { key: key.clone() })?;
        let mut result = unmeasured(context, c, index, &path);
        if let Some(measured) = measure_model(setup, &path, &mut result)? {
            warnings.extend(record_runs(&mut result, &measured, setup.provider, samples));
            evaluate_outputs(c, measured.outputs, reference, labels, &mut result)?;
        }
        models.push(result);
    }
    Ok(models)
}

/// The input `key` of the stage, as a path under the project.
fn input_path(context: &InvocationContext, key: &str) -> Option<PathBuf> {
    context.inputs.get(key).map(|p| context.dir.join(p))
}

/// What the models are compared with: an export's reference `.npz`, an ONNX model run
/// here, the export's PyTorch outputs when the data is its `.npz`, else the first model.
fn reference(
    setup: &Setup,
    npz_outputs: Option<data::Named>,
    data_path: &Path,
) -> Result<ReferenceInfo, SummarizeError> {
    let (c, context) = (setup.config, setup.context);
    Ok(match (input_path(context, "reference"), npz_outputs) {
        (Some(path), _) if path.extension().is_some_and(|e| e == "npz") => {
            let (_, outputs) = data::read_reference(&path)?;
            ReferenceInfo {
                description: format!("reference outputs in {}", display_path(context, &path)),
                outputs,
                model: None,
            }
        }
        (Some(path), _) => {
            let name = c
                .models
                .iter()
                .zip(&c.inputs)
                .find(|(_, i)| input_path(context, &i.key).as_deref() == Some(path.as_path()))
                .map(|((_, text), _)| text.clone());
            ReferenceInfo {
                description: format!(
                    "{} run on ONNX Runtime ({})",
                    display_path(context, &path),
                    setup.provider.name()
                ),
                outputs: measure::reference(setup, &path)?,
                model: name,
            }
        }
        (None, Some(outputs)) => ReferenceInfo {
            description: format!(
                "the export's PyTorch outputs ({})",
                display_path(context, data_path)
            ),
            outputs,
            model: None,
        },
        (None, None) => ReferenceInfo {
            description: format!("the first model ({})", c.models[0].1),
            outputs: Vec::new(),
            model: Some(c.models[0].1.clone()),
        },
    })
}

/// The row of model `index` before it runs: its file's facts, nothing measured.
fn unmeasured(context: &InvocationContext, c: &Config, index: usize, path: &Path) -> ModelResult {
    ModelResult {
        name: c.models[index].1.clone(),
        label: c.labels[index].clone(),
        path: display_path(context, path),
        status: "ok".into(),
        note: None,
        precision: inputs::precision_of(path),
        size_bytes: inputs::size_on_disk(path),
        runs_on: None,
        timing: None,
        batch: 0,
        latency: None,
        end_to_end: None,
        batch_sweep: Vec::new(),
        noisy: false,
        parity: Vec::new(),
        verdict: "not measured".into(),
        tolerance: None,
        task: None,
        predictions: Vec::new(),
        confidence: Vec::new(),
        first_output: None,
    }
}

/// Runs the model at `path` (an engine through the TensorRT script, else on ONNX
/// Runtime); None when it cannot run here, with the reason in `result`.
fn measure_model(
    setup: &Setup,
    path: &Path,
    result: &mut ModelResult,
) -> Result<Option<Box<Measured>>, SummarizeError> {
    let outcome = if inputs::is_engine(path) {
        if result.precision == "fp32" && !path.with_extension("manifest.json").is_file() {
            result.precision = "unknown".into();
        }
        measure::engine(setup, path, path.is_file())
    } else {
        measure::onnx(setup, path)
    };
    let outcome = outcome.map_err(|source| SummarizeError::Model {
        model: result.name.clone(),
        source: Box::new(source),
    })?;
    match outcome {
        Outcome::Ran(measured) => Ok(Some(measured)),
        Outcome::Unavailable(why) => {
            result.status = "unavailable".into();
            result.note = Some(why);
            Ok(None)
        }
    }
}

/// The model's runs in its row: where it ran, the timed and end-to-end latencies and the
/// sweep; returns the warning when its timings are noisy.
fn record_runs(
    result: &mut ModelResult,
    measured: &Measured,
    provider: &Provider,
    samples: usize,
) -> Option<String> {
    result.runs_on = Some(
        measured
            .ran_on
            .clone()
            .unwrap_or_else(|| format!("ONNX Runtime {}", provider.name())),
    );
    result.timing = measured
        .timing
        .as_ref()
        .map(|t| format!("{t}: pure execution on inputs already on the GPU"));
    result.batch_sweep = measured.sweep.clone();
    result.batch = measured.batch;
    result.end_to_end = Some(metrics::latency(
        &measured.end_to_end,
        samples,
        measured.end_to_end_batch,
    ));
    let latency = metrics::latency(&measured.times, measured.sizes.iter().sum(), measured.batch);
    result.noisy = latency.spread > metrics::NOISY_CV;
    let warning = result.noisy.then(|| {
        format!(
            "{}: timings are noisy ((p90 - p10) / median = {:.0}% > {:.0}%): other work on the machine? compare with care",
            result.name,
            latency.spread * 100.0,
            metrics::NOISY_CV * 100.0
        )
    });
    result.latency = Some(latency);
    warning
}

/// The model's outputs against the reference (parity and its verdict; the reference
/// model's own outputs become the reference) and the task metrics.
fn evaluate_outputs(
    c: &Config,
    outputs: data::Named,
    reference: &mut ReferenceInfo,
    labels: Option<&ArrayD<i64>>,
    result: &mut ModelResult,
) -> Result<(), EvaluateError> {
    if reference.model.as_deref() == Some(result.name.as_str()) {
        if reference.outputs.is_empty() {
            reference.outputs = outputs.clone();
        }
        result.verdict = "reference".into();
    } else if !reference.outputs.is_empty() {
        let tolerance = c.tolerances[&result.precision];
        result.tolerance = Some(tolerance);
        result.parity = evaluate::compare(&outputs, &reference.outputs, &tolerance)?;
        result.verdict = if result.parity.iter().all(|p| p.failure.is_none()) {
            "pass".into()
        } else {
            "fail".into()
        };
    }
    result.task =
        evaluate::task_metrics(c.task, &outputs, &reference.outputs, labels, c.dice, result)?;
    if c.save_outputs {
        result.first_output = outputs.into_iter().next().map(|(_, array)| array);
    }
    Ok(())
}

/// How the runs were timed.
fn timing_info(c: &Config, provider: &Provider) -> TimingInfo {
    TimingInfo {
        includes: TIMING_NOTE,
        end_to_end_includes: END_TO_END_NOTE,
        warmup: c.warmup,
        iterations: c.iterations,
        min_duration_s: c.min_duration.as_secs_f64(),
        threads: if c.threads == 0 {
            "ONNX Runtime default".into()
        } else {
            c.threads.to_string()
        },
        provider: provider.name(),
        graph_optimization: onnxruntime::OPTIMIZATION_NAME,
    }
}

/// `sliding_window` as it ran on the data, when the report slides a window.
fn sliding_info(c: &Config, data: &ArrayD<f32>) -> Result<Option<SlidingWindowInfo>, WindowError> {
    let (Some(settings), Some(plan)) = (&c.sliding_window, measure::plan_for(c, data)?) else {
        return Ok(None);
    };
    Ok(Some(SlidingWindowInfo {
        settings: settings.clone(),
        windows_per_sample: plan.windows(),
        timing: SLIDING_TIMING_NOTE,
    }))
}

/// Each disagreement's file, from the dataset's manifest.
fn name_files(models: &mut [ModelResult], names: &DatasetNames) {
    for model in models {
        let list = model.task.as_mut().and_then(|t| t.disagreements.as_mut());
        for d in list.into_iter().flatten() {
            d.file = names.files.as_ref().and_then(|f| f.get(d.index).cloned());
        }
    }
}

/// `path` as the report shows it: relative to the project when it is inside it.
fn display_path(context: &InvocationContext, path: &Path) -> String {
    path.strip_prefix(&context.dir)
        .unwrap_or(path)
        .display()
        .to_string()
}
