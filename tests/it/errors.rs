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
fn invalid_executor_gpu_and_platform_values() {
    rejects(
        "[stages.a]\nkind = \"command\"\nexecutor = \"cloud\"\nrun = [\"true\"]\n",
        &[
            "unknown executor `cloud`",
            "pipeline.toml:3:12",
            "\"remote\"",
        ],
    );
    rejects(
        "[stages.a]\nkind = \"command\"\ngpu = \"a100\"\nrun = [\"true\"]\n",
        &[
            "`gpu` names the GPU model of a `cuda` stage",
            "pipeline.toml:3:7",
        ],
    );
    rejects(
        "[stages.a]\nkind = \"command\"\ndevice = \"cuda\"\nplatform = { gpu = \"x\" }\nrun = [\"true\"]\n",
        &[
            "platform property `gpu` is set by pochi",
            "pipeline.toml:4:12",
        ],
    );
    rejects(
        "[stages.a]\nkind = \"command\"\nplatform = { pool = 3 }\nrun = [\"true\"]\n",
        &["invalid type"],
    );
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

/// A matrix stage `q` (per precision) and `body` appended as a second stage.
fn with_matrix(matrix: &str, body: &str) -> String {
    format!(
        "[stages.q]\nkind = \"command\"\nmatrix = {matrix}\nrun = [\"true\"]\noutputs = {{ out = \"out/{{matrix.p}}.txt\" }}\n\n{body}"
    )
}

#[test]
fn a_matrix_that_is_empty_or_has_an_empty_list() {
    rejects(
        &with_matrix("{}", ""),
        &["`matrix` is empty", "pipeline.toml:3:10", "no keys"],
    );
    rejects(
        &with_matrix("{ p = [] }", ""),
        &[
            "`matrix.p` is an empty list",
            "pipeline.toml:3:16",
            "would make no stages at all",
        ],
    );
    rejects(
        &with_matrix("{ p = \"fp16\" }", ""),
        &["`matrix.p` must be a list of values", "write p = [...]"],
    );
}

#[test]
fn a_matrix_key_that_is_not_an_identifier() {
    rejects(
        &with_matrix("{ p = [\"a\"], \"batch-size\" = [1] }", ""),
        &[
            "matrix key `batch-size` is not an identifier",
            "pipeline.toml:3:23",
            "does not start with a digit",
        ],
    );
}

#[test]
fn an_unknown_matrix_placeholder_with_a_suggestion() {
    rejects(
        "[stages.q]\nkind = \"command\"\nmatrix = { precision = [\"fp16\"] }\nrun = [\"true\"]\noutputs = { out = \"out/{matrix.percision}.txt\" }\n",
        &[
            "unknown matrix key `percision` in `{matrix.percision}`",
            "pipeline.toml:5:19",
            "did you mean `precision`?",
        ],
    );
    rejects(
        "[stages.a]\nkind = \"command\"\nrun = [\"echo\", \"{matrix.p}\"]\n",
        &[
            "`{matrix.p}` in stage `a`, which has no matrix",
            "pipeline.toml:3:16",
            "{{matrix.p}}",
        ],
    );
}

#[test]
fn two_variants_with_one_name() {
    // "FP16" and "fp16" both name the variant q-fp16.
    rejects(
        &with_matrix("{ p = [\"fp16\", \"FP16\"] }", ""),
        &[
            "the variant `q-fp16` of stage `q` (p = \"FP16\") has the name of another stage or variant",
            "pipeline.toml:1:9",
        ],
    );
    // A variant may not take the name of a declared stage either.
    rejects(
        &with_matrix(
            "{ p = [\"a\", \"b\"] }",
            "[stages.q-b]\nkind = \"command\"\nrun = [\"true\"]\n",
        ),
        &["the variant `q-b` of stage `q`", "also here"],
    );
    rejects(
        &with_matrix("{ p = [1, 1] }", ""),
        &[
            "the value 1 appears twice in `matrix.p`",
            "pipeline.toml:3:20",
            "the same value again",
        ],
    );
}

#[test]
fn a_matrix_value_of_the_wrong_type() {
    rejects(
        &with_matrix("{ p = [\"one\", \"two\"] }", "").replace(
            "run = [\"true\"]",
            "run = [\"true\"]\nresources = { cpu = \"{matrix.p}\" }",
        ),
        &[
            "invalid type: string \"one\", expected u32",
            "(in variant `q-one`, from the matrix",
            "pipeline.toml:5:21",
            "also here",
        ],
    );
    rejects(
        &with_matrix("{ p = [\"a\", 1] }", ""),
        &["the values of `matrix.p` are not all of one type: \"a\" is a string, 1 is an integer"],
    );
    rejects(
        &with_matrix("{ p = [[1, 2]] }", ""),
        &["must be a string, an integer, a float or a boolean, not array"],
    );
}

#[test]
fn too_many_variants_per_stage_and_per_pipeline() {
    let values = |n: usize| (0..n).map(|i| i.to_string()).collect::<Vec<_>>().join(", ");
    rejects(
        &with_matrix(
            &format!("{{ p = [{}], n = [{}] }}", values(100), values(100)),
            "",
        ),
        &[
            "the matrix of stage `q` makes 10000 variants; at most 256 are allowed",
            "pipeline.toml:3:10",
            "check the lists for a typo",
        ],
    );
    let mut pipeline = String::new();
    for stage in 0..17 {
        pipeline.push_str(&format!(
            "[stages.s{stage}]\nkind = \"command\"\nmatrix = {{ p = [{}] }}\nrun = [\"true\"]\noutputs = {{ out = \"out/{stage}/{{matrix.p}}\" }}\n\n",
            values(256)
        ));
    }
    rejects(
        &pipeline,
        &[
            "the pipeline's matrices make more than 4096 variant stages",
            "this matrix crosses the limit",
        ],
    );
}

#[test]
fn a_reference_to_a_variant_that_does_not_exist() {
    rejects(
        &with_matrix(
            "{ p = [\"fp16\", \"int8\"] }",
            "[stages.r]\nkind = \"command\"\nrun = [\"true\"]\ninputs = { m = \"@q-fp32\" }\n",
        ),
        &[
            "stage `q` has no variant `q-fp32`",
            "pipeline.toml:10:16",
            "did you mean `q-fp16`? its variants are: q-fp16, q-int8",
        ],
    );
    rejects(
        &with_matrix(
            "{ p = [\"fp16\", \"int8\"] }",
            "[stages.r]\nkind = \"command\"\nrun = [\"true\"]\nneeds = [\"q-int4\"]\n",
        ),
        &[
            "stage `q` has no variant `q-int4`",
            "did you mean `q-int8`?",
        ],
    );
}

#[test]
fn a_single_reference_to_a_matrix_stage_must_say_which_variant() {
    rejects(
        &with_matrix(
            "{ p = [\"fp16\", \"int8\"] }",
            "[stages.r]\nkind = \"command\"\nrun = [\"true\"]\ninputs = { m = \"@q\" }\n",
        ),
        &[
            "`@q` is a matrix stage of 2 variants, and this value takes one",
            "pipeline.toml:10:16",
            "name one of \"@q-fp16\", \"@q-int8\", or give stage `r` a matrix with the keys `p`",
        ],
    );
    // A matrix consumer whose value the producer lacks.
    rejects(
        &with_matrix(
            "{ p = [\"fp16\", \"int8\"] }",
            "[stages.r]\nkind = \"command\"\nmatrix = { p = [\"fp8\"] }\nrun = [\"true\"]\ninputs = { m = \"@q\" }\n",
        ),
        &[
            "no variant of `q` matches this stage's p = \"fp8\"",
            "pipeline.toml:11:16",
        ],
    );
}

#[test]
fn an_error_in_a_string_made_from_the_matrix_names_the_variant() {
    rejects(
        &with_matrix("{ p = [\"a\", \"b\"] }", "")
            .replace("out/{matrix.p}.txt", "../{matrix.p}.txt"),
        &[
            "output `out` (`../a.txt`) is outside the project",
            // The header wraps at the terminal width: the suffix is checked up to a break.
            "(in variant `q-a`, from the matrix",
            "pipeline.toml:5:19",
            "also here",
        ],
    );
}
