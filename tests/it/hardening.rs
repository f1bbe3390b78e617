//! Regression tests for the defects that fault and fuzz testing found (issue 15): each one
//! drives the built binary in a temp dir the way the fault was found.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::common::Project;

const ONE: &str = r#"
[pipeline]
name = "p"

[stages.a]
kind = "command"
run = ["sh", "-c", "cat {inputs.src} > {outputs.out}"]
inputs = { src = "src.txt" }
outputs = { out = "out/a.txt" }
"#;

fn one() -> Project {
    let project = Project::new(ONE);
    project.write("src.txt", "one\n");
    project
}

fn wait_for(path: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        assert!(Instant::now() < deadline, "{what} never happened");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(child: &Child, signal: i32) {
    // SAFETY: signalling the child we spawned.
    unsafe { libc::kill(child.id() as i32, signal) };
}

// 1. A torn last line in the record log must not swallow the next record.
#[test]
fn a_log_without_a_final_newline_does_not_swallow_the_next_record() {
    for torn in [true, false] {
        let project = one();
        project.build(&[]).assert_ok();
        let log = project.path(".pochi/v1/p/log.jsonl");
        let text = std::fs::read(&log).unwrap();
        let damaged = if torn {
            [&text[..], b"{\"event\":\"built\",\"sta"].concat()
        } else {
            text.strip_suffix(b"\n").unwrap().to_vec()
        };
        std::fs::write(&log, damaged).unwrap();
        project.write("src.txt", "two\n");
        assert_eq!(project.build(&[]).assert_ok().ran(), ["a"]);
        let status = project.run(&["status"]);
        assert_eq!(status.code, Some(0), "torn={torn}: {}", status.stdout);
        assert!(project.build(&[]).assert_ok().ran().is_empty());
    }
}

// 2. pochi's own files are never outputs.
#[test]
fn outputs_inside_the_state_directory_or_on_the_pipeline_file_are_refused() {
    for (output, needle) in [
        (
            ".pochi/v1/p/lock",
            "inside pochi's state directory `.pochi/`",
        ),
        ("./.pochi/v1/p/log.jsonl", "inside pochi's state directory"),
        (".pochi", "inside pochi's state directory"),
        (
            "pipeline.toml",
            "would overwrite the pipeline file `pipeline.toml`",
        ),
    ] {
        let project = Project::new(&ONE.replace("out/a.txt", output));
        project.write("src.txt", "one\n");
        for command in ["build", "status"] {
            project
                .run(&[command])
                .assert_error(&[needle, "pipeline.toml:9:", "reserved path"]);
        }
        assert!(!project.exists(".pochi/v1/p/log.jsonl"), "nothing ran");
    }
}

const ESCAPING: &str = r#"
[stages.a]
kind = "command"
run = ["sh", "-c", "touch started; (sleep 2; echo alive >> escaped.txt) & sleep 30; echo x > {outputs.out}"]
outputs = { out = "out/a.txt" }
"#;

/// After the grandchild's 2 s sleep: it never wrote, and nothing was published.
fn assert_nothing_outlived_pochi(project: &Project) {
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !project.exists("escaped.txt"),
        "a grandchild outlived pochi"
    );
    assert!(!project.exists("out/a.txt"));
}

// 3. SIGTERM is handled like Ctrl-C, and a SIGKILL of pochi leaves no stage running.
#[test]
fn sigterm_stops_the_whole_stage_group_and_exits_143() {
    let project = Project::new(ESCAPING);
    let child = project.command(&["build"]).spawn().unwrap();
    wait_for(&project.path("started"), "the stage's start");
    signal(&child, libc::SIGTERM);
    let status = child.wait_with_output().unwrap().status;
    assert_eq!(status.code(), Some(143));
    assert_nothing_outlived_pochi(&project);
}

#[test]
fn a_sigkill_of_pochi_leaves_no_grandchild_running() {
    let project = Project::new(ESCAPING);
    let mut child = project.command(&["build"]).spawn().unwrap();
    wait_for(&project.path("started"), "the stage's start");
    child.kill().unwrap();
    child.wait().unwrap();
    assert_nothing_outlived_pochi(&project);
}

// 4. Special files are errors, not hangs.
#[test]
fn fifo_and_device_inputs_are_clear_errors() {
    let project = one();
    project.build(&[]).assert_ok();
    std::fs::remove_file(project.path("src.txt")).unwrap();
    let fifo = std::ffi::CString::new(project.path("src.txt").to_str().unwrap()).unwrap();
    // SAFETY: creating a FIFO at a path we own.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    let status = project.run_within(&["status"], Duration::from_secs(20));
    assert_eq!(status.code, Some(1));
    assert!(
        status
            .stdout
            .contains("is a FIFO (named pipe), not a regular file or directory"),
        "{}",
        status.stdout
    );
    project
        .run_within(&["build"], Duration::from_secs(20))
        .assert_error(&["is a FIFO (named pipe), not a regular file"]);
    let device = Project::new(&ONE.replace("src.txt", "/dev/zero"));
    device
        .run_within(&["build"], Duration::from_secs(20))
        .assert_error(&["is a character device, not a regular file"]);
}

#[test]
fn an_output_that_links_to_a_device_or_nowhere_is_not_published() {
    for (target, needle) in [
        ("/dev/zero", "outside the project"),
        ("nowhere", "a symbolic link that leads nowhere"),
    ] {
        let project = Project::new(&format!(
            "[stages.a]\nkind = \"command\"\nrun = [\"ln\", \"-s\", \"{target}\", \"{{outputs.out}}\"]\noutputs = {{ out = \"out/a\" }}\n"
        ));
        project
            .run_within(&["build"], Duration::from_secs(20))
            .assert_error(&["cannot be published", needle]);
        assert!(
            std::fs::symlink_metadata(project.path("out/a")).is_err(),
            "the link was published"
        );
    }
}

// 5. Long names are refused by the parser, and no printer panics on them.
#[test]
fn long_stage_names_are_a_parse_error() {
    for length in [129, 300, 65_536] {
        let name = "s".repeat(length);
        let project = Project::new(&ONE.replace("[stages.a]", &format!("[stages.{name}]")));
        project.write("src.txt", "x");
        let run = project.run(&["status"]);
        run.assert_error(&["is not valid", "at most 128"]);
        let first = run.stderr.lines().next().unwrap_or_default();
        assert!(
            first.len() < 200,
            "the message repeats the name whole: {first}"
        );
    }
    let fits = Project::new(&ONE.replace("[stages.a]", &format!("[stages.{}]", "s".repeat(128))));
    fits.write("src.txt", "x");
    fits.build(&[]).assert_ok();
}

// 6. Output confinement follows symbolic links.
#[test]
fn an_output_under_a_link_out_of_the_project_is_refused_and_clean_deletes_nothing_outside() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("a.txt"), "precious\n").unwrap();
    let project = one();
    std::os::unix::fs::symlink(outside.path(), project.path("out")).unwrap();
    project
        .build(&[])
        .assert_error(&["cannot be published", "outside the project"]);
    assert_eq!(
        std::fs::read_to_string(outside.path().join("a.txt")).unwrap(),
        "precious\n"
    );
    // Built with a real directory, then the directory is swapped for the link: clean
    // refuses to delete through it.
    std::fs::remove_file(project.path("out")).unwrap();
    project.build(&[]).assert_ok();
    std::fs::remove_dir_all(project.path("out")).unwrap();
    std::os::unix::fs::symlink(outside.path(), project.path("out")).unwrap();
    project
        .run(&["clean"])
        .assert_error(&["cannot remove output `out/a.txt`", "outside the project"]);
    assert!(
        outside.path().join("a.txt").exists(),
        "clean deleted outside"
    );
}

// 7. Outputs are unique across the pipelines of one build; one name per state directory.
#[test]
fn two_pipelines_of_one_build_cannot_share_an_output() {
    let project = one();
    project.write("a.toml", &ONE.replace("name = \"p\"", "name = \"a\""));
    project.write(
        "b.toml",
        &ONE.replace("name = \"p\"", "name = \"b\"")
            .replace("out/a.txt", "out"),
    );
    project
        .run(&["build", "a.toml", "b.toml"])
        .assert_error(&["is also an output", "b.toml:9:19"]);
    assert!(!project.exists("out"), "nothing ran");
}

#[test]
fn two_pipeline_files_in_one_directory_with_one_name_are_refused() {
    let project = one();
    project.write("a.toml", ONE);
    project.write("b.toml", &ONE.replace("out/a.txt", "out/b.txt"));
    project.run(&["build", "a.toml"]).assert_ok();
    project.run(&["build", "b.toml"]).assert_error(&[
        "named `p`",
        "would share",
        "give one of them another `[pipeline] name`",
    ]);
    project
        .run(&["status", "b.toml"])
        .assert_error(&["named `p`", "would share"]);
    // Renamed, b builds beside a, and a is still up to date.
    project.write(
        "b.toml",
        &ONE.replace("out/a.txt", "out/b.txt")
            .replace("\"p\"", "\"b\""),
    );
    project.run(&["build", "b.toml"]).assert_ok();
    assert_eq!(project.run(&["status", "a.toml"]).code, Some(0));
}

// 8. Leftovers of an interrupted directory swap are removed.
#[test]
fn leftovers_of_an_interrupted_publish_are_removed_by_the_next_build_and_clean() {
    let project = Project::new(
        "[stages.many]\nkind = \"command\"\nrun = [\"sh\", \"-c\", \"mkdir -p {outputs.out} && echo $RANDOM > {outputs.out}/f\"]\noutputs = { out = \"out/many\" }\n",
    );
    project.build(&[]).assert_ok();
    // What a kill -9 between the swap's two renames leaves: the old tree beside a missing one.
    std::fs::rename(
        project.path("out/many"),
        project.path("out/.many.pochi-old"),
    )
    .unwrap();
    // A run publishes it (a restore from the output cache would publish it the same way).
    assert_eq!(project.build(&["--no-cache"]).assert_ok().ran(), ["many"]);
    assert!(!project.exists("out/.many.pochi-old"));
    std::fs::create_dir_all(project.path("out/.many.pochi-old")).unwrap();
    project.run(&["clean"]).assert_ok();
    assert!(!project.exists("out/.many.pochi-old"));
    assert!(!project.exists("out/many"));
}

// 9. The stderr tail is bounded.
#[test]
fn a_huge_stderr_line_and_a_carriage_return_progress_bar_give_a_short_message() {
    let project = Project::new(
        "[stages.a]\nkind = \"command\"\nrun = [\"sh\", \"-c\", \"i=0; while [ $i -lt 20000 ]; do printf 'progress %d\\\\r' $i >&2; i=$((i+1)); done; head -c 20000000 /dev/zero | tr '\\\\0' x >&2; echo >&2; echo boom >&2; exit 3\"]\noutputs = { out = \"out/a\" }\n",
    );
    let run = project.run(&["build"]);
    run.assert_error(&[
        "failed with exit status 3",
        "boom",
        "progress 19999",
        "more bytes]",
    ]);
    assert!(
        run.stderr.len() < 30_000,
        "{} bytes of message",
        run.stderr.len()
    );
    let log = std::fs::metadata(project.path(".pochi/v1/pipeline/logs/a.log")).unwrap();
    assert!(log.len() > 20_000_000, "the log keeps everything");
}

// Doubtful behaviour, decided.
#[test]
fn ctrl_c_stops_waiting_for_the_lock_and_clean_says_that_it_waits() {
    let project = Project::new(ESCAPING);
    let first = project.command(&["build"]).spawn().unwrap();
    wait_for(&project.path("started"), "the first build's stage");
    for command in ["build", "clean"] {
        let waiting = project
            .command(&[command])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(800));
        let asked = Instant::now();
        signal(&waiting, libc::SIGINT);
        let output = waiting.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("waiting: another pochi"),
            "{command}: {stderr}"
        );
        assert!(
            stderr.contains("interrupted while waiting"),
            "{command}: {stderr}"
        );
        assert_eq!(output.status.code(), Some(130), "{command}: {stderr}");
        assert!(asked.elapsed() < Duration::from_secs(5));
    }
    signal(&first, libc::SIGTERM);
    first.wait_with_output().unwrap();
}

#[test]
fn an_unwritable_state_directory_fails_before_any_stage_runs() {
    let project = Project::new(
        "[stages.a]\nkind = \"command\"\nrun = [\"sh\", \"-c\", \"touch ran; echo > {outputs.out}\"]\noutputs = { out = \"out/a\" }\n",
    );
    // A directory where pochi's owner file goes: writing it fails even for root.
    std::fs::create_dir_all(project.path(".pochi/v1/pipeline/pipeline-file/x")).unwrap();
    project.run(&["build"]).assert_error(&[
        "cannot use pochi's state directory",
        "check that the directory is writable",
    ]);
    assert!(
        !project.exists("ran"),
        "a stage ran before the state was checked"
    );
}

#[test]
fn a_stat_cache_that_cannot_be_written_is_a_warning() {
    let project = one();
    std::fs::create_dir_all(project.path(".pochi/v1/p/stat-cache.json/x")).unwrap();
    let run = project.run(&["build"]);
    run.assert_ok();
    assert!(
        run.stderr.contains("warning: cannot save the stat cache"),
        "{}",
        run.stderr
    );
    assert_eq!(project.read("out/a.txt"), "one\n");
}

#[test]
fn parse_time_errors_for_build_dir_empty_files_env_keys_and_nul() {
    let build_dir = Project::new(
        "[pipeline]\nname = \"p\"\nbuild_dir = \"b\"\n[stages.a]\nkind = \"command\"\nrun = [\"sh\", \"-c\", \"echo > {outputs.out}\"]\noutputs = { out = \"{build_dir}/a.txt\" }\n",
    );
    build_dir.build(&[]).assert_ok();
    assert!(build_dir.exists("b/a.txt"));
    assert!(!build_dir.exists("{build_dir}"));

    Project::new("")
        .run(&["build"])
        .assert_error(&["the pipeline declares no stages"]);
    Project::new("# nothing but a comment\n[pipeline]\nname = \"p\"\n")
        .run(&["status"])
        .assert_error(&["the pipeline declares no stages"]);
    Project::new(&ONE.replace("inputs = ", "env = { \"A=B\" = \"1\" }\ninputs = "))
        .run(&["status"])
        .assert_error(&["`A=B` is not a valid environment variable name"]);
    Project::new(&ONE.replace("inputs = ", "env = { A = \"x\\u0000y\" }\ninputs = "))
        .run(&["status"])
        .assert_error(&["environment variable `A` contains a NUL character"]);
    Project::new(&ONE.replace("out/a.txt", "out/a\\u0000.txt"))
        .run(&["status"])
        .assert_error(&["output `out` contains a NUL character"]);
}

#[test]
fn the_plan_counts_the_stages_that_may_run_after_the_out_of_date_ones() {
    let project = Project::new(
        r#"
[stages.a]
kind = "command"
run = ["sh", "-c", "cat {inputs.src} > {outputs.out}"]
inputs = { src = "src.txt" }
outputs = { out = "out/a" }

[stages.b]
kind = "command"
run = ["sh", "-c", "cat {inputs.i} > {outputs.out}"]
inputs = { i = "@a" }
outputs = { out = "out/b" }

[stages.c]
kind = "command"
run = ["sh", "-c", "cat {inputs.i} > {outputs.out}"]
inputs = { i = "@b" }
outputs = { out = "out/c" }
"#,
    );
    project.write("src.txt", "1");
    project.build(&[]).assert_ok();
    project.write("src.txt", "2");
    let run = project.run(&["build"]);
    run.assert_ok();
    assert!(
        run.stderr
            .contains("1 of 3 stages are out of date; up to 2 more depend on them"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("3 ran"), "{}", run.stderr);
}

#[test]
fn escape_sequences_from_a_stage_are_shown_escaped() {
    let project = Project::new(
        "[stages.a]\nkind = \"command\"\nrun = [\"sh\", \"-c\", \"printf 'clear\\\\033[2Jscreen\\\\n' >&2; exit 1\"]\noutputs = { out = \"out/a\" }\n",
    );
    let run = project.run(&["build"]);
    run.assert_error(&["clear\\u{1b}[2Jscreen"]);
    assert!(
        !run.stderr.contains('\x1b'),
        "a raw escape reached the terminal"
    );
}

#[test]
fn every_command_defaults_to_pipeline_toml_and_completions_come_from_clap() {
    let project = one();
    project.build(&[]).assert_ok();
    let graph = project.run(&["graph"]);
    graph.assert_ok();
    assert!(graph.stdout.contains('a'), "{}", graph.stdout);
    let explain = project.run(&["explain", "a"]);
    explain.assert_ok();
    assert!(
        explain.stdout.contains("a is up to date"),
        "{}",
        explain.stdout
    );
    for shell in ["bash", "zsh", "fish"] {
        let script = project.run(&["completions", shell]);
        script.assert_ok();
        for word in ["build", "status", "explain", "graph", "keep-going"] {
            assert!(script.stdout.contains(word), "{shell} lacks {word}");
        }
    }
}

// Found by the fuzzer (tests/fixtures/fuzz-corpus): a label further right than miette
// can draw is shown as file:line:col, and a duration too large for a Duration is an error.
#[test]
fn an_error_far_right_on_a_line_and_a_huge_duration_are_errors_not_panics() {
    for indent in [" ".repeat(70_000), "\t".repeat(20_000)] {
        let project = Project::new(&format!("{indent}x = 1\n"));
        project.run(&["status"]).assert_error(&[
            "unknown key `x` at the top level",
            "pipeline.toml:1:",
            "too long to show",
        ]);
    }
    let project = Project::new(
        "[stages.r]\nkind = \"report\"\nmodels = [\"m.onnx\"]\ndata = \"d.npy\"\nmin_duration = \"18446744073709551616s\"\n",
    );
    project.write("m.onnx", "");
    project.write("d.npy", "");
    project
        .run(&["status"])
        .assert_error(&["`18446744073709551616s` is not a duration"]);
}

#[test]
fn a_reader_that_goes_away_is_no_panic() {
    // `pochi graph | head -1`: the reader closes the pipe before pochi writes.
    let project = one();
    let mut child = project
        .command(&["graph", "--format", "html"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(output.status.code(), Some(0), "{stderr}");
}

#[test]
fn output_that_cannot_be_written_is_a_failure() {
    // stdout on a full device: the command fails, and says why.
    if !Path::new("/dev/full").exists() {
        return;
    }
    let project = one();
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let output = project
        .command(&["graph", "--format", "json"])
        .stdout(full)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot write to stdout"), "{stderr}");
}
