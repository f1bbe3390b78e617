//! One side of `pochi diff`: a set of pipelines built as `pochi build` builds them (the
//! same local and shared caches), then what the comparison reads from it: the report
//! summaries, the recorded stage keys, the gates.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::super::output::{failure, note};
use super::DiffArgs;
use crate::driver::{BuildOptions, BuildSummary, Project, Workspace};
use crate::fingerprint::StageKey;
use crate::toolchain::Mode;

/// The pipelines of one side, built.
pub(super) struct Side {
    pub workspace: Workspace,
    pub summary: BuildSummary,
}

/// Says what the baseline's build cost: restored, or built because it never was.
fn say_what_baseline_cost(summary: &BuildSummary, rev: &str) {
    let ran: Vec<&str> = summary
        .stages
        .iter()
        .filter(|s| s.status == crate::driver::StageStatus::Ran)
        .map(|s| s.stage.as_str())
        .collect();
    let restored = summary.counts.get("restored_local").copied().unwrap_or(0)
        + summary.counts.get("restored_remote").copied().unwrap_or(0);
    let took =
        super::super::output::duration(std::time::Duration::from_millis(summary.duration_ms));
    if ran.is_empty() {
        note!("baseline at {rev}: {restored} stage(s) restored from cache, none built ({took})");
    } else {
        note!(
            "baseline at {rev}: {} stage(s) were never built with these inputs and were built now ({}), {restored} restored; {took}",
            ran.len(),
            ran.join(", ")
        );
    }
}

/// Builds `paths` with the caches `args` give (`--no-cache`, `--remote-cache`, env).
/// The baseline's build (`baseline` names its revision) then says what it cost.
pub(super) fn build(
    paths: &[PathBuf],
    args: &DiffArgs,
    baseline: Option<&str>,
) -> miette::Result<Side> {
    let what = match baseline {
        Some(_) => "baseline",
        None => "working tree",
    };
    let local = args.cache.open_local()?;
    let mut workspace = Workspace::load(paths, crate::kinds::KINDS)?;
    super::super::gather_facts(&mut workspace, Mode::Create)?;
    workspace.place(args.remote.executor_configured())?;
    let remote = super::super::build::remote_tier(&args.remote, local.as_ref())?;
    // Stages placed on a remote executor (`--remote-executor`) run there, as in a build.
    let execution = match workspace.projects.iter().any(|p| !p.remote.is_empty()) {
        true => args.remote.execution()?.map(std::sync::Arc::new),
        false => None,
    };
    let portable = super::super::build::portable_actions(
        &args.remote,
        remote.is_some() || execution.is_some(),
    )?;
    let cache = super::super::build::tiered(local, remote.as_ref());
    let options = BuildOptions {
        jobs: args.jobs,
        cache,
        remote: execution,
        remote_jobs: args.remote.remote_jobs,
        portable,
        ..BuildOptions::default()
    };
    let summary = super::super::build::run_build(&workspace, &options)?;
    if summary.interrupted {
        return Err(failure(
            format!("interrupted while building the {what}"),
            "what was built is kept (no temporary worktree is left); run `pochi diff` again",
        ));
    }
    args.remote.check_required(remote.as_deref())?;
    if !summary.ok {
        let failed: Vec<&str> = summary
            .stages
            .iter()
            .filter(|s| s.status == crate::driver::StageStatus::Failed)
            .map(|s| s.stage.as_str())
            .collect();
        return Err(failure(
            format!("the {what} did not build: {} failed", failed.join(", ")),
            "the lines above say why; a report needs every model it compares",
        ));
    }
    if let Some(rev) = baseline {
        say_what_baseline_cost(&summary, rev);
    }
    Ok(Side { workspace, summary })
}

impl Side {
    /// The stages by status (`ran`, `restored`, `skipped`, ...).
    pub(super) fn counts(&self) -> BTreeMap<String, usize> {
        self.summary
            .counts
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect()
    }
}

/// The report stages of a project, by name, with their summary.json.
pub(super) fn reports(project: &Project) -> Vec<(String, usize)> {
    project
        .pipeline
        .stages
        .iter()
        .enumerate()
        .filter(|(_, stage)| stage.kind.kind() == "report")
        .map(|(i, stage)| (stage.name.clone(), i))
        .collect()
}

/// The summary.json a report stage's last build wrote.
pub(super) fn read_summary(
    project: &Project,
    stage: usize,
    side: &'static str,
) -> miette::Result<Value> {
    let name = &project.pipeline.stages[stage].name;
    let record = project
        .recorded_outputs(stage)
        .into_iter()
        .find(|o| o.key == "summary");
    let path = record
        .map(|o| project.pipeline.dir.join(o.path))
        .unwrap_or_else(|| Path::new(name).join("summary.json"));
    let fail = |reason: String| crate::diff::DiffError::Summary {
        stage: name.clone(),
        side,
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(&path).map_err(|e| fail(e.to_string()));
    let value = text.and_then(|t| serde_json::from_str(&t).map_err(|e| fail(e.to_string())));
    value.map_err(|e| failure(e.to_string(), e.help()))
}

/// The key a stage's last successful build recorded, with its fingerprint.
pub(super) fn recorded_key(project: &Project, stage: &str) -> Option<(String, Option<StageKey>)> {
    let state = project.state.lock().unwrap_or_else(|e| e.into_inner());
    state
        .built(stage)
        .map(|r| (r.fingerprint.clone(), r.key.parse()))
}

/// The `gates` of a report stage as written in the pipeline file (a matrix variant has
/// those of the stage it was declared as); the parser has already checked them.
pub(super) fn gates(project: &Project, stage: usize) -> Vec<String> {
    let stage = &project.pipeline.stages[stage];
    let declared = stage.matrix.as_ref().map_or(&stage.name, |m| &m.base);
    let Ok(table) = project.pipeline.source.text.parse::<toml::Table>() else {
        return Vec::new();
    };
    table
        .get("stages")
        .and_then(|s| s.get(declared.as_str()))
        .and_then(|s| s.get("gates"))
        .and_then(|g| g.as_array())
        .map(|list| {
            list.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}
