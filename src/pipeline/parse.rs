//! Parsing `pipeline.toml`: TOML with spans, unknown keys rejected with a suggestion, every
//! value checked, then handed to the stage kind that owns the stage's own keys.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::error::{PipelineError, SourceFile, SpanError};
use super::keys::keys_of;
use super::kind::Registry;
use super::suggest;
use super::tables::{PipelineSection, ResourcesSection, ToolchainSection};
use super::{
    DeclaredResources, Device, InputSource, NamedInput, NamedOutput, Pipeline, Stage,
    ToolchainSpec, paths,
};

/// The top level's tables (no struct deserializes the whole document).
const TOP_KEYS: &[&str] = &["pipeline", "toolchain", "resources", "stages"];

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
    let file = absolute_file(path)?;
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
    let head = parser.head(&root, &file)?;
    let stage_parser = Parser {
        build_dir: &head.build_dir,
        ..parser
    };
    let stages = match sections.map(|s| stage_parser.stages_in_sections(&text, &s.stages)) {
        Some(Some(stages)) => stages?,
        // No sections, or one is not TOML on its own: the whole file, as one document.
        Some(None) => return parse_document(path, src.text.to_string(), false, kinds),
        None => stage_parser.stages(&root)?,
    };
    parser.check_whole(&root, &stages, &head.resources)?;
    Ok(Pipeline {
        name: head.name,
        file,
        dir: dir.clone(),
        source: src.clone(),
        build_dir: head.build_dir,
        toolchain: head.toolchain,
        resources: head.resources,
        stages,
    })
}

/// The pipeline file's absolute path. `..` is resolved lexically, so
/// `../seg/pipeline.toml` has the same project root as its absolute path
/// (`std::path::absolute` keeps `..`).
fn absolute_file(path: &Path) -> Result<PathBuf, PipelineError> {
    let absolute = std::path::absolute(path).map_err(|source| PipelineError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(paths::lexical_clean(&absolute))
}

/// The top level besides the stages: `[pipeline]`, `[toolchain]` and `[resources]`.
struct Head {
    name: String,
    /// Relative to the pipeline directory.
    build_dir: PathBuf,
    toolchain: ToolchainSpec,
    resources: DeclaredResources,
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

    /// The top level's keys checked, and its tables besides the stages parsed.
    fn head(&self, root: &Spanned<DeTable>, file: &Path) -> Result<Head, SpanError> {
        self.check_keys(root.get_ref(), TOP_KEYS, "at the top level")?;
        let section: PipelineSection = self.section(root, "pipeline")?;
        let toolchain: ToolchainSection = self.section(root, "toolchain")?;
        let resources: ResourcesSection = self.section(root, "resources")?;
        let name = self.pipeline_name(root, section.name, file)?;
        let build_dir = section
            .build_dir
            .map(|raw| paths::normalize(self.dir, Path::new(&raw)))
            .unwrap_or_else(|| Path::new("build").join(&name));
        Ok(Head {
            name,
            build_dir,
            toolchain: ToolchainSpec {
                python: toolchain
                    .python
                    .map(|raw| paths::normalize(self.dir, Path::new(&raw))),
            },
            resources: DeclaredResources {
                cpu: resources.cpu,
                memory: resources.memory,
                gpus: resources.gpus,
            },
        })
    }

    /// What is checked once the stages are parsed: there is one, and `resources.cpu` is
    /// not 0 (in that order, after the stages' own errors).
    fn check_whole(
        &self,
        root: &Spanned<DeTable>,
        stages: &[Stage],
        resources: &DeclaredResources,
    ) -> Result<(), SpanError> {
        if stages.is_empty() {
            let span = root
                .get_ref()
                .get("stages")
                .map(|v| v.span())
                .unwrap_or(0..0);
            return Err(self
                .src
                .error(span, "the pipeline declares no stages")
                .with_help("add a stage, e.g. `[stages.hello]` with `kind = \"command\"`, `run = [\"sh\", \"-c\", \"echo hi > {outputs.out}\"]` and `outputs = { out = \"build/hello.txt\" }`"));
        }
        if resources.cpu == Some(0) {
            return Err(self.key_error(root, "resources", "`resources.cpu` must be at least 1"));
        }
        Ok(())
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
}

impl Parser<'_> {
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
    /// deepest place pochi writes it (the stage's temporary directory).
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
pub(super) const MAX_NAME_LEN: usize = 128;

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
pub(super) fn shorten(name: &str) -> String {
    const SHOWN: usize = 40;
    match name.char_indices().nth(SHOWN) {
        Some((end, _)) => format!("{}... ({} characters)", &name[..end], name.chars().count()),
        None => name.to_string(),
    }
}

/// Second pass over the stages (sorted by name): a stage that names no device and whose
/// kind's `device_follows` inputs come from a stage that needs a GPU (a report over an
/// `engine` stage's output) gets `cuda`.
pub(super) fn default_devices_from_producers(stages: &mut [Stage]) {
    let needs_gpu: Vec<(String, bool)> = stages
        .iter()
        .map(|s| {
            let requirements = s.kind.requirements();
            let gpu = requirements.accelerator.is_required()
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
