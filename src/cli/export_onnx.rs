//! `pochi export-onnx`: the seed script as one command. It writes a one-stage pipeline into
//! `.pochi/oneshot/<hash>/` and builds it with the same engine as `pochi build`, so a repeat
//! with the same arguments and checkpoint is instant; the .onnx is then copied to `-o`.

use super::output::{note, say};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

use super::output::{duration, failure};
use crate::driver::Workspace;
use crate::pipeline::Device;

#[derive(Debug, Args)]
pub(super) struct ExportOnnxArgs {
    /// The checkpoint: a state_dict (.pth), a pickled model or a TorchScript archive.
    checkpoint: PathBuf,
    #[command(flatten)]
    cache: super::cache::CacheArgs,
    /// The model's class or factory: package.module:Name, or file.py:Name.
    #[arg(long, value_name = "IMPORT_PATH")]
    model: Option<String>,
    /// A keyword argument for the model, KEY=VALUE; VALUE is read as TOML (14, 0.5, true,
    /// [2, 2]) and otherwise taken as a string. Repeatable.
    #[arg(long = "model-arg", value_name = "KEY=VALUE")]
    model_args: Vec<String>,
    /// The input's spatial size: H W for an image, D H W for a volume.
    #[arg(long, num_args = 1..=3, required = true, value_name = "SIZE")]
    input_size: Vec<u64>,
    /// Input channels (default: the in_channels model argument, else 3 for an image and 1
    /// for a volume).
    #[arg(long, value_name = "C")]
    in_channels: Option<u64>,
    /// Where to export: cpu (the default), or cuda:N (that GPU).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// The ONNX opset.
    #[arg(long, default_value_t = 17, value_name = "N")]
    opset: u32,
    /// Where to write the .onnx (default: the checkpoint's name with .onnx, here).
    #[arg(short, long, value_name = "OUT.onnx")]
    output: Option<PathBuf>,
    /// Skip the verification with ONNX Runtime.
    #[arg(long)]
    no_verify: bool,
}

pub(super) fn run(args: ExportOnnxArgs) -> miette::Result<ExitCode> {
    let device = Device::parse(&args.device).ok_or_else(|| {
        failure(
            format!("invalid device `{}`", args.device),
            "use cpu, cuda or cuda:N",
        )
    })?;
    let checkpoint =
        std::path::absolute(&args.checkpoint).unwrap_or_else(|_| args.checkpoint.clone());
    if !checkpoint.is_file() {
        return Err(failure(
            format!(
                "the checkpoint {} does not exist",
                args.checkpoint.display()
            ),
            "give the path of a .pth file",
        ));
    }
    let output = args.output.clone().unwrap_or_else(|| {
        let stem = checkpoint
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into());
        PathBuf::from(format!("{stem}.onnx"))
    });
    let text = pipeline_text(&args, &checkpoint, device)?;
    list_gpus(device);
    let failed = |workspace: &Workspace| {
        let project = &workspace.projects[0];
        print_traceback(&project.pipeline.dir.join(project.state_log_path(0)));
        failure(
            "the export failed; nothing was written",
            "the error and the Python traceback are above",
        )
    };
    let Some(super::oneshot::OneShot { dir, .. }) =
        super::oneshot::build(&text, &args.cache, failed)?
    else {
        return Ok(super::signals::interrupted_exit_code());
    };
    let built = dir.join("out").join("model.onnx");
    copy_atomic(&built, &output).map_err(|e| {
        failure(
            format!("cannot write {}: {e}", output.display()),
            "check the -o path",
        )
    })?;
    let manifest_path = dir.join("out").join("model.manifest.json");
    let manifest: serde_json::Value = std::fs::read(&manifest_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    report(&manifest, &output, &dir);
    Ok(ExitCode::SUCCESS)
}

/// The one-stage pipeline, as TOML (serialized, so every value is escaped correctly).
fn pipeline_text(
    args: &ExportOnnxArgs,
    checkpoint: &Path,
    device: Device,
) -> miette::Result<String> {
    let mut model_args = toml::Table::new();
    for pair in &args.model_args {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(failure(
                format!("--model-arg `{pair}` is not KEY=VALUE"),
                "e.g. --model-arg out_channels=14",
            ));
        };
        let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|mut t| t.remove("v"));
        model_args.insert(
            key.trim().to_string(),
            parsed.unwrap_or_else(|| toml::Value::String(value.to_string())),
        );
    }
    let channels = match args.in_channels {
        Some(c) => c,
        None => match model_args
            .get("in_channels")
            .and_then(toml::Value::as_integer)
        {
            Some(c) if c > 0 => c as u64,
            _ if args.input_size.len() == 3 => 1,
            _ => 3,
        },
    };
    let mut shape = vec![toml::Value::Integer(channels as i64)];
    shape.extend(
        args.input_size
            .iter()
            .map(|&d| toml::Value::Integer(d as i64)),
    );
    let mut stage = toml::Table::new();
    stage.insert("kind".into(), "export".into());
    stage.insert(
        "checkpoint".into(),
        checkpoint.to_string_lossy().into_owned().into(),
    );
    if let Some(model) = &args.model {
        let model = match model.rsplit_once(':') {
            Some((file, name)) if file.ends_with(".py") => {
                let file = std::path::absolute(file).unwrap_or_else(|_| PathBuf::from(file));
                format!("{}:{name}", file.display())
            }
            _ => model.clone(),
        };
        stage.insert("model".into(), model.into());
    }
    if !model_args.is_empty() {
        stage.insert("model_args".into(), toml::Value::Table(model_args));
    }
    stage.insert("input_shape".into(), toml::Value::Array(shape));
    stage.insert("opset".into(), toml::Value::Integer(i64::from(args.opset)));
    stage.insert("device".into(), device.to_string().into());
    if args.no_verify {
        stage.insert("verify".into(), false.into());
    }
    stage.insert("output".into(), "out/model.onnx".into());
    let mut pipeline = toml::Table::new();
    pipeline.insert("name".into(), "export-onnx".into());
    let mut stages = toml::Table::new();
    stages.insert("export".into(), toml::Value::Table(stage));
    super::oneshot::pipeline_text("export-onnx", pipeline, stages)
}

/// Lists the GPUs and their free memory (from the machine's one `nvidia-smi` query), or
/// says there are none.
fn list_gpus(device: Device) {
    let gpus = crate::machine::detect().gpu_models;
    if gpus.is_empty() {
        note!("no NVIDIA GPU found (nvidia-smi is not available); exporting on {device}");
        return;
    }
    for gpu in gpus {
        note!(
            "GPU {}: {}, {} free of {}",
            gpu.index,
            gpu.name,
            gpu.memory_free,
            gpu.memory
        );
    }
    note!("exporting on {device}");
}

fn copy_atomic(from: &Path, to: &Path) -> std::io::Result<()> {
    let bytes = std::fs::read(from)?;
    crate::fsutil::write_atomic(to, &bytes)
}

/// Prints the last Python traceback of the stage's log.
fn print_traceback(log: &Path) {
    let Ok(text) = std::fs::read_to_string(log) else {
        return;
    };
    if let Some(first) = text.find("Traceback (most recent call last)") {
        say!(
            "Python traceback ({}):\n{}",
            log.display(),
            text[first..].trim_end()
        );
    }
}

fn report(manifest: &serde_json::Value, output: &Path, dir: &Path) {
    let number = |path: &[&str]| {
        path.iter()
            .try_fold(manifest, |v, k| v.get(*k))
            .and_then(serde_json::Value::as_f64)
    };
    let shape = |list: &serde_json::Value| -> String {
        list.as_array()
            .map(|values| {
                values
                    .iter()
                    .map(|v| {
                        let dims: Vec<String> = v["shape"]
                            .as_array()
                            .map(|d| {
                                d.iter()
                                    .map(|x| x.to_string().trim_matches('"').to_string())
                                    .collect()
                            })
                            .unwrap_or_default();
                        format!(
                            "{} [{}]",
                            v["name"].as_str().unwrap_or("?"),
                            dims.join(", ")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    let mib = |bytes: f64| format!("{:.1} MiB", bytes / (1u64 << 20) as f64);
    let gib = |bytes: f64| format!("{:.2} GiB", bytes / (1u64 << 30) as f64);
    let size = number(&["onnx_bytes"]).map(mib).unwrap_or_default();
    let params = number(&["parameters"])
        .map(|p| format!("{:.1} M parameters", p / 1e6))
        .unwrap_or_default();
    note!(
        "wrote {} ({size}, {params}, opset {}): {} -> {}",
        output.display(),
        manifest["opset"],
        shape(&manifest["inputs"]),
        shape(&manifest["outputs"])
    );
    let mut memory = number(&["peak_rss_bytes"])
        .map(|b| format!("peak host memory {}", gib(b)))
        .unwrap_or_default();
    if let Some(gpu) = number(&["peak_gpu_bytes"]) {
        memory.push_str(&format!(", peak GPU memory {}", gib(gpu)));
    }
    let took = number(&["durations", "total_s"])
        .map(|s| duration(std::time::Duration::from_secs_f64(s)))
        .unwrap_or_default();
    note!(
        "{memory} on {}; the export took {took}",
        manifest["device"].as_str().unwrap_or("?")
    );
    match manifest.get("verification").filter(|v| !v.is_null()) {
        Some(v) => note!(
            "verified with ONNX Runtime against PyTorch: max |diff| {:.3e}, mean |diff| {:.3e} (rtol {}, atol {})",
            v["max_abs_diff"].as_f64().unwrap_or(f64::NAN),
            v["mean_abs_diff"].as_f64().unwrap_or(f64::NAN),
            v["rtol"],
            v["atol"]
        ),
        None => note!("not verified (--no-verify)"),
    }
    note!(
        "manifest and reference outputs: {}",
        dir.join("out").display()
    );
}
