//! `pochi diff` through the binary on real git repositories made here: tiny ONNX models
//! (`fixtures/report_models.py`) timed a few times on the CPU with real ONNX Runtime, the
//! baseline built or restored in a temporary worktree with the project's own cache.

use std::process::Command;

use crate::common::{Project, Run};
use serde_json::Value;

const MODELS: &str = include_str!("../fixtures/report_models.py");

/// Writes `worse.onnx` (classes 0 and 1 swapped: lower accuracy) next to the fixtures.
const WORSE: &str = r#"
import sys
sys.path.insert(0, ".")
import numpy as np
import make_models
make_models.linear("worse.onnx", np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]], float))
"#;

/// `pick` copies the model named by `$MODEL` (or model.onnx) to the build directory; the
/// report compares it with the identity model on 6 labelled samples.
const PIPELINE: &str = r#"
[stages.pick]
kind = "command"
run = ["sh", "-c", "m=$0; [ -n \"$MODEL\" ] && m=$MODEL; cp $m $1", "{inputs.src}", "{outputs.out}"]
inputs = { src = "model.onnx", linear = "linear.onnx", worse = "worse.onnx" }
outputs = { out = "build/model.onnx" }

[stages.cls]
kind = "report"
models = ["@pick", "ident.onnx"]
data = "data.npy"
labels = "labels.npy"
reference = "ident.onnx"
task = "classification"
iterations = 5
warmup = 1
min_duration = "0s"
threads = 1
on_parity_failure = "warn"
"#;

fn git(project: &Project, args: &[&str]) -> String {
    let output = Command::new("git")
        .args([
            "-c",
            "user.name=pochi test",
            "-c",
            "user.email=test@pochi.invalid",
        ])
        .args(args)
        .current_dir(project.path(""))
        .output()
        .expect("run git");
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A git repository with the models, `pipeline` and one commit; model.onnx is linear.onnx.
fn repository(pipeline: &str) -> Project {
    let project = Project::new(pipeline);
    project.write("make_models.py", MODELS);
    project.write("worse.py", WORSE);
    project.python(&["make_models.py", "."]);
    project.python(&["worse.py"]);
    std::fs::copy(project.path("linear.onnx"), project.path("model.onnx")).unwrap();
    project.write(".gitignore", "build/\n.pochi/\n__pycache__/\n");
    git(&project, &["init", "-q"]);
    git(&project, &["add", "-A"]);
    git(&project, &["commit", "-qm", "baseline"]);
    project
}

fn use_model(project: &Project, model: &str) {
    std::fs::copy(project.path(model), project.path("model.onnx")).unwrap();
}

fn row<'a>(diff: &'a Value, stage: &str, model: &str, metric: &str) -> &'a Value {
    let report = diff["pipelines"][0]["reports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["stage"] == stage)
        .unwrap_or_else(|| panic!("no report {stage} in {diff}"));
    let rows = report["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model"] == model)
        .unwrap_or_else(|| panic!("no model {model} in {report}"))["rows"]
        .as_array()
        .unwrap();
    rows.iter()
        .find(|r| r["metric"] == metric)
        .unwrap_or_else(|| panic!("no {metric} row in {rows:?}"))
}

fn keys(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    keys.sort();
    keys
}

/// docs/diff.md's schema: every object's keys, exactly.
fn assert_schema(diff: &Value) {
    assert_eq!(diff["schema_version"], 1);
    assert_eq!(
        keys(diff),
        ["baseline", "ok", "pipelines", "rules", "schema_version"]
    );
    assert_eq!(keys(&diff["baseline"]), ["commit", "rev"]);
    let pipeline = &diff["pipelines"][0];
    assert_eq!(
        keys(pipeline),
        [
            "baseline_build",
            "current_build",
            "pipeline",
            "reports",
            "why"
        ]
    );
    for change in pipeline["why"].as_array().unwrap() {
        assert_eq!(keys(change), ["reasons", "stage", "status"]);
    }
    let report = &pipeline["reports"][0];
    assert_eq!(keys(report), ["models", "stage", "timing"]);
    assert_eq!(
        keys(&report["timing"]),
        ["comparable", "differences", "retimed"]
    );
    assert_eq!(keys(&report["models"][0]), ["model", "rows"]);
    for row in report["models"][0]["rows"].as_array().unwrap() {
        assert_eq!(
            keys(row),
            [
                "broken", "change", "gated", "metric", "new", "old", "relative"
            ]
        );
    }
}

#[test]
fn a_model_with_lower_accuracy_breaks_the_rule_and_passes_without_it() {
    let project = repository(PIPELINE);
    project.build(&[]).assert_ok();
    let status_before = git(&project, &["status", "--porcelain"]);
    use_model(&project, "worse.onnx");
    let gated = project.run(&["diff", "--fail-on", "accuracy < -1pp"]);
    assert_eq!(gated.code, Some(1), "{}\n{}", gated.stdout, gated.stderr);
    let failing: Vec<&str> = gated
        .stdout
        .lines()
        .filter(|l| l.contains("FAIL"))
        .collect();
    assert_eq!(failing.len(), 1, "{}", gated.stdout);
    assert!(failing[0].contains("@pick") && failing[0].contains("accuracy"));
    assert!(failing[0].contains("80.00%") && failing[0].contains("▼ -80.00pp"));
    assert!(
        gated
            .stdout
            .contains("pick: input `src` (model.onnx) changed")
    );

    let free = project.run(&["diff", "--json"]);
    free.assert_ok();
    let diff = free.summary();
    assert_schema(&diff);
    assert_eq!(diff["baseline"]["rev"], "HEAD");
    let accuracy = row(&diff, "cls", "@pick", "accuracy");
    assert_eq!(
        (accuracy["old"].as_f64(), accuracy["new"].as_f64()),
        (Some(0.8), Some(0.0))
    );
    assert_eq!(accuracy["broken"], serde_json::json!([]));
    assert_eq!(row(&diff, "cls", "ident.onnx", "accuracy")["change"], 0.0);
    // The baseline was built at HEAD before: restored, nothing ran.
    let built = &diff["pipelines"][0]["baseline_build"];
    assert_eq!(built["restored_local"], 2, "{built}");
    assert!(built.get("ran").is_none(), "{built}");
    assert!(
        free.stderr
            .contains("2 stage(s) restored from cache, none built")
    );
    // The user's working tree and its worktrees are as they were.
    use_model(&project, "linear.onnx");
    assert_eq!(git(&project, &["status", "--porcelain"]), status_before);
    assert_eq!(git(&project, &["worktree", "list"]).lines().count(), 1);
}

#[test]
fn a_baseline_never_built_is_built_and_said_so() {
    let project = repository(PIPELINE);
    use_model(&project, "worse.onnx");
    let run = project.run(&["diff", "--json"]);
    run.assert_ok();
    let built = &run.summary()["pipelines"][0]["baseline_build"];
    assert_eq!(built["ran"], 2, "{built}");
    assert!(
        run.stderr.contains(
            "2 stage(s) were never built with these inputs and were built now (cls, pick)"
        ),
        "{}",
        run.stderr
    );
}

#[test]
fn a_parameter_change_shows_the_rows_with_the_reason_and_gates_apply() {
    let gated = PIPELINE.replace(
        "on_parity_failure = \"warn\"",
        "on_parity_failure = \"warn\"\ngates = [\"accuracy < -1pp\"]",
    );
    let project = repository(&gated.replace(
        "[stages.pick]",
        "[stages.pick]\nenv = { MODEL = \"linear.onnx\" }",
    ));
    let changed = gated.replace(
        "[stages.pick]",
        "[stages.pick]\nenv = { MODEL = \"worse.onnx\" }",
    );
    project.write("pipeline.toml", &changed);
    let run = project.run(&["diff", "--json"]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    let diff = run.summary();
    assert_eq!(diff["rules"], serde_json::json!(["cls: accuracy < -1pp"]));
    assert_eq!(diff["ok"], false);
    let why = &diff["pipelines"][0]["why"];
    let pick = why
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["stage"] == "pick")
        .unwrap();
    assert_eq!(
        pick["reasons"],
        serde_json::json!(["env `MODEL` changed: linear.onnx -> worse.onnx"])
    );
    let accuracy = row(&diff, "cls", "@pick", "accuracy");
    assert_eq!(accuracy["broken"], serde_json::json!(["accuracy < -1pp"]));
    assert_eq!(
        row(&diff, "cls", "@pick", "agreement")["new"]
            .as_f64()
            .map(|a| (a * 3.0).round()),
        Some(1.0)
    );
    let markdown = project.run(&["diff", "--markdown"]);
    assert!(
        markdown.stdout.contains(
            "| @pick | accuracy | 80.00% | 0.00% | ▼ -80.00pp | ❌ **FAIL**: accuracy < -1pp |"
        ),
        "{}",
        markdown.stdout
    );
    assert!(
        markdown
            .stdout
            .contains("- pick: env `MODEL` changed: linear.onnx -> worse.onnx")
    );
}

/// `taskset -c 0`: one core, so the report records `cores: 1`, as on another machine.
fn on_one_core(project: &Project, args: &[&str]) -> Run {
    let command = project.command(args);
    let program = command.get_program().to_owned();
    let mut pinned = Command::new("taskset");
    pinned.args(["-c", "0"]).arg(program).args(args);
    pinned.current_dir(project.path(""));
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => pinned.env(key, value),
            None => pinned.env_remove(key),
        };
    }
    Run::from_output(pinned.output().expect("run taskset"))
}

#[test]
fn latency_timed_on_another_machine_is_not_gated() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(
        cores >= 2,
        "this test needs 2 cores to time on a machine of another size"
    );
    let project = repository(PIPELINE);
    on_one_core(&project, &["build"]).assert_ok();
    use_model(&project, "worse.onnx");
    // Both sides timed on one core: comparable, and any slower p50 breaks the rule.
    let rule = "p50_ms > -100%";
    let same = on_one_core(&project, &["diff", "--json", "--fail-on", rule]);
    assert_eq!(same.code, Some(1), "{}", same.stderr);
    let diff = same.summary();
    assert_eq!(
        diff["pipelines"][0]["reports"][0]["timing"]["comparable"],
        true
    );
    assert_eq!(
        row(&diff, "cls", "@pick", "p50_ms")["broken"],
        serde_json::json!([rule])
    );
    // The working tree timed on every core, the baseline (restored) on one: not gated.
    use_model(&project, "perturbed.onnx");
    let other = project.run(&["diff", "--json", "--fail-on", rule]);
    other.assert_ok();
    let diff = other.summary();
    let timing = &diff["pipelines"][0]["reports"][0]["timing"];
    assert_eq!(timing["comparable"], false);
    assert_eq!(
        timing["differences"],
        serde_json::json!([format!("cores: 1 -> {cores}")])
    );
    let p50 = row(&diff, "cls", "@pick", "p50_ms");
    assert_eq!(
        (&p50["gated"], &p50["broken"]),
        (&Value::Bool(false), &serde_json::json!([]))
    );
    let text = project.run(&["diff"]);
    assert!(
        text.stdout
            .contains("latency not comparable (timed on another machine: cores: 1 ->")
    );
    assert!(text.stdout.contains("not gated: timed on another machine"));
}

#[test]
fn wrong_revisions_metrics_pipelines_and_models_are_clear_errors() {
    let project = repository(PIPELINE);
    project.run(&["diff", "no-such-rev"]).assert_error(&[
        "unknown revision `no-such-rev`",
        "help:",
        "git log --oneline",
    ]);
    let metric = project.run(&["diff", "--fail-on", "acuracy < -1pp"]);
    assert_eq!(metric.code, Some(2), "{}", metric.stderr);
    assert!(
        metric.stderr.contains("unknown metric `acuracy`"),
        "{}",
        metric.stderr
    );
    assert!(
        metric
            .stderr
            .contains("known metrics: accuracy, precision_macro")
    );
    project
        .run(&[
            "diff",
            "--fail-on",
            "@ident:accuracy < -1pp",
            "--fail-on",
            "@idnet:accuracy < 0",
        ])
        .assert_error(&[
            "rule `@idnet:accuracy < 0` names a model that no report compared has",
            "name one of: @pick, ident.onnx",
        ]);
    project.write("other.toml", PIPELINE);
    project
        .run(&["diff", "HEAD", "other.toml"])
        .assert_error(&["the pipeline other.toml does not exist at HEAD", "help:"]);
    project.write(
        "pipeline.toml",
        &PIPELINE.replace("\"ident.onnx\"]", "\"ident.onnx\", \"linear.onnx\"]"),
    );
    project.run(&["diff"]).assert_error(&[
        "report stage `cls`: model `linear.onnx` is new in the working tree",
        "help:",
    ]);
    let plain = Project::new(PIPELINE);
    plain
        .run(&["diff"])
        .assert_error(&["is not in a git repository", "help:"]);
    assert_eq!(git(&project, &["worktree", "list"]).lines().count(), 1);
}
