//! Plain-text rendering: a header, then one aligned line per stage in topological order with its deps beneath it.

use super::{GraphView, StageView, format_duration, normalized, topological_order};

/// The columns of one stage line, before alignment.
struct Row {
    name: String,
    placement: String,
    status: &'static str,
    duration: String,
}

impl Row {
    fn of(stage: &StageView) -> Row {
        Row {
            name: stage.name.clone(),
            placement: format!("[{}, {}]", stage.kind, stage.device),
            status: stage.status.label(),
            duration: format_duration(stage.last_duration_ms),
        }
    }
}

/// Widest entry of each column, counted in characters.
struct Widths {
    name: usize,
    placement: usize,
    status: usize,
    duration: usize,
}

impl Widths {
    fn of(rows: &[Row]) -> Widths {
        let widest = |column: fn(&Row) -> &str| {
            rows.iter()
                .map(|row| column(row).chars().count())
                .max()
                .unwrap_or(0)
        };
        Widths {
            name: widest(|row| &row.name),
            placement: widest(|row| &row.placement),
            status: widest(|row| row.status),
            duration: widest(|row| &row.duration),
        }
    }
}

pub(crate) fn render(view: &GraphView) -> String {
    let view = normalized(view);
    let order = topological_order(&view.stages);
    let rows: Vec<Row> = view.stages.iter().map(Row::of).collect();
    let widths = Widths::of(&rows);
    let mut lines = vec![header(&view)];
    for index in order {
        lines.push(stage_line(&rows[index], &widths));
        lines.extend(
            view.stages[index]
                .matrix_text()
                .map(|text| format!("  variant of {text}")),
        );
        lines.extend(
            view.stages[index]
                .deps
                .iter()
                .map(|dep| format!("  <- {dep}")),
        );
        lines.extend(
            view.stages[index]
                .problems
                .iter()
                .map(|problem| format!("  ! {problem}")),
        );
    }
    lines.join("\n") + "\n"
}

fn header(view: &GraphView) -> String {
    let count = view.stages.len();
    let noun = if count == 1 { "stage" } else { "stages" };
    format!("pipeline {} ({count} {noun})", view.pipeline)
}

/// `name  [kind, device]  status  duration`, left-aligned except the duration, which is
/// right-aligned so that units line up.
fn stage_line(row: &Row, widths: &Widths) -> String {
    let line = format!(
        "{}  {}  {}  {}",
        pad_right(&row.name, widths.name),
        pad_right(&row.placement, widths.placement),
        pad_right(row.status, widths.status),
        pad_left(&row.duration, widths.duration),
    );
    line.trim_end().to_string()
}

fn pad_right(text: &str, width: usize) -> String {
    let padding = width.saturating_sub(text.chars().count());
    format!("{text}{}", " ".repeat(padding))
}

fn pad_left(text: &str, width: usize) -> String {
    let padding = width.saturating_sub(text.chars().count());
    format!("{}{text}", " ".repeat(padding))
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{diamond, stage, wide};
    use super::super::{GraphView, StageStatus};
    use super::*;

    #[test]
    fn diamond_renders_verbatim() {
        let expected = "\
pipeline demo (3 stages)
export    [export, cpu]     up to date    1.2s
quantize  [quantize, cuda]  stale        350ms
  <- export
engine    [engine, cuda:1]  never built      -
  <- export
  <- quantize
";
        assert_eq!(render(&diamond()), expected);
    }

    #[test]
    fn stages_are_listed_in_topological_order() {
        let output = render(&wide());
        let listed: Vec<&str> = output
            .lines()
            .skip(1)
            .filter(|line| !line.starts_with(' '))
            .map(|line| line.split_whitespace().next().unwrap())
            .collect();
        assert_eq!(
            listed,
            [
                "calib-data",
                "train",
                "onnx",
                "engine-fp16",
                "quantized",
                "engine-int8",
                "report"
            ]
        );
        for (position, name) in listed.iter().enumerate() {
            let stage = wide().stages.into_iter().find(|s| s.name == *name).unwrap();
            for dep in &stage.deps {
                let dep_position = listed.iter().position(|n| n == dep).unwrap();
                assert!(dep_position < position, "{dep} must come before {name}");
            }
        }
    }

    #[test]
    fn columns_line_up() {
        let output = render(&wide());
        let stage_lines: Vec<&str> = output
            .lines()
            .skip(1)
            .filter(|line| !line.starts_with(' '))
            .collect();
        let status_column = |line: &str| line.find(['[']).unwrap();
        let first = status_column(stage_lines[0]);
        assert!(stage_lines.iter().all(|line| status_column(line) == first));
        let lengths: Vec<usize> = stage_lines.iter().map(|line| line.len()).collect();
        assert!(
            lengths.windows(2).all(|pair| pair[0] == pair[1]),
            "{output}"
        );
    }

    #[test]
    fn header_counts_stages_with_the_right_noun() {
        let view = GraphView {
            pipeline: "solo".to_string(),
            stages: vec![stage("a", "command", "cpu", StageStatus::Failed, None, &[])],
        };
        assert!(render(&view).starts_with("pipeline solo (1 stage)\n"));
        assert!(render(&wide()).starts_with("pipeline resnet-deploy (7 stages)\n"));
    }
}
