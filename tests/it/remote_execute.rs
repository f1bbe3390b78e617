//! The remote-execution client (`pochi::remote::RemoteExecutor`) against a real BuildGrid
//! with Execution on PostgreSQL (`common::servers`), with REAL workers (buildbox-worker
//! running each job with buildbox-run-hosttools, `common::buildbox`) that run the commands
//! here. Each test's actions carry their own salt and GPU name, so no test sees another's
//! workers, jobs or cached results on the shared server. After a BuildGrid restart
//! buildbox-worker exits (its bot session is gone), so the restart tests start it again,
//! as a farm's supervisor would.
//!
//! One test stays on the STAND-IN worker (`tests/servers/standin_worker.py`, a test double
//! of a farm worker speaking BuildGrid's Bots API), because no real worker can do its job:
//! `a_blob_the_server_lost_after_the_upload_is_sent_again_once` needs a worker that reports
//! an input it cannot fetch the way REAPI tells a client to act on, FAILED_PRECONDITION
//! with a PreconditionFailure naming the blob (`MISSING`, `blobs/<hash>/<size>`), so that
//! the client sends it again. buildbox-worker (Debian's 1.4.30) does not: its runner fails
//! the job with INTERNAL and the digest only in free text ("Failed to download blob,
//! digest=..."), with `--disable-localcas` as the harness runs it and through a
//! buildbox-casd proxy alike (tried by hand; there BuildGrid ran the job again until its
//! attempts ran out); on such a farm pochi reports the error, and has nothing to send again.
//!
//! Three need no worker at all: `a_cache_only_server_is_refused_as_an_executor`,
//! `an_unknown_platform_key_is_refused_with_the_properties_named` (BuildGrid refuses the
//! Action at Execute) and the queue timeout of
//! `an_action_no_worker_offers_is_unschedulable_after_the_queue_timeout_and_cancelled`,
//! which starts a real worker only afterwards, to see that the action was cancelled on the
//! server. No test needs a worker's timing: the two seconds of the cancel test are pochi's
//! own return; the real worker's kill of the command is awaited (bounded) after it.

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pochi::remote::{
    self, ActionSpec, CommandSpec, Digest, DigestFunction, Endpoint, Executed, ExecutionError,
    ExecutionJob, ExecutionPhase, InputFile, RemoteExecutor, StageAction,
};

use crate::common::buildbox::{
    BuildboxWorker, JOB_STARTED, LEASE_DROPPED, restart_workers_of_a_restarted_server,
};
use crate::common::servers::{
    BuildGridCache, BuildGridExecution, ExecutionConfig, StandinWorker, command_is_gone,
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

/// A real worker `name` of `server` offering Linux and GPU `gpu`, one job at a time.
fn worker(server: &BuildGridExecution, name: &str, gpu: &str) -> BuildboxWorker {
    BuildboxWorker::start(server, name, &linux(gpu), 1)
}

#[test]
fn an_action_runs_on_the_worker_whose_gpu_matches_and_its_outputs_come_back() {
    let server = BuildGridExecution::shared();
    let _t4 = worker(server, "exec-t4-worker", "T4-exec");
    let _a100 = worker(server, "exec-a100-worker", "A100-exec");
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
    let _worker = worker(server, "exec-fail-worker", "fail-exec");
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
    // It was cancelled on the server: a worker that offers the GPU now gets no lease...
    let mut late = worker(server, "exec-late-worker", gpu);
    assert!(
        !late.wait_for_log(JOB_STARTED, Duration::from_secs(4)),
        "the cancelled action still ran:\n{}",
        late.log_text()
    );
    // ...though it takes the next action for that GPU, which was queued after it.
    let next = Job::new("echo next", &[], &[], &linux(gpu));
    let executed = next.run_simply(&executor(&server.url())).0.unwrap();
    assert_eq!(executed.worker, "exec-late-worker", "{executed:?}");
    assert_eq!(late.runs("echo next"), 1, "{}", late.log_text());
    assert_eq!(late.runs("echo never"), 0, "{}", late.log_text());
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
    let mut worker = worker(server, "exec-cancel-worker", "cancel-exec");
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
        worker.wait_for_log(LEASE_DROPPED, Duration::from_secs(30)),
        "{}",
        worker.log_text()
    );
    assert!(
        command_is_gone(&pid_file),
        "the cancelled command still runs"
    );
}

/// On the STAND-IN worker, which reports the input it cannot fetch as a missing blob (the
/// module's header says why no real worker can).
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
    let late: Mutex<Option<StandinWorker>> = Mutex::new(None);
    let progress = |phase: ExecutionPhase| {
        let mut late = late.lock().unwrap();
        if phase == ExecutionPhase::Queued && late.is_none() {
            std::fs::remove_file(&blob).expect("the uploaded input is on the server's disk");
            *late = Some(server.worker("exec-lost-blob-worker", &linux(gpu)));
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
    let log = late.lock().unwrap().as_ref().unwrap().log_text();
    assert_eq!(log.matches(" started").count(), 2, "{log}");
    assert!(
        log.contains("status=9"),
        "FAILED_PRECONDITION first:\n{log}"
    );
}

/// Runs a 3-second action, restarts the server (with a new database if `forget`) and its
/// worker while it runs, and returns the result.
fn execute_across_a_restart(forget: bool) -> Executed {
    let mut server = BuildGridExecution::start(&ExecutionConfig::default());
    let mut worker = worker(&server, "exec-restart-worker", "restart-exec");
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
            worker.wait_for_log(JOB_STARTED, Duration::from_secs(60)),
            "{}",
            worker.log_text()
        );
        if forget {
            server.restart_with_a_new_database();
        } else {
            server.restart();
        }
        restart_workers_of_a_restarted_server(&mut [&mut worker]);
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
