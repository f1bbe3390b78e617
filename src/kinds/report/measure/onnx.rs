//! An ONNX model on ONNX Runtime, in process: its set-up (the batch it runs at and the
//! samples it is timed on), the timed runs, the batch sweep, and the pass over the data
//! for the outputs (whole samples, or each sample's windows run and stitched).

use std::borrow::Cow;
use std::path::Path;
use std::time::Instant;

use ndarray::{ArrayD, Axis};

use super::super::evaluate;
use super::super::metrics::{self, Latency};
use super::super::onnxruntime::{self, Model, OnnxRuntimeError};
use super::super::sliding_window::Plan;
use super::{
    MeasureError, Measured, Outcome, Setup, SweepPoint, check_roi, data, fixed_batch, full_batches,
    plan_for, skipped, timed,
};

/// A loaded model, or why this provider cannot run it.
enum Loaded {
    Ready(Model),
    /// The provider has no kernel for it: the note the report gives instead of figures.
    NoKernel(String),
}

/// Loads an ONNX model; a provider without a kernel for it is a note, not an error.
fn load(s: &Setup, path: &Path) -> Result<Loaded, OnnxRuntimeError> {
    match onnxruntime::load(s.environment, path, s.config.threads, s.provider) {
        Ok(model) => Ok(Loaded::Ready(model)),
        // A precision the provider has no kernels for (bf16 on the CPU).
        Err(error) if error.lacks_kernel() => Ok(Loaded::NoKernel(format!(
            "not run: this ONNX Runtime provider has no kernel for it ({})",
            error.to_string().lines().next().unwrap_or_default()
        ))),
        Err(error) => Err(error),
    }
}

/// The outputs of an ONNX model run as the reference (stitched like the models').
pub(crate) fn reference(s: &Setup, path: &Path) -> Result<data::Named, MeasureError> {
    let mut model = match load(s, path)? {
        Loaded::Ready(model) => model,
        Loaded::NoKernel(note) => {
            let path = path.to_path_buf();
            return Err(MeasureError::ReferenceNotRun { path, note });
        }
    };
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
pub(crate) fn onnx(s: &Setup, path: &Path) -> Result<Outcome, MeasureError> {
    let mut model = match load(s, path)? {
        Loaded::Ready(model) => model,
        Loaded::NoKernel(note) => return Ok(Outcome::Unavailable(note)),
    };
    let plan = plan_for(s.config, s.data)?;
    let fixed = fixed_batch(&model.input_shape);
    let on = timed_on(s, &model, path, plan.as_ref(), fixed)?;
    let (times, sizes) = timed_runs(s, &mut model, &on, plan.is_some())?;
    let main = metrics::latency(&times, sizes.iter().sum(), on.batch);
    let sweep = sweep(s, &mut model, &on, fixed, &main)?;
    let (batch, end_to_end_batch) = (on.batch, on.end_to_end_batch);
    drop(on);
    let sw_batch = s
        .config
        .sliding_window
        .as_ref()
        .map_or(1, |sw| sw.sw_batch_size);
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

/// What a model is timed on: its batch and the samples (with a sliding window, the
/// windows of the first sample).
struct TimedOn<'a> {
    batch: usize,
    samples: Cow<'a, ArrayD<f32>>,
    /// Samples per run of the pass over the data.
    end_to_end_batch: usize,
}

/// The model's set-up: the batch it runs at, checked against its input, and what it is
/// timed on.
fn timed_on<'a>(
    s: &Setup<'a>,
    model: &Model,
    path: &Path,
    plan: Option<&Plan>,
    fixed: Option<usize>,
) -> Result<TimedOn<'a>, MeasureError> {
    let c = s.config;
    // A sweep times the sizes a fixed batch axis cannot take as skipped, not as errors.
    let asked = if c.sweep.is_empty() || fixed.is_none() {
        c.batch
    } else {
        None
    };
    let (Some(plan), Some(sw)) = (plan, &c.sliding_window) else {
        let batch = evaluate::batch_for(asked, &model.input_shape, s.data.shape()[0])?;
        return Ok(TimedOn {
            batch,
            samples: Cow::Borrowed(s.data),
            end_to_end_batch: batch,
        });
    };
    check_roi(&model.input_shape, sw, path)?;
    if let Some(fixed) = fixed.filter(|&f| f != sw.sw_batch_size) {
        return Err(MeasureError::WindowBatch {
            path: path.to_path_buf(),
            fixed,
            sw_batch_size: sw.sw_batch_size,
        });
    }
    let batch = asked.unwrap_or(sw.sw_batch_size);
    let batch = evaluate::batch_for(Some(batch), &model.input_shape, batch)?;
    Ok(TimedOn {
        batch,
        samples: Cow::Owned(plan.cut(s.data.index_axis(Axis(0), 0))),
        end_to_end_batch: 1,
    })
}

/// The timed runs at the model's batch (full batches of windows with a sliding window):
/// each run's seconds and samples.
fn timed_runs(
    s: &Setup,
    model: &mut Model,
    on: &TimedOn,
    windows: bool,
) -> Result<(Vec<f64>, Vec<usize>), OnnxRuntimeError> {
    let c = s.config;
    let batches = match windows {
        true => full_batches(&on.samples, on.batch),
        false => onnxruntime::batches(&on.samples, on.batch),
    };
    model.time(&batches, c.warmup, c.iterations, c.min_duration, s.cancel)
}

/// The batch sweep: the timed loop at each size (the model's own batch is its timed runs;
/// a fixed batch axis skips the others).
fn sweep(
    s: &Setup,
    model: &mut Model,
    on: &TimedOn,
    fixed: Option<usize>,
    main: &Latency,
) -> Result<Vec<SweepPoint>, OnnxRuntimeError> {
    let c = s.config;
    let mut sweep = Vec::new();
    for &b in &c.sweep {
        let point = match fixed {
            _ if b == on.batch => timed(b, main.clone()),
            Some(f) => skipped(b, format!("the model's batch axis is fixed at {f}")),
            None => {
                let batches = full_batches(&on.samples, b);
                let (t, n) =
                    model.time(&batches, c.warmup, c.iterations, c.min_duration, s.cancel)?;
                timed(b, metrics::latency(&t, n.iter().sum(), b))
            }
        };
        sweep.push(point);
    }
    Ok(sweep)
}

/// The pass over the data on ONNX Runtime: the outputs and each run's seconds end to end.
fn onnx_outputs(
    model: &mut Model,
    data: &ArrayD<f32>,
    batch: usize,
    plan: Option<(&Plan, usize)>,
) -> Result<(Vec<ArrayD<f32>>, Vec<f64>), MeasureError> {
    let Some((plan, sw_batch)) = plan else {
        return Ok(model.outputs_for(&onnxruntime::batches(data, batch))?);
    };
    let mut per_output: Vec<Vec<ArrayD<f32>>> = vec![Vec::new(); model.outputs.len()];
    let mut times = Vec::new();
    for sample in data.outer_iter() {
        let t0 = Instant::now();
        let windows = plan.cut(sample);
        let (outputs, _) = model.outputs_for(&onnxruntime::batches(&windows, sw_batch))?;
        for (k, output) in outputs.iter().enumerate() {
            let stitched = plan.stitch(output.view())?;
            per_output[k].push(stitched.insert_axis(Axis(0)));
        }
        times.push(t0.elapsed().as_secs_f64());
    }
    let outputs = per_output
        .into_iter()
        .map(|parts| {
            let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
            ndarray::concatenate(Axis(0), &views)
        })
        .collect::<Result<_, _>>()?;
    Ok((outputs, times))
}
