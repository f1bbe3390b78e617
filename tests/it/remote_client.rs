//! The `remote` module against real servers the harness starts on 127.0.0.1
//! (`common::servers`): BuildGrid 0.4.4 in cache-only mode for the REAPI gRPC backend,
//! nginx with WebDAV for Bazel's HTTP cache protocol. What the servers hold is checked on
//! their disks, and corrupted there to see that pochi refuses it.

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pochi::cache::{EntryMeta, LocalCache};
use pochi::remote::{
    self, ActionSpec, CommandSpec, Digest, DigestFunction, Endpoint, Lookup, RemoteCache,
    RemoteError, RemoteMiss, StageAction, proto,
};
use prost::Message;

use crate::common::servers::{BuildGridCache, NginxCache, corrupt_file, free_port};

const SHA256: DigestFunction = DigestFunction::Sha256;

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

/// A seed no other test of this process uses (the servers are shared).
fn seed() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let pid = u64::from(std::process::id());
    (pid << 20) + NEXT.fetch_add(1, Ordering::SeqCst)
}

fn endpoint(url: &str) -> Endpoint {
    Endpoint::parse(url)
        .unwrap()
        .with_timeout(Duration::from_secs(60))
}

fn write_file(dir: &Path, name: &str, content: &[u8]) -> (PathBuf, Digest) {
    let path = dir.join(name);
    fs::write(&path, content).unwrap();
    (path, Digest::of_bytes(SHA256, content))
}

/// The blobs of a small real Action (BuildGrid reads the Action behind an entry) and its
/// digest.
fn sample_action(salt: u64) -> (Vec<remote::Blob>, Digest) {
    let inputs = vec![remote::InputFile {
        path: "model/weights.bin".into(),
        digest: Digest::of_bytes(SHA256, b"weights"),
        executable: false,
    }];
    let tree = remote::build_input_tree(SHA256, &inputs).unwrap();
    let command = remote::build_command(&CommandSpec {
        arguments: vec!["./run.sh".into()],
        output_paths: vec!["out/a.txt".into()],
        ..Default::default()
    })
    .unwrap();
    let command = remote::Blob::of_message(SHA256, &command);
    let (_, action) = remote::build_action(
        SHA256,
        &ActionSpec {
            command: command.digest.clone(),
            input_root: tree.root.clone(),
            platform: vec![("OSFamily".into(), "linux".into())],
            salt: salt.to_string().into_bytes(),
            do_not_cache: false,
            timeout: None,
        },
    );
    let digest = action.digest.clone();
    let mut blobs = tree.directories;
    blobs.extend([command, action]);
    (blobs, digest)
}

#[test]
fn buildgrid_capabilities_small_blobs_and_the_action_cache() {
    let server = BuildGridCache::shared();
    let client = remote::connect(&endpoint(&server.url())).unwrap();
    let caps = client.capabilities().unwrap();
    assert_eq!(
        caps.digest_functions,
        [SHA256],
        "BuildGrid offers SHA-256 only"
    );
    assert!(caps.max_batch_total_size > 1 << 20, "{caps:?}");
    assert_eq!(client.digest_function().unwrap(), SHA256);

    let (blobs, action) = sample_action(seed());
    let digests: Vec<Digest> = blobs.iter().map(|b| b.digest.clone()).collect();
    assert_eq!(client.find_missing(&digests).unwrap(), digests);
    client.upload_blobs(&blobs).unwrap();
    assert!(client.find_missing(&digests).unwrap().is_empty());
    for blob in &blobs {
        assert_eq!(client.download_bytes(&blob.digest).unwrap(), blob.bytes);
        assert!(
            server.blob_path(blob.digest.hash()).exists(),
            "on BuildGrid's disk"
        );
    }
    let empty = Digest::of_bytes(SHA256, b"");
    assert!(
        client
            .find_missing(std::slice::from_ref(&empty))
            .unwrap()
            .is_empty()
    );
    assert_eq!(client.download_bytes(&empty).unwrap(), b"");

    assert!(client.get_action_result(&action).unwrap().is_none());
    let result = proto::ActionResult {
        output_files: vec![proto::OutputFile {
            path: "out/a.txt".into(),
            digest: Some(blobs[0].digest.to_proto()),
            ..Default::default()
        }],
        ..Default::default()
    };
    client.update_action_result(&action, &result).unwrap();
    let read = client
        .get_action_result(&action)
        .unwrap()
        .expect("an entry");
    assert_eq!(read.output_files, result.output_files);

    let absent = Digest::of_bytes(SHA256, format!("never uploaded {}", seed()).as_bytes());
    let dir = tempfile::tempdir().unwrap();
    let err = client
        .download_to_file(&absent, &dir.path().join("x"))
        .unwrap_err();
    assert!(matches!(err, RemoteError::NotFound { .. }), "{err}");
    assert!(!dir.path().join("x").exists());
}

#[test]
fn buildgrid_large_blobs_go_over_bytestream_and_are_verified() {
    let server = BuildGridCache::shared();
    let client = remote::connect(&endpoint(&server.url())).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // 20 MB: far over the 4 MiB batch limit, so ByteStream Write and Read in chunks.
    let content = bytes(20_000_000, seed());
    let (path, digest) = write_file(dir.path(), "big.bin", &content);
    let one = std::slice::from_ref(&digest);
    assert_eq!(client.find_missing(one).unwrap(), one);
    client.upload_file(&path, &digest).unwrap();
    assert!(client.find_missing(one).unwrap().is_empty());
    assert!(fs::read(server.blob_path(digest.hash())).unwrap() == content);
    // A second upload of a blob the server has succeeds.
    client.upload_file(&path, &digest).unwrap();

    let dest = dir.path().join("out/big.copy");
    client.download_to_file(&digest, &dest).unwrap();
    assert!(
        fs::read(&dest).unwrap() == content,
        "downloaded bytes differ"
    );

    // Bytes changed on the server's disk: the download fails and leaves no file.
    server.corrupt_blob(digest.hash());
    let bad_dest = dir.path().join("bad.copy");
    let err = client.download_to_file(&digest, &bad_dest).unwrap_err();
    match &err {
        RemoteError::DigestMismatch { expected, .. } => assert_eq!(expected, &digest),
        other => panic!("expected a digest mismatch, got {other}"),
    }
    assert!(!bad_dest.exists());
    assert_eq!(
        fs::read_dir(dir.path()).unwrap().count(),
        2,
        "no temporary file left"
    );

    // A file that changed since it was hashed is refused and nothing is stored.
    let other = bytes(6_000_000, seed());
    let (path, stale) = write_file(dir.path(), "changing.bin", &other);
    let mut changed = other.clone();
    changed[5_999_999] ^= 1;
    fs::write(&path, &changed).unwrap();
    let err = client.upload_file(&path, &stale).unwrap_err();
    assert!(matches!(err, RemoteError::LocalFileChanged { .. }), "{err}");
    assert_eq!(
        client.find_missing(std::slice::from_ref(&stale)).unwrap(),
        [stale]
    );
}

/// A stage with a file output and a directory output (a nested file over the batch
/// limit, an executable, an empty directory), stored in a fresh local cache.
struct StoredStage {
    _dir: tempfile::TempDir,
    cache: LocalCache,
    action: StageAction,
    entry: pochi::cache::Entry,
    model: Vec<u8>,
    data: Vec<u8>,
}

fn stored_stage() -> StoredStage {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    fs::create_dir_all(out.join("engine/sub")).unwrap();
    fs::create_dir_all(out.join("engine/empty")).unwrap();
    let model = bytes(1000, seed());
    let data = bytes(5_000_000, seed());
    fs::write(out.join("model.onnx"), &model).unwrap();
    fs::write(out.join("engine/sub/data.bin"), &data).unwrap();
    fs::write(out.join("engine/run.sh"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(out.join("engine/run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    let cache = LocalCache::at(&dir.path().join("cache"));
    let key = blake3::hash(&model).to_hex().to_string();
    let stored = cache
        .store(
            &key,
            &[
                ("onnx", out.join("model.onnx").as_path()),
                ("engine", out.join("engine").as_path()),
            ],
            &EntryMeta::default(),
        )
        .unwrap();
    let mut platform = pochi::action::base_platform();
    platform.insert("gpu".into(), "Fake GPU (stand-in)".into());
    let portable = pochi::action::PortableAction {
        argv: vec!["worker".into()],
        env: Default::default(),
        inputs: Vec::new(),
        outputs: vec![
            ("onnx".into(), "build/model.onnx".into()),
            ("engine".into(), "build/engine".into()),
        ],
        platform,
        salt: key.clone(),
    };
    let action = remote::stage_action(SHA256, &portable).unwrap();
    StoredStage {
        _dir: dir,
        cache,
        action,
        entry: stored.entry,
        model,
        data,
    }
}

/// Uploads the stage, then restores it into a new directory; returns that directory.
fn round_trip(remote: &RemoteCache, stage: &StoredStage) -> tempfile::TempDir {
    let cache = stage.cache.clone();
    let sent = remote
        .upload(
            &stage.action,
            &stage.entry,
            &|file| cache.blob_path(&file.blake3),
            &[],
        )
        .unwrap();
    assert!(sent.blobs >= 5, "files, tree, Action, Command: {sent:?}");
    let again = remote
        .upload(
            &stage.action,
            &stage.entry,
            &|file| cache.blob_path(&file.blake3),
            &[],
        )
        .unwrap();
    assert_eq!(again.blobs, 0, "a second upload sends no blob");
    let dest = tempfile::tempdir().unwrap();
    let root = dest.path().to_path_buf();
    match remote
        .lookup(&stage.action, &|name| root.join(name))
        .unwrap()
    {
        Lookup::Hit(done) => assert_eq!(done.files, 3),
        Lookup::Miss(miss) => panic!("a miss after an upload: {miss}"),
    }
    assert_eq!(fs::read(dest.path().join("onnx")).unwrap(), stage.model);
    assert!(fs::read(dest.path().join("engine/sub/data.bin")).unwrap() == stage.data);
    let mode = fs::metadata(dest.path().join("engine/run.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o111, 0o111, "executable bit kept");
    assert!(
        dest.path().join("engine/empty").is_dir(),
        "empty directory kept"
    );
    dest
}

#[test]
fn buildgrid_stores_and_restores_a_stage_and_refuses_what_it_damaged() {
    let server = BuildGridCache::shared();
    let remote = RemoteCache::connect(&endpoint(&server.url()), false).unwrap();
    let stage = stored_stage();
    let dest = round_trip(&remote, &stage);
    // The entry is a real Action on the server, with its platform and salt.
    let action = fs::read(server.blob_path(stage.action.digest.hash())).unwrap();
    let action = proto::Action::decode(action.as_slice()).unwrap();
    assert_eq!(action.salt, stage.entry.key.as_bytes());
    let platform = action.platform.unwrap().properties;
    assert!(platform.iter().any(|p| p.name == "gpu"), "{platform:?}");

    // Corrupt the 5 MB blob on BuildGrid's disk: a miss that names it, nothing left.
    let data = Digest::of_bytes(SHA256, &stage.data);
    server.corrupt_blob(data.hash());
    let fresh = tempfile::tempdir().unwrap();
    let root = fresh.path().to_path_buf();
    let found = remote.lookup(&stage.action, &|n| root.join(n)).unwrap();
    assert_eq!(found, Lookup::Miss(RemoteMiss::Corrupt(data.clone())));
    assert!(
        fs::read_dir(fresh.path()).unwrap().next().is_none(),
        "nothing left"
    );
    // Deleted on the server: a miss (BuildGrid drops an entry whose blobs are gone
    // itself; nginx does not, see the nginx test).
    fs::remove_file(server.blob_path(data.hash())).unwrap();
    let found = remote.lookup(&stage.action, &|n| root.join(n)).unwrap();
    assert!(matches!(found, Lookup::Miss(_)), "{found:?}");
    assert!(
        fs::read_dir(fresh.path()).unwrap().next().is_none(),
        "nothing left"
    );
    drop(dest);
}

#[test]
fn a_read_only_cache_uploads_nothing() {
    let server = BuildGridCache::shared();
    let remote = RemoteCache::connect(&endpoint(&server.url()), true).unwrap();
    let stage = stored_stage();
    let cache = stage.cache.clone();
    let sent = remote
        .upload(
            &stage.action,
            &stage.entry,
            &|f| cache.blob_path(&f.blake3),
            &[],
        )
        .unwrap();
    assert_eq!(sent.blobs, 0);
    let model = Digest::of_bytes(SHA256, &stage.model);
    assert!(!server.blob_path(model.hash()).exists());
    let dest = tempfile::tempdir().unwrap();
    let root = dest.path().to_path_buf();
    let found = remote.lookup(&stage.action, &|n| root.join(n)).unwrap();
    assert_eq!(found, Lookup::Miss(RemoteMiss::NoEntry));
}

#[test]
fn nginx_stores_and_restores_a_stage_and_refuses_corrupt_bytes() {
    let server = NginxCache::shared();
    let url = format!("{}/team", server.url());
    let remote = RemoteCache::connect(&endpoint(&url), false).unwrap();
    let stage = stored_stage();
    let dest = round_trip(&remote, &stage);
    let model = Digest::of_bytes(SHA256, &stage.model);
    let on_disk = server.cache_dir().join("team/cas").join(model.hash());
    assert_eq!(
        fs::read(&on_disk).unwrap(),
        stage.model,
        "under /team/cas/<sha256>"
    );
    let entry = server
        .cache_dir()
        .join("team/ac")
        .join(stage.action.digest.hash());
    assert!(entry.exists(), "the entry under /team/ac/<action sha256>");

    // nginx verifies nothing: it serves the corrupted bytes, and pochi refuses them.
    corrupt_file(&on_disk);
    let fresh = tempfile::tempdir().unwrap();
    let root = fresh.path().to_path_buf();
    let found = remote.lookup(&stage.action, &|n| root.join(n)).unwrap();
    assert_eq!(found, Lookup::Miss(RemoteMiss::Corrupt(model)));
    assert!(
        fs::read_dir(fresh.path()).unwrap().next().is_none(),
        "nothing left"
    );
    // Gone from nginx's disk: nginx still serves the entry; pochi's FindMissingBlobs
    // (HEAD) finds the gap before any download.
    fs::remove_file(&on_disk).unwrap();
    let found = remote.lookup(&stage.action, &|n| root.join(n)).unwrap();
    assert_eq!(found, Lookup::Miss(RemoteMiss::BlobsMissing(1)));
    assert!(
        fs::read_dir(fresh.path()).unwrap().next().is_none(),
        "nothing left"
    );
    drop(dest);
}

#[test]
fn nginx_never_stores_a_file_that_changed_since_it_was_hashed() {
    let server = NginxCache::shared();
    let client = remote::connect(&endpoint(&server.url())).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let content = bytes(2_500_000, seed());
    let (path, digest) = write_file(dir.path(), "a.bin", &content);
    let mut changed = content.clone();
    changed[2_499_000] ^= 1;
    fs::write(&path, &changed).unwrap();
    let err = client.upload_file(&path, &digest).unwrap_err();
    assert!(matches!(err, RemoteError::LocalFileChanged { .. }), "{err}");
    assert_eq!(
        client.find_missing(std::slice::from_ref(&digest)).unwrap(),
        [digest]
    );
}

#[test]
fn the_instance_name_reaches_every_call() {
    let server = BuildGridCache::start_with_instance("main");
    let named = endpoint(&server.url()).with_instance(server.instance());
    let remote = RemoteCache::connect(&named, false).unwrap();
    // Batch calls, a ByteStream write and read of the 5 MB blob, the action cache.
    round_trip(&remote, &stored_stage());
    let unnamed = RemoteCache::connect(&endpoint(&server.url()), false).unwrap();
    let err = unnamed.digest_function().unwrap_err();
    assert!(err.to_string().contains(&server.url()), "{err}");
}

/// A STAND-IN for an HTTP cache (a test double that records one request and answers 404),
/// to see what goes on the wire.
fn record_one_request() -> (u16, std::thread::JoinHandle<String>) {
    use std::io::{Read, Write};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
            head.push(byte[0]);
        }
        let answer = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
        stream.write_all(answer).unwrap();
        String::from_utf8_lossy(&head).into_owned()
    });
    (port, handle)
}

#[test]
fn headers_and_the_prefix_go_with_http_calls() {
    let (port, request) = record_one_request();
    let endpoint = endpoint(&format!("http://127.0.0.1:{port}/team/a"))
        .with_header_arg("X-Api-Key=secret-1")
        .unwrap();
    let client = remote::connect(&endpoint).unwrap();
    let action = Digest::of_bytes(SHA256, b"an action");
    assert!(
        client.get_action_result(&action).unwrap().is_none(),
        "404: no entry"
    );
    let head = request.join().unwrap();
    let first = head.lines().next().unwrap_or_default();
    assert_eq!(first, format!("GET /team/a/ac/{} HTTP/1.1", action.hash()));
    assert!(
        head.lines()
            .any(|l| l.eq_ignore_ascii_case("x-api-key: secret-1")),
        "{head}"
    );
    // The header's value is never shown with the endpoint.
    assert!(!endpoint.to_string().contains("secret-1"));
}

fn quick(url: &str) -> Endpoint {
    Endpoint::parse(url)
        .unwrap()
        .with_timeout(Duration::from_secs(1))
        .with_connect_timeout(Duration::from_secs(1))
}

#[test]
fn a_dead_or_silent_server_is_a_typed_error_within_the_timeout() {
    // A listener that accepts connections (the kernel's backlog) and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent = listener.local_addr().unwrap().port();
    let closed = free_port();
    let cases = [
        (format!("grpc://127.0.0.1:{closed}"), "refused"),
        (format!("grpc://127.0.0.1:{silent}"), "silent"),
        (format!("http://127.0.0.1:{closed}/x"), "refused"),
        (format!("http://127.0.0.1:{silent}/x"), "silent"),
    ];
    for (url, kind) in cases {
        let cache = RemoteCache::connect(&quick(&url), false).unwrap();
        let started = Instant::now();
        let err = cache.digest_function().and_then(|function| {
            let probe = Digest::of_bytes(function, b"probe");
            cache.lookup(&stored_stage().action, &|_| PathBuf::from(probe.hash()))
        });
        let err = err.unwrap_err();
        let took = started.elapsed();
        assert!(took < Duration::from_secs(3), "{url} took {took:?}");
        match (kind, &err) {
            ("refused", RemoteError::Unreachable { .. }) => {}
            ("silent", RemoteError::Timeout { .. } | RemoteError::Unreachable { .. }) => {}
            _ => panic!("{url} ({kind}): unexpected {err}"),
        }
        assert!(err.to_string().contains("127.0.0.1"), "{err}");
        // The server is out of the build: the next call does not wait again.
        let started = Instant::now();
        let again = cache.lookup(&stored_stage().action, &|n| PathBuf::from(n));
        assert!(matches!(again, Err(RemoteError::Down { .. })), "{again:?}");
        assert!(started.elapsed() < Duration::from_millis(500), "{url}");
    }
    drop(listener);
}

/// Upload and download throughput of one file through this client, for
/// `bench/remote_throughput.sh`: POCHI_BENCH_URL, POCHI_BENCH_FILE.
#[test]
#[ignore = "benchmark, run by bench/remote_throughput.sh"]
fn bench_throughput() {
    let url = std::env::var("POCHI_BENCH_URL").expect("POCHI_BENCH_URL");
    let file = PathBuf::from(std::env::var("POCHI_BENCH_FILE").expect("POCHI_BENCH_FILE"));
    let endpoint = Endpoint::parse(&url)
        .unwrap()
        .with_timeout(Duration::from_secs(120));
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
    fs::remove_file(&dest).unwrap();
    println!(
        "RESULT rust upload_s={:.3} download_s={:.3} bytes={}",
        upload.as_secs_f64(),
        download.as_secs_f64(),
        digest.size()
    );
}
