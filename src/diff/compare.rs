//! Two report summaries (`summary.json`) side by side: the rows of every model, whether
//! their timings are comparable, and which rules each row breaks.

use serde::Serialize;
use serde_json::Value;

use super::DiffError;
use super::rule::{self, Rule};

/// One figure of one model: old, new and the change.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Row {
    pub metric: String,
    pub old: Option<f64>,
    pub new: Option<f64>,
    /// new - old.
    pub change: Option<f64>,
    /// (new - old) / |old|, as a fraction; none when old is 0 or missing.
    pub relative: Option<f64>,
    /// Whether rules apply to the row (latency from another machine is not gated).
    pub gated: bool,
    /// The rules this row breaks, as written.
    pub broken: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct ModelDiff {
    pub model: String,
    /// The short name (`onnx_int8` for `@onnx_int8`, a file's stem) a rule may use too.
    #[serde(skip)]
    pub label: String,
    pub rows: Vec<Row>,
}

/// Whether both sides were timed on the same machine.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Timing {
    pub comparable: bool,
    /// The machine facts that differ.
    pub differences: Vec<String>,
    /// The models timed again here, both sides alternating (`--retime`): their latency rows
    /// are comparable and gated whatever the summaries recorded.
    pub retimed: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct ReportDiff {
    pub stage: String,
    pub timing: Timing,
    pub models: Vec<ModelDiff>,
}

impl ReportDiff {
    /// Whether `rule` names no model of this report (a rule for every model names one).
    pub(crate) fn lacks_model_of(&self, rule: &Rule) -> bool {
        rule.model.as_deref().is_some_and(|wanted| {
            !self
                .models
                .iter()
                .any(|m| rule.applies_to(&m.model, &m.label, &rule.metric) || m.model == wanted)
        })
    }

    /// The rules broken anywhere in this report.
    pub(crate) fn broken(&self) -> usize {
        self.models
            .iter()
            .flat_map(|m| &m.rows)
            .map(|r| r.broken.len())
            .sum()
    }
}

/// The facts a latency depends on, by name, from a summary.
fn machine_facts(summary: &Value) -> Vec<(&'static str, String)> {
    let env = &summary["environment"];
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "(none)".into(),
        other => other.to_string(),
    };
    let gpus: Vec<String> = env["gpus"]
        .as_array()
        .map(|list| list.iter().map(|g| text(&g["name"])).collect())
        .unwrap_or_default();
    vec![
        ("cpu", text(&env["cpu"])),
        ("cores", text(&env["cores"])),
        ("os", text(&env["os"])),
        ("gpus", format!("[{}]", gpus.join(", "))),
        ("onnxruntime", text(&env["onnxruntime"])),
        ("tensorrt", text(&env["tensorrt"])),
        ("threads", text(&env["threads"])),
        ("provider", text(&summary["timing"]["provider"])),
    ]
}

/// Compares the machine facts the two summaries recorded.
pub(crate) fn timing(old: &Value, new: &Value) -> Timing {
    let differences: Vec<String> = machine_facts(old)
        .into_iter()
        .zip(machine_facts(new))
        .filter(|((_, a), (_, b))| a != b)
        .map(|((name, a), (_, b))| format!("{name}: {a} -> {b}"))
        .collect();
    Timing {
        comparable: differences.is_empty(),
        differences,
        retimed: Vec::new(),
    }
}

/// A figure: a number, `"inf"`, or none (`null`, missing).
fn number(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) if s == "inf" => Some(f64::INFINITY),
        _ => None,
    }
}

fn mean(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let values: Vec<f64> = values.flatten().collect();
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// Every figure of one model's entry, named as the rules name them.
pub(crate) fn figures(model: &Value) -> Vec<(String, Option<f64>)> {
    let mut out: Vec<(String, Option<f64>)> = Vec::new();
    let task = &model["task"];
    let classification = &task["classification"];
    if classification.is_object() {
        out.push(("accuracy".into(), number(&classification["accuracy"])));
        let per_class = classification["per_class"].as_array().cloned();
        for (name, key) in [
            ("precision_macro", "precision"),
            ("recall_macro", "recall"),
            ("f1_macro", "f1"),
        ] {
            let classes = per_class.iter().flatten();
            out.push((name.into(), mean(classes.map(|c| number(&c[key])))));
        }
    }
    if !task["agreement_with_reference"].is_null() {
        out.push((
            "agreement".into(),
            number(&task["agreement_with_reference"]),
        ));
    }
    segmentation_figures(task, &mut out);
    let parity = model["parity"].as_array().cloned().unwrap_or_default();
    if !parity.is_empty() {
        let max_abs = parity
            .iter()
            .filter_map(|p| number(&p["max_abs"]))
            .reduce(f64::max);
        let cosine = parity
            .iter()
            .filter_map(|p| number(&p["cosine"]))
            .reduce(f64::min);
        out.push(("parity_max_abs".into(), max_abs));
        out.push(("parity_cosine".into(), cosine));
    }
    let latency = &model["latency"];
    for (name, key) in [
        ("p50_ms", "median_ms"),
        ("p90_ms", "p90_ms"),
        ("p99_ms", "p99_ms"),
        ("throughput", "throughput"),
    ] {
        out.push((name.into(), number(&latency[key])));
    }
    out.push(("size_bytes".into(), number(&model["size_bytes"])));
    out
}

/// Dice, IoU and HD95 against the labels when the report has them, else against the
/// reference: the means, then one row per class.
fn segmentation_figures(task: &Value, out: &mut Vec<(String, Option<f64>)>) {
    let seg = match &task["segmentation_vs_labels"] {
        Value::Null => &task["segmentation_vs_reference"],
        labels => labels,
    };
    if !seg.is_object() {
        return;
    }
    out.push(("dice_mean".into(), number(&seg["mean_dice"])));
    out.push(("iou_mean".into(), number(&seg["mean_iou"])));
    out.push(("hd95_mean".into(), number(&seg["mean_hd95"])));
    for (family, classes, values) in [
        ("dice", "classes", "dice_per_class"),
        ("iou", "classes", "iou_per_class"),
        ("hd95", "hd95_classes", "hd95_per_class"),
    ] {
        let classes = seg[classes].as_array().cloned().unwrap_or_default();
        let values = seg[values].as_array().cloned().unwrap_or_default();
        for (class, value) in classes.iter().zip(&values) {
            out.push((format!("{family}[{class}]"), number(value)));
        }
    }
}

/// The models of a summary by name, with their chart labels.
fn models(summary: &Value) -> Vec<(String, String, &Value)> {
    summary["models"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|m| {
                    let name = m["name"].as_str().unwrap_or_default().to_string();
                    let label = m["label"].as_str().unwrap_or(&name).to_string();
                    (name, label, m)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The rows of one report stage; a model on one side only is an error.
pub(crate) fn compare_report(
    stage: &str,
    old: &Value,
    new: &Value,
    rules: &[Rule],
) -> Result<ReportDiff, DiffError> {
    let old_models = models(old);
    let new_models = models(new);
    let names = |list: &[(String, String, &Value)]| -> Vec<String> {
        list.iter().map(|(n, _, _)| n.clone()).collect()
    };
    let (old_names, new_names) = (names(&old_models), names(&new_models));
    if let Some(added) = new_names.iter().find(|n| !old_names.contains(n)) {
        return Err(DiffError::ModelAdded {
            stage: stage.into(),
            model: added.clone(),
        });
    }
    if let Some(removed) = old_names.iter().find(|n| !new_names.contains(n)) {
        return Err(DiffError::ModelRemoved {
            stage: stage.into(),
            model: removed.clone(),
        });
    }
    let timing = timing(old, new);
    let models = new_models
        .iter()
        .map(|(name, label, new_model)| {
            let old_model = old_models.iter().find(|(n, _, _)| n == name).map(|m| m.2);
            let old_figures = old_model.map(figures).unwrap_or_default();
            let rows = rows(&old_figures, &figures(new_model), timing.comparable);
            let rows = gate(rows, rules, name, label);
            ModelDiff {
                model: name.clone(),
                label: label.clone(),
                rows,
            }
        })
        .collect();
    Ok(ReportDiff {
        stage: stage.into(),
        timing,
        models,
    })
}

/// Replaces a model's latency rows with figures timed here on both sides (`--retime`:
/// `old` and `new` are latencies as the summary writes them), gated by `rules`.
pub(crate) fn retime(
    report: &mut ReportDiff,
    model: &str,
    label: &str,
    old: &Value,
    new: &Value,
    rules: &[Rule],
) {
    let wrap = |latency: &Value| serde_json::json!({ "latency": latency });
    let fresh = rows(&figures(&wrap(old)), &figures(&wrap(new)), true);
    let fresh = gate(fresh, rules, model, label);
    let Some(diff) = report.models.iter_mut().find(|m| m.model == model) else {
        return;
    };
    for row in fresh.into_iter().filter(|r| rule::is_timing(&r.metric)) {
        if let Some(slot) = diff.rows.iter_mut().find(|r| r.metric == row.metric) {
            *slot = row;
        }
    }
    report.timing.retimed.push(model.to_string());
}

type Figures = [(String, Option<f64>)];

/// Rows in the new side's order, then the figures only the old side has.
fn rows(old: &Figures, new: &Figures, timing_comparable: bool) -> Vec<Row> {
    let mut names: Vec<&String> = new.iter().map(|(n, _)| n).collect();
    names.extend(
        old.iter()
            .map(|(n, _)| n)
            .filter(|n| !new.iter().any(|(m, _)| m == *n)),
    );
    names
        .into_iter()
        .map(|metric| {
            let find = |list: &Figures| list.iter().find(|(n, _)| n == metric).and_then(|f| f.1);
            let (old, new) = (find(old), find(new));
            let change = old.zip(new).map(|(a, b)| b - a);
            let relative = old
                .zip(change)
                .filter(|(a, _)| *a != 0.0)
                .map(|(a, c)| c / a.abs());
            Row {
                metric: metric.clone(),
                old,
                new,
                change,
                relative,
                gated: timing_comparable || !rule::is_timing(metric),
                broken: Vec::new(),
            }
        })
        .collect()
}

fn gate(mut rows: Vec<Row>, rules: &[Rule], model: &str, label: &str) -> Vec<Row> {
    for row in rows.iter_mut().filter(|r| r.gated) {
        let (Some(old), Some(new)) = (row.old, row.new) else {
            continue;
        };
        row.broken = rules
            .iter()
            .filter(|r| r.applies_to(model, label, &row.metric) && r.broken_by(old, new))
            .map(|r| r.text.clone())
            .collect();
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn summary(accuracy: f64, cpu: &str) -> Value {
        json!({
            "environment": { "cpu": cpu, "cores": 2, "os": "linux", "gpus": [], "threads": "1" },
            "timing": { "provider": "CPUExecutionProvider" },
            "models": [{ "name": "m.onnx", "label": "m", "size_bytes": 100,
                "latency": { "median_ms": 1.0, "p90_ms": 1.0, "p99_ms": 1.0, "throughput": 10.0 },
                "parity": [], "task": { "classification": { "accuracy": accuracy,
                    "per_class": [{ "precision": 1.0, "recall": 0.5, "f1": 0.6 }] } } }]
        })
    }

    #[test]
    fn a_drop_breaks_the_rule_and_latency_elsewhere_is_not_gated() {
        let rules = [
            rule::parse("accuracy < -1pp").unwrap(),
            rule::parse("p50_ms > +10%").unwrap(),
        ];
        let mut new = summary(0.5, "B");
        new["models"][0]["latency"]["median_ms"] = json!(2.0);
        let diff = compare_report("r", &summary(0.8, "A"), &new, &rules).unwrap();
        assert!(!diff.timing.comparable);
        assert_eq!(diff.timing.differences, ["cpu: A -> B"]);
        let rows = &diff.models[0].rows;
        let row = |m: &str| rows.iter().find(|r| r.metric == m).unwrap();
        assert_eq!(row("accuracy").broken, ["accuracy < -1pp"]);
        assert!(!row("p50_ms").gated && row("p50_ms").broken.is_empty());
        assert_eq!(row("recall_macro").new, Some(0.5));
        assert_eq!(diff.broken(), 1);
    }

    #[test]
    fn segmentation_rows_come_from_the_labels_with_one_row_per_class() {
        let model = json!({ "task": { "segmentation_vs_reference": { "mean_dice": 0.1 },
            "segmentation_vs_labels": { "mean_dice": 0.5, "mean_iou": null, "mean_hd95": "inf",
                "classes": [0, 1], "dice_per_class": [0.4, 0.6], "iou_per_class": [0.3, null],
                "hd95_classes": [1], "hd95_per_class": [2.0] } } });
        let found = figures(&model);
        let get = |name: &str| found.iter().find(|(n, _)| n == name).map(|f| f.1);
        assert_eq!(get("dice_mean"), Some(Some(0.5)));
        assert_eq!(get("iou_mean"), Some(None));
        assert_eq!(get("hd95_mean"), Some(Some(f64::INFINITY)));
        assert_eq!(get("dice[1]"), Some(Some(0.6)));
        assert_eq!(get("iou[1]"), Some(None));
        assert_eq!(get("hd95[1]"), Some(Some(2.0)));
        assert_eq!(get("hd95[0]"), None);
    }

    #[test]
    fn a_model_on_one_side_only_is_an_error() {
        let mut new = summary(0.8, "A");
        new["models"][0]["name"] = json!("other.onnx");
        let err = compare_report("r", &summary(0.8, "A"), &new, &[]).unwrap_err();
        assert!(matches!(err, DiffError::ModelAdded { .. }), "{err:?}");
    }
}
