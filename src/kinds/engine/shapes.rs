//! The engine's shape decision, before any TensorRT call: pochitrain's three patterns
//! read from the ONNX's declared inputs (static, dynamic batch, dynamic spatial axes).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::onnx_info::{Dim, GraphInput};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BatchRange {
    pub min: u64,
    pub opt: u64,
    pub max: u64,
}

/// One input's min/opt/max shapes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Profile {
    pub input: String,
    pub min: Vec<u64>,
    pub opt: Vec<u64>,
    pub max: Vec<u64>,
}

/// Which of the three shape patterns the ONNX has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ShapePattern {
    Static,
    DynamicBatch,
    DynamicSpatial,
}

/// The shapes the engine is built for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Shapes {
    pub pattern: ShapePattern,
    /// Empty for a fully static ONNX (no optimization profile).
    pub profiles: Vec<Profile>,
    /// Each input's shape at the opt point.
    pub inputs: BTreeMap<String, Vec<u64>>,
}

/// The message for a dynamic-spatial ONNX without `input_size` (as pochitrain words it).
pub const DYNAMIC_NEEDS_SIZE: &str =
    "the ONNX has dynamic shapes; give `input_size` with the resolution you will use";

/// Decides the profiles from the ONNX's declared inputs, as pochitrain's three patterns:
/// batch-only dynamic -> one profile (batch from `batch`, spatial axes from the ONNX);
/// dynamic spatial axes -> `input_size` required; fully static -> no profile.
pub fn decide_shapes(
    inputs: &[GraphInput],
    input_size: Option<&[u64]>,
    batch: Option<BatchRange>,
) -> Result<Shapes, String> {
    let mut pattern = ShapePattern::Static;
    let mut shapes = Vec::new();
    for input in inputs {
        let Some(dims) = &input.shape else {
            return Err(format!(
                "the ONNX input `{}` declares no shape; export it with a declared shape",
                input.name
            ));
        };
        if dims.len() < 2 {
            return Err(format!(
                "the ONNX input `{}` has {} axes; pochi builds engines for inputs [batch, channels, ...]",
                input.name,
                dims.len()
            ));
        }
        if matches!(dims[1], Dim::Dynamic(_)) {
            return Err(format!(
                "the ONNX input `{}` has a dynamic channel axis ({}); export it with a fixed number of channels",
                input.name,
                show(dims)
            ));
        }
        let spatial = &dims[2..];
        let spatial_dynamic = spatial.iter().any(|d| matches!(d, Dim::Dynamic(_)));
        if spatial_dynamic {
            pattern = ShapePattern::DynamicSpatial;
        } else if matches!(dims[0], Dim::Dynamic(_)) && pattern == ShapePattern::Static {
            pattern = ShapePattern::DynamicBatch;
        }
        let size: Vec<u64> = match input_size {
            Some(size) => {
                if size.len() != spatial.len() {
                    return Err(format!(
                        "`input_size` has {} values but the ONNX input `{}` ({}) has {} spatial axes",
                        size.len(),
                        input.name,
                        show(dims),
                        spatial.len()
                    ));
                }
                for (axis, (dim, &want)) in spatial.iter().zip(size).enumerate() {
                    if let Dim::Fixed(n) = dim
                        && *n as u64 != want
                    {
                        return Err(format!(
                            "`input_size` asks for {want} on spatial axis {axis}, but the ONNX input `{}` ({}) is fixed at {n} there; leave `input_size` out or export the ONNX with dynamic spatial axes",
                            input.name,
                            show(dims)
                        ));
                    }
                }
                size.to_vec()
            }
            None if spatial_dynamic => return Err(DYNAMIC_NEEDS_SIZE.to_string()),
            None => spatial
                .iter()
                .map(|d| match d {
                    Dim::Fixed(n) => *n as u64,
                    Dim::Dynamic(_) => 0,
                })
                .collect(),
        };
        let Dim::Fixed(channels) = dims[1] else {
            unreachable!("checked above")
        };
        let batch_range = match (&dims[0], batch) {
            (Dim::Fixed(n), None) => BatchRange {
                min: *n as u64,
                opt: *n as u64,
                max: *n as u64,
            },
            (Dim::Fixed(n), Some(b)) => {
                if b.min != *n as u64 || b.max != *n as u64 {
                    return Err(format!(
                        "the ONNX input `{}` ({}) has a fixed batch of {n}; `batch` cannot change it (export with dynamic = [\"batch\"] for another batch size)",
                        input.name,
                        show(dims)
                    ));
                }
                b
            }
            (Dim::Dynamic(_), None) => BatchRange {
                min: 1,
                opt: 1,
                max: 1,
            },
            (Dim::Dynamic(_), Some(b)) => b,
        };
        shapes.push((input.name.clone(), channels as u64, size, batch_range));
    }
    let full = |batch: u64, channels: u64, size: &[u64]| {
        let mut shape = vec![batch, channels];
        shape.extend_from_slice(size);
        shape
    };
    let profiles = if pattern == ShapePattern::Static {
        Vec::new()
    } else {
        shapes
            .iter()
            .map(|(name, channels, size, b)| Profile {
                input: name.clone(),
                min: full(b.min, *channels, size),
                opt: full(b.opt, *channels, size),
                max: full(b.max, *channels, size),
            })
            .collect()
    };
    let inputs = shapes
        .iter()
        .map(|(name, channels, size, b)| (name.clone(), full(b.opt, *channels, size)))
        .collect();
    Ok(Shapes {
        pattern,
        profiles,
        inputs,
    })
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
            decide_shapes(&inputs, None, None).unwrap_err(),
            DYNAMIC_NEEDS_SIZE
        );
        let shapes = decide_shapes(&inputs, Some(&[96, 96, 96]), None).unwrap();
        assert_eq!(shapes.pattern, ShapePattern::DynamicSpatial);
        assert_eq!(shapes.profiles[0].opt, vec![1, 1, 96, 96, 96]);
        let error = decide_shapes(&inputs, Some(&[96, 96]), None).unwrap_err();
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
        let error = decide_shapes(&inputs, Some(&[64, 64]), None).unwrap_err();
        assert!(error.contains("fixed at 32"), "{error}");
        let range = BatchRange {
            min: 1,
            opt: 2,
            max: 4,
        };
        let error = decide_shapes(&inputs, None, Some(range)).unwrap_err();
        assert!(error.contains("fixed batch of 1"), "{error}");
    }

    #[test]
    fn dynamic_channels_and_missing_shapes_are_errors() {
        let inputs = input(vec![F(1), D("c".into()), F(8), F(8)]);
        assert!(
            decide_shapes(&inputs, None, None)
                .unwrap_err()
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
                .contains("no shape")
        );
    }
}
