//! The declarative `transform` list: each entry a one-key table (`{ resize = 256 }`),
//! parsed with spans, applied in order to one sample (a float32 array, channels first).
//! It replaces torchvision's `val_transform` (Resize, CenterCrop, ToTensor, Normalize)
//! and MONAI's volume transforms (ScaleIntensity, ResizeWithPadOrCrop, EnsureChannelFirst).

use indexmap::IndexMap;
use ndarray::{ArrayD, Axis, Slice};
use schemars::JsonSchema;
use serde::Serialize;
use toml::Spanned;

use super::pil;
use super::resample::{Filter, resample_axis};
use crate::pipeline::parse_api::Parser;
use crate::pipeline::{SpanError, suggest};

/// Every transform name, in the order the docs list them.
pub(super) const NAMES: &[&str] = &[
    "resize",
    "center_crop",
    "to_float",
    "scale",
    "normalize",
    "channel_order",
    "scale_intensity",
    "crop_or_pad",
    "add_channel",
];

/// One transform as written: a table with one key.
pub(super) type RawTransform = Spanned<IndexMap<Spanned<String>, Spanned<toml::Value>>>;

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

// Only for the JSON Schema: `parse` below does the checking, with spans.
/// One step of `transform`: a table with one key.
#[derive(JsonSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code, reason = "only its JSON Schema is used")]
pub(super) enum TransformSchema {
    /// Antialiased resize: an integer sets the shorter side keeping the aspect
    /// (torchvision `Resize(int)`); `[h, w]` or `[d, h, w]` sets the trailing axes; a table
    /// also picks the interpolation and the backend.
    Resize(ResizeSchema),
    /// Crops the centre (zero-pads when larger): an integer is a square, or `[h, w]` / `[d, h, w]`.
    CenterCrop(SizeSchema),
    /// Divides by 255 here (torchvision `ToTensor`); images get it first unless listed;
    /// `false` keeps 0..255.
    ToFloat(bool),
    /// Multiplies every value by this factor.
    Scale(f32),
    /// Per channel: `(x - mean) / std`.
    Normalize(NormalizeSchema),
    /// `"rgb"` (as decoded) or `"bgr"` (reverses the channel axis).
    ChannelOrder(ChannelOrderSchema),
    /// Min-max scales each sample to `[min, max]` (MONAI `ScaleIntensity`).
    ScaleIntensity(IntensitySchema),
    /// Centre-crops or zero-pads the trailing axes to this size (MONAI `ResizeWithPadOrCrop`).
    CropOrPad(Vec<usize>),
    /// Prepends a channel axis of size 1 (for volumes stored as D x H x W).
    AddChannel(bool),
}

#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code, reason = "only its JSON Schema is used")]
pub(super) enum SizeSchema {
    Square(usize),
    Axes(Vec<usize>),
}

#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code, reason = "only its JSON Schema is used")]
pub(super) enum ResizeSchema {
    Square(usize),
    Axes(Vec<usize>),
    Table(ResizeTableSchema),
}

#[derive(JsonSchema)]
#[allow(dead_code, reason = "only its JSON Schema is used")]
pub(super) struct ResizeTableSchema {
    /// The shorter side, or `[h, w]` / `[d, h, w]`.
    size: SizeSchema,
    /// `"bilinear"` (the default) or `"bicubic"`, as PIL's and torchvision's.
    interpolation: Option<InterpolationSchema>,
    /// `"pil"` (8-bit, bit-identical to torchvision on PIL images; the default for image
    /// folders) or `"tensor"` (floating point, as torchvision on float tensors; the default
    /// for `.npy` data and after a step that changes values).
    backend: Option<BackendSchema>,
}

#[derive(JsonSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code, reason = "only its JSON Schema is used")]
pub(super) enum InterpolationSchema {
    Bilinear,
    Bicubic,
}

#[derive(JsonSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code, reason = "only its JSON Schema is used")]
pub(super) enum BackendSchema {
    Pil,
    Tensor,
}

#[derive(JsonSchema)]
#[allow(dead_code, reason = "only its JSON Schema is used")]
pub(super) struct NormalizeSchema {
    mean: Vec<f32>,
    std: Vec<f32>,
}

#[derive(JsonSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code, reason = "only its JSON Schema is used")]
pub(super) enum ChannelOrderSchema {
    Rgb,
    Bgr,
}

#[derive(JsonSchema)]
#[allow(dead_code, reason = "only its JSON Schema is used")]
pub(super) struct IntensitySchema {
    min: Option<f32>,
    max: Option<f32>,
}

type ValueError = (String, String);

/// Parses one entry of the `transform` list.
pub(super) fn parse(parser: &Parser, raw: &RawTransform) -> Result<Transform, SpanError> {
    let table = raw.get_ref();
    let mut entries = table.iter();
    let (Some((name, value)), None) = (entries.next(), entries.next()) else {
        return Err(parser
            .src
            .error(raw.span(), format!("a transform is a table with one key; this one has {}", table.len()))
            .with_help("write one table per step, e.g. transform = [{ resize = 256 }, { center_crop = 224 }]"));
    };
    let known = NAMES.contains(&name.get_ref().as_str());
    if !known {
        return Err(parser
            .src
            .error(
                name.span(),
                format!("unknown transform `{}`", name.get_ref()),
            )
            .with_label("unknown transform")
            .with_help(suggest::hint(name.get_ref(), NAMES)));
    }
    parse_value(name.get_ref(), value.get_ref()).map_err(|(message, help)| {
        parser
            .src
            .error(value.span(), format!("`{}`: {message}", name.get_ref()))
            .with_help(help)
    })
}

fn parse_value(name: &str, value: &toml::Value) -> Result<Transform, ValueError> {
    Ok(match name {
        "resize" => Transform::Resize(resize_value(value)?),
        "center_crop" => match value {
            toml::Value::Integer(_) => {
                let side = positive(value)?;
                Transform::CenterCrop(vec![side, side])
            }
            _ => Transform::CenterCrop(sizes(value, "center_crop = 224 or [h, w]")?),
        },
        "crop_or_pad" => Transform::CropOrPad(sizes(value, "crop_or_pad = [96, 96, 96]")?),
        "to_float" => Transform::ToFloat(boolean(value, "to_float = true")?),
        "add_channel" => Transform::AddChannel(boolean(value, "add_channel = true")?),
        "scale" => Transform::Scale(
            finite(value).ok_or_else(|| expected("a number", "scale = 255.0 (a factor)"))?,
        ),
        "channel_order" => match value.as_str() {
            Some("rgb") => Transform::ChannelOrder(ChannelOrder::Rgb),
            Some("bgr") => Transform::ChannelOrder(ChannelOrder::Bgr),
            _ => return Err(expected("\"rgb\" or \"bgr\"", "channel_order = \"bgr\"")),
        },
        "normalize" => normalize(value)?,
        "scale_intensity" => scale_intensity(value)?,
        _ => {
            return Err((
                format!("unknown transform `{name}`"),
                suggest::hint(name, NAMES),
            ));
        }
    })
}

fn expected(what: &str, example: &str) -> ValueError {
    (format!("expected {what}"), format!("for example {example}"))
}

fn positive(value: &toml::Value) -> Result<usize, ValueError> {
    match value.as_integer() {
        Some(n) if n >= 1 => Ok(n as usize),
        _ => Err((
            "expected a whole number of at least 1".into(),
            "sizes are pixels (or voxels), e.g. 224".into(),
        )),
    }
}

fn sizes(value: &toml::Value, example: &str) -> Result<Vec<usize>, ValueError> {
    let list = value
        .as_array()
        .ok_or_else(|| expected("a size or a list of 2 or 3 sizes", example))?;
    if !(2..=3).contains(&list.len()) {
        return Err((
            format!("expected 2 or 3 sizes, got {}", list.len()),
            format!("for example {example}"),
        ));
    }
    list.iter().map(positive).collect()
}

fn boolean(value: &toml::Value, example: &str) -> Result<bool, ValueError> {
    value
        .as_bool()
        .ok_or_else(|| expected("true or false", example))
}

fn finite(value: &toml::Value) -> Option<f64> {
    let number = match value {
        toml::Value::Integer(n) => *n as f64,
        toml::Value::Float(f) => *f,
        _ => return None,
    };
    number.is_finite().then_some(number)
}

/// `{ key = value, ... }` with only `allowed` keys.
fn table<'a>(
    value: &'a toml::Value,
    allowed: &[&str],
    example: &str,
) -> Result<&'a toml::Table, ValueError> {
    let table = value
        .as_table()
        .ok_or_else(|| expected("a table", example))?;
    for key in table.keys() {
        if !allowed.contains(&key.as_str()) {
            return Err((format!("unknown key `{key}`"), suggest::hint(key, allowed)));
        }
    }
    Ok(table)
}

fn numbers(value: Option<&toml::Value>, key: &str) -> Result<Vec<f64>, ValueError> {
    let help =
        "for example normalize = { mean = [0.485, 0.456, 0.406], std = [0.229, 0.224, 0.225] }";
    let list = value
        .and_then(toml::Value::as_array)
        .filter(|list| !list.is_empty())
        .ok_or_else(|| {
            (
                format!("`{key}` must be a non-empty list of numbers, one per channel"),
                help.to_string(),
            )
        })?;
    list.iter()
        .map(|v| finite(v).ok_or_else(|| (format!("`{key}` must hold numbers"), help.to_string())))
        .collect()
}

/// `resize = 256`, `[h, w]`, `[d, h, w]` or `{ size = ..., interpolation = ..., backend = ... }`.
fn resize_value(value: &toml::Value) -> Result<Resize, ValueError> {
    let size = |value: &toml::Value| -> Result<ResizeTo, ValueError> {
        match value {
            toml::Value::Integer(_) => Ok(ResizeTo::Shorter(positive(value)?)),
            _ => Ok(ResizeTo::Exact(sizes(
                value,
                "resize = 256 (shorter side), [224, 224] or [96, 96, 96]",
            )?)),
        }
    };
    let toml::Value::Table(_) = value else {
        return Ok(Resize::to(size(value)?));
    };
    let example = r#"resize = { size = 256, interpolation = "bicubic", backend = "pil" }"#;
    let table = table(value, &["size", "interpolation", "backend"], example)?;
    let size = size(table.get("size").ok_or_else(|| {
        (
            "`size` is missing".to_string(),
            format!("for example {example}"),
        )
    })?)?;
    let choice = |key: &str, options: &[&str]| match table.get(key) {
        None => Ok(None),
        Some(v) => match v.as_str() {
            Some(s) if options.contains(&s) => Ok(Some(s.to_string())),
            _ => Err((
                format!("`{key}` must be one of {options:?}"),
                format!("for example {example}"),
            )),
        },
    };
    let interpolation = match choice("interpolation", &["bilinear", "bicubic"])?.as_deref() {
        Some("bicubic") => Filter::Bicubic,
        _ => Filter::Bilinear,
    };
    let backend = choice("backend", &["pil", "tensor"])?.map(|b| match b.as_str() {
        "pil" => Backend::Pil,
        _ => Backend::Tensor,
    });
    if backend == Some(Backend::Pil) && matches!(&size, ResizeTo::Exact(s) if s.len() != 2) {
        return Err((
            "backend = \"pil\" resizes 2-D images: give `size` as one side or [h, w]".into(),
            "volumes resize with backend = \"tensor\"".into(),
        ));
    }
    Ok(Resize {
        size,
        interpolation,
        backend,
    })
}

fn normalize(value: &toml::Value) -> Result<Transform, ValueError> {
    let example = "normalize = { mean = [0.485, 0.456, 0.406], std = [0.229, 0.224, 0.225] }";
    let table = table(value, &["mean", "std"], example)?;
    let mean = numbers(table.get("mean"), "mean")?;
    let std = numbers(table.get("std"), "std")?;
    if mean.len() != std.len() {
        return Err((
            format!(
                "`mean` has {} values but `std` has {}",
                mean.len(),
                std.len()
            ),
            "give one mean and one std per channel".into(),
        ));
    }
    if std.iter().any(|&s| s <= 0.0) {
        return Err((
            "every `std` must be greater than 0".into(),
            "a std of 0 would divide by zero".into(),
        ));
    }
    Ok(Transform::Normalize { mean, std })
}

fn scale_intensity(value: &toml::Value) -> Result<Transform, ValueError> {
    let example = "scale_intensity = { min = 0.0, max = 1.0 }";
    let table = table(value, &["min", "max"], example)?;
    let bound = |key: &str, default: f64| match table.get(key) {
        None => Ok(default),
        Some(v) => finite(v).ok_or_else(|| {
            (
                format!("`{key}` must be a number"),
                format!("for example {example}"),
            )
        }),
    };
    let (min, max) = (bound("min", 0.0)?, bound("max", 1.0)?);
    if min >= max {
        return Err((
            format!("`min` ({min}) must be less than `max` ({max})"),
            format!("for example {example}"),
        ));
    }
    Ok(Transform::ScaleIntensity { min, max })
}

impl Transform {
    /// Applies this step to one sample (channels first; spatial axes last).
    pub(super) fn apply(&self, sample: ArrayD<f32>) -> Result<ArrayD<f32>, String> {
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
                    return Err(format!(
                        "channel_order needs a channel axis; the sample has shape {:?}",
                        sample.shape()
                    ));
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

fn resize(sample: ArrayD<f32>, resize: &Resize) -> Result<ArrayD<f32>, String> {
    let ndim = sample.ndim();
    let target: Vec<usize> = match &resize.size {
        ResizeTo::Shorter(side) => {
            if ndim < 2 {
                return Err(format!(
                    "resize needs at least 2 axes; the sample has shape {:?}",
                    sample.shape()
                ));
            }
            let (h, w) = (sample.shape()[ndim - 2], sample.shape()[ndim - 1]);
            shorter_side(h, w, *side).to_vec()
        }
        ResizeTo::Exact(size) => size.clone(),
    };
    check_axes(&sample, &target, "resize")?;
    if resize.backend == Some(Backend::Pil) {
        let [h, w] = target[..] else {
            return Err(format!(
                "backend = \"pil\" resizes 2-D images; {target:?} has {} axes",
                target.len()
            ));
        };
        return pil::resize(&sample, h, w, resize.interpolation);
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

fn check_axes(sample: &ArrayD<f32>, size: &[usize], name: &str) -> Result<(), String> {
    if size.len() > sample.ndim() {
        return Err(format!(
            "{name} {size:?} needs {} trailing axes; the sample has shape {:?}",
            size.len(),
            sample.shape()
        ));
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
    name: &str,
    start: fn(usize, usize) -> usize,
) -> Result<ArrayD<f32>, String> {
    check_axes(&sample, size, name)?;
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
) -> Result<ArrayD<f32>, String> {
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
        return Err(format!(
            "normalize has {} means but the sample has {} channel(s) (shape {:?}, channels first)",
            mean.len(),
            channels,
            sample.shape()
        ));
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

    fn value(text: &str) -> toml::Value {
        let table: toml::Table = toml::from_str(&format!("v = {text}")).unwrap();
        table["v"].clone()
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

    #[test]
    fn values_parse_with_clear_errors() {
        assert_eq!(
            parse_value("resize", &value("256")).unwrap(),
            Transform::Resize(Resize::to(ResizeTo::Shorter(256)))
        );
        assert_eq!(
            parse_value(
                "resize",
                &value(r#"{ size = [5, 7], interpolation = "bicubic", backend = "tensor" }"#)
            )
            .unwrap(),
            Transform::Resize(Resize {
                size: ResizeTo::Exact(vec![5, 7]),
                interpolation: Filter::Bicubic,
                backend: Some(Backend::Tensor),
            })
        );
        assert!(parse_value("resize", &value(r#"{ size = 4, backend = "cv2" }"#)).is_err());
        assert!(parse_value("resize", &value(r#"{ interpolation = "bicubic" }"#)).is_err());
        assert!(parse_value("resize", &value(r#"{ size = [2, 3, 4], backend = "pil" }"#)).is_err());
        assert_eq!(
            parse_value("center_crop", &value("224")).unwrap(),
            Transform::CenterCrop(vec![224, 224])
        );
        assert_eq!(
            parse_value("channel_order", &value("\"bgr\"")).unwrap(),
            Transform::ChannelOrder(ChannelOrder::Bgr)
        );
        assert!(parse_value("resize", &value("0")).is_err());
        assert!(
            parse_value("crop_or_pad", &value("[1, 2, 3, 4]"))
                .unwrap_err()
                .0
                .contains("2 or 3")
        );
        let error = parse_value("normalize", &value("{ mean = [0.5], sdt = [0.5] }")).unwrap_err();
        assert!(error.1.contains("`std`"), "{error:?}");
        assert!(parse_value("normalize", &value("{ mean = [0.5, 0.5], std = [0.5] }")).is_err());
        assert!(parse_value("normalize", &value("{ mean = [0.5], std = [0] }")).is_err());
        assert!(parse_value("scale_intensity", &value("{ min = 1.0, max = 0.0 }")).is_err());
        let json = serde_json::to_value(parse_value("resize", &value("[2, 3]")).unwrap()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({ "resize": { "size": [2, 3], "interpolation": "bilinear" } })
        );
    }
}
