//! The driver's decisions on a FAKE process runner (`process::fake::FakeRunner`, a test
//! double), as ninja's `build_test.cc` drives its builder: which stages run, in which
//! order, what failure blocks, and that the plan says what a build then does, without
//! spawning a process.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use super::{BuildOptions, BuildSummary, PlanStatus, StageStatus, Workspace};
use crate::machine::Hardware;
use crate::process::fake::FakeRunner;

/// a.txt -> a -> b; c.txt -> c. The program's first argument names the stage.
const PIPELINE: &str = r#"
[pipeline]
name = "p"

[stages.a]
kind = "command"
run = ["gen", "a", "{inputs.src}", "{outputs.out}"]
inputs = { src = "a.txt" }
outputs = { out = "out/a" }

[stages.b]
kind = "command"
run = ["gen", "b", "{inputs.a}", "{outputs.out}"]
inputs = { a = "@a" }
outputs = { out = "out/b" }

[stages.c]
kind = "command"
run = ["other", "c", "{inputs.src}", "{outputs.out}"]
inputs = { src = "c.txt" }
outputs = { out = "out/c" }
"#;

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let fixture = Fixture::with(PIPELINE);
        fixture.write("a.txt", "a\n");
        fixture.write("c.txt", "c\n");
        fixture
    }

    /// A project whose `pipeline.toml` is `pipeline`.
    fn with(pipeline: &str) -> Fixture {
        let fixture = Fixture {
            dir: tempfile::tempdir().unwrap(),
        };
        fixture.write("pipeline.toml", pipeline);
        fixture
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    fn write(&self, relative: &str, text: &str) {
        std::fs::write(self.path(relative), text).unwrap();
    }

    fn workspace(&self) -> Workspace {
        self.workspace_of(&["pipeline.toml"])
    }

    /// The workspace of the pipeline files `files` of the project.
    fn workspace_of(&self, files: &[&str]) -> Workspace {
        let files: Vec<PathBuf> = files.iter().map(|file| self.path(file)).collect();
        let mut workspace = Workspace::load(&files, crate::kinds::KINDS).unwrap();
        workspace.place(false).unwrap();
        workspace
    }

    /// A build (keeping going after a failure) with `runner`, no cache.
    fn build(&self, runner: &Arc<FakeRunner>) -> BuildSummary {
        let options = BuildOptions {
            keep_going: true,
            ..BuildOptions::default()
        };
        self.build_with(&self.workspace(), runner, &options)
            .unwrap()
    }

    /// A build of `workspace` with `runner` and `options`, on a 2-core, 8 GiB machine
    /// without a GPU.
    fn build_with(
        &self,
        workspace: &Workspace,
        runner: &Arc<FakeRunner>,
        options: &BuildOptions,
    ) -> Result<BuildSummary, super::BuildError> {
        let machine = Hardware {
            cores: 2,
            memory: 8 << 30,
            gpus: Vec::new(),
            gpu_models: Vec::new(),
        };
        let runner: Arc<dyn crate::process::ProcessRunner> = runner.clone();
        let cancel = Arc::new(AtomicBool::new(false));
        workspace.build(options, &machine, runner, cancel, &mut |_| {})
    }

    /// The stages the plan says would run.
    fn would_run(&self) -> Vec<String> {
        let workspace = self.workspace();
        let ids = workspace.stage_ids();
        let mut stages: Vec<String> = workspace
            .plan(&ids)
            .into_iter()
            .filter(|plan| plan.status.would_run())
            .map(|plan| workspace.display_name(plan.id))
            .collect();
        stages.sort();
        stages
    }
}

/// The stages of `summary` with `status`, sorted.
fn with_status(summary: &BuildSummary, status: StageStatus) -> Vec<String> {
    let mut stages: Vec<String> = summary
        .stages
        .iter()
        .filter(|stage| stage.status == status)
        .map(|stage| stage.stage.clone())
        .collect();
    stages.sort();
    stages
}

#[test]
fn a_first_build_runs_every_stage_upstream_first_and_a_second_runs_none() {
    let fixture = Fixture::new();
    let runner = Arc::new(FakeRunner::default());
    let first = fixture.build(&runner);
    assert!(first.ok);
    assert_eq!(with_status(&first, StageStatus::Ran), ["a", "b", "c"]);
    let order = runner.first_args();
    let position = |stage: &str| order.iter().position(|s| s == stage).unwrap();
    assert!(position("a") < position("b"), "{order:?}");
    assert_eq!(fixture.would_run(), Vec::<String>::new());

    let second = fixture.build(&runner);
    assert_eq!(with_status(&second, StageStatus::Skipped), ["a", "b", "c"]);
    assert_eq!(runner.first_args().len(), 3, "nothing ran again");
}

#[test]
fn a_changed_input_reruns_its_stage_and_what_depends_on_it_and_the_plan_said_so() {
    let fixture = Fixture::new();
    let runner = Arc::new(FakeRunner::default());
    fixture.build(&runner);
    fixture.write("a.txt", "a, changed\n");
    assert_eq!(fixture.would_run(), ["a", "b"]);
    let summary = fixture.build(&runner);
    assert_eq!(with_status(&summary, StageStatus::Ran), ["a", "b"]);
    assert_eq!(with_status(&summary, StageStatus::Skipped), ["c"]);
}

#[test]
fn a_deleted_or_edited_output_reruns_its_stage() {
    let fixture = Fixture::new();
    let runner = Arc::new(FakeRunner::default());
    fixture.build(&runner);
    std::fs::remove_file(fixture.path("out/c")).unwrap();
    assert_eq!(fixture.would_run(), ["c"]);
    let summary = fixture.build(&runner);
    assert_eq!(with_status(&summary, StageStatus::Ran), ["c"]);

    fixture.write("out/c", "edited by hand\n");
    let workspace = fixture.workspace();
    let plans = workspace.plan(&workspace.stage_ids());
    let c = plans
        .iter()
        .find(|plan| workspace.display_name(plan.id) == "c")
        .unwrap();
    assert_eq!(c.status, PlanStatus::Stale);
    assert!(
        c.reasons.iter().any(|r| r.contains("modified")),
        "{:?}",
        c.reasons
    );
    assert_eq!(
        with_status(&fixture.build(&runner), StageStatus::Ran),
        ["c"]
    );
}

#[test]
fn a_failed_stage_blocks_its_dependents_is_recorded_as_not_built_and_runs_again() {
    let fixture = Fixture::new();
    let failing = Arc::new(FakeRunner::failing("gen"));
    let summary = fixture.build(&failing);
    assert!(!summary.ok);
    assert_eq!(with_status(&summary, StageStatus::Failed), ["a"]);
    assert_eq!(with_status(&summary, StageStatus::Blocked), ["b"]);
    assert_eq!(with_status(&summary, StageStatus::Ran), ["c"], "keep going");
    assert!(!fixture.path("out/a").exists(), "nothing is published");
    assert_eq!(fixture.would_run(), ["a", "b"]);

    let runner = Arc::new(FakeRunner::default());
    let again = fixture.build(&runner);
    assert_eq!(with_status(&again, StageStatus::Ran), ["a", "b"]);
}

/// A hostile project can commit `.pochi/`: a link where a stage's temporary directory goes
/// (its name is known in advance) is removed when the build takes the lock, never
/// followed, and nothing behind it is touched.
#[test]
fn a_link_planted_as_a_stages_temporary_directory_is_not_followed() {
    let fixture = Fixture::new();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("precious.txt"), "keep me").unwrap();
    std::fs::create_dir_all(fixture.path(".pochi/v1/p/tmp")).unwrap();
    std::os::unix::fs::symlink(outside.path(), fixture.path(".pochi/v1/p/tmp/a")).unwrap();
    let summary = fixture.build(&Arc::new(FakeRunner::default()));
    assert_eq!(with_status(&summary, StageStatus::Ran), ["a", "b", "c"]);
    let entries: Vec<_> = std::fs::read_dir(outside.path())
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(
        std::fs::read_to_string(outside.path().join("precious.txt")).unwrap(),
        "keep me"
    );
    let kept = std::fs::symlink_metadata(fixture.path(".pochi/v1/p/tmp/a")).unwrap();
    assert!(kept.is_dir(), "a real directory now");
}

/// A committed `.pochi` that links elsewhere: the build refuses to write its state there,
/// and says where the link is.
#[test]
fn a_state_directory_behind_a_link_is_refused() {
    let fixture = Fixture::new();
    let outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), fixture.path(".pochi")).unwrap();
    let options = BuildOptions::default();
    let error = fixture
        .build_with(
            &fixture.workspace(),
            &Arc::new(FakeRunner::default()),
            &options,
        )
        .unwrap_err();
    let text = format!(
        "{error}: {}",
        std::error::Error::source(&error)
            .map(|e| e.to_string())
            .unwrap_or_default()
    );
    assert!(text.contains("not a directory"), "{text}");
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
}

/// Moved from the binary's tests (`tests/it/builds.rs`): decisions that need no process.
mod moved_from_binary_tests {
    use super::*;

    /// A runner whose outputs are the upper-cased text of the process's second argument
    /// (the stage's input): two inputs with one upper case give byte-identical outputs.
    fn upper_casing() -> Arc<FakeRunner> {
        Arc::new(FakeRunner::writing(|spec, _| {
            let input = spec.cwd.join(spec.args.get(1)?);
            Some(std::fs::read_to_string(input).ok()?.to_uppercase())
        }))
    }

    #[test]
    fn reformatting_the_pipeline_file_runs_nothing() {
        let fixture = Fixture::new();
        let runner = Arc::new(FakeRunner::default());
        fixture.build(&runner);
        let reordered = r#"
# reformatted: other order, other layout, paths spelled otherwise
[stages.c]
outputs.out = "./out/c"
inputs = { src = "x/../c.txt" }
run = [ "other", "c", "{inputs.src}", "{outputs.out}" ]
kind = "command"

[stages.b]
kind = "command"
inputs.a = "@a"
outputs = { out = "out/b" }
run = ["gen", "b", "{inputs.a}", "{outputs.out}"]

[stages.a]
run = ["gen", "a", "{inputs.src}", "{outputs.out}"]
kind = "command"
inputs = { src = "a.txt" }
outputs = { out = "out/a" }

[pipeline]
name = "p"
"#;
        fixture.write("pipeline.toml", reordered);
        let summary = fixture.build(&runner);
        assert_eq!(
            with_status(&summary, StageStatus::Ran),
            Vec::<String>::new()
        );
        assert_eq!(runner.first_args().len(), 3);
    }

    #[test]
    fn a_parameter_or_env_change_reruns_that_stage_and_its_dependents_only() {
        let fixture = Fixture::new();
        let runner = Arc::new(FakeRunner::default());
        fixture.build(&runner);
        let changed = PIPELINE.replace(r#"run = ["gen", "a","#, r#"run = ["gen", "a", "--more","#);
        fixture.write("pipeline.toml", &changed);
        let summary = fixture.build(&runner);
        assert_eq!(with_status(&summary, StageStatus::Ran), ["a", "b"]);
        assert_eq!(with_status(&summary, StageStatus::Skipped), ["c"]);

        let with_env = changed.replace(
            "[stages.c]\nkind = \"command\"",
            "[stages.c]\nkind = \"command\"\nenv = { GREETING = \"hi\" }",
        );
        fixture.write("pipeline.toml", &with_env);
        assert_eq!(
            with_status(&fixture.build(&runner), StageStatus::Ran),
            ["c"]
        );
        fixture.write("pipeline.toml", &with_env.replace("\"hi\"", "\"bye\""));
        assert_eq!(
            with_status(&fixture.build(&runner), StageStatus::Ran),
            ["c"]
        );
    }

    #[test]
    fn early_cutoff_skips_dependents_of_byte_identical_outputs() {
        let fixture = Fixture::new();
        let runner = upper_casing();
        fixture.build(&runner);
        assert_eq!(
            std::fs::read_to_string(fixture.path("out/a")).unwrap(),
            "A\n"
        );
        // Another input, the same upper-case output: a reruns, b does not.
        fixture.write("a.txt", "A\n");
        let summary = fixture.build(&runner);
        assert_eq!(with_status(&summary, StageStatus::Ran), ["a"]);
        assert_eq!(with_status(&summary, StageStatus::Skipped), ["b", "c"]);
        // The control: an input that changes the output reruns b too.
        fixture.write("a.txt", "other\n");
        let summary = fixture.build(&runner);
        assert_eq!(with_status(&summary, StageStatus::Ran), ["a", "b"]);
    }

    #[test]
    fn targets_build_only_what_they_need_and_an_unknown_one_suggests_a_name() {
        let fixture = Fixture::new();
        let runner = Arc::new(FakeRunner::default());
        let options = BuildOptions {
            targets: vec!["b".into()],
            ..BuildOptions::default()
        };
        let summary = fixture
            .build_with(&fixture.workspace(), &runner, &options)
            .unwrap();
        assert_eq!(with_status(&summary, StageStatus::Ran), ["a", "b"]);
        assert!(!fixture.path("out/c").exists());
        let named = Fixture::with(
            "[stages.prep]\nkind = \"command\"\nrun = [\"gen\", \"{outputs.out}\"]\noutputs = { out = \"out/p\" }\n",
        );
        let typo = BuildOptions {
            targets: vec!["prepp".into()],
            ..BuildOptions::default()
        };
        let error = named
            .build_with(&named.workspace(), &runner, &typo)
            .unwrap_err();
        assert_eq!(error.to_string(), "unknown target `prepp`");
        let help = miette::Diagnostic::help(&error).unwrap().to_string();
        assert!(help.contains("did you mean `prep`?"), "{help}");
    }

    #[test]
    fn a_stage_that_writes_no_declared_output_fails_and_publishes_nothing() {
        let fixture = Fixture::with(
            r#"
[stages.lazy]
kind = "command"
run = ["gen", "lazy", "{outputs.a}", "{outputs.b}"]
outputs = { a = "out/a.txt", b = "out/b.txt" }
"#,
        );
        let writes_a_only = Arc::new(FakeRunner::writing(|_, output| {
            output.ends_with("a.txt").then(|| "partial\n".to_string())
        }));
        for _ in 0..2 {
            let summary = fixture.build(&writes_a_only);
            assert_eq!(
                with_status(&summary, StageStatus::Failed),
                ["lazy"],
                "never recorded as built"
            );
            let error = summary.stages[0].error.as_deref().unwrap();
            assert!(
                error.contains("did not write its declared output `b`"),
                "{error}"
            );
            let hint = summary.stages[0].hint.as_deref().unwrap();
            assert!(hint.contains("{outputs.b}"), "{hint}");
            assert!(!fixture.path("out/a.txt").exists(), "nothing is published");
        }
    }

    #[test]
    fn without_keep_going_the_build_stops_after_a_failure() {
        let fixture = Fixture::with(
            r#"
[stages.a_bad]
kind = "command"
run = ["fails", "a_bad", "{outputs.out}"]
outputs = { out = "out/a.txt" }

[stages.b_later]
kind = "command"
run = ["gen", "b_later", "{outputs.out}"]
outputs = { out = "out/b.txt" }
"#,
        );
        let runner = Arc::new(FakeRunner::failing("fails"));
        // One slot: a_bad sorts first among equal priorities and fails before b starts.
        let options = BuildOptions {
            jobs: Some(1),
            ..BuildOptions::default()
        };
        let summary = fixture
            .build_with(&fixture.workspace(), &runner, &options)
            .unwrap();
        assert!(!summary.ok);
        assert_eq!(with_status(&summary, StageStatus::Failed), ["a_bad"]);
        assert_eq!(with_status(&summary, StageStatus::Stopped), ["b_later"]);
        assert_eq!(runner.first_args(), ["a_bad"]);
    }

    #[test]
    fn an_input_changed_while_the_stage_ran_is_not_recorded_or_published() {
        let fixture = Fixture::with(
            r#"
[stages.racy]
kind = "command"
run = ["gen", "racy", "{inputs.src}", "{outputs.out}"]
inputs = { src = "src.txt" }
outputs = { out = "out/racy.txt" }
"#,
        );
        fixture.write("src.txt", "one\n");
        let appends_to_its_input = Arc::new(FakeRunner::writing(|spec, _| {
            let input = spec.cwd.join(&spec.args[1]);
            let text = std::fs::read_to_string(&input).ok()?;
            std::fs::write(&input, format!("{text}more\n")).ok()?;
            Some(text)
        }));
        let summary = fixture.build(&appends_to_its_input);
        assert_eq!(with_status(&summary, StageStatus::Failed), ["racy"]);
        let error = summary.stages[0].error.as_deref().unwrap();
        assert!(
            error.contains("an input changed while the stage ran"),
            "{error}"
        );
        assert!(!fixture.path("out/racy.txt").exists());
        assert_eq!(fixture.would_run(), ["racy"]);
    }

    #[test]
    fn several_pipelines_build_in_one_run_and_a_target_names_its_pipeline() {
        let fixture = Fixture::new();
        fixture.write(
            "second.toml",
            "[stages.extra]\nkind = \"command\"\nrun = [\"gen\", \"extra\", \"{outputs.out}\"]\noutputs = { out = \"out/extra\" }\n",
        );
        let runner = Arc::new(FakeRunner::default());
        let both = fixture.workspace_of(&["pipeline.toml", "second.toml"]);
        let summary = fixture
            .build_with(&both, &runner, &BuildOptions::default())
            .unwrap();
        assert_eq!(
            with_status(&summary, StageStatus::Ran),
            ["a", "b", "c", "extra"]
        );
        let options = BuildOptions {
            targets: vec!["second/extra".into()],
            ..BuildOptions::default()
        };
        let again = fixture.build_with(&both, &runner, &options).unwrap();
        assert_eq!(with_status(&again, StageStatus::Skipped), ["extra"]);
        assert_eq!(again.stages.len(), 1);
    }

    #[test]
    fn a_stage_that_can_never_fit_fails_at_once_saying_what_it_lacks() {
        let fixture = Fixture::with(
            r#"
[stages.needs_gpu]
kind = "command"
device = "cuda"
run = ["gen", "needs_gpu", "{outputs.out}"]
outputs = { out = "out/g.txt" }

[stages.hungry]
kind = "command"
resources = { memory = "64TiB" }
run = ["gen", "hungry", "{outputs.out}"]
outputs = { out = "out/h.txt" }
"#,
        );
        let runner = Arc::new(FakeRunner::default());
        let summary = fixture.build(&runner);
        assert!(!summary.ok);
        let error_of = |name: &str| {
            let stage = summary.stages.iter().find(|s| s.stage == name).unwrap();
            stage.error.clone().unwrap_or_default()
        };
        assert!(
            error_of("needs_gpu").contains("needs a GPU"),
            "{}",
            error_of("needs_gpu")
        );
        assert!(
            error_of("hungry").contains("64.0 TiB of memory"),
            "{}",
            error_of("hungry")
        );
        assert!(runner.first_args().is_empty(), "nothing ran");
    }
}

/// The one Action of a stage, as a remote tier sees it: a RECORDING FAKE of the remote
/// tier (a test double for a server) keeps the portable Action of each restore and store.
mod portable_actions {
    use super::*;
    use crate::action::PortableAction;
    use crate::cache::{
        BuildStats, CacheRequest, Miss, OutputCache, PublishedOutput, Restored, StoreError,
    };
    use crate::driver::portable::PortableActions;
    use std::sync::Mutex;

    /// (stage, "restore" or "store", the portable Action).
    type Seen = Vec<(String, &'static str, PortableAction)>;

    #[derive(Debug, Default)]
    struct RecordingTier {
        seen: Mutex<Seen>,
    }

    impl RecordingTier {
        fn record(&self, request: &CacheRequest, what: &'static str) {
            let action = request
                .action
                .expect("a portable Action")
                .portable()
                .unwrap();
            let entry = (request.meta.stage.clone(), what, action.clone());
            self.seen.lock().unwrap().push(entry);
        }
    }

    impl OutputCache for RecordingTier {
        fn may_have(&self, _request: &CacheRequest) -> bool {
            true
        }

        fn restore(
            &self,
            request: &CacheRequest,
            _dest_for: &dyn Fn(&str) -> PathBuf,
        ) -> Result<Restored, Miss> {
            self.record(request, "restore");
            Err(Miss::NoEntry)
        }

        fn store(&self, request: &CacheRequest, _: &[PublishedOutput]) -> Result<(), StoreError> {
            self.record(request, "store");
            Ok(())
        }

        fn finish_build(&self, _stats: &BuildStats, _stored: bool) -> Vec<String> {
            Vec::new()
        }
    }

    /// What a first build of `fixture` hands the tier, in stage order.
    fn seen_in(fixture: &Fixture) -> Seen {
        let tier = Arc::new(RecordingTier::default());
        let options = BuildOptions {
            cache: Some(Arc::clone(&tier) as Arc<dyn OutputCache>),
            portable: Some(Arc::new(PortableActions::new(
                PathBuf::from("/home/me/.cache/pochi/v1/toolchains"),
                PathBuf::from("/opt/pochi/v1/toolchains"),
            ))),
            ..BuildOptions::default()
        };
        // Outputs from the arguments alone (the default names the call's number).
        let runner = Arc::new(FakeRunner::writing(|spec, _| Some(spec.args.join(" "))));
        let summary = fixture
            .build_with(&fixture.workspace(), &runner, &options)
            .unwrap();
        assert!(summary.ok, "{summary:?}");
        let mut seen = tier.seen.lock().unwrap().clone();
        seen.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        seen
    }

    #[test]
    fn a_restore_and_the_store_after_the_run_use_one_action_the_same_in_every_clone() {
        let (first, second) = (Fixture::new(), Fixture::new());
        let seen = seen_in(&first);
        let stages: Vec<(&str, &str)> = seen.iter().map(|(s, w, _)| (s.as_str(), *w)).collect();
        assert_eq!(
            stages,
            [
                ("a", "restore"),
                ("a", "store"),
                ("b", "restore"),
                ("b", "store"),
                ("c", "restore"),
                ("c", "store")
            ]
        );
        for pair in seen.chunks(2) {
            assert_eq!(
                pair[0].2, pair[1].2,
                "one Action for the restore and the store"
            );
        }
        let a = &seen[0].2;
        assert_eq!(a.argv, ["gen", "a", "a.txt", ".pochi/v1/p/tmp/a/out/a"]);
        assert_eq!(
            a.outputs,
            [("out".into(), ".pochi/v1/p/tmp/a/out/a".into())]
        );
        assert_eq!(a.inputs[0].path, "a.txt");
        assert_eq!(a.inputs[0].sha256.len(), 64);
        assert!(!a.env.contains_key("CUDA_VISIBLE_DEVICES"));
        // Another clone, in another directory: the same Actions but for where files are.
        let elsewhere = seen_in(&second);
        let without_local = |seen: &Seen| -> Vec<PortableAction> {
            let mut actions: Vec<PortableAction> = seen.iter().map(|s| s.2.clone()).collect();
            for action in &mut actions {
                action
                    .inputs
                    .iter_mut()
                    .for_each(|i| i.local = PathBuf::new());
            }
            actions
        };
        assert_eq!(without_local(&seen), without_local(&elsewhere));
        let text = format!("{:?}", without_local(&seen));
        let dir = first.dir.path().to_string_lossy().into_owned();
        assert!(
            !text.contains(&dir),
            "no path of the project's directory: {text}"
        );
    }

    #[test]
    fn an_edit_to_another_stage_leaves_the_action_of_a_stage_pochi_runs_alone() {
        let pipeline = r#"
[pipeline]
name = "p"

[stages.calib]
kind = "dataset"
synthetic = { shape = [3, 8, 8], count = 4, seed = 7 }

[stages.other]
kind = "command"
run = ["gen", "{outputs.out}"]
outputs = { out = "out/o" }
"#;
        let action_of = |fixture: &Fixture| {
            let seen = seen_in(fixture);
            let stored = seen
                .into_iter()
                .find(|(s, w, _)| s == "calib" && *w == "store");
            stored.expect("calib stored").2
        };
        let before = action_of(&Fixture::with(pipeline));
        let after = action_of(&Fixture::with(&pipeline.replace("\"gen\"", "\"gen2\"")));
        assert_eq!(before.argv, after.argv);
        let argv: Vec<&str> = before.argv.iter().map(String::as_str).collect();
        assert!(argv[0].starts_with(".pochi-remote/"), "{argv:?}");
        assert_eq!(argv[1..3], ["run-stage", "--python"]);
        let request = |action: &PortableAction| {
            let found = action
                .inputs
                .iter()
                .find(|i| i.path.ends_with("request.json"));
            found.expect("the request is an input").clone()
        };
        // The request (pipeline text and context) is the same: the edit is not in it.
        assert_eq!(request(&before).sha256, request(&after).sha256);
        assert!(
            before.inputs.iter().any(|i| i.path == argv[0]),
            "pochi is an input"
        );
        assert!(before.outputs.iter().any(|(name, _)| name == ".answer"));
    }
}
