//! Unit tests of the `export` kind: its keys, defaults, errors, request and failures.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::keys::parse;
use super::*;
use crate::kinds::{StageError, StageKind, Tool};
use crate::pipeline::parse_api::Parser;
use crate::pipeline::{SourceFile, SpanError};

fn parse_stage(table: &str) -> Result<Box<dyn StageKind>, SpanError> {
    let text = format!("[stages.onnx]\nkind = \"export\"\n{table}");
    let src = SourceFile::new("pipeline.toml".into(), text.clone());
    let root = toml::de::DeTable::parse(&text).unwrap();
    let stage = root
        .get_ref()
        .get("stages")
        .unwrap()
        .get_ref()
        .as_table()
        .unwrap()
        .get("onnx")
        .unwrap()
        .clone();
    let dir = Path::new("/project");
    let parser = Parser {
        src: &src,
        dir,
        build_dir: Path::new("build/p"),
        stage: "onnx",
        kinds: crate::kinds::KINDS,
    };
    parse(&parser, &stage)
}

fn export(table: &str) -> Value {
    parse_stage(table)
        .unwrap()
        .params(&crate::pipeline::kind::sample_facts("/py"))
}

fn error(table: &str) -> String {
    let error = parse_stage(table).unwrap_err();
    let help = miette::Diagnostic::help(&error)
        .map(|h| h.to_string())
        .unwrap_or_default();
    format!("{error} | {help}")
}

const BASE: &str = "checkpoint = \"ckpt.pth\"\nmodel = \"monai.networks.nets:SwinUNETR\"\ninput_shape = [1, 96, 96, 96]\n";

#[test]
fn defaults_follow_the_pipeline_format() {
    let params = export(BASE);
    assert_eq!(params["opset"], 17);
    assert_eq!(params["dynamic_axes"], json!({ "0": "batch" }));
    assert_eq!(params["exporter"], "legacy");
    assert_eq!(params["verify"], json!({ "rtol": 1e-3, "atol": 1e-5 }));
    assert_eq!(params["seed"], 0);
    assert_eq!(params["external_data"], "auto");
    assert_eq!(params["worker"], SCRIPT.hash());
    let kind = parse_stage(BASE).unwrap();
    let outputs: Vec<(String, PathBuf)> = kind
        .outputs()
        .iter()
        .map(|o| (o.key.clone(), o.path.clone()))
        .collect();
    assert_eq!(
        outputs,
        vec![
            ("onnx".into(), "build/p/onnx.onnx".into()),
            ("reference".into(), "build/p/onnx.reference.npz".into()),
            ("manifest".into(), "build/p/onnx.manifest.json".into()),
        ]
    );
    let requirements = kind.requirements();
    assert_eq!(requirements.tool, Tool::Python);
    assert_eq!(requirements.default_device, crate::pipeline::Device::Cpu);
    assert!(
        requirements.python_modules.contains(&"einops"),
        "SwinUNETR needs einops"
    );
}

#[test]
fn every_key_is_read() {
    let params = export(
        "checkpoint = \"@train\"\nmodel = \"nets/model.py:Net\"\nmodel_args = { width = 2, act = \"relu\" }\n\
         input_shape = [3, 224, 224]\ndynamic = [\"batch\", \"spatial\"]\nopset = 18\ninput_names = [\"x\"]\n\
         output_names = [\"logits\"]\nexporter = \"dynamo\"\nverify = { atol = 1e-4 }\nseed = 7\nexternal_data = true\noutput = \"out/net.onnx\"\n",
    );
    assert_eq!(
        params["dynamic_axes"],
        json!({ "0": "batch", "2": "height", "3": "width" })
    );
    assert_eq!(params["model_args"], json!({ "act": "relu", "width": 2 }));
    assert_eq!(params["verify"], json!({ "rtol": 1e-3, "atol": 1e-4 }));
    assert_eq!(params["exporter"], "dynamo");
    assert_eq!(params["seed"], 7);
    let kind = parse_stage(
        "checkpoint = \"@train\"\nmodel = \"nets/model.py:Net\"\ninput_shape = [3, 8, 8]\nexternal_data = true\noutput = \"out/net.onnx\"\n",
    )
    .unwrap();
    let inputs: Vec<&str> = kind.inputs().iter().map(|i| i.key.as_str()).collect();
    assert_eq!(inputs, vec!["checkpoint", "model_file"]);
    let outputs: Vec<PathBuf> = kind.outputs().iter().map(|o| o.path.clone()).collect();
    assert_eq!(
        outputs,
        vec![
            PathBuf::from("out/net.onnx"),
            "out/net.reference.npz".into(),
            "out/net.manifest.json".into(),
            "out/net.onnx.data".into()
        ]
    );
}

#[test]
fn static_and_named_axes() {
    assert_eq!(
        export(&format!("{BASE}dynamic = []\n"))["dynamic_axes"],
        json!({})
    );
    assert_eq!(
        export(&format!("{BASE}dynamic = [\"batch\", \"depth\"]\n"))["dynamic_axes"],
        json!({ "0": "batch", "2": "depth" })
    );
    assert!(error(&format!("{BASE}dynamic = [\"hieght\"]\n")).contains("did you mean `height`?"));
    assert!(error(&format!("{BASE}dynamic = [\"batch\", \"batch\"]\n")).contains("twice"));
    assert!(
        error("checkpoint = \"c\"\ninput_shape = [3, 224, 224]\ndynamic = [\"depth\"]\n")
            .contains("height, width")
    );
}

#[test]
fn invalid_values_are_refused_with_a_hint() {
    assert!(error("checkpoint = \"c\"\ninput_shape = []\n").contains("input_shape has 0 axes"));
    assert!(error("checkpoint = \"c\"\ninput_shape = [1, 0, 96]\n").contains("dimension of 0"));
    assert!(error("checkpoint = \"c\"\ninput_shape = [1, -1]\n").contains("dimension of -1"));
    assert!(error(&format!("{BASE}exporter = \"dynamic\"\n")).contains("did you mean `dynamo`?"));
    assert!(error(&format!("{BASE}opset = 3\n")).contains("opset 3"));
    assert!(error(&format!("{BASE}verify = {{ rtol = -1.0 }}\n")).contains("not negative"));
    assert!(
        error(&format!("{BASE}external_data = \"sometimes\"\n"))
            .contains("true, false or \"auto\"")
    );
    assert!(error(&format!("{BASE}input_names = [\"a\", \"b\"]\n")).contains("one input tensor"));
    assert!(
        error("checkpoint = \"c\"\nmodel = \"SwinUNETR\"\ninput_shape = [1]\n")
            .contains("no `:Name`")
    );
    assert!(
        error("checkpoint = \"c\"\nmodel = \"monai nets:X\"\ninput_shape = [1]\n")
            .contains("not a module path")
    );
    assert!(
        error("checkpoint = \"c\"\ninput_shape = [1]\noutput = \"../elsewhere.onnx\"\n")
            .contains("outside the project")
    );
}

#[test]
fn verify_false_skips_verification() {
    assert_eq!(
        export(&format!("{BASE}verify = false\n"))["verify"],
        Value::Null
    );
}

#[test]
fn the_request_names_the_temporary_paths() {
    let dir = tempfile::tempdir().unwrap();
    let kind =
        parse_stage("checkpoint = \"ckpt.pth\"\nmodel = \"m.py:Net\"\ninput_shape = [3, 8, 8]\n")
            .unwrap();
    let mut context = InvocationContext::sample(&dir.path().to_string_lossy(), "/py");
    context.inputs = BTreeMap::from([
        ("checkpoint".to_string(), PathBuf::from("ckpt.pth")),
        ("model_file".to_string(), PathBuf::from("m.py")),
    ]);
    context.outputs = kind
        .outputs()
        .iter()
        .map(|o| {
            (
                o.key.clone(),
                PathBuf::from(".pochi/tmp")
                    .join(&o.key)
                    .join(o.path.file_name().unwrap()),
            )
        })
        .collect();
    let action = kind.action(&context).unwrap();
    assert_eq!(action.argv[..2], ["/py", "-I"]);
    assert!(action.argv[2].ends_with("export.py"));
    let request: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join(&action.argv[3])).unwrap()).unwrap();
    assert_eq!(request["model"], "m.py:Net");
    assert_eq!(request["outputs"]["onnx"], ".pochi/tmp/onnx/onnx.onnx");
    assert_eq!(
        PathBuf::from(&action.argv[4]),
        answer_file(&context),
        "the answer goes to the run's scratch directory"
    );
    assert!(action.inputs.contains(&PathBuf::from("ckpt.pth")));
}

#[test]
fn failures_read_the_workers_answer() {
    let dir = tempfile::tempdir().unwrap();
    let kind = parse_stage(BASE).unwrap();
    let mut context = InvocationContext::sample(&dir.path().to_string_lossy(), "/py");
    context.scratch = dir.path().to_path_buf();
    // Killed with no answer: out of memory, with the peak from the progress file.
    std::fs::write(
        progress_file(&context),
        r#"{"phase": "the ONNX export", "peak_rss_bytes": 7516192768}"#,
    )
    .unwrap();
    let error = kind.explain_failure(
        &context,
        "signal 9 (killed; out of memory?)",
        StageError::new("`/py` failed").with_log(".pochi/log"),
    );
    assert!(
        error
            .message
            .contains("during the ONNX export after a peak of 7.00 GiB"),
        "{error:?}"
    );
    let hint = error.hint.clone().unwrap_or_default();
    assert!(
        hint.contains("device = \"cpu\"") && hint.contains("resources = { memory"),
        "{error:?}"
    );
    assert_eq!(error.log, Some(PathBuf::from(".pochi/log")));
    // An answer: its error and hint.
    std::fs::write(answer_file(&context), r#"{"ok": false, "kind": "state_dict", "error": "missing: a.weight", "hint": "check model_args", "traceback": "T"}"#).unwrap();
    let error = kind.explain_failure(&context, "exit status 1", StageError::new("x"));
    assert_eq!(error.message, "missing: a.weight");
    assert_eq!(error.hint.as_deref(), Some("check model_args"));
    assert_eq!(
        kind.verify(&context).unwrap_err().message,
        "missing: a.weight"
    );
    std::fs::write(answer_file(&context), r#"{"ok": true}"#).unwrap();
    assert!(kind.verify(&context).is_ok());
}
