//! The pipeline file's tables as serde types: `[pipeline]`, `[toolchain]`, `[resources]`
//! and the keys every stage has. The parser deserializes them and reads their keys
//! (`keys_of`); `pochi schema` documents them.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;
use toml::Spanned;

use super::matrix;
use crate::size::ByteSize;

/// `[pipeline]`
#[derive(Debug, Default, Deserialize, JsonSchema)]
pub(crate) struct PipelineSection {
    /// The pipeline's name; default: the file's stem.
    pub(super) name: Option<String>,
    /// Where outputs go by convention (`{build_dir}`); default: `build/<name>`.
    pub(super) build_dir: Option<String>,
}

/// `[toolchain]`
#[derive(Debug, Default, Deserialize, JsonSchema)]
pub(crate) struct ToolchainSection {
    /// A Python interpreter to use instead of the managed one.
    pub(super) python: Option<String>,
}

/// `[resources]`: what this machine offers (default: detected).
#[derive(Debug, Default, Deserialize, JsonSchema)]
pub(crate) struct ResourcesSection {
    /// CPU slots.
    pub(super) cpu: Option<u32>,
    /// Memory available to stages.
    pub(super) memory: Option<ByteSize>,
    /// GPU device ids; default: what nvidia-smi lists, else none.
    pub(super) gpus: Option<Vec<u32>>,
}

/// The keys every stage has, whatever its kind.
#[derive(Debug, Deserialize, JsonSchema)]
pub(crate) struct CommonStageKeys {
    /// The stage kind.
    #[schemars(with = "String")]
    #[allow(
        dead_code,
        reason = "read with its span by `kind_of`; declared here for the schema"
    )]
    pub(super) kind: Spanned<String>,
    /// Extra ordering edges: stages whose outputs this one depends on.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub(super) needs: Vec<Spanned<String>>,
    /// `cpu`, `cuda` (any GPU) or `cuda:N`.
    #[schemars(with = "Option<String>", regex(pattern = r"^(cpu|cuda|cuda:[0-9]+)$"))]
    pub(super) device: Option<Spanned<String>>,
    /// What the stage takes from the machine while it runs.
    #[schemars(with = "Option<StageResourcesSection>")]
    pub(super) resources: Option<Spanned<StageResourcesSection>>,
    /// Environment variables for the stage (part of its fingerprint).
    #[serde(default)]
    pub(super) env: BTreeMap<String, String>,
    /// Whether the stage's outputs go to and come from the output cache (default true).
    /// `false` for a stage that reads something pochi cannot see (an undeclared file, the
    /// clock, the network): it then runs whenever its key changes, and nothing of it is
    /// stored. Not part of the stage's key.
    #[serde(default = "cached_by_default")]
    pub(super) cache: bool,
    /// Parametrizes the stage: one stage per combination of the values, named
    /// `NAME-VALUE-...` in key order (a string as itself, a number after its key's first
    /// letter: `batch = 8` -> `b8`, a boolean as `KEY` or `no_KEY`). `{matrix.KEY}` in the
    /// stage's strings is the variant's value; a string that is only `{matrix.KEY}` takes
    /// the value's type. See docs/pipeline-format.md.
    #[serde(default)]
    #[schemars(schema_with = "matrix_schema")]
    #[allow(
        dead_code,
        reason = "expanded away by `matrix::expand`; declared for the schema"
    )]
    pub(super) matrix: Option<serde::de::IgnoredAny>,
    /// Where the stage runs when a remote executor is configured (`--remote-executor`):
    /// `auto` (default: remotely when it can run there), `local` or `remote`.
    #[schemars(with = "Option<String>", regex(pattern = r"^(auto|local|remote)$"))]
    pub(super) executor: Option<Spanned<String>>,
    /// The GPU model a `cuda` stage targets on a remote worker: nvidia-smi's name
    /// (`"NVIDIA A100-SXM4-40GB"`) or an alias (`t4`, `l4`, `a10g`, `a100`, `a100-80gb`,
    /// `h100`, `h200`). Part of the stage's key. See docs/remote.md.
    #[schemars(with = "Option<String>")]
    pub(super) gpu: Option<Spanned<String>>,
    /// Extra platform properties a remote worker must offer (`{ KEY = "VALUE" }`, e.g. a
    /// farm's pool or container image, or `tensorrt = "10.13.0"`). Part of the stage's key.
    #[schemars(with = "Option<BTreeMap<String, String>>")]
    pub(super) platform: Option<Spanned<BTreeMap<String, String>>>,
}

fn cached_by_default() -> bool {
    true
}

/// `matrix = { precision = ["fp16", "int8"], batch = [1, 8] }`: each key an identifier,
/// each list non-empty, of scalars.
fn matrix_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "minProperties": 1,
        "propertyNames": { "pattern": "^[A-Za-z_][A-Za-z0-9_]*$" },
        "additionalProperties": {
            "type": "array",
            "minItems": 1,
            "maxItems": matrix::MAX_VARIANTS_PER_STAGE,
            "uniqueItems": true,
            "items": { "type": ["string", "integer", "number", "boolean"] }
        }
    })
}

/// `resources = { cpu = 1, memory = "6GiB" }`
#[derive(Debug, Deserialize, JsonSchema)]
pub(crate) struct StageResourcesSection {
    /// CPU slots the stage occupies (default 1).
    pub(super) cpu: Option<u32>,
    /// Peak memory the stage needs (default 0: not limited).
    pub(super) memory: Option<ByteSize>,
}
