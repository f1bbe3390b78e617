//! `Host`: the facts about the machine that stages depend on, gathered once per build by
//! the command line (the only layer that probes) and passed to every kind: the GPUs with
//! their models, the toolchain, what TensorRT import found, the Python packages' versions
//! and the pochi binary. No kind probes the machine itself, so a stage's key never
//! depends on the order in which commands or hooks ran.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The Python interpreter stages run, and its identity (Python and package versions)
/// that goes into the key of every stage whose tool is `Tool::Python`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Toolchain {
    pub python: PathBuf,
    pub identity: String,
}

/// One GPU as `nvidia-smi` describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuModel {
    pub index: u32,
    pub name: String,
    /// Total memory, as `nvidia-smi` says it (e.g. "81559 MiB").
    pub memory: String,
    /// Free memory when the machine was detected.
    pub memory_free: String,
    pub driver: String,
    pub compute_capability: String,
}

/// What importing TensorRT with the toolchain's interpreter found.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TensorRt {
    /// The version, when it imports.
    pub version: Option<String>,
    /// Why it does not import.
    pub error: Option<String>,
    pub gpu_name: Option<String>,
    pub compute_capability: Option<String>,
    pub cuda: Option<String>,
}

impl TensorRt {
    /// Whether these facts describe a TensorRT to build for: one that imports here, or a
    /// declared target (a GPU model named by the stage, for a remote worker).
    pub fn is_target(&self) -> bool {
        self.version.is_some() || (self.error.is_none() && self.gpu_name.is_some())
    }
}

/// The interpreter's version and its packages' versions (read without importing them).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PythonFacts {
    pub python: String,
    pub versions: BTreeMap<String, String>,
    pub site_dirs: Vec<PathBuf>,
}

/// The machine facts of one build, for one pipeline (pipelines may name other toolchains).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    /// The GPUs the scheduler may hand out (detected, `POCHI_GPUS`, or `[resources] gpus`).
    pub gpus: Vec<u32>,
    /// What `nvidia-smi` says of the GPUs (empty without it).
    pub gpu_models: Vec<GpuModel>,
    pub toolchain: Toolchain,
    /// Probed only when a stage uses TensorRT; `None` when not probed.
    pub tensorrt: Option<TensorRt>,
    /// Read only when a stage reports its environment; `None` when not read.
    pub python: Option<PythonFacts>,
    /// This pochi binary (the program of stages that pochi runs itself).
    pub pochi: PathBuf,
}

impl Host {
    /// A host with the given toolchain, no GPU and nothing probed (tests, `status`
    /// without Python stages).
    pub fn plain(toolchain: Toolchain) -> Host {
        Host {
            gpus: Vec::new(),
            gpu_models: Vec::new(),
            toolchain,
            tensorrt: None,
            python: None,
            pochi: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("pochi")),
        }
    }

    /// The facts of a stage that targets GPU model `gpu` (and TensorRT `tensorrt`, when
    /// declared), wherever it runs: this host's toolchain and binary, the declared GPU
    /// in place of what the probe found, so the stage's key and platform are the same on
    /// every machine.
    pub fn targeting(&self, gpu: &str, tensorrt: Option<&str>) -> Host {
        let mut host = self.clone();
        host.tensorrt = Some(TensorRt {
            version: tensorrt.map(str::to_string),
            error: None,
            gpu_name: Some(gpu.to_string()),
            compute_capability: None,
            cuda: None,
        });
        host
    }

    /// The TensorRT version, when TensorRT imports here.
    pub fn tensorrt_version(&self) -> Option<&str> {
        self.tensorrt.as_ref()?.version.as_deref()
    }

    /// Where a TensorRT result can be used, as platform properties (REAPI names them on
    /// the Action): the GPU model, its compute capability, the TensorRT and CUDA versions
    /// TensorRT reported. Empty when TensorRT does not import here.
    pub fn tensorrt_platform(&self) -> BTreeMap<String, String> {
        let Some(trt) = self.tensorrt.as_ref().filter(|t| t.is_target()) else {
            return BTreeMap::new();
        };
        [
            ("gpu", &trt.gpu_name),
            ("compute_capability", &trt.compute_capability),
            ("tensorrt", &trt.version),
            ("cuda", &trt.cuda),
        ]
        .into_iter()
        .filter_map(|(key, value)| Some((key.to_string(), value.clone()?)))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tensorrt_platform_names_the_gpu_and_the_versions() {
        let mut host = Host::plain(Toolchain {
            python: "python3".into(),
            identity: "py".into(),
        });
        assert!(host.tensorrt_platform().is_empty());
        host.tensorrt = Some(TensorRt {
            version: Some("10.13.0".into()),
            gpu_name: Some("NVIDIA H200".into()),
            compute_capability: Some("9.0".into()),
            cuda: None,
            error: None,
        });
        let platform = host.tensorrt_platform();
        assert_eq!(platform["gpu"], "NVIDIA H200");
        assert_eq!(platform["compute_capability"], "9.0");
        assert_eq!(platform["tensorrt"], "10.13.0");
        assert!(!platform.contains_key("cuda"));
        let trt = host.tensorrt.as_mut().unwrap();
        trt.version = None;
        trt.error = Some("ModuleNotFoundError: No module named 'tensorrt'".into());
        assert!(
            host.tensorrt_platform().is_empty(),
            "TensorRT did not import"
        );
    }

    #[test]
    fn a_declared_target_replaces_the_probed_gpu() {
        let host = Host::plain(Toolchain {
            python: "python3".into(),
            identity: "py".into(),
        });
        let a100 = host.targeting("NVIDIA A100-SXM4-40GB", None);
        let platform = a100.tensorrt_platform();
        assert_eq!(platform["gpu"], "NVIDIA A100-SXM4-40GB");
        assert!(!platform.contains_key("tensorrt"), "{platform:?}");
        assert!(a100.tensorrt_version().is_none(), "nothing imported here");
        let pinned = host
            .targeting("Tesla T4", Some("10.13.0"))
            .tensorrt_platform();
        assert_eq!(pinned["tensorrt"], "10.13.0");
        assert_eq!(a100.toolchain, host.toolchain);
    }
}
