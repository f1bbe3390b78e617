//! Unit tests of the HTML page and its layout.

use super::super::fixtures::{diamond, stage, wide};
use super::layout::MARGIN;
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
    assert!(output.contains("<title>say &quot;hi&quot; &lt;b&gt;&amp;co · pochi graph</title>"));
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
    assert!(
        rows[1].contains(
            "<td class=\"duration\">2m03s</td><td><code>build/engine-fp16.out</code></td>"
        )
    );
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
