//! The remote-execution client (`pochi::remote::RemoteExecutor`) against a real BuildGrid
//! with Execution on PostgreSQL (`common::servers`), with STAND-IN WORKERS (a test double
//! of a farm worker, `tests/servers/standin_worker.py`) that run the commands here. Each
//! test's actions carry their own salt and GPU name, so no test sees another's workers,
//! jobs or cached results on the shared server.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pochi::remote::{
    self, ActionSpec, CommandSpec, Digest, DigestFunction, Endpoint, Executed, ExecutionError,
    ExecutionJob, ExecutionPhase, InputFile, RemoteExecutor, StageAction,
};

use crate::common::servers::{
    BuildGridCache, BuildGridExecution, Postgres, ServerProcess, StandinWorker, buildgrid_venv,
    command_is_gone, delete_at_exit, free_port, servers_dir, venv_python,
};

const SHA256: DigestFunction = DigestFunction::Sha256;
const LONG_QUEUE: Duration = Duration::from_secs(120);

/// A salt no other test of this process uses (the server and its action cache are shared).
fn salt() -> String {
    use std::sync::atomic::AtomicU64;
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!(
        "remote-execute-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    )
}

fn executor(url: &str) -> RemoteExecutor {
    let endpoint = Endpoint::parse(url)
        .unwrap()
        .with_timeout(Duration::from_secs(60));
    RemoteExecutor::connect(&endpoint).unwrap()
}

/// An action, its input files on disk, and where its outputs and log go.
struct Job {
    action: StageAction,
    files: Vec<(InputFile, PathBuf)>,
    dir: tempfile::TempDir,
}

impl Job {
    /// `sh -c SCRIPT` with the input files `inputs` (path, bytes), declared outputs
    /// `outputs` (name, path) and the platform `platform`.
    fn new(
        script: &str,
        inputs: &[(&str, &[u8])],
        outputs: &[(&str, &str)],
        platform: &[(&str, &str)],
    ) -> Job {
        let dir = tempfile::tempdir().unwrap();
        let mut files = Vec::new();
        for (path, bytes) in inputs {
            let local = dir.path().join("inputs").join(path);
            std::fs::create_dir_all(local.parent().unwrap()).unwrap();
            std::fs::write(&local, bytes).unwrap();
            let file = InputFile {
                path: path.to_string(),
                digest: Digest::of_bytes(SHA256, bytes),
                executable: false,
            };
            files.push((file, local));
        }
        let input_files: Vec<InputFile> = files.iter().map(|(f, _)| f.clone()).collect();
        let tree = remote::build_input_tree(SHA256, &input_files).unwrap();
        let command = remote::build_command(&CommandSpec {
            arguments: vec!["sh".into(), "-c".into(), script.into()],
            output_paths: outputs.iter().map(|(_, p)| p.to_string()).collect(),
            ..Default::default()
        })
        .unwrap();
        let command = remote::Blob::of_message(SHA256, &command);
        let platform: Vec<(String, String)> = platform
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (_, action) = remote::build_action(
            SHA256,
            &ActionSpec {
                command: command.digest.clone(),
                input_root: tree.root.clone(),
                platform: platform.clone(),
                salt: salt().into_bytes(),
                do_not_cache: false,
                timeout: None,
            },
        );
        let mut sorted = platform;
        sorted.sort();
        let mut blobs = vec![action.clone(), command];
        blobs.extend(tree.directories);
        Job {
            action: StageAction {
                digest: action.digest,
                function: SHA256,
                outputs: outputs
                    .iter()
                    .map(|(n, p)| (n.to_string(), p.to_string()))
                    .collect(),
                blobs,
                platform: sorted,
            },
            files,
            dir,
        }
    }

    fn output(&self, name: &str) -> PathBuf {
        self.dir.path().join("outputs").join(name)
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("logs/stage.log")
    }

    /// Runs it with `executor`, recording the phases reported.
    fn run(
        &self,
        executor: &RemoteExecutor,
        queue_timeout: Duration,
        cancel: &AtomicBool,
        progress: &dyn Fn(ExecutionPhase),
    ) -> Result<Executed, ExecutionError> {
        let dest_for = |name: &str| self.output(name);
        let log = self.log();
        let job = ExecutionJob {
            action: &self.action,
            files: &self.files,
            dest_for: &dest_for,
            queue_timeout,
            log: &log,
            skip_cache_lookup: false,
            kept_on_failure: &[],
        };
        executor.execute(&job, cancel, progress)
    }

    /// Runs it to the end; returns the result and the phases reported.
    fn run_simply(
        &self,
        executor: &RemoteExecutor,
    ) -> (Result<Executed, ExecutionError>, Vec<ExecutionPhase>) {
        let phases = Mutex::new(Vec::new());
        let result = self.run(executor, LONG_QUEUE, &AtomicBool::new(false), &|phase| {
            phases.lock().unwrap().push(phase)
        });
        (result, phases.into_inner().unwrap())
    }
}

fn linux(gpu: &str) -> [(&str, &str); 2] {
    [("OSFamily", "linux"), ("gpu", gpu)]
}

#[test]
fn an_action_runs_on_the_worker_whose_gpu_matches_and_its_outputs_come_back() {
    let server = BuildGridExecution::shared();
    let _t4 = server.worker("exec-t4-worker", &linux("T4-exec"));
    let _a100 = server.worker("exec-a100-worker", &linux("A100-exec"));
    let executor = executor(&server.url());
    executor.check().unwrap();
    assert_eq!(executor.digest_function().unwrap(), SHA256);
    let script = "mkdir -p out && cat in/data.txt > out/a.txt && echo hi >> out/a.txt \
                  && wc -c < in/big.bin > out/size.txt && echo to-stdout && echo to-stderr >&2";
    let data = salt();
    // Over the batch size: it streams from disk over ByteStream.
    let big: Vec<u8> = data.bytes().cycle().take(5 << 20).collect();
    let inputs: &[(&str, &[u8])] = &[("in/data.txt", data.as_bytes()), ("in/big.bin", &big)];
    let outputs = [("a", "out/a.txt"), ("size", "out/size.txt")];
    let job = Job::new(script, inputs, &outputs, &linux("T4-exec"));

    let (result, phases) = job.run_simply(&executor);
    let executed = result.unwrap();
    assert_eq!(executed.exit_code, 0, "{executed:?}");
    assert_eq!(executed.worker, "exec-t4-worker");
    assert!(!executed.cached);
    let output = std::fs::read_to_string(job.output("a")).unwrap();
    assert_eq!(output, format!("{data}hi\n"));
    let size = std::fs::read_to_string(job.output("size")).unwrap();
    assert_eq!(size.trim(), (5 << 20).to_string());
    let log = std::fs::read_to_string(job.log()).unwrap();
    assert_eq!(log, "to-stdout\nto-stderr\n");
    assert_eq!(executed.stderr_tail, ["to-stderr"]);
    // Action, Command, two Directory messages and the two input files.
    assert_eq!(executed.uploaded.0, 6, "{executed:?}");
    assert!(executed.uploaded.1 > 5 << 20, "{executed:?}");
    assert_eq!(
        executed.downloaded.0, 4,
        "stdout, stderr, two outputs: {executed:?}"
    );
    assert_eq!(
        phases.first(),
        Some(&ExecutionPhase::Uploading),
        "{phases:?}"
    );
    assert_eq!(
        phases.last(),
        Some(&ExecutionPhase::Downloading),
        "{phases:?}"
    );

    // Again: every blob is on the server already, and the server answers from its cache.
    std::fs::remove_file(job.output("a")).unwrap();
    let again = job.run_simply(&executor).0.unwrap();
    assert_eq!(again.uploaded, (0, 0), "{again:?}");
    assert!(again.cached, "{again:?}");
    assert_eq!(
        std::fs::read_to_string(job.output("a")).unwrap(),
        format!("{data}hi\n")
    );

    // The same command for the other GPU runs on the other worker; the input goes up once.
    let other = Job::new(script, inputs, &outputs, &linux("A100-exec"));
    let executed = other.run_simply(&executor).0.unwrap();
    assert_eq!(executed.worker, "exec-a100-worker");
    assert_eq!(
        executed.uploaded.0, 1,
        "only the Action is new: {executed:?}"
    );
}

#[test]
fn a_cache_only_server_is_refused_as_an_executor() {
    let server = BuildGridCache::shared();
    let error = executor(&server.url()).check().unwrap_err();
    let text = error.to_string();
    assert!(
        matches!(error, remote::RemoteError::NoExecution { .. }),
        "{text}"
    );
    assert!(
        text.contains(&server.url()) && text.contains("does not execute actions"),
        "{text}"
    );
}

#[test]
fn a_failing_command_gives_its_exit_code_and_its_stderr_in_the_log() {
    let server = BuildGridExecution::shared();
    let _worker = server.worker("exec-fail-worker", &linux("fail-exec"));
    let job = Job::new(
        "mkdir -p out; echo partial > out/a.txt; echo some output; echo boom >&2; exit 3",
        &[],
        &[("a", "out/a.txt")],
        &linux("fail-exec"),
    );
    let executed = job.run_simply(&executor(&server.url())).0.unwrap();
    assert_eq!(executed.exit_code, 3);
    assert_eq!(executed.stderr_tail, ["boom"]);
    assert_eq!(
        std::fs::read_to_string(job.log()).unwrap(),
        "some output\nboom\n"
    );
    assert!(!job.output("a").exists(), "no output of a failed run");
}

#[test]
fn an_action_no_worker_offers_is_unschedulable_after_the_queue_timeout_and_cancelled() {
    let server = BuildGridExecution::shared();
    let gpu = "H100-nobody-exec";
    let job = Job::new("echo never", &[], &[], &linux(gpu));
    let started = Instant::now();
    let error = job
        .run(
            &executor(&server.url()),
            Duration::from_secs(3),
            &AtomicBool::new(false),
            &|_| {},
        )
        .unwrap_err();
    let waited = started.elapsed();
    let ExecutionError::Unschedulable { platform, .. } = &error else {
        panic!("not Unschedulable: {error}");
    };
    assert_eq!(platform, &job.action.platform);
    assert!(
        waited >= Duration::from_secs(3) && waited < Duration::from_secs(15),
        "{waited:?}"
    );
    let text = error.to_string();
    assert!(text.contains("within 3"), "{text}");
    assert!(
        text.contains("OSFamily=linux, gpu=H100-nobody-exec"),
        "{text}"
    );
    assert!(
        miette::Diagnostic::help(&error)
            .unwrap()
            .to_string()
            .contains("--remote-queue-timeout"),
        "{text}"
    );
    // It was cancelled on the server: a worker that offers the GPU now gets no lease.
    let mut late = server.worker("exec-late-worker", &linux(gpu));
    assert!(
        !late.wait_for_log(" started", Duration::from_secs(4)),
        "the cancelled action still ran:\n{}",
        late.log_text()
    );
}

#[test]
fn an_unknown_platform_key_is_refused_with_the_properties_named() {
    let server = BuildGridExecution::shared();
    let job = Job::new(
        "echo never",
        &[],
        &[],
        &[("OSFamily", "linux"), ("colour", "blue")],
    );
    let error = job
        .run(
            &executor(&server.url()),
            LONG_QUEUE,
            &AtomicBool::new(false),
            &|_| {},
        )
        .unwrap_err();
    let ExecutionError::Failed { code, message, .. } = &error else {
        panic!("not Failed: {error}");
    };
    assert_eq!(*code, pochi::remote::Code::FailedPrecondition, "{error}");
    assert!(message.contains("OSFamily=linux, colour=blue"), "{error}");
}

#[test]
fn a_cancel_while_the_command_runs_cancels_the_lease_within_two_seconds() {
    let server = BuildGridExecution::shared();
    let mut worker = server.worker("exec-cancel-worker", &linux("cancel-exec"));
    let marker = tempfile::tempdir().unwrap();
    let pid_file = marker.path().join("pid");
    let script = format!(
        "echo $$ > {0}.tmp && mv {0}.tmp {0}; exec sleep 120",
        pid_file.display()
    );
    let job = Job::new(&script, &[], &[], &linux("cancel-exec"));
    let executor = executor(&server.url());
    let cancel = AtomicBool::new(false);
    let (result, took) = std::thread::scope(|scope| {
        let running = scope.spawn(|| {
            let result = job.run(&executor, LONG_QUEUE, &cancel, &|_| {});
            (result, Instant::now())
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        while !pid_file.exists() && Instant::now() < deadline && !running.is_finished() {
            std::thread::sleep(Duration::from_millis(20));
        }
        let cancelled_at = Instant::now();
        cancel.store(true, Ordering::SeqCst);
        let (result, ended) = running.join().unwrap();
        (result, ended - cancelled_at)
    });
    assert!(
        matches!(result, Err(ExecutionError::Cancelled)),
        "{result:?}"
    );
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert!(
        worker.wait_for_log(" cancelled", Duration::from_secs(30)),
        "{}",
        worker.log_text()
    );
    assert!(
        command_is_gone(&pid_file),
        "the cancelled command still runs"
    );
}

#[test]
fn a_blob_the_server_lost_after_the_upload_is_sent_again_once() {
    let server = BuildGridExecution::shared();
    let gpu = "lost-blob-exec";
    let data = salt();
    let inputs: &[(&str, &[u8])] = &[("in/data.txt", data.as_bytes())];
    let job = Job::new(
        "mkdir -p out && cat in/data.txt > out/a.txt",
        inputs,
        &[("a", "out/a.txt")],
        &linux(gpu),
    );
    let blob = server.blob_path(Digest::of_bytes(SHA256, data.as_bytes()).hash());
    // Once the action is queued (uploaded, with no worker yet), its input vanishes from
    // the server's disk and a worker comes: it cannot fetch the input.
    let worker: Mutex<Option<StandinWorker>> = Mutex::new(None);
    let progress = |phase: ExecutionPhase| {
        let mut worker = worker.lock().unwrap();
        if phase == ExecutionPhase::Queued && worker.is_none() {
            std::fs::remove_file(&blob).expect("the uploaded input is on the server's disk");
            *worker = Some(server.worker("exec-lost-blob-worker", &linux(gpu)));
        }
    };
    let executed = job
        .run(
            &executor(&server.url()),
            LONG_QUEUE,
            &AtomicBool::new(false),
            &progress,
        )
        .unwrap();
    assert_eq!(executed.exit_code, 0);
    assert_eq!(std::fs::read_to_string(job.output("a")).unwrap(), data);
    assert!(blob.exists(), "the input is on the server again");
    // Five blobs at first, the input once more.
    assert_eq!(executed.uploaded.0, 6, "{executed:?}");
    let log = worker.lock().unwrap().as_ref().unwrap().log_text();
    assert_eq!(log.matches(" started").count(), 2, "{log}");
    assert!(
        log.contains("status=9"),
        "FAILED_PRECONDITION first:\n{log}"
    );
}

/// A BuildGrid with Execution of this test's own, which it can kill and start again on
/// the same port and database (the shared one in `servers.rs` cannot restart).
struct RestartableExecution {
    process: ServerProcess,
    dir: tempfile::TempDir,
    port: u16,
    sql: String,
}

impl RestartableExecution {
    fn start() -> RestartableExecution {
        let dir = tempfile::Builder::new()
            .prefix("pochi-buildgrid-restart-")
            .tempdir()
            .unwrap();
        delete_at_exit(dir.path());
        let sql = Postgres::shared().create_database();
        for _ in 0..3 {
            let port = free_port();
            if let Some(process) = Self::launch(dir.path(), port, &sql) {
                return RestartableExecution {
                    process,
                    dir,
                    port,
                    sql,
                };
            }
        }
        panic!("BuildGrid did not start");
    }

    /// The server on `port`, serving Capabilities; `None` if it exited first.
    fn launch(dir: &Path, port: u16, sql: &str) -> Option<ServerProcess> {
        let mut command = Command::new("python3");
        command
            .arg(servers_dir().join("launch.py"))
            .arg("buildgrid-exec")
            .arg("--venv")
            .arg(buildgrid_venv())
            .arg("--dir")
            .arg(dir)
            .args(["--port", &port.to_string(), "--sql", sql]);
        let log = dir.join("buildgrid.log");
        let mut process = ServerProcess::spawn("BuildGrid", command, &log, libc::SIGTERM);
        process.wait_for_port(port, Duration::from_secs(120)).ok()?;
        let executor = executor(&format!("grpc://127.0.0.1:{port}"));
        let deadline = Instant::now() + Duration::from_secs(120);
        while executor.check().is_err() {
            assert!(Instant::now() < deadline, "{}", process.log_text());
            std::thread::sleep(Duration::from_millis(200));
        }
        Some(process)
    }

    fn url(&self) -> String {
        format!("grpc://127.0.0.1:{}", self.port)
    }

    /// Kills it (SIGKILL) and starts it again on the same port and storage, with the same
    /// database or (`forget`) a new one, where no operation of before is known.
    fn restart(&mut self, forget: bool) {
        self.process.kill();
        if forget {
            self.sql = Postgres::shared().create_database();
        }
        self.process = Self::launch(self.dir.path(), self.port, &self.sql)
            .unwrap_or_else(|| panic!("BuildGrid did not restart on port {}", self.port));
    }

    /// A stand-in worker (a test double) of this server.
    fn worker(&self, name: &str, properties: &[(&str, &str)]) -> ServerProcess {
        let work = self.dir.path().join(name);
        std::fs::create_dir_all(&work).unwrap();
        let mut command = Command::new(venv_python());
        command
            .arg(servers_dir().join("standin_worker.py"))
            .args([
                "--server",
                &format!("127.0.0.1:{}", self.port),
                "--name",
                name,
            ])
            .arg("--work-dir")
            .arg(&work);
        for (key, value) in properties {
            command.args(["--property", &format!("{key}={value}")]);
        }
        let mut process =
            ServerProcess::spawn(name, command, &work.join("worker.log"), libc::SIGTERM);
        assert!(
            process.wait_for_log(": session ", Duration::from_secs(60)),
            "{}",
            process.log_text()
        );
        process
    }
}

/// Runs a 3-second action, restarts the server while it runs, and returns the result.
fn execute_across_a_restart(forget: bool) -> Executed {
    let mut server = RestartableExecution::start();
    let mut worker = server.worker("exec-restart-worker", &linux("restart-exec"));
    let job = Job::new(
        "sleep 3; mkdir -p out; echo done > out/a.txt",
        &[],
        &[("a", "out/a.txt")],
        &linux("restart-exec"),
    );
    let executor = executor(&server.url());
    let executed = std::thread::scope(|scope| {
        let running = scope.spawn(|| job.run_simply(&executor).0);
        assert!(
            worker.wait_for_log(" started", Duration::from_secs(60)),
            "{}",
            worker.log_text()
        );
        server.restart(forget);
        running.join().unwrap()
    });
    let executed = executed.unwrap();
    assert_eq!(executed.exit_code, 0);
    assert_eq!(std::fs::read_to_string(job.output("a")).unwrap(), "done\n");
    executed
}

#[test]
fn an_execution_resumes_with_wait_execution_after_the_server_restarts() {
    let executed = execute_across_a_restart(false);
    assert!(executed.resumed >= 1, "{executed:?}");
}

#[test]
fn an_operation_the_restarted_server_lost_is_executed_again() {
    // A new database: WaitExecution finds no such operation (NOT_FOUND).
    let executed = execute_across_a_restart(true);
    assert!(
        executed.resumed >= 2,
        "resumed, then executed again: {executed:?}"
    );
}
