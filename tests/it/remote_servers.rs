//! Checks the remote test harness itself (tests/it/common/servers.rs, common/buildbox.rs,
//! tests/servers/): real BuildGrid and nginx servers on 127.0.0.1, driven with BuildGrid's
//! own protos through `tests/servers/reapi_client.py` and with `curl`, with their workers.
//! Needs no pochi REAPI client. Servers shared across tests are stopped by the reaper when
//! this test process ends (see servers.rs).
//!
//! The execution checks whose subject is BuildGrid or the harness's handling of workers
//! run on REAL workers (buildbox-worker with buildbox-run-hosttools, as the remote-execution
//! tests do): an action no worker matches stays queued, a killed worker's command dies with
//! it and its action runs on another worker, a cancel kills the worker's command. One stays
//! on the STAND-IN worker (`tests/servers/standin_worker.py`, a test double), because the
//! stand-in is its subject: `execution_lands_on_the_worker_whose_gpu_matches` checks that
//! the stand-in, a harness component still used where no real worker can do the job (the
//! hostile tree and the Bazel-compared benchmark in remote_execution.rs, the lost blob in
//! remote_execute.rs), is routed by its properties, runs a command in its input root with
//! the executable bit kept, uploads a file, a directory (as a Tree) and stdout, and names
//! itself, like a real worker.

use crate::common::buildbox::{BuildboxWorker, JOB_STARTED, LEASE_DROPPED};
use crate::common::servers::{
    BuildGridCache, BuildGridExecution, ExecutionConfig, NginxCache, alive, command_is_gone,
    reapi_client, wait_for_file,
};
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const CALL: Duration = Duration::from_secs(60);

fn sha256_hex(path: &Path) -> String {
    let output = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .next()
        .expect("a digest")
        .to_string()
}

fn write_temp(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn put(address: &str, file: &Path) -> String {
    let answer = reapi_client(address, &["put", file.to_str().unwrap()], CALL);
    answer["digest"].as_str().expect("a digest").to_string()
}

/// Uploads an Action running `echo WORD`; returns its digest (an action-cache key).
fn put_action(address: &str, word: &str) -> String {
    let answer = reapi_client(address, &["put-action", "--", "echo", word], CALL);
    answer["digest"].as_str().expect("a digest").to_string()
}

#[test]
fn buildgrid_cache_round_trips_blobs_and_action_results() {
    let server = BuildGridCache::shared();
    let address = server.address();
    let dir = tempfile::tempdir().unwrap();
    let small = write_temp(dir.path(), "small", b"a small blob for the harness test\n");
    // Over the 1 MiB batch limit of the client: goes through ByteStream both ways.
    let large_bytes: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let large = write_temp(dir.path(), "large", &large_bytes);
    for file in [&small, &large] {
        let digest = put(&address, file);
        let size = std::fs::metadata(file).unwrap().len();
        assert_eq!(digest, format!("{}/{size}", sha256_hex(file)));
        let back = dir.path().join("back");
        let answer = reapi_client(&address, &["get", &digest, back.to_str().unwrap()], CALL);
        assert_eq!(answer["ok"], true, "{answer}");
        assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(file).unwrap());
        let on_disk = server.blob_path(&sha256_hex(file));
        assert_eq!(
            std::fs::read(on_disk).unwrap(),
            std::fs::read(file).unwrap()
        );
    }
    let absent = format!("{}/5", "ab".repeat(32));
    let small_digest = put(&address, &small);
    let answer = reapi_client(&address, &["find-missing", &absent, &small_digest], CALL);
    assert_eq!(answer["missing"], serde_json::json!([absent]));

    let action = put_action(&address, "round-trip");
    let answer = reapi_client(&address, &["ac-get", &action], CALL);
    assert_eq!(answer["found"], false);
    let output = format!("out/small={small_digest}");
    reapi_client(
        &address,
        &["ac-put", &action, "--output-file", &output],
        CALL,
    );
    let answer = reapi_client(&address, &["ac-get", &action], CALL);
    assert_eq!(answer["found"], true, "{answer}");
    let file = &answer["result"]["outputFiles"][0];
    assert_eq!(file["path"], "out/small");
    assert_eq!(
        file["digest"]["hash"],
        small_digest.split('/').next().unwrap()
    );
}

#[test]
fn a_blob_corrupted_on_the_servers_disk_is_served_as_stored() {
    let server = BuildGridCache::shared();
    let dir = tempfile::tempdir().unwrap();
    let file = write_temp(
        dir.path(),
        "victim",
        b"bytes that will be corrupted on the server",
    );
    let digest = put(&server.address(), &file);
    server.corrupt_blob(&sha256_hex(&file));
    // BuildGrid does not check what it serves: a verifying client sees other bytes.
    let back = dir.path().join("back");
    let answer = reapi_client(
        &server.address(),
        &["get", &digest, back.to_str().unwrap()],
        CALL,
    );
    let error = answer["error"].as_str().unwrap_or_default();
    assert!(error.contains("other bytes"), "{answer}");
}

#[test]
fn a_killed_cache_server_restarts_with_its_cas_and_an_empty_action_cache() {
    let mut server = BuildGridCache::start();
    let dir = tempfile::tempdir().unwrap();
    let blob = put(
        &server.address(),
        &write_temp(dir.path(), "kept", b"survives a restart"),
    );
    let action = put_action(&server.address(), "restart");
    let output = format!("out/kept={blob}");
    reapi_client(
        &server.address(),
        &["ac-put", &action, "--output-file", &output],
        CALL,
    );

    server.kill();
    let refused = std::net::TcpStream::connect(server.address());
    assert!(
        refused.is_err(),
        "the killed server still accepts connections"
    );

    server.restart();
    let answer = reapi_client(&server.address(), &["find-missing", &blob], CALL);
    assert_eq!(
        answer["missing"],
        serde_json::json!([]),
        "the disk CAS lost a blob"
    );
    let answer = reapi_client(&server.address(), &["ac-get", &action], CALL);
    assert_eq!(
        answer["found"], false,
        "the in-memory action cache survived: {answer}"
    );
}

fn curl(args: &[&str]) -> String {
    curl_to(None, args)
}

/// Runs curl; returns the HTTP status. The body goes to `body` (or nowhere).
fn curl_to(body: Option<&Path>, args: &[&str]) -> String {
    let out = body.map_or("/dev/null".into(), |path| path.display().to_string());
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-o", &out, "-w", "%{http_code}"])
        .args(args)
        .output()
        .expect("curl");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn nginx_serves_the_bazel_http_cache_layout() {
    let server = NginxCache::shared();
    let dir = tempfile::tempdir().unwrap();
    let file = write_temp(dir.path(), "blob", b"an HTTP cache blob\n");
    let hash = sha256_hex(&file);
    for kind in ["cas", "ac"] {
        let url = format!("{}/{kind}/{hash}", server.url());
        assert_eq!(
            curl(&["-T", file.to_str().unwrap(), &url]),
            "201",
            "{}",
            server.error_log()
        );
        assert_eq!(curl(&["-I", &url]), "200");
        let back = dir.path().join("back");
        assert_eq!(curl_to(Some(&back), &[&url]), "200");
        assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(&file).unwrap());
        assert_eq!(
            std::fs::read(server.blob_path(kind, &hash)).unwrap(),
            std::fs::read(&file).unwrap()
        );
        // An overwrite is accepted too (204): nginx keeps the last PUT.
        assert_eq!(curl(&["-T", file.to_str().unwrap(), &url]), "204");
    }
    let missing = format!("{}/cas/{}", server.url(), "0".repeat(64));
    assert_eq!(curl(&[&missing]), "404");
    // It verifies nothing: bytes stored under a hash they do not have.
    let wrong = format!("{}/cas/{}", server.url(), "1".repeat(64));
    assert_eq!(curl(&["-T", file.to_str().unwrap(), &wrong]), "201");
}

fn execute(server: &BuildGridExecution, args: &[&str]) -> Value {
    let mut all = vec!["execute"];
    all.extend_from_slice(args);
    reapi_client(&server.address(), &all, Duration::from_secs(120))
}

/// The STAND-IN worker itself (the module's header says why it stays).
#[test]
fn execution_lands_on_the_worker_whose_gpu_matches() {
    let server = BuildGridExecution::shared();
    let linux = [("OSFamily", "linux"), ("ISA", "x86-64")];
    let _t4 = server.worker("t4-worker", &[linux[0], linux[1], ("gpu", "T4")]);
    let _a100 = server.worker("a100-worker", &[linux[0], linux[1], ("gpu", "A100")]);
    let input = tempfile::tempdir().unwrap();
    let tool = write_temp(
        input.path(),
        "tool.sh",
        b"#!/bin/sh\nmkdir -p out/result\necho \"$1\" > out/result/of.txt\n",
    );
    std::fs::set_permissions(&tool, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    // The third is the first again: BuildGrid answers it from its action cache.
    for (gpu, worker, cached) in [
        ("T4", "t4-worker", false),
        ("A100", "a100-worker", false),
        ("T4", "t4-worker", true),
    ] {
        let script = format!("./tool.sh {gpu}-$$; echo ran on {gpu}; echo x > out/file.txt");
        let gpu_property = format!("gpu={gpu}");
        let answer = execute(
            server,
            &[
                "--property",
                "OSFamily=linux",
                "--property",
                &gpu_property,
                "--input",
                input.path().to_str().unwrap(),
                "--output",
                "out/result",
                "--output",
                "out/file.txt",
                "--",
                "sh",
                "-c",
                &script,
            ],
        );
        assert_eq!(answer["done"], true, "{answer}");
        assert_eq!(answer["status"], 0, "{answer}");
        assert_eq!(answer["exit_code"], 0, "{answer}");
        assert_eq!(answer["worker"], worker, "{answer}");
        assert_eq!(answer["cached"], cached, "{answer}");
        assert_eq!(answer["stdout"], format!("ran on {gpu}\n"));
        assert_eq!(answer["outputs"]["out/file.txt"], "x\n");
        let of = answer["outputs"]["out/result/of.txt"]
            .as_str()
            .unwrap_or_default();
        assert!(of.starts_with(&format!("{gpu}-")), "{answer}");
    }
}

#[test]
fn an_action_for_a_gpu_no_worker_has_stays_queued() {
    let server = BuildGridExecution::shared();
    let _t4 = BuildboxWorker::start(
        server,
        "queue-t4-worker",
        &[("OSFamily", "linux"), ("gpu", "T4-queue")],
        1,
    );
    let answer = execute(
        server,
        &[
            "--property",
            "gpu=H100-nobody",
            "--wait",
            "5",
            "--",
            "sh",
            "-c",
            "echo never",
        ],
    );
    assert_eq!(answer["done"], false, "{answer}");
    assert_eq!(answer["stage"], "QUEUED", "{answer}");
}

#[test]
fn buildgrids_queue_timeout_fails_an_action_no_worker_matches() {
    let config = ExecutionConfig {
        queue_timeout: Some(Duration::from_secs(2)),
        ..ExecutionConfig::default()
    };
    let server = BuildGridExecution::start(&config);
    let answer = execute(
        &server,
        &[
            "--property",
            "gpu=H100-nobody",
            "--wait",
            "60",
            "--",
            "sh",
            "-c",
            "echo never",
        ],
    );
    assert_eq!(answer["done"], true, "{answer}");
    assert_eq!(answer["status"], 14, "UNAVAILABLE expected: {answer}");
    let message = answer["message"].as_str().unwrap_or_default();
    assert!(message.contains("queued for too long"), "{answer}");
}

#[test]
fn a_killed_workers_action_is_queued_again_and_runs_on_another_worker() {
    let server = BuildGridExecution::shared();
    let properties = [("OSFamily", "linux"), ("gpu", "retry-gpu")];
    let mut doomed = BuildboxWorker::start(server, "doomed-worker", &properties, 1);
    let marker = tempfile::tempdir().unwrap();
    let first_run = marker.path().join("first-run");
    let script = format!(
        "if [ -e {0} ]; then echo second run; else echo $$ > {0}; exec sleep 120; fi",
        first_run.display()
    );
    let address = server.address();
    let client = std::thread::spawn(move || {
        let args = [
            "execute",
            "--property",
            "gpu=retry-gpu",
            "--wait",
            "90",
            "--",
            "sh",
            "-c",
        ];
        let mut all = args.to_vec();
        all.push(&script);
        reapi_client(&address, &all, Duration::from_secs(120))
    });
    assert!(
        doomed.wait_for_log(JOB_STARTED, Duration::from_secs(60)),
        "{}",
        doomed.log_text()
    );
    let pid: i32 = wait_for_file(&first_run, Duration::from_secs(60))
        .unwrap_or_else(|| panic!("the command never started:\n{}", doomed.log_text()))
        .parse()
        .expect("a pid");
    doomed.kill();
    assert!(!alive(pid), "the command outlived its worker");
    let _rescuer = BuildboxWorker::start(server, "rescuer-worker", &properties, 1);
    let answer = client.join().unwrap();
    assert_eq!(answer["done"], true, "{answer}");
    assert_eq!(answer["worker"], "rescuer-worker", "{answer}");
    assert_eq!(answer["stdout"], "second run\n", "{answer}");
}

#[test]
fn cancelling_an_operation_kills_the_workers_command() {
    let server = BuildGridExecution::shared();
    let mut worker = BuildboxWorker::start(
        server,
        "cancel-worker",
        &[("OSFamily", "linux"), ("gpu", "cancel-gpu")],
        1,
    );
    let marker = tempfile::tempdir().unwrap();
    let pid_file = marker.path().join("pid");
    let script = format!(
        "echo $$ > {}.tmp && mv {0}.tmp {0}; exec sleep 120",
        pid_file.display()
    );
    let answer = execute(
        server,
        &[
            "--property",
            "gpu=cancel-gpu",
            "--wait",
            "60",
            "--cancel-when-file",
            pid_file.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            &script,
        ],
    );
    assert_eq!(answer["cancel_sent"], true, "{answer}");
    assert_eq!(answer["done"], true, "{answer}");
    assert_eq!(answer["status"], 1, "CANCELLED expected: {answer}");
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
