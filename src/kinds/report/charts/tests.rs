//! Unit tests of the charts.

use super::super::metrics;
use super::*;

fn well_formed(svg: &str) {
    assert!(svg.starts_with("<svg"), "{svg}");
    assert!(svg.trim_end().ends_with("</svg>"), "{svg}");
    assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
}

#[test]
fn confusion_svg_writes_counts_and_class_names() {
    let classes = ["cat".to_string(), "dog & co".to_string()];
    let svg = confusion("m<1>", &[vec![2, 1], vec![0, 7]], &classes);
    well_formed(&svg);
    assert!(svg.contains("m&lt;1&gt;"), "{svg}");
    for text in ["cat", "dog &amp; co", "predicted", "true"] {
        assert!(
            svg.contains(&format!(">\n{text}\n</text>")),
            "{text}: {svg}"
        );
    }
    for count in [2, 1, 0, 7] {
        assert!(
            svg.contains(&format!(">\n{count}\n</text>")),
            "{count}: {svg}"
        );
    }
}

#[test]
fn confusion_svg_falls_back_to_indices() {
    let svg = confusion("m", &[vec![1, 0, 0], vec![0, 1, 0], vec![0, 0, 1]], &[]);
    well_formed(&svg);
    assert!(svg.contains(">\n2\n</text>"), "{svg}");
}

#[test]
fn latency_svg_names_each_model() {
    let fast = metrics::latency(&[0.001, 0.002, 0.003], 3, 1);
    let slow = metrics::latency(&[0.010, 0.012, 0.020], 3, 1);
    let svg = latency_bars(&[("fast", &fast), ("slow", &slow)]);
    well_formed(&svg);
    for text in ["fast", "slow", "latency per run", "Latency per run", " ms"] {
        assert!(svg.contains(text), "{text}: {svg}");
    }
    assert!(svg.contains(&ms_label(slow.median_ms)), "{svg}");
    assert!(!svg.contains(".000"), "{svg}");
}

#[test]
fn one_slow_tail_does_not_set_the_axis() {
    // Median 1 ms, p99 far out at about 98 ms: cut at 3 medians, and said so.
    let mut times = vec![0.001; 99];
    times.push(10.0);
    let tail = metrics::latency(&times, 100, 1);
    let other = metrics::latency(&[0.002; 10], 10, 1);
    let bound = axis_bound(&[("tail", &tail), ("other", &other)]);
    assert!((bound - 3.0 * tail.median_ms).abs() < 1e-9, "{bound}");
    let svg = latency_bars(&[("tail", &tail), ("other", &other)]);
    well_formed(&svg);
    assert!(
        svg.contains("<polygon"),
        "no arrow for the cut whisker: {svg}"
    );
    assert!(svg.contains("cut)"), "{svg}");
}

#[test]
fn ticks_without_trailing_zeros() {
    assert_eq!(ms_label(5.0), "5 ms");
    assert_eq!(ms_label(2.5), "2.5 ms");
    assert_eq!(ms_label(0.25), "0.25 ms");
    assert_eq!(ms_label(120.0), "120 ms");
    assert_eq!(ms_label(0.0), "0 ms");
}

#[test]
fn stacked_svgs_keep_every_part() {
    let a = confusion("a", &[vec![1, 0], vec![0, 1]], &[]);
    let b = confusion("b", &[vec![2, 0], vec![0, 2]], &[]);
    let both = stack(&[a.clone(), b]);
    well_formed(&both);
    assert_eq!(both.matches("<svg").count(), 3);
    assert!(both.contains("Confusion matrix: a") && both.contains("Confusion matrix: b"));
    assert_eq!(stack(std::slice::from_ref(&a)), a);
}

#[test]
fn error_histogram_svg_has_every_bin_and_count() {
    let h = metrics::error_histogram(&[1.0, 1.5, 3.0, 7.0], &[1.0, 1.0, 1.0, 1.0]);
    let svg = errors("int8", "logits", &h);
    well_formed(&svg);
    assert!(svg.contains("|int8 - reference| of `logits`"), "{svg}");
    for text in ["= 0", "&lt; 1e-8", "1e-1 .. 1e0", "≥ 1e0"] {
        assert!(
            svg.contains(&format!(">\n{text}\n</text>")),
            "{text}: {svg}"
        );
    }
    // One exact zero, 0.5 in [0.1, 1), 2 and 6 in [1, inf).
    for count in ["1", "2"] {
        assert!(
            svg.contains(&format!(">\n{count}\n</text>")),
            "{count}: {svg}"
        );
    }
}

#[test]
fn empty_svg_says_why() {
    let svg = empty("no model was timed");
    well_formed(&svg);
    assert!(svg.contains("no model was timed"));
}
