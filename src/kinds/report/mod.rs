//! The `report` stage kind: every model of the pipeline side by side on the same data:
//! latency and throughput (ONNX Runtime through `ort`, in process), parity against a
//! reference, task metrics, and the environment they were measured in. Writes
//! `summary.json`, `report.md`, `latency.svg` and, for classification, pochitrain's
//! `predictions.csv` / `classification_report.csv` and a confusion matrix.

mod charts;
mod config;
mod data;
mod environment;
mod evaluate;
mod measure;
pub mod metrics;
mod onnxruntime;
mod outputs;
mod provenance;
pub mod retime;
pub mod segmentation;
pub mod sliding_window;
mod tensorrt;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use ndarray::ArrayD;
use serde::Serialize;
use serde_json::{Value, json};
use toml::Spanned;
use toml::de::DeValue;

use self::config::{Config, Task};
use self::metrics::{Classification, Latency, Parity, Tolerance};
use super::worker::{Program, WorkerStage};
use super::{
    Host, InvocationContext, KindInfo, Requirements, StageError, StageKind, TensorRtUse, Tool,
    WithoutGpu,
};
use crate::pipeline::parse_api::Parser;
use crate::pipeline::{Device, InputSource, NamedInput, NamedOutput, SpanError};

pub static INFO: KindInfo = KindInfo {
    name: "report",
    keys: super::keys_of::<config::ReportKeys>,
    parse,
    workers: &[],
    schema: |generator| generator.subschema_for::<config::ReportKeys>(),
};

/// The version of `summary.json`'s layout.
pub const SCHEMA_VERSION: u32 = 2;

/// What the timed figures include.
pub const TIMING_NOTE: &str = "pure inference: session.run on preloaded input tensors (no file reading, preprocessing or copies into the input); outputs are dropped unread";
/// What the end-to-end figures include.
pub const END_TO_END_NOTE: &str = "end to end: one pass over the data after the timed runs, each run timed from copying the batch into a new input tensor to copying the outputs out (no file reading or image preprocessing)";

#[derive(Debug)]
struct Report {
    config: Config,
}

fn parse(parser: &Parser, value: &Spanned<DeValue>) -> Result<Box<dyn StageKind>, SpanError> {
    Ok(Box::new(Report {
        config: config::parse(parser, value)?,
    }))
}

/// One model's row of the report.
#[derive(Debug, Serialize)]
pub struct ModelResult {
    pub name: String,
    /// The short name in charts and file names: the stage, else the file's stem.
    pub label: String,
    pub path: String,
    /// "ok" or "unavailable"
    pub status: String,
    pub note: Option<String>,
    pub precision: String,
    pub size_bytes: u64,
    /// What ran it: "ONNX Runtime CPUExecutionProvider", "TensorRT 11.4.0 on NVIDIA H100".
    pub runs_on: Option<String>,
    /// What the timed runs include, when it differs from `timing.includes` (engines).
    pub timing: Option<String>,
    pub batch: usize,
    pub latency: Option<Latency>,
    /// One pass over the data after the timed runs, each run timed with the copy of the
    /// batch into a new input tensor and of the outputs out of ONNX Runtime.
    pub end_to_end: Option<Latency>,
    /// `batch = [...]`: the figures at each batch size (empty without a sweep).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub batch_sweep: Vec<measure::SweepPoint>,
    pub noisy: bool,
    pub parity: Vec<OutputParity>,
    /// "pass", "fail", "reference" (the model is the reference) or "not measured".
    pub verdict: String,
    pub tolerance: Option<Tolerance>,
    pub task: Option<TaskResult>,
    #[serde(skip)]
    pub predictions: Vec<usize>,
    #[serde(skip)]
    pub confidence: Vec<f64>,
    /// The first output, kept for `save_outputs`.
    #[serde(skip)]
    pub first_output: Option<ArrayD<f32>>,
}

#[derive(Debug, Serialize)]
pub struct OutputParity {
    pub output: String,
    #[serde(flatten)]
    pub figures: Parity,
    pub failure: Option<String>,
    /// |model - reference| by decade.
    pub errors: metrics::ErrorHistogram,
}

#[derive(Debug, Serialize)]
pub struct TaskResult {
    /// Share of samples (classification) or voxels (segmentation) whose argmax equals the
    /// reference's.
    pub agreement_with_reference: Option<f64>,
    pub classification: Option<Classification>,
    /// Classification: the samples whose argmax differs from the reference's.
    pub disagreements: Option<Vec<Disagreement>>,
    /// Segmentation against the reference's argmax.
    pub segmentation_vs_reference: Option<segmentation::Segmentation>,
    /// Segmentation against the labels.
    pub segmentation_vs_labels: Option<segmentation::Segmentation>,
}

/// A sample on which a model's top class differs from the reference's.
#[derive(Debug, Serialize)]
pub struct Disagreement {
    pub index: usize,
    /// The sample's file, from the dataset's manifest.
    pub file: Option<String>,
    pub reference: usize,
    pub predicted: usize,
    /// The softmax probability of the model's top class.
    pub confidence: f64,
}

impl WorkerStage for Report {
    fn kind(&self) -> &'static str {
        "report"
    }

    fn inputs(&self) -> &[NamedInput] {
        &self.config.inputs
    }

    fn outputs(&self) -> &[NamedOutput] {
        &self.config.outputs
    }

    fn params(&self, _host: &Host) -> Value {
        let c = &self.config;
        let mut params = json!({
            "models": c.models,
            "has_data": c.has_data,
            "has_reference": c.has_reference,
            "has_labels": c.has_labels,
            "task": c.task,
            "warmup": c.warmup,
            "iterations": c.iterations,
            "min_duration_s": c.min_duration.as_secs_f64(),
            "threads": c.threads,
            "batch": c.batch,
            "tolerances": c.tolerances,
            "fail_on_parity": c.fail_on_parity,
            "dice": c.dice,
            "save_outputs": c.save_outputs,
            "schema": SCHEMA_VERSION,
            "tensorrt_worker": super::engine::WORKER.hash(),
        });
        // Only when given, so that the keys of reports without them stay as they were.
        if !c.sweep.is_empty() {
            params["batch_sweep"] = json!(c.sweep);
        }
        if let Some(sw) = &c.sliding_window {
            params["sliding_window"] = json!(sw);
        }
        params
    }

    /// Runs on the CPU when the machine has no GPU (engines are then listed as
    /// unavailable), covers the models that exist, and asks for a GPU by default when a
    /// model is an engine file or comes from a stage that needs one.
    fn requirements(&self) -> Requirements {
        let models: Vec<String> = self
            .config
            .models
            .iter()
            .map(|(key, _)| key.clone())
            .collect();
        let engine_file = self.config.inputs.iter().any(|input| {
            models.contains(&input.key)
                && matches!(&input.source, InputSource::Path(path) if is_engine(path))
        });
        Requirements {
            tool: Tool::Python,
            python_modules: vec!["onnxruntime"],
            default_device: if engine_file {
                Device::Cuda(None)
            } else {
                Device::Cpu
            },
            device_follows: models,
            without_gpu: WithoutGpu::RunsOnCpu,
            tensorrt: TensorRtUse::WhenPresent,
            tolerates_unavailable_inputs: true,
            reports_environment: true,
        }
    }

    fn program(&self) -> Program {
        Program::Pochi
    }

    fn run_in_process(
        &self,
        context: &InvocationContext,
        cancel: &AtomicBool,
    ) -> Result<Vec<String>, StageError> {
        let summary = self.measure(context, cancel).map_err(StageError::new)?;
        let written =
            outputs::write_all(context, &self.config, &summary).map_err(StageError::new)?;
        let failures: Vec<String> = summary
            .models
            .iter()
            .filter(|m| m.verdict == "fail")
            .map(|m| {
                let details: Vec<String> = m
                    .parity
                    .iter()
                    .filter_map(|p| p.failure.as_ref().map(|f| format!("`{}`: {f}", p.output)))
                    .collect();
                format!("{} ({}): {}", m.name, m.precision, details.join("; "))
            })
            .collect();
        if failures.is_empty() || !self.config.fail_on_parity {
            return Ok(failures
                .iter()
                .map(|failure| format!("parity failure (on_parity_failure = \"warn\"): {failure}"))
                .collect());
        }
        let kept = keep_for_inspection(context, &written);
        Err(StageError::new(format!(
            "parity check failed against the reference ({}):\n  {}\nthe report was kept for inspection in {}",
            summary.reference.description,
            failures.join("\n  "),
            kept
        ))
        .with_hint("if the difference is expected, loosen tolerances = { <precision> = { atol = ..., rtol = ..., cosine = ... } } or set on_parity_failure = \"warn\""))
    }
}

/// Copies the written files to `<state>/failed/<stage>/` (temporary outputs are
/// discarded when a stage fails); returns where, for the message.
fn keep_for_inspection(context: &InvocationContext, written: &[PathBuf]) -> String {
    let dir = context.state_dir.join("failed").join(&context.stage);
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        return format!("(nowhere: cannot create {}: {e})", dir.display());
    }
    for file in written {
        if let Some(name) = file.file_name() {
            let _ = std::fs::copy(file, dir.join(name));
        }
    }
    dir.strip_prefix(&context.dir)
        .unwrap_or(&dir)
        .display()
        .to_string()
}

/// The reference the models are compared with.
#[derive(Debug, Serialize)]
pub struct ReferenceInfo {
    pub description: String,
    #[serde(skip)]
    pub outputs: Vec<(String, ArrayD<f32>)>,
    /// The model name when the reference is one of the models.
    #[serde(skip)]
    pub model: Option<String>,
}

/// Everything the report writes.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub schema_version: u32,
    pub stage: String,
    /// Pipeline, date and commit, for the title.
    pub provenance: provenance::Provenance,
    pub task: Task,
    pub data: DataInfo,
    pub reference: ReferenceInfo,
    pub timing: TimingInfo,
    pub environment: environment::EnvironmentInfo,
    pub models: Vec<ModelResult>,
    pub warnings: Vec<String>,
    /// `batch = [...]`: the batch sizes every model was timed at.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub batch_sweep: Vec<usize>,
    /// How samples were cut into windows, when the report slides a window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sliding_window: Option<SlidingWindowInfo>,
    #[serde(skip)]
    pub labels: Option<ArrayD<i64>>,
}

/// `sliding_window` as it ran.
#[derive(Debug, Serialize)]
pub struct SlidingWindowInfo {
    #[serde(flatten)]
    pub settings: sliding_window::Settings,
    pub windows_per_sample: usize,
    /// What the timed and end-to-end figures mean with windows.
    pub timing: &'static str,
}

/// What the figures mean with a sliding window.
pub const SLIDING_TIMING_NOTE: &str = "timed runs: batches of windows (batch = windows per run) cut from the first sample; end to end: one sample per run, its windows cut, run, blended and cropped";

/// Class names and per-sample file names from a dataset stage's manifest
/// (`<stem>_manifest.json` next to the data: `classes`, `files`).
#[derive(Debug, Default, Serialize)]
pub struct DatasetNames {
    pub classes: Option<Vec<String>>,
    #[serde(skip)]
    pub files: Option<Vec<String>>,
}

fn dataset_names(data: &Path) -> DatasetNames {
    let stem = data
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let manifest = data.with_file_name(format!("{stem}_manifest.json"));
    let Some(value) = std::fs::read(&manifest)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
    else {
        return DatasetNames::default();
    };
    let strings = |key: &str| -> Option<Vec<String>> {
        value.get(key)?.as_array().map(|list| {
            list.iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string())
                })
                .collect()
        })
    };
    DatasetNames {
        classes: strings("classes").filter(|c| !c.is_empty()),
        files: strings("files"),
    }
}

#[derive(Debug, Serialize)]
pub struct DataInfo {
    pub path: String,
    pub samples: usize,
    pub sample_shape: Vec<usize>,
    pub labels: Option<String>,
    /// From the dataset's manifest, when the data is a dataset stage's output.
    #[serde(flatten)]
    pub names: DatasetNames,
}

#[derive(Debug, Serialize)]
pub struct TimingInfo {
    pub includes: &'static str,
    pub end_to_end_includes: &'static str,
    pub warmup: usize,
    pub iterations: usize,
    pub min_duration_s: f64,
    pub threads: String,
    pub provider: &'static str,
    /// ONNX Runtime's graph optimization level of every session (`ORT_ENABLE_ALL`, as
    /// Python's `onnxruntime.InferenceSession` by default).
    pub graph_optimization: &'static str,
}

fn rel(context: &InvocationContext, path: &Path) -> PathBuf {
    context.dir.join(path)
}

fn is_engine(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("engine" | "plan" | "trt")
    )
}

/// The size of a model on disk, with its external data file if any.
fn size_on_disk(path: &Path) -> u64 {
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let mut data = path.as_os_str().to_owned();
    data.push(".data");
    size(path) + size(Path::new(&data))
}

/// The precision of a model: a `precision` in the manifest next to it
/// (`<stem>.manifest.json`, as quantize stages write), else fp32.
fn precision_of(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let manifest = path.with_file_name(format!("{stem}.manifest.json"));
    std::fs::read(&manifest)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
        .and_then(|v| {
            v.get("precision")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .filter(|p| metrics::PRECISIONS.contains(&p.as_str()))
        .unwrap_or_else(|| "fp32".into())
}

impl Report {
    fn measure(&self, context: &InvocationContext, cancel: &AtomicBool) -> Result<Summary, String> {
        let c = &self.config;
        let facts = environment::from_host(&context.host);
        let input = |key: &str| context.inputs.get(key).map(|p| rel(context, p));

        // The data, and the export's reference outputs when the data is its .npz.
        let data_path = input("data").ok_or("the report has no data input")?;
        let (data, npz_outputs) = if data_path.extension().is_some_and(|e| e == "npz") {
            let (inputs, outputs) = data::read_reference(&data_path)?;
            let Some((_, array)) = inputs.into_iter().next() else {
                return Err(format!("{} holds no input.* array", data_path.display()));
            };
            (array, Some(outputs))
        } else {
            (data::read_f32(&data_path)?, None)
        };
        if data.ndim() < 2 || data.shape()[0] == 0 {
            return Err(format!(
                "{}: expected N x C x ... samples, got shape {:?}",
                data_path.display(),
                data.shape()
            ));
        }
        let samples = data.shape()[0];
        let labels = match input("labels") {
            Some(path) => {
                let labels = data::read_labels(&path)?;
                if labels.shape().first() != Some(&samples) {
                    return Err(format!(
                        "{} has {:?} labels for {samples} samples",
                        path.display(),
                        labels.shape()
                    ));
                }
                Some(labels)
            }
            None => None,
        };

        let library = facts.onnxruntime_library.clone().ok_or_else(|| {
            "cannot find ONNX Runtime's library (onnxruntime/capi/libonnxruntime.so*) in the toolchain's site-packages\nhint: `pochi toolchain sync`, or set POCHI_ONNXRUNTIME_LIB to the library's path".to_string()
        })?;
        let environment = onnxruntime::environment(&library)?;
        let provider = onnxruntime::provider_for(context.gpu);
        let mut warnings = Vec::new();
        if let onnxruntime::Provider::Cpu {
            warning: Some(warning),
        } = &provider
        {
            warnings.push(warning.clone());
        }

        let setup = measure::Setup {
            config: c,
            context,
            data: &data,
            environment: &environment,
            provider: &provider,
            machine_gpus: facts.gpus.len(),
            cancel,
        };
        // The reference outputs.
        let mut reference = match (input("reference"), npz_outputs) {
            (Some(path), _) if path.extension().is_some_and(|e| e == "npz") => {
                let (_, outputs) = data::read_reference(&path)?;
                ReferenceInfo {
                    description: format!("reference outputs in {}", c_display(context, &path)),
                    outputs,
                    model: None,
                }
            }
            (Some(path), _) => {
                let name = c
                    .models
                    .iter()
                    .zip(&c.inputs)
                    .find(|(_, i)| input(&i.key).as_deref() == Some(path.as_path()))
                    .map(|((_, text), _)| text.clone());
                ReferenceInfo {
                    description: format!(
                        "{} run on ONNX Runtime ({})",
                        c_display(context, &path),
                        provider.name()
                    ),
                    outputs: measure::reference(&setup, &path)?,
                    model: name,
                }
            }
            (None, Some(outputs)) => ReferenceInfo {
                description: format!(
                    "the export's PyTorch outputs ({})",
                    c_display(context, &data_path)
                ),
                outputs,
                model: None,
            },
            (None, None) => ReferenceInfo {
                description: format!("the first model ({})", c.models[0].1),
                outputs: Vec::new(),
                model: Some(c.models[0].1.clone()),
            },
        };

        let mut models = Vec::new();
        for (index, (key, text)) in c.models.iter().enumerate() {
            let path = input(key).ok_or_else(|| format!("model input `{key}` is missing"))?;
            let mut result = ModelResult {
                name: text.clone(),
                label: c.labels[index].clone(),
                path: c_display(context, &path),
                status: "ok".into(),
                note: None,
                precision: precision_of(&path),
                size_bytes: size_on_disk(&path),
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
            };
            let outcome = if is_engine(&path) {
                if result.precision == "fp32" && !path.with_extension("manifest.json").is_file() {
                    result.precision = "unknown".into();
                }
                measure::engine(&setup, &path, path.is_file())
            } else {
                measure::onnx(&setup, &path)
            };
            let mut measured = match outcome.map_err(|e| format!("{text}: {e}"))? {
                measure::Outcome::Ran(measured) => measured,
                measure::Outcome::Unavailable(why) => {
                    result.status = "unavailable".into();
                    result.note = Some(why);
                    models.push(result);
                    continue;
                }
            };
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
            let latency =
                metrics::latency(&measured.times, measured.sizes.iter().sum(), measured.batch);
            result.noisy = latency.spread > metrics::NOISY_CV;
            if result.noisy {
                warnings.push(format!(
                    "{}: timings are noisy ((p90 - p10) / median = {:.0}% > {:.0}%): other work on the machine? compare with care",
                    text,
                    latency.spread * 100.0,
                    metrics::NOISY_CV * 100.0
                ));
            }
            result.latency = Some(latency);
            let named = std::mem::take(&mut measured.outputs);
            if reference.model.as_deref() == Some(text.as_str()) {
                if reference.outputs.is_empty() {
                    reference.outputs = named.clone();
                }
                result.verdict = "reference".into();
            } else if !reference.outputs.is_empty() {
                let tolerance = c.tolerances[&result.precision];
                result.tolerance = Some(tolerance);
                result.parity = evaluate::compare(&named, &reference.outputs, &tolerance)?;
                result.verdict = if result.parity.iter().all(|p| p.failure.is_none()) {
                    "pass".into()
                } else {
                    "fail".into()
                };
            }
            result.task = evaluate::task_metrics(
                c.task,
                &named,
                &reference.outputs,
                labels.as_ref(),
                c.dice,
                &mut result,
            )?;
            if c.save_outputs {
                result.first_output = named.into_iter().next().map(|(_, array)| array);
            }
            models.push(result);
        }
        let names = dataset_names(&data_path);
        name_files(&mut models, &names);
        let data_info = DataInfo {
            path: c_display(context, &data_path),
            samples,
            sample_shape: data.shape()[1..].to_vec(),
            labels: input("labels").map(|p| c_display(context, &p)),
            names,
        };
        Ok(Summary {
            schema_version: SCHEMA_VERSION,
            stage: context.stage.to_string(),
            provenance: provenance::query(context),
            task: c.task,
            data: data_info,
            reference,
            timing: TimingInfo {
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
            },
            environment: facts.info(c.threads),
            models,
            warnings,
            batch_sweep: c.sweep.clone(),
            sliding_window: sliding_info(c, &data)?,
            labels,
        })
    }
}

fn sliding_info(c: &Config, data: &ArrayD<f32>) -> Result<Option<SlidingWindowInfo>, String> {
    let Some(settings) = &c.sliding_window else {
        return Ok(None);
    };
    let plan =
        sliding_window::Plan::new(settings, &data.shape()[1..]).map_err(|e| e.to_string())?;
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

fn c_display(context: &InvocationContext, path: &Path) -> String {
    path.strip_prefix(&context.dir)
        .unwrap_or(path)
        .display()
        .to_string()
}
