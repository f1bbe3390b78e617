//! The managed environment: created on first use from the embedded lock, in
//! `<cache>/toolchains/<lock hash>/`, with `uv` when it can be had (on PATH, or installed
//! from PyPI into the cache) and `python3 -m venv` + pip otherwise. Creation is atomic: the
//! environment is built in a temporary directory and renamed into place, under a file lock
//! so that two pochi processes never build it twice.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use super::cache::CacheDir;

/// Why the managed environment could not be created. The messages carry their causes:
/// they are shown after "cannot create the managed Python toolchain: ".
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub(crate) enum ManagedError {
    #[error("cannot create {}: {error}", path.display())]
    Create {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot open {}: {error}", path.display())]
    Open {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot lock {}: {error}", path.display())]
    Lock {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot write {}: {error}", path.display())]
    Write {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot move the new toolchain into {}: {error}", path.display())]
    MoveIntoPlace {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot run `{shown}`: {error}")]
    Spawn {
        shown: String,
        error: std::io::Error,
    },
    #[error("`{shown}` failed with {status}")]
    Failed {
        shown: String,
        status: std::process::ExitStatus,
    },
}

/// The managed environment for one lock.
#[derive(Debug, Clone)]
pub(crate) struct Managed {
    /// `<cache>/toolchains/<hash>`.
    pub root: PathBuf,
    pub hash: String,
}

impl Managed {
    pub(crate) fn new(cache: &CacheDir, hash: &str) -> Managed {
        Managed {
            root: cache.toolchains().join(hash),
            hash: hash.to_string(),
        }
    }

    /// The environment's interpreter.
    pub(crate) fn python(&self) -> PathBuf {
        self.root.join("env").join("bin").join("python")
    }

    /// Where the environment's identity is cached.
    pub(crate) fn identity_file(&self) -> PathBuf {
        self.root.join("identity.json")
    }

    /// Whether the environment has been created (the rename into place is the commit).
    pub(crate) fn exists(&self) -> bool {
        self.python().exists()
    }

    /// Creates the environment unless it exists, telling `say` what happens (installers'
    /// own progress goes to stderr).
    pub(crate) fn ensure(
        &self,
        cache: &CacheDir,
        lock: &str,
        say: &mut dyn FnMut(&str),
    ) -> Result<(), ManagedError> {
        if self.exists() {
            return Ok(());
        }
        let parent = cache.toolchains();
        std::fs::create_dir_all(&parent).map_err(|error| ManagedError::Create {
            path: parent.clone(),
            error,
        })?;
        let lock_path = parent.join(format!("{}.lock", self.hash));
        let lock_file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|error| ManagedError::Open {
                path: lock_path.clone(),
                error,
            })?;
        if lock_file.try_lock().is_err() {
            say("waiting: another pochi is creating the Python toolchain");
            lock_file.lock().map_err(|error| ManagedError::Lock {
                path: lock_path.clone(),
                error,
            })?;
        }
        if self.exists() {
            return Ok(());
        }
        let started = Instant::now();
        let partial = parent.join(format!(".{}.partial-{}", self.hash, std::process::id()));
        let _ = crate::fsutil::remove_path(&partial);
        say(&format!(
            "creating the Python toolchain {} in {} (torch, onnx, onnxruntime, monai, ...; about 6 GB, a few minutes the first time)",
            self.hash,
            self.root.display()
        ));
        let result = build(cache, &partial, lock, say);
        if let Err(error) = result {
            let _ = crate::fsutil::remove_path(&partial);
            return Err(error);
        }
        let _ = crate::fsutil::remove_path(&self.root);
        std::fs::rename(&partial, &self.root).map_err(|error| ManagedError::MoveIntoPlace {
            path: self.root.clone(),
            error,
        })?;
        say(&format!(
            "created the Python toolchain in {:.0}s",
            started.elapsed().as_secs_f64()
        ));
        Ok(())
    }
}

/// Builds an environment in `dir`: `dir/env` and `dir/requirements.lock`.
fn build(
    cache: &CacheDir,
    dir: &Path,
    lock: &str,
    say: &mut dyn FnMut(&str),
) -> Result<(), ManagedError> {
    std::fs::create_dir_all(dir).map_err(|error| ManagedError::Create {
        path: dir.to_path_buf(),
        error,
    })?;
    let lock_file = dir.join("requirements.lock");
    std::fs::write(&lock_file, lock).map_err(|error| ManagedError::Write {
        path: lock_file.clone(),
        error,
    })?;
    let env = dir.join("env");
    let python = env.join("bin").join("python");
    let base = base_python();
    match find_uv(cache, say) {
        Some(uv) => {
            say(&format!("using {}", uv.display()));
            run(Command::new(&uv)
                .args(["venv", "--quiet", "--relocatable", "--python"])
                .arg(&base)
                .arg(&env))?;
            run(Command::new(&uv)
                .args([
                    "pip",
                    "install",
                    "--no-deps",
                    "--require-hashes",
                    "--compile-bytecode",
                    "--python",
                ])
                .arg(&python)
                .arg("-r")
                .arg(&lock_file))
        }
        None => {
            say("uv is not available: using python3 -m venv and pip (slower)");
            run(Command::new(&base).args(["-m", "venv"]).arg(&env))?;
            run(Command::new(&python)
                .env("PIP_ROOT_USER_ACTION", "ignore")
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--no-deps",
                    "--require-hashes",
                    "--disable-pip-version-check",
                    "-r",
                ])
                .arg(&lock_file))
        }
    }
}

/// The interpreter the environment is built from: `$POCHI_BASE_PYTHON`, else `python3`.
fn base_python() -> PathBuf {
    std::env::var_os("POCHI_BASE_PYTHON")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("python3"))
}

/// Runs an installer step with its output on our stderr (its progress is the user's).
fn run(command: &mut Command) -> Result<(), ManagedError> {
    let shown = format!("{command:?}").replace('"', "");
    let status = command
        .stdin(Stdio::null())
        .stdout(Stdio::from(std::io::stderr()))
        .status();
    match status {
        Err(error) => Err(ManagedError::Spawn { shown, error }),
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(ManagedError::Failed { shown, status }),
    }
}

/// `uv` on PATH, else the one pochi installed into the cache, else installs it there with
/// `python3 -m pip install --target`. None when that fails too.
fn find_uv(cache: &CacheDir, say: &mut dyn FnMut(&str)) -> Option<PathBuf> {
    if std::env::var_os("POCHI_NO_UV").is_some() {
        return None;
    }
    if let Some(uv) = on_path("uv") {
        return Some(uv);
    }
    let home = cache.tools().join("uv");
    let uv = home.join("bin").join("uv");
    if uv.exists() {
        return Some(uv);
    }
    say("installing uv from PyPI into the cache (python3 -m pip install uv)");
    let partial = cache
        .tools()
        .join(format!(".uv.partial-{}", std::process::id()));
    let _ = crate::fsutil::remove_path(&partial);
    let installed = run(Command::new(base_python())
        .env("PIP_ROOT_USER_ACTION", "ignore")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--target",
        ])
        .arg(&partial)
        .arg("uv"));
    let moved = installed.map_err(|e| e.to_string()).and_then(|()| {
        let _ = crate::fsutil::remove_path(&home);
        std::fs::rename(&partial, &home).map_err(|e| e.to_string())
    });
    match moved {
        Ok(()) if uv.exists() => Some(uv),
        outcome => {
            if let Err(error) = outcome {
                say(&format!("could not install uv: {error}"));
            }
            let _ = crate::fsutil::remove_path(&partial);
            None
        }
    }
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}
