//! A small harness for integration tests: a temporary project directory with a pipeline
//! file, and the built `pochi` binary run inside it.

#![allow(dead_code)]

pub mod buildbox;
pub mod hostile;
pub mod servers;
pub mod tensorrt;
pub mod tls;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::rc::Rc;

pub struct Project {
    pub dir: tempfile::TempDir,
    /// The output cache its pochi runs use (`POCHI_OUTPUT_CACHE_DIR`): a temporary one per
    /// project, so that no test restores what another test stored, and none touches the
    /// user's cache. `Project::sharing_cache` gives a second project the same one.
    pub cache: Rc<tempfile::TempDir>,
}

/// What one pochi run printed and returned.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn from_output(output: Output) -> Run {
        Run::from(output)
    }

    fn from(output: Output) -> Run {
        Run {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// The `--json` summary.
    pub fn summary(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "no JSON summary ({e}):\nstdout: {}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }

    /// A count of the `--json` summary (`ran`, `restored_local`, `restored_remote`, ...).
    pub fn count(&self, name: &str) -> u64 {
        self.summary()["counts"][name].as_u64().unwrap_or(0)
    }

    /// Stage names with the given status in the `--json` summary, sorted.
    pub fn stages(&self, status: &str) -> Vec<String> {
        let summary = self.summary();
        let mut names: Vec<String> = summary["stages"]
            .as_array()
            .expect("stages")
            .iter()
            .filter(|s| s["status"] == status)
            .map(|s| s["stage"].as_str().unwrap().to_string())
            .collect();
        names.sort();
        names
    }

    pub fn ran(&self) -> Vec<String> {
        self.stages("ran")
    }

    #[track_caller]
    pub fn assert_ok(&self) -> &Run {
        assert_eq!(
            self.code,
            Some(0),
            "pochi failed:\nstdout: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        self
    }

    #[track_caller]
    pub fn assert_error(&self, needles: &[&str]) -> &Run {
        assert_eq!(
            self.code,
            Some(1),
            "expected exit 1:\nstdout: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        assert!(
            self.stderr.contains("error:"),
            "no `error:` line:\n{}",
            self.stderr
        );
        assert!(
            !self.stderr.contains("panicked"),
            "pochi panicked:\n{}",
            self.stderr
        );
        for needle in needles {
            assert!(
                self.stderr.contains(needle),
                "stderr lacks {needle:?}:\n{}",
                self.stderr
            );
        }
        self
    }
}

/// The TensorRT STAND-IN (a test double of the `tensorrt` Python package, never the real
/// one) answering from the real bindings of the newest TensorRT (`tensorrt::NEWEST`), for
/// POCHI_TEST_TENSORRT_STANDIN. `tensorrt::double_dir` gives another version's.
pub fn tensorrt_standin_dir() -> String {
    tensorrt::double_dir(tensorrt::NEWEST)
}

pub fn pochi_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pochi"))
}

impl Project {
    pub fn new(pipeline: &str) -> Project {
        let project = Project::in_dir(tempfile::tempdir().expect("temp dir"));
        project.write("pipeline.toml", pipeline);
        project
    }

    /// A project in `dir` (already holding its files) with an output cache of its own.
    pub fn in_dir(dir: tempfile::TempDir) -> Project {
        Project {
            dir,
            cache: Rc::new(tempfile::tempdir().expect("temp dir")),
        }
    }

    /// A project in `dir` that uses this project's output cache (a clone on the same
    /// machine).
    pub fn sharing_cache(&self, dir: tempfile::TempDir) -> Project {
        Project {
            dir,
            cache: Rc::clone(&self.cache),
        }
    }

    /// The output cache's layout directory (`cas/`, `ac/`...).
    pub fn cache_root(&self) -> PathBuf {
        self.cache.path().join("v1")
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    pub fn write(&self, relative: &str, content: &str) {
        let path = self.path(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }

    pub fn read(&self, relative: &str) -> String {
        std::fs::read_to_string(self.path(relative))
            .unwrap_or_else(|e| panic!("cannot read {relative}: {e}"))
    }

    /// The lines the test's stages appended to `runs.log` when they ran (0 without one):
    /// runs counted apart from pochi's own summary.
    pub fn logged_runs(&self) -> usize {
        std::fs::read_to_string(self.path("runs.log"))
            .map(|text| text.lines().count())
            .unwrap_or(0)
    }

    pub fn exists(&self, relative: &str) -> bool {
        self.path(relative).exists()
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(pochi_bin());
        command
            .args(args)
            .current_dir(self.dir.path())
            .env("NO_COLOR", "1")
            .env("POCHI_OUTPUT_CACHE_DIR", self.cache.path())
            .env_remove("POCHI_CACHE_MAX_SIZE")
            .env_remove("POCHI_GPUS");
        command
    }

    pub fn run(&self, args: &[&str]) -> Run {
        Run::from(self.command(args).output().expect("run pochi"))
    }

    /// The managed toolchain's interpreter (pochi creates it when missing).
    pub fn toolchain_python(&self) -> PathBuf {
        self.run(&["toolchain", "sync"]).assert_ok();
        let run = self.run(&["toolchain", "path"]);
        run.assert_ok();
        PathBuf::from(run.stdout.trim())
    }

    /// Runs the toolchain's Python (`python -I ARGS...`) in the project directory, asserts
    /// that it succeeded, and returns its stdout.
    pub fn python(&self, args: &[&str]) -> String {
        let output = Command::new(self.toolchain_python())
            .arg("-I")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("run python");
        assert!(
            output.status.success(),
            "python {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Runs pochi, killing it if it has not finished within `limit` (a hang is a failure).
    pub fn run_within(&self, args: &[&str], limit: std::time::Duration) -> Run {
        let child = self
            .command(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start pochi");
        let id = child.id();
        let (done, wait) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let output = child.wait_with_output();
            let _ = done.send(());
            output
        });
        if wait.recv_timeout(limit).is_err() {
            // SAFETY: killing the child we spawned, which hangs.
            unsafe { libc::kill(id as i32, libc::SIGKILL) };
            let _ = waiter.join();
            panic!("pochi {args:?} hung for more than {limit:?}");
        }
        Run::from_output(waiter.join().unwrap().expect("pochi output"))
    }

    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut command = self.command(args);
        command.envs(env.iter().copied());
        Run::from(command.output().expect("run pochi"))
    }

    /// `pochi build --json` plus `args`.
    pub fn build(&self, args: &[&str]) -> Run {
        let mut all = vec!["build", "--json"];
        all.extend_from_slice(args);
        self.run(&all)
    }
}

/// Copies a directory tree (files get new mtimes, inodes and ctimes, like a fresh clone).
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Every file and link below `dir` (not the directories), as paths relative to it,
/// sorted; empty when `dir` does not exist.
pub fn files_under(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                pending.push(entry.path());
            } else if let Ok(relative) = entry.path().strip_prefix(dir) {
                found.push(relative.to_string_lossy().into_owned());
            }
        }
    }
    found.sort();
    found
}

impl Project {
    /// A directory holding scikit-learn (and joblib, threadpoolctl) for the toolchain's
    /// Python, installed once per build tree with the toolchain's own `uv` from PyPI
    /// (scikit-learn is a peer the tests compare with, not part of pochi's toolchain).
    /// Scripts add it to `sys.path` themselves (`python -I` ignores PYTHONPATH).
    pub fn scikit_learn_dir(&self) -> PathBuf {
        self.peer_packages(
            "peer-scikit-learn-1.7.2",
            "sklearn",
            &[
                "scikit-learn==1.7.2",
                "joblib==1.5.2",
                "threadpoolctl==3.6.0",
            ],
        )
    }

    /// A directory holding the Python `jsonschema` validator (and what it imports), for
    /// checking pipelines against `pochi schema`; installed like `scikit_learn_dir`.
    pub fn jsonschema_dir(&self) -> PathBuf {
        self.peer_packages(
            "peer-jsonschema-4.26.0",
            "jsonschema",
            &[
                "jsonschema==4.26.0",
                "jsonschema-specifications==2025.9.1",
                "referencing==0.37.0",
                "rpds-py==0.30.0",
                "attrs==26.1.0",
            ],
        )
    }

    /// `packages` installed (without dependencies) into `CARGO_TARGET_TMPDIR/<name>` for
    /// the toolchain's Python with the toolchain's own `uv`, once per build tree; `marker`
    /// is a directory that exists once they are.
    fn peer_packages(&self, name: &str, marker: &str, packages: &[&str]) -> PathBuf {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
        if dir.join(marker).is_dir() {
            return dir;
        }
        let python = self.toolchain_python();
        // <cache>/v1/toolchains/<hash>/env/bin/python -> <cache>/v1/tools/uv/bin/uv
        let uv = python
            .ancestors()
            .nth(5)
            .expect("the toolchain's cache directory")
            .join("tools/uv/bin/uv");
        let partial = dir.with_extension("partial");
        let _ = std::fs::remove_dir_all(&partial);
        let output = Command::new(&uv)
            .args(["pip", "install", "--no-deps", "--python"])
            .arg(&python)
            .arg("--target")
            .arg(&partial)
            .args(packages)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", uv.display()));
        assert!(
            output.status.success(),
            "installing {packages:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let _ = std::fs::rename(&partial, &dir);
        dir
    }
}

/// A failed stage's entry of `--json` as the user reads it: the error, its log, its hint.
/// The entry of stage `name` in a `--json` summary.
#[track_caller]
pub fn summary_stage<'a>(summary: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    summary["stages"]
        .as_array()
        .expect("a summary's stages")
        .iter()
        .find(|s| s["stage"] == name)
        .unwrap_or_else(|| panic!("no stage {name} in {summary}"))
}

pub fn failure_text(stage: &serde_json::Value) -> String {
    let text = |key: &str| stage[key].as_str().unwrap_or_default().to_string();
    let mut shown = text("error");
    if !text("log").is_empty() {
        shown.push_str(&format!("\nlog: {}", text("log")));
    }
    if !text("hint").is_empty() {
        shown.push_str(&format!("\nhelp: {}", text("hint")));
    }
    shown
}
