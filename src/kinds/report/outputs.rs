//! The report's files: `summary.json`, `report.md`, `latency.svg`; for classification
//! `predictions.csv` (pochitrain's columns), `disagreements.csv`,
//! `classification_report.csv` and `confusion_matrix.svg` (every model's); for
//! segmentation `per_sample_dice.csv`; `errors.svg` (|model - reference| histograms); with
//! `save_outputs`, `outputs/<model>.npy`.

use std::path::PathBuf;

use ndarray_npy::WriteNpyExt;

use super::config::Config;
use super::markdown::markdown;
use super::summary::Summary;
use super::tables::{classification_report, disagreements, per_sample, predictions};
use super::{InvocationContext, charts};

/// Why a file of the report could not be written.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub(super) enum OutputsError {
    #[error("cannot create {}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error("the report does not know output `{key}`")]
    UnknownOutput { key: String },
    #[error("no model {index} to save the outputs of")]
    NoModel { index: String },
    #[error("cannot write the outputs of {model}")]
    SaveOutputs {
        model: String,
        #[source]
        source: ndarray_npy::WriteNpyError,
    },
}

/// Writes every declared output; returns the absolute paths written.
pub(super) fn write_all(
    context: &InvocationContext,
    config: &Config,
    summary: &Summary,
) -> Result<Vec<PathBuf>, OutputsError> {
    let mut written = Vec::new();
    for output in &config.outputs {
        let Some(relative) = context.outputs.get(&output.key) else {
            continue;
        };
        let path = context.dir.join(relative);
        let bytes = content(&output.key, summary)?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|source| OutputsError::CreateDir {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        if let Err(source) = std::fs::write(&path, bytes) {
            return Err(OutputsError::Write { path, source });
        }
        written.push(path);
    }
    Ok(written)
}

/// The bytes of the output `key`.
fn content(key: &str, summary: &Summary) -> Result<Vec<u8>, OutputsError> {
    let text = match key {
        "summary" => serde_json::to_string_pretty(summary)? + "\n",
        "report" => markdown(summary),
        "latency_chart" => charts::latency(&summary.models),
        "predictions" => predictions(summary),
        "disagreements" => disagreements(summary),
        "classification_report" => classification_report(summary),
        "confusion_matrix" => confusion_matrices(summary),
        "error_chart" => error_charts(summary),
        "per_sample" => per_sample(summary),
        "throughput_chart" => charts::throughput(&summary.models, &summary.batch_sweep),
        other => match other.strip_prefix("output_model") {
            Some(index) => return saved_output(summary, index),
            None => {
                return Err(OutputsError::UnknownOutput {
                    key: other.to_string(),
                });
            }
        },
    };
    Ok(text.into_bytes())
}

/// `outputs/<model>.npy`: the model's first output, as it came out (an empty array when
/// the model did not run here).
fn saved_output(summary: &Summary, index: &str) -> Result<Vec<u8>, OutputsError> {
    let model = index
        .parse::<usize>()
        .ok()
        .and_then(|i| summary.models.get(i))
        .ok_or_else(|| OutputsError::NoModel {
            index: index.to_string(),
        })?;
    let empty = ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&[0]));
    let array = model.first_output.as_ref().unwrap_or(&empty);
    let mut bytes = Vec::new();
    array
        .write_npy(&mut bytes)
        .map_err(|source| OutputsError::SaveOutputs {
            model: model.name.clone(),
            source,
        })?;
    Ok(bytes)
}

/// Every labelled model's confusion matrix, one below the other.
fn confusion_matrices(summary: &Summary) -> String {
    let matrices: Vec<String> = summary
        .models
        .iter()
        .filter_map(|m| {
            let c = m.task.as_ref()?.classification.as_ref()?;
            let classes: Vec<String> = (0..c.confusion.len())
                .map(|i| summary.class_name(i))
                .collect();
            Some(charts::confusion(&m.label, &c.confusion, &classes))
        })
        .collect();
    if matrices.is_empty() {
        return charts::empty("no labelled classification results");
    }
    charts::stack(&matrices)
}

/// The |model - reference| histogram of every compared output, one below the other.
fn error_charts(summary: &Summary) -> String {
    let charts: Vec<String> = summary
        .models
        .iter()
        .flat_map(|m| {
            m.parity
                .iter()
                .map(|p| charts::errors(&m.label, &p.output, &p.errors))
        })
        .collect();
    if charts.is_empty() {
        return charts::empty("no model was compared with a reference");
    }
    charts::stack(&charts)
}
