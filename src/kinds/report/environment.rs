//! Where the figures were measured: CPU, GPU, library versions and threads, so that two
//! reports can be compared honestly.

use std::path::PathBuf;

use serde::Serialize;

use crate::facts::MachineFacts;

#[derive(Debug, Clone, Serialize)]
pub(super) struct Gpu {
    pub name: String,
    pub memory: String,
    pub driver: String,
}

#[derive(Debug)]
pub(super) struct Facts {
    pub python: Option<String>,
    pub onnxruntime: Option<String>,
    pub torch: Option<String>,
    pub tensorrt: Option<String>,
    pub onnxruntime_library: Option<PathBuf>,
    pub gpus: Vec<Gpu>,
}

#[derive(Debug, Serialize)]
pub(super) struct EnvironmentInfo {
    pub cpu: String,
    pub cores: usize,
    pub os: String,
    pub gpus: Vec<Gpu>,
    pub python: Option<String>,
    pub onnxruntime: Option<String>,
    pub onnxruntime_library: Option<String>,
    pub torch: Option<String>,
    pub tensorrt: Option<String>,
    pub threads: String,
    pub pochi: &'static str,
}

/// The facts of the build's host (gathered once by the command line, never probed here).
pub(super) fn from_facts(machine: &MachineFacts) -> Facts {
    let facts = machine.python.clone().unwrap_or_default();
    let version = |names: &[&str]| names.iter().find_map(|n| facts.versions.get(*n).cloned());
    Facts {
        python: (!facts.python.is_empty()).then(|| facts.python.clone()),
        onnxruntime: version(&["onnxruntime", "onnxruntime-gpu"]),
        torch: version(&["torch"]),
        tensorrt: version(&["tensorrt", "tensorrt-cu13", "tensorrt-cu12"]),
        onnxruntime_library: super::onnxruntime::find_library(&facts.site_dirs),
        gpus: machine
            .gpu_models
            .iter()
            .map(|gpu| Gpu {
                name: gpu.name.clone(),
                memory: gpu.memory.clone(),
                driver: gpu.driver.clone(),
            })
            .collect(),
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

impl Facts {
    pub(super) fn info(&self, threads: usize) -> EnvironmentInfo {
        EnvironmentInfo {
            cpu: cpu_model(),
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            os: format!("{} {}", std::env::consts::OS, std::env::consts::ARCH),
            gpus: self.gpus.clone(),
            python: self.python.clone(),
            onnxruntime: self.onnxruntime.clone(),
            onnxruntime_library: self
                .onnxruntime_library
                .as_ref()
                .map(|p| p.display().to_string()),
            torch: self.torch.clone(),
            tensorrt: self.tensorrt.clone(),
            threads: if threads == 0 {
                "ONNX Runtime default".into()
            } else {
                threads.to_string()
            },
            pochi: env!("CARGO_PKG_VERSION"),
        }
    }
}
