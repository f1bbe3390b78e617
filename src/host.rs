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

    /// The TensorRT version, when TensorRT imports here.
    pub fn tensorrt_version(&self) -> Option<&str> {
        self.tensorrt.as_ref()?.version.as_deref()
    }
}
