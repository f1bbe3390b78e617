//! `report.md`: the overview table, the batch sweep, one section per model (parity, task
//! metrics, disagreements) and the environment.

use std::fmt::Write as _;

use super::metrics::Classification;
use super::segmentation::Segmentation;
use super::summary::{Disagreement, ModelResult, SlidingWindowInfo, Summary};

fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.1}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// A throughput (samples/s): one decimal, three below 1 (a volume end to end takes
/// seconds).
fn rate(v: f64) -> String {
    if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

fn size(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= (1u64 << 30) as f64 {
        format!("{:.2} GiB", b / (1u64 << 30) as f64)
    } else if b >= (1u64 << 20) as f64 {
        format!("{:.1} MiB", b / (1u64 << 20) as f64)
    } else if bytes >= 1024 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{bytes} B")
    }
}

fn pct(v: f64) -> String {
    format!("{:.2}%", v * 100.0)
}

/// A figure that may be undefined (NaN: "–") or infinite ("inf").
fn fig(v: f64) -> String {
    if v.is_nan() {
        "–".into()
    } else if v.is_infinite() {
        "inf".into()
    } else {
        format!("{v:.4}")
    }
}

/// The task metric in one cell.
fn task_cell(model: &ModelResult) -> String {
    let Some(task) = &model.task else {
        return "–".into();
    };
    let mut parts = Vec::new();
    if let Some(c) = &task.classification {
        parts.push(format!("accuracy {}", pct(c.accuracy)));
    }
    for (what, s) in [
        ("labels", &task.segmentation_vs_labels),
        ("ref", &task.segmentation_vs_reference),
    ] {
        if let Some(s) = s {
            parts.push(format!(
                "vs {what}: Dice {} · IoU {} · HD95 {}",
                fig(s.mean_dice),
                fig(s.mean_iou),
                fig(s.mean_hd95)
            ));
        }
    }
    if let Some(a) = task.agreement_with_reference {
        parts.push(format!("top-1 agreement {}", pct(a)));
    }
    if parts.is_empty() {
        "–".into()
    } else {
        parts.join(", ")
    }
}

fn verdict_cell(model: &ModelResult) -> String {
    match model.verdict.as_str() {
        "pass" => "✅ pass".into(),
        "fail" => "❌ FAIL".into(),
        other => other.into(),
    }
}

pub(super) fn markdown(summary: &Summary) -> String {
    let mut md = String::new();
    let p = &summary.provenance;
    let _ = writeln!(
        md,
        "# Report `{}` of pipeline `{}`\n\n{}{}\n",
        summary.stage,
        p.pipeline,
        p.date,
        p.commit
            .as_ref()
            .map(|c| format!(" · commit `{}`", &c[..c.len().min(12)]))
            .unwrap_or_else(|| " · not in a git repository".into())
    );
    let _ = writeln!(
        md,
        "Data: `{}` ({} samples of {:?}){}. Reference: {}.\n",
        summary.data.path,
        summary.data.samples,
        summary.data.sample_shape,
        summary
            .data
            .labels
            .as_ref()
            .map(|l| format!(", labels `{l}`"))
            .unwrap_or_default(),
        summary.reference.description
    );
    overview_table(&mut md, summary);
    let t = &summary.timing;
    let _ = writeln!(
        md,
        "\nTimes: {}; {} warm-up runs, then at least {} runs and {} s; threads: {}; {}, graph optimization {}. Each model's section also gives {}.\n",
        t.includes,
        t.warmup,
        t.iterations,
        t.min_duration_s,
        t.threads,
        t.provider,
        t.graph_optimization,
        t.end_to_end_includes
    );
    if let Some(sw) = &summary.sliding_window {
        let _ = writeln!(md, "{}\n", sliding_window_line(sw));
    }
    let _ = writeln!(md, "![latency](latency.svg)\n");
    sweep_section(&mut md, summary);
    if summary.models.iter().any(|m| !m.parity.is_empty()) {
        let _ = writeln!(md, "![absolute error per bin](errors.svg)\n");
    }
    for w in &summary.warnings {
        let _ = writeln!(md, "> ⚠ {w}\n");
    }
    for m in &summary.models {
        model_section(&mut md, summary, m);
    }
    environment_section(&mut md, summary);
    md
}

fn overview_table(md: &mut String, summary: &Summary) {
    let swept = !summary.batch_sweep.is_empty();
    let _ = writeln!(
        md,
        "| model | precision | size | batch | mean ms | p50 ms | p90 ms | p99 ms | throughput (samples/s) |{} parity | task |",
        if swept {
            " best throughput (batch) |"
        } else {
            ""
        }
    );
    let _ = writeln!(
        md,
        "|---|---|--:|--:|--:|--:|--:|--:|--:|{}---|---|",
        if swept { "--:|" } else { "" }
    );
    let best = |m: &ModelResult| match (swept, best_throughput(m)) {
        (false, _) => String::new(),
        (true, None) => " – |".into(),
        (true, Some((batch, t))) => format!(" {} ({batch}) |", rate(t)),
    };
    for m in &summary.models {
        let Some(l) = &m.latency else {
            // Not run here: say why, and no figures that look like measurements.
            let precision = if m.precision == "unknown" {
                "–"
            } else {
                m.precision.as_str()
            };
            let on_disk = if m.size_bytes == 0 {
                "–".to_string()
            } else {
                size(m.size_bytes)
            };
            let _ = writeln!(
                md,
                "| `{}` | {precision} | {on_disk} | – | – | – | – | – | – |{} {} | – |",
                m.name,
                best(m),
                m.note.as_deref().unwrap_or(&m.status)
            );
            continue;
        };
        let _ = writeln!(
            md,
            "| `{}` | {} | {} | {} | {} | {} | {} | {} | {}{} |{} {} | {} |",
            m.name,
            m.precision,
            size(m.size_bytes),
            m.batch,
            ms(l.mean_ms),
            ms(l.median_ms),
            ms(l.p90_ms),
            ms(l.p99_ms),
            rate(l.throughput),
            if m.noisy { " ⚠ noisy" } else { "" },
            best(m),
            verdict_cell(m),
            task_cell(m)
        );
    }
}

/// The batch size of the sweep with the highest throughput, and that throughput.
pub(super) fn best_throughput(m: &ModelResult) -> Option<(usize, f64)> {
    m.batch_sweep
        .iter()
        .filter_map(|p| Some((p.batch, p.latency.as_ref()?.throughput)))
        .max_by(|a, b| a.1.total_cmp(&b.1))
}

/// How the samples were cut into windows.
fn sliding_window_line(sw: &SlidingWindowInfo) -> String {
    let s = &sw.settings;
    format!(
        "Sliding window (MONAI's `sliding_window_inference`): roi {:?}, overlap {:?}, mode {}, sigma_scale {:?}, {} windows per run, padding {} (cval {}): {} windows per sample. The timed runs are on windows of the first sample (batch = windows per run); end to end is one sample: its windows cut, run, blended and cropped.",
        s.roi,
        s.overlap,
        serde_json::to_value(s.mode)
            .unwrap_or_default()
            .as_str()
            .unwrap_or("?"),
        s.sigma_scale,
        s.sw_batch_size,
        serde_json::to_value(s.padding_mode)
            .unwrap_or_default()
            .as_str()
            .unwrap_or("?"),
        s.cval,
        sw.windows_per_sample
    )
}

/// `batch = [...]`: latency and throughput of every model at every batch size.
fn sweep_section(md: &mut String, summary: &Summary) {
    if summary.batch_sweep.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "### Batch sweep
"
    );
    let heads: Vec<String> = summary
        .batch_sweep
        .iter()
        .map(|b| format!("batch {b}"))
        .collect();
    let _ = writeln!(
        md,
        "Mean latency per run · throughput (samples/s).
"
    );
    let _ = writeln!(md, "| model | {} |", heads.join(" | "));
    let _ = writeln!(md, "|---|{}", "--:|".repeat(heads.len()));
    let mut reasons = Vec::new();
    for m in &summary.models {
        let cells: Vec<String> = summary
            .batch_sweep
            .iter()
            .map(|&b| match m.batch_sweep.iter().find(|p| p.batch == b) {
                Some(p) => match (&p.latency, &p.skipped) {
                    (Some(l), _) => format!("{} · {}", ms(l.mean_ms), rate(l.throughput)),
                    (None, Some(why)) => {
                        reasons.push(format!("`{}` at batch {b}: {why}", m.name));
                        format!("skipped ({})", reasons.len())
                    }
                    (None, None) => "–".into(),
                },
                None => "–".into(),
            })
            .collect();
        let _ = writeln!(md, "| `{}` | {} |", m.name, cells.join(" | "));
    }
    for (i, why) in reasons.iter().enumerate() {
        let _ = writeln!(md, "\n({}) {why}", i + 1);
    }
    let _ = writeln!(md, "\n![throughput by batch size](throughput.svg)\n");
}

fn model_section(md: &mut String, summary: &Summary, m: &ModelResult) {
    let _ = writeln!(md, "## `{}`\n", m.name);
    let _ = writeln!(
        md,
        "File `{}`, {}, {}{}.\n",
        m.path,
        m.precision,
        size(m.size_bytes),
        m.runs_on
            .as_ref()
            .map(|r| format!(", run on {r}"))
            .unwrap_or_default()
    );
    if let Some(timing) = &m.timing {
        let _ = writeln!(md, "Times: {timing}.\n");
    }
    if let Some(note) = &m.note {
        let _ = writeln!(md, "{note}\n");
        return;
    }
    if let Some(l) = &m.latency {
        let _ = writeln!(
            md,
            "Latency over {} runs (ms): min {} · mean {} · median {} · p90 {} · p95 {} · p99 {} · max {} · spread (p90 - p10) / median {:.1}% · CV {:.1}%\n",
            l.runs,
            ms(l.min_ms),
            ms(l.mean_ms),
            ms(l.median_ms),
            ms(l.p90_ms),
            ms(l.p95_ms),
            ms(l.p99_ms),
            ms(l.max_ms),
            l.spread * 100.0,
            l.cv * 100.0
        );
    }
    if let Some(e) = &m.end_to_end {
        let _ = writeln!(
            md,
            "End to end over {} run(s) of one pass over the data (ms, with the input and output copies): mean {} · median {} · max {} · {} samples/s\n",
            e.runs,
            ms(e.mean_ms),
            ms(e.median_ms),
            ms(e.max_ms),
            rate(e.throughput)
        );
    }
    parity_section(md, m);
    if let Some(task) = &m.task {
        if let Some(c) = &task.classification {
            classification_section(md, summary, c);
        }
        if let Some(list) = &task.disagreements {
            disagreements_section(md, summary, list);
        }
        for (what, s) in [
            ("the labels", &task.segmentation_vs_labels),
            ("the reference's argmax", &task.segmentation_vs_reference),
        ] {
            if let Some(s) = s {
                segmentation_section(md, what, s);
            }
        }
        if let Some(a) = task.agreement_with_reference {
            let _ = writeln!(md, "Argmax agreement with the reference: {}\n", pct(a));
        }
    }
}

fn parity_section(md: &mut String, m: &ModelResult) {
    if m.parity.is_empty() {
        let _ = writeln!(md, "Parity: {}.\n", m.verdict);
        return;
    }
    if let Some(t) = &m.tolerance {
        let _ = writeln!(
            md,
            "Parity ({}): tolerance atol {:e} + rtol {:e} × max|ref|, cosine ≥ {}\n",
            verdict_cell(m),
            t.atol,
            t.rtol,
            t.cosine
        );
    }
    let _ = writeln!(
        md,
        "| output | max abs | mean abs | p99 abs | max rel | mean rel | cosine | NaN/Inf | verdict |"
    );
    let _ = writeln!(md, "|---|--:|--:|--:|--:|--:|--:|--:|---|");
    for p in &m.parity {
        let f = &p.figures;
        let _ = writeln!(
            md,
            "| `{}` | {:.3e} | {:.3e} | {:.3e} | {:.3e} | {:.3e} | {:.6} | {} | {} |",
            p.output,
            f.max_abs,
            f.mean_abs,
            f.p99_abs,
            f.max_rel,
            f.mean_rel,
            f.cosine,
            f.non_finite,
            p.failure.as_deref().unwrap_or("pass").replace('|', "\\|")
        );
    }
    let _ = writeln!(md);
    for p in &m.parity {
        let h = &p.errors;
        let mut header = vec!["0".to_string(), format!("(0, {:e})", h.edges[1])];
        for pair in h.edges[1..].windows(2) {
            header.push(format!("[{:e}, {:e})", pair[0], pair[1]));
        }
        header.push(format!("≥ {:e}", h.edges[h.edges.len() - 1]));
        let mut counts = vec![h.zero.to_string()];
        counts.extend(h.counts.iter().map(u64::to_string));
        let _ = writeln!(
            md,
            "Absolute error of `{}` against the reference, values per bin:\n\n| {} |\n|{}\n| {} |\n",
            p.output,
            header.join(" | "),
            "--:|".repeat(header.len()),
            counts.join(" | ")
        );
    }
}

fn classification_section(md: &mut String, summary: &Summary, c: &Classification) {
    let _ = writeln!(
        md,
        "Accuracy {} on {} labelled samples.\n",
        pct(c.accuracy),
        c.labelled
    );
    let _ = writeln!(md, "| class | precision | recall | F1 | support |");
    let _ = writeln!(md, "|--:|--:|--:|--:|--:|");
    for s in &c.per_class {
        let _ = writeln!(
            md,
            "| {} | {:.4} | {:.4} | {:.4} | {} |",
            summary.class_name(s.class),
            s.precision,
            s.recall,
            s.f1,
            s.support
        );
    }
    let names: Vec<String> = (0..c.confusion.len())
        .map(|i| summary.class_name(i))
        .collect();
    let _ = writeln!(
        md,
        "\nConfusion matrix (rows true, columns predicted):\n\n| true \\ predicted | {} |\n|---|{}",
        names.join(" | "),
        "--:|".repeat(names.len())
    );
    for (name, row) in names.iter().zip(&c.confusion) {
        let cells: Vec<String> = row.iter().map(u64::to_string).collect();
        let _ = writeln!(md, "| {name} | {} |", cells.join(" | "));
    }
    let _ = writeln!(md);
}

/// The first disagreements in the report (all of them are in `disagreements.csv`).
const DISAGREEMENTS_SHOWN: usize = 20;

fn disagreements_section(md: &mut String, summary: &Summary, list: &[Disagreement]) {
    if list.is_empty() {
        let _ = writeln!(
            md,
            "No sample where the top class differs from the reference's.\n"
        );
        return;
    }
    let _ = writeln!(
        md,
        "{} sample(s) where the top class differs from the reference's{}:\n\n| index | file | reference | model | confidence |\n|--:|---|---|---|--:|",
        list.len(),
        if list.len() > DISAGREEMENTS_SHOWN {
            format!(" (the first {DISAGREEMENTS_SHOWN}; all in disagreements.csv)")
        } else {
            String::new()
        }
    );
    for d in list.iter().take(DISAGREEMENTS_SHOWN) {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {:.4} |",
            d.index,
            summary.sample_file(d.index),
            summary.class_name(d.reference),
            summary.class_name(d.predicted),
            d.confidence
        );
    }
    let _ = writeln!(md);
}

fn segmentation_section(md: &mut String, what: &str, s: &Segmentation) {
    let o = &s.options;
    let _ = writeln!(
        md,
        "Segmentation vs {what} (Dice: reduction {:?}, include_background {}, ignore_empty {}; IoU: MONAI MeanIoU; HD95: MONAI Hausdorff distance, percentile 95, foreground classes): mean Dice {} · mean IoU {} · mean HD95 {}\n",
        o.reduction,
        o.include_background,
        o.ignore_empty,
        fig(s.mean_dice),
        fig(s.mean_iou),
        fig(s.mean_hd95)
    );
    let _ = writeln!(md, "| class | Dice | IoU | HD95 |\n|--:|--:|--:|--:|");
    for (k, c) in s.classes.iter().enumerate() {
        let hd = s
            .hd95_classes
            .iter()
            .position(|h| h == c)
            .map(|i| fig(s.hd95_per_class[i]))
            .unwrap_or_else(|| "–".into());
        let _ = writeln!(
            md,
            "| {c} | {} | {} | {hd} |",
            fig(s.dice_per_class[k]),
            fig(s.iou_per_class[k])
        );
    }
    let _ = writeln!(md);
}

fn environment_section(md: &mut String, summary: &Summary) {
    let e = &summary.environment;
    let _ = writeln!(md, "## Environment\n");
    let _ = writeln!(md, "| | |\n|---|---|");
    let _ = writeln!(md, "| CPU | {} ({} cores available) |", e.cpu, e.cores);
    let gpus: Vec<String> = e
        .gpus
        .iter()
        .map(|g| format!("{} ({}, driver {})", g.name, g.memory, g.driver))
        .collect();
    let _ = writeln!(
        md,
        "| GPU | {} |",
        if gpus.is_empty() {
            "none (nvidia-smi not available)".into()
        } else {
            gpus.join("; ")
        }
    );
    let none = || "not installed".to_string();
    let _ = writeln!(md, "| OS | {} |", e.os);
    let _ = writeln!(md, "| Python | {} |", e.python.clone().unwrap_or_else(none));
    let _ = writeln!(
        md,
        "| ONNX Runtime | {} |",
        e.onnxruntime.clone().unwrap_or_else(none)
    );
    let _ = writeln!(md, "| torch | {} |", e.torch.clone().unwrap_or_else(none));
    let _ = writeln!(
        md,
        "| TensorRT | {} |",
        e.tensorrt.clone().unwrap_or_else(none)
    );
    let _ = writeln!(md, "| threads | {} |", e.threads);
    let _ = writeln!(md, "| pochi | {} |", e.pochi);
}
