//! The driver's decisions on a FAKE process runner (`process::fake::FakeRunner`, a test
//! double), as ninja's `build_test.cc` drives its builder: which stages run, in which
//! order, what failure blocks, and that the plan says what a build then does, without
//! spawning a process.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use super::{BuildOptions, BuildSummary, PlanStatus, StageStatus, Workspace};
use crate::machine::Machine;
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
        let fixture = Fixture {
            dir: tempfile::tempdir().unwrap(),
        };
        fixture.write("pipeline.toml", PIPELINE);
        fixture.write("a.txt", "a\n");
        fixture.write("c.txt", "c\n");
        fixture
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    fn write(&self, relative: &str, text: &str) {
        std::fs::write(self.path(relative), text).unwrap();
    }

    fn workspace(&self) -> Workspace {
        let mut workspace =
            Workspace::load(&[self.path("pipeline.toml")], crate::kinds::KINDS).unwrap();
        workspace.place(false).unwrap();
        workspace
    }

    /// A build (keeping going after a failure) with `runner`, no cache.
    fn build(&self, runner: &Arc<FakeRunner>) -> BuildSummary {
        let machine = Machine {
            cores: 2,
            memory: 8 << 30,
            gpus: Vec::new(),
            gpu_models: Vec::new(),
        };
        let options = BuildOptions {
            keep_going: true,
            ..BuildOptions::default()
        };
        let runner: Arc<dyn crate::process::ProcessRunner> = runner.clone();
        let cancel = Arc::new(AtomicBool::new(false));
        self.workspace()
            .build(&options, &machine, runner, cancel, &mut |_| {})
            .unwrap()
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
