//! TensorRT engines in a report: whether one can run here, and running it through the
//! engine script's `--infer` mode on the stage's GPU (timed runs on batches already on the
//! device, then one pass end to end for the outputs). The answer comes back as JSON and an
//! `.npz`; the report then treats the engine like an ONNX model.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use ndarray::ArrayD;
use ndarray_npy::WriteNpyExt;
use serde_json::{Value, json};

use super::data::{self, DataError};
use crate::kinds::InvocationContext;
use crate::kinds::engine::SCRIPT as ENGINE;
use crate::kinds::request::{read_json, run_script_now};

/// Why an engine could not be run through the script.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub(super) enum TensorRtError {
    #[error("cannot create a scratch directory")]
    Scratch {
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {}", path.display())]
    WriteNpy {
        path: PathBuf,
        #[source]
        source: ndarray_npy::WriteNpyError,
    },
    /// The script failed: its message, and its log when it has one.
    #[error("{message}{}", log_suffix(log.as_deref()))]
    Script {
        message: String,
        log: Option<PathBuf>,
    },
    #[error(transparent)]
    #[diagnostic(transparent)]
    Data(#[from] DataError),
    #[error("the engine script's answer has no timed runs")]
    NoTimedRuns,
}

/// " (log: PATH)" when the script's failure has a log.
fn log_suffix(log: Option<&Path>) -> String {
    log.map(|log| format!(" (log: {})", log.display()))
        .unwrap_or_default()
}

/// What running an engine gave.
#[derive(Debug)]
pub(super) struct EngineRun {
    pub outputs: data::Named,
    /// Seconds of each timed run (CUDA events around `execute_async_v3`).
    pub times: Vec<f64>,
    /// Samples of each timed run.
    pub samples: Vec<usize>,
    /// Seconds of each run of the pass over the data: copy in, run, copy out.
    pub end_to_end: Vec<f64>,
    pub batch: usize,
    /// How the script timed the runs.
    pub timing: String,
    /// "TensorRT <version> on <GPU>".
    pub ran_on: String,
}

/// How the runs go.
#[derive(Debug, Clone, Copy)]
pub(super) struct Runs {
    pub batch: Option<usize>,
    pub warmup: usize,
    pub iterations: usize,
    pub min_duration: Duration,
}

/// Why an engine cannot run in this stage, if it cannot: every missing piece (no GPU held,
/// no TensorRT, the engine not built because its stage is unavailable here).
pub(super) fn why_not(
    context: &InvocationContext,
    machine_gpus: usize,
    built: bool,
) -> Option<String> {
    let mut missing = Vec::new();
    if context.gpu.is_none() {
        missing.push(if machine_gpus == 0 {
            "no GPU".to_string()
        } else {
            "the report stage holds no GPU (set device = \"cuda\" on it)".to_string()
        });
    }
    let tensorrt = super::super::engine::TENSORRT.id;
    if context.facts.accelerator_version(tensorrt).is_none() {
        let error = context
            .facts
            .accelerator(tensorrt)
            .and_then(|t| t.error.as_deref());
        missing.push(format!(
            "TensorRT is not installed ({})",
            error.unwrap_or("cannot import tensorrt")
        ));
    }
    if !built {
        missing.push("the engine file was not built (its stage is unavailable here)".into());
    }
    (!missing.is_empty()).then(|| format!("unavailable on this machine: {}", missing.join("; ")))
}

/// Runs the engine at `engine` on `samples` through the engine script.
pub(super) fn run(
    context: &InvocationContext,
    engine: &Path,
    samples: &ArrayD<f32>,
    runs: Runs,
    cancel: &AtomicBool,
) -> Result<EngineRun, TensorRtError> {
    let scratch = tempfile::Builder::new()
        .prefix("tensorrt-")
        .tempdir_in(context.on_disk(&context.state_dir))
        .map_err(|source| TensorRtError::Scratch { source })?;
    let dir = scratch.path();
    let data_path = dir.join("data.npy");
    let file = std::fs::File::create(&data_path).map_err(|source| TensorRtError::Write {
        path: data_path.clone(),
        source,
    })?;
    samples
        .write_npy(std::io::BufWriter::new(file))
        .map_err(|source| TensorRtError::WriteNpy {
            path: data_path.clone(),
            source,
        })?;
    let outputs_path = dir.join("outputs.npz");
    let request = json!({
        "protocol": 1,
        "engine": engine,
        "built_for": built_for(engine),
        "data": data_path,
        "batch": runs.batch,
        "warmup": runs.warmup,
        "iterations": runs.iterations,
        "min_duration_s": runs.min_duration.as_secs_f64(),
        "outputs": outputs_path,
    });
    let request_path = dir.join("request.json");
    std::fs::write(&request_path, request.to_string()).map_err(|source| TensorRtError::Write {
        path: request_path.clone(),
        source,
    })?;
    let result_path = dir.join("result.json");
    let log = context
        .on_disk(&context.state_dir)
        .join("logs")
        .join(format!("{}.tensorrt.log", context.stage));
    let answer = run_script_now(
        context,
        &ENGINE,
        &[Path::new("--infer"), &request_path, &result_path],
        &result_path,
        log,
        cancel,
    )
    .map_err(|e| TensorRtError::Script {
        message: e.message,
        log: e.log,
    })?;
    let (_, outputs) = data::read_reference(&outputs_path)?;
    parse_answer(&answer["run"], outputs)
}

/// The TensorRT version and GPU the engine was built with, from its manifest (the engine
/// stage's `<stem>.manifest.json`); null when there is none.
fn built_for(engine: &Path) -> Value {
    let manifest = crate::kinds::request::beside(engine, "manifest.json");
    match read_json(&manifest) {
        Some(m) => json!({ "tensorrt": m.get("tensorrt"), "gpu": m.get("gpu") }),
        None => Value::Null,
    }
}

fn parse_answer(run: &Value, outputs: data::Named) -> Result<EngineRun, TensorRtError> {
    let floats = |key: &str| -> Vec<f64> {
        run[key]
            .as_array()
            .map(|list| list.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default()
    };
    let times = floats("times_s");
    let samples: Vec<usize> = floats("samples").iter().map(|&s| s as usize).collect();
    if times.is_empty() || times.len() != samples.len() {
        return Err(TensorRtError::NoTimedRuns);
    }
    let text = |key: &str| run[key].as_str().unwrap_or("unknown").to_string();
    Ok(EngineRun {
        outputs,
        times,
        samples,
        end_to_end: floats("end_to_end_s"),
        batch: run["batch"].as_u64().unwrap_or(1) as usize,
        timing: text("timing"),
        ran_on: format!(
            "TensorRT {} on {}",
            text("tensorrt"),
            run["gpu"]["name"].as_str().unwrap_or("an unknown GPU")
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_becomes_a_run() {
        let answer = json!({
            "tensorrt": "11.4.0", "gpu": {"name": "H100", "compute_capability": "9.0"},
            "batch": 2, "times_s": [0.001, 0.002], "samples": [2, 2],
            "end_to_end_s": [0.003], "timing": "CUDA events around execute_async_v3"
        });
        let run = parse_answer(&answer, Vec::new()).unwrap();
        assert_eq!(run.times, vec![0.001, 0.002]);
        assert_eq!(run.samples, vec![2, 2]);
        assert_eq!(run.batch, 2);
        assert_eq!(run.ran_on, "TensorRT 11.4.0 on H100");
        let empty = json!({"times_s": [], "samples": []});
        assert!(parse_answer(&empty, Vec::new()).is_err());
    }
}
