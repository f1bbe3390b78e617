//! A stage's `matrix` checked (identifier keys, non-empty lists of distinct scalars of
//! one type, the variant limits) and its variants named, clashes pointing at both stages.

use std::collections::HashMap;
use std::ops::Range;

use toml::Spanned;
use toml::de::{DeString, DeValue};

use super::{
    Decl, Entry, MATRIX_KEY, MAX_VARIANTS_PER_PIPELINE, MAX_VARIANTS_PER_STAGE, MatrixValue,
    values_of,
};
use crate::pipeline::error::{SourceFile, SpanError};
use crate::pipeline::parse::{MAX_NAME_LEN, is_valid_name};

/// The stage's `matrix`, checked; `None` for a plain stage (or one whose name is not
/// valid: parsing it reports that first).
pub(super) fn declaration<'i>(entry: &Entry<'_, 'i>) -> Result<Option<Decl<'i>>, SpanError> {
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
pub(super) type Names = Vec<(String, Vec<usize>)>;

pub(super) fn name_variants(
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
pub(super) fn describe<'v>(
    keys: impl IntoIterator<Item = &'v str>,
    values: impl IntoIterator<Item = &'v MatrixValue>,
) -> String {
    keys.into_iter()
        .zip(values)
        .map(|(k, v)| format!("{k} = {}", v.display()))
        .collect::<Vec<_>>()
        .join(", ")
}
