//! The TensorRT probe: whether the toolchain's interpreter can `import tensorrt`, and which
//! GPU it sees (through the engine worker's `--probe`). Used by the `engine` kind for its
//! availability and its fingerprint.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::workers::ENGINE;

/// Test-only: a directory the engine worker puts first on its `sys.path` (a TensorRT
/// stand-in such as tests/fixtures/fake_tensorrt). Real runs never set it.
pub const STANDIN_ENV: &str = "POCHI_TEST_TENSORRT_STANDIN";

/// What the TensorRT probe found with this interpreter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    pub tensorrt: Option<String>,
    pub error: Option<String>,
    #[serde(default)]
    pub gpu_name: Option<String>,
    #[serde(default)]
    pub compute_capability: Option<String>,
    #[serde(default)]
    pub cuda: Option<String>,
}

/// Probes are cached per interpreter (and stand-in path) for the life of the process.
static PROBES: Mutex<BTreeMap<(PathBuf, String), Probe>> = Mutex::new(BTreeMap::new());

/// Imports `tensorrt` with the given interpreter (through the engine worker's `--probe`).
pub fn probe(python: &Path) -> Probe {
    let standin = std::env::var(STANDIN_ENV).unwrap_or_default();
    let key = (python.to_path_buf(), standin.clone());
    if let Some(found) = PROBES.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return found.clone();
    }
    let failed = |error: String| Probe {
        tensorrt: None,
        error: Some(error),
        gpu_name: None,
        compute_capability: None,
        cuda: None,
    };
    let found = run_probe(python).unwrap_or_else(failed);
    PROBES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key, found.clone());
    found
}

fn run_probe(python: &Path) -> Result<Probe, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let result = dir.path().join("probe.json");
    let script = ENGINE.path();
    if !script.exists()
        && let Ok(cache) = super::cache::CacheDir::from_env()
    {
        ENGINE.materialize(&cache).map_err(|e| e.to_string())?;
    }
    let output = std::process::Command::new(python)
        .arg("-I")
        .arg(&script)
        .arg("--probe")
        .arg(&result)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    let text = std::fs::read(&result).map_err(|_| {
        format!(
            "the TensorRT probe gave no answer: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )
    })?;
    serde_json::from_slice::<Probe>(&text).map_err(|e| e.to_string())
}
