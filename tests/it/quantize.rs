//! The `quantize` kind end to end on the CPU, with the real ModelOpt, ONNX and ONNX
//! Runtime of the managed toolchain: fp16 (AutoCast) and int8 (PTQ, Q/DQ) of a small real
//! conv net, accuracy against the fp32 model, and recalibration only when the calibration
//! data changes. Heavy: about a minute per quantize run on 2 busy cores.

use std::path::Path;

use crate::common::Project;
use serde_json::Value;

const MAKE_MODEL: &str = include_str!("../fixtures/quantize/make_model.py");
const MAKE_CALIB: &str = include_str!("../fixtures/quantize/make_calib.py");
const COMPARE: &str = include_str!("../fixtures/quantize/compare.py");

const SOURCES: &str = r#"
[stages.model]
kind = "command"
run = ["{python}", "{inputs.script}", "{outputs.onnx}"]
inputs = { script = "scripts/make_model.py" }
outputs = { onnx = "out/model.onnx" }

[stages.calib]
kind = "command"
run = ["{python}", "{inputs.script}", "{inputs.seed}", "{outputs.npy}"]
inputs = { script = "scripts/make_calib.py", seed = "seed.txt" }
outputs = { npy = "out/calib.npy" }
"#;

fn project(stages: &str) -> Project {
    let project = Project::new(&format!("{SOURCES}{stages}"));
    project.write("scripts/make_model.py", MAKE_MODEL);
    project.write("scripts/make_calib.py", MAKE_CALIB);
    project.write("scripts/compare.py", COMPARE);
    project.write("seed.txt", "1\n");
    project
}

fn json(project: &Project, path: &str) -> Value {
    serde_json::from_str(&project.read(path)).expect("JSON")
}

/// Runs compare.py with the toolchain's Python: the fp32 model against `quantized`.
fn compare(project: &Project, quantized: &str) -> Value {
    compare_with(project, "out/model.onnx", quantized)
}

fn compare_with(project: &Project, reference: &str, quantized: &str) -> Value {
    let stdout = project.python(&["scripts/compare.py", reference, quantized]);
    serde_json::from_str(&stdout).unwrap()
}

#[test]
fn int8_has_qdq_stays_close_and_recalibrates_only_on_new_data() {
    let project = project(
        r#"
[stages.int8]
kind = "quantize"
onnx = "@model"
precision = "int8"
calibration = { data = "@calib", samples = 8, batch_size = 1, method = "entropy" }
high_precision = "fp32"
"#,
    );
    let run = project.build(&[]);
    run.assert_ok();
    assert_eq!(run.ran(), vec!["calib", "int8", "model"]);
    let manifest = json(&project, "build/pipeline/int8.manifest.json");
    assert!(
        manifest["quantize_linear"].as_u64().unwrap() > 0,
        "{manifest}"
    );
    assert!(manifest["dequantize_linear"].as_u64().unwrap() > 0);
    assert_eq!(manifest["calibration_samples"], 8);
    assert_eq!(manifest["versions"]["nvidia-modelopt"], "0.47.0");
    assert_eq!(manifest["check"]["ran"], true);
    let check = compare(&project, "build/pipeline/int8.onnx");
    eprintln!("int8 vs fp32: {check}");
    assert!(check["qdq"].as_u64().unwrap() > 0);
    assert!(check["cosine"].as_f64().unwrap() > 0.99, "{check}");
    assert!(
        check["max_abs_error"].as_f64().unwrap()
            < 0.1 * check["max_abs_reference"].as_f64().unwrap().max(1e-3),
        "{check}"
    );

    // The calibration stage reruns with the same seed (its input's bytes changed) and
    // writes the same data: quantize is not recalibrated.
    project.write("seed.txt", "1 \n");
    let run = project.build(&[]);
    run.assert_ok();
    assert_eq!(run.ran(), vec!["calib"]);
    // New data recalibrates.
    project.write("seed.txt", "2\n");
    let run = project.build(&[]);
    run.assert_ok();
    assert_eq!(run.ran(), vec!["calib", "int8"]);
    assert!(Path::new(&project.path("build/pipeline/int8.onnx")).exists());
}

#[test]
fn fp16_autocast_keeps_io_fp32_and_the_named_ops() {
    let project = project(
        r#"
[stages.fp16]
kind = "quantize"
onnx = "@model"
precision = "fp16"
keep_fp32 = ["Gemm"]
"#,
    );
    let run = project.build(&["--target", "fp16"]);
    run.assert_ok();
    let manifest = json(&project, "build/pipeline/fp16.manifest.json");
    assert!(
        manifest["nodes_by_precision"]["fp16"].as_u64().unwrap() > 0,
        "{manifest}"
    );
    assert!(
        manifest["initializers_by_precision"]["fp16"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert_eq!(
        manifest["kept_fp32"]["op_types"],
        serde_json::json!(["Gemm"])
    );
    assert_eq!(manifest["quantize_linear"], 0);
    let check = compare(&project, "build/pipeline/fp16.onnx");
    eprintln!("fp16 vs fp32: {check}");
    assert_eq!(check["input_type"], 1, "graph input stays float32");
    assert_eq!(check["output_type"], 1, "graph output stays float32");
    assert!(check["cosine"].as_f64().unwrap() > 0.999, "{check}");

    // An unknown op type or node name in keep_fp32 fails with a hint.
    let text = project
        .read("pipeline.toml")
        .replace("[\"Gemm\"]", "[\"Gem\"]");
    project.write("pipeline.toml", &text);
    let run = project.build(&["--target", "fp16"]);
    assert_eq!(run.code, Some(1));
    let error = run.summary()["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stage"] == "fp16")
        .map(crate::common::failure_text)
        .unwrap();
    assert!(error.contains("`Gem`") && error.contains("Gemm"), "{error}");
}

#[test]
fn fp16_without_the_range_check_converts_and_int8_refuses_the_key() {
    let project = project(
        "[stages.fp16]\nkind = \"quantize\"\nonnx = \"@model\"\nprecision = \"fp16\"\nrange_check = false\n",
    );
    project.build(&["--target", "fp16"]).assert_ok();
    let manifest = json(&project, "build/pipeline/fp16.manifest.json");
    assert!(
        manifest["nodes_by_precision"]["fp16"].as_u64().unwrap() > 0,
        "{manifest}"
    );
    let check = compare(&project, "build/pipeline/fp16.onnx");
    assert!(check["cosine"].as_f64().unwrap() > 0.999, "{check}");
    project.write(
        "pipeline.toml",
        &project.read("pipeline.toml").replace(
            "precision = \"fp16\"",
            "precision = \"int8\"\ncalibration = { data = \"@calib\" }",
        ),
    );
    project
        .run(&["build"])
        .assert_error(&["`range_check` is for fp16 and bf16"]);
}

#[test]
fn int8_without_calibration_is_a_spec_error() {
    let project =
        project("[stages.int8]\nkind = \"quantize\"\nonnx = \"@model\"\nprecision = \"int8\"\n");
    project
        .run(&["build"])
        .assert_error(&["int8 needs calibration data", "calibration = {"]);
}

#[test]
fn fp8_quantizes_convs_wide_enough_and_refuses_a_model_with_none() {
    let project = project(
        r#"
[stages.wide]
kind = "command"
run = ["{python}", "{inputs.script}", "{outputs.onnx}", "64"]
inputs = { script = "scripts/make_model.py" }
outputs = { onnx = "out/wide.onnx" }

[stages.fp8]
kind = "quantize"
onnx = "@wide"
precision = "fp8"
calibration = { data = "@calib", samples = 8, method = "max" }

[stages.fp8_small]
kind = "quantize"
onnx = "@model"
precision = "fp8"
calibration = { data = "@calib", samples = 8, method = "max" }
"#,
    );
    let run = project.build(&["--target", "fp8"]);
    run.assert_ok();
    let manifest = json(&project, "build/pipeline/fp8.manifest.json");
    assert!(
        manifest["quantize_linear"].as_u64().unwrap() > 0,
        "{manifest}"
    );
    assert!(
        manifest["initializers_by_precision"]["fp8"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "fp8 zero points: {manifest}"
    );
    assert_eq!(manifest["check"]["ran"], true);
    let check = compare_with(&project, "out/wide.onnx", "build/pipeline/fp8.onnx");
    eprintln!("fp8 vs fp32: {check}");
    assert!(check["cosine"].as_f64().unwrap() > 0.99, "{check}");
    // The 16-channel model has nothing ModelOpt's fp8 quantizes: a clear failure.
    project
        .run(&["build", "--target", "fp8_small"])
        .assert_error(&["no QuantizeLinear/DequantizeLinear nodes", "16 or fewer"]);
    assert!(!project.exists("build/pipeline/fp8_small.onnx"));
}

/// bf16 has no kernels in ONNX Runtime's CPU provider: the quantize stage checks the model's
/// structure instead (and says so), and a report lists it as not run rather than failing.
#[test]
fn bf16_is_checked_structurally_and_reported_as_not_run_on_the_cpu() {
    let project = project(
        r#"
[stages.bf16]
kind = "quantize"
onnx = "@model"
precision = "bf16"

[stages.cmp]
kind = "report"
models = ["@model", "@bf16"]
data = "@calib"
iterations = 5
min_duration = "0s"
"#,
    );
    let run = project.build(&[]);
    run.assert_ok();
    let manifest = json(&project, "build/pipeline/bf16.manifest.json");
    assert_eq!(manifest["precision"], "bf16");
    assert_eq!(manifest["check"]["ran"], false);
    assert_eq!(manifest["check"]["structural"], true);
    assert!(
        manifest["check"]["why"]
            .as_str()
            .unwrap()
            .contains("no bf16 kernel"),
        "{manifest}"
    );
    assert!(
        manifest["initializers_by_precision"]["bf16"]
            .as_u64()
            .unwrap()
            > 0
    );
    let summary = json(&project, "build/pipeline/cmp/summary.json");
    let models = summary["models"].as_array().unwrap();
    assert_eq!(models[0]["status"], "ok");
    assert_eq!(models[1]["status"], "unavailable");
    assert_eq!(models[1]["precision"], "bf16");
    assert!(
        models[1]["note"].as_str().unwrap().contains("no kernel"),
        "{}",
        models[1]
    );
}

/// Issue 22 (11): fp16 of an ONNX with dynamic H and W failed with a traceback from inside
/// AutoCast's range check, which ran the model at 1 x 1 (`pochi convert --fp16`, with or
/// without `--input-size`). Now the check runs at `input_size`, or the stage says what to
/// give; `range_check = false` still skips it.
#[test]
fn fp16_of_a_dynamic_size_model_checks_ranges_at_the_input_size_or_says_what_to_give() {
    let stages = r#"
[stages.dynamic]
kind = "command"
run = ["{python}", "{inputs.script}", "{outputs.onnx}", "16", "dynamic-hw"]
inputs = { script = "scripts/make_model.py" }
outputs = { onnx = "out/dynamic.onnx" }

[stages.fp16]
kind = "quantize"
onnx = "@dynamic"
precision = "fp16"
"#;
    let project = project(stages);
    project.run(&["build", "--target", "fp16"]).assert_error(&[
        "the ONNX input `input` (batch x 3 x h x w) has dynamic sizes",
        "--input-size H W",
        "range_check = false",
    ]);
    project.write(
        "pipeline.toml",
        &project.read("pipeline.toml").replace(
            "precision = \"fp16\"",
            "precision = \"fp16\"\ninput_size = [32, 32]",
        ),
    );
    project.build(&["--target", "fp16"]).assert_ok();
    let manifest = json(&project, "build/pipeline/fp16.manifest.json");
    assert!(
        manifest["nodes_by_precision"]["fp16"].as_u64().unwrap() > 0,
        "{manifest}"
    );
    assert_eq!(manifest["check"]["ran"], true, "{manifest}");
    let check = compare_with(&project, "out/dynamic.onnx", "build/pipeline/fp16.onnx");
    assert!(check["cosine"].as_f64().unwrap() > 0.999, "{check}");

    // The one-shot command passes --input-size to the check, or --no-range-check.
    for extra in [&["--input-size", "32", "32"][..], &["--no-range-check"][..]] {
        let run = project.run(&[&["convert", "out/dynamic.onnx", "--fp16"][..], extra].concat());
        assert!(
            run.stderr.contains("the fp16 ONNX was built and kept"),
            "{extra:?}: {}",
            run.stderr
        );
    }
    project
        .run(&["convert", "out/dynamic.onnx", "--fp16"])
        .assert_error(&["has dynamic sizes", "--no-range-check"]);
}
