//! Per-model evaluation: the batch a model runs with, parity of its outputs against the
//! reference, and the task metrics of its first output.

use ndarray::ArrayD;

use super::config::Task;
use super::metrics::{self, Tolerance};
use super::segmentation::{self, DiceOptions, Volumes};
use super::summary::{Disagreement, ModelResult, OutputParity, TaskResult};

/// Why a model's outputs cannot be evaluated as asked.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub(super) enum EvaluateError {
    #[error("batch = {asked}, but the model's batch axis is fixed at {fixed}")]
    FixedBatch { asked: usize, fixed: usize },
    #[error(
        "the model takes batches of exactly {batch}, and {samples} samples do not divide into them"
    )]
    Indivisible { batch: usize, samples: usize },
    #[error("output `{output}` has shape {shape:?}, the reference {reference:?}")]
    OutputShape {
        output: String,
        shape: Vec<usize>,
        reference: Vec<usize>,
    },
    #[error(
        "task = \"classification\" expects N x classes outputs; the first output has shape {shape:?}"
    )]
    NotClasses { shape: Vec<usize> },
    #[error(
        "task = \"segmentation\" expects N x classes x spatial outputs; the first output has shape {shape:?}"
    )]
    NotVolumes { shape: Vec<usize> },
    #[error("labels of shape {shape:?} do not match {volumes} volumes of {voxels} voxels")]
    LabelsShape {
        shape: Vec<usize>,
        volumes: usize,
        voxels: usize,
    },
}

/// The batch: the one asked for, else the model's fixed batch, else 1.
pub(super) fn batch_for(
    asked: Option<usize>,
    shape: &[i64],
    samples: usize,
) -> Result<usize, EvaluateError> {
    let fixed = shape
        .first()
        .copied()
        .filter(|&d| d > 0)
        .map(|d| d as usize);
    let batch = match (asked, fixed) {
        (Some(asked), Some(fixed)) if asked != fixed => {
            return Err(EvaluateError::FixedBatch { asked, fixed });
        }
        (Some(a), _) => a,
        (None, Some(f)) => f,
        (None, None) => 1,
    };
    if fixed.is_some() && !samples.is_multiple_of(batch) {
        return Err(EvaluateError::Indivisible { batch, samples });
    }
    Ok(batch)
}

/// Parity of each output against the reference output of the same name (or position).
pub(super) fn compare(
    outputs: &[(String, ArrayD<f32>)],
    reference: &[(String, ArrayD<f32>)],
    tolerance: &Tolerance,
) -> Result<Vec<OutputParity>, EvaluateError> {
    outputs
        .iter()
        .enumerate()
        .filter_map(|(i, (name, actual))| {
            let found = reference
                .iter()
                .find(|(n, _)| n == name)
                .or_else(|| reference.get(i))?;
            Some((name, actual, &found.1))
        })
        .map(|(name, actual, expected)| {
            if actual.shape() != expected.shape() {
                return Err(EvaluateError::OutputShape {
                    output: name.clone(),
                    shape: actual.shape().to_vec(),
                    reference: expected.shape().to_vec(),
                });
            }
            let a: Vec<f32> = actual.iter().copied().collect();
            let r: Vec<f32> = expected.iter().copied().collect();
            let figures = metrics::parity(&a, &r);
            let failure = metrics::verdict(&figures, tolerance);
            Ok(OutputParity {
                output: name.clone(),
                figures,
                failure,
                errors: metrics::error_histogram(&a, &r),
            })
        })
        .collect()
}

/// (N, C, S): samples, channels (classes) and spatial size of a first output.
fn layout(array: &ArrayD<f32>) -> (usize, usize, usize) {
    let shape = array.shape();
    let n = shape.first().copied().unwrap_or(0);
    let c = shape.get(1).copied().unwrap_or(1);
    let s = shape.iter().skip(2).product::<usize>().max(1);
    (n, c, s)
}

/// The task metrics of a model's first output (classification: also its disagreements
/// with the reference; segmentation: MONAI's Dice, IoU and HD95 against the reference's
/// argmax and the labels).
pub(super) fn task_metrics(
    task: Task,
    outputs: &[(String, ArrayD<f32>)],
    reference: &[(String, ArrayD<f32>)],
    labels: Option<&ArrayD<i64>>,
    dice: DiceOptions,
    result: &mut ModelResult,
) -> Result<Option<TaskResult>, EvaluateError> {
    let Some((_, first)) = outputs.first() else {
        return Ok(None);
    };
    let reference_first: Option<Vec<f32>> = reference
        .first()
        .filter(|(_, r)| r.shape() == first.shape())
        .map(|(_, r)| r.iter().copied().collect());
    match task {
        Task::None => Ok(None),
        Task::Classification => classification(first, reference_first, labels, result).map(Some),
        Task::Segmentation => segmentation(first, reference_first, labels, dice).map(Some),
    }
}

fn classification(
    first: &ArrayD<f32>,
    reference: Option<Vec<f32>>,
    labels: Option<&ArrayD<i64>>,
    result: &mut ModelResult,
) -> Result<TaskResult, EvaluateError> {
    if first.ndim() != 2 {
        return Err(EvaluateError::NotClasses {
            shape: first.shape().to_vec(),
        });
    }
    let values: Vec<f32> = first.iter().copied().collect();
    let (_, c, _) = layout(first);
    let predicted = metrics::argmax_rows(&values, c);
    result.confidence = metrics::top_confidence(&values, c);
    let truth = reference.map(|r| metrics::argmax_rows(&r, c));
    let agreement = truth.as_ref().map(|t| metrics::agreement(&predicted, t));
    let disagreements = truth
        .as_ref()
        .map(|t| {
            predicted
                .iter()
                .zip(t)
                .enumerate()
                .filter(|(_, (p, r))| p != r)
                .map(|(index, (&predicted, &reference))| Disagreement {
                    index,
                    file: None,
                    reference,
                    predicted,
                    confidence: result.confidence[index],
                })
                .collect()
        })
        .unwrap_or_default();
    let classification = labels.map(|l| {
        let l: Vec<i64> = l.iter().copied().collect();
        metrics::classification(&predicted, &l, c)
    });
    result.predictions = predicted;
    Ok(TaskResult {
        agreement_with_reference: agreement,
        classification,
        disagreements: truth.map(|_| disagreements),
        segmentation_vs_reference: None,
        segmentation_vs_labels: None,
    })
}

fn segmentation(
    first: &ArrayD<f32>,
    reference: Option<Vec<f32>>,
    labels: Option<&ArrayD<i64>>,
    dice: DiceOptions,
) -> Result<TaskResult, EvaluateError> {
    if first.ndim() < 3 {
        return Err(EvaluateError::NotVolumes {
            shape: first.shape().to_vec(),
        });
    }
    let values: Vec<f32> = first.iter().copied().collect();
    let (n, c, s) = layout(first);
    let shape = &first.shape()[2..];
    let predicted = metrics::argmax_channels(&values, c, s);
    let against = |truth: &[usize]| {
        segmentation::evaluate(
            &Volumes {
                predicted: &predicted,
                truth,
                classes: c,
                shape,
            },
            dice,
        )
    };
    let (mut vs_reference, mut agreement) = (None, None);
    if let Some(r) = reference {
        let truth = metrics::argmax_channels(&r, c, s);
        agreement = Some(metrics::agreement(&predicted, &truth));
        vs_reference = Some(against(&truth));
    }
    let vs_labels = match labels {
        None => None,
        Some(l) => {
            if l.len() != n * s {
                return Err(EvaluateError::LabelsShape {
                    shape: l.shape().to_vec(),
                    volumes: n,
                    voxels: s,
                });
            }
            let truth: Vec<usize> = l
                .iter()
                .map(|&v| usize::try_from(v).unwrap_or(usize::MAX))
                .collect();
            Some(against(&truth))
        }
    };
    Ok(TaskResult {
        agreement_with_reference: agreement,
        classification: None,
        disagreements: None,
        segmentation_vs_reference: vs_reference,
        segmentation_vs_labels: vs_labels,
    })
}
