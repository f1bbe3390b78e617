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

/// A stage's Action as the caches and a remote executor see it: every path relative to
/// the input root (the pipeline directory), tools that live outside it under one alias,
/// the workers' toolchain in place of this machine's, its input files with their
/// digests, and pochi's key of the stage as the salt. Built once per run
/// (`driver::portable`), it is the one Action whose digest (`remote::stage_action`, under
/// the server's digest function) the remote cache looks up and stores under and the
/// executor runs: the same in every clone, run and build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortableAction {
    pub argv: Vec<String>,
    /// The stage's `env` and the kind's variables (no CUDA_VISIBLE_DEVICES: the GPU lease
    /// is the scheduler's choice, not what the stage computes).
    pub env: BTreeMap<String, String>,
    /// The files of the input root, by path.
    pub inputs: Vec<PortableInput>,
    /// What the action writes, (name, path): the declared outputs at the stage's
    /// temporary paths, and a script's answer file.
    pub outputs: Vec<(String, String)>,
    pub platform: BTreeMap<String, String>,
    /// pochi's key of the stage (its fingerprint), so two stages share an entry only when
    /// pochi would call them the same stage.
    pub salt: String,
}

/// One file of a portable Action's input root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortableInput {
    /// Relative to the input root, `/`-separated.
    pub path: String,
    /// Where the file is on this machine.
    pub local: PathBuf,
    pub executable: bool,
    pub size: u64,
    /// Hex digests of its bytes, under the two functions a server may ask for.
    pub sha256: String,
    pub blake3: String,
}

/// The output name of a script's answer file in a portable Action (a declared output's
/// name is a TOML key, which cannot start with a dot).
pub const ANSWER_OUTPUT: &str = ".answer";
