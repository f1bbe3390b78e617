//! The Python toolchain: the only module that creates environments and spawns Python for
//! identity queries (the engine core does neither; the CLI attaches what this resolves).
//!
//! Two kinds of toolchain:
//! - managed: an environment built from the lock in `toolchain/requirements.lock`
//!   (embedded in the binary) in the per-user cache, keyed by the lock's hash, so CI and
//!   several projects share one install;
//! - the user's own interpreter (`POCHI_PYTHON`, else `[toolchain] python`), as on a Jetson
//!   or in an NVIDIA container: its versions are asked once (cached) and a missing package
//!   is named in the error.
//!
//! Either way the identity (Python version + tracked package versions) goes into the
//! fingerprint of every stage that runs Python.

pub(crate) mod cache;
pub(crate) mod identity;
mod managed;
pub(crate) mod scripts;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

pub(crate) use cache::CacheDir;
pub(crate) use identity::{Facts, TRACKED};
pub(crate) use managed::Managed;

use crate::facts::PythonFacts;
pub(crate) use crate::facts::Toolchain;

/// The lock the managed environment is built from (exact versions and hashes).
pub(crate) const LOCK: &str = include_str!("../../toolchain/requirements.lock");

/// The first 16 hex digits of blake3 over `bytes`.
pub(crate) fn short_hash(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex()[..16].to_string()
}

/// The platform property a remote worker offers for this toolchain (`pochi-toolchain`):
/// a short hash of its identity (Python and package versions), so an action is never run
/// with another toolchain. `pochi toolchain info` shows it.
pub(crate) const PLATFORM_PROPERTY: &str = "pochi-toolchain";

/// The value of `PLATFORM_PROPERTY` for a toolchain's identity.
pub(crate) fn platform_value(identity: &str) -> String {
    short_hash(identity.as_bytes())
}

/// The hash that names the managed environment of this build of pochi.
pub(crate) fn lock_hash() -> String {
    short_hash(LOCK.as_bytes())
}

/// `name==version` pins of a lock (names lowercase).
pub(crate) fn locked_versions(lock: &str) -> BTreeMap<String, String> {
    lock.lines()
        .filter(|line| !line.starts_with([' ', '#', '-']))
        .filter_map(|line| {
            let pin = line.split([' ', ';']).next()?;
            let (name, version) = pin.split_once("==")?;
            let name = name.split('[').next()?.to_ascii_lowercase();
            Some((name, version.trim().to_string()))
        })
        .collect()
}

/// Whether a command may create the managed environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// `build`, `toolchain sync`: create it when missing.
    Create,
    /// `status`, `explain`, `graph`, `toolchain info`: never create; a missing environment
    /// gets an identity that makes Python stages stale.
    Inspect,
}

/// Which interpreter a pipeline runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Choice {
    Managed,
    /// The user's interpreter and where it was named.
    Interpreter {
        python: PathBuf,
        from: String,
    },
}

impl Choice {
    /// `POCHI_PYTHON` (the environment of this run) wins over `[toolchain] python` in the
    /// pipeline; neither means the managed toolchain.
    /// `declared`: a pipeline's `[toolchain] python`, with the pipeline's directory and
    /// file (for messages).
    pub(crate) fn of(declared: Option<(&Path, &Path, &Path)>) -> Choice {
        Self::from_parts(std::env::var_os("POCHI_PYTHON"), declared)
    }

    fn from_parts(env: Option<OsString>, pipeline: Option<(&Path, &Path, &Path)>) -> Choice {
        if let Some(python) = env.filter(|v| !v.is_empty()) {
            let python = PathBuf::from(python);
            let resolved = if python.components().count() == 1 {
                on_path(&python).unwrap_or(python)
            } else {
                absolute(&python)
            };
            return Choice::Interpreter {
                python: resolved,
                from: "POCHI_PYTHON".into(),
            };
        }
        if let Some((python, dir, file)) = pipeline {
            let joined = dir.join(python);
            let resolved = if python.components().count() == 1 && !joined.exists() {
                on_path(python).unwrap_or(joined)
            } else {
                joined
            };
            return Choice::Interpreter {
                python: resolved,
                from: format!("[toolchain] python in {}", file.display()),
            };
        }
        Choice::Managed
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

fn on_path(name: &Path) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Why a toolchain cannot be used.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub(crate) enum ToolchainError {
    #[error("cannot create the managed Python toolchain: {error}")]
    #[diagnostic(help(
        "pochi needs `python3` (3.11) and access to PyPI the first time; or point it at your own interpreter with POCHI_PYTHON=/path/to/python or `[toolchain] python`"
    ))]
    Create { error: managed::ManagedError },
    #[error("cannot use the Python interpreter `{}` ({from}): {error}", python.display())]
    #[diagnostic(help("{hint}"))]
    Interpreter {
        python: PathBuf,
        from: String,
        error: Box<identity::IdentityError>,
        hint: String,
    },
    #[error("the Python interpreter `{}` ({from}) lacks {}", python.display(), list(modules))]
    #[diagnostic(help(
        "the pipeline's stages import them; install them into that interpreter: {install}"
    ))]
    Missing {
        python: PathBuf,
        from: String,
        modules: Vec<String>,
        install: String,
    },
    #[error(transparent)]
    NoCacheDir(#[from] cache::CacheDirError),
    #[error("cannot write pochi's scripts to {}", dir.display())]
    Workers {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn list(modules: &[String]) -> String {
    let quoted: Vec<String> = modules.iter().map(|m| format!("`{m}`")).collect();
    match quoted.len() {
        0 => String::new(),
        1 => format!("the package {}", quoted[0]),
        _ => format!("the packages {}", quoted.join(", ")),
    }
}

/// A resolved toolchain with what is known about it.
#[derive(Debug, Clone)]
pub(crate) struct Resolved {
    pub choice: Choice,
    pub toolchain: Toolchain,
    /// None when the managed environment does not exist yet, or the query failed while
    /// inspecting.
    pub facts: Option<Facts>,
    pub cache: CacheDir,
}

/// Writes the identity script and `scripts` (every kind's) to the per-user cache.
pub(crate) fn materialize_scripts(scripts: &[scripts::Script]) -> Result<(), ToolchainError> {
    let cache = CacheDir::from_env()?;
    scripts::materialize_all(&cache, scripts).map_err(|source| ToolchainError::Workers {
        dir: cache.scripts(),
        source,
    })
}

/// Runs `python -I SCRIPT ARGS...` to completion, its output captured (the TensorRT probe).
pub(crate) fn run_script(
    python: &Path,
    script: &Path,
    args: &[&std::ffi::OsStr],
) -> std::io::Result<std::process::Output> {
    std::process::Command::new(python)
        .arg("-I")
        .arg(script)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
}

/// Asks the interpreter for its version, its packages' versions and its site
/// directories, without importing the packages (fast): what a report says it ran on.
pub(crate) fn python_facts(python: &Path) -> Option<PythonFacts> {
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
    let output = std::process::Command::new(python)
        .args(["-I", "-c", QUERY])
        .stdin(std::process::Stdio::null())
        .output()
        .ok()?;
    serde_json::from_slice(&output.stdout).ok()
}

/// Resolves a choice: creates the managed environment when `mode` allows, asks the
/// interpreter for its identity, and checks that it has the `needed` modules.
pub(crate) fn resolve(
    choice: &Choice,
    needed: &[&str],
    mode: Mode,
    say: &mut dyn FnMut(&str),
) -> Result<Resolved, ToolchainError> {
    let cache = CacheDir::from_env()?;
    resolve_in(cache, choice, needed, mode, say)
}

/// `resolve` with the cache directory given.
pub(crate) fn resolve_in(
    cache: CacheDir,
    choice: &Choice,
    needed: &[&str],
    mode: Mode,
    say: &mut dyn FnMut(&str),
) -> Result<Resolved, ToolchainError> {
    let (python, cache_file, prefix) = match choice {
        Choice::Managed => {
            let managed = Managed::new(&cache, &lock_hash());
            if !managed.exists() {
                if mode == Mode::Inspect {
                    let identity = format!("managed toolchain {} (not created)", managed.hash);
                    let toolchain = Toolchain {
                        python: managed.python(),
                        identity,
                    };
                    return Ok(Resolved {
                        choice: choice.clone(),
                        toolchain,
                        facts: None,
                        cache,
                    });
                }
                managed
                    .ensure(&cache, LOCK, say)
                    .map_err(|error| ToolchainError::Create { error })?;
            }
            (
                managed.python(),
                managed.identity_file(),
                format!("managed toolchain {}", managed.hash),
            )
        }
        Choice::Interpreter { python, .. } => {
            let file = cache.interpreters().join(format!(
                "{}.json",
                short_hash(python.as_os_str().as_encoded_bytes())
            ));
            (python.clone(), file, format!("python {}", python.display()))
        }
    };
    let facts = match identity::facts(&python, &cache_file, &cache) {
        Ok(facts) => facts,
        Err(error) if mode == Mode::Inspect => {
            let identity = format!("{prefix} (unusable: {error})");
            return Ok(Resolved {
                choice: choice.clone(),
                toolchain: Toolchain { python, identity },
                facts: None,
                cache,
            });
        }
        Err(error) => return Err(interpreter_error(choice, &python, Box::new(error))),
    };
    let missing = identity::missing(&facts, needed);
    if !missing.is_empty() && mode == Mode::Create {
        let (python, from) = match choice {
            Choice::Interpreter { python, from } => (python.clone(), from.clone()),
            Choice::Managed => (python.clone(), "the managed toolchain".to_string()),
        };
        return Err(ToolchainError::Missing {
            install: install_command(&python, &missing),
            python,
            from,
            modules: missing.iter().map(|m| m.to_string()).collect(),
        });
    }
    let identity = identity::identity(&prefix, &facts);
    Ok(Resolved {
        choice: choice.clone(),
        toolchain: Toolchain { python, identity },
        facts: Some(facts),
        cache,
    })
}

fn interpreter_error(
    choice: &Choice,
    python: &Path,
    error: Box<identity::IdentityError>,
) -> ToolchainError {
    match choice {
        Choice::Interpreter { python, from } => ToolchainError::Interpreter {
            python: python.clone(),
            from: from.clone(),
            error,
            hint: "give the path of a Python 3 interpreter (for a virtual environment: its bin/python)".into(),
        },
        Choice::Managed => ToolchainError::Interpreter {
            python: python.to_path_buf(),
            from: "the managed toolchain".into(),
            error,
            hint: format!("the environment may be damaged: remove {} and run `pochi toolchain sync`", python.parent().and_then(Path::parent).and_then(Path::parent).unwrap_or(python).display()),
        },
    }
}

/// `python -m pip install torch==2.15.0 ...` with the locked versions where known.
fn install_command(python: &Path, modules: &[&str]) -> String {
    let locked = locked_versions(LOCK);
    let specs: Vec<String> = modules
        .iter()
        .map(|module| {
            let dist = TRACKED
                .iter()
                .find(|(m, _)| m == module)
                .map(|(_, d)| *d)
                .unwrap_or(module);
            match locked.get(dist) {
                Some(version) => format!("{dist}=={version}"),
                None => dist.to_string(),
            }
        })
        .collect();
    format!("{} -m pip install {}", python.display(), specs.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_pins_what_the_stage_kinds_need() {
        let versions = locked_versions(LOCK);
        assert_eq!(versions.get("torch").map(String::as_str), Some("2.15.0"));
        assert_eq!(versions.get("monai").map(String::as_str), Some("1.6.1"));
        assert!(
            versions
                .get("onnxruntime")
                .is_some_and(|v| v.starts_with("1.32."))
        );
        assert!(
            versions
                .get("nvidia-modelopt")
                .is_some_and(|v| v.starts_with("0.47."))
        );
        for (_, dist) in TRACKED {
            assert!(
                versions.contains_key(*dist),
                "{dist} is tracked but not locked"
            );
        }
        // The GPU wheel would overwrite the CPU one's `onnxruntime` package.
        assert!(!versions.contains_key("onnxruntime-gpu"));
        // Every pin carries hashes (installed with --require-hashes).
        assert!(LOCK.contains("--hash=sha256:"));
    }

    #[test]
    fn lock_hash_is_stable_and_follows_the_content() {
        assert_eq!(lock_hash(), lock_hash());
        assert_eq!(lock_hash().len(), 16);
        assert_eq!(short_hash(LOCK.as_bytes()), lock_hash());
        assert_ne!(
            short_hash(format!("{LOCK}\n# changed").as_bytes()),
            lock_hash()
        );
    }

    #[test]
    fn parses_pins_with_extras_and_markers() {
        let lock = "a==1.0 \\\n    --hash=sha256:00\nnvidia-modelopt[onnx]==0.47.0 ; sys_platform == 'linux'\n# c==3\n    # via x\n";
        let versions = locked_versions(lock);
        assert_eq!(
            versions,
            BTreeMap::from([
                ("a".into(), "1.0".into()),
                ("nvidia-modelopt".into(), "0.47.0".into())
            ])
        );
    }

    #[test]
    fn the_environment_variable_wins_over_the_pipeline() {
        let dir = Path::new("/project");
        let file = Path::new("/project/pipeline.toml");
        let from_env = Choice::from_parts(
            Some("/opt/py/bin/python".into()),
            Some((Path::new("venv/bin/python"), dir, file)),
        );
        assert_eq!(
            from_env,
            Choice::Interpreter {
                python: "/opt/py/bin/python".into(),
                from: "POCHI_PYTHON".into()
            }
        );
        let from_file = Choice::from_parts(None, Some((Path::new("venv/bin/python"), dir, file)));
        assert!(
            matches!(from_file, Choice::Interpreter { python, from } if python == Path::new("/project/venv/bin/python") && from.contains("[toolchain]"))
        );
        assert_eq!(Choice::from_parts(Some("".into()), None), Choice::Managed);
    }

    #[test]
    fn missing_packages_get_an_install_command_with_locked_versions() {
        let command = install_command(Path::new("/py"), &["torch", "modelopt", "other"]);
        assert_eq!(
            command,
            "/py -m pip install torch==2.15.0 nvidia-modelopt==0.47.0 other"
        );
    }

    #[test]
    fn an_uncreated_managed_toolchain_is_inspected_without_creating_it() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CacheDir::at(dir.path());
        let mut said = Vec::new();
        let resolved = resolve_in(
            cache.clone(),
            &Choice::Managed,
            &["torch"],
            Mode::Inspect,
            &mut |m| said.push(m.to_string()),
        )
        .unwrap();
        assert_eq!(
            resolved.toolchain.identity,
            format!("managed toolchain {} (not created)", lock_hash())
        );
        assert_eq!(
            resolved.toolchain.python,
            Managed::new(&cache, &lock_hash()).python()
        );
        assert!(resolved.facts.is_none());
        assert!(said.is_empty());
        assert!(
            !cache.toolchains().exists(),
            "inspecting must not create anything"
        );
    }
}
