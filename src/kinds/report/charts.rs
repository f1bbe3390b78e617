//! Charts as self-contained SVG, drawn with `plotters`' SVG backend (no font files or
//! system libraries: text is laid out with plotters' size estimate and left to the viewer's
//! sans-serif font).

use std::error::Error;
use std::ops::Range;

use plotters::coord::Shift;
use plotters::coord::ranged1d::{KeyPointHint, NoDefaultFormatting, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::metrics::{ErrorHistogram, Latency};
use super::summary::ModelResult;

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;
type Drawn = Result<(), Box<dyn Error>>;

const FONT: &str = "sans-serif";
/// Font sizes in plotters' units (the SVG's `font-size` is these over 1.24).
const TITLE: u32 = 18;
const LABEL: u32 = 15;
const BAR: RGBColor = RGBColor(0x4c, 0x78, 0xa8);
const MEAN: RGBColor = RGBColor(0xe4, 0x57, 0x56);

/// Draws on a white `width x height` SVG.
fn svg(
    width: u32,
    height: u32,
    draw: impl FnOnce(&Area) -> Drawn,
) -> Result<String, Box<dyn Error>> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
        root.fill(&WHITE)?;
        draw(&root)?;
        root.present()?;
    }
    Ok(svg)
}

/// [`svg`], or on a drawing error an SVG saying so.
fn render(width: u32, height: u32, draw: impl FnOnce(&Area) -> Drawn) -> String {
    svg(width, height, draw).unwrap_or_else(|e| empty(&format!("cannot draw the chart: {e}")))
}

/// Pixels that `text` takes at `size`, by plotters' own estimate (about 0.46 em a char).
fn text_width(text: &str, size: u32) -> u32 {
    (text.chars().count() as f64 * f64::from(size) * 0.46).ceil() as u32
}

/// The width of the widest of `names` as labels.
fn widest(names: &[String]) -> u32 {
    names
        .iter()
        .map(|s| text_width(s, LABEL))
        .max()
        .unwrap_or(0)
}

/// The axis `0..n` of `n` unit slots (a model, a class), slot `i` spanning `i..i + 1`,
/// with a label at the middle of every `every`-th slot whatever the number of labels
/// plotters asks for. `down`: slot 0 at the top of a vertical axis.
struct Slots {
    n: usize,
    every: usize,
    down: bool,
}

fn slots(n: usize, every: usize, down: bool) -> Slots {
    Slots {
        n,
        every: every.max(1),
        down,
    }
}

impl Ranged for Slots {
    type FormatOption = NoDefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let share = value / self.n.max(1) as f64;
        let share = if self.down { 1.0 - share } else { share };
        limit.0 + (share * f64::from(limit.1 - limit.0)).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, _hint: Hint) -> Vec<f64> {
        (0..self.n)
            .step_by(self.every)
            .map(|i| i as f64 + 0.5)
            .collect()
    }

    fn range(&self) -> Range<f64> {
        0.0..self.n as f64
    }
}

impl ValueFormatter<f64> for Slots {
    fn format(value: &f64) -> String {
        format!("{}", value.floor())
    }
}

fn title_font() -> FontDesc<'static> {
    (FONT, TITLE).into_font().style(FontStyle::Bold)
}

/// A label's style, centred vertically on its point.
fn label(h: HPos, ink: &'static RGBColor) -> TextStyle<'static> {
    TextStyle::from((FONT, LABEL).into_font())
        .pos(Pos::new(h, VPos::Center))
        .color(ink)
}

/// The name of the slot holding `v` (slot `i` spans `i..i + 1`).
fn slot_name(names: &[String], v: f64) -> String {
    names.get(v.floor() as usize).cloned().unwrap_or_default()
}

/// An SVG saying there is nothing to draw.
pub(super) fn empty(message: &str) -> String {
    let width = (text_width(message, LABEL) + 40).max(400);
    // Not `render`, whose fallback is this. The SVG backend writes into a `String` and has
    // no failing path, so the empty string is never returned.
    svg(width, 60, |root| {
        root.draw(&Text::new(
            message.to_string(),
            (20, 30),
            label(HPos::Left, &BLACK),
        ))?;
        Ok(())
    })
    .unwrap_or_default()
}

/// Horizontal bars per model (named by its label): median latency, with whiskers from min
/// to p99 and a mark at the mean. The axis ends at a robust bound ([`axis_bound`]), so one
/// model's slow tail cannot squeeze the others' bars; a whisker beyond it is cut at the
/// bound and marked with an arrow and its p99.
pub(super) fn latency(models: &[ModelResult]) -> String {
    let timed: Vec<(&str, &Latency)> = models
        .iter()
        .filter_map(|m| m.latency.as_ref().map(|l| (m.label.as_str(), l)))
        .collect();
    if timed.is_empty() {
        return empty("no model was timed");
    }
    latency_bars(&timed)
}

/// A whisker longer than this many medians is cut.
const CLIP_MEDIANS: f64 = 3.0;

/// Where the latency axis ends: the longest whisker, each cut at [`CLIP_MEDIANS`] times its
/// own median (and never before the longest bar).
pub(super) fn axis_bound(timed: &[(&str, &Latency)]) -> f64 {
    timed
        .iter()
        .map(|(_, l)| l.p99_ms.min(CLIP_MEDIANS * l.median_ms).max(l.median_ms))
        .fold(0.0f64, f64::max)
        .max(1e-9)
}

/// A tick or figure in milliseconds without trailing zeros: "5 ms", "2.5 ms", "0.25 ms".
pub(super) fn ms_label(v: f64) -> String {
    let digits = if v.abs() >= 100.0 {
        0
    } else if v.abs() >= 10.0 {
        1
    } else if v.abs() >= 1.0 {
        2
    } else {
        3
    };
    let text = format!("{v:.digits$}");
    let text = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    };
    format!("{text} ms")
}

fn latency_bars(timed: &[(&str, &Latency)]) -> String {
    let n = timed.len();
    let names: Vec<String> = timed.iter().map(|(name, _)| name.to_string()).collect();
    let left = (widest(&names) + 16).clamp(60, 400);
    let bound = axis_bound(timed);
    // Room on the right of the bound for the figures.
    let x_range: Range<f64> = 0.0..bound * 1.3;
    render(left + 620, 110 + 36 * n as u32, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(
                "Latency per run: bar = median, whisker = min..p99, tick = mean",
                title_font(),
            )
            .margin(12)
            .x_label_area_size(50)
            .y_label_area_size(left)
            .build_cartesian_2d(x_range, slots(n, 1, true))?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .x_desc("latency per run")
            .x_labels(6)
            .x_label_formatter(&|v| ms_label(*v))
            .y_label_formatter(&|v| slot_name(&names, *v))
            .label_style((FONT, LABEL))
            .axis_desc_style((FONT, LABEL + 1))
            .draw()?;
        for (i, (_, l)) in timed.iter().enumerate() {
            draw_bar(&mut chart, i as f64, l, bound)?;
        }
        Ok(())
    })
}

type Bars<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, Slots>>;

/// One model's bar at slot `y`; a whisker beyond `bound` is cut there with an arrow.
fn draw_bar(chart: &mut Bars, y: f64, l: &Latency, bound: f64) -> Drawn {
    let mid = y + 0.5;
    let clipped = l.p99_ms > bound;
    let end = l.p99_ms.min(bound);
    chart.draw_series([Rectangle::new(
        [(0.0, y + 0.2), (l.median_ms.min(bound), y + 0.8)],
        BAR.filled(),
    )])?;
    chart.draw_series([
        PathElement::new([(l.min_ms, mid), (end, mid)], BLACK),
        PathElement::new([(l.min_ms, y + 0.4), (l.min_ms, y + 0.6)], BLACK),
        PathElement::new(
            [
                (l.mean_ms.min(bound), y + 0.12),
                (l.mean_ms.min(bound), y + 0.88),
            ],
            MEAN.stroke_width(2),
        ),
    ])?;
    let figure = if clipped {
        chart.draw_series([Polygon::new(
            [(end, y + 0.3), (end + bound * 0.025, mid), (end, y + 0.7)],
            BLACK.filled(),
        )])?;
        format!(
            "{} (p99 {}, cut)",
            ms_label(l.median_ms),
            ms_label(l.p99_ms)
        )
    } else {
        chart.draw_series([PathElement::new([(end, y + 0.4), (end, y + 0.6)], BLACK)])?;
        ms_label(l.median_ms)
    };
    chart.draw_series([Text::new(
        figure,
        (end + bound * 0.035, mid),
        label(HPos::Left, &BLACK),
    )])?;
    Ok(())
}

/// SVGs one below the other in one SVG (one alone is returned as it is).
pub(super) fn stack(svgs: &[String]) -> String {
    if let [one] = svgs {
        return one.clone();
    }
    let attribute = |svg: &str, name: &str| -> u32 {
        let head = &svg[..svg.find('>').unwrap_or(svg.len())];
        head.split(&format!(" {name}=\""))
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let width = svgs
        .iter()
        .map(|s| attribute(s, "width"))
        .max()
        .unwrap_or(0);
    let height: u32 = svgs.iter().map(|s| attribute(s, "height")).sum();
    let mut out = format!(
        "<svg width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" xmlns=\"http://www.w3.org/2000/svg\">\n"
    );
    let mut y = 0;
    for svg in svgs {
        out.push_str(&svg.replacen("<svg ", &format!("<svg x=\"0\" y=\"{y}\" "), 1));
        out.push('\n');
        y += attribute(svg, "height");
    }
    out.push_str("</svg>\n");
    out
}

/// The histogram of |model - reference| of one output: a bar per decade bin (bins from
/// [`ErrorHistogram`], exact zeros first), the count beside each bar.
pub(super) fn errors(model: &str, output: &str, h: &ErrorHistogram) -> String {
    let mut names = vec!["= 0".to_string(), format!("< {:e}", h.edges[1])];
    names.extend(
        h.edges[1..]
            .windows(2)
            .map(|w| format!("{:e} .. {:e}", w[0], w[1])),
    );
    names.push(format!("≥ {:e}", h.edges[h.edges.len() - 1]));
    let mut counts = vec![h.zero];
    counts.extend(&h.counts);
    let n = counts.len();
    let max = counts.iter().copied().max().unwrap_or(0).max(1) as f64;
    let left = (widest(&names) + 16).clamp(60, 400);
    let title = format!("|{model} - reference| of `{output}`: values per bin");
    render(left + 520, 100 + 26 * n as u32, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(&title, title_font())
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(left)
            .build_cartesian_2d(0.0..max * 1.2, slots(n, 1, true))?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .x_desc("values")
            .x_labels(5)
            // Counts are whole: no label on a fractional tick.
            .x_label_formatter(&|v| {
                if v.fract() == 0.0 {
                    format!("{v:.0}")
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|v| slot_name(&names, *v))
            .label_style((FONT, LABEL))
            .axis_desc_style((FONT, LABEL + 1))
            .draw()?;
        for (i, &count) in counts.iter().enumerate() {
            let y = i as f64;
            chart.draw_series([Rectangle::new(
                [(0.0, y + 0.15), (count as f64, y + 0.85)],
                BAR.filled(),
            )])?;
            chart.draw_series([Text::new(
                count.to_string(),
                (count as f64 + max * 0.01, y + 0.5),
                label(HPos::Left, &BLACK),
            )])?;
        }
        Ok(())
    })
}

/// The confusion matrix (rows: true class, columns: predicted), shaded by row share, with
/// the count in each cell (where cells are large enough) and `classes[i]`, else `i`, naming
/// class `i` on both axes.
pub(super) fn confusion(model: &str, matrix: &[Vec<u64>], classes: &[String]) -> String {
    let n = matrix.len().max(1);
    let cell = (480.0 / n as f64).clamp(8.0, 64.0);
    let size = (cell * n as f64).ceil() as u32;
    // Label every class while labels are at least 16 px apart, else every few.
    let every = (16.0 / cell).ceil() as usize;
    let names: Vec<String> = (0..n)
        .map(|i| classes.get(i).cloned().unwrap_or_else(|| i.to_string()))
        .collect();
    let longest = widest(&names);
    let left = (longest + 40).clamp(60, 260);
    // Column names are written upwards where they are wider than their columns.
    let upright = f64::from(longest) > cell * every as f64 - 6.0;
    let bottom = if upright { left } else { 50 };
    let title = format!("Confusion matrix: {model} (rows true, columns predicted)");
    let chart_width = left + size + 24;
    // Bold text runs wider than plotters' estimate.
    let width = chart_width.max(text_width(&title, TITLE) * 11 / 10 + 40);
    render(width, size + bottom + 60, |root| {
        let side = (width - chart_width) / 2;
        let area = root.titled(&title, title_font())?.margin(0, 0, side, side);
        let mut chart = ChartBuilder::on(&area)
            .margin(12)
            .x_label_area_size(bottom)
            .y_label_area_size(left)
            .build_cartesian_2d(slots(n, every, false), slots(n, every, true))?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("predicted")
            .y_desc("true")
            .label_style((FONT, LABEL))
            .axis_desc_style((FONT, LABEL + 1))
            // plotters centres a turned label on its tick, half of it over the cells, so
            // turned column names are written below instead.
            .x_label_formatter(&|v| match upright {
                true => String::new(),
                false => slot_name(&names, *v),
            })
            .y_label_formatter(&|v| slot_name(&names, *v))
            .draw()?;
        if upright {
            let style = TextStyle::from((FONT, LABEL).into_font())
                .transform(FontTransform::Rotate270)
                .pos(Pos::new(HPos::Right, VPos::Center));
            for p in (0..n).step_by(every) {
                let (x, y) = chart.backend_coord(&(p as f64 + 0.5, n as f64));
                root.draw(&Text::new(names[p].clone(), (x, y + 10), style.clone()))?;
            }
        }
        for (t, row) in matrix.iter().enumerate() {
            let total: u64 = row.iter().sum();
            let y = t as f64;
            for (p, &count) in row.iter().enumerate() {
                let share = if total > 0 {
                    count as f64 / total as f64
                } else {
                    0.0
                };
                let shade = (255.0 - share * 200.0) as u8;
                let (x, corners) = (p as f64, [(p as f64, y), (p as f64 + 1.0, y + 1.0)]);
                chart.draw_series([
                    Rectangle::new(corners, RGBColor(shade, shade, 255).filled()),
                    Rectangle::new(corners, RGBColor(0xcc, 0xcc, 0xcc)),
                ])?;
                if cell >= 20.0 {
                    let ink = if share > 0.5 { &WHITE } else { &BLACK };
                    chart.draw_series([Text::new(
                        count.to_string(),
                        (x + 0.5, y + 0.5),
                        label(HPos::Center, ink),
                    )])?;
                }
            }
        }
        Ok(())
    })
}

/// Throughput against batch size (`batch = [...]`): a line per model over the batch sizes
/// it was timed at, on evenly spaced batch positions; the legend names every model, and
/// says which were not timed at any size.
pub(super) fn throughput(models: &[ModelResult], sweep: &[usize]) -> String {
    if sweep.is_empty() {
        return empty("no batch sweep (batch = [...]) was asked for");
    }
    let lines: Vec<(String, Vec<(f64, f64)>)> = models
        .iter()
        .map(|m| {
            let points = m
                .batch_sweep
                .iter()
                .filter_map(|p| {
                    let at = sweep.iter().position(|&b| b == p.batch)?;
                    Some((at as f64, p.latency.as_ref()?.throughput))
                })
                .collect();
            (m.label.clone(), points)
        })
        .collect();
    let top = lines
        .iter()
        .flat_map(|(_, points)| points.iter().map(|p| p.1))
        .fold(0.0f64, f64::max);
    let legend: Vec<String> = lines
        .iter()
        .map(|(name, points)| match points.is_empty() {
            true => format!("{name} (not timed)"),
            false => name.clone(),
        })
        .collect();
    let right = (widest(&legend) + 50).clamp(120, 400);
    let labels: Vec<String> = sweep.iter().map(usize::to_string).collect();
    render(640 + right, 420, |root| {
        let (plot, key) = root.split_horizontally(640);
        let mut chart = ChartBuilder::on(&plot)
            .caption("Throughput by batch size", title_font())
            .margin(12)
            .x_label_area_size(50)
            .y_label_area_size(70)
            .build_cartesian_2d(-0.5..sweep.len() as f64 - 0.5, 0.0..(top * 1.15).max(1e-9))?;
        chart
            .configure_mesh()
            .x_desc("batch size")
            .y_desc("samples/s")
            .x_labels(sweep.len() * 2 + 1)
            .x_label_formatter(&|v| {
                let i = v.round();
                match (v - i).abs() < 1e-6 && i >= 0.0 {
                    true => labels.get(i as usize).cloned().unwrap_or_default(),
                    false => String::new(),
                }
            })
            .label_style((FONT, LABEL))
            .axis_desc_style((FONT, LABEL + 1))
            .draw()?;
        for (i, (_, points)) in lines.iter().enumerate() {
            let colour = Palette99::pick(i).to_rgba();
            chart.draw_series([PathElement::new(points.clone(), colour.stroke_width(2))])?;
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, colour.filled())))?;
        }
        for (i, name) in legend.iter().enumerate() {
            let y = 60 + 26 * i as i32;
            let colour = Palette99::pick(i).to_rgba();
            key.draw(&Rectangle::new([(8, y - 6), (28, y + 6)], colour.filled()))?;
            key.draw(&Text::new(name.clone(), (36, y), label(HPos::Left, &BLACK)))?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests;
