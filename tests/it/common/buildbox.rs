//! Debian's buildbox in the tests: REAL REAPI workers (`buildbox-worker` running each job
//! with `buildbox-run-hosttools`) against the harness's BuildGrid, and a second REAPI
//! server implementation (`buildbox-casd --buildbox-run`: CAS, action cache and Execution in
//! one process). Installed once per machine by `tests/servers/install_buildbox.py` into
//! the same per-user test cache as BuildGrid.
//!
//! Every process runs in its own session on 127.0.0.1, registered with the harness's
//! reaper (`servers::ServerProcess`), so it is stopped on drop and when the test process
//! ends however it ends. Unlike the stand-in worker: the runner inherits the worker's
//! environment, collects only `Command.output_paths`, and buildbox-worker exits when
//! BuildGrid restarts ("Bot does not exist"): `restart_farm` restarts both.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::servers::{
    BuildGridExecution, ServerProcess, delete_at_exit, free_port, output_within, servers_dir,
};

/// A fresh install downloads about 20 MB of Debian packages (7-50 s measured here).
const INSTALL_TIMEOUT: Duration = Duration::from_secs(600);
/// buildbox-worker had its bot session 0.1 s after start here; this bounds a loaded machine.
const WORKER_START_TIMEOUT: Duration = Duration::from_secs(60);
const CASD_START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a worker whose BuildGrid restarted gets to notice and exit.
const WORKER_EXIT_WAIT: Duration = Duration::from_secs(30);
/// What buildbox-worker logs (`--verbose`) once BuildGrid has its bot session.
const SESSION_CREATED: &str = "Bot Session created";
/// What buildbox-worker logs when a job starts.
pub const JOB_STARTED: &str = "Starting worker thread for leaseId";
/// What buildbox-worker logs before a job's argv.
pub const EXECUTING: &str = "Executing command: ";
/// What buildbox-worker logs when BuildGrid drops a lease it runs (how BuildGrid cancels
/// a job): it stops the job (SIGTERM to its runner, which kills the command).
pub const LEASE_DROPPED: &str = "was tracked locally but not by the server, removing";

/// The buildbox prefix (`PREFIX/bin/<tool>` wrappers), installed on first use. A failed
/// install fails the test that needs it, with the installer's reason.
pub fn buildbox_prefix() -> &'static Path {
    static PREFIX: OnceLock<PathBuf> = OnceLock::new();
    PREFIX.get_or_init(|| {
        let mut command = Command::new("python3");
        command.arg(servers_dir().join("install_buildbox.py"));
        let output = output_within(
            command,
            INSTALL_TIMEOUT,
            "tests/servers/install_buildbox.py (installs Debian sid's buildbox from this \
             machine's Debian mirror; needed by the real-worker tests)",
        );
        PathBuf::from(output.trim())
    })
}

/// One of buildbox's tools (a wrapper that runs it with sid's libraries).
pub fn buildbox_tool(name: &str) -> PathBuf {
    buildbox_prefix().join("bin").join(name)
}

/// A private directory, deleted by the reaper at exit if not before.
fn private_dir(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("temp dir");
    delete_at_exit(dir.path());
    dir
}

/// A REAL worker: buildbox-worker with buildbox-run-hosttools, polling a BuildGrid with
/// Execution, in its own session with its own workspace.
pub struct BuildboxWorker {
    pub name: String,
    process: ServerProcess,
    /// How it reaches BuildGrid: `--remote=URL`, and `--server-cert=CA` over TLS.
    connection: Vec<String>,
    platform: Vec<(String, String)>,
    concurrent_jobs: usize,
    // Dropped after the process: the runner's workspace and the log.
    dir: tempfile::TempDir,
}

impl BuildboxWorker {
    /// Starts worker `name` offering `platform` (`OSFamily`, `ISA`, `gpu`...) and running
    /// up to `concurrent_jobs` jobs at once; returns once BuildGrid has its bot session.
    pub fn start(
        server: &BuildGridExecution,
        name: &str,
        platform: &[(&str, &str)],
        concurrent_jobs: usize,
    ) -> BuildboxWorker {
        let remote = format!("--remote=http://{}", server.address());
        BuildboxWorker::connect(vec![remote], name, platform, concurrent_jobs)
    }

    /// `start` on BuildGrid's TLS port (`BuildGridExecution::start_tls`), the server
    /// verified with the CA certificate `ca` (buildbox's `--server-cert`): the worker and
    /// the jobs' runner reach BuildGrid over TLS only.
    pub fn start_tls(
        server: &BuildGridExecution,
        ca: &Path,
        name: &str,
        platform: &[(&str, &str)],
    ) -> BuildboxWorker {
        let url = server.tls_url(false).replace("grpcs://", "https://");
        let connection = vec![
            format!("--remote={url}"),
            format!("--server-cert={}", ca.display()),
        ];
        BuildboxWorker::connect(connection, name, platform, 1)
    }

    fn connect(
        connection: Vec<String>,
        name: &str,
        platform: &[(&str, &str)],
        concurrent_jobs: usize,
    ) -> BuildboxWorker {
        let dir = private_dir(&format!("pochi-buildbox-worker-{name}-"));
        std::fs::create_dir_all(dir.path().join("workspace")).expect("workspace dir");
        let platform: Vec<(String, String)> = platform
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let process = spawn_worker(name, &connection, dir.path(), &platform, concurrent_jobs);
        BuildboxWorker {
            name: name.to_string(),
            process,
            connection,
            platform,
            concurrent_jobs,
            dir,
        }
    }

    /// SIGKILLs the worker and the jobs it runs (its whole session), like a dying machine.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts it again (after `kill`, or after its BuildGrid restarted: buildbox-worker
    /// exits when its bot session is gone); same name, platform and workspace.
    pub fn restart(&mut self) {
        self.process.kill();
        self.process = spawn_worker(
            &self.name,
            &self.connection,
            self.dir.path(),
            &self.platform,
            self.concurrent_jobs,
        );
    }

    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// Whether it exits (by itself) within `limit`.
    pub fn wait_for_exit(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.process.is_running() {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        true
    }

    /// The session's leader (the wrapper's exec: buildbox-worker itself).
    pub fn pid(&self) -> i32 {
        self.process.pid()
    }

    /// Its log (`--verbose`), across restarts.
    pub fn log_text(&self) -> String {
        self.process.log_text()
    }

    /// How many commands it ran whose argv contains `needle` (it logs "Executing command:
    /// ARGV" once per job it runs).
    pub fn runs(&self, needle: &str) -> usize {
        self.log_text()
            .lines()
            .filter(|line| {
                line.split_once(EXECUTING)
                    .is_some_and(|(_, argv)| argv.contains(needle))
            })
            .count()
    }

    pub fn wait_for_log(&mut self, needle: &str, limit: Duration) -> bool {
        self.process.wait_for_log(needle, limit)
    }

    /// The runner's workspace (`--workspace-path`).
    pub fn workspace(&self) -> PathBuf {
        self.dir.path().join("workspace")
    }
}

/// Restarts BuildGrid (same port, storage and database), then `workers`: buildbox-worker
/// exits once its bot session is gone ("Bot does not exist"), so a farm restart is both.
/// Returns, per worker, whether it had exited by itself (within `WORKER_EXIT_WAIT`).
pub fn restart_farm(
    server: &mut BuildGridExecution,
    workers: &mut [&mut BuildboxWorker],
) -> Vec<bool> {
    server.restart();
    restart_workers_of_a_restarted_server(workers)
}

/// After their BuildGrid restarted (`BuildGridExecution::restart` and the like): waits
/// for each worker to exit by itself (within `WORKER_EXIT_WAIT`), then starts it again.
/// Returns, per worker, whether it had exited by itself.
pub fn restart_workers_of_a_restarted_server(workers: &mut [&mut BuildboxWorker]) -> Vec<bool> {
    workers
        .iter_mut()
        .map(|worker| {
            let exited = worker.wait_for_exit(WORKER_EXIT_WAIT);
            worker.restart();
            exited
        })
        .collect()
}

/// buildbox-worker for `name` in a new session, its log appended to `dir/worker.log`;
/// returns once it logged its bot session (panics with the log after a bound).
fn spawn_worker(
    name: &str,
    connection: &[String],
    dir: &Path,
    platform: &[(String, String)],
    concurrent_jobs: usize,
) -> ServerProcess {
    let mut command = Command::new(buildbox_tool("buildbox-worker"));
    command
        .arg("--verbose")
        .args(connection)
        .arg(format!(
            "--buildbox-run={}",
            buildbox_tool("buildbox-run-hosttools").display()
        ))
        .arg("--runner-arg=--disable-localcas")
        .arg(format!(
            "--runner-arg=--workspace-path={}",
            dir.join("workspace").display()
        ))
        .arg(format!("--concurrent-jobs={concurrent_jobs}"))
        .arg("--max-wait-time=2");
    for (key, value) in platform {
        command.args(["--platform", &format!("{key}={value}")]);
    }
    command.arg(name);
    let log = dir.join("worker.log");
    let already = std::fs::read_to_string(&log)
        .map(|t| t.matches(SESSION_CREATED).count())
        .unwrap_or(0);
    let mut process = ServerProcess::spawn(name, command, &log, libc::SIGTERM);
    let deadline = Instant::now() + WORKER_START_TIMEOUT;
    while process.log_text().matches(SESSION_CREATED).count() <= already {
        assert!(
            process.is_running() && Instant::now() < deadline,
            "buildbox-worker {name} got no bot session within {WORKER_START_TIMEOUT:?}:\n{}",
            process.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    process
}

/// The second REAPI server: buildbox-casd with `--buildbox-run`, serving CAS, ByteStream,
/// the action cache, Capabilities and Execution (its jobs run here with
/// buildbox-run-hosttools) from one process, on a free port.
pub struct BuildboxCasd {
    process: ServerProcess,
    port: u16,
    dir: tempfile::TempDir,
}

impl BuildboxCasd {
    pub fn start() -> BuildboxCasd {
        let dir = private_dir("pochi-buildbox-casd-");
        for sub in ["cache", "workspace"] {
            std::fs::create_dir_all(dir.path().join(sub)).expect("casd dir");
        }
        let log = dir.path().join("casd.log");
        let mut last_log = String::new();
        for _ in 0..3 {
            let port = free_port();
            let mut process = ServerProcess::spawn(
                "buildbox-casd",
                casd_command(dir.path(), port),
                &log,
                libc::SIGTERM,
            );
            match process.wait_for_port(port, CASD_START_TIMEOUT) {
                Ok(()) => return BuildboxCasd { process, port, dir },
                Err(text) => last_log = text,
            }
        }
        panic!("buildbox-casd did not start:\n{last_log}");
    }

    /// One server for every test of this test binary.
    pub fn shared() -> &'static BuildboxCasd {
        static SHARED: OnceLock<BuildboxCasd> = OnceLock::new();
        SHARED.get_or_init(BuildboxCasd::start)
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `grpc://127.0.0.1:PORT`, as pochi's `--remote-cache` and `--remote-executor` take it.
    pub fn url(&self) -> String {
        format!("grpc://{}", self.address())
    }

    pub fn log_text(&self) -> String {
        self.process.log_text()
    }

    /// Whether it still answers on its port.
    pub fn answers(&self) -> bool {
        TcpStream::connect(self.address()).is_ok()
    }

    /// Where it keeps its blobs (its `LOCAL_CACHE` directory).
    pub fn cache_dir(&self) -> PathBuf {
        self.dir.path().join("cache")
    }
}

fn casd_command(dir: &Path, port: u16) -> Command {
    let mut command = Command::new(buildbox_tool("buildbox-casd"));
    command
        .arg(format!("--bind=127.0.0.1:{port}"))
        .arg("--log-level=info")
        .arg(format!(
            "--buildbox-run={}",
            buildbox_tool("buildbox-run-hosttools").display()
        ))
        .arg(format!(
            "--runner-arg=--workspace-path={}",
            dir.join("workspace").display()
        ))
        .arg(dir.join("cache"));
    command
}
