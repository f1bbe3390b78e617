//! Remote execution and remote caching against REAL REAPI implementations (issue 21):
//! Debian's buildbox (`tests/servers/install_buildbox.py`, `common::buildbox`), not the
//! stand-in worker. `pochi build --remote-executor` runs stages on buildbox-worker +
//! buildbox-run-hosttools polling the harness's BuildGrid, and against buildbox-casd with
//! `--buildbox-run`, a second, independent server with CAS, action cache and Execution.
//! The stand-in worker stays only where no real worker can do the job: the headers of
//! `remote_execution.rs`, `remote_execute.rs` and `remote_servers.rs` say which tests and
//! why (`remote_tls.rs` has none left).
//!
//! One BuildGrid with three workers (`farm()`) serves the tests that leave it as it is; the
//! tests that kill a worker or cancel a job use a second BuildGrid (`scratch()`) and
//! workers of their own, whose GPU no other stage asks for; the restart test has its own.

use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::common::buildbox::{BuildboxCasd, BuildboxWorker, EXECUTING, JOB_STARTED, restart_farm};
use crate::common::servers::{
    BuildGridExecution, ExecutionConfig, NginxCache, POCHI_PLATFORM_KEYS, alive, wait_for_file,
};
use crate::common::{Project, Run, summary_stage as stage};

/// How long one remote build may take before the test calls it a hang.
const BUILD_LIMIT: Duration = Duration::from_secs(150);
/// The model names pochi's `gpu` aliases resolve to (nvidia-smi's names).
const T4: &str = "Tesla T4";
const A100: &str = "NVIDIA A100-SXM4-40GB";

/// The shared farm: BuildGrid (with `pool` as a matched key besides pochi's) and three
/// real workers offering this machine's managed toolchain: a CPU one, a T4 one and an A100
/// one in pool `blue`.
struct Farm {
    server: BuildGridExecution,
    workers: Vec<BuildboxWorker>,
    /// `--remote-toolchain-dir`: the workers run here, so their toolchains are this
    /// machine's.
    toolchain_dir: String,
}

fn farm() -> &'static Farm {
    static FARM: OnceLock<Farm> = OnceLock::new();
    FARM.get_or_init(|| {
        let mut match_keys: Vec<String> =
            POCHI_PLATFORM_KEYS.iter().map(|k| k.to_string()).collect();
        match_keys.push("pool".into());
        let server = BuildGridExecution::start(&ExecutionConfig {
            match_keys,
            ..ExecutionConfig::default()
        });
        let (property, toolchain_dir) = toolchain(&Project::new(""));
        let python = ("pochi-toolchain", property.as_str());
        let workers = vec![
            BuildboxWorker::start(&server, "buildbox-cpu", &host(&[python]), 2),
            BuildboxWorker::start(&server, "buildbox-t4", &host(&[python, ("gpu", T4)]), 1),
            BuildboxWorker::start(
                &server,
                "buildbox-a100",
                &host(&[python, ("gpu", A100), ("pool", "blue")]),
                1,
            ),
        ];
        Farm {
            server,
            workers,
            toolchain_dir,
        }
    })
}

impl Farm {
    fn worker(&self, name: &str) -> &BuildboxWorker {
        self.workers
            .iter()
            .find(|w| w.name == name)
            .unwrap_or_else(|| panic!("no buildbox worker named {name:?}"))
    }

    /// How many commands the farm's workers ran whose argv contains `needle`.
    fn runs(&self, needle: &str) -> usize {
        self.workers.iter().map(|w| w.runs(needle)).sum()
    }
}

/// A BuildGrid for the tests that kill workers or cancel jobs: their stages ask for GPUs
/// that only their own workers offer, so nothing else runs there.
fn scratch() -> &'static BuildGridExecution {
    static SCRATCH: OnceLock<BuildGridExecution> = OnceLock::new();
    SCRATCH.get_or_init(|| BuildGridExecution::start(&ExecutionConfig::default()))
}

/// This machine's OS and ISA (what every pochi Action asks for) plus `extra`.
fn host<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut platform = vec![
        ("OSFamily", std::env::consts::OS),
        ("ISA", std::env::consts::ARCH),
    ];
    platform.extend_from_slice(extra);
    platform
}

/// `build --json --remote-executor URL` with a queue bound (a stage no worker takes fails)
/// unless `extra` gives its own.
fn remote_args<'a>(url: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["build", "--json", "--remote-executor", url];
    if !extra.contains(&"--remote-queue-timeout") {
        args.extend(["--remote-queue-timeout", "90"]);
    }
    args.extend_from_slice(extra);
    args
}

/// `pochi build --json --remote-executor URL`, bounded (a hang fails the test).
fn build_remote(project: &Project, url: &str, extra: &[&str]) -> Run {
    project.run_within(&remote_args(url, extra), BUILD_LIMIT)
}

/// `build_remote` with the TensorRT STAND-IN (a test double of TensorRT) for engine stages.
fn build_remote_with_standin(project: &Project, url: &str, extra: &[&str]) -> Run {
    let child = project
        .command(&remote_args(url, extra))
        .env(
            "POCHI_TEST_TENSORRT_STANDIN",
            crate::common::tensorrt_standin_dir(),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pochi");
    finish_within(child, BUILD_LIMIT)
}

/// The same build started in the background, its output piped.
fn spawn_remote_build(project: &Project, url: &str) -> Child {
    project
        .command(&remote_args(url, &[]))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pochi")
}

/// Waits for a background pochi at most `limit` (then kills it and fails the test).
fn finish_within(mut child: Child, limit: Duration) -> Run {
    let deadline = Instant::now() + limit;
    while matches!(child.try_wait(), Ok(None)) {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("pochi did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Run::from_output(child.wait_with_output().expect("pochi output"))
}

fn same_bytes(a: &Project, b: &Project, output: &str) {
    let read = |p: &Project| {
        std::fs::read(p.path(output)).unwrap_or_else(|e| panic!("cannot read {output}: {e}"))
    };
    assert_eq!(read(a), read(b), "{output} differs");
}

/// A command stage that must run remotely on a worker with GPU `gpu` (a pochi alias),
/// with `extra` TOML lines (`platform = ...`), running `script` with one output `out`.
fn gpu_stage(name: &str, gpu: &str, extra: &str, script: &str, out: &str) -> String {
    format!(
        "[stages.{name}]\nkind = \"command\"\nexecutor = \"remote\"\ndevice = \"cuda\"\n\
         gpu = \"{gpu}\"\n{extra}run = [\"sh\", \"-c\", {script:?}]\noutputs = {{ out = \"{out}\" }}\n\n"
    )
}

/// A stage with a directory output (a nested file) and a file output.
const TRANSFORM: &str = r#"
[stages.transform]
kind = "command"
executor = "remote"
run = ["sh", "-c", "echo transform >> runs.log; mkdir -p {outputs.dir}/sub && tr a-z A-Z < {inputs.text} > {outputs.dir}/sub/upper.txt && cp {inputs.text} {outputs.single}"]
inputs = { text = "data/words.txt" }
outputs = { dir = "out/tree", single = "out/copy.txt" }
"#;
const WORDS: &str = "a real worker\nbyte for byte\n";
const TRANSFORM_OUTPUTS: [&str; 2] = ["out/tree/sub/upper.txt", "out/copy.txt"];

/// A project of `pipeline` with `words` as the transform's input.
fn transform_project(pipeline: &str, words: &str) -> Project {
    let project = Project::new(pipeline);
    project.write("data/words.txt", words);
    project
}

/// A fresh clone of `built` (the transform `pipeline` over `words`), built on the farm with
/// `extra`: the farm answers from its action cache (`cached`, no worker runs: `runs` is
/// unchanged) and the outputs are `built`'s bytes.
fn farm_answers_a_clone(
    built: &Project,
    (pipeline, words): (&str, &str),
    extra: &[&str],
    runs: &dyn Fn() -> usize,
) {
    let before = runs();
    let clone = transform_project(pipeline, words);
    assert_ne!(clone.path("."), built.path("."));
    let run = build_remote(&clone, &farm().server.url(), extra);
    run.assert_ok();
    let summary = run.summary();
    assert_eq!(
        stage(&summary, "transform")["ran_remotely"]["cached"],
        true,
        "{summary}"
    );
    assert_eq!(runs(), before, "a worker ran it for the clone");
    for output in TRANSFORM_OUTPUTS {
        same_bytes(built, &clone, output);
    }
}

/// A fresh clone of the transform (`executor = "auto"`), built with `--remote-cache URL`
/// alone: the stage is restored from the server's entry for its Action; nothing runs here.
fn cache_only_clone_restores(pipeline: &str, words: &str, url: &str) -> Project {
    let reader = transform_project(&pipeline.replace("executor = \"remote\"\n", ""), words);
    let run = reader.run_within(&["build", "--json", "--remote-cache", url], BUILD_LIMIT);
    run.assert_ok();
    assert_eq!(run.count("restored_remote"), 1, "{}", run.stdout);
    assert_eq!(reader.logged_runs(), 0, "it ran here");
    reader
}

/// A stage that reads what pochi cannot see (`cache = false`): it stays here under
/// `executor = "auto"`, even in a build with an executor.
const CLOCK: &str = r#"
[stages.clock]
kind = "command"
cache = false
run = ["sh", "-c", "date +%s > {outputs.out}"]
outputs = { out = "out/clock.txt" }
"#;

#[test]
fn a_command_stage_on_a_buildbox_worker_writes_the_bytes_a_local_build_writes() {
    let farm = farm();
    let pipeline = format!("{TRANSFORM}{CLOCK}");
    let runs = || farm.runs("echo transform >> runs.log");
    let remote = transform_project(&pipeline, WORDS);
    let run = build_remote(&remote, &farm.server.url(), &[]);
    run.assert_ok();
    let summary = run.summary();
    let ran = &stage(&summary, "transform")["ran_remotely"];
    assert_eq!(ran["executor"], farm.server.url().as_str(), "{summary}");
    let name = ran["worker"].as_str().expect("the worker's name");
    // The worker named in the result ran the stage's argv (its log says so).
    let log = farm.worker(name).log_text();
    assert!(log.contains("tr a-z A-Z"), "{name} did not run it:\n{log}");
    assert_eq!(runs(), 1, "one worker ran it once");
    assert_eq!(
        remote.logged_runs(),
        0,
        "the command ran on the worker's side"
    );
    let clock = stage(&summary, "clock");
    assert_eq!(clock["status"], "ran", "{clock}");
    assert!(clock.get("ran_remotely").is_none(), "ran here: {clock}");
    assert!(remote.exists("out/clock.txt"));

    let local = transform_project(&TRANSFORM.replace("executor = \"remote\"\n", ""), WORDS);
    local.build(&[]).assert_ok();
    for output in TRANSFORM_OUTPUTS {
        same_bytes(&remote, &local, output);
    }
    assert_eq!(
        remote.read("out/tree/sub/upper.txt"),
        "A REAL WORKER\nBYTE FOR BYTE\n"
    );

    // A fresh clone (empty local cache) restores the stage from the farm's cache: no
    // worker runs it again (the clock runs here again, as it always does).
    let clone = transform_project(&pipeline, WORDS);
    let restored = build_remote(&clone, &farm.server.url(), &[]);
    restored.assert_ok();
    assert_eq!(restored.count("restored_remote"), 1, "{}", restored.stdout);
    assert_eq!(restored.ran(), ["clock"], "{}", restored.stdout);
    assert_eq!(runs(), 1, "a worker ran it for the clone");
    for output in TRANSFORM_OUTPUTS {
        same_bytes(&remote, &clone, output);
    }
}

#[test]
fn stages_run_on_the_buildbox_worker_of_their_declared_gpu_and_platform() {
    let farm = farm();
    let pipeline = gpu_stage(
        "on_t4",
        "t4",
        "",
        "echo routed-to-t4 > {outputs.out}",
        "out/t4.txt",
    ) + &gpu_stage(
        "on_a100",
        "a100",
        "platform = { pool = \"blue\" }\n",
        "echo routed-to-a100 > {outputs.out}",
        "out/a100.txt",
    );
    let project = Project::new(&pipeline);
    let run = build_remote(&project, &farm.server.url(), &[]);
    run.assert_ok();
    let summary = run.summary();
    for (name, worker, word, other) in [
        ("on_t4", "buildbox-t4", "routed-to-t4", "buildbox-a100"),
        ("on_a100", "buildbox-a100", "routed-to-a100", "buildbox-t4"),
    ] {
        assert_eq!(
            stage(&summary, name)["ran_remotely"]["worker"],
            worker,
            "{summary}"
        );
        assert!(farm.worker(worker).log_text().contains(word), "{worker}");
        assert!(!farm.worker(other).log_text().contains(word), "{other}");
        assert!(!farm.worker("buildbox-cpu").log_text().contains(word));
    }
    assert_eq!(project.read("out/t4.txt"), "routed-to-t4\n");
    assert_eq!(project.read("out/a100.txt"), "routed-to-a100\n");
}

#[test]
fn a_failure_on_a_buildbox_worker_names_the_worker_and_shows_its_stderr() {
    let farm = farm();
    let project = Project::new(&gpu_stage(
        "broken",
        "t4",
        "",
        "echo partial > {outputs.out}; echo 'something broke on the worker' >&2; exit 3",
        "out/broken.txt",
    ));
    let run = build_remote(&project, &farm.server.url(), &[]);
    run.assert_error(&[
        "stage `broken` failed",
        "remote worker `buildbox-t4` with exit code 3",
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
fn a_script_kinds_failure_on_a_buildbox_worker_says_what_its_answer_says() {
    let farm = farm();
    let project = Project::new(
        "[stages.corrupt]\nkind = \"export\"\nexecutor = \"remote\"\ncheckpoint = \"corrupt.pth\"\nmodel = \"torchvision.models:resnet18\"\ninput_shape = [3, 16, 16]\n",
    );
    project.write("corrupt.pth", "this is not a checkpoint\n");
    let args = ["--remote-toolchain-dir", farm.toolchain_dir.as_str()];
    let run = build_remote(&project, &farm.server.url(), &args);
    // The export script's own error (from its answer file, fetched although the command
    // failed), not only an exit code.
    run.assert_error(&[
        "stage `corrupt` failed",
        "cannot read the checkpoint `corrupt.pth`",
        "help: give a state_dict saved with torch.save",
    ]);
    // It failed on a worker of the farm, which ran it once.
    assert_eq!(farm.runs(".pochi/v1/pipeline/tmp/corrupt/"), 1);
    assert!(!project.exists("build/pipeline/corrupt.onnx"));
}

#[test]
fn a_gpu_no_buildbox_worker_offers_fails_after_the_queue_timeout_naming_the_properties() {
    // The farm's workers offer a T4, an A100 and no GPU: none takes an H100 job.
    let farm = farm();
    let project = Project::new(&gpu_stage(
        "onnx_copy",
        "h100",
        "",
        "echo never > {outputs.out}",
        "out/never.txt",
    ));
    let started = Instant::now();
    let run = build_remote(
        &project,
        &farm.server.url(),
        &["--remote-queue-timeout", "4"],
    );
    let took = started.elapsed();
    run.assert_error(&[
        "onnx_copy",
        "no worker offers",
        "gpu=NVIDIA H100 80GB HBM3",
        "help: check that the farm has a worker",
    ]);
    assert!(took < Duration::from_secs(60), "took {took:?}");
    assert!(!project.exists("out/never.txt"));
    assert_eq!(farm.runs("echo never"), 0);
}

#[test]
fn stages_pochi_runs_itself_run_on_buildbox_workers_from_the_uploaded_binary() {
    let farm = farm();
    let pipeline = r#"
[pipeline]
name = "farm-datasets"

[stages.calib]
kind = "dataset"
synthetic = { shape = [3, 8, 8], count = 4, seed = 7 }

[stages.subset]
kind = "dataset"
source = "@calib"
samples = 2
transform = [{ channel_order = "bgr" }]
"#;
    let remote = Project::new(&pipeline.replace(
        "kind = \"dataset\"\n",
        "kind = \"dataset\"\nexecutor = \"remote\"\n",
    ));
    let local = Project::new(pipeline);
    let run = build_remote(&remote, &farm.server.url(), &[]);
    run.assert_ok();
    let summary = run.summary();
    for name in ["calib", "subset"] {
        let worker = stage(&summary, name)["ran_remotely"]["worker"]
            .as_str()
            .unwrap_or_else(|| panic!("{name} ran on no worker: {summary}"));
        // That worker ran `pochi run-stage` for it, once, and no other worker did.
        let needle = format!(".pochi/v1/farm-datasets/tmp/{name}/");
        assert_eq!(farm.worker(worker).runs(&needle), 1, "{name} on {worker}");
        assert_eq!(farm.runs(&needle), 1, "{name}");
        assert!(farm.worker(worker).log_text().contains("run-stage"));
    }
    local.build(&[]).assert_ok();
    for output in [
        "build/farm-datasets/calib/calib.npy",
        "build/farm-datasets/subset/subset.npy",
    ] {
        same_bytes(&remote, &local, output);
    }
    // The binary went to the server by digest, as an input of both actions.
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
        std::fs::read(farm.server.blob_path(&digest)).unwrap(),
        std::fs::read(&pochi).unwrap()
    );
    assert_no_blob_names_the_project(&farm.server.storage_dir(), &remote);
}

/// No blob the server holds (in `storage`: Commands, Actions, Directories, request files,
/// outputs, the workers' stdout and stderr) names the project's absolute path: a worker
/// sees root-relative paths only. A planted blob that names it must be found, so the scan
/// is checked to see.
fn assert_no_blob_names_the_project(storage: &Path, project: &Project) {
    let needles: Vec<String> = [project.path("."), project.path(".").canonicalize().unwrap()]
        .iter()
        .map(|path| path.to_string_lossy().trim_end_matches("/.").to_string())
        .collect();
    let naming = |needle: &str| -> Vec<String> {
        crate::common::files_under(storage)
            .into_iter()
            .filter(|blob| {
                let bytes = std::fs::read(storage.join(blob)).unwrap_or_default();
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
    // Named after the project, so that tests sharing the server plant blobs of their own.
    let project_dir = project.path(".").canonicalize().unwrap();
    let name = format!(
        "planted-by-the-test-{}",
        project_dir.file_name().unwrap().to_string_lossy()
    );
    std::fs::write(storage.join(&name), format!("cwd={}", needles[0])).unwrap();
    let seen = naming(&needles[0]);
    std::fs::remove_file(storage.join(&name)).unwrap();
    assert_eq!(seen, [name], "the scan sees a planted blob");
}

#[test]
fn a_buildbox_worker_killed_mid_stage_gives_a_retry_or_a_clear_failure_never_a_hang() {
    let server = scratch();
    let l4 = host(&[("gpu", "NVIDIA L4")]);
    let mut dying = BuildboxWorker::start(server, "buildbox-l4-dying", &l4, 1);
    let project = Project::new(&gpu_stage(
        "long",
        "l4",
        "",
        "head -c 1000 /dev/zero > {outputs.out}; sleep 4; head -c 1000 /dev/zero >> {outputs.out}",
        "out/whole.bin",
    ));
    let child = spawn_remote_build(&project, &server.url());
    assert!(
        dying.wait_for_log("sleep 4", Duration::from_secs(90)),
        "the job never started:\n{}",
        dying.log_text()
    );
    dying.kill();
    let second = BuildboxWorker::start(server, "buildbox-l4-second", &l4, 1);
    let run = finish_within(child, BUILD_LIMIT);
    eprintln!(
        "after the worker died pochi exited {:?}:\n{}",
        run.code, run.stderr
    );
    if run.code == Some(0) {
        // BuildGrid queued the job again and the second worker ran it whole.
        assert_eq!(
            std::fs::read(project.path("out/whole.bin")).unwrap().len(),
            2000
        );
        assert_eq!(
            stage(&run.summary(), "long")["ran_remotely"]["worker"],
            "buildbox-l4-second"
        );
        assert!(
            second.log_text().contains(JOB_STARTED),
            "{}",
            second.log_text()
        );
    } else {
        run.assert_error(&["stage `long` failed"]);
        assert!(
            !project.exists("out/whole.bin"),
            "nothing partial is published"
        );
    }
}

#[test]
fn sigterm_to_pochi_cancels_the_job_on_the_buildbox_worker() {
    signal_cancels_the_job(libc::SIGTERM, 143, ("h100", "NVIDIA H100 80GB HBM3"));
}

#[test]
fn interrupting_pochi_exits_130_and_cancels_the_job_on_the_buildbox_worker() {
    signal_cancels_the_job(libc::SIGINT, 130, ("h200", "NVIDIA H200"));
}

/// Sends `signal` to a `pochi build` whose stage runs on a worker of its own (on the
/// scratch farm, offering `gpu`: an alias and the model it names): pochi exits with
/// `code` within seconds, publishes nothing, and the cancel reaches the worker, which
/// stops the command and keeps serving.
fn signal_cancels_the_job(signal: i32, code: i32, (alias, model): (&str, &str)) {
    let server = scratch();
    let name = format!("buildbox-{alias}");
    let mut worker = BuildboxWorker::start(server, &name, &host(&[("gpu", model)]), 1);
    let marks = tempfile::tempdir().unwrap();
    let pid_file = marks.path().join("pid");
    let script = format!("echo $$ > {}; exec sleep 60", pid_file.display());
    let project = Project::new(&gpu_stage("slow", alias, "", &script, "out/late.txt"));
    let child = spawn_remote_build(&project, &server.url());
    let pid: i32 = wait_for_file(&pid_file, Duration::from_secs(90))
        .unwrap_or_else(|| panic!("the command never started:\n{}", worker.log_text()))
        .parse()
        .expect("a pid");
    let signalled = Instant::now();
    unsafe { libc::kill(child.id() as i32, signal) };
    let run = finish_within(child, Duration::from_secs(30));
    assert_eq!(run.code, Some(code), "{}", run.stderr);
    assert!(
        signalled.elapsed() < Duration::from_secs(15),
        "{:?}",
        signalled.elapsed()
    );
    assert!(!project.exists("out/late.txt"));
    // The cancel reached the worker, which stopped the command.
    let gone = (0..300).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        !alive(pid)
    });
    assert!(gone, "the command still runs:\n{}", worker.log_text());
    assert!(worker.is_running(), "the worker survives a cancel");
}

/// A stage with a flat output directory and a file output (see the nested case below).
const FLAT: &str = r#"
[stages.flat]
kind = "command"
run = ["sh", "-c", "echo flat >> runs.log; mkdir -p {outputs.dir} && tr a-z A-Z < {inputs.text} > {outputs.dir}/upper.txt && cp {inputs.text} {outputs.single}"]
inputs = { text = "data/words.txt" }
outputs = { dir = "out/flat", single = "out/copy.txt" }
"#;

/// Builds `pipeline` with buildbox-casd as the remote cache in one project, then in a
/// fresh one (its own local cache): the second restores every output byte for byte.
fn store_then_restore_through_casd(pipeline: &str, words: &str, outputs: &[&str]) {
    let casd = BuildboxCasd::shared();
    let url = casd.url();
    let args = ["--remote-cache", url.as_str(), "--remote-timeout", "20"];
    let first = transform_project(pipeline, words);
    let run = first.build(&args);
    run.assert_ok();
    assert_eq!(run.ran().len(), 1, "{}", run.stdout);
    assert_eq!(first.logged_runs(), 1);
    assert!(!run.stderr.contains("warning"), "{}", run.stderr);

    let fresh = transform_project(pipeline, words);
    let restored = fresh.build(&args);
    restored.assert_ok();
    assert_eq!(
        restored.count("restored_remote"),
        1,
        "{}\n{}\nbuildbox-casd:\n{}",
        restored.stdout,
        restored.stderr,
        casd.log_text()
    );
    assert_eq!(fresh.logged_runs(), 0, "restored, not run");
    for output in outputs {
        same_bytes(&first, &fresh, output);
    }
    assert!(casd.log_text().contains("GetActionResult"));
}

#[test]
fn buildbox_casd_as_remote_cache_stores_and_a_fresh_project_restores() {
    store_then_restore_through_casd(
        FLAT,
        "cached by buildbox-casd\n",
        &["out/flat/upper.txt", "out/copy.txt"],
    );
}

/// buildbox-casd checks, before it answers GetActionResult, that every blob the entry
/// references is in its CAS, including the `Directory` digests inside an output's `Tree`
/// (`root.directories[].digest`); pochi uploads the Tree message and the files but not
/// each child Directory as a blob of its own, so casd logs "ActionResult missing 1
/// digests" / "Some output blob(s) missing from cache" and answers NOT_FOUND: the stage
/// runs again instead of being restored. A flat output directory has no such digest.
#[test]
fn a_nested_output_directory_stored_in_buildbox_casd_restores_in_a_fresh_project() {
    store_then_restore_through_casd(
        &TRANSFORM.replace("executor = \"remote\"\n", ""),
        "nested in buildbox-casd\n",
        &TRANSFORM_OUTPUTS,
    );
}

#[test]
fn buildbox_casd_executes_a_stage_and_serves_it_to_a_fresh_clone() {
    let casd = BuildboxCasd::shared();
    // Other words than the cache test's, so that this action is new to the server.
    let words = "executed by buildbox-casd\n";
    let pipeline = TRANSFORM;
    let remote = transform_project(pipeline, words);
    let run = build_remote(&remote, &casd.url(), &[]);
    run.assert_ok();
    let summary = run.summary();
    assert_eq!(
        stage(&summary, "transform")["ran_remotely"]["executor"],
        casd.url().as_str(),
        "{summary}"
    );
    assert!(
        casd.log_text().contains("Execute request"),
        "{}",
        casd.log_text()
    );
    assert_eq!(remote.logged_runs(), 0);
    let local = transform_project(&pipeline.replace("executor = \"remote\"\n", ""), words);
    local.build(&[]).assert_ok();
    for output in TRANSFORM_OUTPUTS {
        same_bytes(&remote, &local, output);
    }
    let clone = transform_project(pipeline, words);
    let restored = build_remote(&clone, &casd.url(), &[]);
    restored.assert_ok();
    assert_eq!(restored.count("restored_remote"), 1, "{}", restored.stdout);
    for output in TRANSFORM_OUTPUTS {
        same_bytes(&remote, &clone, output);
    }
    // One Action: the entry buildbox-casd kept when it executed the stage restores it in a
    // build that uses it only as a cache (no executor).
    cache_only_clone_restores(pipeline, words, &casd.url());
}

/// The farm's action cache serves a repeat across clones, whatever shared cache each
/// build names: a build with the executor at server A and `--remote-cache` at an empty
/// server B (an HTTP cache: a server of another kind) runs the stage on a worker and
/// uploads it to B; a fresh clone with an empty local cache and another empty B gets it
/// from A's action cache (`cached`, no worker runs), verified and byte-identical; and B
/// holds the entry: a cache-only clone restores from it.
#[test]
fn a_fresh_clone_with_a_new_empty_cache_is_answered_by_the_farms_action_cache() {
    let farm = farm();
    let url = farm.server.url();
    let empty_cache = |name: &str| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let id = std::process::id();
        format!("{}/{name}-{id}-{nanos}", NginxCache::shared().url())
    };
    let pipeline = TRANSFORM.replace("echo transform", "echo farm-serves-clones");
    let runs = || farm.runs("/usr/bin/sh -c echo farm-serves-clones");
    let first = transform_project(&pipeline, "served by the farm\n");
    let b = empty_cache("b");
    build_remote(&first, &url, &["--remote-cache", &b]).assert_ok();
    assert_eq!(runs(), 1);

    let words = (pipeline.as_str(), "served by the farm\n");
    farm_answers_a_clone(
        &first,
        words,
        &["--remote-cache", &empty_cache("b2")],
        &runs,
    );
    cache_only_clone_restores(&pipeline, "served by the farm\n", &b);
}

/// A stage's Action is on stable, root-relative paths (its temporary directory is the same
/// in every build), so running it again (here with `--no-cache`, which skips pochi's own
/// caches) is the same Action, in the same project and in a fresh clone elsewhere, and the
/// executor answers it from its action cache without a worker; the outputs come back
/// verified and byte-identical.
#[test]
fn a_repeated_stage_is_answered_from_the_executors_action_cache() {
    let farm = farm();
    // Its own argv, so that the workers' logs show its runs and no other test's.
    let pipeline = TRANSFORM.replace("echo transform", "echo repeat-round");
    let runs = || farm.runs("/usr/bin/sh -c echo repeat-round");
    let project = transform_project(&pipeline, "asked twice\n");
    let first = build_remote(&project, &farm.server.url(), &["--no-cache"]);
    first.assert_ok();
    let summary = first.summary();
    assert_eq!(
        stage(&summary, "transform")["ran_remotely"]["cached"],
        false,
        "{summary}"
    );
    assert_eq!(runs(), 1);

    // The outputs gone and pochi's cache skipped: only the executor can spare the work.
    std::fs::remove_dir_all(project.path("out")).unwrap();
    let again = build_remote(&project, &farm.server.url(), &["--no-cache"]);
    again.assert_ok();
    let summary = again.summary();
    let argvs: Vec<String> = farm
        .workers
        .iter()
        .flat_map(|w| {
            w.log_text()
                .lines()
                .filter(|l| l.contains(EXECUTING) && l.contains("-c echo repeat-round"))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(
        stage(&summary, "transform")["ran_remotely"]["cached"],
        true,
        "{summary}\nthe workers ran:\n{}",
        argvs.join("\n")
    );
    assert_eq!(runs(), 1, "a worker ran it again");

    // A fresh clone in another directory, with no cache of pochi's at all.
    let words = (pipeline.as_str(), "asked twice\n");
    farm_answers_a_clone(&project, words, &["--no-cache"], &runs);
}

/// One Action per stage: the entry the farm keeps when it executes a stage answers a
/// build that only reads the farm as a cache (`--remote-cache`, a fresh clone with an
/// empty local cache: restored, nothing runs), and the entry a cache-only build uploads
/// after a local run answers the farm's own lookup when another clone executes the stage
/// there (no worker runs it).
#[test]
fn the_cache_and_the_executor_answer_each_other_with_one_action() {
    let farm = farm();
    let url = farm.server.url();
    let runs = |word: &str| farm.runs(&format!("/usr/bin/sh -c echo {word}"));
    // `executor = "auto"`: remote in a build with an executor, here in one without.
    let auto = TRANSFORM.replace("executor = \"remote\"\n", "");
    // Executed on the farm, then restored by a cache-only build of a fresh clone.
    let executed = auto.replace("echo transform", "echo executed-then-cached");
    let first = transform_project(&executed, "one action\n");
    build_remote(&first, &url, &[]).assert_ok();
    assert_eq!(runs("executed-then-cached"), 1);
    let clone = cache_only_clone_restores(&executed, "one action\n", &url);
    assert_eq!(runs("executed-then-cached"), 1);
    for output in TRANSFORM_OUTPUTS {
        same_bytes(&first, &clone, output);
    }

    // Run here and uploaded by a cache-only build, then answered by the farm's action
    // cache when a fresh clone executes it remotely (pochi's own cache skipped).
    let uploaded = auto.replace("echo transform", "echo cached-then-executed");
    let local = transform_project(&uploaded, "two\n");
    let run = local.run_within(&["build", "--json", "--remote-cache", &url], BUILD_LIMIT);
    run.assert_ok();
    assert_eq!(local.logged_runs(), 1);
    let never = || runs("cached-then-executed");
    farm_answers_a_clone(&local, (&uploaded, "two\n"), &["--no-cache"], &never);
    assert_eq!(never(), 0, "a worker ran it");
}

/// `pochi toolchain info --json`'s `remote_platform.pochi-toolchain`, and the directory
/// that holds this machine's managed toolchains (`--remote-toolchain-dir`: the workers run
/// on this machine, so theirs is the same).
pub(crate) fn toolchain(project: &Project) -> (String, String) {
    let python = project.toolchain_python();
    let run = project.run(&["toolchain", "info", "--json"]);
    run.assert_ok();
    let info: serde_json::Value = serde_json::from_str(&run.stdout).expect("toolchain info");
    let property = info["remote_platform"]["pochi-toolchain"]
        .as_str()
        .expect("the toolchain's platform property")
        .to_string();
    let dir = python
        .ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == "v1"))
        .and_then(Path::parent)
        .expect("the toolchains' cache directory");
    (property, dir.to_string_lossy().into_owned())
}

/// A report stage over two small ONNX models, as a project that runs it remotely and one
/// that runs it here (the models made by `tests/fixtures/report_models.py` in each).
fn report_projects() -> (Project, Project) {
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
fn a_report_runs_on_a_buildbox_worker_with_the_toolchain_and_agrees_with_a_local_one() {
    let (remote, local) = report_projects();
    let farm = farm();
    let run = build_remote(
        &remote,
        &farm.server.url(),
        &["--remote-toolchain-dir", &farm.toolchain_dir],
    );
    run.assert_ok();
    let summary = run.summary();
    let worker = stage(&summary, "cls")["ran_remotely"]["worker"]
        .as_str()
        .expect("a worker")
        .to_string();
    // A real worker of the farm ran it (pochi's `run-stage`, which starts the toolchain's
    // Python) and sent its outputs back.
    let log = farm.worker(&worker).log_text();
    assert!(log.contains("pochi run-stage"), "{log}");
    assert!(log.contains("predictions.csv"), "{log}");
    local.build(&[]).assert_ok();
    for output in [
        "build/pipeline/cls/predictions.csv",
        "build/pipeline/cls/classification_report.csv",
    ] {
        same_bytes(&remote, &local, output);
    }
}

const RANDOM_INIT: &str = include_str!("../../pipelines/scripts/random_init_checkpoint.py");

/// A checkpoint and its export, here (`executor = "local"`), one engine per GPU model,
/// remotely, and a digest of both engines (`executor = "auto"`: remotely too).
const ENGINES: &str = r#"
[pipeline]
name = "farm-engines"

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

/// How many times the farm ran a stage of `ENGINES`: the argv of an engine names its
/// temporary directory, the digest's its command.
fn engines_runs(farm: &Farm) -> usize {
    farm.runs(".pochi/v1/farm-engines/tmp/engine-") + farm.runs("sha256sum build/farm-engines/")
}

#[test]
fn engines_run_on_the_buildbox_worker_of_their_gpu_the_export_here_and_a_rebuild_restores() {
    let farm = farm();
    let project = Project::new(ENGINES);
    project.write("scripts/random_init_checkpoint.py", RANDOM_INIT);
    let url = farm.server.url();
    let args = ["--remote-toolchain-dir", farm.toolchain_dir.as_str()];
    let run = build_remote_with_standin(&project, &url, &args);
    run.assert_ok();
    let summary = run.summary();
    for (gpu, worker, other) in [
        ("t4", "buildbox-t4", "a100"),
        ("a100", "buildbox-a100", "t4"),
    ] {
        let name = format!("engine-{gpu}");
        let ran = &stage(&summary, &name)["ran_remotely"];
        assert_eq!(ran["worker"], worker, "{summary}");
        assert_eq!(ran["executor"], url.as_str());
        // Its worker built it, once, and never the other GPU's engine.
        let runs = |stage: &str| {
            farm.worker(worker)
                .runs(&format!(".pochi/v1/farm-engines/tmp/{stage}/"))
        };
        assert_eq!(runs(&name), 1, "{}", farm.worker(worker).log_text());
        assert_eq!(runs(&format!("engine-{other}")), 0, "{worker}");
        // The outputs are complete and verified: the manifest says what was built.
        let path = format!("build/farm-engines/{name}.manifest.json");
        let manifest: serde_json::Value =
            serde_json::from_str(&project.read(&path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(manifest["gpu"]["name"], "Fake GPU (stand-in)", "{manifest}");
        assert!(project.exists(&format!("build/farm-engines/{name}.engine")));
    }
    for local in ["weights", "onnx"] {
        let entry = stage(&summary, local);
        assert_eq!(entry["status"], "ran", "{entry}");
        assert!(
            entry.get("ran_remotely").is_none(),
            "{local} ran here: {entry}"
        );
    }
    // The digest (`executor = "auto"`, a plain command) runs remotely too, on whichever
    // worker: all offer its platform. Three stages ran on the farm, once each.
    assert!(stage(&summary, "digest")["ran_remotely"]["worker"].is_string());
    assert_eq!(engines_runs(farm), 3);
    let engines_digest = project.read("out/engines.sha256");
    assert_up_to_date_without_the_farm(&project);

    // Outputs gone: a second build restores every stage from the cache, no worker runs.
    std::fs::remove_dir_all(project.path("build")).unwrap();
    std::fs::remove_dir_all(project.path("out")).unwrap();
    let again = build_remote_with_standin(&project, &url, &args);
    again.assert_ok();
    assert!(again.ran().is_empty(), "ran again: {:?}", again.ran());
    assert_eq!(engines_runs(farm), 3, "a worker ran a stage again");
    assert_eq!(project.read("out/engines.sha256"), engines_digest);
    assert_no_blob_names_the_project(&farm.server.storage_dir(), &project);
}

/// Built on the farm, up to date here: this machine has neither GPU, and needs none to
/// say so (`status`) or to build nothing (a build without the executor).
fn assert_up_to_date_without_the_farm(project: &Project) {
    let status = project.run(&["status", "--json"]);
    status.assert_ok();
    let status: serde_json::Value = serde_json::from_str(&status.stdout).expect("status JSON");
    let stages = status["stages"].as_array().expect("stages");
    assert!(!stages.is_empty(), "{status}");
    for entry in stages {
        assert_eq!(entry["status"], "up_to_date", "{entry}");
    }
    let here = project.build(&[]);
    here.assert_ok();
    assert!(here.ran().is_empty(), "{:?}", here.ran());
    assert!(here.stages("unavailable").is_empty(), "{}", here.stdout);
}

#[test]
fn after_buildgrid_restarts_its_restarted_buildbox_worker_takes_the_next_build() {
    let mut server = BuildGridExecution::start(&ExecutionConfig::default());
    let mut worker = BuildboxWorker::start(&server, "buildbox-survivor", &host(&[]), 1);
    let pipeline = |word: &str| {
        format!(
            "[stages.s]\nkind = \"command\"\nexecutor = \"remote\"\n\
             run = [\"sh\", \"-c\", \"echo {word} > {{outputs.out}}\"]\noutputs = {{ out = \"out/s.txt\" }}\n"
        )
    };
    let before = Project::new(&pipeline("before-restart"));
    build_remote(&before, &server.url(), &[]).assert_ok();
    assert_eq!(before.read("out/s.txt"), "before-restart\n");

    let gave_up = restart_farm(&mut server, &mut [&mut worker]);
    let after = Project::new(&pipeline("after-restart"));
    let run = build_remote(&after, &server.url(), &[]);
    run.assert_ok();
    assert_eq!(
        stage(&run.summary(), "s")["ran_remotely"]["worker"],
        "buildbox-survivor"
    );
    assert_eq!(after.read("out/s.txt"), "after-restart\n");
    // What the harness's restart is for: the real worker does not outlive its session.
    assert_eq!(gave_up, [true], "{}", worker.log_text());
}

/// What a worker's upload must carry back, against a local build of the same stage.
const SHAPES: &str = r#"
[stages.shapes]
kind = "command"
executor = "remote"
run = ["sh", "-c", "mkdir -p {outputs.dir}/empty {outputs.dir}/bin && head -c 6000000 /dev/urandom > {outputs.big} && printf '#!/bin/sh\\necho hi\\n' > {outputs.dir}/bin/tool && chmod +x {outputs.dir}/bin/tool && ln -s bin/tool {outputs.dir}/link"]
outputs = { dir = "out/shapes", big = "out/big.bin" }
"#;

#[test]
fn a_buildbox_worker_sends_back_big_files_executables_links_and_empty_dirs() {
    use std::os::unix::fs::PermissionsExt;
    let farm = farm();
    let project = Project::new(SHAPES);
    let run = build_remote(&project, &farm.server.url(), &[]);
    run.assert_ok();
    let summary = run.summary();
    assert!(
        stage(&summary, "shapes")["ran_remotely"]["worker"].is_string(),
        "{summary}"
    );
    assert_eq!(
        std::fs::metadata(project.path("out/big.bin"))
            .unwrap()
            .len(),
        6_000_000
    );
    let tool = std::fs::metadata(project.path("out/shapes/bin/tool")).unwrap();
    assert_ne!(
        tool.permissions().mode() & 0o111,
        0,
        "the executable bit is kept"
    );
    assert_eq!(
        std::fs::read_link(project.path("out/shapes/link")).unwrap(),
        Path::new("bin/tool")
    );
    assert!(project.path("out/shapes/empty").is_dir());
    // The bytes the worker uploaded are the ones pochi recorded (the 6 MB file went over
    // ByteStream both ways): a fresh clone restores the same digests.
    let clone = Project::new(SHAPES);
    let restored = build_remote(&clone, &farm.server.url(), &[]);
    restored.assert_ok();
    assert_eq!(restored.count("restored_remote"), 1, "{}", restored.stdout);
    same_bytes(&project, &clone, "out/big.bin");
    same_bytes(&project, &clone, "out/shapes/bin/tool");
}
