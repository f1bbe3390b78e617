//! The `remote` module against real servers started here on 127.0.0.1: BuildGrid (PyPI,
//! cache-only mode, installed once per build tree into `target/tmp`) for the REAPI gRPC
//! backend, nginx with WebDAV (Debian's `nginx-light`, from `scripts/system-deps`) for
//! Bazel's HTTP cache protocol. Each server is stopped when its test ends.

use std::fs;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pochi::remote::{
    self, ActionSpec, CacheBackend, CommandSpec, Digest, DigestFunction, Endpoint, GrpcClient,
    InputFile, RemoteError, proto,
};
use prost::Message;

const BUILDGRID: &str = "buildgrid==0.4.4";
const SHA256: DigestFunction = DigestFunction::Sha256;

// ---------------------------------------------------------------- servers

/// A server process in its own process group, killed (group and all) on drop.
struct Server {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    log: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let group = self.child.id() as i32;
        unsafe {
            libc::kill(-group, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

impl Server {
    fn spawn(mut command: Command, dir: tempfile::TempDir, port: u16, what: &str) -> Server {
        let log = dir.path().join("server.log");
        let out = fs::File::create(&log).unwrap();
        command
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .process_group(0);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let mut server = Server {
            child,
            port,
            dir,
            log,
        };
        server.wait_for_port(what, Duration::from_secs(60));
        server
    }

    fn wait_for_port(&mut self, what: &str, limit: Duration) {
        let started = Instant::now();
        while started.elapsed() < limit {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{what} exited with {status}:\n{}", self.log_text());
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("{what} did not open port {} within {limit:?}:\n{}", self.port, self.log_text());
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// BuildGrid's virtual environment, created once per build tree (`target/tmp`).
fn buildgrid_bin() -> PathBuf {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("remote-client");
    let venv = root.join("buildgrid-0.4.4");
    let bgd = venv.join("bin/bgd");
    if bgd.exists() {
        return bgd;
    }
    fs::create_dir_all(&root).unwrap();
    let partial = root.join(format!("buildgrid-0.4.4.partial-{}", std::process::id()));
    let _ = fs::remove_dir_all(&partial);
    run(Command::new("python3").arg("-m").arg("venv").arg(&partial));
    run(Command::new(partial.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check", BUILDGRID])
        .env("PIP_DEFAULT_TIMEOUT", "60"));
    // A venv's scripts name the directory they were installed in; the tests only use
    // its `python3`, which finds the venv beside itself, so renaming is safe.
    if fs::rename(&partial, &venv).is_err() {
        let _ = fs::remove_dir_all(&partial);
    }
    bgd
}

fn run(command: &mut Command) {
    let output = command.output().unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// BuildGrid in cache-only mode: disk CAS, in-memory action cache, no database.
fn start_buildgrid() -> Server {
    let bgd = buildgrid_bin();
    let python = bgd.parent().unwrap().join("python3");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("buildgrid.yml");
    let storage = dir.path().join("storage");
    fs::write(
        &config,
        format!(
            "server:\n  - !channel\n    address: \"127.0.0.1:{port}\"\n    insecure-mode: true\n\
             authorization:\n  method: none\n\
             storages:\n  - !disk-storage &cas\n    path: {storage}\n\
             caches:\n  - !lru-action-cache &ac\n    storage: *cas\n    max-cached-refs: 1024\n    \
             allow-updates: true\n    cache-failed-actions: true\n\
             instances:\n  - name: ''\n    services:\n      - !action-cache\n        cache: *ac\n      \
             - !cas\n        storage: *cas\n      - !bytestream\n        storage: *cas\n\
             thread-pool-size: 16\n",
            storage = storage.display()
        ),
    )
    .unwrap();
    // `bgd`'s own script names the directory it was installed in; call its entry point.
    let mut command = Command::new(python);
    command
        .args([
            "-c",
            "import sys; from buildgrid.server.app import cli; sys.argv[0] = 'bgd'; sys.exit(cli())",
            "server",
            "start",
        ])
        .arg(&config);
    Server::spawn(command, dir, port, "BuildGrid")
}

fn buildgrid_object(server: &Server, digest: &Digest) -> PathBuf {
    let hash = digest.hash();
    server
        .dir
        .path()
        .join("storage/cas/objects")
        .join(&hash[..2])
        .join(&hash[2..])
}

fn nginx_binary() -> PathBuf {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("nginx is not installed: run scripts/system-deps (it installs nginx-light)")
}

/// nginx serving `data/` with WebDAV PUT, as a Bazel HTTP cache.
fn start_nginx() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let p = dir.path();
    fs::create_dir_all(p.join("data")).unwrap();
    fs::create_dir_all(p.join("tmp")).unwrap();
    let user = if unsafe { libc::geteuid() } == 0 { "user root;\n" } else { "" };
    let conf = format!(
        "{user}worker_processes 1;\ndaemon off;\npid {p}/nginx.pid;\nerror_log {p}/error.log;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n  access_log off;\n  client_max_body_size 0;\n  \
         client_body_temp_path {p}/tmp/body;\n  proxy_temp_path {p}/tmp/proxy;\n  \
         fastcgi_temp_path {p}/tmp/fastcgi;\n  uwsgi_temp_path {p}/tmp/uwsgi;\n  \
         scgi_temp_path {p}/tmp/scgi;\n  \
         server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      root {p}/data;\n      \
         dav_methods PUT;\n      create_full_put_path on;\n      dav_access user:rw group:r all:r;\n    }}\n  }}\n}}\n",
        p = p.display()
    );
    fs::write(p.join("nginx.conf"), conf).unwrap();
    let mut command = Command::new(nginx_binary());
    command
        .arg("-p")
        .arg(p)
        .arg("-e")
        .arg(p.join("error.log"))
        .arg("-c")
        .arg(p.join("nginx.conf"));
    Server::spawn(command, dir, port, "nginx")
}

// ---------------------------------------------------------------- helpers

/// Deterministic pseudo-random bytes (xorshift), so blobs differ between tests.
fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn grpc(server: &Server) -> GrpcClient {
    let endpoint = Endpoint::parse(&format!("grpc://127.0.0.1:{}", server.port)).unwrap();
    GrpcClient::connect(&endpoint).unwrap()
}

fn http(server: &Server) -> Box<dyn CacheBackend> {
    let endpoint = Endpoint::parse(&format!("http://127.0.0.1:{}/team", server.port)).unwrap();
    remote::connect(&endpoint).unwrap()
}

fn write_file(dir: &Path, name: &str, content: &[u8]) -> (PathBuf, Digest) {
    let path = dir.join(name);
    fs::write(&path, content).unwrap();
    (path, Digest::of_bytes(SHA256, content))
}

/// An ActionResult naming one output file.
fn result_with(path: &str, digest: &Digest) -> proto::ActionResult {
    proto::ActionResult {
        output_files: vec![proto::OutputFile {
            path: path.into(),
            digest: Some(digest.to_proto()),
            is_executable: false,
            ..Default::default()
        }],
        exit_code: 0,
        ..Default::default()
    }
}

/// Blobs and the ActionResult of a small real action (Command, input root, Action).
fn sample_action(function: DigestFunction) -> (Vec<remote::Blob>, Digest) {
    let script = b"#!/bin/sh\necho hi > out/a.txt\n";
    let inputs = vec![
        InputFile {
            path: "run.sh".into(),
            digest: Digest::of_bytes(function, script),
            executable: true,
        },
        InputFile {
            path: "model/weights.bin".into(),
            digest: Digest::of_bytes(function, b"weights"),
            executable: false,
        },
    ];
    let tree = remote::build_input_tree(function, &inputs).unwrap();
    let command = remote::build_command(&CommandSpec {
        arguments: vec!["./run.sh".into()],
        output_paths: vec!["out/a.txt".into()],
        ..Default::default()
    })
    .unwrap();
    let command = remote::Blob::of_message(function, &command);
    let (_, action) = remote::build_action(
        function,
        &ActionSpec {
            command: command.digest.clone(),
            input_root: tree.root.clone(),
            platform: vec![("OSFamily".into(), "linux".into())],
            salt: b"pochi test".to_vec(),
            do_not_cache: false,
            timeout: None,
        },
    );
    let mut blobs = tree.directories;
    blobs.push(command);
    blobs.push(remote::Blob {
        digest: Digest::of_bytes(function, script),
        bytes: script.to_vec(),
    });
    blobs.push(remote::Blob {
        digest: Digest::of_bytes(function, b"weights"),
        bytes: b"weights".to_vec(),
    });
    let action_digest = action.digest.clone();
    blobs.push(action);
    (blobs, action_digest)
}

// ---------------------------------------------------------------- BuildGrid

#[test]
fn buildgrid_capabilities_and_small_blobs() {
    let server = start_buildgrid();
    let client = grpc(&server);
    let caps = client.capabilities().unwrap();
    assert_eq!(caps.digest_functions, [SHA256], "BuildGrid offers SHA-256 only");
    assert!(caps.max_batch_total_size > 1 << 20, "{caps:?}");
    assert_eq!(client.digest_function().unwrap(), SHA256);

    let (blobs, action) = sample_action(SHA256);
    let digests: Vec<Digest> = blobs.iter().map(|b| b.digest.clone()).collect();
    assert_eq!(client.find_missing(&digests).unwrap(), digests);
    client.upload_blobs(&blobs).unwrap();
    assert!(client.find_missing(&digests).unwrap().is_empty());
    for blob in &blobs {
        assert_eq!(client.download_bytes(&blob.digest).unwrap(), blob.bytes);
    }
    // The empty blob is present without an upload.
    let empty = Digest::of_bytes(SHA256, b"");
    assert!(client.find_missing(&[empty.clone()]).unwrap().is_empty());
    assert_eq!(client.download_bytes(&empty).unwrap(), b"");

    // Action cache: absent, written, read back equal.
    assert!(client.get_action_result(&action).unwrap().is_none());
    let result = result_with("out/a.txt", &blobs[0].digest);
    client.update_action_result(&action, &result).unwrap();
    let read = client.get_action_result(&action).unwrap().expect("an entry");
    assert_eq!(read.output_files, result.output_files);

    // A blob the server lacks is a typed NotFound, not an empty answer.
    let absent = Digest::of_bytes(SHA256, b"never uploaded");
    let dir = tempfile::tempdir().unwrap();
    let err = client
        .download_to_file(&absent, &dir.path().join("x"))
        .unwrap_err();
    assert!(matches!(err, RemoteError::NotFound { .. }), "{err}");
    assert!(!dir.path().join("x").exists());
}

#[test]
fn buildgrid_large_blobs_go_over_bytestream_and_are_verified() {
    let server = start_buildgrid();
    let client = grpc(&server);
    let dir = tempfile::tempdir().unwrap();
    // 20 MB: far over the 4 MiB batch limit, so ByteStream Write and Read in chunks.
    let content = bytes(20_000_000, 1);
    let (path, digest) = write_file(dir.path(), "big.bin", &content);
    assert_eq!(client.find_missing(&[digest.clone()]).unwrap(), [digest.clone()]);
    client.upload_file(&path, &digest).unwrap();
    assert!(client.find_missing(&[digest.clone()]).unwrap().is_empty());
    // A second upload of a blob the server has ends early and succeeds.
    client.upload_file(&path, &digest).unwrap();

    let dest = dir.path().join("out/big.copy");
    client.download_to_file(&digest, &dest).unwrap();
    assert!(fs::read(&dest).unwrap() == content, "downloaded bytes differ");
    assert_eq!(client.download_bytes(&digest).unwrap().len(), content.len());

    // Bytes changed on the server's disk: the download fails, no file appears.
    let object = buildgrid_object(&server, &digest);
    let mut corrupt = content.clone();
    corrupt[12_345_678] ^= 0xff;
    fs::write(&object, &corrupt).unwrap();
    let bad_dest = dir.path().join("bad.copy");
    let err = client.download_to_file(&digest, &bad_dest).unwrap_err();
    match &err {
        RemoteError::DigestMismatch { expected, actual, .. } => {
            assert_eq!(expected, &digest);
            assert_eq!(actual, &Digest::of_bytes(SHA256, &corrupt));
        }
        other => panic!("expected a digest mismatch, got {other}"),
    }
    assert!(!bad_dest.exists());
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2, "no temporary file left");

    // A file that changed since it was hashed is refused and nothing is stored.
    let other = bytes(6_000_000, 2);
    let (path, stale) = write_file(dir.path(), "changing.bin", &other);
    let mut changed = other.clone();
    changed[5_999_999] ^= 1;
    fs::write(&path, &changed).unwrap();
    let err = client.upload_file(&path, &stale).unwrap_err();
    assert!(matches!(err, RemoteError::LocalFileChanged { .. }), "{err}");
    assert_eq!(client.find_missing(&[stale.clone()]).unwrap(), [stale]);
}

#[test]
fn buildgrid_output_directories_are_materialized_from_their_tree() {
    let server = start_buildgrid();
    let client = grpc(&server);
    let tool = b"#!/bin/sh\nexit 0\n".to_vec();
    let data = bytes(5_000_000, 3); // over the batch limit: a ByteStream download
    let tool_d = Digest::of_bytes(SHA256, &tool);
    let data_d = Digest::of_bytes(SHA256, &data);
    let sub = proto::Directory {
        files: vec![proto::FileNode {
            name: "data.bin".into(),
            digest: Some(data_d.to_proto()),
            ..Default::default()
        }],
        ..Default::default()
    };
    let sub_d = Digest::of_bytes(SHA256, &sub.encode_to_vec());
    let root = proto::Directory {
        files: vec![proto::FileNode {
            name: "tool.sh".into(),
            digest: Some(tool_d.to_proto()),
            is_executable: true,
            ..Default::default()
        }],
        directories: vec![proto::DirectoryNode {
            name: "sub".into(),
            digest: Some(sub_d.to_proto()),
        }],
        ..Default::default()
    };
    let tree = remote::Blob::of_message(
        SHA256,
        &proto::Tree {
            root: Some(root),
            children: vec![sub],
        },
    );
    client.upload_bytes(&tool, &tool_d).unwrap();
    client.upload_bytes(&data, &data_d).unwrap();
    client.upload_bytes(&tree.bytes, &tree.digest).unwrap();
    let file = bytes(1000, 4);
    let file_d = Digest::of_bytes(SHA256, &file);
    client.upload_bytes(&file, &file_d).unwrap();
    let result = proto::ActionResult {
        output_files: vec![proto::OutputFile {
            path: "report/summary.json".into(),
            digest: Some(file_d.to_proto()),
            ..Default::default()
        }],
        output_directories: vec![proto::OutputDirectory {
            path: "engine".into(),
            tree_digest: Some(tree.digest.to_proto()),
            ..Default::default()
        }],
        ..Default::default()
    };
    let dest = tempfile::tempdir().unwrap();
    remote::download_outputs(&client, &result, dest.path()).unwrap();
    assert_eq!(fs::read(dest.path().join("report/summary.json")).unwrap(), file);
    assert_eq!(fs::read(dest.path().join("engine/tool.sh")).unwrap(), tool);
    assert!(fs::read(dest.path().join("engine/sub/data.bin")).unwrap() == data);
    let mode = fs::metadata(dest.path().join("engine/tool.sh")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o755);
    let mode = fs::metadata(dest.path().join("engine/sub/data.bin")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o644);

    // A result naming a path outside the destination is refused.
    let mut escaping = result.clone();
    escaping.output_files[0].path = "../escape.json".into();
    let err = remote::download_outputs(&client, &escaping, dest.path()).unwrap_err();
    assert!(matches!(err, RemoteError::UnsafePath { .. }), "{err}");
}

// ---------------------------------------------------------------- nginx (HTTP cache)

#[test]
fn nginx_http_cache_roundtrips_and_detects_corruption() {
    let server = start_nginx();
    let client = http(&server);
    client.capabilities().unwrap();
    assert_eq!(client.digest_function().unwrap(), SHA256);
    let dir = tempfile::tempdir().unwrap();
    let content = bytes(3_000_000, 5);
    let (path, digest) = write_file(dir.path(), "model.onnx", &content);
    let small = b"small blob".to_vec();
    let small_d = Digest::of_bytes(SHA256, &small);
    let both = [digest.clone(), small_d.clone()];
    assert_eq!(client.find_missing(&both).unwrap(), both);
    client.upload_file(&path, &digest).unwrap();
    client.upload_bytes(&small, &small_d).unwrap();
    assert!(client.find_missing(&both).unwrap().is_empty());
    let on_disk = server.dir.path().join("data/team/cas").join(digest.hash());
    assert!(fs::read(&on_disk).unwrap() == content, "stored under /team/cas/<sha256>");

    let dest = dir.path().join("copy/model.onnx");
    client.download_to_file(&digest, &dest).unwrap();
    assert!(fs::read(&dest).unwrap() == content);
    assert_eq!(client.download_bytes(&small_d).unwrap(), small);

    // Action cache: a serialized ActionResult under /ac/<sha256>.
    let action = Digest::of_bytes(SHA256, b"an action");
    assert!(client.get_action_result(&action).unwrap().is_none());
    let result = result_with("model.onnx", &digest);
    client.update_action_result(&action, &result).unwrap();
    assert_eq!(client.get_action_result(&action).unwrap(), Some(result.clone()));
    let stored = fs::read(server.dir.path().join("data/team/ac").join(action.hash())).unwrap();
    assert_eq!(proto::ActionResult::decode(stored.as_slice()).unwrap(), result);

    // nginx verifies nothing: bytes overwritten on its disk are served, and refused here.
    let mut corrupt = content.clone();
    corrupt[1] ^= 0x55;
    fs::write(&on_disk, &corrupt).unwrap();
    let bad = dir.path().join("copy/bad.onnx");
    let err = client.download_to_file(&digest, &bad).unwrap_err();
    assert!(matches!(err, RemoteError::DigestMismatch { .. }), "{err}");
    assert!(err.to_string().contains("corrupt"), "{err}");
    assert!(!bad.exists());
    assert_eq!(fs::read_dir(dir.path().join("copy")).unwrap().count(), 1);
    // A longer answer is refused as soon as it passes the size.
    fs::write(&on_disk, [content.as_slice(), b"tail"].concat()).unwrap();
    assert!(matches!(
        client.download_bytes(&digest),
        Err(RemoteError::DigestMismatch { .. })
    ));
    // Missing: a typed NotFound.
    let absent = Digest::of_bytes(SHA256, b"absent");
    assert!(matches!(
        client.download_bytes(&absent),
        Err(RemoteError::NotFound { .. })
    ));
}

#[test]
fn nginx_never_stores_a_file_that_changed_since_it_was_hashed() {
    let server = start_nginx();
    let client = http(&server);
    let dir = tempfile::tempdir().unwrap();
    let content = bytes(2_500_000, 6);
    let (path, digest) = write_file(dir.path(), "a.bin", &content);
    let mut changed = content.clone();
    changed[2_499_000] ^= 1;
    fs::write(&path, &changed).unwrap();
    let err = client.upload_file(&path, &digest).unwrap_err();
    assert!(matches!(err, RemoteError::LocalFileChanged { .. }), "{err}");
    assert_eq!(client.find_missing(&[digest.clone()]).unwrap(), [digest]);
}

// ---------------------------------------------------------------- dead servers

/// A port that accepts connections (the kernel's backlog) and never answers.
fn silent_listener() -> (TcpListener, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    (listener, port)
}

fn closed_port() -> u16 {
    free_port()
}

fn quick(url: &str) -> Endpoint {
    Endpoint::parse(url)
        .unwrap()
        .with_timeout(Duration::from_secs(1))
        .with_connect_timeout(Duration::from_secs(1))
}

#[test]
fn a_dead_or_silent_server_is_a_typed_error_within_the_timeout() {
    let (_listener, silent) = silent_listener();
    let closed = closed_port();
    let cases = [
        (format!("grpc://127.0.0.1:{closed}"), "refused"),
        (format!("grpc://127.0.0.1:{silent}"), "silent"),
        (format!("http://127.0.0.1:{closed}/x"), "refused"),
        (format!("http://127.0.0.1:{silent}/x"), "silent"),
    ];
    for (url, kind) in cases {
        let client = remote::connect(&quick(&url)).unwrap();
        let started = Instant::now();
        let err = client.capabilities().unwrap_err();
        let took = started.elapsed();
        assert!(took < Duration::from_secs(2), "{url} took {took:?}");
        match (kind, &err) {
            ("refused", RemoteError::Unreachable { .. }) => {}
            ("silent", RemoteError::Timeout { .. } | RemoteError::Unreachable { .. }) => {}
            _ => panic!("{url} ({kind}): unexpected {err}"),
        }
        assert!(err.to_string().contains("127.0.0.1"), "{err}");
        let digest = Digest::of_bytes(SHA256, b"x");
        let started = Instant::now();
        assert!(client.find_missing(&[digest]).is_err());
        assert!(started.elapsed() < Duration::from_secs(2), "{url}");
    }
}

// ---------------------------------------------------------------- benchmark (ignored)

/// Upload and download throughput of one file through this client, for
/// `bench/remote_throughput.sh`: POCHI_BENCH_URL, POCHI_BENCH_FILE.
#[test]
#[ignore = "benchmark, run by bench/remote_throughput.sh"]
fn bench_throughput() {
    let url = std::env::var("POCHI_BENCH_URL").expect("POCHI_BENCH_URL");
    let file = PathBuf::from(std::env::var("POCHI_BENCH_FILE").expect("POCHI_BENCH_FILE"));
    let endpoint = Endpoint::parse(&url).unwrap().with_timeout(Duration::from_secs(120));
    let client = remote::connect(&endpoint).unwrap();
    let function = client.digest_function().unwrap();
    let digest = Digest::of_file(function, &file).unwrap();
    let started = Instant::now();
    client.upload_file(&file, &digest).unwrap();
    let upload = started.elapsed();
    let dest = file.with_extension("rust-download");
    let started = Instant::now();
    client.download_to_file(&digest, &dest).unwrap();
    let download = started.elapsed();
    let mut check = fs::File::open(&dest).unwrap();
    let mut first = [0u8; 1];
    check.read_exact(&mut first).unwrap();
    fs::remove_file(&dest).unwrap();
    println!(
        "RESULT rust upload_s={:.3} download_s={:.3} bytes={}",
        upload.as_secs_f64(),
        download.as_secs_f64(),
        digest.size()
    );
}
