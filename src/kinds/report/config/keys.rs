//! The keys of `kind = "report"` as the pipeline file writes them (serde types, with
//! spans for errors; `pochi schema` is generated from them).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use toml::Spanned;

/// `kind = "report"`: latency, throughput, parity and task metrics of every model.
#[derive(Debug, Deserialize, JsonSchema)]
pub(crate) struct ReportKeys {
    /// The models: "@stage" (ONNX, or a TensorRT .engine) or paths.
    #[schemars(with = "Vec<String>", length(min = 1))]
    pub models: Spanned<Vec<Spanned<String>>>,
    /// The input data: a float32 .npy (N x C x ...), e.g. a dataset stage ("@testset"), or
    /// an export's reference .npz. Default: the first model's export reference inputs.
    #[schemars(with = "Option<String>")]
    pub data: Option<Spanned<String>>,
    /// The reference outputs: "@stage" of an ONNX model run as the reference, or an
    /// export's reference .npz ("@onnx.reference"). Default: the export's PyTorch outputs
    /// when `data` is not given, else the first model.
    #[schemars(with = "Option<String>")]
    pub reference: Option<Spanned<String>>,
    /// Labels: int64 .npy, one per sample (classification) or one volume per sample
    /// (segmentation); -1 = no label.
    #[schemars(with = "Option<String>")]
    pub labels: Option<Spanned<String>>,
    /// "classification", "segmentation" or "none" (the default).
    #[schemars(with = "Option<String>")]
    pub task: Option<Spanned<String>>,
    /// Untimed runs before timing (default 10).
    #[serde(default)]
    pub warmup: Option<u32>,
    /// Timed runs, at least (default 100).
    #[serde(default)]
    pub iterations: Option<u32>,
    /// Time runs for at least this long: "1s" (the default), "500ms", "0s".
    #[schemars(with = "Option<String>")]
    pub min_duration: Option<Spanned<String>>,
    /// ONNX Runtime intra-op threads (default: ONNX Runtime's own choice).
    #[serde(default)]
    pub threads: Option<u32>,
    /// Samples per run (default 1, or the model's fixed batch), or a list of batch sizes to
    /// time each model at (a sweep: `batch = [1, 4, 16]`; the data pass uses the first).
    #[schemars(with = "Option<BatchKeys>")]
    pub batch: Option<Spanned<BatchKeys>>,
    /// Per-precision overrides: { fp16 = { atol = 1e-2, rtol = 1e-2, cosine = 0.999 } }.
    #[serde(default)]
    pub tolerances: BTreeMap<String, ToleranceKeys>,
    /// "fail" (the default) or "warn".
    #[schemars(with = "Option<String>")]
    pub on_parity_failure: Option<Spanned<String>>,
    /// Where the files go (default "{build_dir}/<stage>").
    #[schemars(with = "Option<String>")]
    pub output: Option<Spanned<String>>,
    /// Segmentation: how Dice (and IoU) are computed; defaults as MONAI's `DiceMetric()`:
    /// { reduction = "mean_batch", include_background = true, ignore_empty = true }.
    #[serde(default)]
    pub dice: Option<DiceKeys>,
    /// Write each model's first output to `outputs/<model>.npy` (default false).
    #[serde(default)]
    pub save_outputs: Option<bool>,
    /// Sliding-window inference (MONAI's `sliding_window_inference`) for samples larger
    /// than the model's input: { roi = [96, 96, 96], overlap = 0.25, mode = "gaussian",
    /// sw_batch_size = 4 }.
    #[serde(default)]
    pub sliding_window: Option<SlidingWindowKeys>,
    /// `pochi diff`'s rules for this report, checked against the revision compared with
    /// (not part of the stage's key): ["accuracy < -0.5pp", "@onnx_int8:p50_ms > +10%"].
    #[schemars(with = "Option<Vec<String>>")]
    pub gates: Option<Vec<Spanned<String>>>,
}

/// `batch = 4` or `batch = [1, 4, 16]`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub(crate) enum BatchKeys {
    One(i64),
    Sweep(Vec<i64>),
}

/// One value for every axis, or one per axis.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub(crate) enum PerAxis {
    One(f64),
    Each(Vec<f64>),
}

/// `sliding_window = { ... }`, MONAI's `sliding_window_inference` arguments.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SlidingWindowKeys {
    /// The window, one size per spatial axis (the model's input), e.g. [96, 96, 96].
    #[schemars(with = "Vec<u32>", length(min = 1))]
    pub roi: Spanned<Vec<i64>>,
    /// Overlap of neighbouring windows, in [0, 1): one value or one per axis (default 0.25).
    #[schemars(with = "Option<PerAxis>")]
    pub overlap: Option<Spanned<PerAxis>>,
    /// How overlapping windows blend: "constant" (the default, as MONAI) or "gaussian".
    #[schemars(with = "Option<String>")]
    pub mode: Option<Spanned<String>>,
    /// The Gaussian's sigma as a share of the window (default 0.125): one value or per axis.
    #[schemars(with = "Option<PerAxis>")]
    pub sigma_scale: Option<Spanned<PerAxis>>,
    /// Windows per model run (default 1).
    #[schemars(with = "Option<u32>")]
    pub sw_batch_size: Option<Spanned<i64>>,
    /// How a sample smaller than the window is padded: "constant" (the default),
    /// "reflect", "replicate" or "circular".
    #[schemars(with = "Option<String>")]
    pub padding_mode: Option<Spanned<String>>,
    /// The value of constant padding (default 0).
    pub cval: Option<f64>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DiceKeys {
    /// "mean_batch" (per sample, then the mean over samples: MONAI's DiceMetric) or
    /// "pooled" (over all voxels of all samples at once).
    #[schemars(with = "Option<String>")]
    pub reduction: Option<Spanned<String>>,
    /// Whether class 0 (background) enters Dice and IoU (default true, as MONAI).
    pub include_background: Option<bool>,
    /// A class absent from a sample's truth is NaN (left out of the means) when true (the
    /// default, as MONAI); when false it is 1 if also absent from the prediction, else 0.
    pub ignore_empty: Option<bool>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ToleranceKeys {
    pub atol: Option<f64>,
    pub rtol: Option<f64>,
    pub cosine: Option<f64>,
}
