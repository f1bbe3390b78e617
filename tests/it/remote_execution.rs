//! Remote execution in builds (`pochi build --remote-executor`) where no real worker can
//! do the job, or none is needed. The rest runs on real workers (buildbox-worker with
//! buildbox-run-hosttools against BuildGrid) in `remote_buildbox.rs`.
//!
//! Two tests stay on the STAND-IN worker (`tests/servers/standin_worker.py`, a test double
//! of a farm's worker that speaks BuildGrid's Bots API), against a real BuildGrid
//! scheduler (Execution on PostgreSQL, both started by the harness on 127.0.0.1), because
//! no real worker can do their job:
//! `a_worker_sending_a_hostile_tree_fails_the_stage_and_writes_nothing_outside` needs a
//! worker that answers with a HOSTILE output tree (links that chain out of the output, a
//! directory listed twice), which a real worker never sends: it uploads what the command
//! wrote; and `bench_remote_execution_overhead` (ignored; BENCHMARKS.md §1f, run by
//! `bench/remote_exec_overhead.sh`) measures pochi's overhead per action on the farm on
//! which §1f compares it with Bazel 2.1 (`bench/remote_vs_bazel.sh`, same server, same
//! worker): Bazel 2.1 sends only `Command.output_files`, which buildbox-run-hosttools
//! drops (it collects `output_paths` only), so that farm's worker is the stand-in, and the
//! benchmark stays on it for its numbers to compare.
//!
//! Two need no worker at all, and start none:
//! `an_executor_that_does_not_answer_is_an_error_before_anything_runs` (nothing listens
//! at the executor's address) and
//! `a_stage_that_must_run_remotely_is_unavailable_without_an_executor` (no executor is
//! given). A GPU no worker offers is tested on the buildbox farm, whose workers offer
//! other GPUs.
//!
//! The stand-in workers run on this machine, so they find the managed toolchain where
//! this machine keeps it (`--remote-toolchain-dir` names it, as a farm's admin would name
//! the image's).

use std::time::{Duration, Instant};

use crate::common::servers::{BuildGridExecution, ExecutionConfig, StandinWorker};
use crate::common::{Project, summary_stage as stage};
use crate::remote_buildbox::toolchain;

/// A STAND-IN worker `name` taking `extra` arguments and offering this machine's OS, ISA
/// and toolchain property; returns it and the directory that holds the toolchains
/// (`--remote-toolchain-dir`).
fn start_worker(
    server: &BuildGridExecution,
    project: &Project,
    name: &str,
    extra: &[&str],
) -> (StandinWorker, String) {
    let (toolchain_property, dir) = toolchain(project);
    let platform = [
        ("OSFamily", std::env::consts::OS),
        ("ISA", std::env::consts::ARCH),
        ("pochi-toolchain", toolchain_property.as_str()),
    ];
    (server.worker_with(name, &platform, extra), dir)
}

#[test]
fn a_stage_that_must_run_remotely_is_unavailable_without_an_executor() {
    let project = Project::new(
        r#"
[stages.far]
kind = "command"
executor = "remote"
run = ["sh", "-c", "echo x > {outputs.out}"]
outputs = { out = "out/x.txt" }

[stages.after]
kind = "command"
run = ["sh", "-c", "cp {inputs.x} {outputs.out}"]
inputs = { x = "@far" }
outputs = { out = "out/after.txt" }

[stages.here]
kind = "command"
run = ["sh", "-c", "echo here > {outputs.out}"]
outputs = { out = "out/here.txt" }
"#,
    );
    // Like an engine without TensorRT: reported, the rest builds, exit 0.
    let run = project.build(&[]);
    run.assert_ok();
    assert_eq!(run.ran(), vec!["here"]);
    assert_eq!(run.stages("unavailable"), vec!["after", "far"]);
    let summary = run.summary();
    let reason = stage(&summary, "far")["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(reason.contains("executor = \"remote\""), "{reason}");
    assert!(reason.contains("--remote-executor"), "{reason}");
    assert!(!project.exists("out/x.txt"));
    // `status` says the same; `--require-all` makes it an error before anything runs.
    let status = project.run(&["status"]);
    assert!(
        status.stdout.contains("must run remotely"),
        "{}",
        status.stdout
    );
    project.build(&["--require-all"]).assert_error(&[
        "far",
        "executor = \"remote\"",
        "--remote-executor",
    ]);
}

#[test]
fn an_executor_that_does_not_answer_is_an_error_before_anything_runs() {
    let project = Project::new(
        r#"
[stages.here]
kind = "command"
executor = "local"
run = ["sh", "-c", "echo here >> runs.log; echo x > {outputs.out}"]
outputs = { out = "out/here.txt" }

[stages.far]
kind = "command"
run = ["sh", "-c", "echo far >> runs.log; echo y > {outputs.out}"]
outputs = { out = "out/far.txt" }
"#,
    );
    // Nothing listens on port 1 of 127.0.0.1.
    let args = [
        "--remote-executor",
        "grpc://127.0.0.1:1",
        "--remote-timeout",
        "5",
    ];
    // A dry run says where each stage would run, without contacting the farm.
    let dry = project.run(&["build", "-n", "--remote-executor", "grpc://127.0.0.1:1"]);
    dry.assert_ok();
    assert!(
        dry.stderr.contains("would run far [remote]"),
        "{}",
        dry.stderr
    );
    assert!(dry.stderr.contains("would run here: "), "{}", dry.stderr);
    project
        .build(&args)
        .assert_error(&["the remote executor grpc://127.0.0.1:1 cannot be used"]);
    assert_eq!(project.logged_runs(), 0, "nothing ran");
    // With every stage kept here, the executor is not contacted.
    let local = Project::new(
        "[stages.here]\nkind = \"command\"\nexecutor = \"local\"\nrun = [\"sh\", \"-c\", \"echo x > {outputs.out}\"]\noutputs = { out = \"out/here.txt\" }\n",
    );
    local.build(&args).assert_ok();
    assert!(local.exists("out/here.txt"));
}

/// A pipeline of `count` independent small stages (each reads `seed.txt`, so a new seed
/// makes every action new to the farm's action cache), each writing `bytes` bytes.
fn bench_pipeline(count: usize, bytes: u64) -> String {
    (0..count)
        .map(|i| {
            format!(
                "[stages.s{i}]\nkind = \"command\"\n\
                 run = [\"sh\", \"-c\", \"cat {{inputs.seed}} > {{outputs.out}}; head -c {bytes} /dev/urandom >> {{outputs.out}}\"]\n\
                 inputs = {{ seed = \"seed.txt\" }}\noutputs = {{ out = \"out/s{i}.bin\" }}\n\n"
            )
        })
        .collect()
}

/// Wall time of one `pochi build --no-cache` of `project` after a new seed, and the mean
/// milliseconds of each remote phase (pochi's debug log: upload, queued, executing,
/// download).
fn timed_build(project: &Project, args: &[&str], round: usize) -> (Duration, String) {
    project.write("seed.txt", &format!("{round} {:?}\n", Instant::now()));
    let mut all = vec!["build", "--no-cache"];
    all.extend_from_slice(args);
    let started = Instant::now();
    let run = project.run_env(&all, &[("POCHI_LOG", "pochi::driver::remote=debug")]);
    let took = started.elapsed();
    run.assert_ok();
    (took, mean_phases(&run.stderr))
}

/// `Uploading=A Queued=B Executing=C Downloading=D` averaged over the stages' lines.
fn mean_phases(log: &str) -> String {
    let mut sums: Vec<(String, f64)> = Vec::new();
    let mut lines: f64 = 0.0;
    for line in log.lines().filter(|l| l.contains("remote phases of")) {
        lines += 1.0;
        for pair in line.split_whitespace().filter(|w| w.contains('=')) {
            let (name, value) = pair.split_once('=').unwrap();
            let value: f64 = value.parse().unwrap_or(0.0);
            match sums.iter_mut().find(|(n, _)| n == name) {
                Some((_, sum)) => *sum += value,
                None => sums.push((name.to_string(), value)),
            }
        }
    }
    sums.iter()
        .map(|(name, sum)| format!("{name}={:.0}", sum / lines.max(1.0)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The benchmark of BENCHMARKS.md §1f (`bench/remote_exec_overhead.sh`): the time remote
/// execution adds per action on loopback (BuildGrid + one STAND-IN worker, both on this
/// machine), one action at a time, against the same stages run here one at a time in the
/// same run; and the same for one stage with a 250 MB output.
#[test]
#[ignore = "benchmark: run by bench/remote_exec_overhead.sh"]
fn bench_remote_execution_overhead() {
    let rounds: usize = std::env::var("POCHI_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let server = BuildGridExecution::start(&ExecutionConfig::default());
    for (label, count, bytes) in [("small", 10, 100u64), ("250MB", 1, 250_000_000)] {
        let project = Project::new(&bench_pipeline(count, bytes));
        let (_worker, dir) = start_worker(&server, &project, "bench-worker", &[]);
        let url = server.url();
        let remote_args = [
            "-j",
            "1",
            "--remote-jobs",
            "1",
            "--remote-executor",
            url.as_str(),
            "--remote-toolchain-dir",
            dir.as_str(),
        ];
        timed_build(&project, &remote_args, 0);
        println!("case,round,stages,local_s,remote_s,overhead_per_action_ms,mean_phases_ms");
        for round in 1..=rounds {
            let (local, _) = timed_build(&project, &["-j", "1"], round * 2);
            let (remote, phases) = timed_build(&project, &remote_args, round * 2 + 1);
            let per_action = (remote.as_secs_f64() - local.as_secs_f64()) / count as f64 * 1000.0;
            println!(
                "{label},{round},{count},{:.3},{:.3},{per_action:.0},{phases}",
                local.as_secs_f64(),
                remote.as_secs_f64()
            );
        }
    }
}

/// Issue 22 (1): a HOSTILE worker (the stand-in with `--hostile-tree-into`) answers with an
/// output tree whose links chain out of the output: the stage fails saying why, nothing is
/// written outside its output, nothing is published.
#[test]
fn a_worker_sending_a_hostile_tree_fails_the_stage_and_writes_nothing_outside() {
    use crate::common::hostile::planted_in;
    let server = BuildGridExecution::start(&ExecutionConfig::default());
    let project = Project::new(
        r#"
[stages.tree]
kind = "command"
run = ["sh", "-c", "mkdir -p {outputs.dir}/d && echo made > {outputs.dir}/d/made.txt"]
outputs = { dir = "out/tree" }
"#,
    );
    let victim = tempfile::tempdir().unwrap();
    let victim_arg = victim.path().to_str().unwrap();
    let (_worker, dir) = start_worker(
        &server,
        &project,
        "hostile-worker",
        &["--hostile-tree-into", victim_arg],
    );
    let url = server.url();
    // A queue bound, so that a stage no worker takes fails the test in minutes, not ten.
    let run = project.run(&[
        "build",
        "--json",
        "--remote-executor",
        &url,
        "--remote-toolchain-dir",
        &dir,
        "--remote-queue-timeout",
        "120",
    ]);
    assert_eq!(planted_in(victim.path()), Vec::<String>::new());
    run.assert_error(&["stage `tree` failed", "`d` is listed twice"]);
    assert!(!project.exists("out/tree"), "nothing is published");
}
