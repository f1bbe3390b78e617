//! The shared (remote) cache in builds, against real servers the harness starts on
//! 127.0.0.1 (`common::servers`): BuildGrid 0.4.4 over the Remote Execution API and nginx
//! with WebDAV over Bazel's HTTP cache protocol. A project builds and uploads; a fresh
//! clone with an empty local cache runs nothing and gets the same bytes; bytes corrupted on
//! the server's disk are refused (the stage runs); a read-only client uploads nothing; a
//! server killed mid-build costs a warning (an error with `--remote-cache-required`); an
//! engine made for one GPU (the TensorRT STAND-IN, a test double) is not restored for
//! another.
//!
//! The stages append to `runs.log` when they run and put random bytes in their outputs,
//! so a run is never byte-identical to an earlier one: identical bytes prove a restore.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::common::servers::{BuildGridCache, NginxCache, corrupt_file};
use crate::common::{Project, Run};

/// export (6 MB, over BuildGrid's batch limit: ByteStream) -> calib (a directory with a
/// copy of the export, an executable, an empty directory).
const PIPELINE: &str = r#"
[pipeline]
name = "shared"

[stages.export]
kind = "command"
run = ["sh", "-c", "echo export >> runs.log; ( cat {inputs.src}; head -c 6000000 /dev/urandom ) > {outputs.out}"]
inputs = { src = "model.txt" }
outputs = { out = "out/model.onnx" }

[stages.calib]
kind = "command"
run = ["sh", "-c", "echo calib >> runs.log; mkdir -p {outputs.dir}/sub {outputs.dir}/empty; cp {inputs.onnx} {outputs.dir}/sub/copy.onnx; head -c 64 /dev/urandom > {outputs.dir}/run.sh; chmod +x {outputs.dir}/run.sh"]
inputs = { onnx = "@export" }
outputs = { dir = "out/calib" }
"#;

const OUTPUTS: [&str; 3] = [
    "out/model.onnx",
    "out/calib/sub/copy.onnx",
    "out/calib/run.sh",
];

/// A project (in a directory and with a local output cache of its own) whose stages no
/// other test has: the servers are shared by the tests of this process.
fn project() -> Project {
    let project = Project::new(PIPELINE);
    project.write("model.txt", &format!("weights\n{}\n", unique()));
    project
}

/// A text no other call of this test binary (and no earlier one) returns.
fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!(
        "{now}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    )
}

/// A fresh clone of `project`: its files only, no `.pochi/`, no outputs, an empty cache.
fn fresh_clone(project: &Project) -> Project {
    let clone = Project::new(&project.read("pipeline.toml"));
    clone.write("model.txt", &project.read("model.txt"));
    clone
}

fn build(project: &Project, url: &str, extra: &[&str]) -> Run {
    let mut args = vec!["--remote-cache", url, "--remote-timeout", "20"];
    args.extend_from_slice(extra);
    project.build(&args)
}

fn outputs(project: &Project) -> Vec<Vec<u8>> {
    OUTPUTS
        .iter()
        .map(|path| std::fs::read(project.path(path)).unwrap())
        .collect()
}

fn sha256_of(path: &Path) -> String {
    pochi::cache::FileDigests::of_path(path).unwrap().sha256
}

/// The calib stage copied the export it was built from.
fn assert_consistent(project: &Project) {
    assert!(
        std::fs::read(project.path("out/model.onnx")).unwrap()
            == std::fs::read(project.path("out/calib/sub/copy.onnx")).unwrap(),
        "calib holds the export it was built from"
    );
    assert!(project.path("out/calib/empty").is_dir());
}

/// A builds and uploads; a fresh clone B with an empty local cache runs nothing and gets
/// A's bytes; a clone C sharing B's local cache restores locally (B kept what it got).
fn a_fresh_clone_runs_nothing(url: &str) {
    let a = project();
    let run = build(&a, url, &[]);
    run.assert_ok();
    assert_eq!(run.ran(), ["calib", "export"], "{}", run.stderr);
    let built = outputs(&a);

    let b = fresh_clone(&a);
    let run = build(&b, url, &[]);
    run.assert_ok();
    assert_eq!(run.ran(), Vec::<String>::new(), "{}", run.stderr);
    assert_eq!(run.count("restored_remote"), 2, "{}", run.stdout);
    assert_eq!(b.logged_runs(), 0);
    assert!(outputs(&b) == built, "byte-identical outputs");
    let mode = std::fs::metadata(b.path("out/calib/run.sh")).unwrap();
    assert_ne!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o111,
        0
    );
    assert_consistent(&b);
    b.run(&["status"]).assert_ok();
    let explain = b.run(&["explain", "export"]);
    assert!(explain.stdout.contains("remote"), "{}", explain.stdout);

    let c = b.sharing_cache(tempfile::tempdir().unwrap());
    c.write("pipeline.toml", &a.read("pipeline.toml"));
    c.write("model.txt", &a.read("model.txt"));
    let run = build(&c, url, &[]);
    run.assert_ok();
    assert_eq!(run.count("restored_local"), 2, "{}", run.stdout);
    assert!(outputs(&c) == built);
}

#[test]
fn buildgrid_a_fresh_clone_with_an_empty_cache_runs_nothing() {
    a_fresh_clone_runs_nothing(&BuildGridCache::shared().url());
}

#[test]
fn nginx_a_fresh_clone_with_an_empty_cache_runs_nothing() {
    a_fresh_clone_runs_nothing(&format!("{}/team-a", NginxCache::shared().url()));
}

/// A builds and uploads; `corrupt` damages the export's blob on the server's disk; a
/// fresh clone finds it, warns, runs the stage, and its build is correct.
fn a_corrupt_blob_is_refused(url: &str, corrupt: impl Fn(&str)) {
    let a = project();
    build(&a, url, &[]).assert_ok();
    let export = a.path("out/model.onnx");
    let damaged: Vec<u8> = std::fs::read(&export)
        .unwrap()
        .iter()
        .map(|b| b ^ 0xff)
        .collect();
    corrupt(&sha256_of(&export));

    let b = fresh_clone(&a);
    let run = build(&b, url, &[]);
    run.assert_ok();
    assert!(run.ran().contains(&"export".to_string()), "{}", run.stderr);
    assert!(
        run.stderr.contains("other bytes") && run.stderr.contains("corrupt"),
        "a warning says so: {}",
        run.stderr
    );
    assert!(std::fs::read(b.path("out/model.onnx")).unwrap() != damaged);
    assert!(
        std::fs::read(b.path("out/model.onnx"))
            .unwrap()
            .starts_with(b"weights\n")
    );
    assert_consistent(&b);
    b.run(&["status"]).assert_ok();
}

#[test]
fn buildgrid_a_blob_corrupted_on_the_server_is_refused_and_the_stage_runs() {
    let server = BuildGridCache::shared();
    a_corrupt_blob_is_refused(&server.url(), |sha| server.corrupt_blob(sha));
}

#[test]
fn nginx_a_blob_corrupted_on_the_server_is_refused_and_the_stage_runs() {
    let server = NginxCache::shared();
    let url = format!("{}/team-b", server.url());
    a_corrupt_blob_is_refused(&url, |sha| {
        corrupt_file(&server.cache_dir().join("team-b/cas").join(sha));
    });
}

#[test]
fn a_read_only_client_uploads_nothing() {
    let server = BuildGridCache::shared();
    let a = project();
    let run = build(&a, &server.url(), &["--remote-cache-read-only"]);
    run.assert_ok();
    assert_eq!(run.ran(), ["calib", "export"]);
    for output in OUTPUTS {
        let sha = sha256_of(&a.path(output));
        assert!(!server.blob_path(&sha).exists(), "{output} was uploaded");
    }
    let b = fresh_clone(&a);
    let run = build(&b, &server.url(), &[]);
    run.assert_ok();
    assert_eq!(
        run.ran(),
        ["calib", "export"],
        "nothing to restore: {}",
        run.stderr
    );
}

/// A pipeline whose first stage kills the server's whole process group (its pid `sid`).
fn killing_pipeline(sid: i32) -> String {
    let nonce = unique();
    format!(
        r#"
[pipeline]
name = "killed"

[stages.first]
kind = "command"
run = ["sh", "-c", "kill -9 -{sid} && head -c 100000 /dev/urandom > {{outputs.out}}"]
outputs = {{ out = "out/first.bin" }}
env = {{ NONCE = "{nonce}" }}

[stages.second]
kind = "command"
run = ["sh", "-c", "cp {{inputs.first}} {{outputs.out}}"]
inputs = {{ first = "@first" }}
outputs = {{ out = "out/second.bin" }}
"#
    )
}

#[test]
fn a_server_killed_mid_build_costs_a_warning_or_with_required_an_error() {
    let mut server = BuildGridCache::start();
    let project = Project::new(&killing_pipeline(server.pid()));
    let run = build(&project, &server.url(), &[]);
    run.assert_ok();
    assert_eq!(run.ran(), ["first", "second"]);
    assert!(
        run.stderr.contains("warning") && run.stderr.contains(&server.url()),
        "the failure is a warning: {}",
        run.stderr
    );
    assert_eq!(
        std::fs::read(project.path("out/first.bin")).unwrap(),
        std::fs::read(project.path("out/second.bin")).unwrap()
    );

    server.restart();
    let project = Project::new(&killing_pipeline(server.pid()));
    let run = build(&project, &server.url(), &["--remote-cache-required"]);
    assert_ne!(run.code, Some(0), "{}", run.stderr);
    run.assert_error(&["--remote-cache-required", &server.url()]);
    assert!(project.exists("out/second.bin"), "the local build went on");
}

#[test]
fn a_required_cache_that_is_down_is_an_error_before_anything_runs() {
    let port = crate::common::servers::free_port();
    for url in [
        format!("grpc://127.0.0.1:{port}"),
        format!("http://127.0.0.1:{port}/cache"),
    ] {
        let project = project();
        let run = build(&project, &url, &["--remote-cache-required"]);
        run.assert_error(&["cannot be used", &format!("127.0.0.1:{port}")]);
        assert_eq!(project.logged_runs(), 0);
        // Without --remote-cache-required: a warning, and a local build.
        let run = build(&project, &url, &[]);
        run.assert_ok();
        assert_eq!(run.ran(), ["calib", "export"]);
        assert!(run.stderr.contains("warning"), "{}", run.stderr);
    }
}

/// An engine stage, built with the TensorRT stand-in on a declared GPU.
const ENGINE: &str = r#"
[pipeline]
name = "engines"

[resources]
gpus = [0]

[stages.engine]
kind = "engine"
onnx = "model.onnx"
"#;

fn engine_project() -> Project {
    use pochi::onnx_info::{Dim, encode};
    let project = Project::new(ENGINE);
    let dims = vec![Dim::Fixed(1), Dim::Fixed(3), Dim::Fixed(16), Dim::Fixed(16)];
    std::fs::write(
        project.path("model.onnx"),
        encode::model(&[("input", dims)]),
    )
    .unwrap();
    project
}

fn engine_build(project: &Project, url: &str, gpu: &str) -> Run {
    let standin = crate::common::tensorrt_standin_dir();
    project.run_env(
        &["build", "--json", "--remote-cache", url],
        &[
            ("POCHI_TEST_TENSORRT_STANDIN", standin.as_str()),
            ("FAKE_TRT_GPU_NAME", gpu),
        ],
    )
}

#[test]
fn an_engine_made_for_one_gpu_is_not_restored_for_another() {
    let url = BuildGridCache::shared().url();
    let h100 = engine_project();
    let run = engine_build(&h100, &url, "NVIDIA H100 (stand-in)");
    run.assert_ok();
    assert_eq!(run.ran(), ["engine"]);
    let engine = "build/engines/engine.engine";
    let built = std::fs::read(h100.path(engine)).unwrap();

    let a100 = engine_project();
    let run = engine_build(&a100, &url, "NVIDIA A100 (stand-in)");
    run.assert_ok();
    assert_eq!(run.ran(), ["engine"], "not restored: {}", run.stdout);
    assert_eq!(run.count("restored_remote"), 0);
    let manifest = a100.read("build/engines/engine.manifest.json");
    assert!(manifest.contains("A100"), "{manifest}");

    // The entries are real REAPI Actions with the GPU on the Action's platform.
    let server = BuildGridCache::shared();
    for gpu in ["NVIDIA H100 (stand-in)", "NVIDIA A100 (stand-in)"] {
        let platforms = actions_on_disk(&server.storage_dir(), gpu);
        assert_eq!(platforms.len(), 1, "one Action for {gpu}: {platforms:?}");
        for key in ["OSFamily", "ISA", "compute_capability", "tensorrt", "cuda"] {
            assert!(platforms[0].contains_key(key), "{key}: {platforms:?}");
        }
    }

    let again = engine_project();
    let run = engine_build(&again, &url, "NVIDIA H100 (stand-in)");
    run.assert_ok();
    assert_eq!(run.count("restored_remote"), 1, "{}", run.stdout);
    assert!(std::fs::read(again.path(engine)).unwrap() == built);
}

/// Every blob in BuildGrid's disk storage that decodes as an Action with pochi's salt, with
/// its bytes (every blob is tried as an Action).
fn stored_actions(storage: &Path) -> Vec<(Vec<u8>, pochi::remote::proto::Action)> {
    use pochi::remote::proto;
    use prost::Message;
    let mut found = Vec::new();
    let objects = storage.join("cas/objects");
    for shard in std::fs::read_dir(&objects).unwrap().flatten() {
        for blob in std::fs::read_dir(shard.path()).unwrap().flatten() {
            let Ok(bytes) = std::fs::read(blob.path()) else {
                continue;
            };
            if let Ok(action) = proto::Action::decode(bytes.as_slice())
                && !action.salt.is_empty()
            {
                found.push((bytes, action));
            }
        }
    }
    found
}

/// The platforms of the Actions in BuildGrid's disk storage whose `gpu` property is `gpu`.
fn actions_on_disk(storage: &Path, gpu: &str) -> Vec<std::collections::BTreeMap<String, String>> {
    stored_actions(storage)
        .into_iter()
        .filter_map(|(_, action)| action.platform)
        .map(|platform| {
            platform
                .properties
                .into_iter()
                .map(|p| (p.name, p.value))
                .collect::<std::collections::BTreeMap<String, String>>()
        })
        .filter(|properties| properties.get("gpu").map(String::as_str) == Some(gpu))
        .collect()
}

#[test]
fn a_stage_that_failed_is_never_uploaded() {
    let server = BuildGridCache::shared();
    let content = format!("written, then failed {}\n", unique());
    let pipeline = format!(
        r#"
[stages.fails]
kind = "command"
run = ["sh", "-c", "printf '%s' '{}' > {{outputs.out}}; exit 3"]
outputs = {{ out = "out/partial.txt" }}
"#,
        content.trim_end()
    );
    let project = Project::new(&pipeline);
    let run = build(&project, &server.url(), &[]);
    assert_ne!(run.code, Some(0), "{}", run.stderr);
    let digest = pochi::cache::FileDigests::of_reader(content.trim_end().as_bytes()).unwrap();
    assert!(
        !server.blob_path(&digest.sha256).exists(),
        "its output was uploaded"
    );
    let clone = fresh_clone_of(&project);
    let run = build(&clone, &server.url(), &[]);
    assert_ne!(run.code, Some(0));
    assert_eq!(run.count("restored_remote"), 0);
}

/// A fresh clone of a project that has no `model.txt`.
fn fresh_clone_of(project: &Project) -> Project {
    Project::new(&project.read("pipeline.toml"))
}

/// One stage with an output directory; `MARKER` makes its Action one no other test has.
const TREE_STAGE: &str = r#"
[pipeline]
name = "hostile"

[stages.tree]
kind = "command"
run = ["sh", "-c", "mkdir -p {outputs.dir}/d && cp {inputs.src} {outputs.dir}/d/copy.txt # MARKER"]
inputs = { src = "model.txt" }
outputs = { dir = "out/tree" }
"#;

/// Issue 22 (1): A builds and uploads; the server's entry is then replaced by one whose
/// output tree chains links out of the output (`common::hostile`, a HOSTILE server's
/// answer); a fresh clone B gets a miss that says why, runs the stage, and nothing is
/// written outside its output.
fn a_hostile_tree_is_a_miss(url: &str, poison: impl Fn(&str, &Path)) {
    use crate::common::hostile::planted_in;
    let marker = unique();
    let pipeline = TREE_STAGE.replace("MARKER", &marker);
    let a = Project::new(&pipeline);
    a.write("model.txt", "weights\n");
    build(&a, url, &[]).assert_ok();
    let victim = tempfile::tempdir().unwrap();
    poison(&marker, victim.path());

    let b = Project::new(&pipeline);
    b.write("model.txt", "weights\n");
    let run = build(&b, url, &[]);
    run.assert_ok();
    assert_eq!(planted_in(victim.path()), Vec::<String>::new());
    assert_eq!(run.ran(), ["tree"], "{}", run.stderr);
    assert!(
        run.stderr.contains("`d` is listed twice"),
        "a warning says why: {}",
        run.stderr
    );
    assert_eq!(b.read("out/tree/d/copy.txt"), "weights\n");
    b.run(&["status"]).assert_ok();
}

#[test]
fn buildgrid_a_hostile_tree_is_a_miss_and_writes_nothing_outside() {
    use crate::common::hostile::poison_entry;
    use pochi::remote::{Endpoint, GrpcClient};
    let server = BuildGridCache::shared();
    a_hostile_tree_is_a_miss(&server.url(), |marker, victim| {
        let client = GrpcClient::connect(&Endpoint::parse(&server.url()).unwrap()).unwrap();
        let action = action_on_disk(server, marker);
        poison_entry(&client, &action, victim);
    });
}

#[test]
fn nginx_a_hostile_tree_is_a_miss_and_writes_nothing_outside() {
    use crate::common::hostile::poison_entry;
    use pochi::remote::{Digest, Endpoint, HttpClient};
    let server = NginxCache::shared();
    let prefix = format!("hostile-{}", unique());
    let url = format!("{}/{prefix}", server.url());
    a_hostile_tree_is_a_miss(&url, |_, victim| {
        let client = HttpClient::connect(&Endpoint::parse(&url).unwrap()).unwrap();
        let entries: Vec<_> = std::fs::read_dir(server.cache_dir().join(&prefix).join("ac"))
            .unwrap()
            .flatten()
            .collect();
        assert_eq!(entries.len(), 1, "one stage, one entry");
        let hash = entries[0].file_name().to_string_lossy().into_owned();
        poison_entry(&client, &Digest::new(&hash, 0).unwrap(), victim);
    });
}

/// The digest of the Action in BuildGrid's disk storage whose Command holds `marker`.
fn action_on_disk(server: &BuildGridCache, marker: &str) -> pochi::remote::Digest {
    use pochi::remote::{Digest, DigestFunction, proto};
    use prost::Message;
    let holds_marker = |action: &proto::Action| {
        let Some(command) = &action.command_digest else {
            return false;
        };
        std::fs::read(server.blob_path(&command.hash))
            .ok()
            .and_then(|bytes| proto::Command::decode(bytes.as_slice()).ok())
            .is_some_and(|command| command.arguments.iter().any(|a| a.contains(marker)))
    };
    let (bytes, _) = stored_actions(&server.storage_dir())
        .into_iter()
        .find(|(_, action)| holds_marker(action))
        .unwrap_or_else(|| panic!("no Action with `{marker}` on the server"));
    Digest::of_bytes(DigestFunction::Sha256, &bytes)
}

/// A stage whose Action cannot be built here (a file name that is not UTF-8, which no
/// REAPI path can hold) runs and is kept locally with a warning; the server stays in the
/// build for the others (`--remote-cache-required` passes), and a fresh clone restores
/// them from it.
#[test]
fn a_stage_without_an_action_stays_local_and_the_server_serves_the_others() {
    let url = format!("{}/no-action-{}", NginxCache::shared().url(), unique());
    let pipeline = r#"
[pipeline]
name = "p"

[stages.odd]
kind = "command"
run = ["sh", "-c", "ls {inputs.dir} > {outputs.out}"]
inputs = { dir = "data" }
outputs = { out = "out/odd.txt" }

[stages.plain]
kind = "command"
run = ["sh", "-c", "echo plain >> runs.log; cp {inputs.text} {outputs.out}"]
inputs = { text = "text.txt" }
outputs = { out = "out/plain.txt" }
"#;
    let odd_name = std::ffi::OsStr::from_bytes(b"a\xffb");
    let write = |project: &Project| {
        project.write("text.txt", "plain\n");
        std::fs::create_dir_all(project.path("data")).unwrap();
        std::fs::write(project.path("data").join(odd_name), b"").unwrap();
    };
    let first = Project::new(pipeline);
    write(&first);
    let run = build(&first, &url, &["--remote-cache-required"]);
    run.assert_ok();
    assert!(
        run.stderr.contains("not uploaded to the remote cache")
            && run.stderr.contains("cannot be a path of the input root"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("cannot be used"), "{}", run.stderr);

    let clone = Project::new(pipeline);
    write(&clone);
    let run = build(&clone, &url, &["--remote-cache-required"]);
    run.assert_ok();
    assert_eq!(run.ran(), ["odd"], "{}", run.stdout);
    assert_eq!(run.count("restored_remote"), 1, "{}", run.stdout);
    assert_eq!(clone.logged_runs(), 0, "plain came from the server");
}
