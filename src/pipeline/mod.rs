//! The pipeline file users write: its types, parsed and validated with spans (`parse`).

mod error;
mod keys;
pub(crate) mod kind;
pub(crate) mod matrix;
mod parse;
pub(crate) mod paths;
pub(crate) mod placement;
mod schema;
mod sections;
mod stage;
pub(crate) mod suggest;
mod tables;

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

pub(crate) use error::{PipelineError, SourceFile, SpanError};
pub use parse::parse_pipeline;
/// What stage kinds use to parse their own keys.
pub mod parse_api {
    pub use super::keys::keys_of;
    pub use super::parse::{Parser, is_valid_name};
}
pub(crate) use crate::size::ByteSize;
pub(crate) use kind::StageKind;
pub(crate) use schema::pipeline_schema;
pub(crate) use sections::StageSources;

/// The directory under the project root where pochi keeps its state (`.pochi/v1/...`).
pub const STATE_ROOT: &str = ".pochi";

/// One parsed and validated pipeline file.
#[derive(Debug)]
pub struct Pipeline {
    /// `[pipeline] name`, or the file's stem.
    pub name: String,
    /// The pipeline file, absolute.
    pub file: PathBuf,
    /// The directory of the pipeline file: the project root every relative path starts from.
    pub dir: PathBuf,
    pub source: SourceFile,
    /// Where stages put their outputs by convention, relative to `dir`.
    pub build_dir: PathBuf,
    pub toolchain: ToolchainSpec,
    pub resources: DeclaredResources,
    /// Stages in name order.
    pub stages: Vec<Stage>,
}

impl Pipeline {
    /// Reads and parses a pipeline file.
    pub fn load(path: &Path, kinds: kind::Registry) -> Result<Pipeline, PipelineError> {
        let text = std::fs::read_to_string(path).map_err(|source| PipelineError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        parse_pipeline(path, text, kinds)
    }

    /// The directory holding pochi's state for this pipeline: `.pochi/v1/<name>/`.
    pub fn state_dir(&self) -> PathBuf {
        self.dir
            .join(STATE_ROOT)
            .join(crate::state::LAYOUT_VERSION)
            .join(&self.name)
    }
}

/// `[toolchain]`: which Python runs the Python stage kinds.
#[derive(Debug, Default, Clone)]
pub struct ToolchainSpec {
    pub python: Option<PathBuf>,
}

/// `[resources]`: what this machine offers, when the user overrides detection.
#[derive(Debug, Default, Clone)]
pub struct DeclaredResources {
    pub cpu: Option<u32>,
    pub memory: Option<ByteSize>,
    pub gpus: Option<Vec<u32>>,
}

/// One `[stages.NAME]` table.
#[derive(Debug)]
pub struct Stage {
    pub name: String,
    /// The span of the stage's name in the file.
    pub span: Range<usize>,
    pub kind: Box<dyn StageKind>,
    pub needs: Vec<Located<String>>,
    pub device: Device,
    /// Whether the pipeline names the device (else the kind's default).
    pub device_declared: bool,
    pub resources: StageResources,
    pub env: BTreeMap<String, String>,
    /// Whether the output cache may restore and store this stage (`cache = false` opts out).
    pub cache: bool,
    /// Where it may run (`executor`, `gpu`, `platform`).
    pub placement: placement::Placement,
    /// For a variant of a matrix stage: the stage it was declared as and its values.
    pub matrix: Option<matrix::MatrixOf>,
}

/// A value with the span it came from.
#[derive(Debug, Clone)]
pub struct Located<T> {
    pub value: T,
    pub span: Range<usize>,
}

/// Where a stage runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Device {
    Cpu,
    /// Any GPU (`cuda`) or one GPU by id (`cuda:N`).
    Cuda(Option<u32>),
}

impl Device {
    pub fn parse(text: &str) -> Option<Device> {
        match text {
            "cpu" => Some(Device::Cpu),
            "cuda" => Some(Device::Cuda(None)),
            _ => text
                .strip_prefix("cuda:")
                .and_then(|id| id.parse().ok())
                .map(|id| Device::Cuda(Some(id))),
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(None) => f.write_str("cuda"),
            Device::Cuda(Some(id)) => write!(f, "cuda:{id}"),
        }
    }
}

/// What a stage takes from the machine while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageResources {
    pub cpu: u32,
    pub memory: ByteSize,
}

/// Where an input comes from: a file or directory, or another stage's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputSource {
    /// A path relative to the pipeline directory (absolute when outside it).
    Path(PathBuf),
    /// `@stage` (primary output) or `@stage.key`.
    Output { stage: String, key: Option<String> },
}

#[derive(Debug, Clone)]
pub struct NamedInput {
    pub key: String,
    pub source: InputSource,
    pub span: Range<usize>,
}

#[derive(Debug, Clone)]
pub struct NamedOutput {
    pub key: String,
    /// Relative to the pipeline directory, inside it.
    pub path: PathBuf,
    pub span: Range<usize>,
}
