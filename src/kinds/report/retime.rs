//! Two ONNX models timed in one process, alternating, so that their latencies are
//! comparable (`pochi diff --retime`): the same timed loop as the report's, on the CPU.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use super::data::{self, DataError};
use super::metrics::{self, Latency};
use super::onnxruntime::{self, OnnxRuntimeError};
use crate::facts::MachineFacts;

/// Why the models could not be timed again.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub(crate) enum RetimeError {
    /// (`pochi diff` gives its own hint, so the fix stays in the message.)
    #[error("ONNX Runtime's library was not found in the toolchain (`pochi toolchain sync`)")]
    NoOnnxRuntime,
    #[error(transparent)]
    #[diagnostic(transparent)]
    OnnxRuntime(#[from] OnnxRuntimeError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Data(#[from] DataError),
    #[error("no latency measured")]
    NoLatency,
}

/// One model to time, with what its report timed it on.
#[derive(Debug, Clone)]
pub(crate) struct Subject {
    pub model: PathBuf,
    /// Its report's data (float32 .npy).
    pub data: PathBuf,
    pub batch: usize,
    /// ONNX Runtime intra-op threads (0: its default).
    pub threads: usize,
}

/// How long to time: `warmup` runs of each, then `rounds` rounds in which each model runs
/// `iterations / rounds` times (and `min_duration / rounds`), old first.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    pub warmup: usize,
    pub iterations: usize,
    pub min_duration: Duration,
    pub rounds: usize,
}

/// The latency of `old` and `new`, timed alternately on ONNX Runtime's CPU provider.
pub(crate) fn alternating(
    facts: &MachineFacts,
    old: &Subject,
    new: &Subject,
    plan: Plan,
    cancel: &AtomicBool,
) -> Result<(Latency, Latency), RetimeError> {
    let site_dirs = facts
        .python
        .as_ref()
        .map(|p| p.site_dirs.clone())
        .unwrap_or_default();
    let library = onnxruntime::find_library(&site_dirs).ok_or(RetimeError::NoOnnxRuntime)?;
    let environment = onnxruntime::environment(&library)?;
    let provider = onnxruntime::Provider::Cpu { warning: None };
    let mut sides = Vec::new();
    for subject in [old, new] {
        let model = onnxruntime::load(&environment, &subject.model, subject.threads, &provider)?;
        let samples = data::read_f32(&subject.data)?;
        let batches = onnxruntime::batches(&samples, subject.batch.max(1));
        sides.push((model, batches, Vec::new(), Vec::new()));
    }
    let rounds = plan.rounds.max(1);
    let per_round = plan.iterations.div_ceil(rounds).max(1);
    let min_duration = plan.min_duration / rounds as u32;
    for round in 0..rounds {
        for (model, batches, times, sizes) in sides.iter_mut() {
            let warmup = if round == 0 { plan.warmup } else { 0 };
            let (t, n) = model.time(batches, warmup, per_round, min_duration, cancel)?;
            times.extend(t);
            sizes.extend(n);
        }
    }
    let mut latencies = sides.into_iter().zip([old, new]).map(|(side, subject)| {
        let (_, _, times, sizes) = side;
        metrics::latency(&times, sizes.iter().sum(), subject.batch.max(1))
    });
    match (latencies.next(), latencies.next()) {
        (Some(old), Some(new)) => Ok((old, new)),
        _ => Err(RetimeError::NoLatency),
    }
}
