//! The engine's promises, checked by running the built `pochi` binary in temp dirs.
//! Decisions that need no process (what reruns, early cutoff, targets, failures) are unit
//! tests of the driver on a fake runner (`src/driver/tests.rs`); these need the binary.

use std::time::{Duration, Instant};

use crate::common::{Project, copy_tree};

/// prep -> count, plus an independent `other`.
const PIPELINE: &str = r#"
[pipeline]
name = "demo"

[stages.prep]
kind = "command"
run = ["sh", "-c", "tr a-z A-Z < {inputs.src} > {outputs.out}"]
inputs = { src = "data/a.txt" }
outputs = { out = "out/prep.txt" }

[stages.count]
kind = "command"
run = ["sh", "-c", "wc -c < {inputs.text} > {outputs.out}"]
inputs = { text = "@prep" }
outputs = { out = "out/count.txt" }

[stages.other]
kind = "command"
run = ["sh", "-c", "echo other > {outputs.out}"]
outputs = { out = "out/other.txt" }
"#;

fn demo() -> Project {
    let project = Project::new(PIPELINE);
    project.write("data/a.txt", "hello\n");
    project
}

#[test]
fn a_first_build_runs_everything_and_a_rerun_runs_nothing() {
    let project = demo();
    let first = project.build(&[]);
    first.assert_ok();
    assert_eq!(first.ran(), ["count", "other", "prep"]);
    assert_eq!(project.read("out/prep.txt"), "HELLO\n");
    assert_eq!(project.read("out/count.txt").trim(), "6");
    let second = project.build(&[]);
    second.assert_ok();
    assert!(second.ran().is_empty(), "rerun ran {:?}", second.ran());
    assert_eq!(second.stages("skipped"), ["count", "other", "prep"]);
}

#[test]
fn touch_and_a_copied_project_with_its_state_run_nothing() {
    let project = demo();
    project.build(&[]).assert_ok();
    let file = std::fs::File::options()
        .write(true)
        .open(project.path("data/a.txt"))
        .unwrap();
    file.set_modified(std::time::SystemTime::now() + Duration::from_secs(5))
        .unwrap();
    assert!(
        project.build(&[]).assert_ok().ran().is_empty(),
        "touch must not rebuild"
    );

    let clone = tempfile::tempdir().unwrap();
    copy_tree(project.dir.path(), clone.path());
    let copied = Project::in_dir(clone);
    let run = copied.build(&[]);
    run.assert_ok();
    assert!(
        run.ran().is_empty(),
        "a fresh copy plus .pochi/ ran {:?}",
        run.ran()
    );
}

#[test]
fn a_modified_or_deleted_output_is_rebuilt() {
    let project = demo();
    project.build(&[]).assert_ok();
    // Without the output cache, which would restore them instead (tests/it/cache.rs).
    project.write("out/prep.txt", "tampered\n");
    assert_eq!(project.build(&["--no-cache"]).assert_ok().ran(), ["prep"]);
    assert_eq!(project.read("out/prep.txt"), "HELLO\n");
    std::fs::remove_file(project.path("out/other.txt")).unwrap();
    assert_eq!(project.build(&["--no-cache"]).assert_ok().ran(), ["other"]);
}

#[test]
fn a_failing_stage_keeps_its_log_blocks_dependents_and_exits_nonzero() {
    let project = Project::new(
        r#"
[stages.bad]
kind = "command"
run = ["sh", "-c", "echo progress; echo 'something broke' >&2; exit 3"]
outputs = { out = "out/bad.txt" }

[stages.after]
kind = "command"
run = ["cp", "{inputs.x}", "{outputs.out}"]
inputs = { x = "@bad" }
outputs = { out = "out/after.txt" }

[stages.zindependent]
kind = "command"
run = ["sh", "-c", "sleep 0.2; echo ok > {outputs.out}"]
outputs = { out = "out/ind.txt" }
"#,
    );
    let run = project.build(&["-j", "1", "--keep-going"]);
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("exit status 3"), "{}", run.stderr);
    assert!(
        run.stderr.contains("something broke"),
        "stderr tail shown: {}",
        run.stderr
    );
    assert!(
        run.stderr.contains(".pochi/v1/pipeline/logs/bad.log"),
        "{}",
        run.stderr
    );
    assert_eq!(run.stages("failed"), ["bad"]);
    assert_eq!(run.stages("blocked"), ["after"]);
    assert_eq!(
        run.ran(),
        ["zindependent"],
        "--keep-going runs independent stages"
    );
    let log = project.read(".pochi/v1/pipeline/logs/bad.log");
    assert!(
        log.contains("progress") && log.contains("something broke"),
        "full log kept: {log}"
    );
    let status = project.run(&["status"]);
    assert_eq!(status.code, Some(1));
    assert!(
        status.stdout.contains("bad") && status.stdout.contains("failed"),
        "{}",
        status.stdout
    );
}

const SLOW: &str = r#"
[stages.fast]
kind = "command"
run = ["sh", "-c", "echo fast > {outputs.out}"]
outputs = { out = "out/fast.txt" }

[stages.slow]
kind = "command"
run = ["sh", "-c", "echo partial > {outputs.out}; if [ -e block ]; then sleep 30; fi; echo done >> {outputs.out}"]
inputs = { f = "@fast" }
outputs = { out = "out/slow.txt" }

[stages.side]
kind = "command"
run = ["sh", "-c", "echo side > {outputs.out}"]
outputs = { out = "out/side.txt" }
"#;

/// Waits until the slow stage has written its partial temporary output.
fn wait_for_partial(project: &Project) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let tmp = project.path(".pochi/v1/pipeline/tmp");
    loop {
        let found = std::fs::read_dir(&tmp)
            .into_iter()
            .flatten()
            .flatten()
            .any(|entry| entry.path().join("out/slow.txt").exists());
        if found {
            return;
        }
        assert!(Instant::now() < deadline, "the slow stage never started");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn kill_9_mid_stage_publishes_nothing_and_the_next_build_runs_exactly_that_stage() {
    let project = Project::new(SLOW);
    project.write("block", "");
    let mut child = project.command(&["build", "-j", "1"]).spawn().unwrap();
    wait_for_partial(&project);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        !project.exists("out/slow.txt"),
        "a partial output was published"
    );
    std::fs::remove_file(project.path("block")).unwrap();
    let run = project.build(&[]);
    run.assert_ok();
    assert_eq!(run.ran(), ["slow"], "only the unfinished stage reruns");
    assert_eq!(project.read("out/slow.txt"), "partial\ndone\n");
}

#[test]
fn ctrl_c_stops_stages_discards_partial_outputs_and_exits_130() {
    let project = Project::new(SLOW);
    project.write("block", "");
    let mut child = project.command(&["build", "-j", "1"]).spawn().unwrap();
    wait_for_partial(&project);
    let started = Instant::now();
    // SAFETY: signalling the child we spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the sleeping stage was terminated"
    );
    assert!(!project.exists("out/slow.txt"));
    // The stage's temporary directory is kept for the next build (its paths are part of
    // the stage's Action), empty: no file of the partial output is left.
    let leftovers = crate::common::files_under(&project.path(".pochi/v1/pipeline/tmp"));
    assert_eq!(leftovers, Vec::<String>::new(), "partial outputs discarded");
    std::fs::remove_file(project.path("block")).unwrap();
    assert_eq!(project.build(&[]).assert_ok().ran(), ["slow"]);
}

#[test]
fn a_second_build_waits_for_the_first_or_refuses_with_no_wait() {
    let project = Project::new(SLOW);
    project.write("block", "");
    let mut first = project.command(&["build", "-j", "1"]).spawn().unwrap();
    wait_for_partial(&project);
    let refused = project.run(&["build", "--no-wait"]);
    refused.assert_error(&["another pochi", "is building pipeline `pipeline`"]);
    let second = project
        .command(&["build", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    std::fs::remove_file(project.path("block")).unwrap();
    // The first build's sleep is already running: end it early by killing the whole build.
    // SAFETY: signalling the child we spawned.
    unsafe { libc::kill(first.id() as i32, libc::SIGINT) };
    first.wait().unwrap();
    let output = second.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("waiting: another pochi"), "{stderr}");
    assert_eq!(output.status.code(), Some(0), "{stderr}");
}

#[test]
fn gpu_leases_never_overlap_and_cpu_stages_see_no_gpu() {
    let mut pipeline = String::new();
    for index in 0..6 {
        pipeline.push_str(&format!(
            "[stages.gpu{index}]\nkind = \"command\"\ndevice = \"cuda\"\nrun = [\"sh\", \"-c\", \"echo $CUDA_VISIBLE_DEVICES $(date +%s%N) > {{outputs.out}}; sleep 0.3; date +%s%N >> {{outputs.out}}\"]\noutputs = {{ out = \"out/gpu{index}.txt\" }}\n\n"
        ));
    }
    pipeline.push_str("[stages.pinned]\nkind = \"command\"\ndevice = \"cuda:1\"\nrun = [\"sh\", \"-c\", \"echo $CUDA_VISIBLE_DEVICES $(date +%s%N) > {outputs.out}; sleep 0.3; date +%s%N >> {outputs.out}\"]\noutputs = { out = \"out/pinned.txt\" }\n\n");
    pipeline.push_str("[stages.cpu]\nkind = \"command\"\nrun = [\"sh\", \"-c\", \"echo \\\"[$CUDA_VISIBLE_DEVICES]\\\" > {outputs.out}\"]\noutputs = { out = \"out/cpu.txt\" }\n");
    let project = Project::new(&pipeline);
    let run = project.run_env(&["build", "--json", "-j", "8"], &[("POCHI_GPUS", "0,1")]);
    run.assert_ok();
    let mut spans: Vec<(String, u32, u128, u128)> = Vec::new();
    for name in (0..6)
        .map(|i| format!("gpu{i}"))
        .chain(["pinned".to_string()])
    {
        let text = project.read(&format!("out/{name}.txt"));
        let mut words = text.split_whitespace();
        let gpu: u32 = words.next().unwrap().parse().unwrap();
        let start: u128 = words.next().unwrap().parse().unwrap();
        let end: u128 = words.next().unwrap().parse().unwrap();
        spans.push((name, gpu, start, end));
    }
    assert!(spans.iter().all(|s| s.1 == 0 || s.1 == 1));
    assert_eq!(
        spans.iter().find(|s| s.0 == "pinned").unwrap().1,
        1,
        "cuda:1 runs on GPU 1"
    );
    for (i, a) in spans.iter().enumerate() {
        for b in &spans[i + 1..] {
            let overlap = a.2 < b.3 && b.2 < a.3;
            assert!(
                !(overlap && a.1 == b.1),
                "{} and {} shared GPU {}",
                a.0,
                b.0,
                a.1
            );
        }
    }
    assert_eq!(
        project.read("out/cpu.txt").trim(),
        "[]",
        "a cpu stage sees CUDA_VISIBLE_DEVICES=\"\""
    );
}

#[test]
fn memory_declarations_limit_concurrency() {
    let mut pipeline = String::from("[resources]\nmemory = \"10GiB\"\n\n");
    for index in 0..3 {
        pipeline.push_str(&format!(
            "[stages.heavy{index}]\nkind = \"command\"\nresources = {{ memory = \"6GiB\" }}\nrun = [\"sh\", \"-c\", \"date +%s%N > {{outputs.out}}; sleep 0.3; date +%s%N >> {{outputs.out}}\"]\noutputs = {{ out = \"out/h{index}.txt\" }}\n\n"
        ));
    }
    let project = Project::new(&pipeline);
    project.build(&["-j", "4"]).assert_ok();
    let spans: Vec<(u128, u128)> = (0..3)
        .map(|i| {
            let text = project.read(&format!("out/h{i}.txt"));
            let mut lines = text.lines().map(|l| l.trim().parse::<u128>().unwrap());
            (lines.next().unwrap(), lines.next().unwrap())
        })
        .collect();
    let overlaps = |spans: &[(u128, u128)]| {
        spans
            .iter()
            .enumerate()
            .any(|(i, a)| spans[i + 1..].iter().any(|b| a.0 < b.1 && b.0 < a.1))
    };
    assert!(!overlaps(&spans), "two 6 GiB stages ran at once in 10 GiB");
    // Positive control: with 20 GiB the same stages do run side by side, so the test
    // above would see an overlap if memory were not limiting them.
    project.write(
        "pipeline.toml",
        &pipeline.replace("memory = \"10GiB\"", "memory = \"20GiB\""),
    );
    project.run(&["clean"]).assert_ok();
    // The stages must run again, not be restored from the output cache.
    project.build(&["-j", "4", "--no-cache"]).assert_ok();
    let spans: Vec<(u128, u128)> = (0..3)
        .map(|i| {
            let text = project.read(&format!("out/h{i}.txt"));
            let mut lines = text.lines().map(|l| l.trim().parse::<u128>().unwrap());
            (lines.next().unwrap(), lines.next().unwrap())
        })
        .collect();
    assert!(
        overlaps(&spans),
        "with room for three, they ran one by one: {spans:?}"
    );
}

#[test]
fn status_and_explain_say_why_without_running() {
    let project = demo();
    let never = project.run(&["status"]);
    assert_eq!(never.code, Some(1));
    assert!(never.stdout.contains("never built"), "{}", never.stdout);
    project.build(&[]).assert_ok();
    assert_eq!(project.run(&["status"]).code, Some(0));
    project.write("data/a.txt", "changed\n");
    let status = project.run(&["status"]);
    assert_eq!(status.code, Some(1));
    assert!(
        status.stdout.contains("waits on upstream"),
        "{}",
        status.stdout
    );
    let explain = project.run(&["explain", "pipeline.toml", "prep"]);
    explain.assert_ok();
    let old = blake3::hash(b"hello\n").to_hex().to_string();
    let new = blake3::hash(b"changed\n").to_hex().to_string();
    let expected = format!(
        "input `src` (data/a.txt) changed: {} -> {}",
        &old[..12],
        &new[..12]
    );
    assert!(explain.stdout.contains(&expected), "{}", explain.stdout);
    assert!(
        !project.read("out/prep.txt").contains("CHANGED"),
        "status and explain run nothing"
    );

    project.write(
        "pipeline.toml",
        &PIPELINE.replace("echo other", "echo another"),
    );
    let explain = project.run(&["explain", "pipeline.toml", "other"]);
    assert!(
        explain.stdout.contains("parameter `run` changed"),
        "{}",
        explain.stdout
    );
    assert!(
        explain.stdout.contains("echo another"),
        "{}",
        explain.stdout
    );
}

#[test]
fn dry_run_lists_what_would_run_and_runs_nothing() {
    let project = demo();
    let run = project.run(&["build", "--dry-run"]);
    run.assert_ok();
    assert!(
        run.stderr.contains("would run prep: never built"),
        "{}",
        run.stderr
    );
    assert!(!project.exists("out/prep.txt"));
}

#[test]
fn clean_removes_outputs_and_records() {
    let project = demo();
    project.build(&[]).assert_ok();
    project.run(&["clean", "--target", "other"]).assert_ok();
    assert!(!project.exists("out/other.txt"));
    assert!(project.exists("out/prep.txt"));
    // Without the output cache, which would restore it instead (tests/it/cache.rs).
    assert_eq!(project.build(&["--no-cache"]).assert_ok().ran(), ["other"]);
}

#[test]
fn graph_formats_are_deterministic_and_html_is_self_contained() {
    let project = demo();
    project.build(&[]).assert_ok();
    let dot = project.run(&["graph", "pipeline.toml", "--format", "dot"]);
    dot.assert_ok();
    assert!(
        dot.stdout.contains("\"prep\" -> \"count\";"),
        "{}",
        dot.stdout
    );
    assert_eq!(
        dot.stdout,
        project
            .run(&["graph", "pipeline.toml", "--format", "dot"])
            .stdout
    );
    let html = project
        .run(&["graph", "pipeline.toml", "--format", "html"])
        .stdout;
    assert!(html.contains("<svg") && !html.contains("http://") && !html.contains("https://"));
    let json: serde_json::Value = serde_json::from_str(
        &project
            .run(&["graph", "pipeline.toml", "--format", "json"])
            .stdout,
    )
    .unwrap();
    assert_eq!(json["stages"].as_array().unwrap().len(), 3);
    assert!(
        json["stages"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["status"] == "up_to_date")
    );
    let mermaid = project
        .run(&["graph", "pipeline.toml", "--format", "mermaid"])
        .stdout;
    assert!(mermaid.contains("flowchart LR"), "{mermaid}");
    assert!(mermaid.contains("s_prep --> s_count"), "{mermaid}");
    for format in ["text", "mermaid", "json", "html"] {
        let again = project
            .run(&["graph", "pipeline.toml", "--format", format])
            .stdout;
        let once_more = project
            .run(&["graph", "pipeline.toml", "--format", format])
            .stdout;
        assert_eq!(again, once_more, "`--format {format}` is deterministic");
    }
}

#[test]
fn directory_inputs_and_outputs_are_hashed_recursively() {
    let project = Project::new(
        r#"
[stages.bundle]
kind = "command"
run = ["sh", "-c", "mkdir -p {outputs.dir} && cat {inputs.src}/*.txt > {outputs.dir}/all.txt"]
inputs = { src = "data" }
outputs = { dir = "out/bundle" }

[stages.size]
kind = "command"
run = ["sh", "-c", "wc -c < {inputs.bundle}/all.txt > {outputs.out}"]
inputs = { bundle = "@bundle" }
outputs = { out = "out/size.txt" }
"#,
    );
    project.write("data/a.txt", "a\n");
    project.build(&[]).assert_ok();
    assert_eq!(project.read("out/bundle/all.txt"), "a\n");
    assert!(project.build(&[]).assert_ok().ran().is_empty());
    project.write("data/b.txt", "b\n");
    assert_eq!(project.build(&[]).assert_ok().ran(), ["bundle", "size"]);
    assert_eq!(project.read("out/bundle/all.txt"), "a\nb\n");
}

#[test]
fn schema_is_json_with_every_stage_key() {
    let project = demo();
    let schema: serde_json::Value = serde_json::from_str(&project.run(&["schema"]).stdout).unwrap();
    let variants = schema["properties"]["stages"]["additionalProperties"]["oneOf"]
        .as_array()
        .unwrap();
    let kinds: Vec<&str> = variants
        .iter()
        .map(|v| v["properties"]["kind"]["const"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "command", "dataset", "export", "quantize", "engine", "report"
        ]
    );
    // Every kind's own keys and the common keys, each described.
    let own: [(&str, &[&str]); 6] = [
        ("command", &["run", "inputs", "outputs"]),
        (
            "dataset",
            &["source", "synthetic", "samples", "transform", "output"],
        ),
        (
            "export",
            &["checkpoint", "model", "input_shape", "opset", "output"],
        ),
        ("quantize", &["onnx", "precision", "calibration", "output"]),
        (
            "engine",
            &["onnx", "input_size", "batch", "precision", "output"],
        ),
        ("report", &["models", "data", "task", "output"]),
    ];
    for (variant, (kind, keys)) in variants.iter().zip(own) {
        for key in keys
            .iter()
            .chain(&["kind", "needs", "env", "device", "resources"])
        {
            assert!(
                variant["properties"][key].is_object(),
                "`{kind}` stages have `{key}` in the schema: {variant}"
            );
        }
        assert_eq!(
            variant["additionalProperties"], false,
            "{kind}: unknown keys are refused"
        );
    }
}

/// Sets every file's mtime a minute back, so the no-op stamp trusts their stats at once.
fn backdate_all(project: &Project) {
    fn walk(dir: &std::path::Path) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.file_name().is_some_and(|n| n == ".pochi") {
                continue;
            }
            if path.is_dir() {
                walk(&path);
            }
            let old = std::time::SystemTime::now() - Duration::from_secs(60);
            if let Ok(file) = std::fs::File::options().write(true).open(&path) {
                file.set_modified(old).unwrap();
            } else if let Ok(handle) = std::fs::File::open(&path) {
                handle.set_modified(old).unwrap();
            }
        }
    }
    walk(project.dir.path());
}

#[test]
fn the_no_op_stamp_answers_fast_and_never_hides_a_change() {
    let project = demo();
    project.build(&[]).assert_ok();
    backdate_all(&project);
    project.run(&["build"]).assert_ok(); // full check; everything is up to date: stamp written
    let fast = project.run(&["build"]);
    fast.assert_ok();
    assert!(
        fast.stderr.contains("nothing changed since the last build"),
        "{}",
        fast.stderr
    );

    // Same size, new content: the stat differs, so the full check runs and finds it.
    project.write("data/a.txt", "jello\n");
    let run = project.build(&[]);
    run.assert_ok();
    assert_eq!(run.ran(), ["count", "prep"]);
    assert_eq!(project.read("out/prep.txt"), "JELLO\n");

    backdate_all(&project);
    project.run(&["build"]).assert_ok();
    assert!(project.run(&["build"]).stderr.contains("nothing changed"));
    project.write(
        "pipeline.toml",
        &PIPELINE.replace("echo other", "echo changed"),
    );
    let run = project.run(&["build"]);
    assert!(!run.stderr.contains("nothing changed"), "{}", run.stderr);
    assert!(project.read("out/other.txt").contains("changed"));

    backdate_all(&project);
    project.run(&["build"]).assert_ok();
    project.run(&["clean", "--target", "other"]).assert_ok();
    project.run(&["build"]).assert_ok();
    assert!(project.exists("out/other.txt"), "clean voids the stamp");
}

#[test]
fn a_pipeline_path_with_dot_dot_has_the_same_project_root() {
    let project = demo();
    std::fs::create_dir_all(project.path("elsewhere")).unwrap();
    let run = |args: &[&str]| {
        crate::common::Run::from_output(
            project
                .command(args)
                .current_dir(project.path("elsewhere"))
                .output()
                .unwrap(),
        )
    };
    run(&["build", "../pipeline.toml"]).assert_ok();
    assert_eq!(project.read("out/prep.txt"), "HELLO\n");
    assert_eq!(run(&["status", "../pipeline.toml"]).code, Some(0));
    run(&["graph", "../pipeline.toml"]).assert_ok();
    run(&["build", "-n", "../pipeline.toml"]).assert_ok();
}
