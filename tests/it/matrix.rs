//! Parametrized stages through the binary: a `matrix` expands into one stage per
//! combination with predictable names, typed values, paired references, list references
//! to every variant, `--target`, `status`, `explain` and `graph` over variants, and
//! incremental builds (a new value builds only the new variants).

use crate::common::Project;

/// src -> quant (per precision) -> engine (per precision and batch, paired with its quant)
/// -> report (needs every engine variant).
const PIPELINE: &str = r#"
[stages.src]
kind = "command"
run = ["sh", "-c", "echo base > {outputs.out}"]
outputs = { out = "build/src.txt" }

[stages.quant]
kind = "command"
matrix = { precision = ["fp16", "int8"] }
run = ["sh", "-c", "echo {matrix.precision} $PRECISION > {outputs.out}; cat {inputs.i} >> {outputs.out}"]
inputs = { i = "@src" }
outputs = { out = "build/quant/{matrix.precision}.txt" }
env = { PRECISION = "{matrix.precision}" }

[stages.engine]
kind = "command"
matrix = { precision = ["fp16", "int8"], batch = [1, 8] }
run = ["sh", "-c", "echo batch {matrix.batch} > {outputs.out}; cat {inputs.onnx} >> {outputs.out}"]
inputs = { onnx = "@quant" }
outputs = { out = "build/engine/{matrix.precision}-{matrix.batch}.txt" }
resources = { cpu = "{matrix.batch}" }

[stages.report]
kind = "command"
run = ["sh", "-c", "cat build/engine/*.txt > {outputs.out}"]
outputs = { out = "build/report.txt" }
needs = ["engine"]
"#;

const ENGINES: [&str; 4] = [
    "engine-fp16-b1",
    "engine-fp16-b8",
    "engine-int8-b1",
    "engine-int8-b8",
];

#[test]
fn a_matrix_builds_one_stage_per_combination_with_its_values() {
    let project = Project::new(PIPELINE);
    let run = project.build(&[]);
    run.assert_ok();
    let mut expected: Vec<String> = ENGINES.iter().map(|s| s.to_string()).collect();
    expected.extend(["quant-fp16", "quant-int8", "report", "src"].map(String::from));
    assert_eq!(run.ran(), expected);
    // `{matrix.KEY}` in run, env and output paths; the int8 engine read the int8 quant.
    assert_eq!(project.read("build/quant/int8.txt"), "int8 int8\nbase\n");
    assert_eq!(
        project.read("build/engine/int8-8.txt"),
        "batch 8\nint8 int8\nbase\n"
    );
    assert_eq!(
        project.read("build/engine/fp16-1.txt"),
        "batch 1\nfp16 fp16\nbase\n"
    );
    // The report needs every variant, so it ran after all four.
    assert_eq!(project.read("build/report.txt").matches("batch").count(), 4);
    project.build(&[]).assert_ok();
    assert!(
        project.build(&[]).ran().is_empty(),
        "a second build runs nothing"
    );
}

#[test]
fn a_whole_placeholder_takes_the_value_type() {
    // `resources.cpu` is an integer: "{matrix.batch}" must reach it as one (a string
    // there is an error), while in `run` and `env` it stays text.
    let project = Project::new(PIPELINE);
    let status = project.run(&["status", "--json"]);
    let value: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    let stages = value["stages"].as_array().unwrap();
    let engine = stages
        .iter()
        .find(|s| s["stage"] == "engine-int8-b8")
        .unwrap();
    assert_eq!(engine["matrix_of"], "engine");
    assert_eq!(
        engine["matrix"],
        serde_json::json!({ "precision": "int8", "batch": 8 })
    );
    let src = stages.iter().find(|s| s["stage"] == "src").unwrap();
    assert!(src.get("matrix_of").is_none() && src.get("matrix").is_none());
    assert_eq!(stages.len(), 8);
    let quoted = PIPELINE.replace("batch = [1, 8]", "batch = [\"1\", \"8\"]");
    Project::new(&quoted).run(&["status"]).assert_error(&[
        "invalid type: string \"1\", expected u32",
        "(in variant `engine-fp16-1`, from the matrix",
        "pipeline.toml:21:21",
        "also here",
    ]);
}

#[test]
fn targets_select_every_variant_or_one() {
    let project = Project::new(PIPELINE);
    let run = project.build(&["--target", "engine"]);
    run.assert_ok();
    let mut expected: Vec<String> = ENGINES.iter().map(|s| s.to_string()).collect();
    expected.extend(["quant-fp16", "quant-int8", "src"].map(String::from));
    assert_eq!(run.ran(), expected);

    let project = Project::new(PIPELINE);
    let run = project.build(&["--target", "engine-int8-b1"]);
    run.assert_ok();
    assert_eq!(run.ran(), ["engine-int8-b1", "quant-int8", "src"]);
    project
        .run(&["build", "--target", "engine-int8-b2"])
        .assert_error(&["unknown target `engine-int8-b2`", "did you mean"]);
}

#[test]
fn status_explain_and_graph_know_variants() {
    let project = Project::new(PIPELINE);
    project.build(&["--target", "engine-fp16-b1"]).assert_ok();
    let status = project.run(&["status"]);
    for name in ENGINES {
        assert!(status.stdout.contains(name), "{}", status.stdout);
    }
    let explain = project.run(&["explain", "engine-int8-b8"]);
    explain.assert_ok();
    assert!(
        explain
            .stdout
            .starts_with("engine-int8-b8 would run (waits on upstream)"),
        "{}",
        explain.stdout
    );
    // The matrix stage's name explains each variant.
    let all = project.run(&["explain", "engine"]);
    all.assert_ok();
    let heads: Vec<&str> = all.stdout.lines().filter(|l| !l.starts_with(' ')).collect();
    assert_eq!(heads.len(), 4, "{}", all.stdout);
    assert!(
        heads[0].starts_with("engine-fp16-b1 is up to date"),
        "{}",
        all.stdout
    );

    let text = project.run(&["graph"]).stdout;
    assert!(
        text.contains("engine-int8-b8")
            && text.contains("variant of engine: batch = 8, precision = \"int8\""),
        "{text}"
    );
    let dot = project.run(&["graph", "--format", "dot"]).stdout;
    assert!(
        dot.contains("subgraph \"cluster_engine\"")
            && dot.contains("\"quant-int8\" -> \"engine-int8-b8\";"),
        "{dot}"
    );
    let mermaid = project.run(&["graph", "--format", "mermaid"]).stdout;
    assert!(
        mermaid.contains("subgraph m_s_engine[\"engine (matrix)\"]"),
        "{mermaid}"
    );
    let html = project.run(&["graph", "--format", "html"]).stdout;
    assert!(
        html.contains("engine-int8-b8 (engine: batch = 8, precision = &quot;int8&quot;)"),
        "{html}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&project.run(&["graph", "--format", "json"]).stdout).unwrap();
    let stages = json["stages"].as_array().unwrap();
    let engine = stages
        .iter()
        .find(|s| s["name"] == "engine-int8-b8")
        .unwrap();
    assert_eq!(engine["matrix_of"], "engine");
    assert_eq!(engine["matrix"]["batch"], 8);
    assert_eq!(engine["deps"], serde_json::json!(["quant-int8"]));
    let report = stages.iter().find(|s| s["name"] == "report").unwrap();
    assert_eq!(report["deps"], serde_json::json!(ENGINES));
}

#[test]
fn a_new_value_builds_only_the_new_variants() {
    let project = Project::new(PIPELINE);
    project.build(&[]).assert_ok();
    let before = project.read(".pochi/v1/pipeline/log.jsonl");
    let wider = PIPELINE.replace("[\"fp16\", \"int8\"]", "[\"fp16\", \"int8\", \"fp8\"]");
    project.write("pipeline.toml", &wider);
    let run = project.build(&[]);
    run.assert_ok();
    // The existing variants keep their names and keys; the report needs every engine, so
    // it reruns with the two new ones.
    assert_eq!(
        run.ran(),
        ["engine-fp8-b1", "engine-fp8-b8", "quant-fp8", "report"]
    );
    assert_eq!(run.stages("skipped").len(), 7);
    assert!(
        project
            .read(".pochi/v1/pipeline/log.jsonl")
            .starts_with(&before)
    );
    // Values listed in another order name the same variants: nothing runs.
    let reordered = wider.replace(
        "[\"fp16\", \"int8\", \"fp8\"]",
        "[\"fp8\", \"int8\", \"fp16\"]",
    );
    project.write("pipeline.toml", &reordered);
    assert!(project.build(&[]).ran().is_empty());
    // Dropping a value drops its variants; the others stay built. The report's inputs are
    // those of the first build again: it is restored from the output cache, not run.
    project.write("pipeline.toml", PIPELINE);
    let run = project.build(&[]);
    assert!(run.ran().is_empty(), "{:?}", run.ran());
    assert_eq!(run.stages("restored"), ["report"]);
    assert_eq!(run.stages("skipped").len(), 7);
}

/// Validates every TOML file in the project directory against `pochi schema` with the
/// Python `jsonschema` library (a peer implementation of JSON Schema), printing one line
/// per file: `NAME ok` or `NAME invalid: MESSAGE`.
const VALIDATE: &str = r#"
import json, sys, tomllib, pathlib
sys.path.insert(0, sys.argv[1])
import jsonschema
schema = json.loads(pathlib.Path("schema.json").read_text())
validator = jsonschema.Draft202012Validator(schema)
for path in sorted(pathlib.Path(".").glob("*.toml")):
    errors = sorted(validator.iter_errors(tomllib.loads(path.read_text())), key=str)
    print(path.name, "ok" if not errors else "invalid: " + errors[0].message)
"#;

#[test]
fn the_schema_describes_matrices_and_accepts_the_examples() {
    let project = Project::new(PIPELINE);
    let schema = project.run(&["schema"]);
    schema.assert_ok();
    project.write("schema.json", &schema.stdout);
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
    // Every example pipeline (`pipelines/*.toml`).
    let mut example_names = Vec::new();
    for entry in std::fs::read_dir(&examples).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".toml") {
            project.write(
                &name,
                &std::fs::read_to_string(examples.join(&name)).unwrap(),
            );
            example_names.push(name);
        }
    }
    assert!(example_names.iter().any(|n| n == "resnet18.toml"));
    // Typed placeholders in an integer, a table and a list, and two that are not valid.
    project.write(
        "typed.toml",
        "[stages.e]\nkind = \"engine\"\nmatrix = { b = [1, 8], s = [96] }\nonnx = \"m.onnx\"\nbatch = \"{matrix.b}\"\ninput_size = [\"{matrix.s}\", 96, 96]\nworkspace = \"1GiB\"\n",
    );
    project.write(
        "empty_list.toml",
        "[stages.e]\nkind = \"command\"\nmatrix = { b = [] }\nrun = [\"true\"]\n",
    );
    project.write(
        "bad_key.toml",
        "[stages.e]\nkind = \"command\"\nmatrix = { \"b-c\" = [1] }\nrun = [\"true\"]\n",
    );
    project.write(
        "not_a_placeholder.toml",
        "[stages.e]\nkind = \"engine\"\nonnx = \"m.onnx\"\nbatch = \"{matrix}\"\n",
    );
    let peer = project.jsonschema_dir();
    project.write("validate.py", VALIDATE);
    let report = project.python(&["validate.py", peer.to_str().unwrap()]);
    let lines: Vec<&str> = report.lines().collect();
    assert_eq!(lines.len(), example_names.len() + 5, "{report}");
    let oks = example_names.iter().map(String::as_str);
    for ok in oks.chain(["pipeline.toml", "typed.toml"]) {
        assert!(lines.contains(&format!("{ok} ok").as_str()), "{report}");
    }
    for bad in ["bad_key.toml", "empty_list.toml", "not_a_placeholder.toml"] {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&format!("{bad} invalid"))),
            "{report}"
        );
    }
    // pochi agrees: it reads the typed one and refuses the others.
    project.write("m.onnx", "not read by `graph`");
    project.run(&["graph", "typed.toml"]).assert_ok();
    for bad in ["bad_key.toml", "empty_list.toml", "not_a_placeholder.toml"] {
        project.run(&["graph", bad]).assert_error(&[bad]);
    }
}
