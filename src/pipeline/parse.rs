//! Parsing `pipeline.toml`: TOML with spans, unknown keys rejected with a suggestion, every
//! value checked, then handed to the stage kind that owns the stage's own keys.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;
use schemars::JsonSchema;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::error::{PipelineError, SourceFile, SpanError};
use super::keys::keys_of;
use super::kind::{KindInfo, Registry};
use super::matrix::{self, Entry};
use super::placement::{ExecutorChoice, Placement, gpu_model, is_reserved_property};
use super::suggest;
use super::{
    DeclaredResources, Device, InputSource, Located, NamedInput, NamedOutput, Pipeline, Stage,
    StageResources, ToolchainSpec, paths,
};
use crate::size::ByteSize;

/// The top level's tables (no struct deserializes the whole document).
const TOP_KEYS: &[&str] = &["pipeline", "toolchain", "resources", "stages"];

/// `[pipeline]`
#[derive(Debug, Default, Deserialize, JsonSchema)]
pub(crate) struct PipelineSection {
    /// The pipeline's name; default: the file's stem.
    name: Option<String>,
    /// Where outputs go by convention (`{build_dir}`); default: `build/<name>`.
    build_dir: Option<String>,
}

/// `[toolchain]`
#[derive(Debug, Default, Deserialize, JsonSchema)]
pub(crate) struct ToolchainSection {
    /// A Python interpreter to use instead of the managed one.
    python: Option<String>,
}

/// `[resources]`: what this machine offers (default: detected).
#[derive(Debug, Default, Deserialize, JsonSchema)]
pub(crate) struct ResourcesSection {
    /// CPU slots.
    cpu: Option<u32>,
    /// Memory available to stages.
    memory: Option<ByteSize>,
    /// GPU device ids; default: what nvidia-smi lists, else none.
    gpus: Option<Vec<u32>>,
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
    kind: Spanned<String>,
    /// Extra ordering edges: stages whose outputs this one depends on.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    needs: Vec<Spanned<String>>,
    /// `cpu`, `cuda` (any GPU) or `cuda:N`.
    #[schemars(with = "Option<String>", regex(pattern = r"^(cpu|cuda|cuda:[0-9]+)$"))]
    device: Option<Spanned<String>>,
    /// What the stage takes from the machine while it runs.
    #[schemars(with = "Option<StageResourcesSection>")]
    resources: Option<Spanned<StageResourcesSection>>,
    /// Environment variables for the stage (part of its fingerprint).
    #[serde(default)]
    env: BTreeMap<String, String>,
    /// Whether the stage's outputs go to and come from the output cache (default true).
    /// `false` for a stage that reads something pochi cannot see (an undeclared file, the
    /// clock, the network): it then runs whenever its key changes, and nothing of it is
    /// stored. Not part of the stage's key.
    #[serde(default = "cached_by_default")]
    cache: bool,
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
    matrix: Option<serde::de::IgnoredAny>,
    /// Where the stage runs when a remote executor is configured (`--remote-executor`):
    /// `auto` (default: remotely when it can run there), `local` or `remote`.
    #[schemars(with = "Option<String>", regex(pattern = r"^(auto|local|remote)$"))]
    executor: Option<Spanned<String>>,
    /// The GPU model a `cuda` stage targets on a remote worker: nvidia-smi's name
    /// (`"NVIDIA A100-SXM4-40GB"`) or an alias (`t4`, `l4`, `a10g`, `a100`, `a100-80gb`,
    /// `h100`, `h200`). Part of the stage's key. See docs/remote.md.
    #[schemars(with = "Option<String>")]
    gpu: Option<Spanned<String>>,
    /// Extra platform properties a remote worker must offer (`{ KEY = "VALUE" }`, e.g. a
    /// farm's pool or container image, or `tensorrt = "10.13.0"`). Part of the stage's key.
    #[schemars(with = "Option<BTreeMap<String, String>>")]
    platform: Option<Spanned<BTreeMap<String, String>>>,
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
    cpu: Option<u32>,
    /// Peak memory the stage needs (default 0: not limited).
    memory: Option<ByteSize>,
}

/// The JSON Schema of the keys every stage has.
pub fn common_stage_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    generator.subschema_for::<CommonStageKeys>()
}

/// Parses and validates one pipeline file's text. `path` is how the file is named in errors.
/// `kinds` are the stage kinds it knows (`pochi::kinds::KINDS`).
pub fn parse_pipeline(
    path: &Path,
    text: String,
    kinds: Registry,
) -> Result<Pipeline, PipelineError> {
    // Any error of the cut parse is reported as the one-document parse reports it, so
    // the error (and which of two errors comes first) never depends on the cutting.
    match parse_document(path, text.clone(), true, kinds) {
        Err(_) => parse_document(path, text, false, kinds),
        parsed => parsed,
    }
}

/// `parse_pipeline`; with `cut`, a large file's stage sections are parsed in parallel.
fn parse_document(
    path: &Path,
    text: String,
    cut: bool,
    kinds: Registry,
) -> Result<Pipeline, PipelineError> {
    // `..` is resolved lexically, so `../seg/pipeline.toml` has the same project root as
    // its absolute path (`std::path::absolute` keeps `..`).
    let file =
        paths::lexical_clean(
            &std::path::absolute(path).map_err(|source| PipelineError::Read {
                path: path.to_path_buf(),
                source,
            })?,
        );
    let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let src = SourceFile::new(path.display().to_string(), text);
    let text = Arc::clone(&src.text);
    // A large file is cut at its stage headers and the stages parsed in parallel; if that
    // fails in any way, the whole file is parsed as one document, whose errors win.
    let sections = cut
        .then(|| super::sections::stage_sections(&text))
        .flatten();
    let prefix = sections
        .as_ref()
        .map_or(&text[..], |s| &text[s.prefix.clone()]);
    let root = DeTable::parse(prefix).map_err(|error| toml_error(&src, error))?;
    let parser = Parser {
        src: &src,
        dir: &dir,
        build_dir: Path::new(""),
        stage: "",
        kinds,
    };
    parser.check_keys(root.get_ref(), TOP_KEYS, "at the top level")?;

    let section: PipelineSection = parser.section(&root, "pipeline")?;
    let toolchain: ToolchainSection = parser.section(&root, "toolchain")?;
    let resources: ResourcesSection = parser.section(&root, "resources")?;
    let name = parser.pipeline_name(&root, section.name, &file)?;
    let build_dir = section
        .build_dir
        .map(|raw| paths::normalize(&dir, Path::new(&raw)))
        .unwrap_or_else(|| Path::new("build").join(&name));
    let stage_parser = Parser {
        build_dir: &build_dir,
        ..parser
    };
    let stages = match sections.map(|s| stage_parser.stages_in_sections(&text, &s.stages)) {
        Some(Some(stages)) => stages?,
        // No sections, or one is not TOML on its own: the whole file, as one document.
        Some(None) => return parse_document(path, src.text.to_string(), false, kinds),
        None => stage_parser.stages(&root)?,
    };
    if stages.is_empty() {
        let span = root
            .get_ref()
            .get("stages")
            .map(|v| v.span())
            .unwrap_or(0..0);
        return Err(parser
            .src
            .error(span, "the pipeline declares no stages")
            .with_help("add a stage, e.g. `[stages.hello]` with `kind = \"command\"`, `run = [\"sh\", \"-c\", \"echo hi > {outputs.out}\"]` and `outputs = { out = \"build/hello.txt\" }`")
            .into());
    }
    if resources.cpu == Some(0) {
        return Err(parser
            .key_error(&root, "resources", "`resources.cpu` must be at least 1")
            .into());
    }
    Ok(Pipeline {
        name,
        file,
        dir: dir.clone(),
        source: src.clone(),
        build_dir,
        toolchain: ToolchainSpec {
            python: toolchain
                .python
                .map(|raw| paths::normalize(&dir, Path::new(&raw))),
        },
        resources: DeclaredResources {
            cpu: resources.cpu,
            memory: resources.memory,
            gpus: resources.gpus,
        },
        stages,
    })
}

/// Turns a TOML or serde error into one that points at its span.
fn toml_error(src: &SourceFile, error: toml::de::Error) -> SpanError {
    let span = error.span().unwrap_or(0..0);
    let message = error.message().trim().to_string();
    src.error(span, message).with_label("here")
}

/// The parsing context handed to stage kinds: the file (for errors), its directory, the
/// pipeline's build directory and the stage being parsed (for kinds whose outputs have
/// conventional paths under `{build_dir}/<stage>/`).
pub struct Parser<'a> {
    pub src: &'a SourceFile,
    pub dir: &'a Path,
    /// The pipeline's `build_dir`, relative to `dir` (empty before it is known).
    pub build_dir: &'a Path,
    /// The stage whose keys are being parsed (empty outside a stage).
    pub stage: &'a str,
    /// The stage kinds this parse knows.
    pub kinds: Registry,
}

impl Parser<'_> {
    /// Rejects keys of `table` that are not in `allowed`, suggesting the nearest one.
    pub fn check_keys(
        &self,
        table: &DeTable,
        allowed: &[&str],
        place: &str,
    ) -> Result<(), SpanError> {
        for key in table.keys() {
            if !allowed.contains(&key.get_ref().as_ref()) {
                return Err(self
                    .src
                    .error(
                        key.span(),
                        format!("unknown key `{}` {place}", key.get_ref()),
                    )
                    .with_label("unknown key")
                    .with_help(suggest::hint(key.get_ref(), allowed)));
            }
        }
        Ok(())
    }

    /// Deserializes a whole spanned value into `T`, keeping serde's span in errors.
    pub fn deserialize<T: DeserializeOwned>(
        &self,
        value: &Spanned<DeValue>,
    ) -> Result<T, SpanError> {
        T::deserialize(ValueDeserializer::from(value.clone()))
            .map_err(|error| toml_error(self.src, error))
    }

    fn section<T: DeserializeOwned + Default>(
        &self,
        root: &Spanned<DeTable>,
        name: &str,
    ) -> Result<T, SpanError> {
        let Some(value) = root.get_ref().get(name) else {
            return Ok(T::default());
        };
        let table = value.get_ref().as_table().ok_or_else(|| {
            self.src
                .error(value.span(), format!("`{name}` must be a table"))
        })?;
        self.check_keys(table, keys_of::<T>(), &format!("in [{name}]"))?;
        self.deserialize(value)
    }

    fn key_error(&self, root: &Spanned<DeTable>, key: &str, message: &str) -> SpanError {
        let span = root
            .get_ref()
            .get(key)
            .map(|value| value.span())
            .unwrap_or(0..0);
        self.src.error(span, message)
    }

    fn pipeline_name(
        &self,
        root: &Spanned<DeTable>,
        given: Option<String>,
        file: &Path,
    ) -> Result<String, SpanError> {
        let name = match given {
            Some(name) => name,
            None => file
                .file_stem()
                .map(|stem| stem.to_string_lossy().into_owned())
                .unwrap_or_else(|| "pipeline".into()),
        };
        if is_valid_name(&name) {
            return Ok(name);
        }
        let span = root
            .get_ref()
            .get("pipeline")
            .and_then(|p| p.get_ref().get("name"))
            .map(|v| v.span())
            .unwrap_or(0..0);
        Err(self
            .src
            .error(span, format!("pipeline name `{}` is not valid", shorten(&name)))
            .with_help(format!("a pipeline name uses only a-z, 0-9, `_` and `-`, at most {MAX_NAME_LEN} of them; set [pipeline] name")))
    }

    fn stages(&self, root: &Spanned<DeTable>) -> Result<Vec<Stage>, SpanError> {
        let Some(value) = root.get_ref().get("stages") else {
            return Ok(Vec::new());
        };
        let table = value.get_ref().as_table().ok_or_else(|| {
            self.src
                .error(value.span(), "`stages` must be a table of stage tables")
        })?;
        let entries: Vec<Entry> = table
            .iter()
            .map(|(name, value)| Entry {
                src: self.src,
                name,
                value,
            })
            .collect();
        self.parse_entries(&entries)
    }

    /// Expands the stages' matrices, then parses every stage. Stages parse independently,
    /// so in parallel; the first error in file order wins, so errors do not depend on
    /// thread timing.
    fn parse_entries(&self, entries: &[Entry]) -> Result<Vec<Stage>, SpanError> {
        let expanded = matrix::expand(self.src, entries)?;
        let parsed: Vec<Result<Stage, SpanError>> = expanded
            .par_iter()
            .map(|entry| {
                let parser = Parser {
                    src: entry.src,
                    ..*self
                };
                let mut stage = parser
                    .stage(&entry.name, &entry.value)
                    .map_err(|error| entry.annotate(error))?;
                stage.matrix = entry.matrix.clone();
                Ok(stage)
            })
            .collect();
        let mut stages = parsed.into_iter().collect::<Result<Vec<_>, _>>()?;
        stages.par_sort_unstable_by(|a, b| a.name.cmp(&b.name));
        default_devices_from_producers(&mut stages);
        Ok(stages)
    }

    /// The stages of the file's `[stages.NAME]` sections, parsed in parallel, each as its
    /// own document; `None` if a section is not valid TOML on its own.
    fn stages_in_sections(
        &self,
        text: &str,
        sections: &[Range<usize>],
    ) -> Option<Result<Vec<Stage>, SpanError>> {
        let roots: Vec<Option<(SourceFile, Spanned<DeTable>)>> = sections
            .par_iter()
            .map(|section| {
                let root = DeTable::parse(&text[section.clone()]).ok()?;
                Some((self.src.at(section.start), root))
            })
            .collect();
        let roots: Vec<(SourceFile, Spanned<DeTable>)> =
            roots.into_iter().collect::<Option<_>>()?;
        let entries: Vec<Entry> = roots
            .iter()
            .map(|(src, root)| {
                let stages = root.get_ref().get("stages")?.get_ref().as_table()?;
                let (name, value) = stages.iter().next()?;
                Some(Entry { src, name, value })
            })
            .collect::<Option<_>>()?;
        Some(self.parse_entries(&entries))
    }

    fn stage(
        &self,
        name: &Spanned<toml::de::DeString>,
        value: &Spanned<DeValue>,
    ) -> Result<Stage, SpanError> {
        let stage_name = name.get_ref().to_string();
        if !is_valid_name(&stage_name) {
            return Err(self
                .src
                .error(
                    name.span(),
                    format!("stage name `{}` is not valid", shorten(&stage_name)),
                )
                .with_help(format!(
                    "stage names use only a-z, 0-9, `_` and `-`, at most {MAX_NAME_LEN} of them"
                )));
        }
        let table = value.get_ref().as_table().ok_or_else(|| {
            self.src.error(
                value.span(),
                format!("stage `{stage_name}` must be a table"),
            )
        })?;
        let info = self.kind_of(&stage_name, name.span(), table)?;
        let allowed: Vec<&str> = keys_of::<CommonStageKeys>()
            .iter()
            .chain((info.keys)())
            .copied()
            .collect();
        self.check_keys(
            table,
            &allowed,
            &format!("in stage `{stage_name}` (kind `{}`)", info.name),
        )?;
        let common: CommonStageKeys = self.deserialize(&common_keys_of(table, value.span()))?;
        self.check_env(table)?;
        let kind = (info.parse)(
            &Parser {
                stage: &stage_name,
                ..*self
            },
            value,
        )?;
        let device_declared = common.device.is_some();
        let device = match &common.device {
            Some(device) => Device::parse(device.get_ref()).ok_or_else(|| {
                self.src
                    .error(
                        device.span(),
                        format!("invalid device `{}`", device.get_ref()),
                    )
                    .with_help("use \"cpu\", \"cuda\" (any GPU) or \"cuda:N\" (GPU number N)")
            })?,
            None => kind.requirements().default_device,
        };
        Ok(Stage {
            name: stage_name,
            span: self.src.shift(name.span()),
            kind,
            needs: common
                .needs
                .into_iter()
                .map(|need| Located {
                    span: self.src.shift(need.span()),
                    value: need.into_inner(),
                })
                .collect(),
            device,
            device_declared,
            resources: self.stage_resources(common.resources, table)?,
            env: common.env,
            cache: common.cache,
            placement: self.placement(common.executor, common.gpu, common.platform, device)?,
            matrix: None,
        })
    }

    /// `executor`, `gpu` and `platform`, checked: a known executor, `gpu` only on a `cuda`
    /// stage, no property pochi sets itself.
    fn placement(
        &self,
        executor: Option<Spanned<String>>,
        gpu: Option<Spanned<String>>,
        platform: Option<Spanned<BTreeMap<String, String>>>,
        device: Device,
    ) -> Result<Placement, SpanError> {
        let executor = match &executor {
            None => ExecutorChoice::Auto,
            Some(choice) => ExecutorChoice::parse(choice.get_ref()).ok_or_else(|| {
                self.src
                    .error(
                        choice.span(),
                        format!("unknown executor `{}`", choice.get_ref()),
                    )
                    .with_help("use \"auto\" (the default), \"local\" or \"remote\"")
            })?,
        };
        if let Some(gpu) = &gpu
            && !matches!(device, Device::Cuda(_))
        {
            return Err(self
                .src
                .error(gpu.span(), "`gpu` names the GPU model of a `cuda` stage")
                .with_help("set `device = \"cuda\"` on the stage, or remove `gpu`"));
        }
        let reserved = platform.as_ref().and_then(|platform| {
            let name = platform
                .get_ref()
                .keys()
                .find(|n| is_reserved_property(n))?;
            Some((name.clone(), platform.span()))
        });
        if let Some((reserved, span)) = reserved {
            return Err(self
                .src
                .error(span, format!("platform property `{reserved}` is set by pochi"))
                .with_help(
                    "name the GPU model with the stage's `gpu` key; OSFamily, ISA, cuda, compute_capability and pochi-toolchain come from the machine and the toolchain",
                ));
        }
        Ok(Placement {
            executor,
            gpu: gpu.map(|g| gpu_model(g.get_ref())),
            platform: platform.map(Spanned::into_inner).unwrap_or_default(),
        })
    }

    /// Environment variable names must be non-empty and hold no `=` or NUL; values no NUL.
    fn check_env(&self, table: &DeTable) -> Result<(), SpanError> {
        let Some(env) = table.get("env").and_then(|v| v.get_ref().as_table()) else {
            return Ok(());
        };
        for (key, value) in env.iter() {
            let name = key.get_ref();
            if name.is_empty() || name.contains('=') {
                return Err(self
                    .src
                    .error(key.span(), format!("`{name}` is not a valid environment variable name"))
                    .with_label("invalid name")
                    .with_help("a variable name is not empty and holds no `=`; write `env = { NAME = \"value\" }`"));
            }
            self.check_no_nul(
                name,
                key.span(),
                &format!("environment variable name `{name}`"),
            )?;
            if let Some(text) = value.get_ref().as_str() {
                self.check_no_nul(
                    text,
                    value.span(),
                    &format!("environment variable `{name}`"),
                )?;
            }
        }
        Ok(())
    }

    fn kind_of(
        &self,
        stage: &str,
        name_span: Range<usize>,
        table: &DeTable,
    ) -> Result<&'static KindInfo, SpanError> {
        let Some(kind) = table.get("kind") else {
            return Err(self
                .src
                .error(name_span, format!("stage `{stage}` has no `kind`"))
                .with_help("add `kind = \"command\"` (or another kind) to the stage"));
        };
        let Some(kind_name) = kind.get_ref().as_str() else {
            return Err(self.src.error(kind.span(), "`kind` must be a string"));
        };
        super::kind::lookup(self.kinds, kind_name).map_err(|hint| {
            self.src
                .error(kind.span(), format!("unknown stage kind `{kind_name}`"))
                .with_label("unknown kind")
                .with_help(hint)
        })
    }

    fn stage_resources(
        &self,
        section: Option<Spanned<StageResourcesSection>>,
        table: &DeTable,
    ) -> Result<StageResources, SpanError> {
        if let Some(resources) = table.get("resources").and_then(|v| v.get_ref().as_table()) {
            self.check_keys(
                resources,
                keys_of::<StageResourcesSection>(),
                "in a stage's `resources`",
            )?;
        }
        let Some(section) = section else {
            return Ok(StageResources {
                cpu: 1,
                memory: ByteSize(0),
            });
        };
        let span = section.span();
        let section = section.into_inner();
        if section.cpu == Some(0) {
            return Err(self
                .src
                .error(span, "a stage needs at least 1 cpu slot")
                .with_help("remove `cpu` or set it to 1 or more"));
        }
        Ok(StageResources {
            cpu: section.cpu.unwrap_or(1),
            memory: section.memory.unwrap_or(ByteSize(0)),
        })
    }

    /// Parses an input value: `@stage`, `@stage.key`, or a path relative to the pipeline.
    pub fn input(&self, key: &str, value: &Spanned<String>) -> Result<NamedInput, SpanError> {
        let raw = value.get_ref();
        let source = match raw.strip_prefix('@') {
            Some(reference) => self.reference(reference, value.span())?,
            None => {
                if raw.trim().is_empty() {
                    return Err(self
                        .src
                        .error(value.span(), format!("input `{key}` is empty")));
                }
                self.check_no_nul(raw, value.span(), &format!("input `{key}`"))?;
                let raw = self.with_build_dir(raw);
                InputSource::Path(paths::normalize(self.dir, Path::new(&raw)))
            }
        };
        Ok(NamedInput {
            key: key.to_string(),
            source,
            span: self.src.shift(value.span()),
        })
    }

    fn reference(&self, reference: &str, span: Range<usize>) -> Result<InputSource, SpanError> {
        let (stage, key) = match reference.split_once('.') {
            Some((stage, key)) => (stage, Some(key)),
            None => (reference, None),
        };
        let key_ok = key.is_none_or(|k| {
            !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        });
        if !is_valid_name(stage) || !key_ok {
            return Err(self
                .src
                .error(span, format!("`@{}` is not a valid stage reference", shorten(reference)))
                .with_help("write \"@stage\" for a stage's primary output or \"@stage.key\" for a named one"));
        }
        Ok(InputSource::Output {
            stage: stage.to_string(),
            key: key.map(str::to_string),
        })
    }

    /// Parses an output path (`{build_dir}` stands for the pipeline's build directory): it
    /// must lie inside the project.
    pub fn output(&self, key: &str, value: &Spanned<String>) -> Result<NamedOutput, SpanError> {
        self.check_no_nul(value.get_ref(), value.span(), &format!("output `{key}`"))?;
        let raw = self.with_build_dir(value.get_ref());
        let path: PathBuf = paths::normalize(self.dir, Path::new(&raw));
        if !paths::is_inside_project(&path) {
            return Err(self
                .src
                .error(value.span(), format!("output `{key}` (`{}`) is outside the project", value.get_ref()))
                .with_label("outside the project")
                .with_help(format!(
                    "outputs must be inside the pipeline's directory `{}`; use a relative path such as \"build/{key}\"",
                    self.dir.display()
                )));
        }
        self.check_output_length(key, value, &path)?;
        Ok(NamedOutput {
            key: key.to_string(),
            path,
            span: self.src.shift(value.span()),
        })
    }

    /// An output must be publishable: each name short enough for its publish sibling
    /// (`.NAME.pochi-new`), the whole path short enough for the operating system from the
    /// deepest place pochi writes it (the run's temporary directory).
    fn check_output_length(
        &self,
        key: &str,
        value: &Spanned<String>,
        path: &Path,
    ) -> Result<(), SpanError> {
        let Some(problem) = paths::unpublishable(self.dir, path) else {
            return Ok(());
        };
        Err(self
            .src
            .error(value.span(), format!("output `{key}` {}", problem.what))
            .with_label(problem.label)
            .with_help(problem.help))
    }

    /// `raw` with `{build_dir}` replaced by the pipeline's build directory.
    fn with_build_dir(&self, raw: &str) -> String {
        if raw.contains("{build_dir}") {
            raw.replace("{build_dir}", &self.build_dir.to_string_lossy())
        } else {
            raw.to_string()
        }
    }

    /// A NUL byte cannot be part of a path, an argument or an environment variable.
    pub fn check_no_nul(&self, raw: &str, span: Range<usize>, what: &str) -> Result<(), SpanError> {
        if raw.contains('\0') {
            return Err(self
                .src
                .error(span, format!("{what} contains a NUL character"))
                .with_label("NUL here")
                .with_help("remove the `\\u0000` escape: the operating system cannot pass a NUL in a path, argument or environment variable"));
        }
        Ok(())
    }
}

/// The longest stage or pipeline name: names become file names (`logs/<stage>.log`,
/// `.pochi/v1/<pipeline>/`), and file systems refuse names over 255 bytes.
pub const MAX_NAME_LEN: usize = 128;

/// The stage table with only its common keys: deserializing these must not clone the
/// kind's (often much larger) `run`, `inputs` and `outputs` (a tenth of parsing a 10,000
/// stage pipeline).
fn common_keys_of<'i>(table: &DeTable<'i>, span: Range<usize>) -> Spanned<DeValue<'i>> {
    let common_keys = keys_of::<CommonStageKeys>();
    let mut common = DeTable::new();
    for (key, value) in table.iter() {
        if common_keys.contains(&key.get_ref().as_ref()) {
            common.insert(key.clone(), value.clone());
        }
    }
    Spanned::new(span, DeValue::Table(common))
}

/// Stage and pipeline names: `[a-z0-9_-]+`, at most `MAX_NAME_LEN` characters.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// A name as shown in an error: long ones are cut (a 65,536-character name is not
/// repeated back whole).
fn shorten(name: &str) -> String {
    const SHOWN: usize = 40;
    match name.char_indices().nth(SHOWN) {
        Some((end, _)) => format!("{}... ({} characters)", &name[..end], name.chars().count()),
        None => name.to_string(),
    }
}

/// Second pass over the stages (sorted by name): a stage that names no device and whose
/// kind's `device_follows` inputs come from a stage that needs a GPU (a report over an
/// `engine` stage's output) gets `cuda`.
fn default_devices_from_producers(stages: &mut [Stage]) {
    let needs_gpu: Vec<(String, bool)> = stages
        .iter()
        .map(|s| {
            let requirements = s.kind.requirements();
            let gpu = requirements.tensorrt == super::kind::TensorRtUse::Required
                && matches!(requirements.default_device, Device::Cuda(_));
            (s.name.clone(), gpu)
        })
        .collect();
    let producer_needs_gpu = |name: &str| {
        needs_gpu
            .binary_search_by(|(n, _)| n.as_str().cmp(name))
            .is_ok_and(|i| needs_gpu[i].1)
    };
    for stage in stages.iter_mut().filter(|s| !s.device_declared) {
        let follows = stage.kind.requirements().device_follows;
        let gpu = stage.kind.inputs().iter().any(|input| {
            follows.contains(&input.key)
                && matches!(&input.source, InputSource::Output { stage, .. } if producer_needs_gpu(stage))
        });
        if gpu {
            stage.device = Device::Cuda(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pipeline of `n` command stages in a chain, with `tweak` applied to its text.
    fn chain(n: usize, tweak: impl Fn(String) -> String) -> String {
        let mut text = String::from("[pipeline]\nname = \"p\"\n\n[resources]\ncpu = 2\n\n");
        for i in 0..n {
            let input = if i == 0 {
                "src.txt".to_string()
            } else {
                format!("@s{}", i - 1)
            };
            text.push_str(&format!(
                "[stages.s{i}]\nkind = \"command\"\nrun = [\"cp\", \"{{inputs.i}}\", \"{{outputs.out}}\"]\ninputs = {{ i = \"{input}\" }}\noutputs = {{ out = \"out/{i}.txt\" }} # [stages.x]\nenv = {{ A = \"\"\"[not a header]\"\"\" }}\n\n"
            ));
        }
        tweak(text)
    }

    fn rendered(result: Result<Pipeline, PipelineError>) -> String {
        match result {
            Ok(pipeline) => format!("{pipeline:?}"),
            Err(error) => {
                let mut text = String::new();
                let handler = miette::GraphicalReportHandler::new_themed(
                    miette::GraphicalTheme::unicode_nocolor(),
                );
                handler.render_report(&mut text, &error).unwrap();
                text
            }
        }
    }

    #[test]
    fn cutting_a_large_file_at_its_stages_changes_nothing_parsed_or_reported() {
        let path = Path::new("/p/pipeline.toml");
        let tweaks: Vec<Box<dyn Fn(String) -> String>> = vec![
            Box::new(|t| t),
            Box::new(|t| t.replace("[stages.s70]\nkind", "[stages.s70]\nkinds")),
            Box::new(|t| t.replace("@s69", "@s69x")),
            Box::new(|t| t.replace("[stages.s70]\nkind = \"command\"", "[stages.s70]\nkind = ")),
            Box::new(|t| t.replace("out/70.txt", "../70.txt")),
            Box::new(|t| {
                t.replace(
                    "[stages.s70]\nkind = \"command\"",
                    "[stages.s70]\nkind = \"command\"\nneeds = 3",
                )
            }),
            Box::new(|t| t.replace("[stages.s70]", "[stages.S70]")),
            Box::new(|t| t.replace("{ i = \"@s69\" }", "{ i = \"@s69\"")),
            // Two errors: a bad pipeline name first, a TOML error in a later section.
            Box::new(|t| {
                t.replace("name = \"p\"", "name = \"P\"")
                    .replace("[stages.s90]\nkind = \"command\"", "[stages.s90]\nkind = ")
            }),
            // A matrix stage read by a plain stage (an error), then by a matrix stage (paired).
            Box::new(|t| {
                t.replace(
                    "[stages.s70]\nkind = \"command\"",
                    "[stages.s70]\nkind = \"command\"\nmatrix = { p = [\"a\", \"b\"] }",
                )
                .replace("out/70.txt", "out/70-{matrix.p}.txt")
            }),
            Box::new(|t| {
                t.replace(
                    "[stages.s70]\nkind = \"command\"",
                    "[stages.s70]\nkind = \"command\"\nmatrix = { p = [\"a\", \"b\"] }",
                )
                .replace("out/70.txt", "out/70-{matrix.p}.txt")
                .replace(
                    "[stages.s71]\nkind = \"command\"",
                    "[stages.s71]\nkind = \"command\"\nmatrix = { p = [\"b\", \"a\"] }",
                )
                .replace("out/71.txt", "out/71-{matrix.p}.txt")
                .replace("{ i = \"@s71\" }", "{ i = \"@s71-a\" }")
            }),
        ];
        for (index, tweak) in tweaks.iter().enumerate() {
            let text = chain(100, tweak);
            assert!(super::super::sections::stage_sections(&text).is_some() || index == 7);
            let cut = rendered(parse_pipeline(path, text.clone(), crate::kinds::KINDS));
            let whole = rendered(parse_document(path, text, false, crate::kinds::KINDS));
            assert_eq!(cut, whole, "tweak {index}");
            if index == 9 {
                assert!(cut.contains("is a matrix stage"), "{cut}");
            }
            if index == 10 {
                assert!(
                    cut.contains("\"s71-a\"") && cut.contains("\"s70-a\""),
                    "{cut}"
                );
            }
        }
    }

    #[test]
    fn names_are_lowercase_words() {
        assert!(is_valid_name("onnx_fp16-2"));
        assert!(!is_valid_name("Onnx"));
        assert!(!is_valid_name("a.b"));
        assert!(!is_valid_name(""));
    }
}
