//! What the report found, as `summary.json` holds it and the other files show it: the
//! data, the reference, how the runs were timed, the environment, and one row per model.

use ndarray::ArrayD;
use serde::Serialize;

use super::config::Task;
use super::measure::SweepPoint;
use super::metrics::{self, Classification, Latency, Parity, Tolerance};
use super::{environment, provenance, segmentation, sliding_window};

/// One model's row of the report.
#[derive(Debug, Serialize)]
pub(super) struct ModelResult {
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
    pub batch_sweep: Vec<SweepPoint>,
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
pub(super) struct OutputParity {
    pub output: String,
    #[serde(flatten)]
    pub figures: Parity,
    pub failure: Option<String>,
    /// |model - reference| by decade.
    pub errors: metrics::ErrorHistogram,
}

#[derive(Debug, Serialize)]
pub(super) struct TaskResult {
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
pub(super) struct Disagreement {
    pub index: usize,
    /// The sample's file, from the dataset's manifest.
    pub file: Option<String>,
    pub reference: usize,
    pub predicted: usize,
    /// The softmax probability of the model's top class.
    pub confidence: f64,
}

/// The reference the models are compared with.
#[derive(Debug, Serialize)]
pub(super) struct ReferenceInfo {
    pub description: String,
    #[serde(skip)]
    pub outputs: Vec<(String, ArrayD<f32>)>,
    /// The model name when the reference is one of the models.
    #[serde(skip)]
    pub model: Option<String>,
}

/// Everything the report writes.
#[derive(Debug, Serialize)]
pub(super) struct Summary {
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
pub(super) struct SlidingWindowInfo {
    #[serde(flatten)]
    pub settings: sliding_window::Settings,
    pub windows_per_sample: usize,
    /// What the timed and end-to-end figures mean with windows.
    pub timing: &'static str,
}

/// What the figures mean with a sliding window.
pub(super) const SLIDING_TIMING_NOTE: &str = "timed runs: batches of windows (batch = windows per run) cut from the first sample; end to end: one sample per run, its windows cut, run, blended and cropped";

/// Class names and per-sample file names from a dataset stage's manifest
/// (`<stem>_manifest.json` next to the data: `classes`, `files`).
#[derive(Debug, Default, Serialize)]
pub(super) struct DatasetNames {
    pub classes: Option<Vec<String>>,
    #[serde(skip)]
    pub files: Option<Vec<String>>,
}

#[derive(Debug, Serialize)]
pub(super) struct DataInfo {
    pub path: String,
    pub samples: usize,
    pub sample_shape: Vec<usize>,
    pub labels: Option<String>,
    /// From the dataset's manifest, when the data is a dataset stage's output.
    #[serde(flatten)]
    pub names: DatasetNames,
}

#[derive(Debug, Serialize)]
pub(super) struct TimingInfo {
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

impl Summary {
    /// The sample's file (from the dataset's manifest), else `<data>#<index>`.
    pub(super) fn sample_file(&self, index: usize) -> String {
        self.data
            .names
            .files
            .as_ref()
            .and_then(|f| f.get(index).cloned())
            .unwrap_or_else(|| format!("{}#{index}", self.data.path))
    }

    /// The dataset's class name, else `class_<i>`.
    pub(super) fn class_name(&self, class: usize) -> String {
        self.data
            .names
            .classes
            .as_ref()
            .and_then(|c| c.get(class).cloned())
            .unwrap_or_else(|| format!("class_{class}"))
    }
}
