//! HTML rendering: one self-contained page with the DAG laid out in Rust as inline SVG, a status legend and a stage table.

use super::{
    GraphView, StageStatus, StageView, format_duration, known_dep_indices, layers, normalized,
};

const MARGIN: usize = 20;
const BOX_HEIGHT: usize = 58;
const MIN_BOX_WIDTH: usize = 140;
const BOX_PADDING: usize = 12;
/// A generous average glyph width for the box text, so that labels fit their box.
const CHAR_WIDTH: usize = 8;
const COLUMN_GAP: usize = 64;
/// The least vertical distance between two edges meeting one side of a box: boxes grow
/// taller when a stage has more inputs (or outputs) than fit at this spacing.
const PORT_GAP: usize = 12;
/// The least horizontal distance between two lane uprights in one column gap: the gap
/// grows wider when more uprights run through it.
const TRACK_GAP: usize = 8;
/// Room left of the first upright in a gap, and right of the last one (for the arrowhead).
const TRACK_LEFT: usize = 8;
const TRACK_RIGHT: usize = 14;
const ROW_GAP: usize = 20;
/// Vertical distance between the lanes that edges skipping a layer run along.
const LANE_GAP: usize = 14;
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

/// Where every stage's box and every edge sits, and the size of the whole drawing.
#[derive(Debug, PartialEq, Eq)]
struct Layout {
    positions: Vec<Point>,
    routes: Vec<Route>,
    box_width: usize,
    box_height: usize,
    width: usize,
    height: usize,
}

/// A point in SVG user units; for a box, its top-left corner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Point {
    x: usize,
    y: usize,
}

/// One drawn edge, from the right side of its dep's box to the left side of its dependent's.
/// An edge between neighbouring columns is a curve across the gap between them; one that
/// skips a column runs along a lane below every box, so that it never passes behind one,
/// going down at `down_x` (in the gap after its dep) and up at `up_x` (in the gap before
/// its dependent). Every edge has its own port on each box side and its own uprights, so
/// no two edges share an end point or run on top of each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Route {
    from: usize,
    to: usize,
    start: Point,
    end: Point,
    lane: Option<usize>,
    down_x: usize,
    up_x: usize,
}

impl Layout {
    /// Columns are layers (longest path from a root); within a column, stages keep their
    /// name order and the column is centred vertically against the tallest one. Boxes are
    /// tall enough for their ports and gaps wide enough for their lane uprights.
    /// `stages` must be sorted by name.
    fn of(stages: &[StageView]) -> Layout {
        let layer = layers(stages);
        let columns = layer.iter().max().map_or(0, |deepest| deepest + 1);
        let (row, column_heights) = rows_within_layers(&layer, columns);
        let tallest = column_heights.iter().copied().max().unwrap_or(0);
        let box_width = box_width(stages);
        let pairs = edge_pairs(stages);
        let lanes = assign_lanes(&pairs, &layer);
        let box_height = box_height(&pairs, stages.len());
        let gap = column_gap(&uprights_per_gap(&pairs, &lanes, &layer));
        let positions: Vec<Point> = (0..stages.len())
            .map(|index| {
                let slack = tallest - column_heights[layer[index]];
                Point {
                    x: MARGIN + layer[index] * (box_width + gap),
                    y: MARGIN
                        + row[index] * (box_height + ROW_GAP)
                        + slack * (box_height + ROW_GAP) / 2,
                }
            })
            .collect();
        let mut routes = routes(&pairs, &lanes, &positions, box_width, box_height);
        assign_tracks(&mut routes, &layer, box_width, gap);
        let lanes = lane_count(&routes);
        Layout {
            positions,
            routes,
            box_width,
            box_height,
            width: 2 * MARGIN + span(columns, box_width, gap),
            height: 2 * MARGIN + span(tallest, box_height, ROW_GAP) + lanes * LANE_GAP,
        }
    }

    /// The y of the bottom edge of the lowest boxes; lanes run below it.
    fn boxes_bottom(&self) -> usize {
        self.height - MARGIN - lane_count(&self.routes) * LANE_GAP
    }
}

fn lane_count(routes: &[Route]) -> usize {
    routes
        .iter()
        .filter_map(|route| route.lane)
        .max()
        .map_or(0, |lane| lane + 1)
}

/// Each stage's row within its layer (in index order), and how many stages each layer holds.
fn rows_within_layers(layer: &[usize], columns: usize) -> (Vec<usize>, Vec<usize>) {
    let mut column_heights = vec![0; columns];
    let rows = layer
        .iter()
        .map(|&column| {
            column_heights[column] += 1;
            column_heights[column] - 1
        })
        .collect();
    (rows, column_heights)
}

/// Every edge between known stages as `(dep, dependent)`, ordered by dependent then dep.
fn edge_pairs(stages: &[StageView]) -> Vec<(usize, usize)> {
    known_dep_indices(stages)
        .into_iter()
        .enumerate()
        .flat_map(|(to, deps)| deps.into_iter().map(move |from| (from, to)))
        .collect()
}

/// One height for every box: `BOX_HEIGHT`, or taller when a box side has so many edges
/// that their ports would be closer than `PORT_GAP`.
fn box_height(pairs: &[(usize, usize)], stages: usize) -> usize {
    let mut ins = vec![0; stages];
    let mut outs = vec![0; stages];
    for &(from, to) in pairs {
        outs[from] += 1;
        ins[to] += 1;
    }
    let most = ins.into_iter().chain(outs).max().unwrap_or(0);
    BOX_HEIGHT.max((most + 1) * PORT_GAP)
}

/// How many lane uprights run through the gap after each layer: an edge's way down
/// (after its dep's layer) and its way up (before its dependent's).
fn uprights_per_gap(
    pairs: &[(usize, usize)],
    lanes: &[Option<usize>],
    layer: &[usize],
) -> Vec<usize> {
    let mut count = vec![0; layer.iter().max().map_or(0, |deepest| deepest + 1)];
    for (&(from, to), lane) in pairs.iter().zip(lanes) {
        if lane.is_some() {
            count[layer[from]] += 1;
            count[layer[to] - 1] += 1;
        }
    }
    count
}

/// One width for every column gap: `COLUMN_GAP`, or wider when the busiest gap needs
/// more room for its uprights at `TRACK_GAP` apart.
fn column_gap(uprights: &[usize]) -> usize {
    let most = uprights.iter().copied().max().unwrap_or(0);
    COLUMN_GAP.max(TRACK_LEFT + TRACK_RIGHT + most.saturating_sub(1) * TRACK_GAP)
}

/// The edges with their ports: on each box side the edges are spread evenly down it.
fn routes(
    pairs: &[(usize, usize)],
    lanes: &[Option<usize>],
    positions: &[Point],
    box_width: usize,
    box_height: usize,
) -> Vec<Route> {
    let start_ys = port_ys(pairs, lanes, positions, box_height, |&(from, to)| {
        (from, to)
    });
    let end_ys = port_ys(pairs, lanes, positions, box_height, |&(from, to)| {
        (to, from)
    });
    pairs
        .iter()
        .enumerate()
        .map(|(index, &(from, to))| Route {
            from,
            to,
            start: Point {
                x: positions[from].x + box_width,
                y: start_ys[index],
            },
            end: Point {
                x: positions[to].x,
                y: end_ys[index],
            },
            lane: lanes[index],
            down_x: 0,
            up_x: 0,
        })
        .collect()
}

/// Gives every lane upright its own x in its gap, `TRACK_GAP` apart: the ways down packed
/// from the left (after the dep), the lowest port leftmost, and the ways up packed to the
/// right (before the dependent), the highest port leftmost, so that an edge's short
/// horizontal run to or from its box crosses no upright of another edge at that box.
/// `column_gap` made every gap wide enough for all of its uprights.
fn assign_tracks(routes: &mut [Route], layer: &[usize], box_width: usize, gap: usize) {
    let columns = layer.iter().max().map_or(0, |deepest| deepest + 1);
    for g in 0..columns {
        let mut downs: Vec<usize> = (0..routes.len())
            .filter(|&i| routes[i].lane.is_some() && layer[routes[i].from] == g)
            .collect();
        downs.sort_by_key(|&i| (std::cmp::Reverse(routes[i].start.y), i));
        let mut ups: Vec<usize> = (0..routes.len())
            .filter(|&i| routes[i].lane.is_some() && layer[routes[i].to] == g + 1)
            .collect();
        ups.sort_by_key(|&i| (routes[i].end.y, i));
        let gap_left = MARGIN + g * (box_width + gap) + box_width;
        for (k, &i) in downs.iter().enumerate() {
            routes[i].down_x = gap_left + TRACK_LEFT + k * TRACK_GAP;
        }
        let last_up = gap_left + gap - TRACK_RIGHT;
        for (k, &i) in ups.iter().enumerate() {
            routes[i].up_x = last_up - (ups.len() - 1 - k) * TRACK_GAP;
        }
    }
}

/// A lane for each edge that skips a layer; edges whose column spans do not overlap
/// share a lane. Edges between neighbouring layers get none.
fn assign_lanes(pairs: &[(usize, usize)], layer: &[usize]) -> Vec<Option<usize>> {
    let mut skipping: Vec<usize> = (0..pairs.len())
        .filter(|&index| layer[pairs[index].1] > layer[pairs[index].0] + 1)
        .collect();
    skipping.sort_by_key(|&index| (layer[pairs[index].0], layer[pairs[index].1], index));
    let mut lanes = vec![None; pairs.len()];
    let mut lane_ends: Vec<usize> = Vec::new();
    for index in skipping {
        let (from_layer, to_layer) = (layer[pairs[index].0], layer[pairs[index].1]);
        let lane = match lane_ends.iter().position(|&end| end <= from_layer) {
            Some(free) => free,
            None => {
                lane_ends.push(0);
                lane_ends.len() - 1
            }
        };
        lane_ends[lane] = to_layer;
        lanes[index] = Some(lane);
    }
    lanes
}

/// The y where each edge meets the box that `ends` picks out as `(own, other)`: the edges
/// at one side of a box are spread evenly down it, ordered by where their other end lies,
/// with lane edges (which leave downwards) last.
fn port_ys(
    pairs: &[(usize, usize)],
    lanes: &[Option<usize>],
    positions: &[Point],
    box_height: usize,
    ends: fn(&(usize, usize)) -> (usize, usize),
) -> Vec<usize> {
    let mut ys = vec![0; pairs.len()];
    for own in 0..positions.len() {
        let mut attached: Vec<usize> = (0..pairs.len())
            .filter(|&i| ends(&pairs[i]).0 == own)
            .collect();
        attached.sort_by_key(|&i| {
            let other = ends(&pairs[i]).1;
            (lanes[i].is_some(), positions[other].y, other)
        });
        for (rank, &index) in attached.iter().enumerate() {
            ys[index] = positions[own].y + box_height * (rank + 1) / (attached.len() + 1);
        }
    }
    ys
}

/// Length of `count` items of `size` with `gap` between neighbours.
fn span(count: usize, size: usize, gap: usize) -> usize {
    count * size + count.saturating_sub(1) * gap
}

/// One width for every box: wide enough for the longest line of any box.
fn box_width(stages: &[StageView]) -> usize {
    let longest = stages
        .iter()
        .flat_map(box_lines)
        .map(|line| line.chars().count())
        .max()
        .unwrap_or(0);
    (2 * BOX_PADDING + longest * CHAR_WIDTH).max(MIN_BOX_WIDTH)
}

/// The three lines of text in a stage's box.
fn box_lines(stage: &StageView) -> [String; 3] {
    [
        stage.name.clone(),
        format!("{} · {}", stage.kind, stage.device),
        format!(
            "{} · {}",
            stage.status.label(),
            format_duration(stage.last_duration_ms)
        ),
    ]
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
mod tests {
    use super::super::fixtures::{diamond, stage, wide};
    use super::*;

    fn normalized_diamond() -> GraphView {
        normalized(&diamond())
    }

    #[test]
    fn is_self_contained_with_one_svg() {
        let output = render(&wide());
        assert!(!output.contains("http://"));
        assert!(!output.contains("https://"));
        assert!(!output.contains("<script"));
        assert!(!output.contains("<link"));
        assert!(!output.contains("@import"));
        assert_eq!(output.matches("<svg").count(), 1);
        assert_eq!(output.matches("</svg>").count(), 1);
        assert!(output.starts_with("<!DOCTYPE html>\n"));
        assert!(output.ends_with("</html>\n"));
    }

    #[test]
    fn title_names_the_pipeline() {
        assert!(render(&wide()).contains("<title>resnet-deploy · pochi graph</title>"));
    }

    #[test]
    fn user_strings_are_escaped() {
        let mut view = diamond();
        view.pipeline = "say \"hi\" <b>&co".to_string();
        view.stages[0].kind = "<script>alert('x')</script>".to_string();
        view.stages[0].outputs = vec!["a&b<c>.onnx".to_string()];
        let output = render(&view);
        assert!(
            output.contains("<title>say &quot;hi&quot; &lt;b&gt;&amp;co · pochi graph</title>")
        );
        assert!(!output.contains("<b>&co"));
        assert!(!output.contains("<script>"));
        assert!(output.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"));
        assert!(output.contains("<code>a&amp;b&lt;c&gt;.onnx</code>"));
    }

    #[test]
    fn columns_follow_layers_and_rows_follow_names() {
        let view = normalized(&wide());
        let layout = Layout::of(&view.stages);
        let at = |name: &str| {
            let index = view.stages.iter().position(|s| s.name == name).unwrap();
            layout.positions[index]
        };
        // Layer 0: calib-data, train. Layer 1: onnx. Layer 2: engine-fp16, quantized.
        // Layer 3: engine-int8. Layer 4: report.
        assert_eq!(at("calib-data").x, at("train").x);
        assert!(at("calib-data").y < at("train").y);
        assert!(at("train").x < at("onnx").x);
        assert_eq!(at("engine-fp16").x, at("quantized").x);
        assert!(at("engine-fp16").y < at("quantized").y);
        assert!(at("quantized").x < at("engine-int8").x);
        assert!(at("engine-int8").x < at("report").x);
    }

    #[test]
    fn boxes_fit_inside_the_drawing_without_overlapping() {
        let view = normalized(&wide());
        let layout = Layout::of(&view.stages);
        for (index, a) in layout.positions.iter().enumerate() {
            assert!(a.x + layout.box_width + MARGIN <= layout.width);
            assert!(a.y + layout.box_height + MARGIN <= layout.height);
            for b in &layout.positions[index + 1..] {
                let apart_x = a.x.abs_diff(b.x) >= layout.box_width;
                let apart_y = a.y.abs_diff(b.y) >= layout.box_height;
                assert!(apart_x || apart_y, "{a:?} overlaps {b:?}");
            }
        }
    }

    fn route_between<'a>(view: &GraphView, layout: &'a Layout, from: &str, to: &str) -> &'a Route {
        let index = |name: &str| view.stages.iter().position(|s| s.name == name).unwrap();
        let (from, to) = (index(from), index(to));
        layout
            .routes
            .iter()
            .find(|route| route.from == from && route.to == to)
            .unwrap()
    }

    #[test]
    fn edges_skipping_a_layer_run_in_lanes_that_share_when_they_can() {
        let view = normalized(&wide());
        let layout = Layout::of(&view.stages);
        let lane = |from, to| route_between(&view, &layout, from, to).lane;
        assert_eq!(lane("train", "onnx"), None);
        assert_eq!(lane("onnx", "quantized"), None);
        assert_eq!(lane("calib-data", "quantized"), Some(0));
        assert_eq!(lane("train", "report"), Some(1));
        // Starts in the column where calib-data -> quantized ends, so it reuses lane 0.
        assert_eq!(lane("engine-fp16", "report"), Some(0));
        assert_eq!(layout.routes.len(), 8);
        assert_eq!(layout.boxes_bottom() + 2 * LANE_GAP + MARGIN, layout.height);
    }

    #[test]
    fn lane_uprights_stay_in_column_gaps() {
        let view = normalized(&wide());
        let layout = Layout::of(&view.stages);
        let bottom = layout.boxes_bottom();
        for route in layout.routes.iter().filter(|route| route.lane.is_some()) {
            let path = route_path(route, bottom);
            let numbers: Vec<usize> = path
                .split(' ')
                .filter_map(|token| token.parse().ok())
                .collect();
            // M sx sy H down_x V lane_y H up_x V ey H ex
            let [_, _, down_x, lane_y, up_x, _, end_x] = numbers[..] else {
                panic!("unexpected path {path}");
            };
            assert!(lane_y > bottom && lane_y < layout.height, "{path}");
            assert!(end_x - up_x >= 14, "room for the arrowhead: {path}");
            for corner in &layout.positions {
                let inside = |x: usize| x >= corner.x && x <= corner.x + layout.box_width;
                assert!(!inside(down_x) && !inside(up_x), "{path} crosses a box");
            }
        }
    }

    #[test]
    fn edges_meeting_one_side_of_a_box_get_distinct_ports() {
        let view = normalized(&wide());
        let layout = Layout::of(&view.stages);
        let report_in: Vec<usize> = ["engine-fp16", "engine-int8", "train"]
            .map(|from| route_between(&view, &layout, from, "report").end.y)
            .to_vec();
        let mut distinct = report_in.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), 3);
        // The lane edge from train comes in from below, so it takes the lowest port.
        assert_eq!(report_in.iter().max(), Some(&report_in[2]));
    }

    #[test]
    fn one_arrow_per_known_edge() {
        let output = render(&normalized_diamond());
        assert_eq!(output.matches("marker-end=\"url(#arrow)\"").count(), 3);
        let mut view = diamond();
        view.stages[1].deps.push("missing".to_string());
        assert_eq!(render(&view).matches("class=\"edge\"").count(), 3);
    }

    #[test]
    fn boxes_are_coloured_by_status() {
        let output = render(&wide());
        for status in StageStatus::ALL {
            let style = status.style();
            assert!(output.contains(&format!(
                "fill=\"{}\" stroke=\"{}\"",
                style.fill, style.stroke
            )));
        }
        assert_eq!(StageStatus::UpToDate.style().fill, "#2e7d32");
    }

    #[test]
    fn legend_lists_every_status_with_counts() {
        let output = render(&wide());
        assert!(output.contains("up to date (2)</li>"));
        assert!(output.contains("stale (1)</li>"));
        assert!(output.contains("never built (1)</li>"));
        assert!(output.contains("failed (1)</li>"));
        assert!(output.contains("waits on upstream (1)</li>"));
        assert!(output.contains("unavailable here (1)</li>"));
    }

    #[test]
    fn table_has_a_row_per_stage_in_name_order() {
        let output = render(&wide());
        let rows: Vec<&str> = output
            .lines()
            .filter(|line| line.starts_with("<tr><td>"))
            .collect();
        assert_eq!(rows.len(), 7);
        assert!(
            rows[0].starts_with("<tr><td><code>calib-data</code></td><td>dataset</td><td>cpu</td>")
        );
        assert!(rows[1].contains(
            "<td class=\"duration\">2m03s</td><td><code>build/engine-fp16.out</code></td>"
        ));
        assert!(rows[6].starts_with("<tr><td><code>train</code>"));
    }

    #[test]
    fn stage_without_outputs_shows_a_dash() {
        let mut lonely = stage("solo", "command", "cpu", StageStatus::Stale, None, &[]);
        lonely.outputs.clear();
        let view = GraphView {
            pipeline: "p".to_string(),
            stages: vec![lonely],
        };
        assert!(render(&view).contains("<td class=\"duration\">-</td><td>-</td></tr>"));
    }
}
