//! Graphviz DOT rendering: one filled box per stage coloured by status, one edge per dependency.

use super::{GraphView, StageView, format_duration, normalized};

pub(crate) fn render(view: &GraphView) -> String {
    let view = normalized(view);
    let mut lines = vec![
        format!("digraph {} {{", quote(&view.pipeline)),
        "  rankdir=LR;".to_string(),
        "  node [shape=box, style=\"rounded,filled\", fontname=\"Helvetica\"];".to_string(),
    ];
    lines.extend(view.stages.iter().map(node_line));
    // The variants of a matrix stage share a cluster labelled with its name.
    for (base, variants) in super::matrix_groups(&view.stages) {
        lines.push(format!(
            "  subgraph {} {{",
            quote(&format!("cluster_{base}"))
        ));
        lines.push(format!("    label={};", quote(&format!("{base} (matrix)"))));
        lines.extend(
            variants
                .iter()
                .map(|&v| format!("    {};", quote(&view.stages[v].name))),
        );
        lines.push("  }".to_string());
    }
    lines.extend(view.stages.iter().flat_map(edge_lines));
    lines.push("}".to_string());
    lines.join("\n") + "\n"
}

fn node_line(stage: &StageView) -> String {
    let style = stage.status.style();
    format!(
        "  {} [label={}, fillcolor=\"{}\", fontcolor=\"{}\"];",
        quote(&stage.name),
        label(stage),
        style.fill,
        style.text
    )
}

/// `"name\nkind · device\nstatus · duration"`, each part escaped on its own so that the
/// `\n` separators stay line breaks.
fn label(stage: &StageView) -> String {
    let parts = [
        stage.name.clone(),
        format!("{} · {}", stage.kind, stage.device),
        format!(
            "{} · {}",
            stage.status.label(),
            format_duration(stage.last_duration_ms)
        ),
    ];
    let escaped: Vec<String> = parts.iter().map(|part| escape_label(part)).collect();
    format!("\"{}\"", escaped.join("\\n"))
}

fn edge_lines(stage: &StageView) -> impl Iterator<Item = String> + '_ {
    stage
        .deps
        .iter()
        .map(|dep| format!("  {} -> {};", quote(dep), quote(&stage.name)))
}

/// A DOT double-quoted ID: backslashes and quotes escaped, line breaks kept as `\n`.
fn quote(text: &str) -> String {
    format!("\"{}\"", escape(text))
}

fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            '\r' => {}
            other => escaped.push(other),
        }
    }
    escaped
}

/// Label text is also read for HTML entities by Graphviz, so `&` is written `&amp;` to
/// show as itself.
fn escape_label(text: &str) -> String {
    escape(text).replace('&', "&amp;")
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{diamond, stage};
    use super::super::{GraphView, StageStatus};
    use super::*;

    #[test]
    fn diamond_renders_verbatim() {
        let expected = r##"digraph "demo" {
  rankdir=LR;
  node [shape=box, style="rounded,filled", fontname="Helvetica"];
  "engine" [label="engine\nengine · cuda:1\nnever built · -", fillcolor="#bdbdbd", fontcolor="#212121"];
  "export" [label="export\nexport · cpu\nup to date · 1.2s", fillcolor="#2e7d32", fontcolor="#ffffff"];
  "quantize" [label="quantize\nquantize · cuda\nstale · 350ms", fillcolor="#ffb300", fontcolor="#212121"];
  "export" -> "engine";
  "quantize" -> "engine";
  "export" -> "quantize";
}
"##;
        assert_eq!(render(&diamond()), expected);
    }

    #[test]
    fn pipeline_name_is_escaped() {
        let view = GraphView {
            pipeline: r#"say "hi" <&> \o/"#.to_string(),
            stages: Vec::new(),
        };
        let output = render(&view);
        assert!(
            output.starts_with(r#"digraph "say \"hi\" <&> \\o/" {"#),
            "{output}"
        );
    }

    #[test]
    fn stage_strings_are_escaped_in_ids_and_labels() {
        let mut odd = stage("a\"b", "R&D", "cpu\\0", StageStatus::Failed, None, &[]);
        odd.deps = vec!["x\ny".to_string()];
        let view = GraphView {
            pipeline: "p".to_string(),
            stages: vec![odd],
        };
        let output = render(&view);
        assert!(output.contains(r#"  "a\"b" [label="a\"b\nR&amp;D · cpu\\0\nfailed · -""#));
        assert!(output.contains(r#"  "x\ny" -> "a\"b";"#));
    }

    #[test]
    fn every_quote_in_the_output_is_balanced() {
        let view = GraphView {
            pipeline: "q\"uote\\".to_string(),
            stages: diamond().stages,
        };
        for line in render(&view).lines() {
            let unescaped_quotes = count_unescaped_quotes(line);
            assert_eq!(unescaped_quotes % 2, 0, "{line}");
        }
    }

    fn count_unescaped_quotes(line: &str) -> usize {
        let mut count = 0;
        let mut escaped = false;
        for character in line.chars() {
            match (escaped, character) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => count += 1,
                _ => {}
            }
        }
        count
    }
}
