//! What an interpreter is: its Python version and the versions of the packages pochi's stage
//! kinds use, asked once with the embedded identity script and cached as JSON. The cache
//! entry is stamped with the interpreter's and its site directories' modification times,
//! so installing or upgrading a package (which rewrites a site directory) asks again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};

use super::cache::CacheDir;
use super::scripts::IDENTITY;

/// Bumped when the cache entry's meaning changes.
const ENTRY_FORMAT: u32 = 1;

/// The packages whose versions make a toolchain's identity: (import name, distribution).
/// Upgrading one of these reruns every Python stage; nothing else does.
pub(crate) const TRACKED: &[(&str, &str)] = &[
    ("einops", "einops"),
    ("modelopt", "nvidia-modelopt"),
    ("monai", "monai"),
    ("numpy", "numpy"),
    ("onnx", "onnx"),
    ("onnxruntime", "onnxruntime"),
    ("onnxscript", "onnxscript"),
    ("torch", "torch"),
    ("torchvision", "torchvision"),
];

/// What the identity script reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Facts {
    pub python: String,
    pub implementation: String,
    pub executable: String,
    pub prefix: String,
    pub modules: BTreeMap<String, ModuleFact>,
    pub site_dirs: Vec<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ModuleFact {
    pub found: bool,
    pub distribution: Option<String>,
    pub version: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    format: u32,
    interpreter: PathBuf,
    script: String,
    stamps: Vec<Stamp>,
    facts: Facts,
}

/// A file's path, size and modification time: what tells that it may have changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Stamp {
    path: PathBuf,
    modified_ns: u64,
    len: u64,
}

pub(crate) fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    let modified_ns = meta
        .modified()
        .ok()?
        .duration_since(UNIX_EPOCH)
        .ok()?
        .as_nanos() as u64;
    Some(Stamp {
        path: path.to_path_buf(),
        modified_ns,
        len: meta.len(),
    })
}

fn stamps(python: &Path, facts: &Facts) -> Vec<Stamp> {
    std::iter::once(python)
        .chain(facts.site_dirs.iter().map(PathBuf::as_path))
        .filter_map(stamp)
        .collect()
}

/// The facts of `python`, from `cache_file` when it is still current, else asked afresh
/// (and cached).
pub(crate) fn facts(
    python: &Path,
    cache_file: &Path,
    cache: &CacheDir,
) -> Result<Facts, IdentityError> {
    if let Some(entry) = std::fs::read(cache_file)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Entry>(&bytes).ok())
        && entry.format == ENTRY_FORMAT
        && entry.script == IDENTITY.hash()
        && entry.interpreter == python
        && entry.stamps == stamps(python, &entry.facts)
    {
        return Ok(entry.facts);
    }
    let facts = query(python, cache)?;
    let entry = Entry {
        format: ENTRY_FORMAT,
        interpreter: python.to_path_buf(),
        script: IDENTITY.hash(),
        stamps: stamps(python, &facts),
        facts: facts.clone(),
    };
    if let Ok(bytes) = serde_json::to_vec_pretty(&entry) {
        // A cache that cannot be written only costs a query next time.
        let _ = crate::fsutil::write_atomic(cache_file, &bytes);
    }
    Ok(facts)
}

/// Why an interpreter's facts could not be read. The messages carry their causes: they
/// become part of a toolchain error's message and of an unusable toolchain's identity.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub(crate) enum IdentityError {
    #[error("cannot write the identity script to {}: {error}", dir.display())]
    WriteWorker { dir: PathBuf, error: std::io::Error },
    #[error("cannot create {}: {error}", dir.display())]
    CreateDir { dir: PathBuf, error: std::io::Error },
    #[error("cannot create a temporary directory in {}: {error}", dir.display())]
    Scratch { dir: PathBuf, error: std::io::Error },
    #[error("cannot run `{}`: {error}", python.display())]
    Spawn {
        python: PathBuf,
        error: std::io::Error,
    },
    #[error("`{}` did not answer the identity query ({status}){}", python.display(), stderr_tail(tail))]
    NoAnswer {
        python: PathBuf,
        status: std::process::ExitStatus,
        tail: Vec<String>,
    },
    #[error("`{}` answered the identity query with {answer}", python.display())]
    BadAnswer {
        python: PathBuf,
        answer: AnswerError,
    },
}

/// What is wrong with the identity script's answer.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub(crate) enum AnswerError {
    #[error("invalid JSON: {0}")]
    Json(serde_json::Error),
    #[error("an error: {0}")]
    Failed(String),
    #[error("an unexpected answer: {0}")]
    Unexpected(serde_json::Error),
}

/// The last lines of a script's stderr, as `: a / b`, or nothing.
fn stderr_tail(tail: &[String]) -> String {
    if tail.is_empty() {
        String::new()
    } else {
        format!(": {}", tail.join(" / "))
    }
}

/// Runs the identity script in `python`.
fn query(python: &Path, cache: &CacheDir) -> Result<Facts, IdentityError> {
    let script = IDENTITY
        .materialize(cache)
        .map_err(|error| IdentityError::WriteWorker {
            dir: cache.scripts(),
            error,
        })?;
    std::fs::create_dir_all(cache.root()).map_err(|error| IdentityError::CreateDir {
        dir: cache.root().to_path_buf(),
        error,
    })?;
    let scratch = tempfile::tempdir_in(cache.root()).map_err(|error| IdentityError::Scratch {
        dir: cache.root().to_path_buf(),
        error,
    })?;
    let result_path = scratch.path().join("identity.json");
    let pairs = TRACKED
        .iter()
        .map(|(module, dist)| format!("{module}={dist}"));
    let output = Command::new(python)
        .arg("-I")
        .arg(&script)
        .arg(&result_path)
        .args(pairs)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|error| IdentityError::Spawn {
            python: python.to_path_buf(),
            error,
        })?;
    let Ok(bytes) = std::fs::read(&result_path) else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let mut tail: Vec<String> = stderr.lines().rev().take(5).map(str::to_string).collect();
        tail.reverse();
        return Err(IdentityError::NoAnswer {
            python: python.to_path_buf(),
            status: output.status,
            tail,
        });
    };
    parse_result(&bytes).map_err(|answer| IdentityError::BadAnswer {
        python: python.to_path_buf(),
        answer,
    })
}

fn parse_result(bytes: &[u8]) -> Result<Facts, AnswerError> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(AnswerError::Json)?;
    if value.get("ok").and_then(serde_json::Value::as_bool) != Some(true) {
        let error = value
            .get("error")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("no message");
        return Err(AnswerError::Failed(error.to_string()));
    }
    serde_json::from_value(value).map_err(AnswerError::Unexpected)
}

/// The identity string that goes into stage fingerprints: Python and tracked package
/// versions, sorted; `prefix` says which toolchain (e.g. the lock hash).
pub(crate) fn identity(prefix: &str, facts: &Facts) -> String {
    let mut parts = vec![format!(
        "{prefix}; {} {}",
        facts.implementation, facts.python
    )];
    for (module, fact) in &facts.modules {
        if let (Some(dist), Some(version)) = (&fact.distribution, &fact.version) {
            parts.push(format!("{dist} {version}"));
        } else if fact.found {
            parts.push(format!("{module} (unknown version)"));
        }
    }
    parts.join("; ")
}

/// The modules of `needed` that the interpreter lacks.
pub(crate) fn missing<'a>(facts: &Facts, needed: &[&'a str]) -> Vec<&'a str> {
    needed
        .iter()
        .copied()
        .filter(|module| !facts.modules.get(*module).is_some_and(|fact| fact.found))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Facts {
        let fact = |dist: &str, version: &str| ModuleFact {
            found: true,
            distribution: Some(dist.into()),
            version: Some(version.into()),
        };
        Facts {
            python: "3.11.7".into(),
            implementation: "cpython".into(),
            executable: "/env/bin/python".into(),
            prefix: "/env".into(),
            modules: BTreeMap::from([
                ("torch".into(), fact("torch", "2.15.0")),
                ("onnxruntime".into(), fact("onnxruntime-gpu", "1.24.4")),
                (
                    "monai".into(),
                    ModuleFact {
                        found: false,
                        distribution: None,
                        version: None,
                    },
                ),
            ]),
            site_dirs: vec![],
        }
    }

    #[test]
    fn identity_lists_python_and_sorted_versions() {
        let text = identity("python /env/bin/python", &sample());
        assert_eq!(
            text,
            "python /env/bin/python; cpython 3.11.7; onnxruntime-gpu 1.24.4; torch 2.15.0"
        );
        let mut upgraded = sample();
        upgraded.modules.get_mut("torch").unwrap().version = Some("2.16.0".into());
        assert_ne!(identity("x", &upgraded), identity("x", &sample()));
    }

    #[test]
    fn missing_modules_are_named() {
        assert_eq!(
            missing(&sample(), &["torch", "monai", "onnx"]),
            vec!["monai", "onnx"]
        );
    }

    #[test]
    fn results_with_ok_false_are_errors() {
        let error =
            parse_result(br#"{"ok": false, "error": "boom", "traceback": "..."}"#).unwrap_err();
        assert!(error.to_string().contains("boom"));
        assert!(parse_result(b"not json").is_err());
    }

    #[test]
    fn a_current_cache_entry_is_reused_without_running_python() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CacheDir::at(dir.path());
        let python = dir.path().join("python");
        std::fs::write(&python, "not a real interpreter").unwrap();
        let facts = sample();
        let entry = Entry {
            format: ENTRY_FORMAT,
            interpreter: python.clone(),
            script: IDENTITY.hash(),
            stamps: stamps(&python, &facts),
            facts: facts.clone(),
        };
        let file = dir.path().join("entry.json");
        std::fs::write(&file, serde_json::to_vec(&entry).unwrap()).unwrap();
        assert_eq!(super::facts(&python, &file, &cache).unwrap(), facts);
        // A changed interpreter makes the entry stale: pochi asks it again (and here fails,
        // since it is no interpreter).
        std::fs::write(&python, "another interpreter, longer").unwrap();
        assert!(super::facts(&python, &file, &cache).is_err());
    }
}
