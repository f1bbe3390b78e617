//! `--fail-on` rules and the report stage's `gates`: `[@MODEL:]METRIC OP CHANGE`, where
//! CHANGE is an absolute number, a relative `%` or percentage points `pp`.

use std::fmt;

/// The metrics a rule may name, with what they measure (for the usage error).
pub(crate) const METRICS: &[(&str, &str)] = &[
    (
        "accuracy",
        "classification accuracy against the labels (share)",
    ),
    (
        "precision_macro",
        "mean of the per-class precisions (share)",
    ),
    ("recall_macro", "mean of the per-class recalls (share)"),
    ("f1_macro", "mean of the per-class F1 scores (share)"),
    ("agreement", "agreement with the reference's argmax (share)"),
    ("dice_mean", "mean Dice (segmentation, share)"),
    ("iou_mean", "mean IoU (segmentation, share)"),
    (
        "hd95_mean",
        "mean 95th-percentile Hausdorff distance (voxels)",
    ),
    (
        "parity_max_abs",
        "largest |model - reference| over the outputs",
    ),
    (
        "parity_cosine",
        "smallest cosine similarity with the reference",
    ),
    ("p50_ms", "median latency (ms)"),
    ("p90_ms", "90th-percentile latency (ms)"),
    ("p99_ms", "99th-percentile latency (ms)"),
    ("throughput", "samples per second"),
    ("size_bytes", "the model's size on disk"),
];

/// Per-class metric families: `dice[CLASS]`, `iou[CLASS]`, `hd95[CLASS]`.
pub(crate) const PER_CLASS: &[&str] = &["dice", "iou", "hd95"];

/// Metrics whose values are shares (0..1), the only ones `pp` applies to.
pub(crate) fn is_share(metric: &str) -> bool {
    let family = metric.split('[').next().unwrap_or(metric);
    matches!(
        family,
        "accuracy"
            | "precision_macro"
            | "recall_macro"
            | "f1_macro"
            | "agreement"
            | "dice_mean"
            | "iou_mean"
            | "dice"
            | "iou"
    )
}

/// Latency metrics: gated only when both sides were timed on the same machine.
pub(crate) fn is_timing(metric: &str) -> bool {
    matches!(metric, "p50_ms" | "p90_ms" | "p99_ms" | "throughput")
}

/// Whether `metric` is one a rule may name.
pub(crate) fn is_known(metric: &str) -> bool {
    if METRICS.iter().any(|(name, _)| *name == metric) {
        return true;
    }
    PER_CLASS.iter().any(|family| {
        metric
            .strip_prefix(family)
            .and_then(|rest| rest.strip_prefix('['))
            .and_then(|rest| rest.strip_suffix(']'))
            .is_some_and(|class| !class.is_empty())
    })
}

/// The known metrics as one line, for help texts.
pub(crate) fn known_list() -> String {
    let mut names: Vec<String> = METRICS.iter().map(|(n, _)| n.to_string()).collect();
    names.extend(PER_CLASS.iter().map(|f| format!("{f}[CLASS]")));
    names.join(", ")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub(crate) enum Op {
    #[serde(rename = "<")]
    Less,
    #[serde(rename = "<=")]
    LessOrEqual,
    #[serde(rename = ">")]
    Greater,
    #[serde(rename = ">=")]
    GreaterOrEqual,
}

/// What the rule's number is measured in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Unit {
    /// new - old, in the metric's own unit.
    Absolute,
    /// (new - old) / |old| x 100.
    Percent,
    /// (new - old) x 100, for shares.
    Points,
}

/// One rule: the row it applies to is broken when its change compares true.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Rule {
    pub model: Option<String>,
    pub metric: String,
    pub op: Op,
    pub threshold: f64,
    pub unit: Unit,
    /// The rule as written.
    pub text: String,
}

/// Why a rule does not parse: the message, and the help line.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub(crate) struct RuleError {
    pub message: String,
    pub help: String,
}

fn rule_error(message: String, help: impl Into<String>) -> RuleError {
    RuleError {
        message,
        help: help.into(),
    }
}

const GRAMMAR: &str = "write [@MODEL:]METRIC OP CHANGE, e.g. 'accuracy < -0.5pp', 'p50_ms > +10%', '@onnx_int8:dice_mean < -0.01' (OP: <, <=, >, >=)";

/// Parses `[@MODEL:]METRIC OP CHANGE`.
pub(crate) fn parse(text: &str) -> Result<Rule, RuleError> {
    let trimmed = text.trim();
    let (model, rest) = match trimmed.strip_prefix('@') {
        Some(rest) => match rest.split_once(':') {
            Some((model, rest)) if !model.trim().is_empty() => {
                (Some(model.trim().to_string()), rest)
            }
            _ => {
                return Err(rule_error(
                    format!("rule `{trimmed}`: `@MODEL:` needs a model name and a colon"),
                    GRAMMAR,
                ));
            }
        },
        None => (None, trimmed),
    };
    let Some(at) = rest.find(['<', '>']) else {
        return Err(rule_error(
            format!("rule `{trimmed}` has no comparison"),
            GRAMMAR,
        ));
    };
    let metric = rest[..at].trim().to_string();
    let (op, number) = split_op(&rest[at..]);
    if !is_known(&metric) {
        return Err(rule_error(
            format!("rule `{trimmed}`: unknown metric `{metric}`"),
            format!("known metrics: {}", known_list()),
        ));
    }
    let (threshold, unit) = parse_change(number.trim()).ok_or_else(|| {
        rule_error(
            format!("rule `{trimmed}`: `{}` is not a change", number.trim()),
            "write a number, a relative change such as +10% or percentage points such as -0.5pp",
        )
    })?;
    if unit == Unit::Points && !is_share(&metric) {
        return Err(rule_error(
            format!("rule `{trimmed}`: `pp` applies to shares, and `{metric}` is not one"),
            "use an absolute change or a relative one (%)",
        ));
    }
    Ok(Rule {
        model,
        metric,
        op,
        threshold,
        unit,
        text: trimmed.to_string(),
    })
}

fn split_op(text: &str) -> (Op, &str) {
    let (op, len) = match text.as_bytes() {
        [b'<', b'=', ..] => (Op::LessOrEqual, 2),
        [b'>', b'=', ..] => (Op::GreaterOrEqual, 2),
        [b'<', ..] => (Op::Less, 1),
        _ => (Op::Greater, 1),
    };
    (op, &text[len..])
}

fn parse_change(text: &str) -> Option<(f64, Unit)> {
    let (number, unit) = if let Some(n) = text.strip_suffix("pp") {
        (n, Unit::Points)
    } else if let Some(n) = text.strip_suffix('%') {
        (n, Unit::Percent)
    } else {
        (text, Unit::Absolute)
    };
    let value: f64 = number.trim().parse().ok()?;
    value.is_finite().then_some((value, unit))
}

impl Rule {
    /// Whether the rule applies to `model`'s row of `metric`.
    pub(crate) fn applies_to(&self, model: &str, label: &str, metric: &str) -> bool {
        self.metric == metric
            && self
                .model
                .as_deref()
                .is_none_or(|m| m == model || m == label || m.strip_prefix('@') == Some(label))
    }

    /// Whether the change from `old` to `new` breaks the rule (a change that cannot be
    /// measured, such as a relative one from 0, breaks nothing).
    pub(crate) fn broken_by(&self, old: f64, new: f64) -> bool {
        let change = match self.unit {
            Unit::Absolute => new - old,
            Unit::Points => (new - old) * 100.0,
            Unit::Percent if old != 0.0 => (new - old) / old.abs() * 100.0,
            Unit::Percent => return false,
        };
        if !change.is_finite() {
            return false;
        }
        match self.op {
            Op::Less => change < self.threshold,
            Op::LessOrEqual => change <= self.threshold,
            Op::Greater => change > self.threshold,
            Op::GreaterOrEqual => change >= self.threshold,
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_with_their_units_and_models() {
        let r = parse("accuracy < -0.5pp").unwrap();
        assert_eq!((r.op, r.threshold, r.unit), (Op::Less, -0.5, Unit::Points));
        let r = parse("@onnx_int8:p50_ms >= +10%").unwrap();
        assert_eq!(r.model.as_deref(), Some("onnx_int8"));
        assert_eq!(
            (r.op, r.threshold, r.unit),
            (Op::GreaterOrEqual, 10.0, Unit::Percent)
        );
        let r = parse("dice[1] < -0.01").unwrap();
        assert_eq!((r.metric.as_str(), r.unit), ("dice[1]", Unit::Absolute));
    }

    #[test]
    fn bad_rules_say_what_is_wrong() {
        let e = parse("acuracy < -1pp").unwrap_err();
        assert!(e.message.contains("unknown metric `acuracy`"), "{e:?}");
        assert!(e.help.contains("accuracy") && e.help.contains("p99_ms"));
        assert!(
            parse("accuracy -1")
                .unwrap_err()
                .message
                .contains("no comparison")
        );
        assert!(
            parse("accuracy < lots")
                .unwrap_err()
                .message
                .contains("not a change")
        );
        assert!(
            parse("p50_ms > 1pp")
                .unwrap_err()
                .message
                .contains("shares")
        );
        assert!(parse("@:accuracy < 0").is_err());
    }

    #[test]
    fn a_rule_is_broken_only_past_its_threshold() {
        let drop = parse("accuracy < -1pp").unwrap();
        assert!(drop.broken_by(0.80, 0.60));
        assert!(!drop.broken_by(0.80, 0.795));
        let slower = parse("p50_ms > +10%").unwrap();
        assert!(slower.broken_by(1.0, 1.2));
        assert!(!slower.broken_by(1.0, 1.05));
        assert!(!slower.broken_by(0.0, 1.0));
        let model = parse("@int8:accuracy < 0").unwrap();
        assert!(model.applies_to("@int8", "int8", "accuracy"));
        assert!(!model.applies_to("@fp16", "fp16", "accuracy"));
    }
}
