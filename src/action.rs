//! An `Action`: everything needed to produce a stage's outputs, as data — the argv and
//! environment of one process, its input and output paths (relative to the pipeline
//! directory, its working directory) and the platform properties a machine must have to
//! run it. Every stage kind turns a stage into one; where it runs is the runner's choice.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Action {
    /// The program and its arguments.
    pub argv: Vec<String>,
    /// Variables set for the process (besides the stage's `env`).
    pub env: BTreeMap<String, String>,
    /// The files and directories the process reads (inputs by path; their digests are in
    /// the stage's key), including tools that are files (the pochi binary, a worker script).
    pub inputs: Vec<PathBuf>,
    /// The paths the process writes (the temporary output paths).
    pub outputs: Vec<PathBuf>,
    /// What the machine that runs it must offer (`OSFamily`, `ISA`, `gpu`, ...).
    pub platform: BTreeMap<String, String>,
}

impl Action {
    /// An action running `argv` with no extra environment.
    pub fn new(argv: Vec<String>) -> Action {
        Action {
            argv,
            env: BTreeMap::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            platform: base_platform(),
        }
    }

    /// The program (the first element of `argv`).
    pub fn program(&self) -> &str {
        self.argv.first().map(String::as_str).unwrap_or_default()
    }
}

/// The platform properties of every action: the operating system and instruction set.
pub fn base_platform() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("OSFamily".to_string(), std::env::consts::OS.to_string()),
        ("ISA".to_string(), std::env::consts::ARCH.to_string()),
    ])
}
