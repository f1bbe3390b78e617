//! The report stage end to end on the CPU: the built `pochi` in temporary projects, real
//! ONNX Runtime (the managed toolchain's library, loaded by `ort`), tiny ONNX models
//! written with the toolchain's `onnx` package, and an export of a real torch model.

use crate::common::Project;
use serde_json::Value;

const MODELS: &str = include_str!("../fixtures/report_models.py");
const RANDOM_INIT: &str = include_str!("../../pipelines/scripts/random_init_checkpoint.py");

/// A project with the tiny models and data of `fixtures/report_models.py`.
fn project(pipeline: &str) -> Project {
    let project = Project::new(pipeline);
    project.write("make_models.py", MODELS);
    project.python(&["make_models.py", "."]);
    project
}

fn json(project: &Project, path: &str) -> Value {
    serde_json::from_str(&project.read(path)).expect("JSON")
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs().max(1.0)
}

/// Percentiles ordered, throughput = batch / mean latency (all batches full).
fn assert_sane_latency(model: &Value, batch: u64) {
    let l = &model["latency"];
    let f = |k: &str| l[k].as_f64().unwrap_or_else(|| panic!("{k} in {l}"));
    assert!(f("min_ms") > 0.0, "{l}");
    let order = [
        "min_ms",
        "median_ms",
        "p90_ms",
        "p95_ms",
        "p99_ms",
        "max_ms",
    ];
    for pair in order.windows(2) {
        assert!(f(pair[0]) <= f(pair[1]), "{} > {}: {l}", pair[0], pair[1]);
    }
    assert!(f("min_ms") <= f("mean_ms") && f("mean_ms") <= f("max_ms"));
    assert_eq!(l["batch"], batch);
    let expected = batch as f64 / (f("mean_ms") / 1e3);
    assert!(
        (f("throughput") - expected).abs() <= 1e-6 * expected,
        "throughput {} vs batch / mean {expected}",
        f("throughput")
    );
    assert!(l["runs"].as_u64().unwrap() >= 20);
}

const CLASSIFICATION: &str = r#"
[stages.cls]
kind = "report"
models = ["ident.onnx", "linear.onnx"]
data = "data.npy"
labels = "labels.npy"
reference = "ident.onnx"
task = "classification"
iterations = 20
min_duration = "0s"
threads = 1
batch = 2
"#;

#[test]
fn classification_metrics_on_a_labelled_set_with_a_known_answer() {
    let project = project(CLASSIFICATION);
    let run = project.build(&[]);
    run.assert_ok();
    let summary = json(&project, "build/pipeline/cls/summary.json");
    assert_eq!(summary["schema_version"], 2);
    assert_eq!(summary["data"]["samples"], 6);
    let models = summary["models"].as_array().unwrap();
    assert_eq!(models.len(), 2);
    assert_eq!(models[0]["verdict"], "reference");
    assert_eq!(models[1]["verdict"], "pass");
    assert_eq!(models[1]["parity"][0]["max_abs"], 0.0);
    for model in models {
        assert_sane_latency(model, 2);
        // End to end: one pass over 6 samples in batches of 2.
        let e2e = &model["end_to_end"];
        assert_eq!(e2e["runs"], 3);
        let expected = 2.0 / (e2e["mean_ms"].as_f64().unwrap() / 1e3);
        assert!((e2e["throughput"].as_f64().unwrap() - expected).abs() <= 1e-6 * expected);
        let task = &model["task"];
        assert_eq!(task["agreement_with_reference"], 1.0);
        // Predictions 0 1 2 0 1 2 against labels 0 1 -1 0 1 0: 4 of 5 labelled right.
        let c = &task["classification"];
        assert_eq!(c["labelled"], 5);
        assert!(close(c["accuracy"].as_f64().unwrap(), 0.8));
        assert_eq!(
            c["confusion"],
            serde_json::json!([[2, 0, 1], [0, 2, 0], [0, 0, 0]])
        );
        let per_class = &c["per_class"];
        assert_eq!(per_class[0]["precision"], 1.0);
        assert!(close(per_class[0]["recall"].as_f64().unwrap(), 2.0 / 3.0));
        assert!(close(per_class[0]["f1"].as_f64().unwrap(), 0.8));
        assert_eq!(per_class[1]["f1"], 1.0);
        assert_eq!(per_class[2]["precision"], 0.0);
    }
    // pochitrain's columns (and the model), one row per sample and model.
    let predictions = project.read("build/pipeline/cls/predictions.csv");
    let lines: Vec<&str> = predictions.lines().collect();
    assert_eq!(
        lines[0],
        "image_path,predicted,predicted_class,true,true_class,confidence,correct,model"
    );
    assert_eq!(lines.len(), 1 + 12);
    assert!(
        lines[1].starts_with("data.npy#0,0,class_0,0,class_0,"),
        "{}",
        lines[1]
    );
    assert!(lines[1].ends_with(",true,ident.onnx"));
    assert!(
        lines[3].starts_with("data.npy#2,2,class_2,,,"),
        "{}",
        lines[3]
    );
    assert!(lines[6].contains(",2,class_2,0,class_0,") && lines[6].contains(",false,"));
    let report = project.read("build/pipeline/cls/classification_report.csv");
    assert!(report.starts_with("model,class,class_name,precision,recall,f1-score,support\n"));
    assert!(report.contains("ident.onnx,0,class_0,1.000000,0.666667,0.800000,3\n"));
    assert!(report.contains("ident.onnx,accuracy,accuracy,,,0.800000,5\n"));
    let md = project.read("build/pipeline/cls/report.md");
    assert!(md.contains("| `linear.onnx` | fp32 |"), "{md}");
    assert!(md.contains("accuracy 80.00%"));
    assert!(md.contains("## Environment"));
    assert!(md.contains("| ONNX Runtime | 1."), "{md}");
    for svg in ["latency.svg", "confusion_matrix.svg"] {
        let text = project.read(&format!("build/pipeline/cls/{svg}"));
        assert!(text.starts_with("<svg") && text.trim_end().ends_with("</svg>"));
    }
    let latency = project.read("build/pipeline/cls/latency.svg");
    for text in [
        ">\nlinear\n</text>",
        ">\nident\n</text>",
        "latency per run",
        " ms\n",
    ] {
        assert!(latency.contains(text), "{text}: {latency}");
    }
    assert!(!latency.contains(".onnx"), "{latency}");
    let confusion = project.read("build/pipeline/cls/confusion_matrix.svg");
    for text in [
        "Confusion matrix: ident",
        "Confusion matrix: linear",
        "class_2",
        "predicted",
        "\n1\n</text>",
        "\n2\n</text>",
    ] {
        assert!(confusion.contains(text), "{text}: {confusion}");
    }
    // Up to date: a second build runs nothing.
    assert!(project.build(&[]).ran().is_empty());
}

/// pochi's classification figures against scikit-learn's on the same predictions: 90
/// seeded samples of 4 classes, some unlabelled, through the identity model.
#[test]
fn classification_metrics_match_scikit_learn() {
    let project = project(CLASSIFICATION);
    project.python(&[
        "-c",
        "import numpy as np\n\
         rng = np.random.default_rng(7)\n\
         np.save('data.npy', rng.standard_normal((90, 3)).astype(np.float32))\n\
         labels = rng.integers(0, 4, 90)\n\
         labels[::9] = -1\n\
         np.save('labels.npy', labels.astype(np.int64))\n",
    ]);
    project.build(&[]).assert_ok();
    let sklearn = project.scikit_learn_dir();
    let script = format!(
        "import sys, json, csv\n\
         sys.path.insert(0, {sklearn:?})\n\
         import numpy as np\n\
         from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support\n\
         s = json.load(open('build/pipeline/cls/summary.json'))\n\
         rows = [r for r in csv.DictReader(open('build/pipeline/cls/predictions.csv')) if r['model'] == 'ident.onnx' and r['true'] != '']\n\
         y = [int(r['true']) for r in rows]\n\
         p = [int(r['predicted']) for r in rows]\n\
         assert p == np.argmax(np.load('data.npy'), 1)[np.load('labels.npy') >= 0].tolist()\n\
         c = s['models'][0]['task']['classification']\n\
         classes = [k['class'] for k in c['per_class']]\n\
         pr, rc, f1, sup = precision_recall_fscore_support(y, p, labels=classes, zero_division=0)\n\
         for i, k in enumerate(c['per_class']):\n\
         \x20   for name, want in (('precision', pr[i]), ('recall', rc[i]), ('f1', f1[i])):\n\
         \x20       assert abs(k[name] - want) < 1e-12, (k['class'], name, k[name], want)\n\
         \x20   assert k['support'] == sup[i], (k, sup[i])\n\
         assert abs(c['accuracy'] - accuracy_score(y, p)) < 1e-12\n\
         assert c['confusion'] == confusion_matrix(y, p, labels=classes).tolist()\n\
         print(len(y), classes)\n"
    );
    let out = project.python(&["-c", &script]);
    assert!(out.starts_with("80 "), "{out}");
}

const PARITY: &str = r#"
[stages.strict]
kind = "report"
models = ["linear.onnx", "perturbed.onnx", "model.engine"]
data = "data.npy"
reference = "ident.onnx"
iterations = 20
min_duration = "0s"
"#;

#[test]
fn a_perturbed_model_fails_parity_with_the_figures_and_the_files_are_kept() {
    let project = project(PARITY);
    project.write("model.engine", "not a real engine");
    let run = project.build(&[]);
    run.assert_error(&[
        "parity check failed against the reference",
        "perturbed.onnx (fp32): `output`: max |diff| 2.000e0 > 9.100e-3",
        "cosine 0.984539 < 0.99999",
        "kept for inspection in .pochi/v1/pipeline/failed/strict",
        "on_parity_failure = \"warn\"",
    ]);
    assert!(!project.exists("build/pipeline/strict/summary.json"));
    let kept: Value =
        serde_json::from_str(&project.read(".pochi/v1/pipeline/failed/strict/summary.json"))
            .unwrap();
    let models = kept["models"].as_array().unwrap();
    assert_eq!(models[0]["verdict"], "pass");
    assert_eq!(models[1]["verdict"], "fail");
    assert_eq!(models[1]["parity"][0]["max_abs"], 2.0);
    // The engine is reported, not run, where there is no TensorRT or GPU.
    assert_eq!(models[2]["status"], "unavailable");
    // Every missing piece is named.
    let note = models[2]["note"].as_str().unwrap();
    assert!(
        note.contains("unavailable on this machine: no GPU; TensorRT is not installed"),
        "{note}"
    );
    let md = project.read(".pochi/v1/pipeline/failed/strict/report.md");
    assert!(md.contains("❌ FAIL"));
    let row = md
        .lines()
        .find(|l| l.starts_with("| `model.engine`"))
        .unwrap_or_else(|| panic!("{md}"));
    assert!(
        row.starts_with("| `model.engine` | – | 17 B | – |") && row.contains(note),
        "{row}"
    );
    // Not recorded done: the next build runs it again.
    let again = project.build(&[]);
    assert_eq!(again.code, Some(1));
    // With on_parity_failure = "warn" it succeeds, and says so.
    project.write(
        "pipeline.toml",
        &format!("{PARITY}on_parity_failure = \"warn\"\n"),
    );
    let warned = project.build(&[]);
    warned.assert_ok();
    assert!(
        warned
            .stderr
            .contains("warning: strict: parity failure (on_parity_failure = \"warn\")"),
        "{}",
        warned.stderr
    );
    let summary = json(&project, "build/pipeline/strict/summary.json");
    assert_eq!(summary["models"][1]["verdict"], "fail");
}

const SEGMENTATION_SCRIPT: &str = include_str!("../fixtures/report_segmentation.py");

/// One report stage per Dice setting, over the same identity model and volumes.
fn segmentation_stage(name: &str, dice: &str) -> String {
    format!(
        "[stages.{name}]\nkind = \"report\"\nmodels = [\"seg4.onnx\"]\ndata = \"seg_vol.npy\"\nlabels = \"seg_labels.npy\"\ntask = \"segmentation\"\niterations = 5\nmin_duration = \"0s\"\nthreads = 1\n{dice}\n"
    )
}

/// A figure of summary.json: null = not defined (NaN), "inf" = infinite.
fn figure(v: &Value) -> f64 {
    match v {
        Value::Null => f64::NAN,
        Value::String(s) if s == "inf" => f64::INFINITY,
        other => other
            .as_f64()
            .unwrap_or_else(|| panic!("not a figure: {other}")),
    }
}

#[track_caller]
fn assert_figures(what: &str, got: &Value, want: &Value) {
    let (got, want) = (got.as_array().unwrap(), want.as_array().unwrap());
    assert_eq!(got.len(), want.len(), "{what}: {got:?} vs {want:?}");
    for (g, w) in got.iter().zip(want) {
        let (g, w) = (figure(g), figure(w));
        let same =
            (g.is_nan() && w.is_nan()) || (g.is_infinite() && g == w) || (g - w).abs() <= 1e-6;
        assert!(
            same,
            "{what}: pochi {g} vs MONAI {w} in {got:?} vs {want:?}"
        );
    }
}

/// `per_sample_dice.csv` of `stage` against MONAI's per-sample figures (`m = monai[key]`).
fn assert_per_sample_csv(project: &Project, stage: &str, key: &str, s: &Value, monai: &Value) {
    let m = &monai[key];
    let what = |figure: &str| format!("{stage} {figure}");
    let csv = project.read(&format!("build/pipeline/{stage}/per_sample_dice.csv"));
    let rows: Vec<Vec<String>> = csv
        .lines()
        .skip(1)
        .filter(|l| l.contains(",labels,"))
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect();
    let classes = s["classes"].as_array().unwrap().len();
    assert_eq!(rows.len(), 3 * classes, "{csv}");
    let cell = |text: &str| match text {
        "" => Value::Null,
        "inf" => Value::String("inf".into()),
        t => serde_json::json!(t.parse::<f64>().unwrap()),
    };
    for (r, row) in rows.iter().enumerate() {
        let (sample, k) = (r / classes, r % classes);
        let first = if key.starts_with("True") { 0 } else { 1 };
        assert_eq!(row[4], (k + first).to_string(), "{row:?}");
        for (column, table) in [(5, "dice_per_sample"), (6, "iou_per_sample")] {
            let want = &m[table][sample][k];
            assert_figures(
                &what(table),
                &Value::Array(vec![cell(&row[column])]),
                &Value::Array(vec![want.clone()]),
            );
        }
        if k + first >= 1 {
            let want = &monai["hd95_per_sample"][sample][k + first - 1];
            assert_figures(
                &what("HD95 per sample"),
                &Value::Array(vec![cell(&row[7])]),
                &Value::Array(vec![want.clone()]),
            );
        }
    }
}

#[test]
fn segmentation_metrics_match_monai() {
    let pipeline = [
        segmentation_stage("seg_default", ""),
        segmentation_stage("seg_no_background", "dice = { include_background = false }"),
        segmentation_stage("seg_keep_empty", "dice = { ignore_empty = false }"),
        segmentation_stage(
            "seg_pooled",
            "dice = { reduction = \"pooled\", include_background = false }",
        ),
    ]
    .concat();
    let project = Project::new(&pipeline);
    project.write("seg.py", SEGMENTATION_SCRIPT);
    project.python(&["seg.py", "."]);
    project.build(&[]).assert_ok();
    let monai: Value = serde_json::from_str(&project.python(&["seg.py", ".", "--monai"])).unwrap();
    for (stage, key) in [
        ("seg_default", "True_True"),
        ("seg_no_background", "False_True"),
        ("seg_keep_empty", "True_False"),
        ("seg_pooled", "False_True"),
    ] {
        let summary = json(&project, &format!("build/pipeline/{stage}/summary.json"));
        let s = &summary["models"][0]["task"]["segmentation_vs_labels"];
        let m = &monai[key];
        let what = |figure: &str| format!("{stage} {figure}");
        if stage == "seg_pooled" {
            assert_figures(
                &what("pooled Dice"),
                &s["dice_per_class"],
                &m["pooled_per_class"],
            );
        } else {
            assert_figures(
                &what("Dice per class"),
                &s["dice_per_class"],
                &m["dice_per_class"],
            );
            assert_figures(
                &what("mean Dice"),
                &Value::Array(vec![s["mean_dice"].clone()]),
                &Value::Array(vec![m["mean_dice"].clone()]),
            );
        }
        assert_figures(
            &what("IoU per class"),
            &s["iou_per_class"],
            &m["iou_per_class"],
        );
        assert_figures(
            &what("mean IoU"),
            &Value::Array(vec![s["mean_iou"].clone()]),
            &Value::Array(vec![m["mean_iou"].clone()]),
        );
        assert_figures(
            &what("HD95 per class"),
            &s["hd95_per_class"],
            &monai["hd95_per_class"],
        );
        assert_figures(
            &what("mean HD95"),
            &Value::Array(vec![s["mean_hd95"].clone()]),
            &Value::Array(vec![monai["mean_hd95"].clone()]),
        );
        assert_per_sample_csv(&project, stage, key, s, &monai);
    }
    // The data has what the comparison is about: an empty class, a false-positive class
    // (class 3 in volume 1: Dice 0 when empty truths are not ignored, HD95 NaN in MONAI).
    let d = &monai["True_True"]["dice_per_sample"];
    assert!(d[0][2].is_null(), "{d}");
    assert_eq!(monai["True_False"]["dice_per_sample"][1][3], 0.0, "{monai}");
    assert!(monai["hd95_per_sample"][1][2].is_null(), "{monai}");
    assert!(
        figure(&monai["hd95_volume0"][0]) > 0.0 && figure(&monai["hd95_volume0"][0]).is_finite()
    );
    // Pooling differs from MONAI's per-sample mean on this data.
    let default = json(&project, "build/pipeline/seg_no_background/summary.json");
    let pooled = json(&project, "build/pipeline/seg_pooled/summary.json");
    let f =
        |s: &Value| figure(&s["models"][0]["task"]["segmentation_vs_labels"]["dice_per_class"][0]);
    assert!((f(&default) - f(&pooled)).abs() > 1e-3);
    let md = project.read("build/pipeline/seg_default/report.md");
    assert!(
        md.contains("mean HD95") && md.contains("| 3 | – | – | – |"),
        "{md}"
    );
}

const EXTRAS: &str = r#"
[stages.cls]
kind = "report"
models = ["ident.onnx", "swap.onnx"]
data = "data.npy"
labels = "labels.npy"
reference = "ident.onnx"
task = "classification"
iterations = 5
min_duration = "0s"
threads = 1
save_outputs = true
on_parity_failure = "warn"
"#;

/// What the peers say about EXTRAS' models: ONNX Runtime from Python for the outputs,
/// numpy for the argmax, softmax, histogram and confusion matrices (scikit-learn is not in
/// the managed toolchain).
const EXTRAS_PEERS: &str = r#"
import json, sys
import numpy as np, onnxruntime as ort
x = np.load("data.npy"); labels = np.load("labels.npy")
out = {}
for name in ("ident", "swap"):
    y = ort.InferenceSession(f"{name}.onnx", providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    saved = np.load(f"build/pipeline/cls/outputs/{name}.npy")
    y64 = y.astype(np.float64)
    e = np.exp(y64 - y64.max(axis=1, keepdims=True))
    keep = labels >= 0
    confusion = np.zeros((3, 3), np.int64)
    np.add.at(confusion, (labels[keep], y.argmax(1)[keep]), 1)
    out[name] = {
        "saved_max_diff": float(np.abs(saved - y).max()), "saved_shape": list(saved.shape),
        "argmax": y.argmax(1).tolist(), "confidence": (e.max(1) / e.sum(1)).tolist(),
        "confusion": confusion.tolist(),
    }
ref, swap = np.load("build/pipeline/cls/outputs/ident.npy"), np.load("build/pipeline/cls/outputs/swap.npy")
d = np.abs(swap.astype(np.float64) - ref.astype(np.float64)).ravel()
edges = [0, 1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1, np.inf]
out["histogram"] = {"zero": int((d == 0).sum()), "counts": np.histogram(d[d > 0], bins=edges)[0].tolist()}
print(json.dumps(out))
"#;

#[test]
fn disagreements_confusion_matrices_error_histograms_and_saved_outputs_match_the_peers() {
    let project = project(EXTRAS);
    project.python(&[
        "-c",
        "import sys, numpy as np; sys.path.insert(0, '.'); import make_models as m; m.linear('swap.onnx', np.eye(3)[:, [1, 0, 2]])",
    ]);
    project.build(&[]).assert_ok();
    let peers: Value = serde_json::from_str(&project.python(&["-c", EXTRAS_PEERS])).unwrap();
    let summary = json(&project, "build/pipeline/cls/summary.json");
    let models = summary["models"].as_array().unwrap();
    for (model, name) in models.iter().zip(["ident", "swap"]) {
        let peer = &peers[name];
        assert_eq!(model["label"], name);
        // The saved outputs are ONNX Runtime's (from Python) for all 6 samples.
        assert_eq!(peer["saved_shape"], serde_json::json!([6, 3]));
        assert!(peer["saved_max_diff"].as_f64().unwrap() <= 1e-6, "{peer}");
        // A confusion matrix for every model, as numpy counts it.
        assert_eq!(
            model["task"]["classification"]["confusion"], peer["confusion"],
            "{name}"
        );
    }
    // Disagreements: where the swapped model's argmax differs from the reference's.
    let (reference, swapped) = (&peers["ident"]["argmax"], &peers["swap"]["argmax"]);
    let expected: Vec<usize> = (0..6).filter(|&i| reference[i] != swapped[i]).collect();
    assert!(!expected.is_empty());
    let listed = models[1]["task"]["disagreements"].as_array().unwrap();
    let indices: Vec<usize> = listed
        .iter()
        .map(|d| d["index"].as_u64().unwrap() as usize)
        .collect();
    assert_eq!(indices, expected);
    for d in listed {
        let i = d["index"].as_u64().unwrap() as usize;
        assert_eq!(d["reference"], reference[i]);
        assert_eq!(d["predicted"], swapped[i]);
        let confidence = peers["swap"]["confidence"][i].as_f64().unwrap();
        assert!((d["confidence"].as_f64().unwrap() - confidence).abs() < 1e-9);
    }
    assert_eq!(models[0]["task"]["disagreements"], serde_json::json!([]));
    let csv = project.read("build/pipeline/cls/disagreements.csv");
    assert_eq!(csv.lines().count(), 1 + expected.len(), "{csv}");
    assert!(csv.contains(&format!(
        "swap.onnx,{},data.npy#{},",
        expected[0], expected[0]
    )));
    // The error histogram, as numpy bins it.
    let errors = &models[1]["parity"][0]["errors"];
    assert_eq!(errors["zero"], peers["histogram"]["zero"]);
    assert_eq!(errors["counts"], peers["histogram"]["counts"]);
    let chart = project.read("build/pipeline/cls/errors.svg");
    assert!(chart.contains("|swap - reference| of `output`"), "{chart}");
    assert!(!chart.contains("|ident - reference|"), "{chart}");
    let md = project.read("build/pipeline/cls/report.md");
    assert!(md.contains("![absolute error per bin](errors.svg)"), "{md}");
    // Tables stay tables: no doubled cell separator, no bare `|` inside a cell.
    assert!(!md.lines().any(|l| l.ends_with("||")), "{md}");
    assert!(md.contains("max \\|diff\\|"), "{md}");
    for text in [
        "Confusion matrix (rows true, columns predicted)",
        "sample(s) where the top class differs from the reference's",
        "Absolute error of `output` against the reference",
    ] {
        assert_eq!(
            md.matches(text).count(),
            if text.starts_with("Confusion") { 2 } else { 1 },
            "{text}: {md}"
        );
    }
}

#[test]
fn the_title_names_pipeline_date_and_commit_and_the_optimization_level() {
    let project = project(CLASSIFICATION);
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args)
            .current_dir(project.dir.path())
            .output()
            .expect("git");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    git(&["init", "-q"]);
    git(&["add", "pipeline.toml"]);
    git(&["commit", "-q", "-m", "pipeline"]);
    let commit = git(&["rev-parse", "HEAD"]);
    project.build(&[]).assert_ok();
    let today = project.python(&[
        "-c",
        "import datetime; print(datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d'))",
    ]);
    let summary = json(&project, "build/pipeline/cls/summary.json");
    assert_eq!(summary["provenance"]["commit"], commit.as_str());
    assert_eq!(summary["provenance"]["pipeline"], "pipeline");
    assert!(
        summary["provenance"]["date"]
            .as_str()
            .unwrap()
            .starts_with(today.trim())
    );
    let md = project.read("build/pipeline/cls/report.md");
    let title: Vec<&str> = md.lines().take(3).collect();
    assert_eq!(title[0], "# Report `cls` of pipeline `pipeline`");
    assert!(
        title[2].starts_with(today.trim())
            && title[2].ends_with(&format!("· commit `{}`", &commit[..12])),
        "{title:?}"
    );
    // Sessions as Python's InferenceSession by default, and said so.
    assert_eq!(summary["timing"]["graph_optimization"], "ORT_ENABLE_ALL");
    assert!(md.contains("graph optimization ORT_ENABLE_ALL"), "{md}");
}

#[test]
fn infer_writes_the_report_for_one_model() {
    let project = project("");
    // A dataset stage's manifest next to the data names the classes and the files.
    project.write(
        "data_manifest.json",
        r#"{"classes": ["cat", "dog", "fox"], "files": ["a.png", "b.png", "c.png", "d.png", "e.png", "f.png"]}"#,
    );
    let run = project.run(&[
        "infer",
        "ident.onnx",
        "--data",
        "data.npy",
        "--labels",
        "labels.npy",
        "--threads",
        "1",
        "--iterations",
        "20",
        "-o",
        "out",
    ]);
    run.assert_ok();
    assert!(run.stderr.contains("accuracy 80.00%"), "{}", run.stderr);
    for file in [
        "summary.json",
        "report.md",
        "latency.svg",
        "predictions.csv",
        "classification_report.csv",
        "confusion_matrix.svg",
    ] {
        assert!(project.exists(&format!("out/{file}")), "{file}");
    }
    let summary = json(&project, "out/summary.json");
    assert_eq!(summary["environment"]["threads"], "1");
    assert_eq!(
        summary["data"]["classes"],
        serde_json::json!(["cat", "dog", "fox"])
    );
    let predictions = project.read("out/predictions.csv");
    assert!(
        predictions.contains("\na.png,0,cat,0,cat,")
            && predictions.contains("\nf.png,2,fox,0,cat,"),
        "{predictions}"
    );
    assert!(
        project
            .read("out/classification_report.csv")
            .contains(",1,dog,")
    );
    // An engine through infer-trt: reported unavailable, not a failure.
    project.write("m.engine", "x");
    let trt = project.run(&["infer-trt", "m.engine", "--data", "data.npy", "-o", "trt"]);
    trt.assert_ok();
    assert!(
        trt.stderr.contains("unavailable on this machine"),
        "{}",
        trt.stderr
    );
}

/// pochitrain's layout: one folder per class. Cats are red, dogs green, but `dog/c.png` is
/// red (so `pool.onnx` gets it wrong); the sizes differ, so every image is resized.
fn write_images(project: &Project, dir: &str) {
    const RED: [u8; 3] = [230, 10, 20];
    const GREEN: [u8; 3] = [15, 220, 30];
    for (file, rgb, width, height) in [
        ("cat/a.png", RED, 10, 12),
        ("cat/b.png", RED, 8, 8),
        ("cat/c.png", RED, 16, 9),
        ("dog/a.png", GREEN, 12, 12),
        ("dog/b.png", GREEN, 9, 20),
        ("dog/c.png", RED, 8, 11),
    ] {
        let path = project.path(&format!("{dir}/{file}"));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        image::RgbImage::from_pixel(width, height, image::Rgb(rgb))
            .save(&path)
            .unwrap();
    }
}

#[test]
fn infer_on_a_class_per_folder_image_set() {
    let project = project("");
    write_images(&project, "val");
    let args = ["--threads", "1", "--iterations", "10"];
    let run = project.run(
        &[
            &["infer", "pool.onnx", "--data", "val", "-o", "out"],
            &args[..],
        ]
        .concat(),
    );
    run.assert_ok();
    // The input size comes from the ONNX (N x 3 x 8 x 8); ImageNet normalization.
    assert!(
        run.stderr.contains(
            "6 images in 2 classes; resize 8, centre crop 8x8, mean 0.485 0.456 0.406, std 0.229 0.224 0.225"
        ),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("accuracy 83.33%"), "{}", run.stderr);
    let predictions = project.read("out/predictions.csv");
    let rows: Vec<&str> = predictions.lines().skip(1).collect();
    assert_eq!(rows.len(), 6, "{predictions}");
    for (row, (file, predicted, truth)) in rows.iter().zip([
        ("cat/a.png", "0,cat", "0,cat"),
        ("cat/b.png", "0,cat", "0,cat"),
        ("cat/c.png", "0,cat", "0,cat"),
        ("dog/a.png", "1,dog", "1,dog"),
        ("dog/b.png", "1,dog", "1,dog"),
        ("dog/c.png", "0,cat", "1,dog"),
    ]) {
        let correct = predicted == truth;
        assert!(
            row.starts_with(&format!("{file},{predicted},{truth},"))
                && row.contains(&format!(",{correct},"))
                && row.ends_with("pool.onnx"),
            "{row}"
        );
    }
    let summary = json(&project, "out/summary.json");
    assert_eq!(summary["data"]["samples"], 6);
    assert_eq!(
        summary["data"]["sample_shape"],
        serde_json::json!([3, 8, 8])
    );
    assert_eq!(
        summary["data"]["classes"],
        serde_json::json!(["cat", "dog"])
    );
    let classification = &summary["models"][0]["task"]["classification"];
    assert_eq!(classification["labelled"], 6);
    assert!(close(
        classification["accuracy"].as_f64().unwrap(),
        5.0 / 6.0
    ));
    assert_eq!(
        classification["confusion"],
        serde_json::json!([[3, 0], [1, 2]])
    );

    // Explicit preprocessing and a seeded subset.
    let run = project.run(
        &[
            &[
                "infer",
                "pool.onnx",
                "--data",
                "val",
                "-o",
                "subset",
                "--input-size",
                "8",
                "8",
                "--resize",
                "9",
                "--mean",
                "0.5",
                "--std",
                "0.25",
                "--samples",
                "4",
            ],
            &args[..],
        ]
        .concat(),
    );
    run.assert_ok();
    assert!(
        run.stderr
            .contains("4 of 6 images in 2 classes; resize 9, centre crop 8x8, mean 0.5 0.5 0.5, std 0.25 0.25 0.25"),
        "{}",
        run.stderr
    );
    assert_eq!(project.read("subset/predictions.csv").lines().count(), 5);
    assert_eq!(json(&project, "subset/summary.json")["data"]["samples"], 4);

    // A flat folder of .npy volumes: fed as they are, unlabelled.
    project.python(&[
        "-c",
        "import numpy as np, os; os.makedirs('vols'); [np.save(f'vols/v{i}.npy', np.random.default_rng(i).standard_normal((3, 4, 4, 4)).astype(np.float32)) for i in range(2)]",
    ]);
    let run = project.run(
        &[
            &[
                "infer",
                "seg.onnx",
                "--data",
                "vols",
                "--task",
                "segmentation",
                "-o",
                "vol",
            ],
            &args[..],
        ]
        .concat(),
    );
    run.assert_ok();
    assert!(
        run.stderr
            .contains("2 .npy volumes, no class folders (unlabelled)"),
        "{}",
        run.stderr
    );
    let summary = json(&project, "vol/summary.json");
    assert_eq!(
        summary["data"]["sample_shape"],
        serde_json::json!([3, 4, 4, 4])
    );
}

#[test]
fn infer_names_a_bad_data_folder_with_a_hint() {
    // Every mistake is caught before the model is read or a toolchain is needed.
    let project = Project::new("");
    project.write("m.onnx", "not a model");
    project.write("x.npy", "");
    std::fs::create_dir_all(project.path("empty")).unwrap();
    project
        .run(&["infer", "m.onnx", "--data", "empty"])
        .assert_error(&["has no images", "help:", "one folder per class"]);
    std::fs::create_dir_all(project.path("classes/cat")).unwrap();
    std::fs::create_dir_all(project.path("classes/dog")).unwrap();
    project
        .run(&["infer", "m.onnx", "--data", "classes"])
        .assert_error(&["has no images", "help:"]);
    write_images(&project, "val");
    project.write("val/stray.png", "");
    project
        .run(&["infer", "m.onnx", "--data", "val"])
        .assert_error(&["`stray.png`", "move it into a class folder"]);
    std::fs::remove_file(project.path("val/stray.png")).unwrap();
    project
        .run(&["infer", "m.onnx", "--data", "val", "--labels", "x.npy"])
        .assert_error(&["a folder's labels are its class folders", "help:"]);
    project
        .run(&["infer", "m.onnx", "--data", "x.npy", "--resize", "256"])
        .assert_error(&["--resize applies to a folder of images", "help:"]);
    project
        .run(&["infer", "m.onnx", "--data", "val", "--mean", "0.5", "0.5"])
        .assert_error(&["--mean takes 1 or 3 values", "help:"]);
    project
        .run(&["infer", "m.onnx", "--data", "missing"])
        .assert_error(&["does not exist", "help:"]);
    // Not an ONNX: its input size cannot be read.
    project
        .run(&["infer", "m.onnx", "--data", "val"])
        .assert_error(&["cannot read the model's input size", "--input-size"]);
}

const EXPORT_THEN_REPORT: &str = r#"
[stages.checkpoint]
kind = "command"
run = ["{python}", "{inputs.script}", "--model", "torch.nn:Linear", "--arg", "in_features=8", "--arg", "out_features=4", "--out", "{outputs.checkpoint}"]
inputs = { script = "scripts/random_init_checkpoint.py" }
outputs = { checkpoint = "ckpt/linear.pth" }

[stages.onnx]
kind = "export"
checkpoint = "@checkpoint"
model = "torch.nn:Linear"
model_args = { in_features = 8, out_features = 4 }
input_shape = [8]

[stages.perturbed]
kind = "command"
run = ["{python}", "-c", "import onnx, numpy as np, sys; from onnx import numpy_helper as h; m = onnx.load(sys.argv[1]); i = m.graph.initializer[0]; a = h.to_array(i).copy(); a.flat[0] += 0.5; i.CopyFrom(h.from_array(a, i.name)); onnx.save(m, sys.argv[2])", "{inputs.model}", "{outputs.onnx}"]
inputs = { model = "@onnx" }
outputs = { onnx = "build/perturbed.onnx" }

[stages.report]
kind = "report"
models = ["@onnx", "@perturbed"]
task = "classification"
iterations = 20
min_duration = "0s"
threads = 1
"#;

#[test]
fn report_of_an_export_against_its_pytorch_reference() {
    let project = Project::new(EXPORT_THEN_REPORT);
    project.write("scripts/random_init_checkpoint.py", RANDOM_INIT);
    let run = project.build(&[]);
    // The exported model passes against PyTorch's outputs; the perturbed one fails.
    run.assert_error(&[
        "parity check failed against the reference (the export's PyTorch outputs",
        "@perturbed (fp32): `output`",
    ]);
    let kept = json(&project, ".pochi/v1/pipeline/failed/report/summary.json");
    let models = kept["models"].as_array().unwrap();
    assert_eq!(models[0]["verdict"], "pass", "{}", models[0]);
    let max_abs = models[0]["parity"][0]["max_abs"].as_f64().unwrap();
    assert!(max_abs < 1e-5, "{max_abs}");
    assert!(models[0]["parity"][0]["cosine"].as_f64().unwrap() > 0.99999);
    assert_eq!(models[1]["verdict"], "fail");
    assert!(models[1]["parity"][0]["max_abs"].as_f64().unwrap() > 0.01);
    assert_eq!(kept["data"]["samples"], 1);
    assert_eq!(kept["data"]["sample_shape"], serde_json::json!([8]));
    assert_eq!(kept["models"][0]["task"]["agreement_with_reference"], 1.0);
    assert_sane_latency(&models[0], 1);
    assert!(kept["environment"]["torch"].is_string());
    // With only the exported model, the report passes and is recorded.
    project.write(
        "pipeline.toml",
        &EXPORT_THEN_REPORT.replace(
            "models = [\"@onnx\", \"@perturbed\"]",
            "models = [\"@onnx\"]",
        ),
    );
    project.build(&[]).assert_ok();
    let summary = json(&project, "build/pipeline/report/summary.json");
    assert_eq!(summary["models"][0]["verdict"], "pass");
    assert!(
        summary["reference"]["description"]
            .as_str()
            .unwrap()
            .contains("PyTorch")
    );
}

#[test]
fn bad_report_settings_are_named_with_a_hint() {
    let project = Project::new(
        "[stages.r]\nkind = \"report\"\nmodels = [\"m.onnx\"]\ndata = \"d.npy\"\ntask = \"clasification\"\n",
    );
    project
        .run(&["build"])
        .assert_error(&["unknown task `clasification`", "classification"]);
    project.write(
        "pipeline.toml",
        "[stages.r]\nkind = \"report\"\nmodels = [\"m.onnx\"]\n",
    );
    project
        .run(&["build"])
        .assert_error(&["no `data`", "data = \"@dataset_stage\""]);
}

/// An engine stage and a report over the ONNX model and its engine, on the TensorRT
/// STAND-IN (tests/fixtures/fake_tensorrt: a test double that "runs" an engine by running
/// its ONNX with ONNX Runtime on the CPU) and a declared GPU 0 (no real GPU here).
const WITH_ENGINE: &str = r#"
[resources]
gpus = [0]

[stages.engine]
kind = "engine"
onnx = "linear.onnx"
batch = { min = 1, opt = 2, max = 4 }

[stages.cmp]
kind = "report"
models = ["linear.onnx", "@engine"]
data = "data.npy"
labels = "labels.npy"
task = "classification"
iterations = 20
min_duration = "0s"
threads = 1
batch = 2
"#;

fn build_with_standin(project: &Project, extra: &[(&str, &str)]) -> crate::common::Run {
    let standin = crate::common::tensorrt_standin_dir();
    let record = project.path("trt-record.json");
    let record = record.to_string_lossy();
    let mut env = vec![
        ("POCHI_TEST_TENSORRT_STANDIN", standin.as_str()),
        ("FAKE_TRT_RECORD", record.as_ref()),
    ];
    env.extend_from_slice(extra);
    project.run_env(&["build", "--json"], &env)
}

#[test]
fn engines_are_timed_and_checked_through_the_tensorrt_worker_standin() {
    let project = project(WITH_ENGINE);
    let run = build_with_standin(&project, &[]);
    run.assert_ok();
    let summary = json(&project, "build/pipeline/cmp/summary.json");
    let models = summary["models"].as_array().unwrap();
    assert_eq!(models[0]["runs_on"], "ONNX Runtime CPUExecutionProvider");
    let engine = &models[1];
    assert_eq!(engine["status"], "ok", "{engine}");
    assert_eq!(
        engine["runs_on"],
        "TensorRT 11.4.0.106 on Fake GPU (stand-in)"
    );
    assert!(
        engine["timing"]
            .as_str()
            .unwrap()
            .contains("TensorRT stand-in"),
        "{engine}"
    );
    assert_eq!(engine["precision"], "fp32");
    assert_sane_latency(engine, 2);
    assert_eq!(engine["end_to_end"]["runs"], 3);
    // The same outputs as the ONNX model it was built from: parity passes exactly, and the
    // task metrics are the ONNX model's.
    assert_eq!(engine["verdict"], "pass");
    assert_eq!(engine["parity"][0]["max_abs"], 0.0);
    assert_eq!(engine["task"]["agreement_with_reference"], 1.0);
    assert!(close(
        engine["task"]["classification"]["accuracy"]
            .as_f64()
            .unwrap(),
        0.8
    ));
    // The report held GPU 0 (declared) but this ONNX Runtime has no CUDA provider: said so.
    assert_eq!(summary["timing"]["provider"], "CPUExecutionProvider");
    let warnings = summary["warnings"].to_string();
    assert!(
        warnings.contains("no CUDA execution provider"),
        "{warnings}"
    );
    let md = project.read("build/pipeline/cmp/report.md");
    assert!(
        md.contains("TensorRT 11.4.0.106 on Fake GPU (stand-in)"),
        "{md}"
    );
    // Up to date afterwards.
    assert!(
        build_with_standin(&project, &[])
            .assert_ok()
            .ran()
            .is_empty()
    );
}

#[test]
fn an_engine_that_differs_from_its_reference_fails_the_report() {
    let project = project(WITH_ENGINE);
    let run = build_with_standin(&project, &[("FAKE_TRT_PERTURB", "0.5")]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("parity check failed"), "{}", run.stderr);
    assert!(run.stderr.contains("@engine (fp32)"), "{}", run.stderr);
    let kept = json(&project, ".pochi/v1/pipeline/failed/cmp/summary.json");
    assert_eq!(kept["models"][1]["verdict"], "fail");
    assert!(kept["models"][1]["parity"][0]["max_abs"].as_f64().unwrap() >= 0.49);
}

#[test]
fn a_batch_outside_the_engines_profile_is_named() {
    let project = project(&WITH_ENGINE.replace("batch = 2\n", "batch = 6\n"));
    let run = build_with_standin(&project, &[]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("batch = 6 is outside the engine's profile (1..4 for `input`)"),
        "{}",
        run.stderr
    );
}

#[test]
fn without_a_gpu_the_engine_is_listed_unavailable_and_the_onnx_model_is_timed() {
    let project = project(&WITH_ENGINE.replace("gpus = [0]", "gpus = []"));
    let run = build_with_standin(&project, &[]);
    run.assert_ok();
    let summary = json(&project, "build/pipeline/cmp/summary.json");
    assert_eq!(summary["models"][0]["status"], "ok");
    assert_eq!(summary["models"][1]["status"], "unavailable");
    // The stand-in provides TensorRT: what is missing is the GPU, and so the engine.
    let note = summary["models"][1]["note"].as_str().unwrap();
    assert!(
        note.contains("no GPU") && note.contains("the engine file was not built"),
        "{note}"
    );
    assert!(!note.contains("TensorRT is not installed"), "{note}");
    let md = project.read("build/pipeline/cmp/report.md");
    assert!(md.contains("| `@engine` | – | – | – |"), "{md}");
}

#[test]
fn infer_trt_refuses_an_engine_built_for_another_gpu() {
    let project = project(WITH_ENGINE);
    build_with_standin(&project, &[]).assert_ok();
    // The engine and a manifest saying it was built on a compute capability 8.6 GPU.
    std::fs::copy(
        project.path("build/pipeline/engine.engine"),
        project.path("other.engine"),
    )
    .unwrap();
    let manifest = project
        .read("build/pipeline/engine.manifest.json")
        .replace("\"9.0\"", "\"8.6\"");
    project.write("other.manifest.json", &manifest);
    let standin = crate::common::tensorrt_standin_dir();
    let env = [
        ("POCHI_TEST_TENSORRT_STANDIN", standin.as_str()),
        ("POCHI_GPUS", "0"),
    ];
    let infer_other = [
        "infer-trt",
        "other.engine",
        "--data",
        "data.npy",
        "-o",
        "out",
    ];
    project
        .run_env(&infer_other, &env)
        .assert_error(&["compute capability 8.6", "compute capability 9.0"]);
    // Another TensorRT version is refused the same way.
    let manifest = project
        .read("build/pipeline/engine.manifest.json")
        .replace("\"11.4.0.106\"", "\"10.0.0\"");
    project.write("other.manifest.json", &manifest);
    project.run_env(&infer_other, &env).assert_error(&[
        "built with TensorRT 10.0.0",
        "this machine has TensorRT 11.4.0.106",
    ]);
    // The engine's own build runs fine through the one-shot.
    let ok = project.run_env(
        &[
            "infer-trt",
            "build/pipeline/engine.engine",
            "--data",
            "data.npy",
            "--iterations",
            "20",
            "-o",
            "out",
        ],
        &env,
    );
    ok.assert_ok();
    let summary = json(&project, "out/summary.json");
    assert_eq!(summary["models"][0]["status"], "ok", "{summary}");
    assert_eq!(summary["models"][0]["batch"], 1);
}

const SLIDING: &str = include_str!("../fixtures/report_sliding_window.py");

/// MONAI's settings as the report writes them, for each mode: windows blended with a
/// Gaussian (per-axis overlap, a non-default sigma, a partial last batch of windows), and
/// evenly (replicate padding on the axis shorter than the window).
const SLIDING_CASES: [(&str, &str, &str); 2] = [
    (
        "gaussian",
        r#"sliding_window = { roi = [16, 16, 16], overlap = [0.5, 0.25, 0.4], mode = "gaussian", sigma_scale = 0.2, sw_batch_size = 3 }"#,
        r#"{"roi_size": [16, 16, 16], "sw_batch_size": 3, "overlap": [0.5, 0.25, 0.4], "mode": "gaussian", "sigma_scale": 0.2}"#,
    ),
    (
        "constant",
        r#"sliding_window = { roi = [16, 16, 16], overlap = 0.25, mode = "constant", sw_batch_size = 4, padding_mode = "replicate" }"#,
        r#"{"roi_size": [16, 16, 16], "sw_batch_size": 4, "overlap": 0.25, "mode": "constant", "padding_mode": "replicate"}"#,
    ),
];

fn sliding_project() -> Project {
    let mut pipeline = String::new();
    for (mode, settings, _) in SLIDING_CASES {
        pipeline += &format!(
            "[stages.sw_{mode}]\nkind = \"report\"\nmodels = [\"win.onnx\"]\ndata = \"vol.npy\"\nwarmup = 1\niterations = 3\nmin_duration = \"0s\"\nthreads = 1\nsave_outputs = true\n{settings}\n\n"
        );
    }
    let project = Project::new(&pipeline);
    project.write("sw.py", SLIDING);
    project.python(&["sw.py", "."]);
    project
}

#[test]
fn sliding_window_outputs_equal_monais_sliding_window_inference_in_both_modes() {
    let project = sliding_project();
    project.build(&[]).assert_ok();
    for (mode, _, monai) in SLIDING_CASES {
        let want = format!("monai_{mode}.npy");
        project.python(&["sw.py", ".", "--monai", monai, &want]);
        let ours = format!("build/pipeline/sw_{mode}/outputs/win.npy");
        let script = format!(
            "import numpy as np; a = np.load({ours:?}); b = np.load({want:?}); print(a.shape == b.shape, a.shape, float(np.abs(a - b).max()), float(np.abs(b).max()))"
        );
        let out = project.python(&["-c", &script]);
        let fields: Vec<&str> = out.split_whitespace().collect();
        assert_eq!(fields[0], "True", "{mode}: shapes differ: {out}");
        assert!(out.contains("(2, 3, 37, 29, 12)"), "{mode}: {out}");
        let diff: f64 = fields[fields.len() - 2].parse().unwrap();
        let scale: f64 = fields[fields.len() - 1].parse().unwrap();
        eprintln!("{mode}: max |pochi - MONAI| = {diff:e} (max |MONAI| {scale})");
        assert!(diff <= 1e-4, "{mode}: max |pochi - MONAI| = {diff}: {out}");
        assert!(
            scale > 0.1,
            "{mode}: a trivial output proves nothing: {out}"
        );
        let summary = json(&project, &format!("build/pipeline/sw_{mode}/summary.json"));
        let sw = &summary["sliding_window"];
        assert_eq!(sw["mode"], mode, "{sw}");
        let model = &summary["models"][0];
        // Timed runs are on batches of windows; end to end, one run per volume.
        let batch = if mode == "gaussian" { 3 } else { 4 };
        assert_eq!(model["latency"]["batch"], batch, "{model}");
        assert_eq!(model["end_to_end"]["runs"], 2, "{model}");
    }
    // Windows: gaussian overlap [0.5, 0.25, 0.4] over 37 x 29 x 16 (12 padded): intervals
    // 8, 12 and 16 (the window covers the axis) -> 4 x 3 x 1 windows.
    let summary = json(&project, "build/pipeline/sw_gaussian/summary.json");
    assert_eq!(summary["sliding_window"]["windows_per_sample"], 12);
    let md = project.read("build/pipeline/sw_gaussian/report.md");
    assert!(
        md.contains("Sliding window (MONAI's `sliding_window_inference`)"),
        "{md}"
    );
}

#[test]
fn sliding_window_settings_are_checked_with_spans() {
    let stage = |settings: &str| {
        format!(
            "[stages.sw]\nkind = \"report\"\nmodels = [\"win.onnx\"]\ndata = \"vol.npy\"\nsliding_window = {settings}\n"
        )
    };
    let cases = [
        ("{ roi = [] }", "needs one size of 1 or more"),
        ("{ roi = [16, 0, 16] }", "needs one size of 1 or more"),
        (
            "{ roi = [16, 16, 16], overlap = 1.0 }",
            "must be >= 0 and < 1",
        ),
        (
            "{ roi = [16, 16, 16], overlap = [0.5, 0.5] }",
            "has 2 values for the 3 axes",
        ),
        (
            "{ roi = [16, 16, 16], sw_batch_size = 0 }",
            "at least 1 window per run",
        ),
        (
            "{ roi = [16, 16, 16], mode = \"gausian\" }",
            "did you mean `gaussian`",
        ),
        (
            "{ roi = [16, 16, 16], padding_mode = \"reflekt\" }",
            "did you mean `reflect`",
        ),
        ("{ roi = [16, 16, 16], sigma_scale = 0 }", "must be above 0"),
        ("{ roi = [16, 16, 16], window = 3 }", "window"),
    ];
    for (settings, needle) in cases {
        let project = Project::new(&stage(settings));
        let run = project.run(&["build", "--dry-run"]);
        assert_eq!(run.code, Some(1), "{settings}: {}", run.stderr);
        assert!(run.stderr.contains(needle), "{settings}: {}", run.stderr);
        assert!(
            run.stderr.contains("pipeline.toml:5:"),
            "{settings}: {}",
            run.stderr
        );
    }
    // The roi must have the data's spatial axes: named at run time, with both shapes.
    let project = sliding_project();
    project.write("pipeline.toml", &stage("{ roi = [16, 16] }"));
    project
        .build(&[])
        .assert_error(&["roi [16, 16] has 2 axes", "3 spatial axes"]);
    // The window must be what the model takes.
    project.write("pipeline.toml", &stage("{ roi = [8, 8, 8] }"));
    project.build(&[]).assert_error(&[
        "sliding_window.roi = [8, 8, 8]",
        "set roi to the model's spatial input size",
    ]);
}

#[test]
fn the_batch_sweep_times_every_size_and_skips_what_an_engine_cannot_take() {
    let project = project(&WITH_ENGINE.replace("batch = 2\n", "batch = [1, 4, 16]\n"));
    let run = build_with_standin(&project, &[]);
    run.assert_ok();
    let summary = json(&project, "build/pipeline/cmp/summary.json");
    assert_eq!(summary["batch_sweep"], serde_json::json!([1, 4, 16]));
    for model in summary["models"].as_array().unwrap() {
        let points = model["batch_sweep"].as_array().unwrap();
        assert_eq!(points.len(), 3, "{model}");
        for point in points {
            let batch = point["batch"].as_u64().unwrap();
            if model["name"] == "@engine" && batch == 16 {
                assert_eq!(
                    point["skipped"], "outside the engine's profile (batch 1..4)",
                    "{point}"
                );
                assert!(point["latency"].is_null());
                continue;
            }
            assert!(point["skipped"].is_null(), "{point}");
            let l = &point["latency"];
            assert_eq!(l["batch"], batch);
            let mean_s = l["mean_ms"].as_f64().unwrap() / 1e3;
            let throughput = l["throughput"].as_f64().unwrap();
            assert!(
                (throughput - batch as f64 / mean_s).abs() <= 1e-6 * throughput,
                "throughput {throughput} vs batch / mean latency: {point}"
            );
            assert!(l["runs"].as_u64().unwrap() >= 20, "{point}");
        }
        // The data pass ran at the first size.
        assert_eq!(model["batch"], 1, "{model}");
    }
    let md = project.read("build/pipeline/cmp/report.md");
    assert!(md.contains("best throughput (batch)"), "{md}");
    assert!(md.contains("### Batch sweep"), "{md}");
    assert!(
        md.contains("`@engine` at batch 16: outside the engine's profile (batch 1..4)"),
        "{md}"
    );
    // The best figure in the table is the largest throughput of the sweep.
    let engine = &summary["models"][1];
    let best = engine["batch_sweep"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["latency"]["throughput"].as_f64())
        .fold(0.0, f64::max);
    let row = md.lines().find(|l| l.starts_with("| `@engine`")).unwrap();
    assert!(row.contains(&format!("{best:.1} (")), "{best} in {row}");
    let svg = project.read("build/pipeline/cmp/throughput.svg");
    assert!(svg.starts_with("<svg"), "{svg}");
    for name in ["linear", "engine", "batch size", "samples/s"] {
        assert!(svg.contains(name), "{name} missing from the chart");
    }
}

/// Issue 22 (11): with `--input-size` the layout check was skipped, and a channels-last
/// model failed inside ONNX Runtime ("index: 1 Got: 3 Expected: 8"). Now it is refused
/// first, with or without `--input-size`, saying why.
#[test]
fn infer_refuses_a_channels_last_model_for_images_with_or_without_an_input_size() {
    let project = project("");
    write_images(&project, "val");
    for extra in [&[][..], &["--input-size", "8"][..]] {
        let run = project.run(&[&["infer", "nhwc.onnx", "--data", "val"][..], extra].concat());
        run.assert_error(&["batch x 8 x 8 x 3, but a folder of images gives", "help:"]);
        assert!(!run.stderr.contains("Expected"), "{}", run.stderr);
    }
}
