//! ONNX models through ONNX Runtime, natively in Rust (`ort`, loading the toolchain's
//! `libonnxruntime` at run time): sessions, one pass over the data for the outputs, and
//! the timed loop (pure inference: `session.run` on preloaded input tensors).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ndarray::{ArrayD, Axis, IxDyn};
use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{Tensor, ValueType};

/// What went wrong with ONNX Runtime or a model on it.
#[derive(Debug, Clone, thiserror::Error, miette::Diagnostic)]
pub(crate) enum OnnxRuntimeError {
    #[error("cannot load ONNX Runtime from {}: {reason}", library.display())]
    #[diagnostic(help(
        "the report stage needs ONNX Runtime 1.31 or newer (it uses the `ort` crate 2.0.0-rc.15); `pochi toolchain sync` installs the locked version"
    ))]
    Library { library: PathBuf, reason: String },
    #[error("cannot start ONNX Runtime: {reason}")]
    Start { reason: String },
    /// ONNX Runtime's words are kept as text: whether it lacks a kernel is read from them.
    #[error("cannot load {}: {reason}", path.display())]
    Load { path: PathBuf, reason: String },
    #[error("cannot start ONNX Runtime's CUDA provider on GPU {device} for {}: {reason}", path.display())]
    #[diagnostic(help(
        "check the CUDA and cuDNN libraries onnxruntime-gpu needs, or set device = \"cpu\" on the report"
    ))]
    CudaProvider {
        device: u32,
        path: PathBuf,
        reason: String,
    },
    #[error("{} has {count} inputs; the report feeds models one input tensor", path.display())]
    Inputs { path: PathBuf, count: usize },
    #[error("{}: input `{input}` is not a tensor ({found})", path.display())]
    NotATensor {
        path: PathBuf,
        input: String,
        found: String,
    },
    #[error("{}: input `{input}` is {found}; the report feeds float32", path.display())]
    #[diagnostic(help("convert fp16 models with keep_io_types"))]
    NotFloat32 {
        path: PathBuf,
        input: String,
        found: String,
    },
    #[error("{reason}")]
    Tensor { reason: String },
    #[error("inference failed: {reason}")]
    Inference { reason: String },
    #[error("output `{output}` is not float32: {reason}")]
    OutputNotFloat32 { output: String, reason: String },
    #[error(transparent)]
    Shape(#[from] ndarray::ShapeError),
    #[error("interrupted")]
    Interrupted,
}

impl OnnxRuntimeError {
    /// Whether it says the provider has no kernel for an operator (bf16 on the CPU, for
    /// example): the model cannot run here, which is not a fault of the model.
    pub(crate) fn lacks_kernel(&self) -> bool {
        let message = self.to_string();
        message.contains("NOT_IMPLEMENTED") || message.contains("Could not find an implementation")
    }
}

/// The graph optimization level every session gets: ONNX Runtime's `ORT_ENABLE_ALL`, the
/// default of Python's `onnxruntime.InferenceSession`. (`ort` rc.15's `Level3` is
/// `ORT_ENABLE_LAYOUT`, one level short of it.)
pub(super) const OPTIMIZATION: GraphOptimizationLevel = GraphOptimizationLevel::All;
/// [`OPTIMIZATION`] as the report states it.
pub(super) const OPTIMIZATION_NAME: &str = "ORT_ENABLE_ALL";

/// The process's ONNX Runtime (a library can be loaded once per process).
static ENVIRONMENT: OnceLock<Result<(Environment, PathBuf), OnnxRuntimeError>> = OnceLock::new();

/// Loads ONNX Runtime from `library` (once per process) and returns its environment.
pub(super) fn environment(library: &Path) -> Result<Environment, OnnxRuntimeError> {
    let loaded = ENVIRONMENT.get_or_init(|| {
        let builder = ort::init_from(library).map_err(|e| OnnxRuntimeError::Library {
            library: library.to_path_buf(),
            reason: e.to_string(),
        })?;
        let environment =
            builder
                .with_name("pochi-report")
                .build()
                .map_err(|e| OnnxRuntimeError::Start {
                    reason: e.to_string(),
                })?;
        Ok((environment, library.to_path_buf()))
    });
    match loaded {
        Ok((environment, path)) => {
            if path != library {
                tracing::debug!(
                    "ONNX Runtime already loaded from {}; not loading {}",
                    path.display(),
                    library.display()
                );
            }
            Ok(environment.clone())
        }
        Err(error) => Err(error.clone()),
    }
}

/// Finds `libonnxruntime.so*` (or .dylib / .dll) under `onnxruntime/capi/` in the given
/// site directories. `POCHI_ONNXRUNTIME_LIB` overrides the search.
pub(super) fn find_library(site_dirs: &[PathBuf]) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("POCHI_ONNXRUNTIME_LIB") {
        return Some(PathBuf::from(path));
    }
    for dir in site_dirs {
        let capi = dir.join("onnxruntime").join("capi");
        let Ok(entries) = std::fs::read_dir(&capi) else {
            continue;
        };
        let mut found: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                let name = p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                name.starts_with("libonnxruntime.so")
                    || name == "libonnxruntime.dylib"
                    || name == "onnxruntime.dll"
            })
            .collect();
        // The versioned file (libonnxruntime.so.1.32.0) rather than a link to it.
        found.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
        if let Some(first) = found.into_iter().next() {
            return Some(first);
        }
    }
    None
}

/// One loaded model.
pub(super) struct Model {
    session: Session,
    pub input: String,
    /// The input's shape as the model declares it (-1 for dynamic axes).
    pub input_shape: Vec<i64>,
    pub outputs: Vec<String>,
}

/// The execution provider a session gets: CUDA on `gpu` when the stage holds one and the
/// loaded ONNX Runtime has the CUDA provider, else the CPU (with the reason, when a GPU
/// was held, as a warning).
pub(super) enum Provider {
    Cpu { warning: Option<String> },
    Cuda { device: u32 },
}

impl Provider {
    /// ONNX Runtime's name for it.
    pub(super) fn name(&self) -> &'static str {
        match self {
            Provider::Cpu { .. } => "CPUExecutionProvider",
            Provider::Cuda { .. } => "CUDAExecutionProvider",
        }
    }
}

/// Picks the provider for a stage holding `gpu` (ONNX Runtime must be loaded already).
pub(super) fn provider_for(gpu: Option<u32>) -> Provider {
    use ort::ep::ExecutionProvider;
    let Some(device) = gpu else {
        return Provider::Cpu { warning: None };
    };
    match ort::ep::CUDA::is_available() {
        Ok(true) => Provider::Cuda { device },
        Ok(false) => Provider::Cpu {
            warning: Some(format!(
                "the stage holds GPU {device}, but this ONNX Runtime has no CUDA execution provider (the managed toolchain installs the CPU build): ONNX models ran on the CPU; to time them on the GPU, use a [toolchain] python with onnxruntime-gpu installed, or point POCHI_ONNXRUNTIME_LIB at its library"
            )),
        },
        Err(e) => Provider::Cpu {
            warning: Some(format!(
                "cannot ask ONNX Runtime for its execution providers ({e}): ONNX models ran on the CPU"
            )),
        },
    }
}

/// Loads the model at `path` for `provider`, with `threads` intra-op threads (0: ONNX
/// Runtime's default).
pub(super) fn load(
    environment: &Environment,
    path: &Path,
    threads: usize,
    provider: &Provider,
) -> Result<Model, OnnxRuntimeError> {
    let fail = |e: ort::Error| OnnxRuntimeError::Load {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let mut builder = Session::builder(environment)
        .map_err(fail)?
        .with_optimization_level(OPTIMIZATION)
        .map_err(|e| fail(e.into()))?;
    if threads > 0 {
        builder = builder
            .with_intra_threads(threads)
            .map_err(|e| fail(e.into()))?
            .with_inter_threads(1)
            .map_err(|e| fail(e.into()))?;
    }
    if let Provider::Cuda { device } = provider {
        let cuda = ort::ep::CUDA::default()
            .with_device_id(*device as i32)
            .build()
            .error_on_failure();
        builder = builder.with_execution_providers([cuda]).map_err(|e| {
            OnnxRuntimeError::CudaProvider {
                device: *device,
                path: path.to_path_buf(),
                reason: e.to_string(),
            }
        })?;
    }
    let session = builder.commit_from_file(path).map_err(fail)?;
    let (input, input_shape) = float32_input(&session, path)?;
    let outputs = session
        .outputs()
        .iter()
        .map(|o| o.name().to_string())
        .collect();
    Ok(Model {
        session,
        input,
        input_shape,
        outputs,
    })
}

/// The session's one input, a float32 tensor: its name and shape.
fn float32_input(session: &Session, path: &Path) -> Result<(String, Vec<i64>), OnnxRuntimeError> {
    let [input] = session.inputs() else {
        return Err(OnnxRuntimeError::Inputs {
            path: path.to_path_buf(),
            count: session.inputs().len(),
        });
    };
    let (input_shape, ty) = match input.dtype() {
        ValueType::Tensor { ty, shape, .. } => (shape.to_vec(), *ty),
        other => {
            return Err(OnnxRuntimeError::NotATensor {
                path: path.to_path_buf(),
                input: input.name().to_string(),
                found: format!("{other:?}"),
            });
        }
    };
    if ty != ort::value::TensorElementType::Float32 {
        return Err(OnnxRuntimeError::NotFloat32 {
            path: path.to_path_buf(),
            input: input.name().to_string(),
            found: format!("{ty:?}"),
        });
    }
    Ok((input.name().to_string(), input_shape))
}

/// Splits `data` (N x ...) into batches of `batch` samples (the last may be smaller).
pub(super) fn batches(data: &ArrayD<f32>, batch: usize) -> Vec<ArrayD<f32>> {
    let n = data.shape()[0];
    (0..n)
        .step_by(batch.max(1))
        .map(|start| {
            data.slice_axis(Axis(0), ndarray::Slice::from(start..(start + batch).min(n)))
                .to_owned()
        })
        .collect()
}

impl Model {
    /// Runs every batch once; returns each output concatenated over the batches, and each
    /// run's seconds end to end (copying the batch into a new input tensor, the run, and
    /// copying the outputs out).
    pub(super) fn outputs_for(
        &mut self,
        batches: &[ArrayD<f32>],
    ) -> Result<(Vec<ArrayD<f32>>, Vec<f64>), OnnxRuntimeError> {
        let mut collected: Vec<Vec<ArrayD<f32>>> = vec![Vec::new(); self.outputs.len()];
        let mut times = Vec::with_capacity(batches.len());
        for batch in batches {
            let t0 = Instant::now();
            let tensor = Tensor::from_array(batch.clone()).map_err(tensor_error)?;
            let outputs = self
                .session
                .run(ort::inputs![self.input.as_str() => tensor])
                .map_err(inference_error)?;
            for (i, name) in self.outputs.iter().enumerate() {
                let value = outputs[name.as_str()]
                    .try_extract_array::<f32>()
                    .map_err(|e| OnnxRuntimeError::OutputNotFloat32 {
                        output: name.clone(),
                        reason: e.to_string(),
                    })?;
                collected[i].push(value.to_owned());
            }
            times.push(t0.elapsed().as_secs_f64());
        }
        let outputs = collected
            .into_iter()
            .map(|parts| {
                let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
                if views.is_empty() {
                    return Ok(ArrayD::zeros(IxDyn(&[0])));
                }
                Ok(ndarray::concatenate(Axis(0), &views)?)
            })
            .collect::<Result<Vec<_>, OnnxRuntimeError>>()?;
        Ok((outputs, times))
    }

    /// `warmup` runs, then timed runs (cycling over the batches) until at least
    /// `iterations` runs and `min_duration` have passed. Returns each run's seconds and
    /// the samples of each run.
    pub(super) fn time(
        &mut self,
        batches: &[ArrayD<f32>],
        warmup: usize,
        iterations: usize,
        min_duration: Duration,
        cancel: &AtomicBool,
    ) -> Result<(Vec<f64>, Vec<usize>), OnnxRuntimeError> {
        let tensors: Vec<Tensor<f32>> = batches
            .iter()
            .map(|b| Tensor::from_array(b.clone()).map_err(tensor_error))
            .collect::<Result<_, _>>()?;
        let sizes: Vec<usize> = batches.iter().map(|b| b.shape()[0]).collect();
        let input = self.input.clone();
        for i in 0..warmup {
            let tensor = &tensors[i % tensors.len()];
            self.session
                .run(ort::inputs![input.as_str() => tensor])
                .map_err(inference_error)?;
        }
        let started = Instant::now();
        let mut times = Vec::with_capacity(iterations);
        let mut samples = Vec::with_capacity(iterations);
        let mut i = 0;
        while times.len() < iterations || started.elapsed() < min_duration {
            if cancel.load(Ordering::Relaxed) {
                return Err(OnnxRuntimeError::Interrupted);
            }
            let k = i % tensors.len();
            let t0 = Instant::now();
            let outputs = self
                .session
                .run(ort::inputs![input.as_str() => &tensors[k]])
                .map_err(inference_error)?;
            let elapsed = t0.elapsed().as_secs_f64();
            drop(outputs);
            times.push(elapsed);
            samples.push(sizes[k]);
            i += 1;
        }
        Ok((times, samples))
    }
}

fn tensor_error(e: ort::Error) -> OnnxRuntimeError {
    OnnxRuntimeError::Tensor {
        reason: e.to_string(),
    }
}

fn inference_error(e: ort::Error) -> OnnxRuntimeError {
    OnnxRuntimeError::Inference {
        reason: e.to_string(),
    }
}
