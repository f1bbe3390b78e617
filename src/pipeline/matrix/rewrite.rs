//! One stage's table rewritten for one variant: `{matrix.KEY}` substituted (a whole
//! placeholder takes the value's type), references to matrix stages resolved to every
//! variant (in a list) or the paired one (in a single value).

use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Range;

use toml::Spanned;
use toml::de::{DeArray, DeValue};

use super::declare::describe;
use super::{
    Decl, Entry, Expanded, Family, MATRIX_KEY, MatrixOf, MatrixValue, PLACEHOLDER,
    mentions_a_matrix, plain,
};
use crate::pipeline::error::{SourceFile, SpanError};
use crate::pipeline::suggest;

/// A plain stage: borrowed unless it refers to a matrix stage (then those references are
/// resolved) or writes `{matrix.KEY}` (an error: it has no matrix).
pub(super) fn rewrite_plain<'a, 'i>(
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

pub(super) fn variant<'a, 'i>(
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
            let mut first = None;
            let text = substitute_text(text, |key| {
                let index = self.key_index(key, span.clone())?;
                first.get_or_insert(index);
                Ok(self.values[index].0.text())
            })?;
            if let Some(index) = first {
                self.fed.push((span.clone(), self.values[index].1.span()));
            }
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
pub(super) fn substitute_text(
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
