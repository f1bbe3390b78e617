//! Running one model for the report, on ONNX Runtime in process or through the TensorRT
//! worker: the timed runs, the batch sweep (`batch = [1, 4, 16]`: the same timed loop at each
//! batch size, sizes a model cannot take skipped with the reason), and the pass over the
//! data for the outputs: whole samples, or sliding windows stitched as MONAI does
//! (`sliding_window`), in which case the model's samples are the windows.

use std::borrow::Cow;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use ndarray::{ArrayD, Axis, IxDyn};
use ort::environment::Environment;
use serde::Serialize;
use serde_json::Value;

use super::config::Config;
use super::metrics::{self, Latency};
use super::onnxruntime::{self, Model, Provider};
use super::sliding_window::{Plan, Settings};
use super::{data, evaluate, tensorrt};
use crate::kinds::InvocationContext;

/// What a model's measurement needs.
pub struct Setup<'a> {
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
pub struct Measured {
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
    /// How an engine's worker timed its runs.
    pub timing: Option<String>,
}

/// A model's figures at one batch size of the sweep.
#[derive(Debug, Clone, Serialize)]
pub struct SweepPoint {
    pub batch: usize,
    /// Why this batch size was not timed (outside the engine's profile, a fixed batch axis).
    pub skipped: Option<String>,
    pub latency: Option<Latency>,
}

/// A model that ran, or why it could not run here.
pub enum Outcome {
    Ran(Box<Measured>),
    Unavailable(String),
}

/// The model's fixed batch, if its batch axis is fixed.
fn fixed_batch(shape: &[i64]) -> Option<usize> {
    shape.first().filter(|&&d| d > 0).map(|&d| d as usize)
}

/// With a sliding window, a model whose spatial input is fixed must take the window.
fn check_roi(shape: &[i64], settings: &Settings, path: &Path) -> Result<(), String> {
    let spatial = shape.get(2..).unwrap_or_default();
    let fixed = spatial.len() == settings.roi.len()
        && spatial
            .iter()
            .zip(&settings.roi)
            .all(|(&d, &r)| d <= 0 || d as usize == r);
    if fixed {
        return Ok(());
    }
    Err(format!(
        "{}: the model's input is {shape:?} (-1 = any), but sliding_window.roi = {:?}\nhint: set roi to the model's spatial input size",
        path.display(),
        settings.roi
    ))
}

/// `batch` samples per batch, as many full batches as `samples` holds (at least one,
/// cycling through the samples when there are fewer than `batch`).
pub fn full_batches(samples: &ArrayD<f32>, batch: usize) -> Vec<ArrayD<f32>> {
    let n = samples.shape()[0];
    let count = (n / batch).max(1);
    (0..count)
        .map(|b| {
            let picked: Vec<usize> = (0..batch).map(|j| (b * batch + j) % n).collect();
            samples.select(Axis(0), &picked)
        })
        .collect()
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
) -> Result<Vec<ArrayD<f32>>, String> {
    outputs
        .into_iter()
        .map(|output| {
            let mut parts = Vec::with_capacity(samples);
            for i in 0..samples {
                let range = i * plan.windows()..(i + 1) * plan.windows();
                let windows = output.slice_axis(Axis(0), ndarray::Slice::from(range));
                parts.push(
                    plan.stitch(windows)
                        .map_err(|e| e.to_string())?
                        .insert_axis(Axis(0)),
                );
            }
            let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
            ndarray::concatenate(Axis(0), &views).map_err(|e| e.to_string())
        })
        .collect()
}

/// The pass over the data on ONNX Runtime: the outputs and each run's seconds end to end.
fn onnx_outputs(
    model: &mut Model,
    data: &ArrayD<f32>,
    batch: usize,
    plan: Option<(&Plan, usize)>,
) -> Result<(Vec<ArrayD<f32>>, Vec<f64>), String> {
    let Some((plan, sw_batch)) = plan else {
        return model.outputs_for(&onnxruntime::batches(data, batch));
    };
    let mut per_output: Vec<Vec<ArrayD<f32>>> = vec![Vec::new(); model.outputs.len()];
    let mut times = Vec::new();
    for sample in data.outer_iter() {
        let t0 = Instant::now();
        let windows = plan.cut(sample);
        let (outputs, _) = model.outputs_for(&onnxruntime::batches(&windows, sw_batch))?;
        for (k, output) in outputs.iter().enumerate() {
            let stitched = plan.stitch(output.view()).map_err(|e| e.to_string())?;
            per_output[k].push(stitched.insert_axis(Axis(0)));
        }
        times.push(t0.elapsed().as_secs_f64());
    }
    let outputs = per_output
        .into_iter()
        .map(|parts| {
            let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
            ndarray::concatenate(Axis(0), &views).map_err(|e| e.to_string())
        })
        .collect::<Result<_, String>>()?;
    Ok((outputs, times))
}

/// The plan for the data's samples, when the report slides a window.
fn plan_for(config: &Config, data: &ArrayD<f32>) -> Result<Option<Plan>, String> {
    config
        .sliding_window
        .as_ref()
        .map(|sw| Plan::new(sw, &data.shape()[1..]).map_err(|e| e.to_string()))
        .transpose()
}

/// Loads an ONNX model (None: this provider has no kernel for it, with the note).
fn load(s: &Setup, path: &Path) -> Result<Result<Model, String>, String> {
    match onnxruntime::load(s.environment, path, s.config.threads, s.provider) {
        Ok(model) => Ok(Ok(model)),
        // A precision the provider has no kernels for (bf16 on the CPU).
        Err(message) if onnxruntime::lacks_kernel(&message) => Ok(Err(format!(
            "not run: this ONNX Runtime provider has no kernel for it ({})",
            message.lines().next().unwrap_or_default()
        ))),
        Err(message) => Err(message),
    }
}

/// The outputs of an ONNX model run as the reference (stitched like the models').
pub fn reference(s: &Setup, path: &Path) -> Result<data::Named, String> {
    let mut model = load(s, path)?.map_err(|note| format!("{}: {note}", path.display()))?;
    let c = s.config;
    let plan = plan_for(c, s.data)?;
    let (outputs, _) = match (&plan, &c.sliding_window) {
        (Some(plan), Some(sw)) => {
            check_roi(&model.input_shape, sw, path)?;
            onnx_outputs(&mut model, s.data, 1, Some((plan, sw.sw_batch_size)))?
        }
        _ => {
            let batch = evaluate::batch_for(c.batch, &model.input_shape, s.data.shape()[0])?;
            onnx_outputs(&mut model, s.data, batch, None)?
        }
    };
    Ok(model.outputs.iter().cloned().zip(outputs).collect())
}

/// An ONNX model: timed runs, the sweep, then the pass over the data.
pub fn onnx(s: &Setup, path: &Path) -> Result<Outcome, String> {
    let mut model = match load(s, path)? {
        Ok(model) => model,
        Err(note) => return Ok(Outcome::Unavailable(note)),
    };
    let c = s.config;
    let plan = plan_for(c, s.data)?;
    let fixed = fixed_batch(&model.input_shape);
    // A sweep times the sizes a fixed batch axis cannot take as skipped, not as errors.
    let asked = if c.sweep.is_empty() || fixed.is_none() {
        c.batch
    } else {
        None
    };
    let (batch, samples, end_to_end_batch) = match (&plan, &c.sliding_window) {
        (Some(plan), Some(sw)) => {
            check_roi(&model.input_shape, sw, path)?;
            if let Some(f) = fixed.filter(|&f| f != sw.sw_batch_size) {
                return Err(format!(
                    "{}: the model's batch axis is fixed at {f}, but sliding_window.sw_batch_size = {}\nhint: set sw_batch_size = {f}, or export with dynamic = [\"batch\"]",
                    path.display(),
                    sw.sw_batch_size
                ));
            }
            let batch = asked.unwrap_or(sw.sw_batch_size);
            let batch = evaluate::batch_for(Some(batch), &model.input_shape, batch)?;
            // The timed runs go over the windows of the first sample.
            (
                batch,
                Cow::Owned(plan.cut(s.data.index_axis(Axis(0), 0))),
                1,
            )
        }
        _ => {
            let batch = evaluate::batch_for(asked, &model.input_shape, s.data.shape()[0])?;
            (batch, Cow::Borrowed(s.data), batch)
        }
    };
    let timed_on = match plan {
        Some(_) => full_batches(&samples, batch),
        None => onnxruntime::batches(&samples, batch),
    };
    let (times, sizes) = model.time(&timed_on, c.warmup, c.iterations, c.min_duration, s.cancel)?;
    drop(timed_on);
    let main = metrics::latency(&times, sizes.iter().sum(), batch);
    let mut sweep = Vec::new();
    for &b in &c.sweep {
        let point = match fixed {
            _ if b == batch => timed(b, main.clone()),
            Some(f) => skipped(b, format!("the model's batch axis is fixed at {f}")),
            None => {
                let batches = full_batches(&samples, b);
                let (t, n) =
                    model.time(&batches, c.warmup, c.iterations, c.min_duration, s.cancel)?;
                timed(b, metrics::latency(&t, n.iter().sum(), b))
            }
        };
        sweep.push(point);
    }
    drop(samples);
    let sw_batch = c.sliding_window.as_ref().map_or(1, |sw| sw.sw_batch_size);
    let (outputs, end_to_end) = onnx_outputs(
        &mut model,
        s.data,
        batch,
        plan.as_ref().map(|p| (p, sw_batch)),
    )?;
    Ok(Outcome::Ran(Box::new(Measured {
        batch,
        times,
        sizes,
        end_to_end,
        end_to_end_batch,
        outputs: model.outputs.iter().cloned().zip(outputs).collect(),
        sweep,
        ran_on: None,
        timing: None,
    })))
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

/// The batch range of an engine's optimization profile, from the engine stage's manifest
/// (None: no manifest, or a static engine).
fn profile_range(engine: &Path) -> Option<(usize, usize)> {
    let manifest = crate::kinds::worker::beside(engine, "manifest.json");
    let value: Value = serde_json::from_slice(&std::fs::read(manifest).ok()?).ok()?;
    let profile = value.pointer("/shapes/profiles/0")?;
    let first = |key: &str| profile.get(key)?.get(0)?.as_u64().map(|v| v as usize);
    Some((first("min")?, first("max")?))
}

/// A TensorRT engine through the worker: its timed runs and the pass over the data (the
/// windows of every sample, with `sliding_window`, stitched here), then the sweep.
pub fn engine(s: &Setup, path: &Path, file_exists: bool) -> Result<Outcome, String> {
    if let Some(why) = tensorrt::why_not(s.context, s.machine_gpus, file_exists) {
        return Ok(Outcome::Unavailable(why));
    }
    let c = s.config;
    let plan = plan_for(c, s.data)?;
    let range = profile_range(path);
    let inside = |b: usize| range.is_none_or(|(low, high)| (low..=high).contains(&b));
    let asked = match c.sweep.is_empty() {
        true => c.batch,
        false => c.sweep.iter().copied().find(|&b| inside(b)),
    };
    let sw_batch = c.sliding_window.as_ref().map(|sw| sw.sw_batch_size);
    let samples = match &plan {
        Some(plan) => Cow::Owned(all_windows(plan, s.data)),
        None => Cow::Borrowed(s.data),
    };
    let runs = |batch: Option<usize>| tensorrt::Runs {
        batch,
        warmup: c.warmup,
        iterations: c.iterations,
        min_duration: c.min_duration,
    };
    let run = tensorrt::run(
        s.context,
        path,
        &samples,
        runs(asked.or(sw_batch)),
        s.cancel,
    )?;
    let main = metrics::latency(&run.times, run.samples.iter().sum(), run.batch);
    let mut sweep = Vec::new();
    for &b in &c.sweep {
        let point = match range {
            _ if b == run.batch => timed(b, main.clone()),
            Some((low, high)) if !inside(b) => skipped(
                b,
                format!("outside the engine's profile (batch {low}..{high})"),
            ),
            None if plan.is_none() && fixed_engine(path) => {
                skipped(b, format!("the engine's batch is fixed at {}", run.batch))
            }
            _ => {
                let one = full_batches(&samples, b).swap_remove(0);
                let r = tensorrt::run(s.context, path, &one, runs(Some(b)), s.cancel)?;
                timed(b, metrics::latency(&r.times, r.samples.iter().sum(), b))
            }
        };
        sweep.push(point);
    }
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

/// Whether the engine was built without an optimization profile (a static ONNX).
fn fixed_engine(engine: &Path) -> bool {
    let manifest = crate::kinds::worker::beside(engine, "manifest.json");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_batches_cycle_through_the_samples() {
        let samples = ArrayD::from_shape_fn(IxDyn(&[3, 2]), |i| i[0] as f32);
        let batches = full_batches(&samples, 2);
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].shape(), [2, 2]);
        let big = full_batches(&samples, 5);
        let firsts: Vec<f32> = big[0].outer_iter().map(|r| r[0]).collect();
        assert_eq!(firsts, [0.0, 1.0, 2.0, 0.0, 1.0]);
        assert_eq!(full_batches(&samples, 1).len(), 3);
    }

    #[test]
    fn a_fixed_spatial_input_must_be_the_window() {
        let settings = Settings {
            roi: vec![4, 4],
            overlap: vec![0.25; 2],
            mode: super::super::sliding_window::Blend::Constant,
            sigma_scale: vec![0.125; 2],
            sw_batch_size: 1,
            padding_mode: super::super::sliding_window::Padding::Constant,
            cval: 0.0,
        };
        assert!(check_roi(&[-1, 1, 4, 4], &settings, Path::new("m.onnx")).is_ok());
        assert!(check_roi(&[-1, 1, -1, -1], &settings, Path::new("m.onnx")).is_ok());
        let error = check_roi(&[-1, 1, 8, 4], &settings, Path::new("m.onnx")).unwrap_err();
        assert!(error.contains("roi = [4, 4]"), "{error}");
    }
}
