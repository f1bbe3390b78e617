//! The comparison as text: a terminal table, Markdown for a pull request or
//! `$GITHUB_STEP_SUMMARY`, and JSON; arrows and words carry the meaning, not colour.

use std::fmt::Write;

use super::compare::{ReportDiff, Row, Timing};
use super::rule::is_share;
use super::{Diff, PipelineDiff};

/// A figure as people read it: shares in %, the rest with 4 significant digits.
fn value(metric: &str, v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(v) if v.is_infinite() => "inf".into(),
        Some(v) if is_share(metric) => format!("{:.2}%", v * 100.0),
        Some(v) if metric == "size_bytes" => format!("{v:.0}"),
        Some(v) => significant(v),
    }
}

fn significant(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let digits = (3 - v.abs().log10().floor() as i32).clamp(0, 9) as usize;
    format!("{v:.digits$}")
}

/// The change: an arrow, the difference (pp for shares) and the relative change.
fn change(row: &Row) -> String {
    let Some(c) = row.change else {
        return "–".into();
    };
    if c == 0.0 {
        return "= 0".into();
    }
    if !c.is_finite() {
        return "changed".into();
    }
    let arrow = if c > 0.0 { "▲" } else { "▼" };
    let amount = if is_share(&row.metric) {
        format!("{:+.2}pp", c * 100.0)
    } else {
        let sign = if c > 0.0 { "+" } else { "" };
        format!("{sign}{}", significant(c))
    };
    match row.relative {
        Some(r) if !is_share(&row.metric) => format!("{arrow} {amount} ({:+.1}%)", r * 100.0),
        _ => format!("{arrow} {amount}"),
    }
}

/// What the last column says: the broken rules, or why the row is not gated.
fn verdict(row: &Row) -> String {
    if !row.broken.is_empty() {
        return format!("✗ FAIL: {}", row.broken.join("; "));
    }
    if !row.gated {
        return "not gated: timed on another machine".into();
    }
    String::new()
}

fn timing_line(timing: &Timing) -> Option<String> {
    let differences = timing.differences.join("; ");
    match (timing.comparable, timing.retimed.is_empty()) {
        (true, true) => None,
        (_, false) => Some(format!(
            "latency of {} timed again here, baseline and working tree alternating (--retime){}",
            timing.retimed.join(", "),
            match timing.comparable {
                true => String::new(),
                false => format!("; the reports were timed on different machines ({differences})"),
            }
        )),
        (false, true) => Some(format!(
            "latency not comparable (timed on another machine: {differences}); latency rows are not gated (--retime times both here)"
        )),
    }
}

fn why_lines(pipeline: &PipelineDiff) -> Vec<String> {
    pipeline
        .why
        .iter()
        .map(|change| match change.status {
            "changed" => format!("{}: {}", change.stage, change.reasons.join("; ")),
            status => format!("{}: {status}", change.stage),
        })
        .collect()
}

/// The terminal table of every pipeline and report.
pub(crate) fn text(diff: &Diff) -> String {
    let mut out = String::new();
    for pipeline in &diff.pipelines {
        let _ = writeln!(
            out,
            "{} against {} ({})",
            pipeline.pipeline,
            diff.baseline.rev,
            short(&diff.baseline.commit)
        );
        let why = why_lines(pipeline);
        if why.is_empty() {
            let _ = writeln!(out, "why: no stage's key differs between the revisions");
        } else {
            let _ = writeln!(out, "why it changed:");
            for line in why {
                let _ = writeln!(out, "  - {line}");
            }
        }
        for report in &pipeline.reports {
            text_report(&mut out, report);
        }
    }
    out
}

fn text_report(out: &mut String, report: &ReportDiff) {
    let _ = writeln!(out, "\nreport {}:", report.stage);
    if let Some(line) = timing_line(&report.timing) {
        let _ = writeln!(out, "  {line}");
    }
    let header = ["model", "metric", "old", "new", "change", ""].map(String::from);
    let mut table: Vec<[String; 6]> = vec![header];
    for model in &report.models {
        for row in &model.rows {
            table.push([
                model.model.clone(),
                row.metric.clone(),
                value(&row.metric, row.old),
                value(&row.metric, row.new),
                change(row),
                verdict(row),
            ]);
        }
    }
    let widths: Vec<usize> = (0..6)
        .map(|c| {
            table
                .iter()
                .map(|r| r[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in &table {
        let mut line = String::from(" ");
        for (c, cell) in row.iter().enumerate() {
            let pad = widths[c] - cell.chars().count();
            let _ = write!(line, " {cell}{} ", " ".repeat(pad));
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
}

fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

/// Markdown: one table per report, readable without colour (arrows, **FAIL**).
pub(crate) fn markdown(diff: &Diff) -> String {
    let mut out = String::new();
    let verdict_line = match diff.broken() {
        0 => "no rule broken".to_string(),
        n => format!("**{n} rule(s) broken**"),
    };
    let _ = writeln!(
        out,
        "## pochi diff against `{}` (`{}`): {verdict_line}\n",
        diff.baseline.rev,
        short(&diff.baseline.commit)
    );
    for pipeline in &diff.pipelines {
        let _ = writeln!(out, "### `{}`\n", pipeline.pipeline);
        let why = why_lines(pipeline);
        if why.is_empty() {
            let _ = writeln!(out, "No stage's key differs between the revisions.\n");
        } else {
            let _ = writeln!(out, "Why it changed:\n");
            for line in why {
                let _ = writeln!(out, "- {}", escape(&line));
            }
            out.push('\n');
        }
        for report in &pipeline.reports {
            markdown_report(&mut out, report);
        }
    }
    out
}

fn markdown_report(out: &mut String, report: &ReportDiff) {
    let _ = writeln!(out, "#### report `{}`\n", report.stage);
    if let Some(line) = timing_line(&report.timing) {
        let _ = writeln!(out, "> ⚠ {}\n", escape(&line));
    }
    let _ = writeln!(out, "| model | metric | old | new | change | |");
    let _ = writeln!(out, "| --- | --- | ---: | ---: | ---: | --- |");
    for model in &report.models {
        for row in &model.rows {
            let verdict = match verdict(row) {
                _ if !row.broken.is_empty() => {
                    format!("❌ **FAIL**: {}", escape(&row.broken.join("; ")))
                }
                v => escape(&v),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {verdict} |",
                escape(&model.model),
                escape(&row.metric),
                value(&row.metric, row.old),
                value(&row.metric, row.new),
                change(row),
            );
        }
    }
    out.push('\n');
}

fn escape(text: &str) -> String {
    text.replace('|', "\\|")
}

/// `--json`: the whole comparison (schema in docs/diff.md).
pub(crate) fn json(diff: &Diff) -> String {
    serde_json::to_string_pretty(diff).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(metric: &str, old: f64, new: f64) -> Row {
        Row {
            metric: metric.into(),
            old: Some(old),
            new: Some(new),
            change: Some(new - old),
            relative: Some((new - old) / old),
            gated: true,
            broken: vec![],
        }
    }

    #[test]
    fn changes_read_as_points_for_shares_and_relative_otherwise() {
        assert_eq!(change(&row("accuracy", 0.8, 0.6)), "▼ -20.00pp");
        assert_eq!(change(&row("p50_ms", 1.0, 1.5)), "▲ +0.5000 (+50.0%)");
        assert_eq!(change(&row("size_bytes", 10.0, 10.0)), "= 0");
        assert_eq!(value("accuracy", Some(0.8)), "80.00%");
    }
}
