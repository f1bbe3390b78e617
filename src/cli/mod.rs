//! The command line: clap types only parse; each subcommand lives in its own file and
//! returns an exit code or an error, which is rendered here as `error:` with its causes
//! and a hint.

mod build;
mod clean;
mod convert;
mod explain;
mod export_onnx;
mod graph;
mod infer;
mod internal;
mod oneshot;
mod output;
mod progress;
mod schema;
mod status;
mod toolchain;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// pochi: a declarative, make-like build graph for model deployment.
#[derive(Debug, Parser)]
#[command(name = "pochi", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build the stages of one or more pipelines that are not up to date.
    Build(build::BuildArgs),
    /// Show each stage's status without running anything (exit 1 if something would run).
    Status(status::StatusArgs),
    /// Explain exactly why a stage would run.
    Explain(explain::ExplainArgs),
    /// Print the pipeline's graph (text, dot, mermaid, json or a self-contained html page).
    Graph(graph::GraphArgs),
    /// Remove stages' outputs and records.
    Clean(clean::CleanArgs),
    /// Print the JSON Schema of the pipeline file (for editors such as Taplo).
    Schema,
    /// Export a checkpoint to a verified ONNX model in one command (a one-stage pipeline).
    ExportOnnx(export_onnx::ExportOnnxArgs),
    /// Convert an ONNX model to a TensorRT engine in one command (fp32, --fp16 or --int8),
    /// through a generated pipeline: cached, and non-zero on any failure.
    Convert(convert::ConvertArgs),
    /// Run one model over a data file and write a report (latency, throughput, predictions,
    /// classification metrics): a one-stage `report` pipeline.
    Infer(infer::InferArgs),
    /// `pochi infer` for a TensorRT engine (the seed's name for it).
    InferTrt(infer::InferArgs),
    /// Show or prepare the Python toolchain: sync | info | path.
    Toolchain(toolchain::ToolchainArgs),
    /// Print the blake3 digest of files, as pochi computes it.
    #[command(hide = true)]
    Hash { files: Vec<PathBuf> },
    /// Measurements used by bench/run.sh.
    #[command(hide = true)]
    BenchInternal(internal::BenchArgs),
}

/// Runs pochi and returns its exit status.
pub fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Build(args) => build::run(args),
        Command::Status(args) => status::run(args),
        Command::Explain(args) => explain::run(args),
        Command::Graph(args) => graph::run(args),
        Command::Clean(args) => clean::run(args),
        Command::Schema => schema::run(),
        Command::Toolchain(args) => toolchain::run(args),
        Command::ExportOnnx(args) => export_onnx::run(args),
        Command::Convert(args) => convert::run(args),
        Command::Infer(args) | Command::InferTrt(args) => infer::run(args),
        Command::Hash { files } => internal::hash(&files),
        Command::BenchInternal(args) => internal::bench(args),
    };
    match result {
        Ok(code) => code,
        Err(report) => {
            output::print_error(&report);
            ExitCode::FAILURE
        }
    }
}

/// Logs (tracing) go to stderr when `POCHI_LOG` asks for them, e.g. `POCHI_LOG=debug`.
fn init_logging() {
    if let Ok(filter) = std::env::var("POCHI_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .try_init();
    }
}

/// The GPUs this machine offers the workspace (declared, `POCHI_GPUS`, or detected).
fn offered_gpus(workspace: &crate::build::Workspace) -> Vec<u32> {
    workspace.capacity(&crate::machine::detect(), None).gpus
}

/// The pipeline files named on the command line, or `pipeline.toml` here.
fn pipeline_paths(given: &[PathBuf]) -> Vec<PathBuf> {
    if given.is_empty() {
        vec![PathBuf::from("pipeline.toml")]
    } else {
        given.to_vec()
    }
}
