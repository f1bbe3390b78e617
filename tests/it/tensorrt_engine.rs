//! The `engine` kind and `pochi convert` on a machine without TensorRT or a GPU: shape
//! patterns and their errors, availability (unavailable vs. strict), and the TensorRT
//! worker driven against a recording STAND-IN (`tests/fixtures/fake_tensorrt`, a test
//! double of the `tensorrt` Python package, never the real one) that answers from the real
//! Python bindings of TensorRT 11.4 (or 10.16 where a test says so; `tensorrt_bindings`
//! checks the worker on all three versions).

use crate::common::Project;
use crate::common::summary_stage as stage;
use crate::common::tensorrt::{NEWEST, NEWEST_10, double_dir};
use pochi::onnx_info::{Dim, encode};
use serde_json::Value;
use std::path::PathBuf;

fn standin_dir() -> String {
    crate::common::tensorrt_standin_dir()
}

fn dyn_batch() -> Vec<Dim> {
    vec![
        Dim::Dynamic("batch".into()),
        Dim::Fixed(3),
        Dim::Fixed(32),
        Dim::Fixed(32),
    ]
}

/// A project with `model.onnx` (graph inputs only) and a pipeline.
fn project(pipeline: &str, dims: Vec<Dim>) -> Project {
    let project = Project::new(pipeline);
    std::fs::write(
        project.path("model.onnx"),
        encode::model(&[("input", dims)]),
    )
    .unwrap();
    project
}

/// The stand-in's record of TensorRT calls.
fn calls(project: &Project) -> Vec<Value> {
    let record: Value = serde_json::from_str(&project.read("trt-record.json")).unwrap();
    record["calls"].as_array().unwrap().clone()
}

fn call<'a>(calls: &'a [Value], name: &str) -> Vec<&'a Value> {
    calls.iter().filter(|c| c["call"] == name).collect()
}

/// Builds with the stand-in on the worker's path, recording to trt-record.json.
fn build_with_standin(
    project: &Project,
    args: &[&str],
    extra: &[(&str, &str)],
) -> crate::common::Run {
    let record = project
        .path("trt-record.json")
        .to_string_lossy()
        .into_owned();
    let standin = standin_dir();
    let mut env = vec![
        ("POCHI_TEST_TENSORRT_STANDIN", standin.as_str()),
        ("FAKE_TRT_RECORD", record.as_str()),
    ];
    env.extend_from_slice(extra);
    let mut all = vec!["build", "--json"];
    all.extend_from_slice(args);
    project.run_env(&all, &env)
}

const WITH_NEIGHBOURS: &str = r#"
[stages.prep]
kind = "command"
run = ["sh", "-c", "echo prep > {outputs.out}"]
outputs = { out = "out/prep.txt" }

[stages.engine]
kind = "engine"
onnx = "model.onnx"

[stages.after]
kind = "command"
run = ["sh", "-c", "cp {inputs.engine} {outputs.out}"]
inputs = { engine = "@engine" }
outputs = { out = "out/after.bin" }
"#;

#[test]
fn without_tensorrt_the_engine_is_unavailable_and_everything_else_builds() {
    let project = project(WITH_NEIGHBOURS, dyn_batch());
    let run = project.build(&[]);
    run.assert_ok();
    assert_eq!(run.ran(), vec!["prep"]);
    assert_eq!(run.stages("unavailable"), vec!["after", "engine"]);
    let summary = run.summary();
    assert_eq!(summary["ok"], true);
    let engine = stage(&summary, "engine");
    let reason = engine["reason"].as_str().unwrap();
    assert!(
        reason.contains("TensorRT is not available on this machine"),
        "{reason}"
    );
    assert!(reason.contains("no GPU"), "{reason}");
    assert!(
        stage(&summary, "after")["reason"]
            .as_str()
            .unwrap()
            .contains("`engine`")
    );
    assert!(
        run.stderr
            .contains("unavailable engine: cannot run on this machine"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("2 unavailable on this machine"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("1 of 3 stages are out of date"),
        "{}",
        run.stderr
    );
    // A second build does the same, and the rest stays up to date.
    let again = project.build(&[]);
    again.assert_ok();
    assert!(again.ran().is_empty());
    // `status` agrees: nothing that can run here is pending, so the CI check passes, and
    // the engine and what needs it are named as unavailable.
    let status = project.run(&["status"]);
    assert_eq!(status.code, Some(0), "{}\n{}", status.stdout, status.stderr);
    for name in ["engine", "after"] {
        let line = status.stdout.lines().find(|l| l.starts_with(name)).unwrap();
        assert!(line.contains("unavailable here"), "{line}");
    }
    assert!(
        status.stderr.contains("(2 cannot run on this machine)"),
        "{}",
        status.stderr
    );
    let dry = project.run(&["build", "--dry-run"]);
    assert!(
        dry.stderr.contains("0 of 3 stages would run"),
        "{}",
        dry.stderr
    );
}

#[test]
fn strict_builds_and_engine_targets_fail_at_once_naming_what_is_missing() {
    let project = project(WITH_NEIGHBOURS, dyn_batch());
    for args in [
        &["--require-engines"][..],
        &["--require-all"],
        &["--target", "engine"],
    ] {
        let mut all = vec!["build"];
        all.extend_from_slice(args);
        let run = project.run(&all);
        run.assert_error(&[
            "stage `engine` cannot run on this machine",
            "TensorRT is not available on this machine",
            "no GPU",
        ]);
        assert!(!project.exists("out/prep.txt"), "nothing runs: {args:?}");
    }
    // Targeting only the CPU stage is fine.
    project.build(&["--target", "prep"]).assert_ok();
}

#[test]
fn standin_build_gets_the_profile_workspace_flags_and_writes_a_manifest() {
    let pipeline = r#"
[resources]
gpus = [0]

[stages.engine]
kind = "engine"
onnx = "model.onnx"
batch = { min = 1, opt = 4, max = 8 }
workspace = "2GiB"
optimization_level = 4
"#;
    let project = project(pipeline, dyn_batch());
    let run = build_with_standin(&project, &[], &[]);
    run.assert_ok();
    assert_eq!(run.ran(), vec!["engine"]);
    let calls = calls(&project);
    let shapes = call(&calls, "set_shape");
    assert_eq!(shapes.len(), 1);
    assert_eq!(shapes[0]["input"], "input");
    assert_eq!(shapes[0]["min"], serde_json::json!([1, 3, 32, 32]));
    assert_eq!(shapes[0]["opt"], serde_json::json!([4, 3, 32, 32]));
    assert_eq!(shapes[0]["max"], serde_json::json!([8, 3, 32, 32]));
    assert_eq!(
        call(&calls, "set_memory_pool_limit")[0]["pool_size"],
        2u64 << 30
    );
    // TensorRT 11: strongly typed always (its STRONGLY_TYPED flag is 0, deprecated and
    // ignored), so no network flag and no precision flag.
    assert_eq!(call(&calls, "create_network")[0]["flags"], 0);
    let built = call(&calls, "build_serialized_network")[0];
    assert_eq!(built["config_flags"], serde_json::json!([]));
    assert_eq!(built["optimization_level"], 4);
    assert_eq!(built["profiling_verbosity"], "DETAILED");
    assert_eq!(call(&calls, "set_timing_cache").len(), 1);
    let manifest: Value =
        serde_json::from_str(&project.read("build/pipeline/engine.manifest.json")).unwrap();
    assert_eq!(manifest["tensorrt"], NEWEST);
    assert_eq!(manifest["builder"]["strongly_typed"], true);
    assert_eq!(manifest["gpu"]["name"], "Fake GPU (stand-in)");
    assert_eq!(manifest["gpu"]["compute_capability"], "9.0");
    assert_eq!(manifest["precision"], "fp32");
    assert_eq!(manifest["layers_by_precision"]["fp32"], 3);
    assert_eq!(manifest["shapes"]["pattern"], "dynamic_batch");
    assert_eq!(manifest["builder"]["workspace"], 2u64 << 30);
    assert!(project.exists("build/pipeline/engine.engine"));
    // `pochi status` sees the same fingerprint (TensorRT facts included): up to date.
    let standin = standin_dir();
    let status = project.run_env(
        &["status"],
        &[("POCHI_TEST_TENSORRT_STANDIN", standin.as_str())],
    );
    assert_eq!(status.code, Some(0), "{}", status.stderr);
    // Up to date with the same TensorRT; another TensorRT version rebuilds it.
    assert!(
        build_with_standin(&project, &[], &[])
            .assert_ok()
            .ran()
            .is_empty()
    );
    let ten = double_dir(NEWEST_10);
    let other = build_with_standin(&project, &[], &[("POCHI_TEST_TENSORRT_STANDIN", &ten)]);
    other.assert_ok();
    assert_eq!(other.ran(), vec!["engine"]);
}

#[test]
fn standin_static_onnx_has_no_profile_and_tensorrt_10_gets_the_fp16_flag() {
    let pipeline = r#"
[resources]
gpus = [0]

[stages.engine]
kind = "engine"
onnx = "model.onnx"
precision = "fp16"
"#;
    let dims = vec![Dim::Fixed(1), Dim::Fixed(3), Dim::Fixed(16), Dim::Fixed(16)];
    let project = project(pipeline, dims);
    let ten = double_dir(NEWEST_10);
    let run = build_with_standin(&project, &[], &[("POCHI_TEST_TENSORRT_STANDIN", &ten)]);
    run.assert_ok();
    let calls = calls(&project);
    assert!(
        call(&calls, "set_shape").is_empty(),
        "a static ONNX gets no profile"
    );
    assert!(call(&calls, "add_optimization_profile").is_empty());
    assert_eq!(
        call(&calls, "create_network")[0]["flags"],
        0,
        "weakly typed on 10.x"
    );
    assert_eq!(call(&calls, "set_flag")[0]["flag"], "FP16");
    let manifest: Value =
        serde_json::from_str(&project.read("build/pipeline/engine.manifest.json")).unwrap();
    assert_eq!(manifest["layers_by_precision"]["fp16"], 3);
    assert_eq!(manifest["builder"]["fp16_flag"], true);
    assert_eq!(manifest["shapes"]["pattern"], "static");
}

#[test]
fn standin_precision_mismatch_fails_and_publishes_nothing() {
    let pipeline = r#"
[resources]
gpus = [0]

[stages.engine]
kind = "engine"
onnx = "model.onnx"
precision = "fp16"
"#;
    let project = project(pipeline, dyn_batch());
    // TensorRT 10 with the FP16 flag, but the stand-in reports fp32 layers.
    let ten = double_dir(NEWEST_10);
    let run = build_with_standin(
        &project,
        &[],
        &[
            ("POCHI_TEST_TENSORRT_STANDIN", &ten),
            ("FAKE_TRT_LAYER_TYPE", "Float"),
        ],
    );
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    let summary = run.summary();
    let error = crate::common::failure_text(stage(&summary, "engine"));
    assert!(
        error.contains("asked to be fp16 but TensorRT built no fp16 layer"),
        "{error}"
    );
    assert!(error.contains("fp32: 3"), "{error}");
    assert!(!project.exists("build/pipeline/engine.engine"));
    // TensorRT 11 refuses an fp32 ONNX for an fp16 engine before building.
    let run = build_with_standin(&project, &[], &[]);
    assert_eq!(run.code, Some(1));
    let error = crate::common::failure_text(stage(&run.summary(), "engine"));
    assert!(error.contains("strongly typed"), "{error}");
    assert!(error.contains("quantize"), "{error}");
}

#[test]
fn dynamic_spatial_onnx_needs_input_size_before_any_tensorrt_call() {
    let pipeline = r#"
[resources]
gpus = [0]

[stages.engine]
kind = "engine"
onnx = "model.onnx"
"#;
    let dims = vec![
        Dim::Dynamic("batch".into()),
        Dim::Fixed(1),
        Dim::Dynamic("d".into()),
        Dim::Dynamic("h".into()),
        Dim::Dynamic("w".into()),
    ];
    let project = project(pipeline, dims.clone());
    let run = build_with_standin(&project, &[], &[]);
    assert_eq!(run.code, Some(1));
    let error = crate::common::failure_text(stage(&run.summary(), "engine"));
    assert!(
        error.contains(
            "the ONNX has dynamic shapes; give `input_size` with the resolution you will use"
        ),
        "{error}"
    );
    assert!(
        !project.exists("trt-record.json"),
        "no TensorRT call was made"
    );

    let fixed = project.read("pipeline.toml") + "input_size = [64, 64, 64]\n";
    project.write("pipeline.toml", &fixed);
    build_with_standin(&project, &[], &[]).assert_ok();
    let calls = calls(&project);
    assert_eq!(
        call(&calls, "set_shape")[0]["opt"],
        serde_json::json!([1, 1, 64, 64, 64])
    );
}

#[test]
fn bad_engine_keys_are_spec_errors() {
    let project = project(
        "[stages.engine]\nkind = \"engine\"\nonnx = \"model.onnx\"\nbatch = { min = 4, opt = 2, max = 8 }\n",
        dyn_batch(),
    );
    project.run(&["build"]).assert_error(&["min <= opt <= max"]);
    project.write(
        "pipeline.toml",
        "[stages.engine]\nkind = \"engine\"\nonnx = \"model.onnx\"\nprecision = \"fp61\"\n",
    );
    project
        .run(&["build"])
        .assert_error(&["unknown precision `fp61`", "fp16"]);
}

#[test]
fn convert_fails_clearly_without_tensorrt() {
    let project = project("", dyn_batch());
    let run = project.run(&["convert", "model.onnx"]);
    run.assert_error(&[
        "no engine was written",
        "TensorRT is not available on this machine",
        "no GPU",
    ]);
    assert!(!project.exists("model.engine"));
    // Issue 9: only flags the user can act on; `pochi convert` has no --target.
    for flag in ["--require-all", "--target", "--keep-going"] {
        assert!(!run.stderr.contains(flag), "{flag}: {}", run.stderr);
    }
    let run = project.run(&["convert", "missing.onnx"]);
    run.assert_error(&["does not exist"]);
    let run = project.run(&["convert", "model.onnx", "--int8"]);
    assert_eq!(
        run.code,
        Some(2),
        "clap: --int8 requires --calib-data: {}",
        run.stderr
    );
}

#[test]
fn convert_with_the_standin_writes_pochitrains_engine_name() {
    let project = project("", dyn_batch());
    let record = project
        .path("trt-record.json")
        .to_string_lossy()
        .into_owned();
    let standin = standin_dir();
    let run = project.run_env(
        &["convert", "model.onnx", "--workspace-size", "1048576"],
        &[
            ("POCHI_TEST_TENSORRT_STANDIN", standin.as_str()),
            ("FAKE_TRT_RECORD", record.as_str()),
            ("POCHI_GPUS", "0"),
        ],
    );
    run.assert_ok();
    assert!(project.exists("model.engine"), "{}", run.stderr);
    let calls = calls(&project);
    assert_eq!(
        call(&calls, "set_memory_pool_limit")[0]["pool_size"],
        1048576
    );
    assert_eq!(
        call(&calls, "set_shape")[0]["max"],
        serde_json::json!([1, 3, 32, 32])
    );
}

/// The start of a `make.py`: a tiny seeded conv net as `net.onnx` (batch-dynamic, 3 x 16 x 16).
const MAKE_NET: &str = "import os, numpy as np, torch\n\
    torch.manual_seed(0)\n\
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1)).eval()\n\
    torch.onnx.export(m, torch.randn(1, 3, 16, 16), 'net.onnx', opset_version=17, input_names=['input'], output_names=['output'], dynamic_axes={'input': {0: 'batch'}}, dynamo=False)\n";

/// Real ModelOpt int8 on the CPU, then the stand-in engine: the whole one-shot.
#[test]
fn convert_int8_with_npy_calibration_quantizes_then_builds_with_the_standin() {
    let project = Project::new("");
    project.write(
        "make.py",
        &format!(
            "{MAKE_NET}np.save('calib.npy', np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32))\n"
        ),
    );
    project.python(&["make.py"]);
    let (standin, record) = (standin_dir(), record_path(&project));
    let env = [
        ("POCHI_TEST_TENSORRT_STANDIN", standin.as_str()),
        ("FAKE_TRT_RECORD", record.as_str()),
        ("POCHI_GPUS", "0"),
    ];
    let args = [
        "convert",
        "net.onnx",
        "--int8",
        "--calib-data",
        "calib.npy",
        "--calib-samples",
        "4",
    ];
    let run = project.run_env(&args, &env);
    run.assert_ok();
    assert!(project.exists("net_int8.engine"), "{}", run.stderr);
    let calls = calls(&project);
    // The quantized ONNX carries Q/DQ: strongly typed (always, on TensorRT 11), no flag.
    assert_eq!(call(&calls, "create_network")[0]["flags"], 0);
    assert!(call(&calls, "set_flag").is_empty());
    assert!(
        call(&calls, "parse_from_file")[0]["model"]
            .as_str()
            .unwrap()
            .ends_with("model_int8.onnx")
    );
    // The profile came from pochi's own reader of the real (ModelOpt-written) ONNX.
    assert_eq!(
        call(&calls, "set_shape")[0]["max"],
        serde_json::json!([1, 3, 16, 16])
    );
    // A second convert is cached: nothing reruns, the engine is written again.
    std::fs::remove_file(project.path("net_int8.engine")).unwrap();
    let again = project.run_env(&args, &env);
    again.assert_ok();
    assert!(again.stderr.contains("0 ran"), "{}", again.stderr);
    assert!(project.exists("net_int8.engine"));
}

/// `convert --int8 --calib-data DIR` on pochitrain's class-per-folder images: a dataset
/// stage resized to the ONNX input feeds real ModelOpt calibration, then the stand-in
/// builds the engine.
#[test]
fn convert_int8_with_an_image_folder_calibrates_on_the_images() {
    let project = Project::new("");
    project.write(
        "make.py",
        &format!(
            "{MAKE_NET}from PIL import Image\n\
         rng = np.random.default_rng(0)\n\
         for c in ('cat', 'dog'):\n\
         \x20   os.makedirs(f'val/{{c}}')\n\
         \x20   for i in range(3):\n\
         \x20       Image.fromarray(rng.integers(0, 255, (24, 20, 3), dtype=np.uint8)).save(f'val/{{c}}/{{i}}.png')\n"
        ),
    );
    project.python(&["make.py"]);
    let (standin, record) = (standin_dir(), record_path(&project));
    let env = [
        ("POCHI_TEST_TENSORRT_STANDIN", standin.as_str()),
        ("FAKE_TRT_RECORD", record.as_str()),
        ("POCHI_GPUS", "0"),
    ];
    let run = project.run_env(
        &["convert", "net.onnx", "--int8", "--calib-data", "val"],
        &env,
    );
    run.assert_ok();
    assert!(project.exists("net_int8.engine"), "{}", run.stderr);
    // The calibration set: the 6 images at the ONNX input's 16 x 16, channels first.
    let manifest = find_dataset_manifest(&project.path(".pochi/oneshot"))
        .expect("a dataset manifest in the one-shot pipeline");
    assert_eq!(manifest["count"], 6, "{manifest}");
    assert_eq!(manifest["shape"], serde_json::json!([6, 3, 16, 16]));
    assert_eq!(manifest["classes"], serde_json::json!(["cat", "dog"]));
    // The engine was built from the Q/DQ model.
    let calls = calls(&project);
    assert!(
        call(&calls, "parse_from_file")[0]["model"]
            .as_str()
            .unwrap()
            .ends_with("model_int8.onnx")
    );
}

/// The path after "built and kept: " in an error message.
fn kept_onnx(stderr: &str) -> std::path::PathBuf {
    let start = stderr
        .find("built and kept: ")
        .unwrap_or_else(|| panic!("no kept ONNX named:\n{stderr}"))
        + "built and kept: ".len();
    let rest = &stderr[start..];
    let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
    std::path::PathBuf::from(&rest[..end])
}

/// Without TensorRT (no stand-in) and without a GPU, `convert --fp16` and `--int8` still
/// build the quantized ONNX on the CPU and keep it, then exit 1 naming it and what is
/// missing. The int8 one calibrates on images through a `--transform` file.
#[test]
fn convert_without_tensorrt_keeps_the_quantized_onnx() {
    let project = Project::new("");
    project.write(
        "make.py",
        &format!(
            "{MAKE_NET}from PIL import Image\n\
         rng = np.random.default_rng(0)\n\
         os.makedirs('val/a')\n\
         for i in range(3):\n\
         \x20   Image.fromarray(rng.integers(0, 255, (30, 22, 3), dtype=np.uint8)).save(f'val/a/{{i}}.png')\n\
         import onnx, sys\n"
        ),
    );
    project.write(
        "count.py",
        "import onnx, sys\nm = onnx.load(sys.argv[1])\nprint(sum(n.op_type == sys.argv[2] for n in m.graph.node), m.graph.input[0].type.tensor_type.elem_type)\n",
    );
    project.write(
        "val.toml",
        "transform = [{ resize = { size = 16, interpolation = \"bicubic\" } }, { center_crop = 16 }]\n",
    );
    project.python(&["make.py"]);
    let run = project.run(&["convert", "net.onnx", "--fp16"]);
    run.assert_error(&[
        "no engine was written",
        "TensorRT is not available",
        "no GPU",
    ]);
    let fp16 = kept_onnx(&run.stderr);
    assert!(
        fp16.ends_with("model_fp16.onnx") && fp16.is_file(),
        "{}",
        run.stderr
    );
    assert!(!project.exists("net_fp16.engine"));
    let args = ["convert", "net.onnx", "--int8", "--calib-data", "val"];
    let run = project.run(&[&args[..], &["--transform", "val.toml"]].concat());
    run.assert_error(&[
        "no engine was written",
        "TensorRT is not available",
        "transform = [{ resize = { size = 16, interpolation = \"bicubic\" } }, { center_crop = 16 }] (from val.toml)",
    ]);
    let int8 = kept_onnx(&run.stderr);
    assert!(int8.ends_with("model_int8.onnx"), "{}", run.stderr);
    // The kept ONNX is ModelOpt's: it carries Q/DQ nodes.
    let counted = project.python(&["count.py", int8.to_str().unwrap(), "QuantizeLinear"]);
    let quantize_nodes: usize = counted.split_whitespace().next().unwrap().parse().unwrap();
    assert!(
        quantize_nodes > 0,
        "no QuantizeLinear in {}",
        int8.display()
    );
}

/// `--transform` inline replaces the default calibration transform; the dataset stage
/// runs it as given (with its implicit to_float) and the output names it.
#[test]
fn convert_int8_takes_the_calibration_transform_inline() {
    let project = Project::new("");
    project.write(
        "make.py",
        &format!(
            "{MAKE_NET}from PIL import Image\n\
         rng = np.random.default_rng(1)\n\
         os.makedirs('val/a')\n\
         for i in range(2):\n\
         \x20   Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(f'val/a/{{i}}.png')\n"
        ),
    );
    project.python(&["make.py"]);
    let (standin, record) = (standin_dir(), record_path(&project));
    let env = [
        ("POCHI_TEST_TENSORRT_STANDIN", standin.as_str()),
        ("FAKE_TRT_RECORD", record.as_str()),
        ("POCHI_GPUS", "0"),
    ];
    let transform =
        "[{ resize = 18 }, { center_crop = 16 }, { normalize = { mean = [0.5], std = [0.25] } }]";
    let run = project.run_env(
        &[
            "convert",
            "net.onnx",
            "--int8",
            "--calib-data",
            "val",
            "--transform",
            transform,
        ],
        &env,
    );
    run.assert_ok();
    assert!(
        run.stderr.contains(&format!(
            "calibration images: transform = {transform} (from --transform)"
        )),
        "{}",
        run.stderr
    );
    assert!(project.exists("net_int8.engine"));
    let manifest = find_dataset_manifest(&project.path(".pochi/oneshot")).unwrap();
    assert_eq!(manifest["shape"], serde_json::json!([2, 3, 16, 16]));
    assert_eq!(
        manifest["transform"],
        serde_json::json!([
            { "resize": { "size": 18, "interpolation": "bilinear", "backend": "pil" } },
            { "center_crop": [16, 16] },
            { "to_float": true },
            { "normalize": { "mean": [0.5], "std": [0.25] } }
        ])
    );
    // Without --transform the default is named as such.
    let run = project.run_env(
        &["convert", "net.onnx", "--int8", "--calib-data", "val"],
        &env,
    );
    run.assert_ok();
    assert!(
        run.stderr.contains("transform = [{ resize = 18 }, { center_crop = 16 }, { normalize = { mean = [0.485, 0.456, 0.406], std = [0.229, 0.224, 0.225] } }] (the default"),
        "{}",
        run.stderr
    );
    let run = project.run(&[
        "convert",
        "net.onnx",
        "--int8",
        "--calib-data",
        "val",
        "--transform",
        "{ resize",
    ]);
    run.assert_error(&["--transform is neither a TOML file nor a TOML list"]);
}

/// The first `*_manifest.json` (a dataset stage's) under `dir`.
fn find_dataset_manifest(dir: &std::path::Path) -> Option<Value> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if let Some(found) = find_dataset_manifest(&path) {
                return Some(found);
            }
        } else if path.to_string_lossy().ends_with("_manifest.json") {
            return serde_json::from_str(&std::fs::read_to_string(&path).ok()?).ok();
        }
    }
    None
}

/// Where the stand-in records its TensorRT calls.
fn record_path(project: &Project) -> String {
    project
        .path("trt-record.json")
        .to_string_lossy()
        .into_owned()
}

/// Issue 9: the shape decision comes before availability. Without TensorRT (and without
/// a GPU), a dynamic-spatial ONNX with no `input_size` is reported with the seed's
/// message by `status`, `build --target`, `build -n` and `graph`, not hidden behind
/// "TensorRT is not available".
#[test]
fn shape_errors_come_before_unavailability_everywhere() {
    let pipeline = "[stages.engine]\nkind = \"engine\"\nonnx = \"model.onnx\"\n";
    let dims = vec![
        Dim::Dynamic("batch".into()),
        Dim::Fixed(1),
        Dim::Dynamic("d".into()),
        Dim::Dynamic("h".into()),
        Dim::Dynamic("w".into()),
    ];
    let project = project(pipeline, dims);
    let status = project.run(&["status"]);
    assert_eq!(status.code, Some(1), "{}", status.stdout);
    assert!(status.stdout.contains(DYNAMIC), "{}", status.stdout);
    assert!(
        !status.stdout.contains("TensorRT is not available"),
        "{}",
        status.stdout
    );
    for args in [
        &["build", "--target", "engine"][..],
        &["build"][..],
        &["build", "-n"][..],
    ] {
        let run = project.run(args);
        assert_eq!(run.code, Some(1), "{args:?}: {}", run.stderr);
        let all = format!("{}{}", run.stdout, run.stderr);
        assert!(all.contains(DYNAMIC), "{args:?}: {all}");
        assert!(
            !all.contains("TensorRT is not available"),
            "{args:?}: {all}"
        );
    }
    for format in ["json", "text"] {
        let graph = project.run(&["graph", "--format", format]);
        graph.assert_ok();
        assert!(graph.stdout.contains(DYNAMIC), "{format}: {}", graph.stdout);
    }
    // Fixed by giving `input_size`: the stage is then merely unavailable here.
    project.write(
        "pipeline.toml",
        &format!("{pipeline}input_size = [64, 64, 64]\n"),
    );
    let status = project.run(&["status"]);
    assert!(
        status.stdout.contains("TensorRT is not available"),
        "{}",
        status.stdout
    );
}

const DYNAMIC: &str =
    "the ONNX has dynamic shapes; give `input_size` with the resolution you will use";

/// Issue 9: a stage's key does not depend on which command ran first. The engine's key
/// holds what the (stand-in) TensorRT probe found; whether `status` and `explain` or
/// `build` come first, the recorded key is the same and the stage is up to date after.
#[test]
fn a_stages_key_is_the_same_whatever_order_commands_run_in() {
    let orders: [&[&str]; 3] = [
        &["build"],
        &["status", "explain", "build"],
        &["explain", "build", "status"],
    ];
    let mut fingerprints = Vec::new();
    for order in orders {
        let project = project(
            "[resources]\ngpus = [0]\n\n[stages.engine]\nkind = \"engine\"\nonnx = \"model.onnx\"\n",
            dyn_batch(),
        );
        let record = record_path(&project);
        let env = [
            ("POCHI_TEST_TENSORRT_STANDIN", standin_dir()),
            ("FAKE_TRT_RECORD", record),
        ];
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        for command in order {
            let args: Vec<&str> = match *command {
                "explain" => vec!["explain", "engine"],
                other => vec![other],
            };
            let run = project.run_env(&args, &env);
            if *command == "build" {
                run.assert_ok();
            }
        }
        let status = project.run_env(&["status"], &env);
        assert_eq!(status.code, Some(0), "{order:?}: {}", status.stdout);
        let explain = project.run_env(&["explain", "engine"], &env);
        assert!(
            explain.stdout.contains("up to date"),
            "{order:?}: {}",
            explain.stdout
        );
        let log = project.read(".pochi/v1/pipeline/log.jsonl");
        let built: Value = log
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .find(|entry| entry["stage"] == "engine" && entry.get("fingerprint").is_some())
            .unwrap_or_else(|| panic!("no record in {log}"));
        assert!(
            built["key"]["params"]["tensorrt"]["version"].is_string(),
            "the key holds the TensorRT the probe found: {built}"
        );
        fingerprints.push(built["fingerprint"].clone());
    }
    assert!(
        fingerprints.windows(2).all(|w| w[0] == w[1]),
        "{fingerprints:?}"
    );
}

/// Issue 23: a timing cache that TensorRT refuses (`set_timing_cache` returns False, as
/// for another GPU's) is not reported reused; the build goes on and replaces it.
#[test]
fn a_timing_cache_tensorrt_refuses_is_not_reported_reused() {
    let pipeline =
        "[resources]\ngpus = [0]\n\n[stages.engine]\nkind = \"engine\"\nonnx = \"model.onnx\"\n";
    let project = project(pipeline, dyn_batch());
    // The timing cache is per GPU model (in the user's cache): a model of this test's own.
    let gpu = format!("Timing cache test GPU {}", std::process::id());
    let manifest = |extra: &[(&str, &str)]| {
        let mut env = vec![("FAKE_TRT_GPU_NAME", gpu.as_str())];
        env.extend_from_slice(extra);
        build_with_standin(&project, &[], &env).assert_ok();
        let text = project.read("build/pipeline/engine.manifest.json");
        serde_json::from_str::<Value>(&text).unwrap()["builder"].clone()
    };
    let kept_before = timing_caches();
    let first = manifest(&[]);
    assert_eq!(first["timing_cache_reused"], false, "{first}");
    // The script sees a copy in the stage's scratch directory, named relative to the
    // project (the request is an input of the stage's Action); the user's cache keeps it.
    let staged = first["timing_cache"].as_str().unwrap();
    assert!(
        staged.starts_with(".pochi/v1/pipeline/tmp/engine/.scratch/"),
        "{first}"
    );
    let added: Vec<PathBuf> = timing_caches()
        .into_iter()
        .filter(|file| !kept_before.contains(file))
        .collect();
    // This GPU's cache is new (other tests' builds may add their GPU's meanwhile).
    assert!(
        !added.is_empty(),
        "the user's cache keeps this GPU's timing cache"
    );
    let level = |n: u32| format!("{pipeline}optimization_level = {n}\n");
    project.write("pipeline.toml", &level(4));
    let second = manifest(&[]);
    assert_eq!(second["timing_cache_reused"], true, "{second}");
    assert_eq!(second["timing_cache_rejected"], false, "{second}");
    project.write("pipeline.toml", &level(5));
    let refused = manifest(&[("FAKE_TRT_TIMING_CACHE_MISMATCH", "1")]);
    assert_eq!(refused["timing_cache_reused"], false, "{refused}");
    assert_eq!(refused["timing_cache_rejected"], true, "{refused}");
    let calls = calls(&project);
    let sets: Vec<&Value> = call(&calls, "set_timing_cache")
        .iter()
        .map(|c| &c["ignore_mismatch"])
        .collect();
    assert_eq!(sets, [false, false], "refused, then an empty cache");
    for file in added {
        let _ = std::fs::remove_file(file);
    }
}

/// The TensorRT timing caches in the user's pochi cache (where `CacheDir::from_env` puts
/// it: `POCHI_CACHE_DIR`, else `$XDG_CACHE_HOME/pochi`, else `~/.cache/pochi`).
fn timing_caches() -> Vec<PathBuf> {
    let set = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let root = set("POCHI_CACHE_DIR")
        .or_else(|| set("XDG_CACHE_HOME").map(|d| d.join("pochi")))
        .or_else(|| set("HOME").map(|d| d.join(".cache/pochi")))
        .expect("a cache directory");
    std::fs::read_dir(root.join("v1/tensorrt-timing"))
        .map(|list| list.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// Issue 23: when TensorRT's parser fails without an error, the message says so (it was
/// "TensorRT cannot parse the ONNX: " and nothing more).
#[test]
fn a_parse_failure_without_errors_says_so() {
    let pipeline =
        "[resources]\ngpus = [0]\n\n[stages.engine]\nkind = \"engine\"\nonnx = \"model.onnx\"\n";
    let project = project(pipeline, dyn_batch());
    let run = build_with_standin(&project, &[], &[("FAKE_TRT_PARSE_FAIL_SILENTLY", "1")]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    let error = crate::common::failure_text(stage(&run.summary(), "engine"));
    assert!(
        error.contains("TensorRT cannot parse the ONNX: the parser reported no error"),
        "{error}"
    );
    let run = build_with_standin(
        &project,
        &[],
        &[("FAKE_TRT_PARSE_ERROR", "No importer for Foo")],
    );
    let error = crate::common::failure_text(stage(&run.summary(), "engine"));
    assert!(error.contains("No importer for Foo"), "{error}");
    assert!(!project.exists("build/pipeline/engine.engine"));
}
