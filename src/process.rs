//! The seam between the engine and the operating system: the engine describes a process,
//! a `ProcessRunner` runs it (the real one lives in `crate::runner`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

/// A process to run for a stage.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    pub program: String,
    pub args: Vec<String>,
    /// Variables set on top of pochi's own environment.
    pub env: BTreeMap<String, String>,
    pub cwd: PathBuf,
    /// Where stdout and stderr go.
    pub log: PathBuf,
}

/// How a process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessResult {
    Success,
    /// It ran and failed: `status` says how ("exit status 1", "killed by signal 9").
    Failed {
        status: String,
        stderr_tail: Vec<String>,
    },
    /// It could not be started.
    SpawnError(String),
    /// The build was interrupted and the process group was terminated.
    Cancelled,
}

/// Runs processes; stops them when `cancel` becomes true.
pub trait ProcessRunner: Send + Sync {
    fn run(&self, spec: &ProcessSpec, cancel: &AtomicBool) -> ProcessResult;
}
