//! `pochi infer MODEL --data FILE.npy|DIR [-o OUT_DIR]` (and `infer-trt` for engines): the
//! seed's inference step as one command. It writes a one-shot pipeline into
//! `.pochi/oneshot/<hash>/` (a `report` stage, after a `dataset` stage when `--data` is a
//! folder of class-per-folder images or `.npy` volumes) and builds it with the same engine
//! as `pochi build` (so a repeat with the same model and data is instant), then copies the
//! report's files to `-o`.

use super::output::note;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

use super::oneshot::{IMAGENET_MEAN, IMAGENET_STD, ImageTransform};
use super::output::failure;
use crate::kinds::dataset::{DatasetError, FolderContents, inspect_folder};

#[derive(Debug, Args)]
pub(super) struct InferArgs {
    /// The model: an .onnx file (or a TensorRT .engine, reported as unavailable where
    /// TensorRT or a GPU is missing).
    model: PathBuf,
    #[command(flatten)]
    cache: super::cache::CacheArgs,
    /// The samples: a float32 .npy (N x C x H x W or N x C x D x H x W), or a folder:
    /// images in one folder per class (pochitrain's layout; the folder names are the
    /// labels), or .npy volumes.
    #[arg(long, value_name = "FILE.npy|DIR")]
    data: PathBuf,
    /// Labels for a .npy --data: an int64 .npy, one per sample (-1 = none). A folder's
    /// labels are its class folders.
    #[arg(long, value_name = "FILE.npy")]
    labels: Option<PathBuf>,
    /// classification (the default), segmentation or none.
    #[arg(long, default_value = "classification")]
    task: String,
    /// Image folders: the model's input size, N or H W (default: the ONNX input's H and W
    /// when fixed, else 224).
    #[arg(long, num_args = 1..=2, value_name = "SIZE", value_parser = clap::value_parser!(u64).range(1..))]
    input_size: Option<Vec<u64>>,
    /// Image folders: the shorter side is resized to N before the centre crop to the input
    /// size (default: the input size, the larger of H and W; 256 gives torchvision's
    /// ImageNet evaluation at 224).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    resize: Option<u64>,
    /// Image folders: the per-channel mean, after scaling to 0..1 (default: ImageNet's
    /// 0.485 0.456 0.406).
    #[arg(long, num_args = 1..=3, value_name = "M")]
    mean: Option<Vec<f64>>,
    /// Image folders: the per-channel standard deviation (default: ImageNet's 0.229 0.224
    /// 0.225).
    #[arg(long, num_args = 1..=3, value_name = "S")]
    std: Option<Vec<f64>>,
    /// Folders: a seeded random subset of N samples (default: every sample).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    samples: Option<u64>,
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

impl InferArgs {
    /// The image-only flags that were given, as written.
    fn image_flags(&self) -> Vec<&'static str> {
        [
            ("--input-size", self.input_size.is_some()),
            ("--resize", self.resize.is_some()),
            ("--mean", self.mean.is_some()),
            ("--std", self.std.is_some()),
        ]
        .into_iter()
        .filter_map(|(flag, given)| given.then_some(flag))
        .collect()
    }
}

/// What `--data` is, checked: a tensor file, or a folder with its dataset stage's settings.
enum Data {
    Npy(PathBuf),
    Folder {
        path: PathBuf,
        contents: FolderContents,
        /// For images; `None` for `.npy` volumes.
        transform: Option<ImageTransform>,
    },
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

pub(super) fn run(args: InferArgs) -> miette::Result<ExitCode> {
    let model = absolute(&args.model);
    if !model.is_file() {
        return Err(failure(
            format!(
                "the model {} does not exist or is not a file",
                model.display()
            ),
            "check the path",
        ));
    }
    if !["classification", "segmentation", "none"].contains(&args.task.as_str()) {
        return Err(failure(
            format!("unknown task `{}`", args.task),
            "use classification, segmentation or none",
        ));
    }
    let data = data(&args, &model)?;
    let stem = model
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let output = args
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("infer_{stem}")));
    if let Data::Folder {
        contents,
        transform,
        ..
    } = &data
    {
        note!("{}", describe(contents, transform.as_ref(), args.samples));
    }
    let text = pipeline_text(&args, &model, &data)?;
    let failed = |_: &_| {
        failure(
            "the inference report failed",
            "the error is above; `pochi status` in the one-shot directory shows more",
        )
    };
    let Some(built) = super::oneshot::build(&text, &args.cache, failed)? else {
        return Ok(super::signals::interrupted_exit_code());
    };
    copy_report(&built.dir.join("out"), &output)?;
    note!("report written to {}", output.display());
    note_results(&output, &stem);
    Ok(ExitCode::SUCCESS)
}

/// Copies the report's files from `built` (the one-shot's outputs) into `output`.
fn copy_report(built: &Path, output: &Path) -> miette::Result<()> {
    std::fs::create_dir_all(output).map_err(|e| {
        failure(
            format!("cannot create {}: {e}", output.display()),
            "check the -o path",
        )
    })?;
    let entries = std::fs::read_dir(built).map_err(|e| {
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
    Ok(())
}

/// One line of the model's latency (or why there is none) and its accuracy, from the
/// report's `summary.json` in `output`.
fn note_results(output: &Path, stem: &str) {
    if let Ok(summary) = std::fs::read_to_string(output.join("summary.json"))
        && let Ok(value) = serde_json::from_str::<serde_json::Value>(&summary)
        && let Some(model) = value["models"].get(0)
    {
        if let Some(l) = model.get("latency").filter(|l| !l.is_null()) {
            note!(
                "{}: mean {:.3} ms, p99 {:.3} ms, {:.1} samples/s",
                stem,
                l["mean_ms"].as_f64().unwrap_or(f64::NAN),
                l["p99_ms"].as_f64().unwrap_or(f64::NAN),
                l["throughput"].as_f64().unwrap_or(f64::NAN)
            );
        } else if let Some(note) = model["note"].as_str() {
            note!("{stem}: {note}");
        }
        if let Some(accuracy) = model["task"]["classification"]["accuracy"].as_f64() {
            note!("accuracy {:.2}%", accuracy * 100.0);
        }
    }
}

const FOLDER_HINT: &str = "give a folder of images in one folder per class (pochitrain's layout: DIR/<class>/<image>.png), a folder of .npy volumes, or a float32 .npy";

/// A `--data` folder the dataset stage would refuse: its error, with the folder hint.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[error(transparent)]
#[diagnostic(help("{}", FOLDER_HINT))]
struct UnusableFolder(DatasetError);

/// Checks `--data` and, for a folder, works out its dataset stage.
fn data(args: &InferArgs, model: &Path) -> miette::Result<Data> {
    let path = absolute(&args.data);
    if path.is_file() {
        if let Some(flag) = args.image_flags().first() {
            return Err(failure(
                format!(
                    "{flag} applies to a folder of images, but --data {} is a file",
                    args.data.display()
                ),
                "a .npy is fed to the model as it is: remove the flag, or give the image folder",
            ));
        }
        if args.samples.is_some() {
            return Err(failure(
                format!(
                    "--samples applies to a folder, but --data {} is a file",
                    args.data.display()
                ),
                "remove --samples to use every sample of the .npy",
            ));
        }
        return Ok(Data::Npy(path));
    }
    if !path.is_dir() {
        return Err(failure(
            format!("the data {} does not exist", path.display()),
            FOLDER_HINT,
        ));
    }
    let contents = inspect_folder(&path).map_err(UnusableFolder)?;
    if args.labels.is_some() {
        return Err(failure(
            "--labels is for a .npy --data; a folder's labels are its class folders",
            "remove --labels (the class folders, in name order, are the labels)",
        ));
    }
    let transform = if contents.images {
        Some(image_transform(args, model)?)
    } else {
        if let Some(flag) = args.image_flags().first() {
            return Err(failure(
                format!(
                    "{flag} applies to images, but {} holds .npy volumes",
                    path.display()
                ),
                "volumes are fed to the model as they are (channels first): remove the flag",
            ));
        }
        None
    };
    Ok(Data::Folder {
        path,
        contents,
        transform,
    })
}

/// The image transform from the flags, the model's input and pochitrain's defaults.
fn image_transform(args: &InferArgs, model: &Path) -> miette::Result<ImageTransform> {
    let channels = |flag: &str, values: &Option<Vec<f64>>, default: [f64; 3]| {
        let values = values.clone().unwrap_or_else(|| default.to_vec());
        match values.as_slice() {
            &[v] => Ok(vec![v; 3]),
            [_, _, _] => Ok(values),
            _ => Err(failure(
                format!("{flag} takes 1 or 3 values (R G B), not {}", values.len()),
                format!(
                    "for example {flag} {}",
                    default.map(|v| v.to_string()).join(" ")
                ),
            )),
        }
    };
    let mean = channels("--mean", &args.mean, IMAGENET_MEAN)?;
    let std = channels("--std", &args.std, IMAGENET_STD)?;
    if mean.iter().chain(&std).any(|v| !v.is_finite()) || std.iter().any(|&s| s <= 0.0) {
        return Err(failure(
            "--mean and --std must be numbers, and every --std greater than 0",
            "for example --mean 0.5 --std 0.5 (images are scaled to 0..1 first)",
        ));
    }
    let given = super::oneshot::given_image_size(args.input_size.as_deref());
    let crop = super::oneshot::image_input_size(model, given)?;
    Ok(ImageTransform {
        resize: args.resize.unwrap_or(crop[0].max(crop[1])),
        crop,
        mean,
        std,
    })
}

/// One line on what the dataset stage will do, for the terminal.
fn describe(
    contents: &FolderContents,
    transform: Option<&ImageTransform>,
    samples: Option<u64>,
) -> String {
    let kind = if contents.images {
        "images"
    } else {
        ".npy volumes"
    };
    let mut line = format!("{} {kind}", contents.files);
    if let Some(n) = samples.filter(|&n| (n as usize) < contents.files) {
        line = format!("{n} of {line}");
    }
    if contents.classes.is_empty() {
        line.push_str(", no class folders (unlabelled)");
    } else {
        line.push_str(&format!(" in {} classes", contents.classes.len()));
    }
    if let Some(t) = transform {
        let list = |v: &[f64]| v.iter().map(f64::to_string).collect::<Vec<_>>().join(" ");
        line.push_str(&format!(
            "; resize {}, centre crop {}x{}, mean {}, std {}",
            t.resize,
            t.crop[0],
            t.crop[1],
            list(&t.mean),
            list(&t.std)
        ));
    }
    line
}

fn pipeline_text(args: &InferArgs, model: &Path, data: &Data) -> miette::Result<String> {
    let mut stages = toml::Table::new();
    let mut stage = toml::Table::new();
    stage.insert("kind".into(), "report".into());
    stage.insert(
        "models".into(),
        toml::Value::Array(vec![model.to_string_lossy().into_owned().into()]),
    );
    match data {
        Data::Npy(path) => {
            stage.insert("data".into(), path.to_string_lossy().into_owned().into());
            if let Some(labels) = &args.labels {
                stage.insert(
                    "labels".into(),
                    absolute(labels).to_string_lossy().into_owned().into(),
                );
            }
        }
        Data::Folder {
            path,
            contents,
            transform,
        } => {
            stages.insert(
                "data".into(),
                super::oneshot::dataset_stage(path, args.samples, 0, transform.as_ref()),
            );
            stage.insert("data".into(), "@data".into());
            // Class folders are classification labels; a segmentation needs label volumes.
            if !contents.classes.is_empty() && args.task == "classification" {
                stage.insert("labels".into(), "@data.labels".into());
            }
        }
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
    stages.insert("infer".into(), toml::Value::Table(stage));
    super::oneshot::pipeline_text("infer", pipeline, stages)
}
