//! Bad pipelines: each gets a clear `error:` pointing at file:line:col with a hint, exit
//! status 1, never a panic, and nothing runs.

use crate::common::Project;

/// Builds `pipeline` and asserts the error names each needle.
#[track_caller]
fn rejects(pipeline: &str, needles: &[&str]) {
    let project = Project::new(pipeline);
    project.run(&["build"]).assert_error(needles);
    // The same error reaches every command that reads the pipeline.
    project.run(&["status"]).assert_error(needles);
    assert!(
        !project.exists(".pochi/v1/pipeline/log.jsonl"),
        "nothing ran"
    );
}

#[test]
fn toml_syntax_error() {
    rejects(
        "[stages.a\nkind = 1\n",
        &["pipeline.toml:1:10", "expected `]`"],
    );
}

#[test]
fn unknown_key_with_a_suggestion() {
    rejects(
        "[stages.a]\nkind = \"command\"\nrn = [\"true\"]\n",
        &[
            "unknown key `rn` in stage `a`",
            "pipeline.toml:3:1",
            "did you mean `run`?",
        ],
    );
    rejects(
        "[pipline]\nname = \"x\"\n",
        &[
            "unknown key `pipline` at the top level",
            "did you mean `pipeline`?",
        ],
    );
    rejects(
        "[resources]\ngpu = [0]\n",
        &["unknown key `gpu` in [resources]", "did you mean `gpus`?"],
    );
}

#[test]
fn unknown_stage_kind_with_a_suggestion() {
    rejects(
        "[stages.a]\nkind = \"comand\"\n",
        &[
            "unknown stage kind `comand`",
            "pipeline.toml:2:8",
            "did you mean `command`?",
        ],
    );
}

#[test]
fn a_stage_without_a_kind() {
    rejects(
        "[stages.a]\nrun = [\"true\"]\n",
        &["stage `a` has no `kind`", "pipeline.toml:1:9"],
    );
}

#[test]
fn a_cycle_is_named() {
    rejects(
        r#"
[stages.a]
kind = "command"
run = ["cp", "{inputs.x}", "{outputs.o}"]
inputs = { x = "@c" }
outputs = { o = "a.txt" }

[stages.b]
kind = "command"
run = ["cp", "{inputs.x}", "{outputs.o}"]
inputs = { x = "@a" }
outputs = { o = "b.txt" }

[stages.c]
kind = "command"
run = ["true"]
needs = ["b"]
outputs = { o = "c.txt" }
"#,
        &["the stages form a cycle: a -> b -> c -> a"],
    );
}

#[test]
fn unknown_references_with_suggestions() {
    let pipeline = r#"
[stages.prep]
kind = "command"
run = ["true", "{outputs.o}"]
outputs = { o = "p.txt" }

[stages.use]
kind = "command"
run = ["cp", "{inputs.x}", "{outputs.o}"]
inputs = { x = "@prepp" }
outputs = { o = "u.txt" }
"#;
    rejects(
        pipeline,
        &[
            "unknown stage `prepp`",
            "pipeline.toml:10:16",
            "did you mean `prep`?",
        ],
    );
    rejects(
        &pipeline.replace("@prepp", "@prep.out"),
        &["stage `prep` has no output `out`", "its outputs are: o"],
    );
    rejects(
        &pipeline.replace("\"@prepp\" }", "\"@prep\" }\nneeds = [\"prop\"]"),
        &["unknown stage `prop`", "did you mean `prep`?"],
    );
}

#[test]
fn unknown_placeholders_with_suggestions() {
    rejects(
        "[stages.a]\nkind = \"command\"\nrun = [\"cp\", \"{inputs.src}\", \"{outputs.ot}\"]\ninputs = { src = \"a.txt\" }\noutputs = { out = \"b.txt\" }\n",
        &[
            "`{outputs.ot}` names no declared output",
            "did you mean `{outputs.out}`?",
        ],
    );
    rejects(
        "[stages.a]\nkind = \"command\"\nrun = [\"echo\", \"{input.src}\"]\n",
        &["unknown placeholder `{input.src}`", "inputs"],
    );
}

#[test]
fn two_stages_declaring_the_same_output() {
    rejects(
        "[stages.a]\nkind = \"command\"\nrun = [\"true\"]\noutputs = { o = \"out/x.txt\" }\n\n[stages.b]\nkind = \"command\"\nrun = [\"true\"]\noutputs = { o = \"out/./x.txt\" }\n",
        &[
            "stages `a` and `b` both declare the output `out/x.txt`",
            "also here",
        ],
    );
}

#[test]
fn nested_outputs() {
    rejects(
        "[stages.a]\nkind = \"command\"\nrun = [\"true\"]\noutputs = { o = \"out\" }\n\n[stages.b]\nkind = \"command\"\nrun = [\"true\"]\noutputs = { o = \"out/x.txt\" }\n",
        &["overlaps output"],
    );
}

#[test]
fn an_output_outside_the_project() {
    rejects(
        "[stages.a]\nkind = \"command\"\nrun = [\"true\"]\noutputs = { o = \"../elsewhere.txt\" }\n",
        &["is outside the project", "pipeline.toml:4:17"],
    );
    rejects(
        "[stages.a]\nkind = \"command\"\nrun = [\"true\"]\noutputs = { o = \"/tmp/x.txt\" }\n",
        &["is outside the project"],
    );
}

#[test]
fn an_output_overlapping_an_input() {
    let project = Project::new(
        "[stages.a]\nkind = \"command\"\nrun = [\"true\"]\ninputs = { src = \"data\" }\noutputs = { o = \"data/derived.txt\" }\n",
    );
    project.write("data/x.txt", "x");
    project.run(&["build"]).assert_error(&[
        "output `data/derived.txt` overlaps input `data` of stage `a`",
        "\"@a\"",
    ]);
}

#[test]
fn a_missing_input_file() {
    rejects(
        "[stages.a]\nkind = \"command\"\nrun = [\"cat\", \"{inputs.src}\"]\ninputs = { src = \"data/missing.txt\" }\n",
        &[
            "input `src` of stage `a` does not exist: data/missing.txt",
            "pipeline.toml:4:18",
        ],
    );
}

#[test]
fn invalid_device_and_resource_values() {
    rejects(
        "[stages.a]\nkind = \"command\"\ndevice = \"gpu\"\nrun = [\"true\"]\n",
        &["invalid device `gpu`", "cuda:N"],
    );
    rejects(
        "[stages.a]\nkind = \"command\"\ndevice = \"cuda:x\"\nrun = [\"true\"]\n",
        &["invalid device `cuda:x`"],
    );
    rejects(
        "[stages.a]\nkind = \"command\"\nresources = { memory = \"lots\" }\nrun = [\"true\"]\n",
        &["`lots` is not a size", "pipeline.toml:3:24"],
    );
    rejects(
        "[stages.a]\nkind = \"command\"\nresources = { cpu = 0 }\nrun = [\"true\"]\n",
        &["at least 1 cpu slot"],
    );
    rejects(
        "[stages.a]\nkind = \"command\"\nresources = { gpu = 1 }\nrun = [\"true\"]\n",
        &["unknown key `gpu`"],
    );
    rejects("[resources]\nmemory = -5\n", &["a size cannot be negative"]);
    rejects("[resources]\ngpus = \"all\"\n", &["invalid type"]);
}

#[test]
fn a_run_list_that_is_empty_or_not_strings() {
    rejects(
        "[stages.a]\nkind = \"command\"\nrun = []\n",
        &["`run` is empty", "pipeline.toml:3:7"],
    );
    rejects(
        "[stages.a]\nkind = \"command\"\nrun = [\"echo\", 3]\n",
        &["expected a string", "pipeline.toml:3:16"],
    );
    rejects(
        "[stages.a]\nkind = \"command\"\nrun = \"echo hi\"\n",
        &["invalid type", "pipeline.toml:3:7"],
    );
}

#[test]
fn invalid_stage_names() {
    rejects(
        "[stages.Prep]\nkind = \"command\"\nrun = [\"true\"]\n",
        &["stage name `Prep` is not valid"],
    );
}

#[test]
fn a_missing_pipeline_file() {
    let project = Project::new("");
    project
        .run(&["build", "nowhere.toml"])
        .assert_error(&["cannot read pipeline file `nowhere.toml`"]);
}
