//! The output cache in builds: switching a parameter back restores instead of running, a
//! fresh clone with the same cache runs nothing, damage in the cache is a miss (the stage
//! runs, the output is right), `--no-cache`, failed stages are never stored, `explain` and
//! the summary say what was restored and from where, and `pochi cache info` / `gc`.
//!
//! Every project has an output cache of its own (`common::Project`); the stages append to
//! `runs.log` when they run, so "ran nothing" is checked apart from pochi's own summary, and
//! write a nanosecond timestamp into their outputs, so a run is never byte-identical to an
//! earlier one and identical bytes prove a restore.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::common::Project;

/// export (a file) -> engine (a file); calib (a directory); the first and third read
/// `PRECISION` from their `env`, which is part of their key.
const PIPELINE: &str = r#"
[pipeline]
name = "switch"

[stages.export]
kind = "command"
run = ["sh", "-c", "echo export >> runs.log; ( echo \"$PRECISION\"; cat {inputs.src}; date +%s%N ) > {outputs.out}"]
inputs = { src = "model.txt" }
outputs = { out = "out/model.onnx" }
env = { PRECISION = "fp16" }

[stages.engine]
kind = "command"
run = ["sh", "-c", "echo engine >> runs.log; ( cat {inputs.onnx}; date +%s%N ) > {outputs.out}"]
inputs = { onnx = "@export" }
outputs = { out = "out/model.engine" }

[stages.calib]
kind = "command"
run = ["sh", "-c", "echo calib >> runs.log; mkdir -p {outputs.dir}/sub {outputs.dir}/empty; echo \"$PRECISION\" > {outputs.dir}/a.txt; date +%s%N > {outputs.dir}/sub/b.txt"]
outputs = { dir = "out/calib" }
env = { PRECISION = "fp16" }
"#;

const OUTPUTS: [&str; 4] = [
    "out/model.onnx",
    "out/model.engine",
    "out/calib/a.txt",
    "out/calib/sub/b.txt",
];

fn switch_project() -> Project {
    let project = Project::new(PIPELINE);
    project.write("model.txt", "weights\n");
    project
}

fn set_precision(project: &Project, precision: &str) {
    project.write(
        "pipeline.toml",
        &PIPELINE.replace(
            "PRECISION = \"fp16\"",
            &format!("PRECISION = \"{precision}\""),
        ),
    );
}

fn outputs(project: &Project) -> Vec<Vec<u8>> {
    OUTPUTS
        .iter()
        .map(|path| std::fs::read(project.path(path)).unwrap())
        .collect()
}

/// Files under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(list) = std::fs::read_dir(dir) else {
        return found;
    };
    for item in list {
        let path = item.unwrap().path();
        if path.is_dir() {
            found.extend(files_under(&path));
        } else {
            found.push(path);
        }
    }
    found
}

fn entries(project: &Project) -> Vec<PathBuf> {
    files_under(&project.cache_root().join("ac"))
}

/// The blob in the cache holding exactly `content`.
fn blob_holding(project: &Project, content: &[u8]) -> PathBuf {
    files_under(&project.cache_root().join("cas"))
        .into_iter()
        .find(|path| std::fs::read(path).unwrap() == content)
        .expect("a blob with that content")
}

#[test]
fn switching_a_parameter_back_restores_from_the_cache_with_zero_runs() {
    let project = switch_project();
    let first = project.build(&[]);
    first.assert_ok();
    assert_eq!(first.ran(), ["calib", "engine", "export"]);
    let fp16 = outputs(&project);
    set_precision(&project, "int8");
    let second = project.build(&[]);
    second.assert_ok();
    assert_eq!(second.ran(), ["calib", "engine", "export"]);
    assert!(project.read("out/model.onnx").starts_with("int8\n"));
    assert_eq!(project.logged_runs(), 6);

    set_precision(&project, "fp16");
    let third = project.build(&[]);
    third.assert_ok();
    assert_eq!(third.ran(), Vec::<String>::new(), "{}", third.stderr);
    assert_eq!(third.stages("restored"), ["calib", "engine", "export"]);
    assert_eq!(project.logged_runs(), 6, "no stage ran the third time");
    assert_eq!(outputs(&project), fp16, "the fp16 outputs, byte for byte");
    assert!(
        project.path("out/calib/empty").is_dir(),
        "empty directories too"
    );

    // Restored stages are recorded as built: up to date afterwards.
    project.run(&["status"]).assert_ok();
    let fourth = project.build(&[]);
    fourth.assert_ok();
    assert_eq!(fourth.stages("skipped"), ["calib", "engine", "export"]);
}

#[test]
fn a_fresh_clone_with_the_same_cache_runs_nothing() {
    let project = switch_project();
    project.build(&[]).assert_ok();
    let built = outputs(&project);

    let clone = project.sharing_cache(tempfile::tempdir().unwrap());
    clone.write("pipeline.toml", &project.read("pipeline.toml"));
    clone.write("model.txt", &project.read("model.txt"));
    let run = clone.build(&[]);
    run.assert_ok();
    assert_eq!(run.ran(), Vec::<String>::new(), "{}", run.stderr);
    assert_eq!(run.count("restored_local"), 3);
    assert_eq!(clone.logged_runs(), 0);
    assert_eq!(outputs(&clone), built);
    clone.run(&["status"]).assert_ok();
}

#[test]
fn a_corrupted_blob_is_a_miss_the_stage_runs_and_its_output_is_right() {
    let project = switch_project();
    project.build(&[]).assert_ok();
    let fp16 = outputs(&project);
    set_precision(&project, "int8");
    project.build(&[]).assert_ok();

    // Same size, other bytes: only hashing finds it.
    let blob = blob_holding(&project, &fp16[0]);
    let mut perms = std::fs::metadata(&blob).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
    std::fs::set_permissions(&blob, perms).unwrap();
    let damaged: Vec<u8> = fp16[0].iter().map(|b| b ^ 0x20).collect();
    std::fs::write(&blob, &damaged).unwrap();

    set_precision(&project, "fp16");
    let run = project.build(&[]);
    run.assert_ok();
    assert!(run.ran().contains(&"export".to_string()), "{}", run.stderr);
    assert_eq!(run.stages("restored"), ["calib"]);
    let export = project.read("out/model.onnx");
    assert!(export.starts_with("fp16\nweights\n"), "{export:?}");
    assert_ne!(export.as_bytes(), damaged.as_slice());
    assert!(
        run.stderr.contains("corrupt") && run.stderr.contains("the stage runs instead"),
        "a warning says so: {}",
        run.stderr
    );
    project.run(&["status"]).assert_ok();
}

#[test]
fn no_cache_runs_the_stages_and_stores_nothing() {
    let project = switch_project();
    project.build(&[]).assert_ok();
    set_precision(&project, "int8");
    project.build(&[]).assert_ok();
    let stored = entries(&project).len();
    assert_eq!(stored, 6);

    set_precision(&project, "fp16");
    let run = project.build(&["--no-cache"]);
    run.assert_ok();
    assert_eq!(run.ran(), ["calib", "engine", "export"]);
    assert_eq!(project.logged_runs(), 9);
    assert_eq!(entries(&project).len(), stored, "nothing stored");
}

#[test]
fn a_stage_that_opts_out_runs_and_is_never_stored() {
    let project = Project::new(&PIPELINE.replace(
        "[stages.engine]\nkind = \"command\"\n",
        "[stages.engine]\nkind = \"command\"\ncache = false\n",
    ));
    project.write("model.txt", "weights\n");
    project.build(&[]).assert_ok();
    assert_eq!(entries(&project).len(), 2, "export and calib only");

    // A fresh clone: the opted-out stage runs, the others are restored, and dry-run and
    // explain do not promise a restore for it.
    let clone = project.sharing_cache(tempfile::tempdir().unwrap());
    clone.write("pipeline.toml", &project.read("pipeline.toml"));
    clone.write("model.txt", &project.read("model.txt"));
    let explained = clone.run(&["explain", "engine"]);
    assert!(
        !explained.stdout.contains("restored"),
        "{}",
        explained.stdout
    );
    let run = clone.build(&[]);
    run.assert_ok();
    assert_eq!(run.ran(), ["engine"], "{}", run.stderr);
    assert_eq!(run.stages("restored"), ["calib", "export"]);
    assert_eq!(entries(&clone).len(), 2, "still nothing stored for engine");
}

#[test]
fn a_failed_stage_is_never_stored() {
    let project = Project::new(
        r#"
[pipeline]
name = "fails"

[stages.good]
kind = "command"
run = ["sh", "-c", "echo good > {outputs.out}"]
outputs = { out = "good.txt" }

[stages.bad]
kind = "command"
run = ["sh", "-c", "echo partial > {outputs.out}; exit 3"]
outputs = { out = "bad.txt" }
"#,
    );
    let run = project.build(&["--keep-going"]);
    assert_eq!(run.code, Some(1));
    assert_eq!(run.ran(), ["good"]);
    assert_eq!(entries(&project).len(), 1, "only the stage that succeeded");
    let entry = std::fs::read_to_string(&entries(&project)[0]).unwrap();
    assert!(entry.contains("\"stage\": \"good\""), "{entry}");
    // Nothing to restore for the failed stage: it runs (and fails) again.
    let again = project.build(&["--keep-going"]);
    assert_eq!(again.code, Some(1));
    assert_eq!(again.stages("failed"), ["bad"]);
}

#[test]
fn explain_and_the_summary_say_what_was_restored_and_from_where() {
    let project = switch_project();
    project.build(&[]).assert_ok();
    set_precision(&project, "int8");
    project.build(&[]).assert_ok();
    set_precision(&project, "fp16");
    let location = project.cache_root().display().to_string();

    // Before: the stage would run, and its outputs are in the cache.
    let explain = project.run(&["explain", "export"]);
    explain.assert_ok();
    assert!(
        explain
            .stdout
            .contains(&format!("would be restored from cache (local: {location})")),
        "{}",
        explain.stdout
    );

    let dry = project.run(&["build", "--dry-run"]);
    dry.assert_ok();
    assert!(
        dry.stderr.contains(&format!(
            "env `PRECISION` changed: int8 -> fp16 (would be restored from cache (local: {location}))"
        )),
        "{}",
        dry.stderr
    );
    let dry = project.run(&["build", "--dry-run", "--no-cache"]);
    assert!(!dry.stderr.contains("would be restored"), "{}", dry.stderr);

    let run = project.build(&[]);
    run.assert_ok();
    let summary = run.summary();
    assert_eq!(summary["schema_version"], 2);
    assert_eq!(run.count("restored_local"), 3);
    assert_eq!(run.count("restored_remote"), 0);
    assert_eq!(run.count("ran"), 0);
    for stage in summary["stages"].as_array().unwrap() {
        assert_eq!(stage["status"], "restored");
        assert_eq!(stage["restored_from"]["tier"], "local");
        assert_eq!(stage["restored_from"]["location"], location.as_str());
        assert_eq!(stage["outputs"].as_array().unwrap().len(), 1);
    }

    let explain = project.run(&["explain", "export"]);
    explain.assert_ok();
    assert!(
        explain
            .stdout
            .contains(&format!("restored it from cache (local: {location})")),
        "{}",
        explain.stdout
    );

    // The end line counts restores apart from runs and up-to-date stages.
    set_precision(&project, "int8");
    project.write("model.txt", "other weights\n");
    let plain = project.run(&["build"]);
    plain.assert_ok();
    assert!(
        plain
            .stderr
            .contains("2 ran, 1 restored locally, 0 up to date"),
        "{}",
        plain.stderr
    );
}

#[test]
fn cache_info_reports_the_store_and_the_last_builds_hit_rate() {
    let project = switch_project();
    project.build(&[]).assert_ok();
    set_precision(&project, "int8");
    project.build(&[]).assert_ok();
    set_precision(&project, "fp16");
    project.build(&[]).assert_ok();

    let run = project.run(&["cache", "info", "--json"]);
    run.assert_ok();
    let info: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(info["root"], project.cache_root().display().to_string());
    assert_eq!(info["entries"], 6);
    let on_disk: u64 = files_under(&project.cache_root().join("cas"))
        .iter()
        .chain(&entries(&project))
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert_eq!(info["bytes"], on_disk);
    assert_eq!(info["last_build"]["restored_local"], 3);
    assert_eq!(info["last_build"]["ran"], 0);
    assert_eq!(info["last_build_hit_rate"], 1.0);

    let text = project.run(&["cache", "info"]);
    text.assert_ok();
    assert!(text.stdout.contains("entries:  6"), "{}", text.stdout);
    assert!(text.stdout.contains("hit rate 100%"), "{}", text.stdout);
}

fn make_unused_for(entry: &Path, age: Duration) {
    std::fs::File::options()
        .write(true)
        .open(entry)
        .unwrap()
        .set_modified(SystemTime::now() - age)
        .unwrap();
}

#[test]
fn cache_gc_removes_old_entries_then_everything_over_the_size() {
    let project = switch_project();
    project.build(&[]).assert_ok();
    let fp16_entries = entries(&project);
    assert_eq!(fp16_entries.len(), 3);
    set_precision(&project, "int8");
    project.build(&[]).assert_ok();
    assert_eq!(entries(&project).len(), 6);

    // The fp16 entries were last used two days ago.
    for entry in &fp16_entries {
        make_unused_for(entry, Duration::from_secs(2 * 86_400));
    }
    project
        .run(&["cache", "gc", "--older-than", "1d"])
        .assert_ok();
    let mut left = entries(&project);
    left.sort();
    assert_eq!(left.len(), 3);
    assert!(left.iter().all(|e| !fp16_entries.contains(e)));
    // fp16 runs again; the int8 configuration would still be restored.
    set_precision(&project, "fp16");
    let run = project.build(&[]);
    run.assert_ok();
    assert_eq!(run.ran(), ["calib", "engine", "export"]);

    let gc = project.run(&["cache", "gc", "--max-size", "0", "--json"]);
    gc.assert_ok();
    let report: serde_json::Value = serde_json::from_str(&gc.stdout).unwrap();
    assert_eq!(report["entries_removed"], 6);
    assert!(entries(&project).is_empty());
    set_precision(&project, "int8");
    let run = project.build(&[]);
    run.assert_ok();
    assert_eq!(
        run.ran(),
        ["calib", "engine", "export"],
        "nothing left to restore"
    );

    let bad = project.run(&["cache", "gc", "--older-than", "3y"]);
    assert_eq!(bad.code, Some(2), "clap refuses it: {}", bad.stderr);
    assert!(bad.stderr.contains("unknown unit"), "{}", bad.stderr);
}

#[test]
fn the_size_limit_is_applied_after_a_build() {
    let project = switch_project();
    let run = project.run_env(&["build", "--json"], &[("POCHI_CACHE_MAX_SIZE", "1B")]);
    run.assert_ok();
    assert_eq!(run.ran(), ["calib", "engine", "export"]);
    assert!(entries(&project).is_empty(), "trimmed to 90% of one byte");
    let bad = project.run_env(&["build"], &[("POCHI_CACHE_MAX_SIZE", "lots")]);
    bad.assert_error(&["POCHI_CACHE_MAX_SIZE"]);
}

#[test]
fn a_modified_deleted_or_cleaned_output_is_restored_with_its_recorded_content() {
    let project = switch_project();
    project.build(&[]).assert_ok();
    let built = outputs(&project);
    project.write("out/model.engine", "tampered\n");
    std::fs::remove_dir_all(project.path("out/calib")).unwrap();
    let run = project.build(&[]);
    run.assert_ok();
    assert_eq!(run.stages("restored"), ["calib", "engine"]);
    assert_eq!(run.stages("skipped"), ["export"]);
    project.run(&["clean"]).assert_ok();
    let run = project.build(&[]);
    run.assert_ok();
    assert_eq!(run.stages("restored"), ["calib", "engine", "export"]);
    assert_eq!(
        project.logged_runs(),
        3,
        "only the first build ran the stages"
    );
    assert_eq!(outputs(&project), built);
    // The restored outputs are the user's to edit: the cache keeps its copy.
    project.write("out/model.onnx", "edited by hand\n");
    std::fs::remove_file(project.path("out/model.onnx")).unwrap();
    project.build(&[]).assert_ok();
    assert_eq!(outputs(&project), built);
}

/// Issue 22 (10): a damaged blob of the right size used to be reused by a later store of
/// the same content (only restores hashed it), so the new entry pointed at damaged bytes
/// and its restores missed. A store now hashes the blob it would reuse and replaces a
/// damaged one.
#[test]
fn a_damaged_blob_is_replaced_when_its_content_is_stored_again() {
    let project = switch_project();
    project.build(&[]).assert_ok();
    // calib's `a.txt` holds "fp16\n"; damage its blob, keeping the size.
    let blob = blob_holding(&project, b"fp16\n");
    let mut perms = std::fs::metadata(&blob).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
    std::fs::set_permissions(&blob, perms).unwrap();
    std::fs::write(&blob, b"FP16\n").unwrap();

    // A new stage writes the same bytes: it runs (nothing to restore) and is stored.
    let twin = r#"
[stages.twin]
kind = "command"
run = ["sh", "-c", "mkdir -p {outputs.dir} && echo fp16 > {outputs.dir}/a.txt"]
outputs = { dir = "out/twin" }
"#;
    project.write("pipeline.toml", &format!("{PIPELINE}{twin}"));
    let stored = project.build(&[]);
    stored.assert_ok();
    assert_eq!(stored.ran(), ["twin"], "{}", stored.stderr);
    assert_eq!(
        std::fs::read(&blob).unwrap(),
        b"fp16\n",
        "the blob is repaired"
    );

    // Its entry restores.
    std::fs::remove_dir_all(project.path("out/twin")).unwrap();
    let run = project.build(&[]);
    run.assert_ok();
    assert_eq!(run.stages("restored"), ["twin"], "{}", run.stderr);
    assert!(!run.stderr.contains("corrupt"), "{}", run.stderr);
    assert_eq!(project.read("out/twin/a.txt"), "fp16\n");
}
