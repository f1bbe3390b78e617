//! Remote execution in builds (`pochi build --remote-executor`), against a real BuildGrid
//! scheduler (Execution on PostgreSQL, both started by the harness on 127.0.0.1) with
//! STAND-IN WORKERS (`tests/servers/standin_worker.py`, test doubles of a farm's workers:
//! no real REAPI worker installs here). The engines are built by pochi's TensorRT worker
//! against the TensorRT STAND-IN (`tests/fixtures/fake_tensorrt`), on the workers.
//!
//! The workers run on this machine, so they find the managed toolchain where this machine
//! keeps it (`--remote-toolchain-dir` names it, as a farm's admin would name the image's).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::common::servers::{BuildGridExecution, ExecutionConfig, StandinWorker};
use crate::common::{Project, Run, summary_stage as stage};
use serde_json::Value;

const RANDOM_INIT: &str = include_str!("../../pipelines/scripts/random_init_checkpoint.py");

/// Where a worker waits for its first lease, and how long a test waits for one.
const LEASE_WAIT: Duration = Duration::from_secs(120);

/// The platform a stand-in worker offers: this machine's OS and ISA, the toolchain's
/// property, and `gpu` when given.
fn worker_properties(project: &Project, gpu: Option<&str>) -> Vec<(String, String)> {
    let mut properties = vec![
        ("OSFamily".to_string(), std::env::consts::OS.to_string()),
        ("ISA".to_string(), std::env::consts::ARCH.to_string()),
        ("pochi-toolchain".to_string(), toolchain_property(project)),
    ];
    if let Some(gpu) = gpu {
        properties.push(("gpu".to_string(), gpu.to_string()));
    }
    properties
}

/// `pochi toolchain info --json`'s `remote_platform.pochi-toolchain` (creating the
/// toolchain first).
fn toolchain_property(project: &Project) -> String {
    project.toolchain_python();
    let run = project.run(&["toolchain", "info", "--json"]);
    run.assert_ok();
    let info: Value = serde_json::from_str(&run.stdout).expect("toolchain info JSON");
    info["remote_platform"]["pochi-toolchain"]
        .as_str()
        .expect("the toolchain's platform property")
        .to_string()
}

fn start_worker(
    server: &BuildGridExecution,
    name: &str,
    properties: &[(String, String)],
) -> StandinWorker {
    let pairs: Vec<(&str, &str)> = properties
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    server.worker(name, &pairs)
}

/// This machine's pochi cache directory (the parent of `v1/toolchains/...`), which the
/// stand-in workers use as theirs.
fn toolchain_dir(project: &Project) -> String {
    let python = project.toolchain_python();
    let mut dir: PathBuf = python.clone();
    while dir.file_name().is_some_and(|n| n != "v1") {
        dir.pop();
    }
    dir.pop();
    assert!(
        python.starts_with(dir.join("v1").join("toolchains")),
        "{python:?}"
    );
    dir.to_string_lossy().into_owned()
}

/// `pochi build --json --remote-executor URL ...` with the TensorRT stand-in.
fn build_remote(project: &Project, server: &BuildGridExecution, extra: &[&str]) -> Run {
    let dir = toolchain_dir(project);
    let url = server.url();
    // A bound, so that a stage no worker takes fails the test in minutes, not ten.
    let mut args = vec![
        "build",
        "--json",
        "--remote-executor",
        &url,
        "--remote-toolchain-dir",
        &dir,
    ];
    if !extra.contains(&"--remote-queue-timeout") {
        args.extend(["--remote-queue-timeout", "120"]);
    }
    args.extend_from_slice(extra);
    let standin = crate::common::tensorrt_standin_dir();
    project.run_env(&args, &[("POCHI_TEST_TENSORRT_STANDIN", standin.as_str())])
}

/// No blob the client uploaded to `server` (Commands, Actions, Directories, request files;
/// the server's CAS holds nothing else of this test) names the project's absolute path:
/// a worker sees root-relative paths only. A planted blob that names it must be found, so
/// the scan is checked to see.
fn assert_no_blob_names_the_project(server: &BuildGridExecution, project: &Project) {
    let needles: Vec<String> = [project.path("."), project.path(".").canonicalize().unwrap()]
        .iter()
        .map(|path| path.to_string_lossy().trim_end_matches("/.").to_string())
        .collect();
    let naming = |needle: &str| -> Vec<String> {
        crate::common::files_under(&server.storage_dir())
            .into_iter()
            .filter(|blob| {
                let bytes = std::fs::read(server.storage_dir().join(blob)).unwrap_or_default();
                bytes
                    .windows(needle.len())
                    .any(|window| window == needle.as_bytes())
            })
            .collect()
    };
    for needle in &needles {
        let found = naming(needle);
        assert!(found.is_empty(), "blobs naming {needle}: {found:?}");
    }
    let planted = server.storage_dir().join("planted-by-the-test");
    std::fs::write(&planted, format!("cwd={}", needles[0])).unwrap();
    let seen = naming(&needles[0]);
    std::fs::remove_file(&planted).unwrap();
    assert_eq!(
        seen,
        ["planted-by-the-test"],
        "the scan sees a planted blob"
    );
}

fn leases_started(worker: &StandinWorker) -> usize {
    worker.log_text().matches(" started").count()
}

/// A checkpoint and its export, here (`executor = "local"`), and one engine per GPU
/// model, remotely.
const ENGINES: &str = r#"
[stages.weights]
kind = "command"
executor = "local"
run = ["{python}", "{inputs.script}", "--model", "torchvision.models:resnet18", "--arg", "num_classes=10", "--out", "{outputs.checkpoint}"]
inputs = { script = "scripts/random_init_checkpoint.py" }
outputs = { checkpoint = "ckpt/weights.pth" }

[stages.onnx]
kind = "export"
executor = "local"
checkpoint = "@weights"
model = "torchvision.models:resnet18"
model_args = { num_classes = 10 }
input_shape = [3, 32, 32]

[stages.engine]
kind = "engine"
executor = "remote"
matrix = { gpu = ["t4", "a100"] }
gpu = "{matrix.gpu}"
onnx = "@onnx"

[stages.digest]
kind = "command"
run = ["sh", "-c", "sha256sum {inputs.a} {inputs.b} | cut -c1-64 > {outputs.out}"]
inputs = { a = "@engine-t4", b = "@engine-a100" }
outputs = { out = "out/engines.sha256" }
"#;

#[test]
fn engines_run_on_the_worker_of_their_gpu_the_export_here_and_a_rebuild_restores() {
    let server = BuildGridExecution::start(&ExecutionConfig::default());
    let project = Project::new(ENGINES);
    project.write("scripts/random_init_checkpoint.py", RANDOM_INIT);
    let t4 = start_worker(
        &server,
        "t4-worker",
        &worker_properties(&project, Some("Tesla T4")),
    );
    let a100 = start_worker(
        &server,
        "a100-worker",
        &worker_properties(&project, Some("NVIDIA A100-SXM4-40GB")),
    );
    let run = build_remote(&project, &server, &[]);
    run.assert_ok();
    let summary = run.summary();
    for (stage_name, worker) in [("engine-t4", "t4-worker"), ("engine-a100", "a100-worker")] {
        let ran = &stage(&summary, stage_name)["ran_remotely"];
        assert_eq!(ran["worker"], worker, "{stage_name}: {summary}");
        assert_eq!(ran["executor"], server.url().as_str());
    }
    for local in ["weights", "onnx"] {
        let entry = stage(&summary, local);
        assert_eq!(entry["status"], "ran", "{entry}");
        assert!(
            entry.get("ran_remotely").is_none(),
            "{local} ran here: {entry}"
        );
    }
    // The digest stage (`executor = "auto"`, a plain command) runs remotely too, on
    // whichever worker: both offer its platform.
    assert!(stage(&summary, "digest")["ran_remotely"]["worker"].is_string());
    // One engine each, never the other's: two leases each (engine + maybe the digest).
    let (on_t4, on_a100) = (leases_started(&t4), leases_started(&a100));
    assert_eq!(
        on_t4 + on_a100,
        3,
        "t4:\n{}\na100:\n{}",
        t4.log_text(),
        a100.log_text()
    );
    assert!(on_t4 >= 1 && on_a100 >= 1);
    // The outputs are complete and verified: the manifest says what was built.
    for gpu in ["t4", "a100"] {
        let path = format!("build/pipeline/engine-{gpu}.manifest.json");
        let manifest: Value =
            serde_json::from_str(&project.read(&path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(manifest["gpu"]["name"], "Fake GPU (stand-in)", "{manifest}");
        assert!(project.exists(&format!("build/pipeline/engine-{gpu}.engine")));
    }
    let engines_digest = project.read("out/engines.sha256");

    // Built on the farm, up to date here: this machine has neither GPU, and needs none to
    // say so (status) or to build nothing (a build without the executor).
    let status = project.run(&["status", "--json"]);
    status.assert_ok();
    let status: Value = serde_json::from_str(&status.stdout).expect("status JSON");
    for entry in status["stages"].as_array().unwrap() {
        assert_eq!(entry["status"], "up_to_date", "{entry}");
    }
    let here = project.build(&[]);
    here.assert_ok();
    assert!(here.ran().is_empty(), "{:?}", here.ran());
    assert!(here.stages("unavailable").is_empty(), "{}", here.stdout);

    // Outputs gone: a second build restores every stage from the cache, no worker runs.
    std::fs::remove_dir_all(project.path("build")).unwrap();
    std::fs::remove_dir_all(project.path("out")).unwrap();
    let again = build_remote(&project, &server, &[]);
    again.assert_ok();
    assert!(again.ran().is_empty(), "ran again: {:?}", again.ran());
    assert_eq!(leases_started(&t4) + leases_started(&a100), 3);
    assert_eq!(project.read("out/engines.sha256"), engines_digest);
    assert_no_blob_names_the_project(&server, &project);
}

#[test]
fn a_remote_command_writes_the_bytes_a_local_run_writes() {
    let server = BuildGridExecution::start(&ExecutionConfig::default());
    let pipeline = r#"
[stages.transform]
kind = "command"
run = ["sh", "-c", "mkdir -p {outputs.dir}/sub && tr a-z A-Z < {inputs.text} > {outputs.dir}/sub/upper.txt && cp {inputs.text} {outputs.single}"]
inputs = { text = "data/words.txt" }
outputs = { dir = "out/tree", single = "out/copy.txt" }

[stages.clock]
kind = "command"
cache = false
run = ["sh", "-c", "date +%s > {outputs.out}"]
outputs = { out = "out/clock.txt" }
"#;
    let remote = Project::new(pipeline);
    let local = Project::new(pipeline);
    for project in [&remote, &local] {
        project.write("data/words.txt", "remote execution\nbyte for byte\n");
    }
    let worker = start_worker(&server, "cpu-worker", &worker_properties(&remote, None));
    let run = build_remote(&remote, &server, &[]);
    run.assert_ok();
    assert_eq!(
        stage(&run.summary(), "transform")["ran_remotely"]["worker"],
        "cpu-worker"
    );
    local.build(&[]).assert_ok();
    for output in ["out/tree/sub/upper.txt", "out/copy.txt"] {
        assert_eq!(
            std::fs::read(remote.path(output)).unwrap(),
            std::fs::read(local.path(output)).unwrap(),
            "{output}"
        );
    }
    assert_eq!(
        remote.read("out/tree/sub/upper.txt"),
        "REMOTE EXECUTION\nBYTE FOR BYTE\n"
    );
    // `cache = false` (it reads what pochi cannot see) keeps a stage here under `auto`.
    let summary = run.summary();
    let clock = stage(&summary, "clock");
    assert_eq!(clock["status"], "ran");
    assert!(clock.get("ran_remotely").is_none(), "{clock}");

    // A clone with an empty local cache: the executor's URL is also the shared cache, so
    // the remote stage is restored from it and no worker runs it again.
    let clone = Project::new(pipeline);
    clone.write("data/words.txt", "remote execution\nbyte for byte\n");
    let leases = leases_started(&worker);
    let restored = build_remote(&clone, &server, &[]);
    restored.assert_ok();
    assert_eq!(
        restored.summary()["counts"]["restored_remote"],
        1,
        "{}",
        restored.stdout
    );
    assert_eq!(leases_started(&worker), leases);
    assert_eq!(
        std::fs::read(clone.path("out/copy.txt")).unwrap(),
        std::fs::read(remote.path("out/copy.txt")).unwrap()
    );
}

#[test]
fn a_remote_failure_names_the_worker_and_shows_its_stderr() {
    let server = BuildGridExecution::start(&ExecutionConfig::default());
    let project = Project::new(
        r#"
[stages.broken]
kind = "command"
run = ["sh", "-c", "echo partial > {outputs.out}; echo 'something broke on the worker' >&2; exit 3"]
outputs = { out = "out/broken.txt" }
"#,
    );
    let _worker = start_worker(&server, "cpu-worker", &worker_properties(&project, None));
    let run = build_remote(&project, &server, &[]);
    run.assert_error(&[
        "stage `broken` failed",
        "remote worker `cpu-worker` with exit code 3",
        "something broke on the worker",
        ".pochi/v1/pipeline/logs/broken.log",
    ]);
    assert!(
        project
            .read(".pochi/v1/pipeline/logs/broken.log")
            .contains("something broke")
    );
    assert!(
        !project.exists("out/broken.txt"),
        "nothing partial is published"
    );
}

#[test]
fn a_gpu_no_worker_offers_fails_after_the_queue_timeout_naming_the_properties() {
    let server = BuildGridExecution::start(&ExecutionConfig::default());
    let pipeline = r#"
[stages.onnx_copy]
kind = "command"
executor = "remote"
device = "cuda"
gpu = "h100"
run = ["sh", "-c", "echo never > {outputs.out}"]
outputs = { out = "out/never.txt" }
"#;
    let project = Project::new(pipeline);
    let _t4 = start_worker(
        &server,
        "t4-only",
        &worker_properties(&project, Some("Tesla T4")),
    );
    let started = Instant::now();
    let run = build_remote(&project, &server, &["--remote-queue-timeout", "4"]);
    let took = started.elapsed();
    run.assert_error(&[
        "onnx_copy",
        "no worker offers",
        "gpu=NVIDIA H100 80GB HBM3",
        "help: check that the farm has a worker",
    ]);
    assert!(took < Duration::from_secs(90), "took {took:?}");
    assert!(!project.exists("out/never.txt"));
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
fn a_remote_worker_kind_failure_says_what_its_answer_says() {
    let server = BuildGridExecution::start(&ExecutionConfig::default());
    let project = Project::new(
        "[stages.corrupt]\nkind = \"export\"\nexecutor = \"remote\"\ncheckpoint = \"corrupt.pth\"\nmodel = \"torchvision.models:resnet18\"\ninput_shape = [3, 16, 16]\n",
    );
    project.write("corrupt.pth", "this is not a checkpoint\n");
    let _worker = start_worker(&server, "cpu-worker", &worker_properties(&project, None));
    let run = build_remote(&project, &server, &[]);
    // The export worker's own error (from its answer file, fetched although the command
    // failed), not only an exit code.
    run.assert_error(&[
        "stage `corrupt` failed",
        "cannot read the checkpoint `corrupt.pth`",
        "help: give a state_dict saved with torch.save",
    ]);
    assert!(!project.exists("build/pipeline/corrupt.onnx"));
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

#[test]
fn interrupting_a_remote_stage_exits_130_cancels_it_and_publishes_nothing() {
    let server = BuildGridExecution::start(&ExecutionConfig::default());
    let project = Project::new(
        r#"
[stages.slow]
kind = "command"
run = ["sh", "-c", "sleep 60; echo late > {outputs.out}"]
outputs = { out = "out/late.txt" }
"#,
    );
    let mut worker = start_worker(&server, "slow-worker", &worker_properties(&project, None));
    let mut child = spawn_remote_build(&project, &server);
    assert!(
        worker.wait_for_log(" started", LEASE_WAIT),
        "no lease:\n{}",
        worker.log_text()
    );
    let interrupted = Instant::now();
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let output = wait_with_deadline(&mut child, Duration::from_secs(30));
    assert_eq!(output.status.code(), Some(130), "{output:?}");
    assert!(interrupted.elapsed() < Duration::from_secs(30));
    assert!(
        worker.wait_for_log("cancelled", Duration::from_secs(30)),
        "the lease was not cancelled:\n{}",
        worker.log_text()
    );
    assert!(!project.exists("out/late.txt"));
}

#[test]
fn a_worker_killed_mid_action_leaves_no_partial_output() {
    let server = BuildGridExecution::start(&ExecutionConfig::default());
    let project = Project::new(
        r#"
[stages.long]
kind = "command"
run = ["sh", "-c", "head -c 1000 /dev/zero > {outputs.out}; sleep 4; head -c 1000 /dev/zero >> {outputs.out}"]
outputs = { out = "out/whole.bin" }
"#,
    );
    let properties = worker_properties(&project, None);
    let mut first = start_worker(&server, "dying-worker", &properties);
    let child = spawn_remote_build(&project, &server);
    assert!(
        first.wait_for_log(" started", LEASE_WAIT),
        "{}",
        first.log_text()
    );
    first.kill();
    let _second = start_worker(&server, "second-worker", &properties);
    let mut child = child;
    let output = wait_with_deadline(&mut child, Duration::from_secs(180));
    let run = Run::from_output(output);
    eprintln!(
        "after the worker died, pochi exited {:?}:\n{}",
        run.code, run.stderr
    );
    if run.code == Some(0) {
        assert_eq!(
            std::fs::read(project.path("out/whole.bin")).unwrap().len(),
            2000
        );
        assert_eq!(
            stage(&run.summary(), "long")["ran_remotely"]["worker"],
            "second-worker"
        );
    } else {
        assert!(run.stderr.contains("long"), "{}", run.stderr);
        assert!(!project.exists("out/whole.bin"));
    }
}

/// `pochi build --json --remote-executor URL` started in the background, its output piped.
fn spawn_remote_build(project: &Project, server: &BuildGridExecution) -> std::process::Child {
    let dir = toolchain_dir(project);
    let url = server.url();
    project
        .command(&[
            "build",
            "--json",
            "--remote-executor",
            &url,
            "--remote-toolchain-dir",
            &dir,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn pochi")
}

/// Waits for a child at most `limit` (then kills it and fails the test).
fn wait_with_deadline(child: &mut std::process::Child, limit: Duration) -> std::process::Output {
    let started = Instant::now();
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("pochi did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    use std::io::Read;
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_end(&mut stdout);
    }
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_end(&mut stderr);
    }
    std::process::Output {
        status: child.wait().expect("wait"),
        stdout,
        stderr,
    }
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
        let _worker = start_worker(&server, "bench-worker", &worker_properties(&project, None));
        let dir = toolchain_dir(&project);
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

#[test]
fn stages_pochi_runs_itself_run_remotely_from_the_uploaded_binary() {
    let server = BuildGridExecution::start(&ExecutionConfig::default());
    let pipeline = r#"
[pipeline]
name = "p"

[stages.calib]
kind = "dataset"
synthetic = { shape = [3, 8, 8], count = 4, seed = 7 }

[stages.subset]
kind = "dataset"
source = "@calib"
samples = 2
transform = [{ channel_order = "bgr" }]
"#;
    let remote = Project::new(pipeline);
    let local = Project::new(pipeline);
    let worker = start_worker(&server, "cpu-worker", &worker_properties(&remote, None));
    let run = build_remote(&remote, &server, &[]);
    run.assert_ok();
    let summary = run.summary();
    for name in ["calib", "subset"] {
        assert_eq!(
            stage(&summary, name)["ran_remotely"]["worker"],
            "cpu-worker",
            "{summary}"
        );
    }
    assert_eq!(leases_started(&worker), 2);
    local.build(&[]).assert_ok();
    for output in ["build/p/calib/calib.npy", "build/p/subset/subset.npy"] {
        assert_eq!(
            std::fs::read(remote.path(output)).unwrap(),
            std::fs::read(local.path(output)).unwrap(),
            "{output}"
        );
    }
    // The binary went to the server once, by digest, as an input of both actions.
    let pochi = crate::common::pochi_bin();
    let output = std::process::Command::new("sha256sum")
        .arg(&pochi)
        .output()
        .expect("sha256sum");
    let digest = String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    assert_eq!(
        std::fs::read(server.blob_path(&digest)).unwrap(),
        std::fs::read(&pochi).unwrap()
    );
    assert_no_blob_names_the_project(&server, &remote);
}

/// A report stage over two small ONNX models, as a project that runs it remotely and one
/// that runs it here (the models made by `tests/fixtures/report_models.py` in each).
pub(crate) fn report_projects() -> (Project, Project) {
    let pipeline = r#"
[stages.cls]
kind = "report"
executor = "remote"
models = ["ident.onnx", "linear.onnx"]
data = "data.npy"
labels = "labels.npy"
reference = "ident.onnx"
task = "classification"
iterations = 5
min_duration = "0s"
threads = 1
batch = 2
"#;
    let models = include_str!("../fixtures/report_models.py");
    let remote = Project::new(pipeline);
    let local = Project::new(&pipeline.replace("executor = \"remote\"\n", ""));
    for project in [&remote, &local] {
        project.write("make_models.py", models);
        project.python(&["make_models.py", "."]);
    }
    (remote, local)
}

#[test]
fn a_report_runs_remotely_with_the_workers_onnx_runtime_and_agrees_with_a_local_one() {
    let server = BuildGridExecution::start(&ExecutionConfig::default());
    let (remote, local) = report_projects();
    let _worker = start_worker(&server, "cpu-worker", &worker_properties(&remote, None));
    let run = build_remote(&remote, &server, &[]);
    run.assert_ok();
    assert_eq!(
        stage(&run.summary(), "cls")["ran_remotely"]["worker"],
        "cpu-worker"
    );
    local.build(&[]).assert_ok();
    // Predictions and metrics are the same bytes; timings differ run to run.
    for output in [
        "build/pipeline/cls/predictions.csv",
        "build/pipeline/cls/classification_report.csv",
    ] {
        assert_eq!(remote.read(output), local.read(output), "{output}");
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
    let properties = worker_properties(&project, None);
    let pairs: Vec<(&str, &str)> = properties
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let _worker = server.worker_with(
        "hostile-worker",
        &pairs,
        &["--hostile-tree-into", victim_arg],
    );
    let run = build_remote(&project, &server, &[]);
    assert_eq!(planted_in(victim.path()), Vec::<String>::new());
    run.assert_error(&["stage `tree` failed", "`d` is listed twice"]);
    assert!(!project.exists("out/tree"), "nothing is published");
}
