//! The report's files: `summary.json`, `report.md`, `latency.svg`, and for classification
//! `predictions.csv` (pochitrain's columns), `classification_report.csv` and
//! `confusion_matrix.svg`.

use std::fmt::Write as _;
use std::path::PathBuf;

use super::config::Config;
use super::{InvocationContext, ModelResult, Summary, charts};

/// Writes every declared output; returns the absolute paths written.
pub fn write_all(
    context: &InvocationContext,
    config: &Config,
    summary: &Summary,
) -> Result<Vec<PathBuf>, String> {
    let mut written = Vec::new();
    for output in &config.outputs {
        let Some(relative) = context.outputs.get(&output.key) else {
            continue;
        };
        let path = context.dir.join(relative);
        let text = match output.key.as_str() {
            "summary" => serde_json::to_string_pretty(summary).map_err(|e| e.to_string())? + "\n",
            "report" => markdown(summary),
            "latency_chart" => charts::latency(&summary.models),
            "predictions" => predictions(summary),
            "classification_report" => classification_report(summary),
            "confusion_matrix" => {
                let first = summary.models.iter().find_map(|m| {
                    m.task
                        .as_ref()
                        .and_then(|t| t.classification.as_ref())
                        .map(|c| (m.name.as_str(), c))
                });
                match first {
                    Some((name, c)) => {
                        let classes: Vec<String> = (0..c.confusion.len())
                            .map(|i| class_name(summary, i))
                            .collect();
                        charts::confusion(name, &c.confusion, &classes)
                    }
                    None => charts::empty("no labelled classification results"),
                }
            }
            other => return Err(format!("the report does not know output `{other}`")),
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.1}")
    } else if v >= 1.0 {
        format!("{v:.2}")
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
    } else {
        format!("{:.1} KiB", b / 1024.0)
    }
}

fn pct(v: f64) -> String {
    format!("{:.2}%", v * 100.0)
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
    if let Some(d) = task.mean_dice_vs_labels {
        parts.push(format!("Dice vs labels {d:.4}"));
    }
    if let Some(d) = task.mean_dice_vs_reference {
        parts.push(format!("Dice vs ref {d:.4}"));
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

pub fn markdown(summary: &Summary) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Report: `{}`\n", summary.stage);
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
    let _ = writeln!(
        md,
        "| model | precision | size | batch | mean ms | p50 ms | p90 ms | p99 ms | throughput (samples/s) | parity | task |"
    );
    let _ = writeln!(md, "|---|---|--:|--:|--:|--:|--:|--:|--:|---|---|");
    for m in &summary.models {
        match &m.latency {
            Some(l) => {
                let _ = writeln!(
                    md,
                    "| `{}` | {} | {} | {} | {} | {} | {} | {} | {:.1}{} | {} | {} |",
                    m.name,
                    m.precision,
                    size(m.size_bytes),
                    m.batch,
                    ms(l.mean_ms),
                    ms(l.median_ms),
                    ms(l.p90_ms),
                    ms(l.p99_ms),
                    l.throughput,
                    if m.noisy { " ⚠ noisy" } else { "" },
                    verdict_cell(m),
                    task_cell(m)
                );
            }
            None => {
                let _ = writeln!(
                    md,
                    "| `{}` | {} | {} | – | – | – | – | – | – | {} | – |",
                    m.name,
                    m.precision,
                    size(m.size_bytes),
                    m.note.as_deref().unwrap_or(&m.status)
                );
            }
        }
    }
    let _ = writeln!(
        md,
        "\nTimes: {}; {} warm-up runs, then at least {} runs and {} s; threads: {}; {}. Each model's section also gives {}.\n",
        summary.timing.includes,
        summary.timing.warmup,
        summary.timing.iterations,
        summary.timing.min_duration_s,
        summary.timing.threads,
        summary.timing.provider,
        summary.timing.end_to_end_includes
    );
    let _ = writeln!(md, "![latency](latency.svg)\n");
    for w in &summary.warnings {
        let _ = writeln!(md, "> ⚠ {w}\n");
    }
    for m in &summary.models {
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
            continue;
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
                "End to end over {} run(s) of one pass over the data (ms, with the input and output copies): mean {} · median {} · max {} · {:.1} samples/s\n",
                e.runs,
                ms(e.mean_ms),
                ms(e.median_ms),
                ms(e.max_ms),
                e.throughput
            );
        }
        if !m.parity.is_empty() {
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
                    p.failure.as_deref().unwrap_or("pass")
                );
            }
            let _ = writeln!(md);
        } else {
            let _ = writeln!(md, "Parity: {}.\n", m.verdict);
        }
        if let Some(task) = &m.task {
            if let Some(c) = &task.classification {
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
                        class_name(summary, s.class),
                        s.precision,
                        s.recall,
                        s.f1,
                        s.support
                    );
                }
                let _ = writeln!(md);
            }
            for (what, dice) in [
                ("the reference's argmax", &task.dice_vs_reference),
                ("the labels", &task.dice_vs_labels),
            ] {
                if let Some(dice) = dice {
                    let cells: Vec<String> = dice
                        .iter()
                        .enumerate()
                        .map(|(c, d)| match d {
                            Some(d) => format!("{c}: {d:.4}"),
                            None => format!("{c}: –"),
                        })
                        .collect();
                    let _ = writeln!(md, "Dice per class vs {what}: {}\n", cells.join(" · "));
                }
            }
            if let Some(a) = task.agreement_with_reference {
                let _ = writeln!(md, "Argmax agreement with the reference: {}\n", pct(a));
            }
        }
    }
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
    md
}

/// The dataset's class name, else `class_<i>`.
fn class_name(summary: &Summary, class: usize) -> String {
    summary
        .data
        .names
        .classes
        .as_ref()
        .and_then(|c| c.get(class).cloned())
        .unwrap_or_else(|| format!("class_{class}"))
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

/// pochitrain's per-image columns, one row per sample and model (the model last).
pub fn predictions(summary: &Summary) -> String {
    let mut out = String::from(
        "image_path,predicted,predicted_class,true,true_class,confidence,correct,model\n",
    );
    let labels: Option<Vec<i64>> = summary.labels.as_ref().map(|l| l.iter().copied().collect());
    let names = &summary.data.names;
    for m in &summary.models {
        for (i, (&p, &conf)) in m.predictions.iter().zip(&m.confidence).enumerate() {
            let truth = labels
                .as_ref()
                .and_then(|l| l.get(i).copied())
                .filter(|&t| t >= 0);
            let (t, tc, correct) = match truth {
                Some(t) => (
                    t.to_string(),
                    class_name(summary, t as usize),
                    (t as usize == p).to_string(),
                ),
                None => (String::new(), String::new(), String::new()),
            };
            let path = names
                .files
                .as_ref()
                .and_then(|f| f.get(i).cloned())
                .unwrap_or_else(|| format!("{}#{i}", summary.data.path));
            let _ = writeln!(
                out,
                "{},{p},{},{t},{},{conf:.6},{correct},{}",
                csv_field(&path),
                csv_field(&class_name(summary, p)),
                csv_field(&tc),
                csv_field(&m.name)
            );
        }
    }
    out
}

/// Per-class precision / recall / F1 / support for every labelled model.
pub fn classification_report(summary: &Summary) -> String {
    let mut out = String::from("model,class,class_name,precision,recall,f1-score,support\n");
    for m in &summary.models {
        let Some(c) = m.task.as_ref().and_then(|t| t.classification.as_ref()) else {
            continue;
        };
        for s in &c.per_class {
            let _ = writeln!(
                out,
                "{},{},{},{:.6},{:.6},{:.6},{}",
                csv_field(&m.name),
                s.class,
                csv_field(&class_name(summary, s.class)),
                s.precision,
                s.recall,
                s.f1,
                s.support
            );
        }
        let _ = writeln!(
            out,
            "{},accuracy,accuracy,,,{:.6},{}",
            csv_field(&m.name),
            c.accuracy,
            c.labelled
        );
    }
    out
}
