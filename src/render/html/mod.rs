//! HTML rendering: one self-contained page with the DAG laid out in Rust as inline SVG, a status legend and a stage table.

mod layout;

use self::layout::{BOX_PADDING, LANE_GAP, Layout, Point, Route, box_lines};
use super::{GraphView, StageStatus, StageView, format_duration, normalized};

const EDGE_COLOUR: &str = "#616161";

pub(crate) fn render(view: &GraphView) -> String {
    let view = normalized(view);
    let layout = Layout::of(&view.stages);
    let mut lines = head(&view.pipeline);
    lines.push("<body>".to_string());
    lines.push(format!(
        "<h1>Pipeline <code>{}</code></h1>",
        escape(&view.pipeline)
    ));
    lines.push(format!(
        "<p class=\"summary\">{}</p>",
        summary(&view.stages)
    ));
    lines.extend(legend(&view.stages));
    lines.push("<div class=\"graph\">".to_string());
    lines.extend(svg(&view, &layout));
    lines.push("</div>".to_string());
    lines.extend(table(&view.stages));
    lines.push("</body>".to_string());
    lines.push("</html>".to_string());
    lines.join("\n") + "\n"
}

fn head(pipeline: &str) -> Vec<String> {
    let mut lines = vec![
        "<!DOCTYPE html>".to_string(),
        "<html lang=\"en\">".to_string(),
        "<head>".to_string(),
        "<meta charset=\"utf-8\">".to_string(),
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">".to_string(),
        format!("<title>{} · pochi graph</title>", escape(pipeline)),
        "<style>".to_string(),
    ];
    lines.extend(BASE_CSS.lines().map(str::to_string));
    lines.extend(StageStatus::ALL.into_iter().map(status_css));
    lines.push("</style>".to_string());
    lines.push("</head>".to_string());
    lines
}

const BASE_CSS: &str = "\
body { font-family: system-ui, -apple-system, \"Segoe UI\", Roboto, sans-serif; margin: 24px; color: #212121; background: #fafafa; }
h1 { font-size: 20px; margin: 0 0 4px; }
.summary { color: #616161; margin: 0 0 12px; }
.legend { list-style: none; padding: 0; margin: 0 0 12px; display: flex; flex-wrap: wrap; gap: 16px; font-size: 14px; }
.legend li { display: flex; align-items: center; gap: 6px; }
.swatch { display: inline-block; width: 14px; height: 14px; border-radius: 3px; border: 1px solid; }
.graph { overflow-x: auto; background: #ffffff; border: 1px solid #e0e0e0; border-radius: 6px; padding: 8px; }
svg text { font-family: system-ui, -apple-system, \"Segoe UI\", Roboto, sans-serif; }
.node-name { font-size: 13px; font-weight: 600; }
.node-detail { font-size: 11px; }
.edge { fill: none; stroke: #616161; stroke-width: 1.5; stroke-linejoin: round; }
table { border-collapse: collapse; margin-top: 24px; font-size: 14px; background: #ffffff; }
th, td { text-align: left; padding: 6px 12px; border-bottom: 1px solid #e0e0e0; vertical-align: top; }
th { background: #f5f5f5; }
td.duration { text-align: right; font-variant-numeric: tabular-nums; }
.pill { display: inline-block; padding: 1px 8px; border-radius: 10px; border: 1px solid; white-space: nowrap; }";

/// `.st-<slug>` paints swatches and pills in a status's colours.
fn status_css(status: StageStatus) -> String {
    let style = status.style();
    format!(
        ".st-{} {{ background: {}; border-color: {}; color: {}; }}",
        status.slug(),
        style.fill,
        style.stroke,
        style.text
    )
}

fn summary(stages: &[StageView]) -> String {
    let noun = if stages.len() == 1 { "stage" } else { "stages" };
    format!("{} {noun}", stages.len())
}

/// Every status with its colour, and how many stages have it.
fn legend(stages: &[StageView]) -> Vec<String> {
    let mut lines = vec!["<ul class=\"legend\">".to_string()];
    for status in StageStatus::ALL {
        let count = stages.iter().filter(|stage| stage.status == status).count();
        lines.push(format!(
            "<li><span class=\"swatch st-{}\"></span>{} ({count})</li>",
            status.slug(),
            status.label()
        ));
    }
    lines.push("</ul>".to_string());
    lines
}

fn svg(view: &GraphView, layout: &Layout) -> Vec<String> {
    let mut lines = vec![
        format!(
            "<svg width=\"{0}\" height=\"{1}\" viewBox=\"0 0 {0} {1}\" role=\"img\" aria-label=\"Dependency graph of pipeline {2}\">",
            layout.width,
            layout.height,
            escape(&view.pipeline)
        ),
        "<defs>".to_string(),
        format!(
            "<marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"7\" markerHeight=\"7\" orient=\"auto\"><path d=\"M 0 0 L 10 5 L 0 10 z\" fill=\"{EDGE_COLOUR}\"/></marker>"
        ),
        "</defs>".to_string(),
    ];
    let boxes_bottom = layout.boxes_bottom();
    lines.extend(layout.routes.iter().map(|route| edge(route, boxes_bottom)));
    for (stage, &corner) in view.stages.iter().zip(&layout.positions) {
        lines.extend(stage_box(
            stage,
            corner,
            layout.box_width,
            layout.box_height,
        ));
    }
    lines.push("</svg>".to_string());
    lines
}

/// Path data for a route: a curve across one column gap, or, for an edge that skips
/// layers, straight runs down the gap after its dep (at its own `down_x`), along its lane
/// and up the gap before its dependent (at its own `up_x`).
fn route_path(route: &Route, boxes_bottom: usize) -> String {
    let (start, end) = (route.start, route.end);
    match route.lane {
        None => {
            let bend_x = (start.x + end.x) / 2;
            format!(
                "M {} {} C {bend_x} {}, {bend_x} {}, {} {}",
                start.x, start.y, start.y, end.y, end.x, end.y
            )
        }
        Some(lane) => {
            let (down_x, up_x) = (route.down_x, route.up_x);
            let lane_y = boxes_bottom + LANE_GAP * (lane + 1);
            format!(
                "M {} {} H {down_x} V {lane_y} H {up_x} V {} H {}",
                start.x, start.y, end.y, end.x
            )
        }
    }
}

fn edge(route: &Route, boxes_bottom: usize) -> String {
    format!(
        "<path class=\"edge\" d=\"{}\" marker-end=\"url(#arrow)\"/>",
        route_path(route, boxes_bottom)
    )
}

fn stage_box(stage: &StageView, corner: Point, box_width: usize, box_height: usize) -> Vec<String> {
    let style = stage.status.style();
    let [name, placement, state] = box_lines(stage).map(|line| escape(&line));
    let text_x = corner.x + BOX_PADDING;
    vec![
        format!("<g class=\"node st-{}\">", stage.status.slug()),
        match stage.matrix_text() {
            Some(matrix) => format!("<title>{name} ({}) — {state}</title>", escape(&matrix)),
            None => format!("<title>{name} — {state}</title>"),
        },
        format!(
            "<rect x=\"{}\" y=\"{}\" width=\"{box_width}\" height=\"{box_height}\" rx=\"6\" fill=\"{}\" stroke=\"{}\" stroke-width=\"1.5\"/>",
            corner.x, corner.y, style.fill, style.stroke
        ),
        format!(
            "<text x=\"{text_x}\" y=\"{}\" fill=\"{}\" class=\"node-name\">{name}</text>",
            corner.y + 20,
            style.text
        ),
        format!(
            "<text x=\"{text_x}\" y=\"{}\" fill=\"{}\" class=\"node-detail\">{placement}</text>",
            corner.y + 36,
            style.text
        ),
        format!(
            "<text x=\"{text_x}\" y=\"{}\" fill=\"{}\" class=\"node-detail\">{state}</text>",
            corner.y + 50,
            style.text
        ),
        "</g>".to_string(),
    ]
}

fn table(stages: &[StageView]) -> Vec<String> {
    let mut lines = vec![
        "<table>".to_string(),
        "<thead><tr><th>stage</th><th>kind</th><th>device</th><th>status</th><th>last duration</th><th>outputs</th></tr></thead>".to_string(),
        "<tbody>".to_string(),
    ];
    lines.extend(stages.iter().map(table_row));
    lines.push("</tbody>".to_string());
    lines.push("</table>".to_string());
    lines
}

fn table_row(stage: &StageView) -> String {
    format!(
        "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td><span class=\"pill st-{}\">{}</span></td><td class=\"duration\">{}</td><td>{}</td></tr>",
        escape(&stage.name),
        escape(&stage.kind),
        escape(&stage.device),
        stage.status.slug(),
        stage.status.label(),
        format_duration(stage.last_duration_ms),
        outputs_cell(&stage.outputs)
    )
}

fn outputs_cell(outputs: &[String]) -> String {
    if outputs.is_empty() {
        return "-".to_string();
    }
    outputs
        .iter()
        .map(|output| format!("<code>{}</code>", escape(output)))
        .collect::<Vec<_>>()
        .join("<br>")
}

/// Escapes text for HTML element content and quoted attribute values alike.
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            other => escaped.push(other),
        }
    }
    escaped
}

#[cfg(test)]
mod tests;
