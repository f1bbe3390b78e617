//! Parametrized stages: a stage's `matrix = { KEY = [values] }` expands, before its kind
//! parses it, into one stage per combination of values (`NAME-SEGMENT-SEGMENT`), with
//! `{matrix.KEY}` substituted in its values and `@references` to matrix stages resolved
//! to variants (every variant in a list, the matching one in a single value). Spans keep
//! pointing at the text as written. The rules are in docs/pipeline-format.md.

use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Range;

use rayon::prelude::*;
use toml::Spanned;
use toml::de::{DeArray, DeString, DeValue};

use super::error::{SourceFile, SpanError};
use super::parse::{MAX_NAME_LEN, is_valid_name};
use super::suggest;

/// The most variants one stage's matrix may make (a typo must not make 10,000 stages).
pub const MAX_VARIANTS_PER_STAGE: usize = 256;
/// The most variant stages all the matrices of one pipeline may make together.
pub const MAX_VARIANTS_PER_PIPELINE: usize = 4096;
/// The stage key that declares a matrix.
pub const MATRIX_KEY: &str = "matrix";
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
    /// Where a whole value was replaced by a matrix value, and that value's span.
    fed: Vec<(Range<usize>, Range<usize>)>,
}

impl Expanded<'_, '_> {
    /// A kind's error about a value the matrix fed also points at the matrix value.
    pub fn annotate(&self, error: SpanError) -> SpanError {
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
                .with_suffix(format!(" (the matrix value of variant `{name}`)")),
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

/// The stage's `matrix`, checked; `None` for a plain stage (or one whose name is not
/// valid: parsing it reports that first).
fn declaration<'i>(entry: &Entry<'_, 'i>) -> Result<Option<Decl<'i>>, SpanError> {
    let Some(table) = entry.value.get_ref().as_table() else {
        return Ok(None);
    };
    let Some(matrix) = table.get(MATRIX_KEY) else {
        return Ok(None);
    };
    if !is_valid_name(entry.name.get_ref()) {
        return Ok(None);
    }
    let src = entry.src;
    let Some(keys) = matrix.get_ref().as_table() else {
        return Err(src
            .error(matrix.span(), "`matrix` must be a table of lists")
            .with_help("write matrix = { precision = [\"fp16\", \"int8\"], batch = [1, 8] }"));
    };
    if keys.is_empty() {
        return Err(src
            .error(matrix.span(), "`matrix` is empty")
            .with_label("no keys")
            .with_help("give it at least one key with a list of values, e.g. matrix = { precision = [\"fp16\", \"int8\"] }, or remove it"));
    }
    let mut decl = Decl {
        span: matrix.span(),
        keys: Vec::new(),
        values: Vec::new(),
    };
    for (key, list) in keys.iter() {
        check_key(src, key)?;
        decl.values.push(key_values(src, key.get_ref(), list)?);
        decl.keys
            .push(Spanned::new(key.span(), key.get_ref().to_string()));
    }
    let count = decl.count();
    if count > MAX_VARIANTS_PER_STAGE {
        return Err(src
            .error(matrix.span(), format!("the matrix of stage `{}` makes {} variants; at most {MAX_VARIANTS_PER_STAGE} are allowed", entry.name.get_ref(), shown_count(count)))
            .with_label("too many combinations")
            .with_help("check the lists for a typo; split the stage into several if you really need more variants"));
    }
    Ok(Some(decl))
}

fn shown_count(count: usize) -> String {
    if count == usize::MAX {
        "more than 18446744073709551614".into()
    } else {
        count.to_string()
    }
}

/// A matrix key is an identifier, so that `{matrix.KEY}` can name it.
fn check_key(src: &SourceFile, key: &Spanned<DeString>) -> Result<(), SpanError> {
    let name = key.get_ref();
    let mut chars = name.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        return Ok(());
    }
    Err(src
        .error(key.span(), format!("matrix key `{}` is not an identifier", name.escape_debug()))
        .with_label("not an identifier")
        .with_help("a matrix key uses letters, digits and `_` and does not start with a digit (it is written `{matrix.KEY}`), e.g. `batch_size`"))
}

/// The values of one key: a non-empty list of strings, integers, floats or booleans, all
/// of one type, none twice.
fn key_values<'i>(
    src: &SourceFile,
    key: &str,
    list: &Spanned<DeValue<'i>>,
) -> Result<Vec<(MatrixValue, Spanned<DeValue<'i>>)>, SpanError> {
    let Some(items) = list.get_ref().as_array() else {
        return Err(src
            .error(
                list.span(),
                format!("`matrix.{key}` must be a list of values"),
            )
            .with_label("not a list")
            .with_help(format!(
                "write {key} = [...], e.g. {key} = [\"fp16\", \"int8\"]"
            )));
    };
    if items.is_empty() {
        return Err(src
            .error(list.span(), format!("`matrix.{key}` is an empty list"))
            .with_label("no values")
            .with_help("an empty list would make no stages at all; give it at least one value or remove the key"));
    }
    let mut values: Vec<(MatrixValue, Spanned<DeValue<'i>>)> = Vec::with_capacity(items.len());
    for item in items.iter() {
        let value = matrix_value(src, key, item)?;
        if let Some((first, _)) = values.first()
            && std::mem::discriminant(first) != std::mem::discriminant(&value)
        {
            return Err(src
                .error(
                    item.span(),
                    format!(
                        "the values of `matrix.{key}` are not all of one type: {} is {}, {} is {}",
                        first.display(),
                        first.type_name(),
                        value.display(),
                        value.type_name()
                    ),
                )
                .also(values[0].1.span())
                .with_help("give a key values of one type; quote them all to make strings"));
        }
        if let Some((_, twin)) = values.iter().find(|(v, _)| *v == value) {
            return Err(src
                .error(
                    item.span(),
                    format!(
                        "the value {} appears twice in `matrix.{key}`",
                        value.display()
                    ),
                )
                .also(twin.span())
                .with_label("the same value again")
                .with_help("two equal values would make two identical variants; remove one"));
        }
        values.push((value, item.clone()));
    }
    Ok(values)
}

fn matrix_value(
    src: &SourceFile,
    key: &str,
    item: &Spanned<DeValue>,
) -> Result<MatrixValue, SpanError> {
    let value = match item.get_ref() {
        DeValue::String(text) => {
            if text.is_empty() || text.contains(['{', '}']) {
                return Err(src
                    .error(item.span(), format!("`matrix.{key}` holds a string that cannot be a matrix value"))
                    .with_label("empty, or holding a brace")
                    .with_help("a string value names its variants, so it is not empty, and it holds no `{` or `}`"));
            }
            Some(MatrixValue::String(text.to_string()))
        }
        DeValue::Integer(int) => i64::from_str_radix(int.as_str(), int.radix())
            .ok()
            .map(MatrixValue::Integer),
        DeValue::Float(float) => float
            .as_str()
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(|f| MatrixValue::Float(f, float.as_str().to_string())),
        DeValue::Boolean(value) => Some(MatrixValue::Boolean(*value)),
        _ => {
            return Err(src
                .error(item.span(), format!("a value of `matrix.{key}` must be a string, an integer, a float or a boolean, not {}", item.get_ref().type_str()))
                .with_help("lists and tables cannot be matrix values; give each combination a scalar and derive the rest from it"));
        }
    };
    value.ok_or_else(|| {
        src.error(
            item.span(),
            format!("a value of `matrix.{key}` is out of range or not finite"),
        )
        .with_help("use an integer that fits in 64 bits, or a finite float")
    })
}

/// Each matrix stage's variant names (with their value picks), checked against each other
/// and against every stage name: a clash is an error pointing at both.
type Names = Vec<(String, Vec<usize>)>;

fn name_variants(
    root: &SourceFile,
    entries: &[Entry],
    decls: &[Option<Decl>],
) -> Result<Vec<Names>, SpanError> {
    let abs = |entry: &Entry, span: Range<usize>| entry.src.shift(span);
    let mut taken: HashMap<String, Range<usize>> = HashMap::new();
    for entry in entries {
        taken.insert(
            entry.name.get_ref().to_string(),
            abs(entry, entry.name.span()),
        );
    }
    let mut total = 0usize;
    let mut all = Vec::with_capacity(entries.len());
    for (entry, decl) in entries.iter().zip(decls) {
        let Some(decl) = decl else {
            all.push(Vec::new());
            continue;
        };
        total += decl.count();
        if total > MAX_VARIANTS_PER_PIPELINE {
            return Err(root
                .error(abs(entry, decl.span.clone()), format!("the pipeline's matrices make more than {MAX_VARIANTS_PER_PIPELINE} variant stages"))
                .with_label("this matrix crosses the limit")
                .with_help("check the lists for a typo; a pipeline's matrices make at most that many stages together"));
        }
        let base = entry.name.get_ref();
        let mut names = Vec::with_capacity(decl.count());
        for picks in decl.combinations() {
            let name = variant_name(base, decl, &picks);
            let span = abs(entry, entry.name.span());
            if !is_valid_name(&name) {
                return Err(root
                    .error(abs(entry, decl.span.clone()), format!("the variant name `{}...` of stage `{base}` is longer than {MAX_NAME_LEN} characters", &name[..name.floor_char_boundary(40)]))
                    .with_help("shorten the stage's name or its string values"));
            }
            if let Some(other) = taken.insert(name.clone(), span.clone()) {
                return Err(clash(root, &name, base, decl, &picks, span, other));
            }
            names.push((name, picks));
        }
        all.push(names);
    }
    Ok(all)
}

fn variant_name(base: &str, decl: &Decl, picks: &[usize]) -> String {
    let mut name = base.to_string();
    for ((key, list), &i) in decl.keys.iter().zip(&decl.values).zip(picks) {
        name.push('-');
        name.push_str(&list[i].0.segment(key.get_ref()));
    }
    name
}

fn clash(
    root: &SourceFile,
    name: &str,
    base: &str,
    decl: &Decl,
    picks: &[usize],
    span: Range<usize>,
    other: Range<usize>,
) -> SpanError {
    let values = describe(
        decl.keys.iter().map(|k| k.get_ref().as_str()),
        values_of(decl, picks),
    );
    root.error(
        span,
        format!("the variant `{name}` of stage `{base}` ({values}) has the name of another stage or variant"),
    )
    .with_label("variant declared here")
    .also(other)
    .with_help("variant names are NAME-VALUE-...; rename a stage, or make the values differ after lowercasing and with characters other than a-z, 0-9, `_` and `-` as `_`")
}

/// `precision = "fp16", batch = 1`
fn describe<'v>(
    keys: impl IntoIterator<Item = &'v str>,
    values: impl IntoIterator<Item = &'v MatrixValue>,
) -> String {
    keys.into_iter()
        .zip(values)
        .map(|(k, v)| format!("{k} = {}", v.display()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A plain stage: borrowed unless it refers to a matrix stage (then those references are
/// resolved) or writes `{matrix.KEY}` (an error: it has no matrix).
fn rewrite_plain<'a, 'i>(
    entry: &Entry<'a, 'i>,
    families: &HashMap<&str, Family>,
) -> Result<Vec<Expanded<'a, 'i>>, SpanError> {
    if !mentions_a_matrix(entry.value.get_ref(), families) {
        return Ok(vec![plain(entry)]);
    }
    let mut rewriter = Rewriter {
        src: entry.src,
        stage: entry.name.get_ref(),
        keys: &[],
        values: Vec::new(),
        families,
        fed: Vec::new(),
        changed: false,
    };
    let mut value = entry.value.clone();
    rewriter.stage_table(&mut value)?;
    if !rewriter.changed {
        return Ok(vec![plain(entry)]);
    }
    Ok(vec![Expanded {
        src: entry.src,
        name: Cow::Borrowed(entry.name),
        value: Cow::Owned(value),
        matrix: None,
        fed: Vec::new(),
    }])
}

fn variant<'a, 'i>(
    entry: &Entry<'a, 'i>,
    decl: &Decl<'i>,
    name: &str,
    picks: &[usize],
    families: &HashMap<&str, Family>,
) -> Result<Expanded<'a, 'i>, SpanError> {
    let mut rewriter = Rewriter {
        src: entry.src,
        stage: entry.name.get_ref(),
        keys: &decl.keys,
        values: picks
            .iter()
            .zip(&decl.values)
            .map(|(&i, list)| &list[i])
            .collect(),
        families,
        fed: Vec::new(),
        changed: true,
    };
    let mut value = entry.value.clone();
    if let DeValue::Table(table) = value.get_mut() {
        table.remove(MATRIX_KEY);
    }
    rewriter.stage_table(&mut value)?;
    Ok(Expanded {
        src: entry.src,
        name: Cow::Owned(Spanned::new(
            entry.name.span(),
            Cow::Owned(name.to_string()),
        )),
        value: Cow::Owned(value),
        matrix: Some(MatrixOf {
            base: entry.name.get_ref().to_string(),
            values: decl
                .keys
                .iter()
                .zip(&rewriter.values)
                .map(|(k, (v, _))| (k.get_ref().clone(), v.clone()))
                .collect(),
        }),
        fed: rewriter.fed,
    })
}

/// Where in a stage a value sits: `run` and `env` are text (a whole `{matrix.KEY}` stays
/// a string, `@` is not a reference), `needs` lists stage names, the rest may hold
/// `@references`.
#[derive(Clone, Copy, PartialEq)]
enum Place {
    Text,
    Needs,
    Values,
}

/// Rewrites one stage's table for one variant (or a plain stage, with no keys).
struct Rewriter<'r, 'i> {
    src: &'r SourceFile,
    stage: &'r str,
    keys: &'r [Spanned<String>],
    values: Vec<&'r (MatrixValue, Spanned<DeValue<'i>>)>,
    families: &'r HashMap<&'r str, Family<'r>>,
    fed: Vec<(Range<usize>, Range<usize>)>,
    changed: bool,
}

impl<'i> Rewriter<'_, 'i> {
    fn stage_table(&mut self, value: &mut Spanned<DeValue<'i>>) -> Result<(), SpanError> {
        let DeValue::Table(table) = value.get_mut() else {
            return Ok(());
        };
        for (key, item) in table.iter_mut() {
            let place = match key.get_ref().as_ref() {
                "run" | "env" => Place::Text,
                "needs" => Place::Needs,
                "kind" => continue,
                _ => Place::Values,
            };
            self.value(item, place)?;
        }
        Ok(())
    }

    fn value(&mut self, item: &mut Spanned<DeValue<'i>>, place: Place) -> Result<(), SpanError> {
        if item.get_ref().is_str() {
            self.substitute(item, place)?;
            if place == Place::Values {
                self.pick_variant(item)?;
            }
            return Ok(());
        }
        match item.get_mut() {
            DeValue::Array(items) => {
                for element in items.iter_mut() {
                    self.value_in_list(element, place)?;
                }
                if place != Place::Text {
                    self.expand_list(items, place);
                }
            }
            DeValue::Table(table) => {
                for (_, element) in table.iter_mut() {
                    self.value(element, place)?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// An element of a list: substituted; a reference in it names every variant (below).
    fn value_in_list(
        &mut self,
        element: &mut Spanned<DeValue<'i>>,
        place: Place,
    ) -> Result<(), SpanError> {
        match element.get_ref() {
            DeValue::String(_) => self.substitute(element, place),
            _ => self.value(element, place),
        }
    }

    /// `{matrix.KEY}` in a string replaced by the value; a string that is only
    /// `{matrix.KEY}` (outside `run` and `env`) becomes the value, with its type.
    fn substitute(
        &mut self,
        item: &mut Spanned<DeValue<'i>>,
        place: Place,
    ) -> Result<(), SpanError> {
        let span = item.span();
        let Some(text) = item.get_ref().as_str().filter(|t| t.contains(PLACEHOLDER)) else {
            return Ok(());
        };
        let whole = text
            .strip_prefix(PLACEHOLDER)
            .and_then(|rest| rest.strip_suffix('}'))
            .filter(|key| !key.contains(['{', '}']));
        if let (Some(key), true) = (whole, place != Place::Text) {
            let index = self.key_index(key, span.clone())?;
            let (_, origin) = self.values[index];
            self.fed.push((span.clone(), origin.span()));
            *item = Spanned::new(span, origin.get_ref().clone());
        } else {
            let text = substitute_text(text, |key| {
                self.key_index(key, span.clone())
                    .map(|i| self.values[i].0.text())
            })?;
            *item = Spanned::new(span, DeValue::String(Cow::Owned(text)));
        }
        self.changed = true;
        Ok(())
    }

    fn key_index(&self, key: &str, span: Range<usize>) -> Result<usize, SpanError> {
        if let Some(index) = self.keys.iter().position(|k| k.get_ref() == key) {
            return Ok(index);
        }
        if self.keys.is_empty() {
            return Err(self
                .src
                .error(span, format!("`{{matrix.{key}}}` in stage `{}`, which has no matrix", self.stage))
                .with_label("no matrix value")
                .with_help(format!("declare `matrix = {{ {key} = [...] }}` in the stage; in `run`, write `{{{{matrix.{key}}}}}` for the text itself")));
        }
        let keys: Vec<&str> = self.keys.iter().map(|k| k.get_ref().as_str()).collect();
        Err(self
            .src
            .error(
                span,
                format!("unknown matrix key `{key}` in `{{matrix.{key}}}`"),
            )
            .with_label("not a key of this stage's matrix")
            .with_help(suggest::hint(key, &keys)))
    }

    /// A single `@stage` or `@stage.key` naming a matrix stage becomes the one variant
    /// whose values agree with this variant's on the keys they share.
    fn pick_variant(&mut self, item: &mut Spanned<DeValue<'i>>) -> Result<(), SpanError> {
        let Some((base, key, family)) = item.get_ref().as_str().and_then(|t| self.reference(t))
        else {
            return Ok(());
        };
        let candidates: Vec<&str> = family
            .variants
            .iter()
            .filter(|(_, values)| self.agrees(family, values))
            .map(|(name, _)| name.as_str())
            .collect();
        let [chosen] = candidates[..] else {
            return Err(self.ambiguous(item.span(), base, family, &candidates));
        };
        let text = match key {
            Some(key) => format!("@{chosen}.{key}"),
            None => format!("@{chosen}"),
        };
        *item = Spanned::new(item.span(), DeValue::String(Cow::Owned(text)));
        self.changed = true;
        Ok(())
    }

    /// `@base` or `@base.key` where `base` is a matrix stage.
    fn reference<'t>(&self, text: &'t str) -> Option<(&'t str, Option<&'t str>, &'_ Family<'_>)> {
        let reference = text.strip_prefix('@')?;
        let (base, key) = match reference.split_once('.') {
            Some((base, key)) => (base, Some(key)),
            None => (reference, None),
        };
        self.families.get(base).map(|family| (base, key, family))
    }

    fn agrees(&self, family: &Family, values: &[&MatrixValue]) -> bool {
        self.keys.iter().zip(&self.values).all(|(key, (mine, _))| {
            family
                .keys
                .iter()
                .position(|k| *k == key.get_ref())
                .is_none_or(|i| values[i] == mine)
        })
    }

    fn ambiguous(
        &self,
        span: Range<usize>,
        base: &str,
        family: &Family,
        candidates: &[&str],
    ) -> SpanError {
        let listed = |names: &[&str]| {
            names
                .iter()
                .map(|n| format!("\"@{n}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let all: Vec<&str> = family.variants.iter().map(|(n, _)| n.as_str()).collect();
        if candidates.is_empty() {
            let mine = describe(
                self.keys.iter().map(|k| k.get_ref().as_str()),
                self.values.iter().map(|(v, _)| v),
            );
            return self
                .src
                .error(
                    span,
                    format!("no variant of `{base}` matches this stage's {mine}"),
                )
                .with_label("no matching variant")
                .with_help(format!(
                    "`{base}`'s variants are {}; add the value to its matrix or name a variant",
                    listed(&all)
                ));
        }
        let count = if candidates.len() == all.len() {
            format!("a matrix stage of {} variants", all.len())
        } else {
            format!(
                "a matrix stage; {} of its variants match this stage's values",
                candidates.len()
            )
        };
        let keys: Vec<String> = family.keys.iter().map(|k| format!("`{k}`")).collect();
        self.src
            .error(span, format!("`@{base}` is {count}, and this value takes one"))
            .with_label("which variant?")
            .with_help(format!(
                "name one of {}, or give stage `{}` a matrix with the keys {} so each of its variants reads its own",
                listed(candidates),
                self.stage,
                keys.join(", ")
            ))
    }

    /// In a list, `@base` (or `base` in `needs`) of a matrix stage names every variant.
    fn expand_list(&mut self, items: &mut DeArray<'i>, place: Place) {
        let expands = |item: &Spanned<DeValue>| {
            item.get_ref().as_str().is_some_and(|t| match place {
                Place::Needs => self.families.contains_key(t),
                _ => self.reference(t).is_some(),
            })
        };
        if !items.iter().any(expands) {
            return;
        }
        let mut expanded = DeArray::new();
        for item in items.iter() {
            let Some(text) = item.get_ref().as_str().filter(|_| expands(item)) else {
                expanded.push(item.clone());
                continue;
            };
            for name in self.every_variant(text, place) {
                expanded.push(Spanned::new(item.span(), DeValue::String(Cow::Owned(name))));
            }
        }
        *items = expanded;
        self.changed = true;
    }

    fn every_variant(&self, text: &str, place: Place) -> Vec<String> {
        if let Some(family) = self.families.get(text).filter(|_| place == Place::Needs) {
            return family.variants.iter().map(|(n, _)| n.clone()).collect();
        }
        let Some((_, key, family)) = self.reference(text) else {
            return vec![text.to_string()];
        };
        family
            .variants
            .iter()
            .map(|(name, _)| match key {
                Some(key) => format!("@{name}.{key}"),
                None => format!("@{name}"),
            })
            .collect()
    }
}

/// `text` with each `{matrix.KEY}` replaced by `value(KEY)`; `{{` and `}}` stay as
/// written (the kinds read them as literal braces).
fn substitute_text(
    text: &str,
    mut value: impl FnMut(&str) -> Result<String, SpanError>,
) -> Result<String, SpanError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(['{', '}']) {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            out.push_str(&tail[..2]);
            rest = &tail[2..];
            continue;
        }
        let placeholder = tail
            .strip_prefix(PLACEHOLDER)
            .and_then(|after| after.find('}').map(|end| &after[..end]))
            .filter(|key| !key.contains('{'));
        match placeholder {
            Some(key) => {
                out.push_str(&value(key)?);
                rest = &tail[PLACEHOLDER.len() + key.len() + 1..];
            }
            None => {
                out.push_str(&tail[..1]);
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{InputSource, Pipeline, parse_pipeline};
    use std::path::Path;

    fn parse(text: &str) -> Result<Pipeline, String> {
        parse_pipeline(Path::new("/p/pipeline.toml"), text.to_string())
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
        let params = variant.kind.params();
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
        assert!(format!("{:?}", check.kind.params()).contains("@engine\""));
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
            wrong.contains("(the matrix value of variant `engine-fp16-one`)"),
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
