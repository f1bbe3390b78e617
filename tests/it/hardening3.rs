//! Regression tests for the defects of the third round of fault testing (issue 22), each
//! driving the built binary the way the fault was found. The hostile-tree tests are with
//! the servers they need: `remote_cache.rs` (gRPC and HTTP caches) and
//! `remote_execution.rs` (a worker).

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::Project;

/// Whether `done` holds within `limit` (asked every 20 ms).
fn within(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// A pipeline `p` of one command stage `a` running `sh -c SCRIPT`, with `outputs` (a TOML
/// inline table).
fn shell_stage(script: &str, outputs: &str) -> Project {
    let script = serde_json::to_string(script).unwrap();
    Project::new(&format!(
        "[pipeline]\nname = \"p\"\n\n[stages.a]\nkind = \"command\"\nrun = [\"sh\", \"-c\", {script}]\noutputs = {outputs}\n"
    ))
}

/// src (3 MB, from `switch.txt`) -> eight 4 MB outputs -> eight more: every check after
/// src hashes outputs of 1 MiB or more, which blake3 does on rayon's pool.
fn large_fan_out() -> String {
    let mut text = String::from(
        r#"
[pipeline]
name = "p"

[stages.src]
kind = "command"
run = ["sh", "-c", "v=$(cat {inputs.switch}); yes \"$v\" | head -c 3000000 > {outputs.out}"]
inputs = { switch = "switch.txt" }
outputs = { out = "out/src.bin" }
"#,
    );
    for i in 0..8 {
        text.push_str(&format!(
            r#"
[stages.m{i}]
kind = "command"
run = ["sh", "-c", "cat {{inputs.src}} {{inputs.src}} | head -c 4000000 > {{outputs.out}}; echo {i} >> {{outputs.out}}"]
inputs = {{ src = "@src" }}
outputs = {{ out = "out/m{i}.bin" }}

[stages.n{i}]
kind = "command"
run = ["sh", "-c", "head -c 2000000 {{inputs.m}} > {{outputs.out}}; echo {i} >> {{outputs.out}}"]
inputs = {{ m = "@m{i}" }}
outputs = {{ out = "out/n{i}.bin" }}
"#
        ));
    }
    text
}

// 2. A check held the state's lock while it hashed outputs; blake3's rayon join then ran
// another check on the same thread, which waited for that lock forever. Seen in about one
// build in 20 with the input switched back and forth (restores interleaving with checks).
#[test]
fn restores_interleaving_with_checks_of_large_outputs_never_hang() {
    let project = Project::new(&large_fan_out());
    for round in 0..40 {
        let value = if round % 2 == 0 { "a" } else { "b" };
        project.write("switch.txt", value);
        let run = project.run_within(&["build", "--json"], Duration::from_secs(60));
        run.assert_ok();
        if round >= 2 {
            assert_eq!(
                run.ran(),
                Vec::<String>::new(),
                "round {round}: all restored"
            );
        }
    }
}

// 2. A process the stage started outside its process group (a daemon, `setsid`) kept the
// stage's stderr open, and pochi waited for it: the build hung until the daemon ended,
// Ctrl-C included. (The stage waits until the daemon has its own session: killed in the
// stage's group before that, it would hold nothing.)
#[test]
fn a_daemon_holding_the_stages_stderr_does_not_hold_the_build() {
    let project = shell_stage(
        "setsid sh -c 'echo $$ > {outputs.pid}; exec sleep 120' & while [ ! -s {outputs.pid} ]; do sleep 0.05; done; echo started >&2",
        r#"{ pid = "out/daemon.pid" }"#,
    );
    let started = Instant::now();
    let run = project.run_within(&["build", "--json"], Duration::from_secs(30));
    let pid: i32 = project.read("out/daemon.pid").trim().parse().unwrap_or(0);
    if pid > 0 {
        // SAFETY: the sleep the stage started, which outlives it by design.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    run.assert_ok();
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    let log = project.read(".pochi/v1/p/logs/a.log");
    assert!(log.contains("started"), "{log}");
    assert!(log.contains("still holds stderr open"), "{log}");
}

// 2. A build that is stuck (here: on a server that accepts connections and never answers,
// with a long `--remote-timeout`) must still end on SIGTERM, with 143.
#[test]
fn sigterm_ends_a_build_stuck_on_a_silent_server() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // Accepts and keeps every connection, and never sends a byte.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    let project = shell_stage("echo a > {outputs.out}", r#"{ out = "out/a.txt" }"#);
    let url = format!("grpc://127.0.0.1:{port}");
    let mut child = project
        .command(&["build", "--remote-cache", &url, "--remote-timeout", "600"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pochi");
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        child.try_wait().unwrap().is_none(),
        "pochi waits on the server"
    );
    // SAFETY: signalling the child we spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    if !within(Duration::from_secs(30), || {
        child.try_wait().unwrap().is_some()
    }) {
        let _ = child.kill();
        panic!("pochi did not end within 30 s of SIGTERM");
    }
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(143));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("SIGTERM"), "{stderr}");
}

// 7. Credentials in a URL were printed in the very error that refused them.
#[test]
fn credentials_in_a_url_or_header_are_never_printed() {
    let project = shell_stage("echo a > {outputs.out}", r#"{ out = "out/a.txt" }"#);
    for args in [
        vec!["build", "--remote-cache", "grpcs://user:s3cret@127.0.0.1:1"],
        vec!["build", "--remote-executor", "grpcs://s3cret@127.0.0.1:1"],
        vec!["build", "--remote-cache", "https://u:s3cret@127.0.0.1:1/p"],
        vec![
            "build",
            "--remote-cache",
            "grpc://127.0.0.1:1",
            "--remote-header",
            "authorization: Bearer s3cret",
        ],
    ] {
        let run = project.run(&args);
        run.assert_error(&["error:"]);
        assert!(
            !run.stderr.contains("s3cret") && !run.stdout.contains("s3cret"),
            "{args:?}: {}",
            run.stderr
        );
    }
}

/// A pipeline whose one stage writes the directory `out/o` with `sh -c SCRIPT`.
fn linking(script: &str) -> Project {
    let project = Project::new(&format!(
        r#"
[pipeline]
name = "p"

[stages.links]
kind = "command"
run = ["sh", "-c", "mkdir -p {{outputs.o}} && echo data > {{outputs.o}}/data.txt && {script}"]
inputs = {{ src = "src.txt" }}
outputs = {{ o = "out/o" }}
"#
    ));
    project.write("src.txt", "source\n");
    project
}

// 6. Link confinement was checked at the temporary path, seven levels deeper than the
// final one: a link climbing out of the project from there passed, and was published.
// 5. A link to a directory above itself could not be hashed after publishing, and the
// stage was recorded failed with its output left published.
#[test]
fn links_are_checked_where_the_output_is_published() {
    for (script, says) in [
        (
            "ln -s ../../../../../../../etc/hostname {outputs.o}/h",
            "outside the project",
        ),
        ("ln -s .. {outputs.o}/loop", "a cycle"),
        ("ln -s . {outputs.o}/self", "a cycle"),
    ] {
        let project = linking(script);
        let run = project.build(&[]);
        run.assert_error(&["stage `links` failed", says]);
        assert!(!project.exists("out/o"), "{script}: nothing is published");
    }
    // Links that stay inside the project, seen from where they are published, are kept.
    let project = linking("ln -s data.txt {outputs.o}/alias && ln -s ../../src.txt {outputs.o}/up");
    project.build(&[]).assert_ok();
    assert_eq!(project.read("out/o/alias"), "data\n");
    assert_eq!(project.read("out/o/up"), "source\n");
    assert_eq!(project.build(&[]).assert_ok().ran(), Vec::<String>::new());
}

// 8. Output names of 245-255 bytes never published (`.NAME.pochi-new` adds 11 bytes), found
// only after the stage ran; paths over PATH_MAX passed the parser.
#[test]
fn outputs_that_could_never_publish_are_refused_when_the_file_is_read() {
    let long_name = "n".repeat(250);
    let deep = vec!["d".repeat(240); 17].join("/");
    for (path, says) in [
        (long_name.as_str(), "has a name of 250 bytes, over 244"),
        (deep.as_str(), "is too long a path"),
    ] {
        let project = Project::new(&format!(
            r#"
[stages.a]
kind = "command"
run = ["sh", "-c", "echo a > {{outputs.out}}"]
outputs = {{ out = "{path}" }}
"#
        ));
        for command in [&["build"][..], &["clean"][..], &["status"][..]] {
            let run = project.run(command);
            run.assert_error(&[says, "pipeline.toml:5:"]);
            let first = path.split('/').next().unwrap();
            assert!(!project.exists(first), "{command:?}: nothing ran");
        }
    }
    // 244 bytes publish.
    let project = Project::new(&format!(
        r#"
[stages.a]
kind = "command"
run = ["sh", "-c", "echo a > {{outputs.out}}"]
outputs = {{ out = "{}" }}
"#,
        "n".repeat(244)
    ));
    project.build(&[]).assert_ok();
    assert_eq!(project.read(&"n".repeat(244)), "a\n");
}

// 12. Placeholders are substituted unquoted: inside an `sh -c` string a path with a space
// breaks the command. The README's idiom (paths as the shell's positional arguments) works.
#[test]
fn paths_with_spaces_reach_a_shell_as_positional_arguments() {
    let stage = |run: &str| {
        let project = Project::new(&format!(
            r#"
[stages.a]
kind = "command"
run = {run}
inputs = {{ src = "data/my file.txt" }}
outputs = {{ out = "out/my upper.txt" }}
"#
        ));
        project.write("data/my file.txt", "spaced\n");
        project
    };
    let quoted = stage(
        r#"["sh", "-c", "tr a-z A-Z < \"$1\" > \"$2\"", "sh", "{inputs.src}", "{outputs.out}"]"#,
    );
    quoted.build(&[]).assert_ok();
    assert_eq!(quoted.read("out/my upper.txt"), "SPACED\n");
    // What the README warns of: unquoted, the shell splits both paths.
    let unquoted = stage(r#"["sh", "-c", "tr a-z A-Z < {inputs.src} > {outputs.out}"]"#);
    unquoted.build(&[]).assert_error(&["stage `a` failed"]);
}

/// The children of `parent` whose command name is `name`.
fn children_named(parent: u32, name: &str) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let Some((comm, rest)) = stat.split_once(") ") else {
            continue;
        };
        let ppid = rest.split(' ').nth(1).and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) && comm.ends_with(&format!("({name}")) {
            found.push(pid);
        }
    }
    found
}

// 9. A killed watchdog went unnoticed: a later `kill -9` of pochi then left the stage
// running. pochi now starts another watchdog, told every running stage.
#[test]
fn a_killed_watchdog_is_replaced_and_a_later_kill_of_pochi_still_ends_the_stage() {
    use crate::common::servers::alive;
    let project = shell_stage(
        "echo $$ > started.pid; sleep 120; echo done > {outputs.out}",
        r#"{ out = "out/slow.txt" }"#,
    );
    let mut pochi = project
        .command(&["build"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start pochi");
    let started = project.path("started.pid");
    let has_started = || {
        let text = std::fs::read_to_string(&started).unwrap_or_default();
        !text.trim().is_empty()
    };
    assert!(
        within(Duration::from_secs(30), has_started),
        "the stage never started"
    );
    let stage: i32 = std::fs::read_to_string(&started)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let watchdogs = children_named(pochi.id(), "pochi");
    assert_eq!(watchdogs.len(), 1, "one watchdog: {watchdogs:?}");
    // SAFETY: killing the watchdog of the pochi we started.
    unsafe { libc::kill(watchdogs[0], libc::SIGKILL) };
    let replaced = || {
        let now = children_named(pochi.id(), "pochi");
        now.len() == 1 && now[0] != watchdogs[0]
    };
    assert!(within(Duration::from_secs(10), replaced), "no new watchdog");
    pochi.kill().unwrap();
    pochi.wait().unwrap();
    if !within(Duration::from_secs(15), || !alive(stage)) {
        // SAFETY: cleaning up the stage this test started.
        unsafe { libc::kill(-stage, libc::SIGKILL) };
        panic!("the stage outlived pochi's kill -9");
    }
    assert!(!project.exists("out/slow.txt"));
}

/// One stage writing `out/a.txt` (a file) or `out/d` (a directory).
fn one_output() -> Project {
    Project::new(
        r#"
[pipeline]
name = "p"

[stages.a]
kind = "command"
run = ["sh", "-c", "echo a > {outputs.out}"]
outputs = { out = "out/a.txt" }

[stages.d]
kind = "command"
run = ["sh", "-c", "mkdir -p {outputs.dir} && echo d > {outputs.dir}/f"]
outputs = { dir = "out/d" }
"#,
    )
}

/// Where the stages' Actions write `out/a.txt` and `out/d` (their temporary paths, which a
/// server's entry names).
const A_IN_ACTION: &str = ".pochi/v1/p/tmp/a/out/a.txt";
const D_IN_ACTION: &str = ".pochi/v1/p/tmp/d/dir/d";

fn build_against(project: &Project, url: &str, timeout: &str) -> crate::common::Run {
    let args = [
        "build",
        "--json",
        "--remote-cache",
        url,
        "--remote-timeout",
        timeout,
    ];
    project.run_within(&args, Duration::from_secs(90))
}

// 4. `--remote-timeout` bounded one message, not progress: a server sending one byte every
// two seconds held a build as long as it liked. Now each timeout's window must bring at
// least 64 KiB (or the rest of the blob).
#[test]
fn a_trickling_cache_server_is_a_miss_within_its_timeout() {
    use crate::common::hostile::{BlobAnswer, HostileHttp, entry_with_file};
    use pochi::remote::{Digest, DigestFunction};
    let content = vec![b'x'; 1000];
    let digest = Digest::of_bytes(DigestFunction::Sha256, &content);
    let server = HostileHttp::start(
        entry_with_file(A_IN_ACTION, &digest),
        BlobAnswer::Trickle(content),
    );
    let project = one_output();
    let started = Instant::now();
    let run = build_against(&project, &server.url(), "4");
    run.assert_ok();
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "{:?}",
        started.elapsed()
    );
    assert!(run.stderr.contains("stalled"), "{}", run.stderr);
    assert!(run.ran().contains(&"a".to_string()), "{}", run.stderr);
    assert_eq!(project.read("out/a.txt"), "a\n");
}

// 3. A tree claiming 10 GiB was buffered in memory up to the claim, a file's claim written
// to disk up to it, and an entry over ureq's limit read as "cannot reach the server".
#[test]
fn claims_a_cache_server_cannot_back_are_refused_before_a_byte_is_read() {
    use crate::common::hostile::{BlobAnswer, HostileHttp, entry_with_dir, entry_with_file};
    use pochi::remote::Digest;
    let tree = Digest::new(&"ab".repeat(32), 10 << 30).unwrap();
    let file = Digest::new(&"cd".repeat(32), 1 << 50).unwrap();
    for (entry, says, blob) in [
        (
            entry_with_dir(D_IN_ACTION, &tree),
            "over the 64 MiB",
            "abab",
        ),
        (
            entry_with_file(A_IN_ACTION, &file),
            "free on the disk",
            "cdcd",
        ),
        (vec![0u8; 65 << 20], "larger than 64 MiB", "cas/"),
    ] {
        let server = HostileHttp::start(entry, BlobAnswer::Missing);
        let project = one_output();
        let run = build_against(&project, &server.url(), "20");
        run.assert_ok();
        assert!(run.stderr.contains(says), "{says}: {}", run.stderr);
        assert!(!run.stderr.contains("cannot reach"), "{}", run.stderr);
        let fetched: Vec<String> = server
            .asked()
            .into_iter()
            .filter(|asked| asked.starts_with("GET") && asked.contains(blob))
            .collect();
        assert_eq!(fetched, Vec::<String>::new(), "{says}");
        assert_eq!(project.read("out/a.txt"), "a\n");
    }
}
