//! TensorRT as an accelerator (`TENSORRT`, the data the engine and report kinds declare),
//! and its probe: whether the toolchain's interpreter can `import tensorrt`, and which GPU
//! it sees (through the engine script's `--probe`, started by `toolchain::run_script`).
//! The command line calls the probe of every accelerator the stages declare, once per
//! build, and puts the answer into the `MachineFacts`; the kinds read it from there.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::SCRIPT as ENGINE;
use crate::facts::AcceleratorFacts;
use crate::pipeline::kind::Accelerator;
use crate::toolchain::{cache, identity};

/// Test-only: a directory the engine script puts first on its `sys.path` (a TensorRT
/// stand-in such as tests/fixtures/fake_tensorrt). Real runs never set it.
pub(crate) const STANDIN_ENV: &str = "POCHI_TEST_TENSORRT_STANDIN";

/// What the TensorRT probe found with this interpreter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Probe {
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

/// What a probe's answer depends on. While it is unchanged, the answer on disk is reused
/// and no Python runs (`status`, `graph` and `explain` stay fast).
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct ProbeKey {
    interpreter: PathBuf,
    /// The interpreter, its environment's site-packages directories (installing TensorRT
    /// rewrites one) and the NVIDIA device nodes and driver version file.
    stamps: Vec<identity::Stamp>,
    script: String,
    /// Variables that change what the probe finds (which GPUs, which libraries).
    env: Vec<(String, String)>,
}

#[derive(Debug, Serialize, Deserialize)]
struct CachedProbe {
    key: ProbeKey,
    probe: Probe,
}

/// TensorRT: what an engine is built for (`Required`) and a report times when present.
pub(crate) static TENSORRT: Accelerator = Accelerator {
    id: "tensorrt",
    name: "TensorRT",
    module: "tensorrt",
    properties: &["gpu", "compute_capability", "tensorrt", "cuda"],
    probe,
};

/// Imports `tensorrt` with the given interpreter (through the engine script's `--probe`),
/// or reuses the answer cached for this interpreter while nothing it depends on changed.
pub(super) fn probe(python: &Path) -> AcceleratorFacts {
    let found = probe_cached(python);
    AcceleratorFacts {
        version: found.tensorrt,
        error: found.error,
        gpu_name: found.gpu_name,
        compute_capability: found.compute_capability,
        cuda: found.cuda,
    }
}

fn probe_cached(python: &Path) -> Probe {
    let standin = std::env::var(STANDIN_ENV).unwrap_or_default();
    let key = (python.to_path_buf(), standin.clone());
    if let Some(found) = PROBES.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return found.clone();
    }
    // The stand-in (tests only) answers from environment knobs: never cached on disk.
    let cache = standin
        .is_empty()
        .then(cache::CacheDir::from_env)
        .and_then(Result::ok);
    let found = probe_through(python, cache.as_ref());
    PROBES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key, found.clone());
    found
}

/// The probe's answer from `cache` while nothing it depends on changed (see `ProbeKey`),
/// else a fresh probe, written to `cache`.
fn probe_through(python: &Path, cache: Option<&cache::CacheDir>) -> Probe {
    let disk_key = probe_key(python);
    let cache_file = cache.map(|cache| {
        cache.root().join("tensorrt-probes").join(format!(
            "{}.json",
            crate::toolchain::short_hash(python.as_os_str().as_encoded_bytes())
        ))
    });
    let cached = cache_file
        .as_ref()
        .and_then(|file| std::fs::read(file).ok())
        .and_then(|bytes| serde_json::from_slice::<CachedProbe>(&bytes).ok())
        .filter(|entry| entry.key == disk_key);
    if let Some(entry) = cached {
        return entry.probe;
    }
    let found = run_probe(python).unwrap_or_else(|error| failed_probe(error.to_string()));
    if let Some(file) = &cache_file {
        let entry = CachedProbe {
            key: disk_key,
            probe: found.clone(),
        };
        if let Ok(bytes) = serde_json::to_vec_pretty(&entry) {
            // Only a cache: failing to write it costs a probe next time.
            let _ = crate::fsutil::write_cache(file, &bytes);
        }
    }
    found
}

fn failed_probe(error: String) -> Probe {
    Probe {
        tensorrt: None,
        error: Some(error),
        gpu_name: None,
        compute_capability: None,
        cuda: None,
    }
}

fn probe_key(python: &Path) -> ProbeKey {
    let prefix = python.parent().and_then(Path::parent);
    let mut watched: Vec<PathBuf> = vec![python.to_path_buf()];
    if let Some(prefix) = prefix
        && let Ok(entries) = std::fs::read_dir(prefix.join("lib"))
    {
        let mut libs: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("python"))
            })
            .flat_map(|lib| [lib.join("site-packages"), lib.join("dist-packages")])
            .collect();
        libs.sort();
        watched.extend(libs);
    }
    watched.extend(
        [
            "/dev/nvidia0",
            "/dev/nvidiactl",
            "/proc/driver/nvidia/version",
        ]
        .map(PathBuf::from),
    );
    ProbeKey {
        interpreter: python.to_path_buf(),
        stamps: watched.iter().filter_map(|p| identity::stamp(p)).collect(),
        script: ENGINE.hash(),
        env: [
            "CUDA_VISIBLE_DEVICES",
            "LD_LIBRARY_PATH",
            "NVIDIA_VISIBLE_DEVICES",
        ]
        .iter()
        .filter_map(|name| Some((name.to_string(), std::env::var(name).ok()?)))
        .collect(),
    }
}

/// Why the probe found nothing (its text is what the machine facts record as the error).
#[derive(Debug, thiserror::Error)]
enum ProbeError {
    #[error("{0}")]
    Scratch(std::io::Error),
    #[error("{0}")]
    Script(std::io::Error),
    #[error("cannot run {}: {source}", python.display())]
    Run {
        python: PathBuf,
        source: std::io::Error,
    },
    #[error("the TensorRT probe gave no answer: {stderr}")]
    NoAnswer { stderr: String },
    #[error("{0}")]
    Answer(serde_json::Error),
}

fn run_probe(python: &Path) -> Result<Probe, ProbeError> {
    let dir = tempfile::tempdir().map_err(ProbeError::Scratch)?;
    let result = dir.path().join("probe.json");
    let script = ENGINE.path();
    if !script.exists()
        && let Ok(cache) = cache::CacheDir::from_env()
    {
        ENGINE.materialize(&cache).map_err(ProbeError::Script)?;
    }
    let output =
        crate::toolchain::run_script(python, &script, &["--probe".as_ref(), result.as_os_str()])
            .map_err(|source| ProbeError::Run {
                python: python.to_path_buf(),
                source,
            })?;
    let text = std::fs::read(&result).map_err(|_| ProbeError::NoAnswer {
        stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
    })?;
    serde_json::from_slice::<Probe>(&text).map_err(ProbeError::Answer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_probe_answer_is_reused_until_the_interpreter_changes() {
        let dir = tempfile::tempdir().unwrap();
        let calls = dir.path().join("calls");
        let python = dir.path().join("python");
        let write_python = |extra: &str| {
            let script = format!(
                "#!/bin/sh\necho probe >> '{}'\nprintf '{{\"tensorrt\": \"10.9.0\", \"error\": null}}' > \"$4\"\n{extra}",
                calls.display()
            );
            std::fs::write(&python, script).unwrap();
            std::fs::set_permissions(&python, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        write_python("");
        let cache = crate::toolchain::cache::CacheDir::at(dir.path());
        let count = || {
            std::fs::read_to_string(&calls)
                .unwrap_or_default()
                .lines()
                .count()
        };
        assert_eq!(
            probe_through(&python, Some(&cache)).tensorrt.as_deref(),
            Some("10.9.0")
        );
        assert_eq!(
            probe_through(&python, Some(&cache)).tensorrt.as_deref(),
            Some("10.9.0")
        );
        assert_eq!(count(), 1, "the second answer came from the cache");
        write_python("# changed\n");
        probe_through(&python, Some(&cache));
        assert_eq!(count(), 2, "a changed interpreter is asked again");
        probe_through(&python, None);
        assert_eq!(count(), 3, "without a cache directory it always asks");
    }
}
