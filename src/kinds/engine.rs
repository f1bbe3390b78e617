//! The `engine` stage kind: an ONNX model to a TensorRT engine, built by the embedded
//! worker (`src/toolchain/workers/engine.py`) on TensorRT's Python API. pochi decides the
//! optimization profiles here, from the ONNX's declared input shapes, before any TensorRT
//! call; the worker builds, checks the precision it got, and writes a manifest. Without
//! TensorRT or a GPU the stage is unavailable on the machine (`availability`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use toml::Spanned;
use toml::de::DeValue;

use super::{Action, Host, InvocationContext, KindInfo, StageKind, Tool};
use crate::onnx_info::{self, Dim, GraphInput};
use crate::spec::ByteSize;
use crate::spec::parse_api::Parser;
use crate::spec::{Device, NamedInput, NamedOutput, SpanError, suggest};
use crate::toolchain::tensorrt::{Probe, probe};
use crate::toolchain::workers::ENGINE;

pub static INFO: KindInfo = KindInfo {
    name: "engine",
    keys: &[
        "onnx",
        "input_size",
        "batch",
        "workspace",
        "precision",
        "optimization_level",
        "output",
    ],
    parse,
    schema: |generator| generator.subschema_for::<EngineKeys>(),
};

/// Where the worker writes its answer, next to the manifest's temporary path.
const RESULT_FILE: &str = "pochi-engine-result.json";
/// The request pochi writes for the worker (profiles decided in Rust).
const REQUEST_FILE: &str = "pochi-engine-request.json";
/// pochitrain's default workspace: 1 GiB.
pub const DEFAULT_WORKSPACE: u64 = 1 << 30;
const DEFAULT_OPT_LEVEL: u32 = 3;
pub use crate::toolchain::tensorrt::STANDIN_ENV;
const PRECISIONS: &[&str] = &["auto", "fp32", "fp16", "bf16", "int8", "fp8"];

/// `kind = "engine"`: a TensorRT engine from an ONNX model.
#[derive(Debug, Deserialize, JsonSchema)]
struct EngineKeys {
    /// The ONNX model: "@stage" (e.g. a quantize stage) or a path.
    #[schemars(with = "String")]
    onnx: Spanned<String>,
    /// The spatial size, [H, W] or [D, H, W]: required when the ONNX has dynamic spatial
    /// axes; must match the ONNX when its spatial axes are fixed.
    #[schemars(with = "Option<Vec<u64>>")]
    input_size: Option<Spanned<Vec<i64>>>,
    /// The batch size (default 1) or a range { min, opt, max } (needs a dynamic batch axis).
    #[schemars(with = "Option<BatchKeys>")]
    batch: Option<Spanned<BatchKeys>>,
    /// The builder's workspace memory limit (default 1 GiB).
    workspace: Option<ByteSize>,
    /// The precision the engine must have: "auto" (the default: what the ONNX carries,
    /// fp16 weights, Q/DQ int8/fp8, else fp32), fp32, fp16, bf16, int8, fp8. The build
    /// fails when the engine's layers are not in this precision.
    #[schemars(with = "Option<String>")]
    precision: Option<Spanned<String>>,
    /// TensorRT's builder optimization level, 0 to 5 (default 3).
    #[schemars(with = "Option<u32>")]
    optimization_level: Option<Spanned<i64>>,
    /// Where the engine goes (default "{build_dir}/<stage>.engine"); the manifest goes
    /// next to it as <stem>.manifest.json.
    #[schemars(with = "Option<String>")]
    output: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
enum BatchKeys {
    One(i64),
    Range { min: i64, opt: i64, max: i64 },
}

/// The batch sizes of the profile.
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

#[derive(Debug)]
struct Engine {
    input_size: Option<Vec<u64>>,
    batch: Option<BatchRange>,
    workspace: u64,
    precision: &'static str,
    optimization_level: u32,
    inputs: Vec<NamedInput>,
    outputs: Vec<NamedOutput>,
    /// What the probe found (TensorRT version, GPU), set by `availability`: part of the
    /// fingerprint, so an engine is never reused on another GPU or TensorRT version.
    probed: OnceLock<Probe>,
}

fn parse(parser: &Parser, value: &Spanned<DeValue>) -> Result<Box<dyn StageKind>, SpanError> {
    let keys: EngineKeys = parser.deserialize(value)?;
    let src = parser.src;
    let inputs = vec![parser.input("onnx", &keys.onnx)?];
    let input_size = match &keys.input_size {
        None => None,
        Some(size) => {
            let list = size.get_ref();
            if !(1..=3).contains(&list.len()) || list.iter().any(|&d| d <= 0) {
                return Err(src
                    .error(
                        size.span(),
                        "`input_size` must be [H, W] or [D, H, W] of positive sizes",
                    )
                    .with_help("e.g. input_size = [224, 224] or input_size = [96, 96, 96]"));
            }
            Some(list.iter().map(|&d| d as u64).collect())
        }
    };
    let batch = match &keys.batch {
        None => None,
        Some(spanned) => {
            let range = match *spanned.get_ref() {
                BatchKeys::One(n) => (n, n, n),
                BatchKeys::Range { min, opt, max } => (min, opt, max),
            };
            let (min, opt, max) = range;
            if min < 1 || !(min <= opt && opt <= max) {
                return Err(src
                    .error(
                        spanned.span(),
                        "`batch` must be 1 or more, with min <= opt <= max",
                    )
                    .with_help("e.g. batch = 1 or batch = { min = 1, opt = 4, max = 8 }"));
            }
            Some(BatchRange {
                min: min as u64,
                opt: opt as u64,
                max: max as u64,
            })
        }
    };
    let precision = match &keys.precision {
        None => "auto",
        Some(p) => match PRECISIONS
            .iter()
            .find(|known| **known == p.get_ref().as_str())
        {
            Some(known) => *known,
            None => {
                return Err(src
                    .error(p.span(), format!("unknown precision `{}`", p.get_ref()))
                    .with_help(suggest::hint(p.get_ref(), PRECISIONS)));
            }
        },
    };
    let optimization_level = match &keys.optimization_level {
        None => DEFAULT_OPT_LEVEL,
        Some(level) => match u32::try_from(*level.get_ref()) {
            Ok(n) if n <= 5 => n,
            _ => {
                return Err(src
                    .error(level.span(), "`optimization_level` must be 0 to 5")
                    .with_help("3 is TensorRT's default"));
            }
        },
    };
    let outputs = super::worker::primary_and_manifest(
        parser,
        value.span(),
        keys.output.as_ref(),
        "engine",
        "engine",
    )?;
    Ok(Box::new(Engine {
        input_size,
        batch,
        workspace: keys.workspace.map(|w| w.0).unwrap_or(DEFAULT_WORKSPACE),
        precision,
        optimization_level,
        inputs,
        outputs,
        probed: OnceLock::new(),
    }))
}

fn sibling(context: &InvocationContext, name: &str) -> PathBuf {
    super::worker::scratch_file(context, name)
}

/// The timing cache's file for this TensorRT, CUDA and GPU, in pochi's cache.
fn timing_cache(probe: Option<&Probe>) -> Option<PathBuf> {
    let probe = probe?;
    let cache = crate::toolchain::cache::CacheDir::from_env().ok()?;
    let key = format!(
        "{}|{}|{}",
        probe.gpu_name.as_deref().unwrap_or("unknown-gpu"),
        probe.cuda.as_deref().unwrap_or("unknown-cuda"),
        probe.tensorrt.as_deref().unwrap_or("unknown-trt"),
    );
    Some(cache.root().join("tensorrt-timing").join(format!(
        "{}.cache",
        crate::toolchain::short_hash(key.as_bytes())
    )))
}

impl StageKind for Engine {
    fn kind(&self) -> &'static str {
        "engine"
    }

    fn inputs(&self) -> &[NamedInput] {
        &self.inputs
    }

    fn outputs(&self) -> &[NamedOutput] {
        &self.outputs
    }

    fn params(&self) -> Value {
        json!({
            "input_size": self.input_size,
            "batch": self.batch,
            "workspace": self.workspace,
            "precision": self.precision,
            "optimization_level": self.optimization_level,
            "tensorrt": self.probed.get().map(|p| json!({
                "version": p.tensorrt,
                "gpu": p.gpu_name,
                "compute_capability": p.compute_capability,
                "cuda": p.cuda,
            })),
            "worker": ENGINE.hash(),
        })
    }

    fn default_device(&self) -> Device {
        Device::Cuda(None)
    }

    fn tool(&self) -> Tool {
        Tool::Python
    }

    fn python_modules(&self) -> Vec<&'static str> {
        vec!["onnx"]
    }

    fn observe_toolchain(&self, python: &Path) {
        let found = probe(python);
        if found.tensorrt.is_some() {
            let _ = self.probed.set(found);
        }
    }

    fn availability(&self, host: &Host) -> Result<(), String> {
        let found = probe(host.python);
        let mut missing = Vec::new();
        if found.tensorrt.is_none() {
            missing.push(format!(
                "TensorRT is not available on this machine ({} cannot `import tensorrt`: {})",
                host.python.display(),
                found.error.as_deref().unwrap_or("not installed")
            ));
        }
        if host.gpus.is_empty() {
            missing.push(
                "no GPU (nvidia-smi lists none and [resources] gpus declares none)".to_string(),
            );
        }
        if !missing.is_empty() {
            return Err(missing.join("; "));
        }
        let _ = self.probed.set(found);
        Ok(())
    }

    fn prepare(&self, context: &InvocationContext) -> Result<(), String> {
        let onnx = context.inputs.get("onnx").cloned().unwrap_or_default();
        let graph_inputs = onnx_info::read_inputs(&context.dir.join(&onnx))?;
        let shapes = decide_shapes(&graph_inputs, self.input_size.as_deref(), self.batch)?;
        let path = |key: &str| {
            context
                .outputs
                .get(key)
                .map(|p| context.dir.join(p).to_string_lossy().into_owned())
        };
        let request = json!({
            "protocol": 1,
            "onnx": context.dir.join(&onnx).to_string_lossy(),
            "shapes": shapes,
            "workspace": self.workspace,
            "precision": self.precision,
            "optimization_level": self.optimization_level,
            "timing_cache": timing_cache(self.probed.get()).map(|p| p.to_string_lossy().into_owned()),
            "outputs": { "engine": path("engine"), "manifest": path("manifest") },
        });
        let file = context.dir.join(sibling(context, REQUEST_FILE));
        std::fs::write(&file, request.to_string())
            .map_err(|e| format!("cannot write {}: {e}", file.display()))
    }

    fn action(&self, context: &InvocationContext) -> Action {
        let mut env = BTreeMap::new();
        if let Ok(standin) = std::env::var(STANDIN_ENV) {
            env.insert(STANDIN_ENV.to_string(), standin);
        }
        let request = sibling(context, REQUEST_FILE)
            .to_string_lossy()
            .into_owned();
        super::worker::run_worker(
            context,
            &ENGINE,
            request,
            &sibling(context, RESULT_FILE),
            env,
        )
    }

    fn verify(&self, context: &InvocationContext) -> Result<(), String> {
        let path = context.dir.join(sibling(context, RESULT_FILE));
        super::worker::check_answer("engine", &path)
    }

    fn explain_failure(
        &self,
        context: &InvocationContext,
        _status: &str,
        message: String,
    ) -> String {
        match super::worker::read_json(&context.dir.join(sibling(context, RESULT_FILE))) {
            Some(result) => super::worker::describe_failure("engine", &result),
            None => message,
        }
    }
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
