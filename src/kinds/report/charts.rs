//! Charts as self-contained SVG, written directly (no font files or system libraries:
//! text is left to the viewer's default sans-serif font).

use std::fmt::Write as _;

use super::ModelResult;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn header(width: u32, height: u32) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    )
}

/// An SVG saying there is nothing to draw.
pub fn empty(message: &str) -> String {
    let mut svg = header(400, 60);
    let _ = writeln!(
        svg,
        "<text x=\"10\" y=\"35\">{}</text>\n</svg>",
        escape(message)
    );
    svg
}

/// Horizontal bars per model: median latency, with whiskers from min to p99 and a mark at
/// the mean.
pub fn latency(models: &[ModelResult]) -> String {
    let timed: Vec<(&str, &super::metrics::Latency)> = models
        .iter()
        .filter_map(|m| m.latency.as_ref().map(|l| (m.name.as_str(), l)))
        .collect();
    if timed.is_empty() {
        return empty("no model was timed");
    }
    let (left, right, row, top) = (180.0, 80.0, 36.0, 40.0);
    let plot = 480.0;
    let width = left + plot + right;
    let height = top + row * timed.len() as f64 + 40.0;
    let max = timed
        .iter()
        .map(|(_, l)| l.p99_ms)
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let x = |v: f64| left + plot * v / max;
    let mut svg = header(width as u32, height as u32);
    let _ = writeln!(
        svg,
        "<text x=\"10\" y=\"20\" font-size=\"14\" font-weight=\"bold\">Latency per run (ms): bar = median, whisker = min..p99, tick = mean</text>"
    );
    for (i, (name, l)) in timed.iter().enumerate() {
        let y = top + row * i as f64;
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            left - 8.0,
            y + row / 2.0 + 4.0,
            escape(name)
        );
        let _ = writeln!(
            svg,
            "<rect x=\"{left:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#4c78a8\"><title>median {:.3} ms</title></rect>",
            y + 6.0,
            (x(l.median_ms) - left).max(1.0),
            row - 12.0,
            l.median_ms
        );
        let mid = y + row / 2.0;
        let _ = writeln!(
            svg,
            "<line x1=\"{:.1}\" y1=\"{mid:.1}\" x2=\"{:.1}\" y2=\"{mid:.1}\" stroke=\"black\"/>",
            x(l.min_ms),
            x(l.p99_ms)
        );
        let _ = writeln!(
            svg,
            "<line x1=\"{0:.1}\" y1=\"{1:.1}\" x2=\"{0:.1}\" y2=\"{2:.1}\" stroke=\"#e45756\" stroke-width=\"2\"/>",
            x(l.mean_ms),
            y + 4.0,
            y + row - 4.0
        );
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\">{:.3}</text>",
            x(l.p99_ms) + 6.0,
            mid + 4.0,
            l.median_ms
        );
    }
    let axis_y = top + row * timed.len() as f64 + 4.0;
    let _ = writeln!(
        svg,
        "<line x1=\"{left}\" y1=\"{axis_y:.1}\" x2=\"{:.1}\" y2=\"{axis_y:.1}\" stroke=\"#888\"/>",
        left + plot
    );
    for k in 0..=4 {
        let v = max * k as f64 / 4.0;
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#555\">{:.3}</text>",
            x(v),
            axis_y + 16.0,
            v
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// The confusion matrix (rows: true class, columns: predicted), shaded by row share.
pub fn confusion(model: &str, matrix: &[Vec<u64>]) -> String {
    let n = matrix.len().max(1);
    let cell = (480.0 / n as f64).clamp(8.0, 48.0);
    let (left, top) = (70.0, 60.0);
    let size = cell * n as f64;
    let mut svg = header((left + size + 20.0) as u32, (top + size + 40.0) as u32);
    let _ = writeln!(
        svg,
        "<text x=\"10\" y=\"20\" font-size=\"14\" font-weight=\"bold\">Confusion matrix: {} (rows true, columns predicted)</text>",
        escape(model)
    );
    for (t, row) in matrix.iter().enumerate() {
        let total: u64 = row.iter().sum();
        for (p, &count) in row.iter().enumerate() {
            let share = if total > 0 {
                count as f64 / total as f64
            } else {
                0.0
            };
            let shade = (255.0 - share * 200.0) as u8;
            let (cx, cy) = (left + cell * p as f64, top + cell * t as f64);
            let _ = writeln!(
                svg,
                "<rect x=\"{cx:.1}\" y=\"{cy:.1}\" width=\"{cell:.1}\" height=\"{cell:.1}\" fill=\"rgb({shade},{shade},255)\" stroke=\"#ccc\"><title>true {t}, predicted {p}: {count}</title></rect>"
            );
            if cell >= 20.0 {
                let _ = writeln!(
                    svg,
                    "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{count}</text>",
                    cx + cell / 2.0,
                    cy + cell / 2.0 + 4.0
                );
            }
        }
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{t}</text>",
            left - 6.0,
            top + cell * t as f64 + cell / 2.0 + 4.0
        );
    }
    for p in 0..matrix.len() {
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{p}</text>",
            left + cell * p as f64 + cell / 2.0,
            top - 6.0
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confusion_svg_names_each_cell() {
        let svg = confusion("m<1>", &[vec![2, 1], vec![0, 3]]);
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("m&lt;1&gt;"));
        assert!(svg.contains("true 0, predicted 1: 1"));
        assert!(svg.trim_end().ends_with("</svg>"));
    }
}
