//! The export stage end to end, with real torch on the CPU: the built `pochi` in temporary
//! projects, on the managed toolchain (created by pochi itself on the first run, in the
//! per-user cache, so CI installs it through pochi). Heavy: a few minutes on 2 cores.

use std::process::Command;

use crate::common::Project;
use crate::common::summary_stage as stage;
use serde_json::Value;

const RANDOM_INIT: &str = include_str!("../../pipelines/scripts/random_init_checkpoint.py");

/// A project with the random-init script and a pipeline.
fn project(pipeline: &str) -> Project {
    let project = Project::new(pipeline);
    project.write("scripts/random_init_checkpoint.py", RANDOM_INIT);
    project
}

/// A command stage writing a seeded random-init state_dict of `model` with `args`.
fn checkpoint_stage(name: &str, model: &str, args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|a| format!("\"--arg\", \"{a}\"")).collect();
    let args = if args.is_empty() {
        String::new()
    } else {
        format!("{}, ", args.join(", "))
    };
    format!(
        "[stages.{name}]\nkind = \"command\"\n\
         run = [\"{{python}}\", \"{{inputs.script}}\", \"--model\", \"{model}\", {args}\"--out\", \"{{outputs.checkpoint}}\"]\n\
         inputs = {{ script = \"scripts/random_init_checkpoint.py\" }}\n\
         outputs = {{ checkpoint = \"ckpt/{name}.pth\" }}\n\n"
    )
}

fn manifest(project: &Project, path: &str) -> Value {
    serde_json::from_str(&project.read(path)).expect("manifest JSON")
}

/// Runs Python code in the toolchain, in the project directory; returns stdout.
fn python(project: &Project, code: &str) -> String {
    project.python(&["-c", code])
}

#[test]
fn swin_unetr_small_exports_verified_and_reruns_only_when_model_args_change() {
    let export = |dropout: &str| {
        format!(
            "{}[stages.onnx]\nkind = \"export\"\ncheckpoint = \"@weights\"\nmodel = \"monai.networks.nets:SwinUNETR\"\n\
             model_args = {{ in_channels = 1, out_channels = 14, feature_size = 12, dropout_path_rate = {dropout} }}\n\
             input_shape = [1, 64, 64, 64]\nresources = {{ memory = \"2GiB\" }}\n",
            checkpoint_stage(
                "weights",
                "monai.networks.nets:SwinUNETR",
                &["in_channels=1", "out_channels=14", "feature_size=12"]
            )
        )
    };
    let project = project(&export("0.0"));
    let run = project.build(&[]);
    run.assert_ok();
    assert_eq!(run.ran(), vec!["onnx", "weights"]);

    let m = manifest(&project, "build/pipeline/onnx.manifest.json");
    assert_eq!(
        m["inputs"][0]["shape"],
        serde_json::json!(["batch", 1, 64, 64, 64])
    );
    assert_eq!(
        m["outputs"][0]["shape"],
        serde_json::json!(["batch", 14, 64, 64, 64])
    );
    assert_eq!(m["opset"], 17);
    assert_eq!(m["device"], "cpu");
    assert_eq!(m["checkpoint"]["format"], "state_dict");
    assert!(m["parameters"].as_u64().unwrap() > 4_000_000);
    assert_eq!(
        m["onnx_bytes"].as_u64().unwrap(),
        std::fs::metadata(project.path("build/pipeline/onnx.onnx"))
            .unwrap()
            .len()
    );
    assert!(m["peak_rss_bytes"].as_u64().unwrap() > 100 << 20);
    assert!(m["durations"]["export_s"].as_f64().unwrap() > 0.0);
    assert_eq!(
        m["versions"]["torch"].as_str().unwrap().split('+').next(),
        Some("2.15.0")
    );
    let verification = &m["verification"];
    assert_eq!(verification["passed"], true);
    assert!(
        verification["max_abs_diff"].as_f64().unwrap() < 1e-3,
        "{verification}"
    );
    assert!(project.exists("build/pipeline/onnx.reference.npz"));

    // Nothing changed: nothing runs.
    let again = project.build(&[]);
    again.assert_ok();
    assert!(again.ran().is_empty(), "{}", again.stdout);
    assert_eq!(again.stages("skipped"), vec!["onnx", "weights"]);

    // A changed model argument reruns the export, not the checkpoint.
    project.write("pipeline.toml", &export("0.1"));
    let explain = project.run(&["explain", "pipeline.toml", "onnx"]);
    assert!(explain.stdout.contains("model_args"), "{}", explain.stdout);
    let changed = project.build(&[]);
    changed.assert_ok();
    assert_eq!(changed.ran(), vec!["onnx"]);
    assert_eq!(
        manifest(&project, "build/pipeline/onnx.manifest.json")["model_args"]["dropout_path_rate"],
        0.1
    );
}

#[test]
fn resnet18_exports_batch_dynamic_and_loads_in_onnx_runtime() {
    let pipeline = format!(
        "{}[stages.classifier]\nkind = \"export\"\ncheckpoint = \"@weights\"\nmodel = \"torchvision.models:resnet18\"\n\
         input_shape = [3, 224, 224]\noutput = \"models/resnet18.onnx\"\n",
        checkpoint_stage("weights", "torchvision.models:resnet18", &[])
    );
    let project = project(&pipeline);
    project.build(&[]).assert_ok();
    let m = manifest(&project, "models/resnet18.manifest.json");
    assert_eq!(
        m["inputs"][0]["shape"],
        serde_json::json!(["batch", 3, 224, 224])
    );
    assert_eq!(m["outputs"][0]["shape"], serde_json::json!(["batch", 1000]));
    assert_eq!(m["verification"]["passed"], true);

    // The ONNX runs in ONNX Runtime at another batch size and matches the reference.
    let check = python(
        &project,
        "import numpy as np, onnxruntime as ort\n\
         s = ort.InferenceSession('models/resnet18.onnx', providers=['CPUExecutionProvider'])\n\
         ref = np.load('models/resnet18.reference.npz')\n\
         x = np.concatenate([ref['input.input']] * 2)\n\
         y = s.run(None, {'input': x})[0]\n\
         print(y.shape[0], float(np.abs(y[1] - ref['output.output'][0]).max()))\n",
    );
    let mut fields = check.split_whitespace();
    assert_eq!(fields.next(), Some("2"));
    let diff: f64 = fields.next().unwrap().parse().unwrap();
    assert!(
        diff < 1e-3,
        "ONNX Runtime differs from the reference by {diff}"
    );

    // The one-shot command exports the same checkpoint, and a repeat is instant.
    let args = [
        "export-onnx",
        "ckpt/weights.pth",
        "--model",
        "torchvision.models:resnet18",
        "--input-size",
        "64",
        "64",
        "-o",
        "oneshot.onnx",
    ];
    let first = project.run(&args);
    first.assert_ok();
    assert!(
        first.stderr.contains("no NVIDIA GPU found") || first.stderr.contains("GPU 0"),
        "{}",
        first.stderr
    );
    assert!(
        first.stderr.contains("verified with ONNX Runtime"),
        "{}",
        first.stderr
    );
    assert!(
        first.stderr.contains("peak host memory"),
        "{}",
        first.stderr
    );
    assert!(project.exists("oneshot.onnx"));
    let second = project.run(&args);
    second.assert_ok();
    assert!(
        second.stderr.contains("0 ran, 1 up to date"),
        "{}",
        second.stderr
    );
}

#[test]
fn bad_exports_fail_clearly_and_publish_nothing() {
    let resnet = |name: &str, extra: &str| {
        format!(
            "[stages.{name}]\nkind = \"export\"\ncheckpoint = \"@weights\"\ninput_shape = [3, 64, 64]\n{extra}\n"
        )
    };
    let pipeline = format!(
        "{}{}{}{}{}",
        checkpoint_stage("weights", "torchvision.models:resnet18", &[]),
        resnet("wrong_keys", "model = \"torchvision.models:resnet34\""),
        resnet("missing_module", "model = \"no_such_package.nets:Net\""),
        resnet(
            "bad_shape",
            "model = \"torchvision.models:resnet18\"\ninput_shape = [5, 64, 64]"
        )
        .replace("input_shape = [3, 64, 64]\n", ""),
        "[stages.corrupt]\nkind = \"export\"\ncheckpoint = \"corrupt.pth\"\nmodel = \"torchvision.models:resnet18\"\ninput_shape = [3, 64, 64]\n",
    );
    let project = project(&pipeline);
    project.write("corrupt.pth", "this is not a checkpoint\n");
    let run = project.build(&["--keep-going"]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    let summary = run.summary();
    let error = |name: &str| {
        let stage = stage(&summary, name);
        assert_eq!(stage["status"], "failed", "{stage}");
        crate::common::failure_text(stage)
    };
    let wrong_keys = error("wrong_keys");
    assert!(
        wrong_keys.contains("does not match `torchvision.models:resnet34`"),
        "{wrong_keys}"
    );
    assert!(
        wrong_keys.contains("missing in the checkpoint: layer1.2.conv1.weight"),
        "{wrong_keys}"
    );
    let missing = error("missing_module");
    assert!(
        missing.contains("cannot import module `no_such_package.nets`"),
        "{missing}"
    );
    assert!(missing.contains("file.py:Name"), "{missing}");
    let corrupt = error("corrupt");
    assert!(
        corrupt.contains("cannot read the checkpoint `corrupt.pth`"),
        "{corrupt}"
    );
    let shape = error("bad_shape");
    assert!(
        shape.contains("does not accept an input of shape [1, 5, 64, 64]"),
        "{shape}"
    );
    for name in ["wrong_keys", "missing_module", "corrupt", "bad_shape"] {
        for suffix in ["onnx", "reference.npz", "manifest.json"] {
            let path = format!("build/pipeline/{name}.{suffix}");
            assert!(
                !project.exists(&path),
                "{path} was published by a failed export"
            );
        }
    }
    // Each error also tells where the full Python output is.
    assert!(wrong_keys.contains("log: "), "{wrong_keys}");
}

#[test]
fn an_interpreter_without_torch_is_named_with_what_it_lacks() {
    let project = project(
        "[stages.onnx]\nkind = \"export\"\ncheckpoint = \"c.pth\"\nmodel = \"torchvision.models:resnet18\"\ninput_shape = [3, 8, 8]\n",
    );
    project.write("c.pth", "x");
    let cache = tempfile::tempdir().unwrap();
    let cache_dir = cache.path().to_str().unwrap();
    // A bare venv: an interpreter without torch, onnx, onnxruntime or numpy.
    let venv = project.path("bare");
    let status = Command::new("python3")
        .args(["-m", "venv", "--without-pip"])
        .arg(&venv)
        .status()
        .expect("python3 -m venv");
    assert!(status.success());
    let python = venv.join("bin/python");
    let run = project.run_env(
        &["build"],
        &[
            ("POCHI_PYTHON", python.to_str().unwrap()),
            ("POCHI_CACHE_DIR", cache_dir),
        ],
    );
    run.assert_error(&[
        "(POCHI_PYTHON) lacks",
        "`numpy`, `onnx`, `onnxruntime`, `torch`, `torchvision`",
        "-m pip install",
        "torch==2.15.0",
    ]);
    assert!(!project.exists("build/pipeline/onnx.onnx"));
}

#[test]
fn status_never_creates_the_managed_toolchain() {
    let project = project(
        "[stages.onnx]\nkind = \"export\"\ncheckpoint = \"c.pth\"\nmodel = \"m:N\"\ninput_shape = [3, 8, 8]\n",
    );
    project.write("c.pth", "x");
    let cache = tempfile::tempdir().unwrap();
    let env = [("POCHI_CACHE_DIR", cache.path().to_str().unwrap())];
    let status = project.run_env(&["status"], &env);
    assert_eq!(status.code, Some(1), "{}", status.stderr);
    assert!(status.stdout.contains("never built"), "{}", status.stdout);
    let dry = project.run_env(&["build", "--dry-run"], &env);
    assert_eq!(dry.code, Some(0), "{}", dry.stderr);
    let info = project.run_env(&["toolchain", "info"], &env);
    assert!(info.stdout.contains("not created"), "{}", info.stdout);
    let path = project.run_env(&["toolchain", "path"], &env);
    assert_eq!(path.code, Some(1));
    assert!(
        !cache.path().join("v1/toolchains").exists(),
        "inspecting created a toolchain"
    );
}
