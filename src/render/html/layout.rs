//! The graph page's drawing laid out: a column per layer, boxes as tall and column gaps
//! as wide as their edges need, a port per edge on each box side, and a lane with its own
//! uprights for each edge that skips a layer.

use super::super::{StageView, format_duration, known_dep_indices, layers};

pub(super) const MARGIN: usize = 20;
const BOX_HEIGHT: usize = 58;
const MIN_BOX_WIDTH: usize = 140;
pub(super) const BOX_PADDING: usize = 12;
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
pub(super) const LANE_GAP: usize = 14;

/// Where every stage's box and every edge sits, and the size of the whole drawing.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Layout {
    pub(super) positions: Vec<Point>,
    pub(super) routes: Vec<Route>,
    pub(super) box_width: usize,
    pub(super) box_height: usize,
    pub(super) width: usize,
    pub(super) height: usize,
}

/// A point in SVG user units; for a box, its top-left corner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Point {
    pub(super) x: usize,
    pub(super) y: usize,
}

/// One drawn edge, from the right side of its dep's box to the left side of its dependent's.
/// An edge between neighbouring columns is a curve across the gap between them; one that
/// skips a column runs along a lane below every box, so that it never passes behind one,
/// going down at `down_x` (in the gap after its dep) and up at `up_x` (in the gap before
/// its dependent). Every edge has its own port on each box side and its own uprights, so
/// no two edges share an end point or run on top of each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Route {
    pub(super) from: usize,
    pub(super) to: usize,
    pub(super) start: Point,
    pub(super) end: Point,
    pub(super) lane: Option<usize>,
    pub(super) down_x: usize,
    pub(super) up_x: usize,
}

impl Layout {
    /// Columns are layers (longest path from a root); within a column, stages keep their
    /// name order and the column is centred vertically against the tallest one. Boxes are
    /// tall enough for their ports and gaps wide enough for their lane uprights.
    /// `stages` must be sorted by name.
    pub(super) fn of(stages: &[StageView]) -> Layout {
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
    pub(super) fn boxes_bottom(&self) -> usize {
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
pub(super) fn box_height(pairs: &[(usize, usize)], stages: usize) -> usize {
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
pub(super) fn routes(
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
pub(super) fn span(count: usize, size: usize, gap: usize) -> usize {
    count * size + count.saturating_sub(1) * gap
}

/// One width for every box: wide enough for the longest line of any box.
pub(super) fn box_width(stages: &[StageView]) -> usize {
    let longest = stages
        .iter()
        .flat_map(box_lines)
        .map(|line| line.chars().count())
        .max()
        .unwrap_or(0);
    (2 * BOX_PADDING + longest * CHAR_WIDTH).max(MIN_BOX_WIDTH)
}

/// The three lines of text in a stage's box.
pub(super) fn box_lines(stage: &StageView) -> [String; 3] {
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
