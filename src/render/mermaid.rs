//! Mermaid flowchart rendering: safe node ids, labelled nodes, one class per status and one edge per dependency.

use super::{GraphView, StageStatus, StageView, format_duration, normalized};

pub(crate) fn render(view: &GraphView) -> String {
    let view = normalized(view);
    let mut lines = vec![
        "flowchart LR".to_string(),
        format!("  %% pipeline: {}", one_line(&view.pipeline)),
    ];
    lines.extend(view.stages.iter().map(node_line));
    // The variants of a matrix stage share a subgraph titled with its name.
    for (base, variants) in super::matrix_groups(&view.stages) {
        lines.push(format!(
            "  subgraph m_{}[\"{} (matrix)\"]",
            node_id(base),
            escape_label(base)
        ));
        lines.extend(
            variants
                .iter()
                .map(|&v| format!("    {}", node_id(&view.stages[v].name))),
        );
        lines.push("  end".to_string());
    }
    lines.extend(view.stages.iter().flat_map(edge_lines));
    lines.extend(StageStatus::ALL.into_iter().map(class_def_line));
    lines.extend(class_lines(&view.stages));
    lines.join("\n") + "\n"
}

/// A mermaid node id for a stage name, made only of `[A-Za-z0-9_]`.
///
/// The encoding is injective, so distinct names never share an id: ASCII letters and
/// digits stay, `_` becomes `__`, `-` becomes `_h`, and anything else `_u<hex>_`. The `s_`
/// prefix keeps ids clear of mermaid keywords such as `end`.
pub(crate) fn node_id(name: &str) -> String {
    let mut id = String::from("s_");
    for character in name.chars() {
        match character {
            'a'..='z' | 'A'..='Z' | '0'..='9' => id.push(character),
            '_' => id.push_str("__"),
            '-' => id.push_str("_h"),
            other => id.push_str(&format!("_u{:x}_", u32::from(other))),
        }
    }
    id
}

fn node_line(stage: &StageView) -> String {
    let parts = [
        escape_label(&stage.name),
        escape_label(&format!("{} · {}", stage.kind, stage.device)),
        escape_label(&format!(
            "{} · {}",
            stage.status.label(),
            format_duration(stage.last_duration_ms)
        )),
    ];
    format!("  {}[\"{}\"]", node_id(&stage.name), parts.join("<br/>"))
}

fn edge_lines(stage: &StageView) -> impl Iterator<Item = String> + '_ {
    stage
        .deps
        .iter()
        .map(|dep| format!("  {} --> {}", node_id(dep), node_id(&stage.name)))
}

fn class_def_line(status: StageStatus) -> String {
    let style = status.style();
    format!(
        "  classDef {} fill:{},stroke:{},color:{}",
        status.slug(),
        style.fill,
        style.stroke,
        style.text
    )
}

/// One `class id1,id2 status` line per status that some stage has.
fn class_lines(stages: &[StageView]) -> Vec<String> {
    StageStatus::ALL
        .into_iter()
        .filter_map(|status| {
            let ids: Vec<String> = stages
                .iter()
                .filter(|stage| stage.status == status)
                .map(|stage| node_id(&stage.name))
                .collect();
            (!ids.is_empty()).then(|| format!("  class {} {}", ids.join(","), status.slug()))
        })
        .collect()
}

/// Label text inside `["..."]`: mermaid's `#name;` entity codes stand in for characters
/// that would end the string or be read as markup.
fn escape_label(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '#' => escaped.push_str("#35;"),
            '"' => escaped.push_str("#quot;"),
            '&' => escaped.push_str("#amp;"),
            '<' => escaped.push_str("#lt;"),
            '>' => escaped.push_str("#gt;"),
            '\n' | '\r' => escaped.push(' '),
            other => escaped.push(other),
        }
    }
    escaped
}

/// Text for a `%%` comment, which must stay on one line.
fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{diamond, stage, wide};
    use super::*;

    fn is_valid_id(id: &str) -> bool {
        !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    }

    #[test]
    fn ids_for_names_with_dashes_are_valid() {
        for name in ["engine-fp16", "a-b-c", "-", "calib_data", "end", "x.y z"] {
            let id = node_id(name);
            assert!(is_valid_id(&id), "{name} -> {id}");
        }
        assert_eq!(node_id("engine-fp16"), "s_engine_hfp16");
    }

    #[test]
    fn ids_do_not_collide() {
        let names = [
            "a-b", "a_b", "a_hb", "a__b", "a_-b", "a-_b", "a.b", "a_u2e_b",
        ];
        let mut ids: Vec<String> = names.iter().map(|name| node_id(name)).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), names.len(), "{ids:?}");
    }

    #[test]
    fn every_id_in_the_output_is_valid() {
        let output = render(&wide());
        for line in output.lines().skip(2) {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("class ") {
                let ids = rest.split(' ').next().unwrap();
                assert!(ids.split(',').all(is_valid_id), "{line}");
            } else if let Some((from, to)) = line.split_once(" --> ") {
                assert!(is_valid_id(from) && is_valid_id(to), "{line}");
            } else if !line.starts_with("classDef ") {
                let id = line.split('[').next().unwrap();
                assert!(is_valid_id(id), "{line}");
            }
        }
    }

    #[test]
    fn diamond_renders_verbatim() {
        let expected = "\
flowchart LR
  %% pipeline: demo
  s_engine[\"engine<br/>engine · cuda:1<br/>never built · -\"]
  s_export[\"export<br/>export · cpu<br/>up to date · 1.2s\"]
  s_quantize[\"quantize<br/>quantize · cuda<br/>stale · 350ms\"]
  s_export --> s_engine
  s_quantize --> s_engine
  s_export --> s_quantize
  classDef up_to_date fill:#2e7d32,stroke:#1b5e20,color:#ffffff
  classDef stale fill:#ffb300,stroke:#c68400,color:#212121
  classDef never_built fill:#bdbdbd,stroke:#757575,color:#212121
  classDef failed fill:#c62828,stroke:#8e0000,color:#ffffff
  classDef waits_on_upstream fill:#81d4fa,stroke:#0288d1,color:#212121
  classDef unavailable fill:#eceff1,stroke:#90a4ae,color:#546e7a
  class s_export up_to_date
  class s_quantize stale
  class s_engine never_built
";
        assert_eq!(render(&diamond()), expected);
    }

    #[test]
    fn labels_escape_quotes_and_markup() {
        let view = GraphView {
            pipeline: "p\nq".to_string(),
            stages: vec![stage(
                "a",
                "say \"<b>&#\"",
                "cpu",
                StageStatus::Stale,
                None,
                &[],
            )],
        };
        let output = render(&view);
        assert!(output.contains("  %% pipeline: p q\n"));
        assert!(output.contains("a<br/>say #quot;#lt;b#gt;#amp;#35;#quot; · cpu<br/>"));
    }
}
