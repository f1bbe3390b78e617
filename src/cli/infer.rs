//! `pochi infer MODEL --data FILE.npy [-o OUT_DIR]` (and `infer-trt` for engines): the
//! seed's inference step as one command. It writes a one-stage `report` pipeline into
//! `.pochi/oneshot/<hash>/` and builds it with the same engine as `pochi build` (so a
//! repeat with the same model and data is instant), then copies the report's files to
//! `-o`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

use super::output::failure;
use crate::build::BuildOptions;

#[derive(Debug, Args)]
pub struct InferArgs {
    /// The model: an .onnx file (or a TensorRT .engine, reported as unavailable where
    /// TensorRT or a GPU is missing).
    model: PathBuf,
    /// The samples: a float32 .npy (N x C x H x W or N x C x D x H x W). Image folders
    /// come with the dataset stage kind.
    #[arg(long, value_name = "FILE.npy")]
    data: PathBuf,
    /// Labels: an int64 .npy, one per sample (-1 = none).
    #[arg(long, value_name = "FILE.npy")]
    labels: Option<PathBuf>,
    /// classification (the default), segmentation or none.
    #[arg(long, default_value = "classification")]
    task: String,
    /// Where the report's files go (default: infer_<model stem>/).
    #[arg(short, long, value_name = "OUT_DIR")]
    output: Option<PathBuf>,
    /// ONNX Runtime intra-op threads (default: ONNX Runtime's choice).
    #[arg(long)]
    threads: Option<u32>,
    /// Timed runs, at least.
    #[arg(long, default_value_t = 100)]
    iterations: u32,
    /// Samples per run.
    #[arg(long)]
    batch: Option<u32>,
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

pub fn run(args: InferArgs) -> miette::Result<ExitCode> {
    let model = absolute(&args.model);
    let data = absolute(&args.data);
    for (what, path) in [("model", &model), ("data", &data)] {
        if !path.is_file() {
            let hint = if what == "data" && path.is_dir() {
                "this version reads a float32 .npy (N x C x ...); image folders come with the dataset stage kind"
            } else {
                "check the path"
            };
            return Err(failure(
                format!(
                    "the {what} {} does not exist or is not a file",
                    path.display()
                ),
                hint,
            ));
        }
    }
    if !["classification", "segmentation", "none"].contains(&args.task.as_str()) {
        return Err(failure(
            format!("unknown task `{}`", args.task),
            "use classification, segmentation or none",
        ));
    }
    let stem = model
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let output = args
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("infer_{stem}")));
    let text = pipeline_text(&args, &model, &data)?;
    let dir = super::oneshot::write(&text)?;
    let workspace = super::oneshot::load(&dir)?;
    let summary = super::build::run_build(&workspace, &BuildOptions::default())?;
    if summary.interrupted {
        return Ok(ExitCode::from(130));
    }
    if !summary.ok {
        return Err(failure(
            "the inference report failed",
            "the error is above; `pochi status` in the one-shot directory shows more",
        ));
    }
    let built = dir.join("out");
    std::fs::create_dir_all(&output).map_err(|e| {
        failure(
            format!("cannot create {}: {e}", output.display()),
            "check the -o path",
        )
    })?;
    let entries = std::fs::read_dir(&built).map_err(|e| {
        failure(
            format!("cannot read {}: {e}", built.display()),
            "report this as a bug",
        )
    })?;
    for entry in entries.flatten() {
        let to = output.join(entry.file_name());
        let bytes =
            std::fs::read(entry.path()).and_then(|bytes| crate::fsutil::write_atomic(&to, &bytes));
        bytes.map_err(|e| {
            failure(
                format!("cannot write {}: {e}", to.display()),
                "check the -o path",
            )
        })?;
    }
    eprintln!("pochi: report written to {}", output.display());
    if let Ok(summary) = std::fs::read_to_string(output.join("summary.json"))
        && let Ok(value) = serde_json::from_str::<serde_json::Value>(&summary)
        && let Some(model) = value["models"].get(0)
    {
        if let Some(l) = model.get("latency").filter(|l| !l.is_null()) {
            eprintln!(
                "pochi: {}: mean {:.3} ms, p99 {:.3} ms, {:.1} samples/s",
                stem,
                l["mean_ms"].as_f64().unwrap_or(f64::NAN),
                l["p99_ms"].as_f64().unwrap_or(f64::NAN),
                l["throughput"].as_f64().unwrap_or(f64::NAN)
            );
        } else if let Some(note) = model["note"].as_str() {
            eprintln!("pochi: {stem}: {note}");
        }
        if let Some(accuracy) = model["task"]["classification"]["accuracy"].as_f64() {
            eprintln!("pochi: accuracy {:.2}%", accuracy * 100.0);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn pipeline_text(args: &InferArgs, model: &Path, data: &Path) -> miette::Result<String> {
    let mut stage = toml::Table::new();
    stage.insert("kind".into(), "report".into());
    stage.insert(
        "models".into(),
        toml::Value::Array(vec![model.to_string_lossy().into_owned().into()]),
    );
    stage.insert("data".into(), data.to_string_lossy().into_owned().into());
    if let Some(labels) = &args.labels {
        stage.insert(
            "labels".into(),
            absolute(labels).to_string_lossy().into_owned().into(),
        );
    }
    stage.insert("task".into(), args.task.clone().into());
    stage.insert(
        "iterations".into(),
        toml::Value::Integer(i64::from(args.iterations)),
    );
    if let Some(threads) = args.threads {
        stage.insert("threads".into(), toml::Value::Integer(i64::from(threads)));
    }
    if let Some(batch) = args.batch {
        stage.insert("batch".into(), toml::Value::Integer(i64::from(batch)));
    }
    stage.insert("output".into(), "out".into());
    let mut pipeline = toml::Table::new();
    pipeline.insert("name".into(), "infer".into());
    let mut stages = toml::Table::new();
    stages.insert("infer".into(), toml::Value::Table(stage));
    super::oneshot::pipeline_text("infer", pipeline, stages)
}
