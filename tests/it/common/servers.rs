//! Real REAPI servers for the remote-cache and remote-execution tests, started by the tests
//! themselves on 127.0.0.1: BuildGrid (cache only, or with Execution on PostgreSQL), nginx
//! with WebDAV (Bazel's HTTP cache layout), and the STAND-IN WORKER (a test double of a
//! farm worker, `tests/servers/standin_worker.py`). See docs/remote-testing.md. BuildGrid
//! and nginx started with `start_tls` also serve a TLS port and an mTLS port (a client
//! certificate required) with the certificates of `common::tls`.
//!
//! Every server runs in its own session (`setsid`), in a private temp directory, on a free
//! port, and is ready when its port answers (and, for BuildGrid, a Capabilities call).
//! Dropping a handle stops its session. Servers shared by a test binary (`shared()`) live
//! in statics, which Rust never drops: the reaper (`tests/servers/reaper.py`, one per test
//! process) stops every session still registered, and deletes the directories, when the
//! test process ends, whether it returned, panicked or was killed.

use std::cell::Cell;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The platform property keys pochi sends (docs/remote-testing.md); the default
/// `match-property-keys` of the execution server. BuildGrid adds `OSFamily` and `ISA` itself.
pub const POCHI_PLATFORM_KEYS: &[&str] = &[
    "OSFamily",
    "ISA",
    "gpu",
    "tensorrt",
    "cuda",
    "compute_capability",
    "pochi-toolchain",
];

/// How long a fresh BuildGrid install may take (measured: about 65 s on a loaded 2-core machine).
const INSTALL_TIMEOUT: Duration = Duration::from_secs(900);
/// BuildGrid's port opened 6-12 s after start here; this bounds a very loaded machine.
const BUILDGRID_START_TIMEOUT: Duration = Duration::from_secs(120);
const POSTGRES_START_TIMEOUT: Duration = Duration::from_secs(60);
const NGINX_START_TIMEOUT: Duration = Duration::from_secs(20);
const WORKER_START_TIMEOUT: Duration = Duration::from_secs(60);

pub fn servers_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/servers")
}

fn script(name: &str) -> PathBuf {
    servers_dir().join(name)
}

/// The BuildGrid venv, installed on first use (`tests/servers/install_buildgrid.py`).
pub fn buildgrid_venv() -> &'static Path {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    VENV.get_or_init(|| {
        let mut command = Command::new("python3");
        command.arg(script("install_buildgrid.py"));
        let output = output_within(command, INSTALL_TIMEOUT, "install_buildgrid.py");
        PathBuf::from(output.trim())
    })
}

/// The venv's interpreter: it has grpcio and BuildGrid's protos, for the test client.
pub fn venv_python() -> PathBuf {
    buildgrid_venv().join("bin/python")
}

/// Runs a command to completion within `limit`, returning its stdout; panics with its
/// stderr when it fails or takes longer (it is killed then).
pub fn output_within(mut command: Command, limit: Duration, what: &str) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = command
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("stdout file"))
        .stderr(std::fs::File::create(&err).expect("stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} took longer than {limit:?}: {}", read_lossy(&err));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{what} failed: {}", read_lossy(&err));
    read_lossy(&out)
}

fn read_lossy(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

/// The test client (`tests/servers/reapi_client.py`): one JSON object per call.
pub fn reapi_client(address: &str, args: &[&str], limit: Duration) -> serde_json::Value {
    let mut command = Command::new(venv_python());
    command
        .arg(script("reapi_client.py"))
        .args(["--server", address])
        .args(args);
    let what = format!("reapi_client.py {}", args.join(" "));
    let stdout = output_within(command, limit, &what);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {stdout}"))
}

/// A port that was free a moment ago (a server that then fails to bind is restarted on
/// another one by `start_on_free_port`).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// The reaper of this test process: stops registered sessions when the process ends.
struct Reaper {
    stdin: Mutex<ChildStdin>,
}

fn reaper() -> &'static Reaper {
    static REAPER: OnceLock<Reaper> = OnceLock::new();
    REAPER.get_or_init(|| {
        let mut command = Command::new("python3");
        command
            .arg(script("reaper.py"))
            .stdin(Stdio::piped())
            .stdout(Stdio::null());
        in_new_session(&mut command);
        // It lives as long as this test process and is never waited for: it outlives it
        // on purpose, to stop what the process leaves behind.
        #[allow(clippy::zombie_processes)]
        let mut child = command.spawn().expect("start tests/servers/reaper.py");
        let stdin = child.stdin.take().expect("reaper stdin");
        Reaper {
            stdin: Mutex::new(stdin),
        }
    })
}

impl Reaper {
    fn tell(&self, line: &str) {
        let mut stdin = self.stdin.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(stdin, "{line}");
        let _ = stdin.flush();
    }
}

/// Registers a private directory for deletion when the test process ends.
pub fn delete_at_exit(path: &Path) {
    reaper().tell(&format!("dir {}", path.display()));
}

fn in_new_session(command: &mut Command) {
    // SAFETY: setsid is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
}

/// One server process, the leader of its own session, with its output in `log`.
pub struct ServerProcess {
    name: String,
    child: Child,
    log: PathBuf,
    stop_signal: i32,
    stopped: bool,
}

impl ServerProcess {
    /// Starts `command` in a new session, stdout and stderr appended to `log`.
    /// `stop_signal` asks it to stop (PostgreSQL: SIGINT, a fast shutdown).
    pub fn spawn(name: &str, mut command: Command, log: &Path, stop_signal: i32) -> ServerProcess {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        command
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file);
        in_new_session(&mut command);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        reaper().tell(&format!("session {} {stop_signal}", child.id()));
        ServerProcess {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
            stop_signal,
            stopped: false,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn is_running(&mut self) -> bool {
        !self.stopped && matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log_text(&self) -> String {
        read_lossy(&self.log)
    }

    /// Waits until `port` accepts connections. Err when the process exits first; panics
    /// with the log when `limit` passes.
    pub fn wait_for_port(&mut self, port: u16, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(());
            }
            if !self.is_running() {
                return Err(self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "{} did not open port {port} within {limit:?}:\n{}",
                self.name,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the log contains `needle`; false if `limit` passes first.
    pub fn wait_for_log(&mut self, needle: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.log_text().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.log_text().contains(needle)
    }

    /// Kills the whole session at once with SIGKILL, like a crash or a power cut.
    pub fn kill(&mut self) {
        if !self.stopped {
            kill_session(self.pid());
            let _ = self.child.wait();
            self.finish();
        }
    }

    /// Asks the leader to stop, waits a little, then kills what is left of the session.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        unsafe { libc::kill(self.pid(), self.stop_signal) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        kill_session(self.pid());
        let _ = self.child.wait();
        self.finish();
    }

    fn finish(&mut self) {
        self.stopped = true;
        reaper().tell(&format!("forget {}", self.pid()));
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The processes whose session is `sid` (read from /proc), zombies left out.
pub fn session_members(sid: i32) -> Vec<i32> {
    let mut members = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return members;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid pgrp session ..."; comm may hold spaces and parentheses.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() > 3 && fields[0] != "Z" && fields[3] == sid.to_string() {
            members.push(pid);
        }
    }
    members
}

/// SIGKILLs every process of session `sid`, again until none is left (bounded).
pub fn kill_session(sid: i32) {
    for _ in 0..50 {
        let members = session_members(sid);
        if members.is_empty() {
            return;
        }
        for pid in members {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts a server on a free port, trying another port when it exits before its port
/// opens (another process took the port in between). `command` gets the port.
fn start_on_free_port(
    name: &str,
    log: &Path,
    stop_signal: i32,
    limit: Duration,
    command: impl Fn(u16) -> Command,
) -> (u16, ServerProcess) {
    let mut last_log = String::new();
    for _ in 0..3 {
        let port = free_port();
        let started = Instant::now();
        let mut process = ServerProcess::spawn(name, command(port), log, stop_signal);
        match process.wait_for_port(port, limit) {
            Ok(()) => {
                eprintln!(
                    "servers: {name} on port {port} after {:.2?}",
                    started.elapsed()
                );
                return (port, process);
            }
            Err(log_text) => last_log = log_text,
        }
    }
    panic!("{name} did not start:\n{last_log}");
}

/// The extra ports of a server started with certificates: TLS, and mTLS (a client
/// certificate signed by the test CA required).
#[derive(Clone, Copy, Debug)]
pub struct TlsPorts {
    pub tls: u16,
    pub mtls: u16,
}

/// What a server is started with for TLS: the certificates' directory (`common::tls`) and
/// the ports, which are picked anew for each try of `start_on_free_port` until it starts.
struct TlsLaunch<'a> {
    certs: &'a Path,
    ports: Cell<TlsPorts>,
    fixed: bool,
}

impl TlsLaunch<'_> {
    fn new(certs: &Path, ports: Option<TlsPorts>) -> TlsLaunch<'_> {
        TlsLaunch {
            certs,
            fixed: ports.is_some(),
            ports: Cell::new(ports.unwrap_or_else(TlsLaunch::pick)),
        }
    }

    fn pick() -> TlsPorts {
        TlsPorts {
            tls: free_port(),
            mtls: free_port(),
        }
    }

    /// `launch.py`'s TLS arguments, with fresh ports unless they are fixed.
    fn add_args(&self, command: &mut Command) {
        if !self.fixed {
            self.ports.set(TlsLaunch::pick());
        }
        let ports = self.ports.get();
        command
            .arg("--certs")
            .arg(self.certs)
            .args(["--tls-port", &ports.tls.to_string()])
            .args(["--mtls-port", &ports.mtls.to_string()]);
    }

    /// The ports, once both accept connections.
    fn opened(&self, process: &mut ServerProcess, limit: Duration) -> TlsPorts {
        let ports = self.ports.get();
        for port in [ports.tls, ports.mtls] {
            if let Err(log) = process.wait_for_port(port, limit) {
                panic!("the server did not open its TLS port {port}:\n{log}");
            }
        }
        ports
    }
}

fn tls_url(scheme: &str, ports: Option<TlsPorts>, mtls: bool) -> String {
    let ports = ports.expect("the server was started with start_tls");
    let port = if mtls { ports.mtls } else { ports.tls };
    format!("{scheme}://localhost:{port}")
}

/// A private temp directory, registered with the reaper (deleted at exit if not before).
fn private_dir(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("temp dir");
    delete_at_exit(dir.path());
    dir
}

/// Waits until a Capabilities call succeeds (BuildGrid opens its port before it serves).
fn wait_for_capabilities(address: &str, process: &mut ServerProcess, limit: Duration) {
    wait_for_instance(address, "", process, limit);
}

/// Like `wait_for_capabilities`, asking for the instance `instance`.
fn wait_for_instance(address: &str, instance: &str, process: &mut ServerProcess, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let mut command = Command::new(venv_python());
        command
            .arg(script("reapi_client.py"))
            .args(["--server", address, "--instance", instance])
            .args(["--rpc-timeout", "5", "capabilities"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if command.status().map(|s| s.success()).unwrap_or(false) {
            return;
        }
        assert!(
            process.is_running() && Instant::now() < deadline,
            "BuildGrid at {address} does not answer Capabilities:\n{}",
            process.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// BuildGrid in cache-only mode: CAS, ByteStream, ActionCache (in memory: empty after a
/// restart) and Capabilities, with its disk CAS under a private directory.
pub struct BuildGridCache {
    // Fields drop in order: the server stops before its directory goes.
    process: ServerProcess,
    dir: tempfile::TempDir,
    port: u16,
    instance: String,
    certs: Option<PathBuf>,
    tls: Option<TlsPorts>,
}

impl BuildGridCache {
    pub fn start() -> BuildGridCache {
        BuildGridCache::start_with_instance("")
    }

    /// A server whose one instance is named `instance` (`""`: the unnamed instance).
    pub fn start_with_instance(instance: &str) -> BuildGridCache {
        let dir = private_dir("pochi-buildgrid-cache-");
        let (port, process) = Self::launch(dir.path(), None, instance, None);
        BuildGridCache {
            dir,
            port,
            process,
            instance: instance.to_string(),
            certs: None,
            tls: None,
        }
    }

    /// A server that also serves a TLS port and an mTLS port with the certificates in
    /// `certs` (`common::tls::Certificates`).
    pub fn start_tls(certs: &Path) -> BuildGridCache {
        let dir = private_dir("pochi-buildgrid-cache-");
        let tls = TlsLaunch::new(certs, None);
        let (port, mut process) = Self::launch(dir.path(), None, "", Some(&tls));
        let ports = tls.opened(&mut process, BUILDGRID_START_TIMEOUT);
        BuildGridCache {
            dir,
            port,
            process,
            instance: String::new(),
            certs: Some(certs.to_path_buf()),
            tls: Some(ports),
        }
    }

    /// `grpcs://localhost:PORT` of its TLS port (`mtls`: of the port that requires a
    /// client certificate).
    pub fn tls_url(&self, mtls: bool) -> String {
        tls_url("grpcs", self.tls, mtls)
    }

    /// One server for every test of this test binary that does not restart it.
    pub fn shared() -> &'static BuildGridCache {
        static SHARED: OnceLock<BuildGridCache> = OnceLock::new();
        SHARED.get_or_init(BuildGridCache::start)
    }

    fn launch(
        dir: &Path,
        port: Option<u16>,
        instance: &str,
        tls: Option<&TlsLaunch>,
    ) -> (u16, ServerProcess) {
        let venv = buildgrid_venv();
        let command = |port: u16| {
            let mut command = Command::new("python3");
            command
                .arg(script("launch.py"))
                .arg("buildgrid-cache")
                .arg("--venv")
                .arg(venv)
                .arg("--dir")
                .arg(dir)
                .args(["--port", &port.to_string(), "--instance", instance]);
            if let Some(tls) = tls {
                tls.add_args(&mut command);
            }
            command
        };
        let log = dir.join("buildgrid.log");
        let (port, mut process) = match port {
            None => start_on_free_port(
                "BuildGrid",
                &log,
                libc::SIGTERM,
                BUILDGRID_START_TIMEOUT,
                command,
            ),
            Some(port) => {
                let mut process =
                    ServerProcess::spawn("BuildGrid", command(port), &log, libc::SIGTERM);
                if let Err(log_text) = process.wait_for_port(port, BUILDGRID_START_TIMEOUT) {
                    panic!("BuildGrid did not restart on port {port}:\n{log_text}");
                }
                (port, process)
            }
        };
        wait_for_instance(
            &format!("127.0.0.1:{port}"),
            instance,
            &mut process,
            BUILDGRID_START_TIMEOUT,
        );
        (port, process)
    }

    /// The name of its instance.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// `127.0.0.1:PORT`, for gRPC clients.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `grpc://127.0.0.1:PORT`, as pochi's `--remote-cache` takes it.
    pub fn url(&self) -> String {
        format!("grpc://{}", self.address())
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The disk storage's root (BuildGrid's `!disk-storage` path).
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Where the server keeps the blob with this SHA-256 (`cas/objects/<2>/<62>`).
    pub fn blob_path(&self, sha256: &str) -> PathBuf {
        blob_path(&self.storage_dir(), sha256)
    }

    /// Overwrites a stored blob with other bytes of the same length (the digest no longer
    /// matches); panics if the server does not have it.
    pub fn corrupt_blob(&self, sha256: &str) {
        corrupt_file(&self.blob_path(sha256));
    }

    pub fn log_text(&self) -> String {
        self.process.log_text()
    }

    /// The server's process id, which is also its session's and process group's.
    pub fn pid(&self) -> i32 {
        self.process.pid()
    }

    /// Kills the server (SIGKILL) and leaves it down; its storage stays.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts it again on the same port with the same storage (the action cache is empty).
    pub fn restart(&mut self) {
        self.process.kill();
        let certs = self.certs.clone();
        let tls = certs
            .as_deref()
            .map(|certs| TlsLaunch::new(certs, self.tls));
        let (_, mut process) = Self::launch(
            self.dir.path(),
            Some(self.port),
            &self.instance,
            tls.as_ref(),
        );
        if let Some(tls) = &tls {
            tls.opened(&mut process, BUILDGRID_START_TIMEOUT);
        }
        self.process = process;
    }
}

fn blob_path(storage: &Path, sha256: &str) -> PathBuf {
    storage
        .join("cas/objects")
        .join(&sha256[..2])
        .join(&sha256[2..])
}

/// Flips every byte of a file in place (same length, other content).
pub fn corrupt_file(path: &Path) {
    let mut bytes =
        std::fs::read(path).unwrap_or_else(|e| panic!("no blob at {}: {e}", path.display()));
    if bytes.is_empty() {
        bytes.push(0);
    }
    for byte in &mut bytes {
        *byte ^= 0xff;
    }
    std::fs::write(path, bytes).expect("overwrite blob");
}

/// nginx with WebDAV PUT serving Bazel's HTTP cache layout (`/ac/<sha256>`,
/// `/cas/<sha256>`) from `cache/` in a private directory. It verifies nothing.
pub struct NginxCache {
    _process: ServerProcess,
    dir: tempfile::TempDir,
    port: u16,
    tls: Option<TlsPorts>,
}

impl NginxCache {
    pub fn start() -> NginxCache {
        NginxCache::launch(None)
    }

    /// nginx that also serves https on a TLS port and on an mTLS port
    /// (`ssl_verify_client on`) with the certificates in `certs` (`common::tls`).
    pub fn start_tls(certs: &Path) -> NginxCache {
        NginxCache::launch(Some(certs))
    }

    fn launch(certs: Option<&Path>) -> NginxCache {
        let dir = private_dir("pochi-nginx-");
        let log = dir.path().join("launch.log");
        let tls = certs.map(|certs| TlsLaunch::new(certs, None));
        let (port, mut process) =
            start_on_free_port("nginx", &log, libc::SIGQUIT, NGINX_START_TIMEOUT, |port| {
                let mut command = Command::new("python3");
                command
                    .arg(script("launch.py"))
                    .arg("nginx")
                    .arg("--dir")
                    .arg(dir.path())
                    .args(["--port", &port.to_string()]);
                if let Some(tls) = &tls {
                    tls.add_args(&mut command);
                }
                command
            });
        let tls = tls.map(|tls| tls.opened(&mut process, NGINX_START_TIMEOUT));
        NginxCache {
            dir,
            port,
            _process: process,
            tls,
        }
    }

    /// `https://localhost:PORT` of its TLS port (`mtls`: of the port that requires a
    /// client certificate).
    pub fn tls_url(&self, mtls: bool) -> String {
        tls_url("https", self.tls, mtls)
    }

    pub fn shared() -> &'static NginxCache {
        static SHARED: OnceLock<NginxCache> = OnceLock::new();
        SHARED.get_or_init(NginxCache::start)
    }

    /// `http://127.0.0.1:PORT`, as pochi's `--remote-cache` takes it.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The served directory: `ac/` and `cas/` below it.
    pub fn cache_dir(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    /// `kind` is `ac` or `cas`.
    pub fn blob_path(&self, kind: &str, sha256: &str) -> PathBuf {
        self.cache_dir().join(kind).join(sha256)
    }

    pub fn error_log(&self) -> String {
        read_lossy(&self.dir.path().join("error.log"))
    }
}

/// PostgreSQL (Debian's) on a private data directory, for BuildGrid's scheduler. As root
/// it runs as the `postgres` user. One per test binary is enough: each execution server
/// gets its own database.
pub struct Postgres {
    _process: ServerProcess,
    _dir: tempfile::TempDir,
    port: u16,
    databases: AtomicUsize,
}

impl Postgres {
    pub fn start() -> Postgres {
        let dir = private_dir("pochi-postgres-");
        let log = dir.path().join("postgres.log");
        let (port, process) = start_on_free_port(
            "PostgreSQL",
            &log,
            libc::SIGINT,
            POSTGRES_START_TIMEOUT,
            |port| {
                let mut command = Command::new("python3");
                command
                    .arg(script("launch.py"))
                    .arg("postgres")
                    .arg("--dir")
                    .arg(dir.path())
                    .args(["--port", &port.to_string()]);
                command
            },
        );
        Postgres {
            _dir: dir,
            port,
            _process: process,
            databases: AtomicUsize::new(0),
        }
    }

    pub fn shared() -> &'static Postgres {
        static SHARED: OnceLock<Postgres> = OnceLock::new();
        SHARED.get_or_init(Postgres::start)
    }

    /// Creates a new empty database; returns its URL.
    pub fn create_database(&self) -> String {
        let name = format!("buildgrid{}", self.databases.fetch_add(1, Ordering::SeqCst));
        let mut command = Command::new("python3");
        command.arg(script("launch.py")).args([
            "createdb",
            "--port",
            &self.port.to_string(),
            "--name",
            &name,
        ]);
        output_within(command, Duration::from_secs(60), "createdb");
        format!("postgresql://postgres@127.0.0.1:{}/{name}", self.port)
    }
}

/// What an execution server is configured with.
#[derive(Clone, Debug)]
pub struct ExecutionConfig {
    /// `match-property-keys`: a job's properties under these keys must be offered by the
    /// worker; a key outside the list is refused (FAILED_PRECONDITION).
    pub match_keys: Vec<String>,
    /// BuildGrid's own queue timeout: a job queued longer completes with UNAVAILABLE
    /// ("Operation has been queued for too long"). None: it stays QUEUED for ever.
    pub queue_timeout: Option<Duration>,
    /// A worker silent for this long is dead: its job is queued again (whole seconds;
    /// at least 4, since BuildGrid assigns no lease on a long-poll shorter than 3 s).
    pub bot_keepalive: Duration,
    /// How many times a job is assigned before it fails with ABORTED.
    pub max_job_attempts: u32,
}

impl Default for ExecutionConfig {
    fn default() -> Self {
        ExecutionConfig {
            match_keys: POCHI_PLATFORM_KEYS.iter().map(|k| k.to_string()).collect(),
            queue_timeout: None,
            bot_keepalive: Duration::from_secs(6),
            max_job_attempts: 5,
        }
    }
}

/// BuildGrid with Execution (and the cache services) on the shared PostgreSQL. Workers
/// are stand-ins (`worker`, a test double) or real ones (`common::buildbox`).
pub struct BuildGridExecution {
    process: ServerProcess,
    dir: tempfile::TempDir,
    port: u16,
    workers: AtomicUsize,
    tls: Option<TlsPorts>,
    /// The certificates of its TLS ports, for a restart.
    certs: Option<PathBuf>,
    sql: String,
    config: ExecutionConfig,
}

impl BuildGridExecution {
    pub fn start(config: &ExecutionConfig) -> BuildGridExecution {
        BuildGridExecution::launch(config, None)
    }

    /// A server that also serves a TLS port and an mTLS port with the certificates in
    /// `certs` (`common::tls`); its workers use the plain port, or the TLS one
    /// (`BuildboxWorker::start_tls`).
    pub fn start_tls(config: &ExecutionConfig, certs: &Path) -> BuildGridExecution {
        BuildGridExecution::launch(config, Some(certs))
    }

    /// `grpcs://localhost:PORT` of its TLS port (`mtls`: of the port that requires a
    /// client certificate).
    pub fn tls_url(&self, mtls: bool) -> String {
        tls_url("grpcs", self.tls, mtls)
    }

    fn launch(config: &ExecutionConfig, certs: Option<&Path>) -> BuildGridExecution {
        let tls = certs.map(|certs| TlsLaunch::new(certs, None));
        let sql = Postgres::shared().create_database();
        let dir = private_dir("pochi-buildgrid-exec-");
        let log = dir.path().join("buildgrid.log");
        let (port, mut process) = start_on_free_port(
            "BuildGrid",
            &log,
            libc::SIGTERM,
            BUILDGRID_START_TIMEOUT,
            |port| Self::command(dir.path(), port, &sql, config, tls.as_ref()),
        );
        wait_for_capabilities(
            &format!("127.0.0.1:{port}"),
            &mut process,
            BUILDGRID_START_TIMEOUT,
        );
        let tls = tls.map(|tls| tls.opened(&mut process, BUILDGRID_START_TIMEOUT));
        BuildGridExecution {
            dir,
            port,
            process,
            workers: AtomicUsize::new(0),
            tls,
            certs: certs.map(Path::to_path_buf),
            sql,
            config: config.clone(),
        }
    }

    fn command(
        dir: &Path,
        port: u16,
        sql: &str,
        config: &ExecutionConfig,
        tls: Option<&TlsLaunch>,
    ) -> Command {
        let mut command = Command::new("python3");
        command
            .arg(script("launch.py"))
            .arg("buildgrid-exec")
            .arg("--venv")
            .arg(buildgrid_venv())
            .arg("--dir")
            .arg(dir)
            .args(["--port", &port.to_string(), "--sql", sql])
            .args([
                "--bot-keepalive",
                &config.bot_keepalive.as_secs().to_string(),
            ])
            .args(["--max-job-attempts", &config.max_job_attempts.to_string()]);
        for key in &config.match_keys {
            command.args(["--match-key", key]);
        }
        if let Some(timeout) = config.queue_timeout {
            command.args(["--queue-timeout", &timeout.as_secs_f64().to_string()]);
        }
        if let Some(tls) = tls {
            tls.add_args(&mut command);
        }
        command
    }

    /// Kills the server and starts it again on the same port, storage and database (its
    /// in-memory action cache is empty). Workers' bot sessions are gone: a real worker
    /// (buildbox-worker) exits and must be restarted too.
    pub fn restart(&mut self) {
        self.process.kill();
        let log = self.dir.path().join("buildgrid.log");
        let tls = (self.certs.as_deref()).map(|certs| TlsLaunch::new(certs, self.tls));
        let command = Self::command(
            self.dir.path(),
            self.port,
            &self.sql,
            &self.config,
            tls.as_ref(),
        );
        let mut process = ServerProcess::spawn("BuildGrid", command, &log, libc::SIGTERM);
        if let Err(text) = process.wait_for_port(self.port, BUILDGRID_START_TIMEOUT) {
            panic!("BuildGrid did not restart on port {}:\n{text}", self.port);
        }
        wait_for_capabilities(&self.address(), &mut process, BUILDGRID_START_TIMEOUT);
        self.process = process;
    }

    /// `restart` with a new, empty database: the restarted server knows no operation of
    /// before (WaitExecution on one is NOT_FOUND), like a farm that lost its scheduler's
    /// state.
    pub fn restart_with_a_new_database(&mut self) {
        self.sql = Postgres::shared().create_database();
        self.restart();
    }

    /// One server with the default configuration for the whole test binary.
    pub fn shared() -> &'static BuildGridExecution {
        static SHARED: OnceLock<BuildGridExecution> = OnceLock::new();
        SHARED.get_or_init(|| BuildGridExecution::start(&ExecutionConfig::default()))
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `grpc://127.0.0.1:PORT`, as pochi's `--remote-executor` takes it.
    pub fn url(&self) -> String {
        format!("grpc://{}", self.address())
    }

    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    pub fn blob_path(&self, sha256: &str) -> PathBuf {
        blob_path(&self.storage_dir(), sha256)
    }

    pub fn log_text(&self) -> String {
        self.process.log_text()
    }

    /// Starts a stand-in worker (a test double) with this name and these platform
    /// properties; returns once BuildGrid has its bot session.
    pub fn worker(&self, name: &str, properties: &[(&str, &str)]) -> StandinWorker {
        self.worker_with(name, properties, &[])
    }

    /// `worker` with more arguments for the stand-in (`--hostile-tree-into DIR`).
    pub fn worker_with(
        &self,
        name: &str,
        properties: &[(&str, &str)],
        extra: &[&str],
    ) -> StandinWorker {
        let index = self.workers.fetch_add(1, Ordering::SeqCst);
        let dir = self.dir.path().join(format!("worker-{index}-{name}"));
        std::fs::create_dir_all(&dir).expect("worker dir");
        let mut command = Command::new(venv_python());
        command
            .arg(script("standin_worker.py"))
            .args(["--server", &self.address(), "--name", name])
            .arg("--work-dir")
            .arg(&dir);
        for (key, value) in properties {
            command.args(["--property", &format!("{key}={value}")]);
        }
        command.args(extra);
        let log = dir.join("worker.log");
        let mut process = ServerProcess::spawn(name, command, &log, libc::SIGTERM);
        assert!(
            process.wait_for_log(": session ", WORKER_START_TIMEOUT),
            "stand-in worker {name} got no bot session:\n{}",
            process.log_text()
        );
        StandinWorker {
            name: name.to_string(),
            process,
        }
    }
}

/// THE STAND-IN WORKER (a test double of a farm worker): `tests/servers/standin_worker.py`
/// in its own session; the commands it runs are in that session too, so dropping it stops
/// them with it.
pub struct StandinWorker {
    pub name: String,
    process: ServerProcess,
}

impl StandinWorker {
    /// Its log: one line per event ("lease ID started", "... completed", "... cancelled").
    pub fn log_text(&self) -> String {
        self.process.log_text()
    }
}

/// Whether a process runs (a zombie, dead but not yet reaped, does not).
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim().to_string())
        })
        .is_some_and(|rest| !rest.starts_with('Z'))
}

/// Whether the process whose pid a command wrote to `pid_file` is gone within 10 s.
pub fn command_is_gone(pid_file: &Path) -> bool {
    let pid: i32 = std::fs::read_to_string(pid_file)
        .expect("the command's pid file")
        .trim()
        .parse()
        .expect("a pid");
    (0..200).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        !alive(pid)
    })
}

/// The first line of a file, once a command has written it (within `limit`).
pub fn wait_for_file(path: &Path, limit: Duration) -> Option<String> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(text) = std::fs::read_to_string(path)
            && text.ends_with('\n')
        {
            return Some(text.trim().to_string());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}
