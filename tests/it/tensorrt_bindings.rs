//! The engine worker (`src/kinds/engine/script.py`) against the REAL TensorRT Python
//! bindings of three versions (10.0.1, the newest 10.x, 11.4), through the TensorRT DOUBLE
//! (`tests/fixtures/fake_tensorrt`, a test double that checks every attribute, property
//! write and call against the real classes and pybind11 signatures of the version under
//! test and simulates only parsing, building and running): a conformance run of the
//! worker's build and infer modes on each version, and mutated copies of the worker that
//! it must reject with the real module's error. No GPU and no TensorRT library: what the
//! library would do (kernels, layer precisions, timing-cache contents) is not checked here.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::Project;
use crate::common::tensorrt::{FIRST_10, NEWEST, NEWEST_10, VERSIONS, double_dir};
use serde_json::{Value, json};

/// A project with a runnable ONNX (`y = Relu(x)`, x: batch x 3 x 4 x 4), data for it, and
/// the toolchain's interpreter that runs the worker.
struct Bench {
    project: Project,
    python: PathBuf,
}

const MAKE_MODEL: &str = "import numpy as np, onnx\n\
    from onnx import helper, TensorProto\n\
    x = helper.make_tensor_value_info('x', TensorProto.FLOAT, ['batch', 3, 4, 4])\n\
    y = helper.make_tensor_value_info('y', TensorProto.FLOAT, ['batch', 3, 4, 4])\n\
    graph = helper.make_graph([helper.make_node('Relu', ['x'], ['y'])], 'relu', [x], [y])\n\
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)])\n\
    model.ir_version = 8\n\
    onnx.save(model, 'model.onnx')\n\
    np.save('data.npy', np.random.default_rng(0).standard_normal((4, 3, 4, 4)).astype(np.float32))\n";

impl Bench {
    fn new() -> Bench {
        let project = Project::new("");
        project.write("make.py", MAKE_MODEL);
        project.python(&["make.py"]);
        let python = project.toolchain_python();
        Bench { project, python }
    }

    fn path(&self, name: &str) -> String {
        self.project.path(name).to_string_lossy().into_owned()
    }

    /// Runs `worker` with `args` then REQUEST RESULT under the double of `version`: the
    /// answer, and the double's record of calls.
    fn run(&self, worker: &Path, version: &str, run: &WorkerRun) -> (Value, Vec<Value>) {
        let name = format!("{}-{version}", run.name);
        let (request, result, record) = (
            self.path(&format!("{name}.request.json")),
            self.path(&format!("{name}.result.json")),
            self.path(&format!("{name}.record.json")),
        );
        std::fs::write(&request, run.request.to_string()).unwrap();
        let output = Command::new(&self.python)
            .arg("-I")
            .arg(worker)
            .args(run.args)
            .args([&request, &result])
            .envs(run.env.iter().copied())
            .env("POCHI_TEST_TENSORRT_STANDIN", double_dir(version))
            .env("FAKE_TRT_RECORD", &record)
            .current_dir(self.project.dir.path())
            .output()
            .expect("run the engine worker");
        let answer = std::fs::read_to_string(&result).unwrap_or_else(|e| {
            panic!(
                "{name}: no answer ({e}): {}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
        let calls = std::fs::read_to_string(&record)
            .ok()
            .and_then(|text| serde_json::from_str::<Value>(&text).ok())
            .map(|record| record["calls"].as_array().cloned().unwrap_or_default())
            .unwrap_or_default();
        (serde_json::from_str(&answer).unwrap(), calls)
    }
}

/// One run of the worker: its name (for its files), mode arguments, request, environment.
struct WorkerRun<'a> {
    name: &'a str,
    args: &'a [&'a str],
    request: Value,
    env: &'a [(&'a str, &'a str)],
}

/// The value under `key` of a successful answer, else the failure as text.
fn ok(answer: &Value, key: &str) -> Result<Value, String> {
    if answer["ok"] == true {
        return Ok(answer[key].clone());
    }
    Err(format!(
        "{}: {}",
        answer["kind"].as_str().unwrap_or_default(),
        answer["error"].as_str().unwrap_or_default()
    ))
}

fn calls_to<'a>(calls: &'a [Value], name: &str) -> Vec<&'a Value> {
    calls.iter().filter(|c| c["call"] == name).collect()
}

fn ensure(condition: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if condition { Ok(()) } else { Err(what()) }
}

/// A build request for the bench's ONNX; runs of one version share a timing cache.
fn build_request(bench: &Bench, version: &str, name: &str, precision: &str) -> Value {
    json!({
        "protocol": 1,
        "onnx": bench.path("model.onnx"),
        "shapes": {"pattern": "dynamic_batch", "profiles": [
            {"input": "x", "min": [1, 3, 4, 4], "opt": [2, 3, 4, 4], "max": [4, 3, 4, 4]}
        ]},
        "workspace": 1u64 << 30,
        "precision": precision,
        "optimization_level": 3,
        "timing_cache": bench.path(&format!("timing-{version}.cache")),
        "outputs": {
            "engine": bench.path(&format!("{name}-{version}.engine")),
            "manifest": bench.path(&format!("{name}-{version}.manifest.json")),
        },
    })
}

/// What the real bindings of `version` say about the enums the worker's choices rest on.
fn real_facts(bench: &Bench, version: &str) -> Value {
    let script = "import json, tensorrt as t\n\
        flag = t.NetworkDefinitionCreationFlag\n\
        print(json.dumps({'version': t.__version__, 'strongly_typed': int(flag.STRONGLY_TYPED),\n\
        'explicit_batch': hasattr(flag, 'EXPLICIT_BATCH'), 'fp16': hasattr(t.BuilderFlag, 'FP16'),\n\
        'int8': hasattr(t.BuilderFlag, 'INT8')}))\n";
    let output = Command::new(&bench.python)
        .args(["-I", "-c"])
        .arg(format!(
            "import sys; sys.path.insert(0, {:?})\n{script}",
            double_dir(version)
        ))
        .output()
        .expect("run python");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// The `create_network` flags pochi must pass: on 10.x, `1 << STRONGLY_TYPED` (the real
/// value); none on 11, which always builds strongly typed (the flag is deprecated and
/// ignored there).
fn expected_flags(bench: &Bench, version: &str) -> u64 {
    let facts = real_facts(bench, version);
    if version.starts_with("10.") {
        1 << facts["strongly_typed"].as_u64().unwrap()
    } else {
        0
    }
}

/// Builds with `worker` on `version`: the manifest (or the failure) and the calls.
fn build(
    bench: &Bench,
    worker: &Path,
    version: &str,
    (name, precision): (&str, &str),
    env: &[(&str, &str)],
) -> (Result<Value, String>, Vec<Value>) {
    let run = WorkerRun {
        name,
        args: &[],
        request: build_request(bench, version, name, precision),
        env,
    };
    let (answer, calls) = bench.run(worker, version, &run);
    (ok(&answer, "manifest"), calls)
}

/// The worker's build and infer modes on `version`; Err names the first difference.
fn conformance(bench: &Bench, worker: &Path, version: &str) -> Result<(), String> {
    fp32_build(bench, worker, version)?;
    timing_cache(bench, worker, version)?;
    fp16_request(bench, worker, version)?;
    parse_failures(bench, worker, version)?;
    infer(bench, worker, version)
}

fn fp32_build(bench: &Bench, worker: &Path, version: &str) -> Result<(), String> {
    let (manifest, calls) = build(bench, worker, version, ("fp32", "fp32"), &[]);
    let manifest = manifest?;
    let flags = &calls_to(&calls, "create_network")[0]["flags"];
    ensure(*flags == json!(expected_flags(bench, version)), || {
        format!("create_network flags {flags}")
    })?;
    ensure(calls_to(&calls, "set_flag").is_empty(), || {
        "a builder flag on an fp32 build".into()
    })?;
    let pool = &calls_to(&calls, "set_memory_pool_limit")[0];
    ensure(
        pool["pool"] == "WORKSPACE" && pool["pool_size"] == 1u64 << 30,
        || format!("{pool}"),
    )?;
    let shape = &calls_to(&calls, "set_shape")[0];
    ensure(
        shape["input"] == "x" && shape["max"] == json!([4, 3, 4, 4]),
        || format!("{shape}"),
    )?;
    let verbosity = calls.iter().find(|c| c["set"] == "profiling_verbosity");
    ensure(verbosity.is_some_and(|c| c["value"] == "DETAILED"), || {
        "profiling_verbosity is not DETAILED".into()
    })?;
    let builder = &manifest["builder"];
    ensure(
        manifest["tensorrt"] == version
            && builder["strongly_typed"] == true
            && builder["fp16_flag"] == false
            && manifest["layers_by_precision"]["fp32"] == 3,
        || format!("manifest {manifest}"),
    )
}

/// A cache TensorRT accepts is reused; one it refuses (`set_timing_cache` returns False,
/// as for another GPU's) is reported not reused, and the build goes on with a new one.
fn timing_cache(bench: &Bench, worker: &Path, version: &str) -> Result<(), String> {
    let (again, _) = build(bench, worker, version, ("again", "fp32"), &[]);
    let builder = again?["builder"].clone();
    ensure(
        builder["timing_cache_reused"] == true && builder["timing_cache_rejected"] == false,
        || format!("the second build: {builder}"),
    )?;
    let mismatch = [("FAKE_TRT_TIMING_CACHE_MISMATCH", "1")];
    let (refused, calls) = build(bench, worker, version, ("refused", "fp32"), &mismatch);
    let builder = refused?["builder"].clone();
    ensure(
        builder["timing_cache_reused"] == false && builder["timing_cache_rejected"] == true,
        || format!("a refused cache: {builder}"),
    )?;
    let sizes: Vec<&Value> = calls_to(&calls, "create_timing_cache")
        .iter()
        .map(|c| &c["serialized_timing_cache"]["bytes"])
        .collect();
    ensure(sizes.len() == 2 && *sizes[1] == 0, || {
        format!("after a refusal, an empty cache: {sizes:?}")
    })
}

/// fp16 from an fp32 ONNX: the FP16 builder flag on 10.x; refused before building on 11.
fn fp16_request(bench: &Bench, worker: &Path, version: &str) -> Result<(), String> {
    let (manifest, calls) = build(bench, worker, version, ("fp16", "fp16"), &[]);
    if version.starts_with("10.") {
        let manifest = manifest?;
        let flag = calls_to(&calls, "set_flag");
        ensure(flag.len() == 1 && flag[0]["flag"] == "FP16", || {
            format!("set_flag: {flag:?}")
        })?;
        let flags = &calls_to(&calls, "create_network")[0]["flags"];
        ensure(*flags == 0, || {
            format!("weakly typed for the flag: {flags}")
        })?;
        return ensure(manifest["layers_by_precision"]["fp16"] == 3, || {
            format!("{manifest}")
        });
    }
    match manifest {
        Err(error) if error.starts_with("precision: ") && error.contains("strongly typed") => {
            ensure(calls_to(&calls, "Builder").is_empty(), || {
                "TensorRT 11 was asked to build".into()
            })
        }
        other => Err(format!("fp16 from fp32 on TensorRT 11: {other:?}")),
    }
}

/// A parse failure names TensorRT's errors, and says so when there are none.
fn parse_failures(bench: &Bench, worker: &Path, version: &str) -> Result<(), String> {
    let silent = [("FAKE_TRT_PARSE_FAIL_SILENTLY", "1")];
    let (failed, _) = build(bench, worker, version, ("silent", "fp32"), &silent);
    let want = "parse: TensorRT cannot parse the ONNX: the parser reported no error";
    ensure(failed.as_ref().is_err_and(|e| e.starts_with(want)), || {
        format!("a parse failure without errors: {failed:?}")
    })?;
    let named = [("FAKE_TRT_PARSE_ERROR", "Unsupported operator Foo")];
    let (failed, _) = build(bench, worker, version, ("named", "fp32"), &named);
    ensure(
        failed
            .as_ref()
            .is_err_and(|e| e.contains("cannot parse the ONNX: ") && e.ends_with("Foo")),
        || format!("a parse failure with an error: {failed:?}"),
    )
}

/// The engine of `fp32_build` run by the worker's `--infer` (the runtime API).
fn infer(bench: &Bench, worker: &Path, version: &str) -> Result<(), String> {
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(bench.path(&format!("fp32-{version}.manifest.json"))).unwrap(),
    )
    .unwrap();
    let request = json!({
        "protocol": 1,
        "engine": bench.path(&format!("fp32-{version}.engine")),
        "built_for": {"tensorrt": manifest["tensorrt"], "gpu": manifest["gpu"]},
        "data": bench.path("data.npy"),
        "batch": 2, "warmup": 1, "iterations": 2, "min_duration_s": 0.0,
        "outputs": bench.path(&format!("infer-{version}.npz")),
    });
    let run = WorkerRun {
        name: "infer",
        args: &["--infer"],
        request,
        env: &[],
    };
    let (answer, calls) = bench.run(worker, version, &run);
    let run = ok(&answer, "run")?;
    ensure(
        run["tensorrt"] == version && run["outputs"] == json!(["y"]) && run["batch"] == 2,
        || format!("infer: {run}"),
    )?;
    ensure(calls_to(&calls, "execute_async_v3").len() >= 5, || {
        "fewer runs than warm-up, timed and end-to-end".into()
    })
}

fn worker_source() -> String {
    std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/kinds/engine/script.py"),
    )
    .unwrap()
}

/// The facts docs/engine.md states, as the real bindings give them: STRONGLY_TYPED is 1 on
/// 10.x and 0 (deprecated, ignored) on 11.4, which has no FP16, INT8 or EXPLICIT_BATCH.
#[test]
fn the_real_bindings_say_what_the_docs_say() {
    let bench = Bench::new();
    for version in VERSIONS {
        let facts = real_facts(&bench, version);
        let ten = version.starts_with("10.");
        let expected = json!({"version": version, "strongly_typed": u8::from(ten),
            "explicit_batch": ten, "fp16": ten, "int8": ten});
        assert_eq!(facts, expected, "TensorRT {version}");
    }
}

#[test]
fn the_engine_worker_conforms_to_the_real_bindings_of_three_tensorrt_versions() {
    let bench = Bench::new();
    let worker = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/kinds/engine/script.py");
    for version in VERSIONS {
        if let Err(error) = conformance(&bench, &worker, version) {
            panic!("TensorRT {version}: {error}");
        }
    }
}

/// A copy of the worker with one mistake: `from` replaced by `to`; the conformance run on
/// each of `versions` must fail with an error holding every `expected` piece.
struct Mutant {
    name: &'static str,
    from: &'static str,
    to: &'static str,
    versions: &'static [&'static str],
    expected: &'static [&'static str],
}

const MUTANTS: [Mutant; 4] = [
    Mutant {
        name: "fp16-under-11",
        from: "    if use_fp16_flag:\n        config.set_flag(trt.BuilderFlag.FP16)",
        to: "    if use_fp16_flag or major >= 11:\n        config.set_flag(trt.BuilderFlag.FP16)",
        versions: &[NEWEST],
        expected: &["AttributeError", "BuilderFlag", "has no attribute 'FP16'"],
    },
    Mutant {
        name: "max-workspace-size",
        from: "    config.builder_optimization_level = ",
        to: "    config.max_workspace_size = int(request[\"workspace\"])\n    config.builder_optimization_level = ",
        versions: &[FIRST_10, NEWEST_10, NEWEST],
        expected: &[
            "AttributeError",
            "IBuilderConfig",
            "has no attribute 'max_workspace_size'",
        ],
    },
    Mutant {
        name: "verbosity-as-int",
        from: "config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED",
        to: "config.profiling_verbosity = 2",
        versions: &[NEWEST],
        expected: &[
            "TypeError",
            "incompatible function arguments",
            "ProfilingVerbosity",
        ],
    },
    Mutant {
        name: "set-shape-arity",
        from: "tuple(p[\"opt\"]), tuple(p[\"max\"]))",
        to: "tuple(p[\"opt\"]))",
        versions: &[NEWEST_10],
        expected: &["TypeError", "set_shape(): incompatible function arguments"],
    },
];

/// Copies of the worker with one mistake each: the conformance run fails on them with the
/// real module's error.
#[test]
fn mutated_workers_fail_the_conformance_run_as_the_real_bindings_would() {
    let bench = Bench::new();
    let source = worker_source();
    for mutant in &MUTANTS {
        let name = mutant.name;
        assert_eq!(
            source.matches(mutant.from).count(),
            1,
            "{name}: in script.py"
        );
        let path = bench.project.path(&format!("worker-{name}.py"));
        std::fs::write(&path, source.replace(mutant.from, mutant.to)).unwrap();
        for version in mutant.versions {
            let error = conformance(&bench, &path, version)
                .err()
                .unwrap_or_else(|| panic!("{name} passed on TensorRT {version}"));
            for needle in mutant.expected {
                assert!(error.contains(needle), "{name} on {version}: {error}");
            }
        }
    }
}
