//! What the report reads besides the models' runs: the samples (a float32 `.npy`, or an
//! export's reference `.npz` with its PyTorch outputs), the labels, the dataset's class
//! and file names, and what a model's file says of it (engine or ONNX, precision, size).

use std::path::{Path, PathBuf};

use ndarray::ArrayD;
use serde_json::Value;

use super::data::{self, DataError};
use super::metrics;
use super::summary::DatasetNames;

/// Why the report's data or labels cannot be used.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub(super) enum InputError {
    #[error("the report has no data input")]
    NoData,
    #[error("{} holds no input.* array", path.display())]
    NoInputArray { path: PathBuf },
    #[error("{}: expected N x C x ... samples, got shape {shape:?}", path.display())]
    NotSamples { path: PathBuf, shape: Vec<usize> },
    #[error("{} has {shape:?} labels for {samples} samples", path.display())]
    LabelCount {
        path: PathBuf,
        shape: Vec<usize>,
        samples: usize,
    },
    #[error(transparent)]
    #[diagnostic(transparent)]
    Data(#[from] DataError),
}

/// The samples at `path` (N x C x ...), and the export's reference outputs when it is
/// the export's `.npz`.
pub(super) fn read_samples(path: &Path) -> Result<(ArrayD<f32>, Option<data::Named>), InputError> {
    let (samples, npz_outputs) = if path.extension().is_some_and(|e| e == "npz") {
        let (inputs, outputs) = data::read_reference(path)?;
        let Some((_, array)) = inputs.into_iter().next() else {
            let path = path.to_path_buf();
            return Err(InputError::NoInputArray { path });
        };
        (array, Some(outputs))
    } else {
        (data::read_f32(path)?, None)
    };
    if samples.ndim() < 2 || samples.shape()[0] == 0 {
        return Err(InputError::NotSamples {
            path: path.to_path_buf(),
            shape: samples.shape().to_vec(),
        });
    }
    Ok((samples, npz_outputs))
}

/// The labels at `path`, one (or one volume) per sample.
pub(super) fn read_labels(path: &Path, samples: usize) -> Result<ArrayD<i64>, InputError> {
    let labels = data::read_labels(path)?;
    if labels.shape().first() != Some(&samples) {
        return Err(InputError::LabelCount {
            path: path.to_path_buf(),
            shape: labels.shape().to_vec(),
            samples,
        });
    }
    Ok(labels)
}

/// The class and file names of the data, from the manifest a dataset stage writes beside
/// it (`<stem>_manifest.json`); none without one.
pub(super) fn dataset_names(data: &Path) -> DatasetNames {
    let stem = data
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let manifest = data.with_file_name(format!("{stem}_manifest.json"));
    let Some(value) = std::fs::read(&manifest)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
    else {
        return DatasetNames::default();
    };
    let strings = |key: &str| -> Option<Vec<String>> {
        value.get(key)?.as_array().map(|list| {
            list.iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string())
                })
                .collect()
        })
    };
    DatasetNames {
        classes: strings("classes").filter(|c| !c.is_empty()),
        files: strings("files"),
    }
}

/// Whether the model at `path` is a TensorRT engine (by its extension).
pub(super) fn is_engine(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("engine" | "plan" | "trt")
    )
}

/// The size of a model on disk, with its external data file if any.
pub(super) fn size_on_disk(path: &Path) -> u64 {
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let mut data = path.as_os_str().to_owned();
    data.push(".data");
    size(path) + size(Path::new(&data))
}

/// The precision of a model: a `precision` in the manifest next to it
/// (`<stem>.manifest.json`, as quantize stages write), else fp32.
pub(super) fn precision_of(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let manifest = path.with_file_name(format!("{stem}.manifest.json"));
    std::fs::read(&manifest)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
        .and_then(|v| {
            v.get("precision")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .filter(|p| metrics::PRECISIONS.contains(&p.as_str()))
        .unwrap_or_else(|| "fp32".into())
}
