//! The `engine` stage kind: an ONNX model to a TensorRT engine, built by the embedded
//! script (`src/kinds/engine/script.py`) on TensorRT's Python API. pochi decides the
//! optimization profiles here, from the ONNX's declared input shapes, before any TensorRT
//! call; the script builds, checks the precision it got, and writes a manifest. Without
//! TensorRT or a GPU the stage is unavailable on the machine (`availability`).

mod probe;
pub(crate) mod shapes;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use toml::Spanned;
use toml::de::DeValue;

pub(crate) use self::probe::{STANDIN_ENV, TENSORRT};
pub(crate) use self::shapes::{BatchRange, Shapes, decide_shapes};
use super::request::{Choice, Program, RequestStage, choice};
use super::{
    AcceleratorUse, InvocationContext, KindInfo, MachineFacts, Requirements, StageError, StageKind,
    Tool, WithoutGpu,
};
use crate::facts::AcceleratorFacts;
use crate::onnx_info;
use crate::pipeline::ByteSize;
use crate::pipeline::parse_api::Parser;
use crate::pipeline::{Device, NamedInput, NamedOutput, SpanError};
use crate::toolchain::scripts::Script;

pub(crate) static INFO: KindInfo = KindInfo {
    name: "engine",
    keys: super::keys_of::<EngineKeys>,
    parse,
    scripts: &[SCRIPT],
    schema: |generator| generator.subschema_for::<EngineKeys>(),
};

/// Builds a TensorRT engine from an ONNX model (and, with `--probe`, reports whether TensorRT imports and which GPU it sees).
pub(crate) const SCRIPT: Script = Script {
    name: "engine.py",
    source: include_str!("script.py"),
};

/// pochitrain's default workspace: 1 GiB.
pub(crate) const DEFAULT_WORKSPACE: u64 = 1 << 30;

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
#[derive(Debug)]
struct Engine {
    input_size: Option<Vec<u64>>,
    batch: Option<BatchRange>,
    workspace: u64,
    precision: Precision,
    optimization_level: OptimizationLevel,
    inputs: Vec<NamedInput>,
    outputs: Vec<NamedOutput>,
}

choice! {
    /// The precision the engine's layers must have.
    enum Precision {
        Auto = "auto",
        Fp32 = "fp32",
        Fp16 = "fp16",
        Bf16 = "bf16",
        Int8 = "int8",
        Fp8 = "fp8",
    }
}

/// TensorRT's builder optimization level, 0 to 5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
struct OptimizationLevel(u32);

impl OptimizationLevel {
    /// TensorRT's default.
    const DEFAULT: OptimizationLevel = OptimizationLevel(3);

    fn parse(parser: &Parser, level: &Spanned<i64>) -> Result<Self, SpanError> {
        match u32::try_from(*level.get_ref()) {
            Ok(n) if n <= 5 => Ok(OptimizationLevel(n)),
            _ => Err(parser
                .src
                .error(level.span(), "`optimization_level` must be 0 to 5")
                .with_help("3 is TensorRT's default")),
        }
    }
}

/// `input_size`: [H, W] or [D, H, W] (a 1-axis size passes too), every size positive.
fn input_size(parser: &Parser, size: &Spanned<Vec<i64>>) -> Result<Vec<u64>, SpanError> {
    let list = size.get_ref();
    if !(1..=3).contains(&list.len()) || list.iter().any(|&d| d <= 0) {
        return Err(parser
            .src
            .error(
                size.span(),
                "`input_size` must be [H, W] or [D, H, W] of positive sizes",
            )
            .with_help("e.g. input_size = [224, 224] or input_size = [96, 96, 96]"));
    }
    Ok(list.iter().map(|&d| d as u64).collect())
}

impl BatchKeys {
    /// The range as written (one size is min = opt = max): 1 or more, min <= opt <= max.
    fn range(parser: &Parser, batch: &Spanned<BatchKeys>) -> Result<BatchRange, SpanError> {
        let (min, opt, max) = match *batch.get_ref() {
            BatchKeys::One(n) => (n, n, n),
            BatchKeys::Range { min, opt, max } => (min, opt, max),
        };
        if min < 1 || !(min <= opt && opt <= max) {
            return Err(parser
                .src
                .error(
                    batch.span(),
                    "`batch` must be 1 or more, with min <= opt <= max",
                )
                .with_help("e.g. batch = 1 or batch = { min = 1, opt = 4, max = 8 }"));
        }
        Ok(BatchRange {
            min: min as u64,
            opt: opt as u64,
            max: max as u64,
        })
    }
}

fn parse(parser: &Parser, value: &Spanned<DeValue>) -> Result<Box<dyn StageKind>, SpanError> {
    let keys: EngineKeys = parser.deserialize(value)?;
    let inputs = vec![parser.input("onnx", &keys.onnx)?];
    let input_size = match &keys.input_size {
        None => None,
        Some(size) => Some(input_size(parser, size)?),
    };
    let batch = match &keys.batch {
        None => None,
        Some(batch) => Some(BatchKeys::range(parser, batch)?),
    };
    let precision = match &keys.precision {
        None => Precision::Auto,
        Some(precision) => Precision::parse(parser, precision, "precision")?,
    };
    let optimization_level = match &keys.optimization_level {
        None => OptimizationLevel::DEFAULT,
        Some(level) => OptimizationLevel::parse(parser, level)?,
    };
    let outputs = super::request::primary_and_manifest(
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
    }))
}

/// The timing cache as the script sees it: a copy of the user's (`timing_cache`) in the
/// stage's scratch directory, named by a path relative to the project, so the request
/// (an input of the stage's Action) is the same on every machine; `keep_timing_cache`
/// copies it back after the build. None without a cache for this TensorRT and GPU.
fn stage_timing_cache(context: &InvocationContext) -> Option<PathBuf> {
    let kept = timing_cache(context.facts.accelerator(TENSORRT.id))?;
    let staged = context.scratch.join(TIMING_CACHE);
    let on_disk = context.on_disk(&staged);
    // The scratch directory is the stage's own (links refused there); a stale file goes.
    let _ = crate::fsutil::remove_path(&on_disk);
    if kept.is_file() && std::fs::copy(&kept, &on_disk).is_err() {
        let _ = crate::fsutil::remove_path(&on_disk);
    }
    Some(staged)
}

/// After a build: the timing cache the script wrote, back to the user's (atomically; a
/// cache, so a failure only costs the next build time).
fn keep_timing_cache(context: &InvocationContext) {
    let Some(kept) = timing_cache(context.facts.accelerator(TENSORRT.id)) else {
        return;
    };
    if let Ok(bytes) = std::fs::read(context.on_disk(&context.scratch.join(TIMING_CACHE))) {
        let _ = crate::fsutil::write_cache(&kept, &bytes);
    }
}

/// The timing cache's name in the stage's scratch directory.
const TIMING_CACHE: &str = "tensorrt-timing.cache";

/// The timing cache's file for this TensorRT, CUDA and GPU, in pochi's cache; none for a
/// declared target (a remote worker's GPU: its compute capability is not known here, and
/// the file would be on this machine).
fn timing_cache(found: Option<&AcceleratorFacts>) -> Option<PathBuf> {
    let found = found.filter(|t| t.version.is_some() && t.compute_capability.is_some())?;
    let cache = crate::toolchain::cache::CacheDir::from_env().ok()?;
    let key = format!(
        "{}|{}|{}",
        found.gpu_name.as_deref().unwrap_or("unknown-gpu"),
        found.cuda.as_deref().unwrap_or("unknown-cuda"),
        found.version.as_deref().unwrap_or("unknown-trt"),
    );
    Some(cache.root().join("tensorrt-timing").join(format!(
        "{}.cache",
        crate::toolchain::short_hash(key.as_bytes())
    )))
}

impl Engine {
    /// The shapes for the ONNX at `onnx` (relative to `dir`).
    fn shapes(&self, dir: &Path, onnx: &Path) -> Result<Shapes, StageError> {
        let graph_inputs = onnx_info::read_inputs(&dir.join(onnx))?;
        Ok(decide_shapes(
            &graph_inputs,
            self.input_size.as_deref(),
            self.batch,
        )?)
    }
}

impl RequestStage for Engine {
    fn kind(&self) -> &'static str {
        "engine"
    }

    fn inputs(&self) -> &[NamedInput] {
        &self.inputs
    }

    fn outputs(&self) -> &[NamedOutput] {
        &self.outputs
    }

    /// With TensorRT, its version and the GPU it builds for: an engine is never reused on
    /// another GPU model or TensorRT version.
    fn params(&self, facts: &MachineFacts) -> Value {
        json!({
            "input_size": self.input_size,
            "batch": self.batch,
            "workspace": self.workspace,
            "precision": self.precision.name(),
            "optimization_level": self.optimization_level,
            "tensorrt": facts.accelerator(TENSORRT.id).filter(|t| t.is_target()).map(|t| json!({
                "version": t.version,
                "gpu": t.gpu_name,
                "compute_capability": t.compute_capability,
                "cuda": t.cuda,
            })),
            "worker": SCRIPT.hash(),
        })
    }

    fn requirements(&self) -> Requirements {
        Requirements {
            tool: Tool::Python,
            python_modules: vec!["onnx"],
            default_device: Device::Cuda(None),
            without_gpu: WithoutGpu::Unavailable,
            accelerator: AcceleratorUse::Required(&TENSORRT),
            ..Requirements::default()
        }
    }

    fn program(&self) -> Program {
        Program::Python(&SCRIPT)
    }

    /// The shape decision, whenever the ONNX exists: its errors come before "TensorRT is
    /// not available", on every machine.
    fn check_inputs(
        &self,
        dir: &Path,
        inputs: &BTreeMap<String, PathBuf>,
    ) -> Result<(), StageError> {
        match inputs.get("onnx") {
            Some(onnx) => self.shapes(dir, onnx).map(|_| ()),
            None => Ok(()),
        }
    }

    fn after_success(&self, context: &InvocationContext) {
        keep_timing_cache(context);
    }

    fn env(&self) -> BTreeMap<String, String> {
        std::env::var(STANDIN_ENV)
            .map(|standin| BTreeMap::from([(STANDIN_ENV.to_string(), standin)]))
            .unwrap_or_default()
    }

    fn request(&self, context: &InvocationContext) -> Result<Value, StageError> {
        let onnx = context.inputs.get("onnx").cloned().unwrap_or_default();
        let shapes = self.shapes(&context.dir, &onnx)?;
        // Relative to the pipeline directory, the script's working directory.
        let path = |key: &str| {
            context
                .outputs
                .get(key)
                .map(|p| p.to_string_lossy().into_owned())
        };
        Ok(json!({
            "protocol": 1,
            "onnx": onnx.to_string_lossy(),
            "shapes": shapes,
            "workspace": self.workspace,
            "precision": self.precision.name(),
            "optimization_level": self.optimization_level,
            "timing_cache": stage_timing_cache(context).map(|p| p.to_string_lossy().into_owned()),
            "outputs": { "engine": path("engine"), "manifest": path("manifest") },
        }))
    }
}
