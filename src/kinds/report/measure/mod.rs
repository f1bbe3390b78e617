//! Running one model for the report, on ONNX Runtime in process or through the TensorRT
//! script: the timed runs, the batch sweep (`batch = [1, 4, 16]`: the same timed loop at each
//! batch size, sizes a model cannot take skipped with the reason), and the pass over the
//! data for the outputs: whole samples, or sliding windows stitched as MONAI does
//! (`sliding_window`), in which case the model's samples are the windows.

mod engine;
mod onnx;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use ndarray::{ArrayD, Axis};
use ort::environment::Environment;
use serde::Serialize;

use super::config::Config;
use super::data;
use super::evaluate::EvaluateError;
use super::metrics::Latency;
use super::onnxruntime::{OnnxRuntimeError, Provider};
use super::sliding_window::{Plan, Settings, WindowError};
use super::tensorrt::TensorRtError;
use crate::kinds::InvocationContext;

pub(super) use engine::engine;
pub(super) use onnx::{onnx, reference};

/// Why a model could not be measured.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub(super) enum MeasureError {
    #[error("{}: the model's input is {shape:?} (-1 = any), but sliding_window.roi = {roi:?}", path.display())]
    #[diagnostic(help("set roi to the model's spatial input size"))]
    Roi {
        path: PathBuf,
        shape: Vec<i64>,
        roi: Vec<usize>,
    },
    #[error("{}: the model's batch axis is fixed at {fixed}, but sliding_window.sw_batch_size = {sw_batch_size}", path.display())]
    #[diagnostic(help("set sw_batch_size = {fixed}, or export with dynamic = [\"batch\"]"))]
    WindowBatch {
        path: PathBuf,
        fixed: usize,
        sw_batch_size: usize,
    },
    /// The reference model cannot run on this provider.
    #[error("{}: {note}", path.display())]
    ReferenceNotRun { path: PathBuf, note: String },
    #[error(transparent)]
    #[diagnostic(transparent)]
    OnnxRuntime(#[from] OnnxRuntimeError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    TensorRt(#[from] TensorRtError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Evaluate(#[from] EvaluateError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Window(#[from] WindowError),
    #[error(transparent)]
    Shape(#[from] ndarray::ShapeError),
}

/// What a model's measurement needs.
pub(super) struct Setup<'a> {
    pub config: &'a Config,
    pub context: &'a InvocationContext,
    pub data: &'a ArrayD<f32>,
    pub environment: &'a Environment,
    pub provider: &'a Provider,
    /// GPUs on the machine (for the reason an engine cannot run).
    pub machine_gpus: usize,
    pub cancel: &'a AtomicBool,
}

/// One model's runs.
pub(super) struct Measured {
    /// Samples (windows, with `sliding_window`) per timed run.
    pub batch: usize,
    /// Seconds of each timed run, and its samples.
    pub times: Vec<f64>,
    pub sizes: Vec<usize>,
    /// Seconds of each run of the pass over the data, end to end (with `sliding_window`:
    /// each sample's windows cut, run, blended and cropped).
    pub end_to_end: Vec<f64>,
    /// Samples per end-to-end run.
    pub end_to_end_batch: usize,
    pub outputs: data::Named,
    pub sweep: Vec<SweepPoint>,
    /// "TensorRT 11.4 on H100" for engines (ONNX: the caller knows the provider).
    pub ran_on: Option<String>,
    /// How an engine's script timed its runs.
    pub timing: Option<String>,
}

/// A model's figures at one batch size of the sweep.
#[derive(Debug, Clone, Serialize)]
pub(super) struct SweepPoint {
    pub batch: usize,
    /// Why this batch size was not timed (outside the engine's profile, a fixed batch axis).
    pub skipped: Option<String>,
    pub latency: Option<Latency>,
}

/// A model that ran, or why it could not run here.
pub(super) enum Outcome {
    Ran(Box<Measured>),
    Unavailable(String),
}

/// The model's fixed batch, if its batch axis is fixed.
fn fixed_batch(shape: &[i64]) -> Option<usize> {
    shape.first().filter(|&&d| d > 0).map(|&d| d as usize)
}

/// With a sliding window, a model whose spatial input is fixed must take the window.
fn check_roi(shape: &[i64], settings: &Settings, path: &Path) -> Result<(), MeasureError> {
    let spatial = shape.get(2..).unwrap_or_default();
    let fixed = spatial.len() == settings.roi.len()
        && spatial
            .iter()
            .zip(&settings.roi)
            .all(|(&d, &r)| d <= 0 || d as usize == r);
    if fixed {
        return Ok(());
    }
    Err(MeasureError::Roi {
        path: path.to_path_buf(),
        shape: shape.to_vec(),
        roi: settings.roi.clone(),
    })
}

/// `batch` samples per batch, as many full batches as `samples` holds (at least one,
/// cycling through the samples when there are fewer than `batch`).
pub(super) fn full_batches(samples: &ArrayD<f32>, batch: usize) -> Vec<ArrayD<f32>> {
    let n = samples.shape()[0];
    let count = (n / batch).max(1);
    (0..count)
        .map(|b| {
            let picked: Vec<usize> = (0..batch).map(|j| (b * batch + j) % n).collect();
            samples.select(Axis(0), &picked)
        })
        .collect()
}

/// The plan for the data's samples, when the report slides a window.
pub(super) fn plan_for(config: &Config, data: &ArrayD<f32>) -> Result<Option<Plan>, WindowError> {
    config
        .sliding_window
        .as_ref()
        .map(|sw| Plan::new(sw, &data.shape()[1..]))
        .transpose()
}

fn timed(batch: usize, latency: Latency) -> SweepPoint {
    SweepPoint {
        batch,
        skipped: None,
        latency: Some(latency),
    }
}

fn skipped(batch: usize, why: String) -> SweepPoint {
    SweepPoint {
        batch,
        skipped: Some(why),
        latency: None,
    }
}
