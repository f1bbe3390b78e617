//! Parametrized stages: a stage's `matrix = { KEY = [values] }` expands, before its kind
//! parses it, into one stage per combination of values (`NAME-SEGMENT-SEGMENT`), with
//! `{matrix.KEY}` substituted in its values and `@references` to matrix stages resolved
//! to variants (every variant in a list, the matching one in a single value). Spans keep
//! pointing at the text as written. The rules are in docs/pipeline-format.md.

mod declare;
mod rewrite;

use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Range;

use rayon::prelude::*;
use toml::Spanned;
use toml::de::{DeString, DeValue};

use super::error::{SourceFile, SpanError};
use declare::{declaration, name_variants};
use rewrite::{rewrite_plain, variant};

/// The most variants one stage's matrix may make (a typo must not make 10,000 stages).
pub(crate) const MAX_VARIANTS_PER_STAGE: usize = 256;
/// The most variant stages all the matrices of one pipeline may make together.
pub(crate) const MAX_VARIANTS_PER_PIPELINE: usize = 4096;
/// The stage key that declares a matrix.
pub(crate) const MATRIX_KEY: &str = "matrix";
const PLACEHOLDER: &str = "{matrix.";

/// One value of a matrix key.
#[derive(Debug, Clone, PartialEq)]
pub enum MatrixValue {
    String(String),
    Integer(i64),
    /// A finite float, with its text as written (so `1.0` stays `1.0` in strings).
    Float(f64, String),
    Boolean(bool),
}

impl MatrixValue {
    /// The value as it reads inside a string: `{matrix.KEY}` in `"out/{matrix.KEY}.onnx"`.
    pub fn text(&self) -> String {
        match self {
            MatrixValue::String(text) | MatrixValue::Float(_, text) => text.clone(),
            MatrixValue::Integer(value) => value.to_string(),
            MatrixValue::Boolean(value) => value.to_string(),
        }
    }

    /// The value as JSON (`status --json`, `graph --format json`).
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            MatrixValue::String(text) => text.clone().into(),
            MatrixValue::Integer(value) => (*value).into(),
            MatrixValue::Float(value, _) => (*value).into(),
            MatrixValue::Boolean(value) => (*value).into(),
        }
    }

    /// The piece of a variant's name this value makes: a string as itself (lowercased,
    /// other characters than a-z, 0-9, `_` and `-` as `_`), a number after its key's
    /// first letter (`batch = 8` -> `b8`, `0.5` -> `0p5`), a boolean as its key or `no_KEY`.
    pub fn segment(&self, key: &str) -> String {
        let initial: String = key.chars().take(1).flat_map(char::to_lowercase).collect();
        match self {
            MatrixValue::String(text) => slug(text),
            MatrixValue::Integer(value) => format!("{initial}{value}"),
            MatrixValue::Float(_, text) => format!("{initial}{}", slug(&text.replace('.', "p"))),
            MatrixValue::Boolean(true) => slug(key),
            MatrixValue::Boolean(false) => format!("no_{}", slug(key)),
        }
    }

    fn type_name(&self) -> &'static str {
        match self {
            MatrixValue::String(_) => "a string",
            MatrixValue::Integer(_) => "an integer",
            MatrixValue::Float(..) => "a float",
            MatrixValue::Boolean(_) => "a boolean",
        }
    }

    /// How the value is shown in messages: as TOML writes it.
    pub fn display(&self) -> String {
        match self {
            MatrixValue::String(text) => format!("{text:?}"),
            other => other.text(),
        }
    }
}

fn slug(text: &str) -> String {
    text.chars()
        .flat_map(char::to_lowercase)
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// What a variant stage keeps of its matrix: the stage it was declared as and its values,
/// in the order the keys are declared.
#[derive(Debug, Clone, PartialEq)]
pub struct MatrixOf {
    pub base: String,
    pub values: Vec<(String, MatrixValue)>,
}

/// One `[stages.NAME]` table as the file gives it; `src` is the piece it was parsed from.
pub(crate) struct Entry<'a, 'i> {
    pub src: &'a SourceFile,
    pub name: &'a Spanned<DeString<'i>>,
    pub value: &'a Spanned<DeValue<'i>>,
}

/// One stage after expansion: a plain stage unchanged (borrowed), or a variant with its
/// own name (spanning the declared name) and table.
pub(crate) struct Expanded<'a, 'i> {
    pub src: &'a SourceFile,
    pub name: Cow<'a, Spanned<DeString<'i>>>,
    pub value: Cow<'a, Spanned<DeValue<'i>>>,
    pub matrix: Option<MatrixOf>,
    /// Where a value was made from a matrix value (the first, for a string holding several
    /// placeholders), and that value's span.
    fed: Vec<(Range<usize>, Range<usize>)>,
}

impl Expanded<'_, '_> {
    /// A kind's error about a value the matrix fed also points at the matrix value.
    pub(crate) fn annotate(&self, error: SpanError) -> SpanError {
        let Some(name) = self.matrix.as_ref().map(|_| self.name.get_ref()) else {
            return error;
        };
        let at = error.span();
        let fed = self
            .fed
            .iter()
            .find(|(site, _)| self.src.shift(site.clone()) == at);
        match fed {
            Some((_, origin)) if !error.has_also() => error
                .also(origin.clone())
                .with_suffix(format!(" (in variant `{name}`, from the matrix value)")),
            _ => error,
        }
    }
}

/// One declared matrix: its keys and their values, as written.
struct Decl<'i> {
    span: Range<usize>,
    keys: Vec<Spanned<String>>,
    values: Vec<Vec<(MatrixValue, Spanned<DeValue<'i>>)>>,
}

impl Decl<'_> {
    /// The number of combinations, saturating (a huge matrix is an error, not an overflow).
    fn count(&self) -> usize {
        self.values
            .iter()
            .fold(1usize, |n, list| n.saturating_mul(list.len()))
    }

    /// Every combination as one value index per key; the first key varies slowest.
    fn combinations(&self) -> Vec<Vec<usize>> {
        let mut all = vec![Vec::new()];
        for list in &self.values {
            all = all
                .into_iter()
                .flat_map(|prefix: Vec<usize>| {
                    (0..list.len()).map(move |i| {
                        let mut next = prefix.clone();
                        next.push(i);
                        next
                    })
                })
                .collect();
        }
        all
    }
}

/// A matrix stage's variants (in name order), for resolving references to it.
struct Family<'d> {
    keys: Vec<&'d str>,
    variants: Vec<(String, Vec<&'d MatrixValue>)>,
}

/// Expands every matrix stage of `entries` (in file order) into its variants; plain
/// stages come back borrowed unless they refer to a matrix stage. `root` is the whole
/// file, for errors that point at two stages.
pub(crate) fn expand<'a, 'i>(
    root: &SourceFile,
    entries: &[Entry<'a, 'i>],
) -> Result<Vec<Expanded<'a, 'i>>, SpanError> {
    if cannot_have_matrices(&root.text) {
        return Ok(entries.iter().map(plain).collect());
    }
    let decls: Vec<Option<Decl<'i>>> = entries
        .par_iter()
        .map(declaration)
        .collect::<Result<_, _>>()?;
    if decls.iter().all(Option::is_none) && !entries.par_iter().any(uses_placeholders) {
        return Ok(entries.iter().map(plain).collect());
    }
    let variants = name_variants(root, entries, &decls)?;
    let families: HashMap<&str, Family> = entries
        .iter()
        .zip(&decls)
        .zip(&variants)
        .filter_map(|((entry, decl), names)| {
            let decl = decl.as_ref()?;
            let mut family = Family {
                keys: decl.keys.iter().map(|k| k.get_ref().as_str()).collect(),
                variants: names
                    .iter()
                    .map(|(name, picks)| (name.clone(), values_of(decl, picks)))
                    .collect(),
            };
            // In name order: listing a matrix's values in another order changes no list.
            family.variants.sort_by(|a, b| a.0.cmp(&b.0));
            Some((entry.name.get_ref().as_ref(), family))
        })
        .collect();
    let expanded: Vec<Vec<Expanded<'a, 'i>>> = entries
        .par_iter()
        .zip(&decls)
        .zip(&variants)
        .map(|((entry, decl), names)| match decl {
            None => rewrite_plain(entry, &families),
            Some(decl) => names
                .iter()
                .map(|(name, picks)| variant(entry, decl, name, picks, &families))
                .collect(),
        })
        .collect::<Result<_, _>>()?;
    Ok(expanded.into_iter().flatten().collect())
}

/// Whether `text` can hold neither a `matrix` key nor a `{matrix.` placeholder: it never
/// spells `matrix`, and has no `\u` or `\U` escape that could. Most files, and the whole
/// pass costs one scan of the text (a 100,000-stage file would otherwise spend a tenth of
/// its parse here in a debug build).
fn cannot_have_matrices(text: &str) -> bool {
    !text.contains(MATRIX_KEY) && !text.contains("\\u") && !text.contains("\\U")
}

fn plain<'a, 'i>(entry: &Entry<'a, 'i>) -> Expanded<'a, 'i> {
    Expanded {
        src: entry.src,
        name: Cow::Borrowed(entry.name),
        value: Cow::Borrowed(entry.value),
        matrix: None,
        fed: Vec::new(),
    }
}

fn values_of<'d>(decl: &'d Decl, picks: &[usize]) -> Vec<&'d MatrixValue> {
    picks
        .iter()
        .zip(&decl.values)
        .map(|(&i, list)| &list[i].0)
        .collect()
}

/// Whether a string anywhere in `value` holds `{matrix.` or names a matrix stage (`@base`,
/// `@base.key`, `base`): only such a plain stage is copied and rewritten.
fn mentions_a_matrix(value: &DeValue, families: &HashMap<&str, Family>) -> bool {
    match value {
        DeValue::String(text) => {
            let name = text.strip_prefix('@').unwrap_or(text);
            let base = name.split_once('.').map_or(name, |(base, _)| base);
            text.contains(PLACEHOLDER) || families.contains_key(base)
        }
        DeValue::Array(items) => items
            .iter()
            .any(|v| mentions_a_matrix(v.get_ref(), families)),
        DeValue::Table(table) => table
            .values()
            .any(|v| mentions_a_matrix(v.get_ref(), families)),
        _ => false,
    }
}

/// Whether a string anywhere in the stage holds `{matrix.` (an error without a matrix).
fn uses_placeholders(entry: &Entry) -> bool {
    fn walk(value: &DeValue) -> bool {
        match value {
            DeValue::String(text) => text.contains(PLACEHOLDER),
            DeValue::Array(items) => items.iter().any(|v| walk(v.get_ref())),
            DeValue::Table(table) => table.values().any(|v| walk(v.get_ref())),
            _ => false,
        }
    }
    walk(entry.value.get_ref())
}

#[cfg(test)]
mod tests {
    use super::rewrite::substitute_text;
    use super::*;
    use crate::pipeline::{InputSource, Pipeline, parse_pipeline};
    use std::path::Path;

    fn parse(text: &str) -> Result<Pipeline, String> {
        parse_pipeline(
            Path::new("/p/pipeline.toml"),
            text.to_string(),
            crate::kinds::KINDS,
        )
        .map_err(|error| format!("{error:?}"))
    }

    fn names(pipeline: &Pipeline) -> Vec<&str> {
        pipeline.stages.iter().map(|s| s.name.as_str()).collect()
    }

    const ENGINE: &str = r#"
[stages.onnx]
kind = "command"
run = ["true"]
outputs = { out = "m.onnx" }

[stages.engine]
kind = "engine"
matrix = { precision = ["fp16", "int8"], batch = [1, 8] }
onnx = "@onnx"
precision = "{matrix.precision}"
batch = "{matrix.batch}"
output = "build/{matrix.precision}/b{matrix.batch}.engine"
"#;

    #[test]
    fn segments_are_strings_or_key_initials_with_numbers() {
        let segment = |v: MatrixValue, key: &str| v.segment(key);
        assert_eq!(
            segment(MatrixValue::String("fp16".into()), "precision"),
            "fp16"
        );
        assert_eq!(
            segment(MatrixValue::String("Cuda:0 x".into()), "d"),
            "cuda_0_x"
        );
        assert_eq!(segment(MatrixValue::Integer(8), "batch"), "b8");
        assert_eq!(segment(MatrixValue::Integer(-1), "Size"), "s-1");
        assert_eq!(
            segment(MatrixValue::Float(0.25, "0.25".into()), "overlap"),
            "o0p25"
        );
        assert_eq!(segment(MatrixValue::Boolean(true), "sparse"), "sparse");
        assert_eq!(segment(MatrixValue::Boolean(false), "sparse"), "no_sparse");
    }

    #[test]
    fn placeholders_are_replaced_and_escaped_braces_kept() {
        let value = |key: &str| Ok(format!("<{key}>"));
        assert_eq!(
            substitute_text(
                "a {matrix.x}/{matrix.y_1} {{matrix.x}} }} {inputs.i} {matrix.",
                value
            )
            .unwrap(),
            "a <x>/<y_1> {{matrix.x}} }} {inputs.i} {matrix."
        );
        assert_eq!(substitute_text("{{{matrix.x}}}", value).unwrap(), "{{<x>}}");
    }

    #[test]
    fn a_matrix_expands_into_one_typed_stage_per_combination_in_key_order() {
        let pipeline = parse(ENGINE).unwrap();
        assert_eq!(
            names(&pipeline),
            [
                "engine-fp16-b1",
                "engine-fp16-b8",
                "engine-int8-b1",
                "engine-int8-b8",
                "onnx"
            ]
        );
        let variant = &pipeline.stages[1];
        let params = variant
            .kind
            .params(&crate::pipeline::kind::sample_facts("/py"));
        assert_eq!(params["batch"]["opt"], 8, "{params}");
        assert_eq!(params["precision"], "fp16", "{params}");
        assert_eq!(
            variant.kind.outputs()[0].path,
            Path::new("build/fp16/b8.engine")
        );
        let matrix = variant.matrix.as_ref().unwrap();
        assert_eq!(matrix.base, "engine");
        assert_eq!(
            matrix.values,
            [
                ("precision".to_string(), MatrixValue::String("fp16".into())),
                ("batch".to_string(), MatrixValue::Integer(8)),
            ]
        );
        // Every variant's name points at the declared name.
        let declared = ENGINE.find("engine]").unwrap();
        assert_eq!(variant.span, declared..declared + "engine".len());
        assert!(pipeline.stages[4].matrix.is_none());
    }

    fn source_of(pipeline: &Pipeline, stage: &str, input: usize) -> InputSource {
        let stage = pipeline.stages.iter().find(|s| s.name == stage).unwrap();
        stage.kind.inputs()[input].source.clone()
    }

    fn output_of(stage: &str) -> InputSource {
        InputSource::Output {
            stage: stage.into(),
            key: None,
        }
    }

    #[test]
    fn a_single_reference_pairs_variants_and_a_list_takes_them_all() {
        // The values listed out of order: lists still name the variants in name order.
        let engine = ENGINE.replace("batch = [1, 8]", "batch = [8, 1]");
        let text = format!(
            "{engine}
[stages.check]
kind = \"command\"
matrix = {{ batch = [8, 1], precision = [\"int8\"] }}
run = [\"true\", \"@engine\"]
inputs = {{ e = \"@engine\", m = \"@engine.manifest\" }}
outputs = {{ out = \"c/{{matrix.batch}}\" }}
needs = [\"engine\", \"onnx\"]

[stages.report]
kind = \"report\"
models = [\"@onnx\", \"@engine\"]
data = \"d.npy\"
"
        );
        let pipeline = parse(&text).unwrap();
        assert_eq!(
            source_of(&pipeline, "check-b8-int8", 0),
            output_of("engine-int8-b8")
        );
        assert_eq!(
            source_of(&pipeline, "check-b1-int8", 1),
            InputSource::Output {
                stage: "engine-int8-b1".into(),
                key: Some("manifest".into())
            }
        );
        let check = pipeline
            .stages
            .iter()
            .find(|s| s.name == "check-b1-int8")
            .unwrap();
        let needs: Vec<&str> = check.needs.iter().map(|n| n.value.as_str()).collect();
        assert_eq!(
            needs,
            [
                "engine-fp16-b1",
                "engine-fp16-b8",
                "engine-int8-b1",
                "engine-int8-b8",
                "onnx"
            ]
        );
        // `run` is text: "@engine" stays as written.
        assert!(
            format!(
                "{:?}",
                check
                    .kind
                    .params(&crate::pipeline::kind::sample_facts("/py"))
            )
            .contains("@engine\"")
        );
        let report = pipeline.stages.iter().find(|s| s.name == "report").unwrap();
        let models: Vec<InputSource> = report.kind.inputs()[..5]
            .iter()
            .map(|i| i.source.clone())
            .collect();
        assert_eq!(
            models,
            [
                "onnx",
                "engine-fp16-b1",
                "engine-fp16-b8",
                "engine-int8-b1",
                "engine-int8-b8"
            ]
            .map(output_of)
        );
    }

    #[test]
    fn errors_point_at_the_matrix() {
        let error = |matrix: &str| {
            parse(&ENGINE.replace(
                "{ precision = [\"fp16\", \"int8\"], batch = [1, 8] }",
                matrix,
            ))
            .unwrap_err()
        };
        assert!(error("{}").contains("`matrix` is empty"));
        assert!(
            error("{ precision = [], batch = [1] }")
                .contains("`matrix.precision` is an empty list")
        );
        assert!(error("{ precision = \"fp16\", batch = [1] }").contains("must be a list"));
        assert!(
            error("{ \"pre-cision\" = [\"fp16\"], batch = [1] }")
                .contains("matrix key `pre-cision` is not an identifier")
        );
        assert!(
            error("{ precision = [\"fp16\", 1], batch = [1] }").contains("not all of one type")
        );
        assert!(
            error("{ precision = [\"fp16\", \"fp16\"], batch = [1] }").contains("appears twice")
        );
        assert!(
            error("{ precision = [\"fp16\", \"FP16\"], batch = [1] }")
                .contains("has the name of another stage or variant")
        );
        assert!(error("{ precision = [[1]], batch = [1] }").contains("not array"));
        assert!(error("{ precision = [nan], batch = [1] }").contains("not finite"));
        let many: Vec<String> = (0..17).map(|i| i.to_string()).collect();
        let many = format!("[{}]", many.join(", "));
        let message = error(&format!(
            "{{ precision = [\"fp16\"], batch = {many}, x = {many} }}"
        ));
        assert!(
            message.contains("makes 289 variants; at most 256"),
            "{message}"
        );
        let wrong = error("{ precision = [\"fp16\"], batch = [\"one\"] }");
        assert!(
            wrong.contains("(in variant `engine-fp16-one`, from the matrix value)"),
            "{wrong}"
        );
        let unknown =
            parse(&ENGINE.replace("{matrix.batch}.engine", "{matrix.bacth}.engine")).unwrap_err();
        assert!(
            unknown.contains("unknown matrix key `bacth`")
                && unknown.contains("did you mean `batch`?"),
            "{unknown}"
        );
    }

    #[test]
    fn the_pipeline_limit_counts_every_matrix() {
        let values: Vec<String> = (0..256).map(|i| i.to_string()).collect();
        let mut text = String::new();
        for s in 0..17 {
            text.push_str(&format!(
                "[stages.s{s}]\nkind = \"command\"\nmatrix = {{ n = [{}] }}\nrun = [\"true\"]\noutputs = {{ o = \"o/{s}/{{matrix.n}}\" }}\n",
                values.join(", ")
            ));
        }
        let message = parse(&text).unwrap_err();
        assert!(
            message.contains("make more than 4096 variant stages"),
            "{message}"
        );
        let at_the_limit = &text[..text.find("[stages.s16]").unwrap()];
        assert_eq!(parse(at_the_limit).unwrap().stages.len(), 4096);
    }
}
