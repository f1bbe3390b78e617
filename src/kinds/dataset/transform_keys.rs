//! The declarative `transform` list as written: each entry a one-key table
//! (`{ resize = 256 }`), parsed with spans into a `Transform`, and its JSON Schema.

use indexmap::IndexMap;
use schemars::JsonSchema;
use toml::Spanned;

use super::resample::Filter;
use super::transform::{Backend, ChannelOrder, Resize, ResizeTo, Transform};
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

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str) -> toml::Value {
        let table: toml::Table = toml::from_str(&format!("v = {text}")).unwrap();
        table["v"].clone()
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
