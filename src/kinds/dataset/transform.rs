//! The steps of the declarative `transform` list (parsed in `transform_keys`), applied in
//! order to one sample (a float32 array, channels first). They replace torchvision's
//! `val_transform` (Resize, CenterCrop, ToTensor, Normalize) and MONAI's volume transforms
//! (ScaleIntensity, ResizeWithPadOrCrop, EnsureChannelFirst).

use ndarray::{ArrayD, Axis, Slice};
use serde::Serialize;

use super::pil::{self, PilError};
use super::resample::{Filter, resample_axis};

/// One step of the list. Serialized as written (`{"resize": 256}`), for the fingerprint
/// and the manifest.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Transform {
    Resize(Resize),
    CenterCrop(Vec<usize>),
    ToFloat(bool),
    Scale(f64),
    Normalize { mean: Vec<f64>, std: Vec<f64> },
    ChannelOrder(ChannelOrder),
    ScaleIntensity { min: f64, max: f64 },
    CropOrPad(Vec<usize>),
    AddChannel(bool),
}

/// `resize = 256`, `[h, w]`, or `{ size = ..., interpolation = ..., backend = ... }`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(super) struct Resize {
    pub size: ResizeTo,
    pub interpolation: Filter,
    /// `None` until the run resolves the default (see `run::effective_steps`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<Backend>,
}

impl Resize {
    pub(super) fn to(size: ResizeTo) -> Resize {
        Resize {
            size,
            interpolation: Filter::Bilinear,
            backend: None,
        }
    }
}

/// How `resize` computes: Pillow's 8-bit fixed-point resampling, bit-identical to
/// torchvision's `Resize` on PIL images (the default for images), or in floating point
/// as torchvision's `Resize` on float tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Backend {
    Pil,
    Tensor,
}

/// The size of a `resize`: the shorter side (keeping the aspect) or `[h, w]` / `[d, h, w]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub(super) enum ResizeTo {
    Shorter(usize),
    Exact(Vec<usize>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum ChannelOrder {
    Rgb,
    Bgr,
}

/// Why a step cannot apply to a sample.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub(crate) enum TransformError {
    #[error("channel_order needs a channel axis; the sample has shape {shape:?}")]
    NoChannelAxis { shape: Vec<usize> },
    #[error("resize needs at least 2 axes; the sample has shape {shape:?}")]
    ResizeNeedsTwoAxes { shape: Vec<usize> },
    #[error("backend = \"pil\" resizes 2-D images; {target:?} has {} axes", .target.len())]
    PilNeedsTwoAxes { target: Vec<usize> },
    #[error("{step} {size:?} needs {} trailing axes; the sample has shape {shape:?}", .size.len())]
    TooFewAxes {
        step: &'static str,
        size: Vec<usize>,
        shape: Vec<usize>,
    },
    #[error(
        "normalize has {means} means but the sample has {channels} channel(s) (shape {shape:?}, channels first)"
    )]
    NormalizeChannels {
        means: usize,
        channels: usize,
        shape: Vec<usize>,
    },
    #[error(transparent)]
    Pil(#[from] PilError),
}

impl Transform {
    /// Applies this step to one sample (channels first; spatial axes last).
    pub(super) fn apply(&self, sample: ArrayD<f32>) -> Result<ArrayD<f32>, TransformError> {
        match self {
            Transform::Resize(to) => resize(sample, to),
            Transform::CenterCrop(size) => fit(sample, size, "center_crop", torchvision_start),
            Transform::CropOrPad(size) => fit(sample, size, "crop_or_pad", monai_start),
            Transform::ToFloat(true) => Ok(sample.mapv_into(|v| v / 255.0)),
            Transform::ToFloat(false) | Transform::AddChannel(false) => Ok(sample),
            Transform::ChannelOrder(ChannelOrder::Rgb) => Ok(sample),
            Transform::Scale(factor) => {
                let factor = *factor as f32;
                Ok(sample.mapv_into(|v| v * factor))
            }
            Transform::Normalize { mean, std } => normalize_sample(sample, mean, std),
            Transform::ChannelOrder(ChannelOrder::Bgr) => {
                if sample.ndim() < 2 {
                    return Err(TransformError::NoChannelAxis {
                        shape: sample.shape().to_vec(),
                    });
                }
                let mut sample = sample;
                sample.invert_axis(Axis(0));
                Ok(sample.as_standard_layout().into_owned())
            }
            Transform::ScaleIntensity { min, max } => Ok(scale_to(sample, *min, *max)),
            Transform::AddChannel(true) => Ok(sample.insert_axis(Axis(0))),
        }
    }
}

fn resize(sample: ArrayD<f32>, resize: &Resize) -> Result<ArrayD<f32>, TransformError> {
    let ndim = sample.ndim();
    let target: Vec<usize> = match &resize.size {
        ResizeTo::Shorter(side) => {
            if ndim < 2 {
                return Err(TransformError::ResizeNeedsTwoAxes {
                    shape: sample.shape().to_vec(),
                });
            }
            let (h, w) = (sample.shape()[ndim - 2], sample.shape()[ndim - 1]);
            shorter_side(h, w, *side).to_vec()
        }
        ResizeTo::Exact(size) => size.clone(),
    };
    check_axes(&sample, &target, "resize")?;
    if resize.backend == Some(Backend::Pil) {
        let [h, w] = target[..] else {
            return Err(TransformError::PilNeedsTwoAxes { target });
        };
        return Ok(pil::resize(&sample, h, w, resize.interpolation)?);
    }
    let first = ndim - target.len();
    let mut sample = sample;
    // The last axis first, as PIL does (horizontal, then vertical).
    for (offset, &len) in target.iter().enumerate().rev() {
        sample = resample_axis(&sample, first + offset, len, resize.interpolation);
    }
    Ok(sample)
}

/// torchvision `Resize(int)`: the shorter side becomes `side`, the longer one keeps the
/// aspect ratio (rounded down).
pub(super) fn shorter_side(h: usize, w: usize, side: usize) -> [usize; 2] {
    if h <= w {
        [side, (side * w / h).max(1)]
    } else {
        [(side * h / w).max(1), side]
    }
}

fn check_axes(
    sample: &ArrayD<f32>,
    size: &[usize],
    step: &'static str,
) -> Result<(), TransformError> {
    if size.len() > sample.ndim() {
        return Err(TransformError::TooFewAxes {
            step,
            size: size.to_vec(),
            shape: sample.shape().to_vec(),
        });
    }
    Ok(())
}

/// Where torchvision's `center_crop` starts: `round((in - out) / 2)`, Python's rounding
/// (half to even).
fn torchvision_start(len: usize, size: usize) -> usize {
    let diff = len - size;
    let half = diff / 2;
    if diff % 2 == 1 && half % 2 == 1 {
        half + 1
    } else {
        half
    }
}

/// Where MONAI's centre crop starts: `len // 2 - size // 2`.
fn monai_start(len: usize, size: usize) -> usize {
    len / 2 - size / 2
}

/// Crops (from `start`) or zero-pads (`(size - len) // 2` before, the rest after) each
/// trailing axis to `size`.
fn fit(
    sample: ArrayD<f32>,
    size: &[usize],
    step: &'static str,
    start: fn(usize, usize) -> usize,
) -> Result<ArrayD<f32>, TransformError> {
    check_axes(&sample, size, step)?;
    let first = sample.ndim() - size.len();
    let mut sample = sample;
    for (offset, &target) in size.iter().enumerate() {
        let axis = first + offset;
        let len = sample.shape()[axis];
        if target < len {
            let from = start(len, target) as isize;
            sample = sample
                .slice_axis(Axis(axis), Slice::from(from..from + target as isize))
                .to_owned();
        } else if target > len {
            let mut shape = sample.shape().to_vec();
            shape[axis] = target;
            let mut padded = ArrayD::<f32>::zeros(shape);
            let before = ((target - len) / 2) as isize;
            padded
                .slice_axis_mut(Axis(axis), Slice::from(before..before + len as isize))
                .assign(&sample);
            sample = padded;
        }
    }
    Ok(sample)
}

/// `(x - mean) / std` per channel, in float32 as torchvision computes it.
fn normalize_sample(
    mut sample: ArrayD<f32>,
    mean: &[f64],
    std: &[f64],
) -> Result<ArrayD<f32>, TransformError> {
    let mean: Vec<f32> = mean.iter().map(|&m| m as f32).collect();
    let std: Vec<f32> = std.iter().map(|&s| s as f32).collect();
    if mean.len() == 1 {
        return Ok(sample.mapv_into(|v| (v - mean[0]) / std[0]));
    }
    let channels = if sample.ndim() >= 2 {
        sample.shape()[0]
    } else {
        0
    };
    if channels != mean.len() {
        return Err(TransformError::NormalizeChannels {
            means: mean.len(),
            channels,
            shape: sample.shape().to_vec(),
        });
    }
    for (mut channel, (m, s)) in sample.axis_iter_mut(Axis(0)).zip(mean.iter().zip(&std)) {
        channel.mapv_inplace(|v| (v - m) / s);
    }
    Ok(sample)
}

/// Min-max scales to `[min, max]`; a constant sample becomes `min` (as MONAI does).
fn scale_to(sample: ArrayD<f32>, min: f64, max: f64) -> ArrayD<f32> {
    let low = sample.iter().copied().fold(f32::INFINITY, f32::min);
    let high = sample.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if high <= low {
        return sample.mapv_into(|_| min as f32);
    }
    let range = f64::from(high) - f64::from(low);
    let target = max - min;
    sample.mapv_into(|v| ((f64::from(v) - f64::from(low)) / range * target + min) as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn array(shape: &[usize], values: impl IntoIterator<Item = f32>) -> ArrayD<f32> {
        ArrayD::from_shape_vec(shape.to_vec(), values.into_iter().collect()).unwrap()
    }

    #[test]
    fn normalize_of_a_constant_image_is_known() {
        let sample = ArrayD::from_elem(vec![3, 2, 2], 0.5f32);
        let step = Transform::Normalize {
            mean: vec![0.485, 0.456, 0.406],
            std: vec![0.229, 0.224, 0.225],
        };
        let out = step.apply(sample).unwrap();
        for (c, (m, s)) in [(0.485f32, 0.229f32), (0.456, 0.224), (0.406, 0.225)]
            .into_iter()
            .enumerate()
        {
            assert!(
                out.index_axis(Axis(0), c)
                    .iter()
                    .all(|&v| v == (0.5 - m) / s)
            );
        }
        let wrong = Transform::Normalize {
            mean: vec![0.5, 0.5],
            std: vec![1.0, 1.0],
        };
        assert!(
            wrong
                .apply(ArrayD::zeros(vec![3, 2, 2]))
                .unwrap_err()
                .to_string()
                .contains("3 channel")
        );
    }

    #[test]
    fn resize_int_keeps_the_aspect_of_the_shorter_side() {
        assert_eq!(shorter_side(480, 640, 256), [256, 341]);
        assert_eq!(shorter_side(640, 480, 256), [341, 256]);
        assert_eq!(shorter_side(100, 100, 32), [32, 32]);
        let out = Transform::Resize(Resize::to(ResizeTo::Shorter(4)))
            .apply(ArrayD::zeros(vec![3, 8, 12]))
            .unwrap();
        assert_eq!(out.shape(), &[3, 4, 6]);
        let out = Transform::Resize(Resize::to(ResizeTo::Exact(vec![2, 3, 4])))
            .apply(ArrayD::zeros(vec![1, 4, 6, 8]))
            .unwrap();
        assert_eq!(out.shape(), &[1, 2, 3, 4]);
    }

    #[test]
    fn center_crop_of_4x4_picks_the_middle() {
        let sample = array(&[1, 4, 4], (0..16).map(|v| v as f32));
        let out = Transform::CenterCrop(vec![2, 2]).apply(sample).unwrap();
        assert_eq!(out, array(&[1, 2, 2], [5.0, 6.0, 9.0, 10.0]));
    }

    #[test]
    fn center_crop_rounds_like_torchvision() {
        // (5 - 2) / 2 = 1.5 rounds to 2 in Python; (7 - 2) / 2 = 2.5 rounds to 2.
        assert_eq!(torchvision_start(5, 2), 2);
        assert_eq!(torchvision_start(7, 2), 2);
        assert_eq!(torchvision_start(6, 2), 2);
        assert_eq!(monai_start(5, 2), 1);
    }

    #[test]
    fn crop_or_pad_pads_with_zeros_symmetrically() {
        let sample = ArrayD::from_elem(vec![1, 2, 2, 2], 1.0f32);
        let out = Transform::CropOrPad(vec![4, 4, 5]).apply(sample).unwrap();
        assert_eq!(out.shape(), &[1, 4, 4, 5]);
        assert_eq!(out.sum(), 8.0);
        // Before: (4 - 2) / 2 = 1 and (5 - 2) / 2 = 1; the odd voxel goes after.
        assert_eq!(out[[0, 1, 1, 1]], 1.0);
        assert_eq!(out[[0, 2, 2, 2]], 1.0);
        assert_eq!(out[[0, 0, 1, 1]], 0.0);
        assert_eq!(out[[0, 1, 1, 3]], 0.0);
        let cropped = Transform::CropOrPad(vec![1, 1, 1])
            .apply(array(&[1, 3, 3, 3], (0..27).map(|v| v as f32)))
            .unwrap();
        assert_eq!(cropped.as_slice().unwrap(), &[13.0]);
    }

    #[test]
    fn scale_intensity_maps_min_and_max() {
        let out = Transform::ScaleIntensity {
            min: -1.0,
            max: 1.0,
        }
        .apply(array(&[1, 3], [10.0, 20.0, 30.0]))
        .unwrap();
        assert_eq!(out.as_slice().unwrap(), &[-1.0, 0.0, 1.0]);
        let constant = Transform::ScaleIntensity { min: 0.0, max: 1.0 }
            .apply(ArrayD::from_elem(vec![2], 7.0))
            .unwrap();
        assert_eq!(constant.as_slice().unwrap(), &[0.0, 0.0]);
    }

    #[test]
    fn to_float_scale_channel_order_and_add_channel() {
        let sample = array(&[3, 1, 1], [255.0, 51.0, 0.0]);
        let out = Transform::ToFloat(true).apply(sample.clone()).unwrap();
        assert_eq!(out.as_slice().unwrap(), &[1.0, 0.2, 0.0]);
        let out = Transform::ChannelOrder(ChannelOrder::Bgr)
            .apply(sample.clone())
            .unwrap();
        assert_eq!(out.as_slice().unwrap(), &[0.0, 51.0, 255.0]);
        let out = Transform::Scale(2.0).apply(sample).unwrap();
        assert_eq!(out.as_slice().unwrap(), &[510.0, 102.0, 0.0]);
        let out = Transform::AddChannel(true)
            .apply(ArrayD::zeros(vec![4, 5, 6]))
            .unwrap();
        assert_eq!(out.shape(), &[1, 4, 5, 6]);
    }
}
