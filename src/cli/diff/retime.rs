//! `--retime`: every ONNX model of a report timed again here, the baseline's file and the
//! working tree's alternating in one process, so that their latencies compare on one
//! machine in one run.

use serde_json::Value;

use super::super::output::{failure, note};
use crate::diff::{ReportDiff, Rule, compare};
use crate::driver::Project;
use crate::kinds::report::retime::{self, Plan, Subject};

/// Rounds of the alternation: each model runs `iterations / ROUNDS` times per round.
const ROUNDS: usize = 5;

/// Why a model cannot be timed again here, if it cannot.
fn not_retimable(summary: &Value, model: &Value) -> Option<&'static str> {
    let path = model["path"].as_str().unwrap_or_default();
    let data = summary["data"]["path"].as_str().unwrap_or_default();
    if model["status"] != "ok" {
        Some("it did not run")
    } else if !path.ends_with(".onnx") {
        Some("only ONNX models are timed again (engines run in the TensorRT script)")
    } else if summary["timing"]["provider"] != "CPUExecutionProvider" {
        Some("its report timed it on a GPU; --retime times on the CPU")
    } else if !summary["sliding_window"].is_null() || !data.ends_with(".npy") {
        Some("--retime needs the report's data as a .npy and no sliding window")
    } else {
        None
    }
}

fn subject(project: &Project, summary: &Value, model: &Value) -> Subject {
    let dir = &project.pipeline.dir;
    Subject {
        model: dir.join(model["path"].as_str().unwrap_or_default()),
        data: dir.join(summary["data"]["path"].as_str().unwrap_or_default()),
        batch: model["batch"].as_u64().unwrap_or(1) as usize,
        threads: summary["timing"]["threads"]
            .as_str()
            .and_then(|t| t.parse().ok())
            .unwrap_or(0),
    }
}

fn plan(summary: &Value) -> Plan {
    let timing = &summary["timing"];
    Plan {
        warmup: timing["warmup"].as_u64().unwrap_or(10) as usize,
        iterations: timing["iterations"].as_u64().unwrap_or(100) as usize,
        min_duration: std::time::Duration::from_secs_f64(
            timing["min_duration_s"].as_f64().unwrap_or(1.0).max(0.0),
        ),
        rounds: ROUNDS,
    }
}

/// Times every model of `report` that both sides ran on ONNX Runtime's CPU provider again,
/// and replaces its latency rows; says which models it could not.
pub(super) fn retime_report(
    report: &mut ReportDiff,
    (old_project, old): (&Project, &Value),
    (new_project, new): (&Project, &Value),
    rules: &[Rule],
) -> miette::Result<()> {
    let cancel = super::super::signals::cancel_flag();
    for model in new["models"].as_array().into_iter().flatten() {
        let name = model["name"].as_str().unwrap_or_default();
        let label = model["label"].as_str().unwrap_or(name);
        let Some(before) = old["models"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["name"] == name)
        else {
            continue;
        };
        if let Some(why) = not_retimable(old, before).or_else(|| not_retimable(new, model)) {
            note!("{}: {name} not timed again: {why}", report.stage);
            continue;
        }
        let (a, b) = (
            subject(old_project, old, before),
            subject(new_project, new, model),
        );
        let (old_latency, new_latency) =
            retime::alternating(&new_project.facts, &a, &b, plan(new), &cancel).map_err(|e| {
                // The error with its causes, as a stage failure says it.
                let e = crate::pipeline::kind::StageError::from(e);
                failure(
                    format!("cannot time {name} of report `{}` again: {e}", report.stage),
                    "run without --retime to compare the latencies the reports recorded",
                )
            })?;
        let json = |l| serde_json::to_value(l).unwrap_or_default();
        compare::retime(
            report,
            name,
            label,
            &json(old_latency),
            &json(new_latency),
            rules,
        );
    }
    Ok(())
}
