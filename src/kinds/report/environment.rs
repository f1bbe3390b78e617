//! Where the figures were measured: CPU, GPU, library versions and threads, so that two
//! reports can be compared honestly.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

/// Asks the toolchain's interpreter (without importing the packages: fast).
const QUERY: &str = r#"
import importlib.metadata as m, json, os, sys
versions = {}
for name in ("onnxruntime", "onnxruntime-gpu", "torch", "tensorrt", "tensorrt-cu12", "tensorrt-cu13", "onnx", "numpy"):
    try:
        versions[name] = m.version(name)
    except Exception:
        pass
print(json.dumps({"python": sys.version.split()[0], "versions": versions,
                  "site_dirs": [p for p in sys.path if p and os.path.isdir(p)]}))
"#;

#[derive(Debug, Default, Deserialize)]
struct PythonFacts {
    python: String,
    versions: std::collections::BTreeMap<String, String>,
    site_dirs: Vec<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Gpu {
    pub name: String,
    pub memory: String,
    pub driver: String,
}

#[derive(Debug)]
pub struct Facts {
    pub python: Option<String>,
    pub onnxruntime: Option<String>,
    pub torch: Option<String>,
    pub tensorrt: Option<String>,
    pub onnxruntime_library: Option<PathBuf>,
    pub gpus: Vec<Gpu>,
}

#[derive(Debug, Serialize)]
pub struct EnvironmentInfo {
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

pub fn query(python: &Path) -> Facts {
    let facts: PythonFacts = Command::new(python)
        .args(["-I", "-c", QUERY])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| serde_json::from_slice(&o.stdout).ok())
        .unwrap_or_default();
    let version = |names: &[&str]| names.iter().find_map(|n| facts.versions.get(*n).cloned());
    Facts {
        python: (!facts.python.is_empty()).then(|| facts.python.clone()),
        onnxruntime: version(&["onnxruntime", "onnxruntime-gpu"]),
        torch: version(&["torch"]),
        tensorrt: version(&["tensorrt", "tensorrt-cu13", "tensorrt-cu12"]),
        onnxruntime_library: super::runner::find_library(&facts.site_dirs),
        gpus: gpus(),
    }
}

fn gpus() -> Vec<Gpu> {
    let Ok(out) = Command::new("nvidia-smi")
        .args([
            "--query-gpu=name,memory.total,driver_version",
            "--format=csv,noheader",
        ])
        .output()
    else {
        return Vec::new();
    };
    if !out.status.success() {
        return Vec::new();
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            match fields[..] {
                [name, memory, driver] => Some(Gpu {
                    name: name.into(),
                    memory: memory.into(),
                    driver: driver.into(),
                }),
                _ => None,
            }
        })
        .collect()
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
    pub fn info(&self, threads: usize) -> EnvironmentInfo {
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
