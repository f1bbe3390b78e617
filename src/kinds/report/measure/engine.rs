//! A TensorRT engine through the engine script: the timed runs and the pass over the data
//! in one script run (the windows of every sample, with `sliding_window`, stitched here),
//! then the batch sweep within the engine's profile.

use std::borrow::Cow;
use std::path::Path;

use ndarray::{ArrayD, Axis, IxDyn};
use serde_json::Value;

use super::super::config::Config;
use super::super::metrics;
use super::super::sliding_window::Plan;
use super::super::tensorrt::{self, EngineRun, TensorRtError};
use super::{
    MeasureError, Measured, Outcome, Setup, SweepPoint, full_batches, plan_for, skipped, timed,
};

/// A TensorRT engine through the script: its timed runs and the pass over the data (the
/// windows of every sample, with `sliding_window`, stitched here), then the sweep.
pub(crate) fn engine(s: &Setup, path: &Path, file_exists: bool) -> Result<Outcome, MeasureError> {
    if let Some(why) = tensorrt::why_not(s.context, s.machine_gpus, file_exists) {
        return Ok(Outcome::Unavailable(why));
    }
    let c = s.config;
    let plan = plan_for(c, s.data)?;
    let range = profile_range(path);
    let asked = match c.sweep.is_empty() {
        true => c.batch,
        false => c.sweep.iter().copied().find(|&b| inside(range, b)),
    };
    let sw_batch = c.sliding_window.as_ref().map(|sw| sw.sw_batch_size);
    let samples = match &plan {
        Some(plan) => Cow::Owned(all_windows(plan, s.data)),
        None => Cow::Borrowed(s.data),
    };
    let run = tensorrt::run(
        s.context,
        path,
        &samples,
        runs(c, asked.or(sw_batch)),
        s.cancel,
    )?;
    let fixed = plan.is_none() && fixed_engine(path);
    let sweep = sweep(s, path, &samples, &run, range, fixed)?;
    drop(samples);
    let (names, arrays): (Vec<String>, Vec<ArrayD<f32>>) = run.outputs.into_iter().unzip();
    let arrays = match &plan {
        Some(plan) => stitch_all(plan, arrays, s.data.shape()[0])?,
        None => arrays,
    };
    Ok(Outcome::Ran(Box::new(Measured {
        batch: run.batch,
        times: run.times,
        sizes: run.samples,
        end_to_end: run.end_to_end,
        end_to_end_batch: run.batch,
        outputs: names.into_iter().zip(arrays).collect(),
        sweep,
        ran_on: Some(run.ran_on),
        timing: Some(run.timing),
    })))
}

/// Whether `batch` is inside the engine's profile (`range`; None: no profile known).
fn inside(range: Option<(usize, usize)>, batch: usize) -> bool {
    range.is_none_or(|(low, high)| (low..=high).contains(&batch))
}

/// The script's runs at `batch`, as the report's keys ask.
fn runs(c: &Config, batch: Option<usize>) -> tensorrt::Runs {
    tensorrt::Runs {
        batch,
        warmup: c.warmup,
        iterations: c.iterations,
        min_duration: c.min_duration,
    }
}

/// The batch sweep of an engine: its own batch is the run's timed runs, sizes outside its
/// profile (or any other size, for an engine with a `fixed` batch) are skipped, and each
/// other size is one more run of the script on one full batch.
fn sweep(
    s: &Setup,
    path: &Path,
    samples: &ArrayD<f32>,
    run: &EngineRun,
    range: Option<(usize, usize)>,
    fixed: bool,
) -> Result<Vec<SweepPoint>, TensorRtError> {
    let c = s.config;
    let main = metrics::latency(&run.times, run.samples.iter().sum(), run.batch);
    let mut sweep = Vec::new();
    for &b in &c.sweep {
        let point = match range {
            _ if b == run.batch => timed(b, main.clone()),
            Some((low, high)) if !inside(range, b) => skipped(
                b,
                format!("outside the engine's profile (batch {low}..{high})"),
            ),
            None if fixed => skipped(b, format!("the engine's batch is fixed at {}", run.batch)),
            _ => {
                let one = full_batches(samples, b).swap_remove(0);
                let r = tensorrt::run(s.context, path, &one, runs(c, Some(b)), s.cancel)?;
                timed(b, metrics::latency(&r.times, r.samples.iter().sum(), b))
            }
        };
        sweep.push(point);
    }
    Ok(sweep)
}

/// The windows of every sample, one after the other (`samples x windows` x C x roi).
fn all_windows(plan: &Plan, data: &ArrayD<f32>) -> ArrayD<f32> {
    let parts: Vec<ArrayD<f32>> = data.outer_iter().map(|s| plan.cut(s)).collect();
    let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
    ndarray::concatenate(Axis(0), &views).unwrap_or_else(|_| ArrayD::zeros(IxDyn(&[0])))
}

/// Stitches each output of `windows x ...` predictions of every sample back into samples.
fn stitch_all(
    plan: &Plan,
    outputs: Vec<ArrayD<f32>>,
    samples: usize,
) -> Result<Vec<ArrayD<f32>>, MeasureError> {
    outputs
        .into_iter()
        .map(|output| {
            let mut parts = Vec::with_capacity(samples);
            for i in 0..samples {
                let range = i * plan.windows()..(i + 1) * plan.windows();
                let windows = output.slice_axis(Axis(0), ndarray::Slice::from(range));
                parts.push(plan.stitch(windows)?.insert_axis(Axis(0)));
            }
            let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
            Ok(ndarray::concatenate(Axis(0), &views)?)
        })
        .collect()
}

/// The batch range of an engine's optimization profile, from the engine stage's manifest
/// (None: no manifest, or a static engine).
fn profile_range(engine: &Path) -> Option<(usize, usize)> {
    let manifest = crate::kinds::request::beside(engine, "manifest.json");
    let value: Value = serde_json::from_slice(&std::fs::read(manifest).ok()?).ok()?;
    let profile = value.pointer("/shapes/profiles/0")?;
    let first = |key: &str| profile.get(key)?.get(0)?.as_u64().map(|v| v as usize);
    Some((first("min")?, first("max")?))
}

/// Whether the engine was built without an optimization profile (a static ONNX).
fn fixed_engine(engine: &Path) -> bool {
    let manifest = crate::kinds::request::beside(engine, "manifest.json");
    std::fs::read(manifest)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| {
            v.pointer("/shapes/profiles")
                .and_then(Value::as_array)
                .map(Vec::is_empty)
        })
        .unwrap_or(false)
}
