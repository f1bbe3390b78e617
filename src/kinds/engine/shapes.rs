//! The engine's shape decision, before any TensorRT call: pochitrain's three patterns
//! read from the ONNX's declared inputs (static, dynamic batch, dynamic spatial axes).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::onnx_info::{Dim, GraphInput};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct BatchRange {
    pub min: u64,
    pub opt: u64,
    pub max: u64,
}

/// One input's min/opt/max shapes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Profile {
    pub input: String,
    pub min: Vec<u64>,
    pub opt: Vec<u64>,
    pub max: Vec<u64>,
}

/// Which of the three shape patterns the ONNX has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ShapePattern {
    Static,
    DynamicBatch,
    DynamicSpatial,
}

/// The shapes the engine is built for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Shapes {
    pub pattern: ShapePattern,
    /// Empty for a fully static ONNX (no optimization profile).
    pub profiles: Vec<Profile>,
    /// Each input's shape at the opt point.
    pub inputs: BTreeMap<String, Vec<u64>>,
}

/// The message for a dynamic-spatial ONNX without `input_size` (as pochitrain words it).
pub(crate) const DYNAMIC_NEEDS_SIZE: &str =
    "the ONNX has dynamic shapes; give `input_size` with the resolution you will use";

/// Why no engine shapes follow from the ONNX's declared inputs and the stage's keys.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub(crate) enum ShapeError {
    #[error("the ONNX input `{input}` declares no shape; export it with a declared shape")]
    NoShape { input: String },
    #[error(
        "the ONNX input `{input}` has {axes} axes; pochi builds engines for inputs [batch, channels, ...]"
    )]
    TooFewAxes { input: String, axes: usize },
    #[error(
        "the ONNX input `{input}` has a dynamic channel axis ({dims}); export it with a fixed number of channels"
    )]
    DynamicChannels { input: String, dims: String },
    #[error(
        "`input_size` has {given} values but the ONNX input `{input}` ({dims}) has {spatial} spatial axes"
    )]
    SizeRank {
        given: usize,
        input: String,
        dims: String,
        spatial: usize,
    },
    #[error(
        "`input_size` asks for {want} on spatial axis {axis}, but the ONNX input `{input}` ({dims}) is fixed at {fixed} there; leave `input_size` out or export the ONNX with dynamic spatial axes"
    )]
    SizeAgainstFixed {
        want: u64,
        axis: usize,
        input: String,
        dims: String,
        fixed: i64,
    },
    #[error("{}", DYNAMIC_NEEDS_SIZE)]
    NeedsInputSize,
    #[error(
        "the ONNX input `{input}` ({dims}) has a fixed batch of {fixed}; `batch` cannot change it (export with dynamic = [\"batch\"] for another batch size)"
    )]
    FixedBatch {
        input: String,
        dims: String,
        fixed: i64,
    },
}

/// One input as the engine will see it: channels, spatial size and batch range.
struct InputShape {
    name: String,
    channels: u64,
    size: Vec<u64>,
    batch: BatchRange,
}

impl InputShape {
    /// The full shape `[batch, channels, *size]`.
    fn at(&self, batch: u64) -> Vec<u64> {
        let mut shape = vec![batch, self.channels];
        shape.extend_from_slice(&self.size);
        shape
    }
}

/// Decides the profiles from the ONNX's declared inputs, as pochitrain's three patterns:
/// batch-only dynamic -> one profile (batch from `batch`, spatial axes from the ONNX);
/// dynamic spatial axes -> `input_size` required; fully static -> no profile.
pub(crate) fn decide_shapes(
    inputs: &[GraphInput],
    input_size: Option<&[u64]>,
    batch: Option<BatchRange>,
) -> Result<Shapes, ShapeError> {
    let mut pattern = ShapePattern::Static;
    let mut shapes = Vec::new();
    for input in inputs {
        let dims = declared_dims(input)?;
        let spatial = &dims[2..];
        let spatial_dynamic = spatial.iter().any(|d| matches!(d, Dim::Dynamic(_)));
        if spatial_dynamic {
            pattern = ShapePattern::DynamicSpatial;
        } else if matches!(dims[0], Dim::Dynamic(_)) && pattern == ShapePattern::Static {
            pattern = ShapePattern::DynamicBatch;
        }
        let Dim::Fixed(channels) = dims[1] else {
            unreachable!("checked by declared_dims")
        };
        shapes.push(InputShape {
            name: input.name.clone(),
            channels: channels as u64,
            size: spatial_size(input, dims, input_size)?,
            batch: batch_range(input, dims, batch)?,
        });
    }
    let profiles = if pattern == ShapePattern::Static {
        Vec::new()
    } else {
        shapes
            .iter()
            .map(|shape| Profile {
                input: shape.name.clone(),
                min: shape.at(shape.batch.min),
                opt: shape.at(shape.batch.opt),
                max: shape.at(shape.batch.max),
            })
            .collect()
    };
    let inputs = shapes
        .iter()
        .map(|shape| (shape.name.clone(), shape.at(shape.batch.opt)))
        .collect();
    Ok(Shapes {
        pattern,
        profiles,
        inputs,
    })
}

/// The input's declared axes: at least [batch, channels], with a fixed channel count.
fn declared_dims(input: &GraphInput) -> Result<&[Dim], ShapeError> {
    let Some(dims) = &input.shape else {
        return Err(ShapeError::NoShape {
            input: input.name.clone(),
        });
    };
    if dims.len() < 2 {
        return Err(ShapeError::TooFewAxes {
            input: input.name.clone(),
            axes: dims.len(),
        });
    }
    if matches!(dims[1], Dim::Dynamic(_)) {
        return Err(ShapeError::DynamicChannels {
            input: input.name.clone(),
            dims: show(dims),
        });
    }
    Ok(dims)
}

/// The spatial size: `input_size` (checked against the axes the ONNX fixes), else the
/// ONNX's own, which must then be fixed.
fn spatial_size(
    input: &GraphInput,
    dims: &[Dim],
    input_size: Option<&[u64]>,
) -> Result<Vec<u64>, ShapeError> {
    let spatial = &dims[2..];
    let Some(size) = input_size else {
        if spatial.iter().any(|d| matches!(d, Dim::Dynamic(_))) {
            return Err(ShapeError::NeedsInputSize);
        }
        return Ok(spatial
            .iter()
            .map(|d| match d {
                Dim::Fixed(n) => *n as u64,
                Dim::Dynamic(_) => 0,
            })
            .collect());
    };
    if size.len() != spatial.len() {
        return Err(ShapeError::SizeRank {
            given: size.len(),
            input: input.name.clone(),
            dims: show(dims),
            spatial: spatial.len(),
        });
    }
    for (axis, (dim, &want)) in spatial.iter().zip(size).enumerate() {
        if let Dim::Fixed(n) = dim
            && *n as u64 != want
        {
            return Err(ShapeError::SizeAgainstFixed {
                want,
                axis,
                input: input.name.clone(),
                dims: show(dims),
                fixed: *n,
            });
        }
    }
    Ok(size.to_vec())
}

/// The batch range: `batch` on a dynamic batch axis (default 1), the ONNX's own when fixed.
fn batch_range(
    input: &GraphInput,
    dims: &[Dim],
    batch: Option<BatchRange>,
) -> Result<BatchRange, ShapeError> {
    let one = |n: u64| BatchRange {
        min: n,
        opt: n,
        max: n,
    };
    match (&dims[0], batch) {
        (Dim::Fixed(n), None) => Ok(one(*n as u64)),
        (Dim::Fixed(n), Some(b)) if b.min != *n as u64 || b.max != *n as u64 => {
            Err(ShapeError::FixedBatch {
                input: input.name.clone(),
                dims: show(dims),
                fixed: *n,
            })
        }
        (Dim::Fixed(_), Some(b)) | (Dim::Dynamic(_), Some(b)) => Ok(b),
        (Dim::Dynamic(_), None) => Ok(one(1)),
    }
}

fn show(dims: &[Dim]) -> String {
    let parts: Vec<String> = dims.iter().map(Dim::to_string).collect();
    format!("[{}]", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(dims: Vec<Dim>) -> Vec<GraphInput> {
        vec![GraphInput {
            name: "input".into(),
            elem_type: 1,
            shape: Some(dims),
        }]
    }
    use Dim::{Dynamic as D, Fixed as F};

    #[test]
    fn batch_only_dynamic_gives_one_profile_from_the_onnx() {
        let inputs = input(vec![D("batch".into()), F(3), F(224), F(224)]);
        let shapes = decide_shapes(&inputs, None, None).unwrap();
        assert_eq!(shapes.pattern, ShapePattern::DynamicBatch);
        assert_eq!(shapes.profiles.len(), 1);
        assert_eq!(shapes.profiles[0].min, vec![1, 3, 224, 224]);
        assert_eq!(shapes.profiles[0].max, vec![1, 3, 224, 224]);
        let range = BatchRange {
            min: 1,
            opt: 4,
            max: 8,
        };
        let shapes = decide_shapes(&inputs, None, Some(range)).unwrap();
        assert_eq!(shapes.profiles[0].opt, vec![4, 3, 224, 224]);
        assert_eq!(shapes.profiles[0].max, vec![8, 3, 224, 224]);
    }

    #[test]
    fn dynamic_spatial_needs_input_size() {
        let inputs = input(vec![
            D("batch".into()),
            F(1),
            D("d".into()),
            D("h".into()),
            D("w".into()),
        ]);
        assert_eq!(
            decide_shapes(&inputs, None, None).unwrap_err().to_string(),
            DYNAMIC_NEEDS_SIZE
        );
        let shapes = decide_shapes(&inputs, Some(&[96, 96, 96]), None).unwrap();
        assert_eq!(shapes.pattern, ShapePattern::DynamicSpatial);
        assert_eq!(shapes.profiles[0].opt, vec![1, 1, 96, 96, 96]);
        let error = decide_shapes(&inputs, Some(&[96, 96]), None)
            .unwrap_err()
            .to_string();
        assert!(error.contains("3 spatial axes"), "{error}");
    }

    #[test]
    fn fully_static_has_no_profile_and_rejects_other_sizes() {
        let inputs = input(vec![F(1), F(3), F(32), F(32)]);
        let shapes = decide_shapes(&inputs, None, None).unwrap();
        assert_eq!(shapes.pattern, ShapePattern::Static);
        assert!(shapes.profiles.is_empty());
        assert_eq!(shapes.inputs["input"], vec![1, 3, 32, 32]);
        assert!(decide_shapes(&inputs, Some(&[32, 32]), None).is_ok());
        let error = decide_shapes(&inputs, Some(&[64, 64]), None)
            .unwrap_err()
            .to_string();
        assert!(error.contains("fixed at 32"), "{error}");
        let range = BatchRange {
            min: 1,
            opt: 2,
            max: 4,
        };
        let error = decide_shapes(&inputs, None, Some(range))
            .unwrap_err()
            .to_string();
        assert!(error.contains("fixed batch of 1"), "{error}");
    }

    #[test]
    fn dynamic_channels_and_missing_shapes_are_errors() {
        let inputs = input(vec![F(1), D("c".into()), F(8), F(8)]);
        assert!(
            decide_shapes(&inputs, None, None)
                .unwrap_err()
                .to_string()
                .contains("channel")
        );
        let inputs = vec![GraphInput {
            name: "x".into(),
            elem_type: 1,
            shape: None,
        }];
        assert!(
            decide_shapes(&inputs, None, None)
                .unwrap_err()
                .to_string()
                .contains("no shape")
        );
    }
}
