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
mod inputs;
mod markdown;
mod measure;
pub(crate) mod metrics;
mod onnxruntime;
mod outputs;
mod provenance;
pub(crate) mod retime;
pub(crate) mod segmentation;
pub(crate) mod sliding_window;
mod summarize;
mod summary;
mod tables;
mod tensorrt;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use serde_json::{Value, json};
use toml::Spanned;
use toml::de::DeValue;

use self::config::Config;
use self::inputs::is_engine;
use self::summary::Summary;
use super::request::{Program, RequestStage};
use super::{
    AcceleratorUse, InvocationContext, KindInfo, MachineFacts, Requirements, StageError, StageKind,
    Tool, WithoutGpu,
};
use crate::pipeline::parse_api::Parser;
use crate::pipeline::{Device, InputSource, NamedInput, NamedOutput, SpanError};

pub(crate) static INFO: KindInfo = KindInfo {
    name: "report",
    keys: super::keys_of::<config::ReportKeys>,
    parse,
    scripts: &[],
    schema: |generator| generator.subschema_for::<config::ReportKeys>(),
};

/// The version of `summary.json`'s layout.
pub(crate) const SCHEMA_VERSION: u32 = 2;

/// What the timed figures include.
pub(crate) const TIMING_NOTE: &str = "pure inference: session.run on preloaded input tensors (no file reading, preprocessing or copies into the input); outputs are dropped unread";
/// What the end-to-end figures include.
pub(crate) const END_TO_END_NOTE: &str = "end to end: one pass over the data after the timed runs, each run timed from copying the batch into a new input tensor to copying the outputs out (no file reading or image preprocessing)";

#[derive(Debug)]
struct Report {
    config: Config,
}

fn parse(parser: &Parser, value: &Spanned<DeValue>) -> Result<Box<dyn StageKind>, SpanError> {
    Ok(Box::new(Report {
        config: config::parse(parser, value)?,
    }))
}

impl RequestStage for Report {
    fn kind(&self) -> &'static str {
        "report"
    }

    fn inputs(&self) -> &[NamedInput] {
        &self.config.inputs
    }

    fn outputs(&self) -> &[NamedOutput] {
        &self.config.outputs
    }

    fn params(&self, _host: &MachineFacts) -> Value {
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
            "tensorrt_worker": super::engine::SCRIPT.hash(),
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
            accelerator: AcceleratorUse::WhenPresent(&super::engine::TENSORRT),
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
        let summary = summarize::summarize(&self.config, context, cancel)?;
        let written = outputs::write_all(context, &self.config, &summary)?;
        let failures = parity_failures(&summary);
        if failures.is_empty() || !self.config.fail_on_parity {
            return Ok(failures
                .iter()
                .map(|failure| format!("parity failure (on_parity_failure = \"warn\"): {failure}"))
                .collect());
        }
        Err(ParityFailure {
            reference: summary.reference.description.clone(),
            failures,
            kept: keep_for_inspection(context, &written),
        }
        .into())
    }
}

/// The report's models failed the parity check (`on_parity_failure = "fail"`).
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[error(
    "parity check failed against the reference ({reference}):\n  {}\nthe report was kept for inspection in {kept}",
    failures.join("\n  ")
)]
#[diagnostic(help(
    "if the difference is expected, loosen tolerances = {{ <precision> = {{ atol = ..., rtol = ..., cosine = ... }} }} or set on_parity_failure = \"warn\""
))]
struct ParityFailure {
    reference: String,
    /// One line per failed model: its name, precision and failed outputs.
    failures: Vec<String>,
    /// Where the report was kept.
    kept: String,
}

/// Every model that failed the parity check, with the outputs that failed it.
fn parity_failures(summary: &Summary) -> Vec<String> {
    summary
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
        .collect()
}

/// Copies the written files to `<state>/failed/<stage>/` (temporary outputs are
/// discarded when a stage fails); returns where, for the message.
fn keep_for_inspection(context: &InvocationContext, written: &[PathBuf]) -> String {
    let dir = context
        .on_disk(&context.state_dir)
        .join("failed")
        .join(&context.stage);
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
