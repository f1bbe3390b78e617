//! TLS and mTLS to remote servers (`--tls-ca-cert`, `--tls-client-cert`,
//! `--tls-client-key` and their `POCHI_TLS_*` variables), against real servers the
//! harness starts on 127.0.0.1 with certificates it makes with openssl (`common::tls`: a
//! private CA, as a company's): BuildGrid 0.4.4 with a TLS channel and an mTLS channel, as
//! a cache and as an executor, and nginx with https and with `ssl_verify_client on`. With
//! the CA (and the client pair) a fresh clone restores the first build's bytes, or a stage
//! runs on the farm; without, the cache costs a warning naming the flag that fixes it (a
//! local build), the executor an error naming it. A bad file is an error before anything
//! runs.
//!
//! No test here uses the stand-in worker (`tests/servers/standin_worker.py`): the
//! executor's worker is a REAL one (buildbox-worker with buildbox-run-hosttools,
//! `common::buildbox`) that reaches BuildGrid over its TLS port too, verifying it with the
//! same CA (buildbox's `--server-cert`), so the whole farm speaks TLS; the job it has, to
//! run a command stage, is one any real worker does.

use std::path::Path;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::common::buildbox::BuildboxWorker;
use crate::common::servers::{BuildGridCache, BuildGridExecution, ExecutionConfig, NginxCache};
use crate::common::tls::Certificates;
use crate::common::{Project, Run, summary_stage as stage};

/// How long one pochi run may take here.
const RUN_LIMIT: Duration = Duration::from_secs(300);

/// A stage that writes random bytes, so identical bytes in a clone prove a restore.
const PIPELINE: &str = r#"
[pipeline]
name = "tls"

[stages.export]
kind = "command"
run = ["sh", "-c", "echo export >> runs.log; ( cat {inputs.src}; head -c 300000 /dev/urandom ) > {outputs.out}"]
inputs = { src = "model.txt" }
outputs = { out = "out/model.onnx" }
"#;

/// A project whose stage no other test has (the servers are shared): its model names the
/// project's own temporary directory.
fn project() -> Project {
    let project = Project::new(PIPELINE);
    let model = project.path("model.txt");
    project.write("model.txt", &format!("weights of {}\n", model.display()));
    project
}

/// One BuildGrid with TLS and mTLS channels for the tests of this process.
fn buildgrid() -> &'static BuildGridCache {
    static SHARED: OnceLock<BuildGridCache> = OnceLock::new();
    SHARED.get_or_init(|| BuildGridCache::start_tls(Certificates::shared().dir()))
}

/// One nginx with https and `ssl_verify_client on` for the tests of this process.
fn nginx() -> &'static NginxCache {
    static SHARED: OnceLock<NginxCache> = OnceLock::new();
    SHARED.get_or_init(|| NginxCache::start_tls(Certificates::shared().dir()))
}

/// `pochi ARGS` in `project` with `env`, killed (and the test failed) after `RUN_LIMIT`.
fn pochi(project: &Project, args: &[&str], env: &[(&str, &Path)]) -> Run {
    let mut command = project.command(args);
    for name in [
        "POCHI_TLS_CA_CERT",
        "POCHI_TLS_CLIENT_CERT",
        "POCHI_TLS_CLIENT_KEY",
    ] {
        command.env_remove(name);
    }
    for (name, value) in env {
        command.env(name, value);
    }
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pochi");
    let id = child.id();
    let waiter = std::thread::spawn(move || child.wait_with_output());
    let deadline = Instant::now() + RUN_LIMIT;
    while !waiter.is_finished() {
        if Instant::now() > deadline {
            // SAFETY: killing the child this test spawned, which hangs.
            unsafe { libc::kill(id as i32, libc::SIGKILL) };
            let _ = waiter.join();
            panic!("pochi {args:?} hung for more than {RUN_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Run::from_output(waiter.join().unwrap().expect("pochi output"))
}

/// `pochi build --json --remote-cache URL` with `flags` (TLS files) and `env`.
fn build_cached(project: &Project, url: &str, flags: &[&str], env: &[(&str, &Path)]) -> Run {
    let mut args = vec![
        "build",
        "--json",
        "--remote-cache",
        url,
        "--remote-timeout",
        "20",
    ];
    args.extend_from_slice(flags);
    pochi(project, &args, env)
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// The CA flag, and with `client` the client pair's too.
fn tls_flags(certs: &Certificates, client: bool) -> Vec<String> {
    let mut flags = vec!["--tls-ca-cert".to_string(), path(&certs.ca()).to_string()];
    if client {
        flags.extend([
            "--tls-client-cert".to_string(),
            path(&certs.client_cert()).to_string(),
            "--tls-client-key".to_string(),
            path(&certs.client_key()).to_string(),
        ]);
    }
    flags
}

fn strs(flags: &[String]) -> Vec<&str> {
    flags.iter().map(String::as_str).collect()
}

/// A builds and uploads through `url`; a fresh clone with an empty local cache runs
/// nothing and gets A's bytes.
fn a_fresh_clone_restores(url: &str, flags: &[&str], env: &[(&str, &Path)]) {
    let a = project();
    let run = build_cached(&a, url, flags, env);
    run.assert_ok();
    assert_eq!(run.ran(), ["export"], "{}", run.stderr);
    assert!(!run.stderr.contains("warning"), "{}", run.stderr);
    let b = Project::new(PIPELINE);
    b.write("model.txt", &a.read("model.txt"));
    let run = build_cached(&b, url, flags, env);
    run.assert_ok();
    assert_eq!(run.ran(), Vec::<String>::new(), "{}", run.stderr);
    assert_eq!(run.count("restored_remote"), 1, "{}", run.stdout);
    assert_eq!(b.logged_runs(), 0);
    assert!(
        std::fs::read(a.path("out/model.onnx")).unwrap()
            == std::fs::read(b.path("out/model.onnx")).unwrap(),
        "byte-identical output from the TLS server"
    );
}

/// The build succeeds locally with a warning that contains every one of `needles`.
fn warns_and_builds_locally(url: &str, flags: &[&str], needles: &[&str]) {
    let project = project();
    let run = build_cached(&project, url, flags, &[]);
    run.assert_ok();
    assert_eq!(run.ran(), ["export"], "{}", run.stderr);
    assert!(run.stderr.contains("warning"), "{}", run.stderr);
    for needle in needles {
        assert!(
            run.stderr.contains(needle),
            "lacks {needle:?}: {}",
            run.stderr
        );
    }
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
}

/// With --tls-ca-cert a fresh clone restores from `url`; without, a warning names it.
fn with_the_ca_restores_and_without_it_warns(url: &str) {
    let certs = Certificates::shared();
    a_fresh_clone_restores(url, &strs(&tls_flags(certs, false)), &[]);
    let needles = ["does not verify", "UnknownIssuer", "--tls-ca-cert"];
    warns_and_builds_locally(url, &[], &needles);
}

#[test]
fn buildgrid_over_tls_with_the_ca_restores_and_without_it_warns_naming_the_flag() {
    let url = buildgrid().tls_url(false);
    with_the_ca_restores_and_without_it_warns(&url);
    // The same through the environment, and by IP address (the certificate names it).
    let by_ip = url.replace("localhost", "127.0.0.1");
    let ca = Certificates::shared().ca();
    a_fresh_clone_restores(&by_ip, &[], &[("POCHI_TLS_CA_CERT", &ca)]);
    // With --remote-cache-required the server is checked first: an error with a `help:`.
    let run = build_cached(&project(), &url, &["--remote-cache-required"], &[]);
    run.assert_error(&["does not verify", "help:", "--tls-ca-cert FILE"]);
}

#[test]
fn buildgrid_over_mtls_with_the_client_pair_restores_and_without_it_warns_naming_the_flag() {
    let certs = Certificates::shared();
    let url = buildgrid().tls_url(true);
    a_fresh_clone_restores(&url, &strs(&tls_flags(certs, true)), &[]);
    let ca_only = tls_flags(certs, false);
    warns_and_builds_locally(
        &url,
        &strs(&ca_only),
        &["asks for one", "--tls-client-cert"],
    );
}

#[test]
fn nginx_over_https_with_the_ca_restores_and_without_it_warns_naming_the_flag() {
    with_the_ca_restores_and_without_it_warns(&nginx().tls_url(false));
}

#[test]
fn nginx_with_ssl_verify_client_restores_with_the_client_pair_and_warns_without() {
    let certs = Certificates::shared();
    let url = nginx().tls_url(true);
    let env = [
        ("POCHI_TLS_CA_CERT", certs.ca()),
        ("POCHI_TLS_CLIENT_CERT", certs.client_cert()),
        ("POCHI_TLS_CLIENT_KEY", certs.client_key()),
    ];
    let env: Vec<(&str, &Path)> = env.iter().map(|(k, v)| (*k, v.as_path())).collect();
    a_fresh_clone_restores(&url, &[], &env);
    warns_and_builds_locally(
        &url,
        &strs(&tls_flags(certs, false)),
        &["No required SSL certificate", "--tls-client-cert"],
    );
}

/// A remote stage (`executor = "remote"`) on a TLS executor whose real worker
/// (buildbox-worker with buildbox-run-hosttools) reaches it over TLS too.
const REMOTE: &str = r#"
[stages.upper]
kind = "command"
executor = "remote"
run = ["sh", "-c", "tr a-z A-Z < {inputs.text} > {outputs.out}"]
inputs = { text = "words.txt" }
outputs = { out = "out/upper.txt" }
"#;

fn build_remote(project: &Project, url: &str, flags: &[&str]) -> Run {
    let mut args = vec![
        "build",
        "--json",
        "--remote-executor",
        url,
        "--remote-queue-timeout",
        "120",
        "--remote-timeout",
        "20",
    ];
    args.extend_from_slice(flags);
    pochi(project, &args, &[])
}

#[test]
fn an_executor_over_tls_and_mtls_runs_the_stage_with_the_ca_and_refuses_without_it() {
    let certs = Certificates::shared();
    let server = BuildGridExecution::start_tls(&ExecutionConfig::default(), certs.dir());
    let platform = [
        ("OSFamily", std::env::consts::OS),
        ("ISA", std::env::consts::ARCH),
    ];
    let worker = BuildboxWorker::start_tls(&server, &certs.ca(), "tls-worker", &platform);
    for (mtls, text) in [(false, "over tls\n"), (true, "over mtls\n")] {
        let project = Project::new(REMOTE);
        project.write("words.txt", text);
        let run = build_remote(
            &project,
            &server.tls_url(mtls),
            &strs(&tls_flags(certs, mtls)),
        );
        run.assert_ok();
        assert_eq!(
            stage(&run.summary(), "upper")["ran_remotely"]["worker"],
            "tls-worker",
            "{}",
            run.stderr
        );
        assert_eq!(project.read("out/upper.txt"), text.to_uppercase());
    }

    let project = Project::new(REMOTE);
    project.write("words.txt", "never\n");
    let run = build_remote(&project, &server.tls_url(false), &[]);
    run.assert_error(&[
        "remote executor",
        "does not verify",
        "help:",
        "--tls-ca-cert FILE",
    ]);
    assert!(!project.exists("out/upper.txt"));
    let run = build_remote(
        &project,
        &server.tls_url(true),
        &strs(&tls_flags(certs, false)),
    );
    run.assert_error(&["remote executor", "help:", "--tls-client-cert FILE"]);
    assert!(!project.exists("out/upper.txt"));
    // The worker ran the two stages that reached it, and nothing of the refused builds.
    assert_eq!(worker.runs("tr a-z A-Z"), 2, "{}", worker.log_text());
}

/// Every bad file stops the build before anything runs, with a `help:` naming the flag
/// (no server is needed: the files are checked when the endpoint is set up).
#[test]
fn a_bad_tls_file_is_an_error_naming_its_flag_before_anything_runs() {
    let certs = Certificates::shared();
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "this is not PEM\n").unwrap();
    let missing = dir.path().join("missing.pem");
    let (ca, cert, key) = (certs.ca(), certs.client_cert(), certs.client_key());
    let stranger = certs.stranger_key();
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (
            vec!["--tls-ca-cert", path(&missing)],
            vec!["cannot read --tls-ca-cert", "missing.pem", "help:"],
        ),
        (
            vec!["--tls-ca-cert", path(&garbage)],
            vec!["--tls-ca-cert", "no `-----BEGIN CERTIFICATE-----`", "help:"],
        ),
        (
            vec![
                "--tls-client-cert",
                path(&cert),
                "--tls-client-key",
                path(&garbage),
            ],
            vec!["--tls-client-key", "garbage.pem", "help:"],
        ),
        (
            vec![
                "--tls-client-cert",
                path(&cert),
                "--tls-client-key",
                path(&stranger),
            ],
            vec!["does not belong to the", "help:", "openssl pkey"],
        ),
        (
            vec!["--tls-ca-cert", path(&ca), "--tls-client-cert", path(&cert)],
            vec!["--tls-client-cert", "without --tls-client-key", "help:"],
        ),
        (
            vec!["--tls-client-key", path(&key)],
            vec!["--tls-client-key", "without --tls-client-cert", "help:"],
        ),
    ];
    for url_flag in ["--remote-cache", "--remote-executor"] {
        for (flags, needles) in &cases {
            let project = project();
            let mut args = vec!["build", "--json", url_flag, "grpcs://localhost:1"];
            args.extend_from_slice(flags);
            let run = pochi(&project, &args, &[]);
            run.assert_error(needles);
            assert_eq!(project.logged_runs(), 0, "nothing ran: {}", run.stderr);
        }
    }
    // The variables are checked the same way, and named.
    let project = project();
    let run = pochi(
        &project,
        &["build", "--remote-cache", "https://localhost:1"],
        &[("POCHI_TLS_CA_CERT", &missing)],
    );
    run.assert_error(&["POCHI_TLS_CA_CERT", "missing.pem"]);
}
