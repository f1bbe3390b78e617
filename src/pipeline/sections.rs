//! Finding the `[stages.NAME]` sections of a pipeline file without parsing it, so that a
//! large pipeline's stages can be parsed as separate TOML documents in parallel (the TOML
//! parser is single-threaded, and was most of loading a 100,000-stage file). The scan only
//! tracks what decides where a table header can start: strings (basic, literal and their
//! multi-line forms, with escapes), comments and the nesting of arrays and inline tables.
//! Anything it is not sure of returns `None`, and the whole file is parsed as one document.

use std::ops::Range;

/// The file cut at its stage headers: `prefix` (everything before the first stage header:
/// `[pipeline]`, `[toolchain]`, `[resources]`) and one range per `[stages.NAME]` section,
/// in file order, each running to the next header.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Sections {
    pub prefix: Range<usize>,
    pub stages: Vec<Range<usize>>,
}

/// Below this many stage headers, cutting is not worth it.
const MIN_STAGES: usize = 64;

/// Cuts `text` at its stage headers when every header after the first stage header is a
/// plain `[stages.NAME]` (a bare name, each once) and the file is large enough for it to
/// pay. Otherwise `None`.
pub(super) fn stage_sections(text: &str) -> Option<Sections> {
    let (prefix, named) = cut(text)?;
    if named.len() < MIN_STAGES {
        return None;
    }
    Some(Sections {
        prefix,
        stages: named.into_iter().map(|(_, range)| range).collect(),
    })
}

/// The sections of a file by stage name, to give one stage the text it parses from on its
/// own (`pochi run-stage`'s request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StageSources {
    prefix: Range<usize>,
    by_name: std::collections::HashMap<String, Range<usize>>,
}

impl StageSources {
    /// The file's sections, when it cuts cleanly at bare stage headers.
    pub(crate) fn of(text: &str) -> Option<StageSources> {
        let (prefix, named) = cut(text)?;
        let by_name = named
            .into_iter()
            .map(|(name, range)| (name.to_string(), range))
            .collect();
        Some(StageSources { prefix, by_name })
    }

    /// Everything before the first stage header and stage `name`'s own section: what the
    /// stage parses from alone (its references to other stages are resolved by the graph,
    /// not by the parse). `None` for a name without a section.
    pub(crate) fn text_of(&self, text: &str, name: &str) -> Option<String> {
        let section = self.by_name.get(name)?;
        Some(format!(
            "{}{}",
            &text[self.prefix.clone()],
            &text[section.clone()]
        ))
    }
}

/// Each `[stages.NAME]` section of a file: its name and its range.
type NamedSections<'a> = Vec<(&'a str, Range<usize>)>;

/// The prefix and each `[stages.NAME]` section by name, when every header after the first
/// stage header is a plain one (a bare name, each once) and no stage header comes before.
fn cut(text: &str) -> Option<(Range<usize>, NamedSections<'_>)> {
    let headers = headers(text)?;
    let first = headers.iter().position(|h| h.name.starts_with("stages."))?;
    let mut names = std::collections::HashSet::new();
    for header in &headers[first..] {
        let name = header.name.strip_prefix("stages.")?;
        let bare = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if header.array || !bare || !names.insert(name) {
            return None;
        }
    }
    if headers[..first]
        .iter()
        .any(|h| h.name == "stages" || h.name.starts_with("stages."))
    {
        return None;
    }
    let stage_headers = &headers[first..];
    let named = stage_headers
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let end = stage_headers
                .get(i + 1)
                .map_or(text.len(), |next| next.start);
            (
                h.name.strip_prefix("stages.").unwrap_or(h.name),
                h.start..end,
            )
        })
        .collect();
    Some((0..stage_headers[0].start, named))
}

/// A table header: where its line starts, its dotted name with spaces removed, and
/// whether it is an array of tables (`[[...]]`).
struct Header<'a> {
    start: usize,
    name: &'a str,
    array: bool,
}

/// Every table header of `text`, or `None` when the scan meets something it does not
/// follow (an unterminated string, a quoted header name, unbalanced brackets).
fn headers(text: &str) -> Option<Vec<Header<'_>>> {
    let bytes = text.as_bytes();
    let mut headers = Vec::new();
    let mut depth = 0usize;
    let mut at = 0;
    let mut line_start = true;
    while at < bytes.len() {
        let byte = bytes[at];
        if line_start && depth == 0 {
            let indent = bytes[at..]
                .iter()
                .take_while(|b| **b == b' ' || **b == b'\t')
                .count();
            at += indent;
            if bytes.get(at) == Some(&b'[') {
                let (header, end) = header_at(text, at)?;
                headers.push(header);
                at = end;
                continue;
            }
            line_start = false;
            continue;
        }
        line_start = false;
        match byte {
            b'\n' => line_start = true,
            b'#' => {
                at = end_of_line(bytes, at);
                continue;
            }
            b'"' | b'\'' => {
                at = end_of_string(bytes, at)?;
                continue;
            }
            b'[' | b'{' => depth += 1,
            b']' | b'}' => depth = depth.checked_sub(1)?,
            _ => {}
        }
        at += 1;
    }
    (depth == 0).then_some(headers)
}

/// The header starting at `at` (a `[`), and where scanning goes on (its line's end).
fn header_at(text: &str, at: usize) -> Option<(Header<'_>, usize)> {
    let bytes = text.as_bytes();
    let array = bytes.get(at + 1) == Some(&b'[');
    let open = if array { 2 } else { 1 };
    let close = text[at..].find(']')? + at;
    let inner = text[at + open..close].trim();
    if inner.is_empty()
        || inner.contains(['"', '\'', '#', '[', '\n', ' ', '\t'])
        || (array && bytes.get(close + 1) != Some(&b']'))
    {
        return None;
    }
    let after = close + if array { 2 } else { 1 };
    let rest_end = end_of_line(bytes, after);
    let rest = text[after..rest_end].trim();
    if !rest.is_empty() && !rest.starts_with('#') {
        return None;
    }
    Some((
        Header {
            start: at
                - text[..at]
                    .bytes()
                    .rev()
                    .take_while(|b| *b == b' ' || *b == b'\t')
                    .count(),
            name: inner,
            array,
        },
        rest_end,
    ))
}

fn end_of_line(bytes: &[u8], from: usize) -> usize {
    bytes[from..]
        .iter()
        .position(|b| *b == b'\n')
        .map_or(bytes.len(), |n| from + n)
}

/// Where the string that opens at `at` ends (just past its closing quote).
fn end_of_string(bytes: &[u8], at: usize) -> Option<usize> {
    let quote = bytes[at];
    let triple = bytes.get(at..at + 3) == Some(&[quote, quote, quote][..]);
    let escapes = quote == b'"';
    let mut i = at + if triple { 3 } else { 1 };
    while i < bytes.len() {
        let b = bytes[i];
        if escapes && b == b'\\' {
            i += 2;
            continue;
        }
        if !triple && b == b'\n' {
            return None;
        }
        if b == quote {
            if !triple {
                return Some(i + 1);
            }
            if bytes.get(i..i + 3) == Some(&[quote, quote, quote][..]) {
                // Up to two more quotes may belong to the string ("""a"""" ends after 4).
                let mut end = i + 3;
                while end < bytes.len() && bytes[end] == quote && end < i + 5 {
                    end += 1;
                }
                return Some(end);
            }
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_stage_gets_the_prefix_and_its_own_section() {
        let text = "[pipeline]\nname = \"p\"\n\n[stages.a]\nkind = \"command\"\n# a's\n\n[stages.b]\nrun = [\"[stages.c]\"]\n";
        let sources = StageSources::of(text).expect("cuts");
        assert_eq!(
            sources.text_of(text, "a").unwrap(),
            "[pipeline]\nname = \"p\"\n\n[stages.a]\nkind = \"command\"\n# a's\n\n"
        );
        assert_eq!(
            sources.text_of(text, "b").unwrap(),
            "[pipeline]\nname = \"p\"\n\n[stages.b]\nrun = [\"[stages.c]\"]\n"
        );
        assert_eq!(sources.text_of(text, "c"), None);
        // A file that does not cut cleanly (a dotted stage header) is not cut.
        assert!(StageSources::of("[stages.a]\nx = 1\n[stages.a.env]\ny = 2\n").is_none());
    }

    use super::*;

    fn many(extra: &str) -> String {
        let mut text = String::from("[pipeline]\nname = \"p\" # [stages.not]\n\n");
        text.push_str(extra);
        for i in 0..MIN_STAGES {
            text.push_str(&format!(
                "[stages.s{i}]\nkind = \"command\"\nrun = [\"sh\", \"-c\", \"echo '[x]' > {{outputs.out}}\"]\noutputs = {{ out = \"out/{i}\" }}\n\n"
            ));
        }
        text
    }

    #[test]
    fn cuts_at_every_stage_header_and_keeps_the_prefix() {
        let text = many("");
        let sections = stage_sections(&text).unwrap();
        assert_eq!(sections.stages.len(), MIN_STAGES);
        assert!(text[sections.prefix.clone()].starts_with("[pipeline]"));
        assert!(text[sections.stages[0].clone()].starts_with("[stages.s0]\n"));
        assert_eq!(sections.stages.last().unwrap().end, text.len());
        for pair in sections.stages.windows(2) {
            assert_eq!(pair[0].end, pair[1].start);
        }
    }

    #[test]
    fn headers_inside_strings_arrays_and_comments_are_not_headers() {
        let text = many(
            "[toolchain]\npython = \"\"\"\n[stages.fake]\n\"\"\"\nx = [\n[1, 2],\n]\ny = '''\n[stages.q]'''\n",
        );
        let sections = stage_sections(&text).unwrap();
        assert_eq!(sections.stages.len(), MIN_STAGES);
        assert!(text[sections.prefix.clone()].contains("[stages.fake]"));
    }

    #[test]
    fn anything_unusual_means_one_document() {
        for text in [
            many("[stages]\n"),
            many("").replace("[stages.s3]", "[stages.s3.resources]"),
            many("").replace("[stages.s3]", "[stages.\"s 3\"]"),
            many("").replace("[stages.s3]", "[stages.s2]"),
            many("").replace("[stages.s3]", "[[stages.s3]]"),
            many("").replace("[stages.s3]", "[stages.s3] x = 1"),
            format!("{}[toolchain]\n", many("")),
            format!("{}x = \"unterminated\n", many("")),
            "[stages.a]\nkind = \"command\"\n".to_string(),
        ] {
            assert!(stage_sections(&text).is_none(), "{text}");
        }
    }
}
