//! `pochi diff [REV] [PIPELINE ...]`: what a change did to every report's accuracy,
//! latency and size against a git revision, built in a temporary worktree with the same
//! caches, with `--fail-on` rules (and the reports' `gates`) as a CI gate.

mod git;
mod retime;
mod side;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

use super::output::{failure, note, print_error, show, write_stdout};
use crate::diff::{self, Baseline, Diff, DiffError, PipelineDiff, ReportDiff, Rule, StageChange};
use side::Side;

#[derive(Debug, Args)]
#[command(
    override_usage = "pochi diff [REV] [PIPELINE ...] [--fail-on RULE ...] [--json | --markdown] [--retime]"
)]
pub(super) struct DiffArgs {
    /// `[REV] [PIPELINE ...]`: the revision to compare with (default HEAD) and the pipeline
    /// files (default pipeline.toml). A first word that is an existing file or ends in
    /// `.toml` is a pipeline.
    #[arg(value_name = "ARGS")]
    words: Vec<String>,
    /// Fail (exit 1) when a change breaks this rule: `[@MODEL:]METRIC OP CHANGE`, e.g.
    /// 'accuracy < -0.5pp', 'p50_ms > +10%', '@onnx_int8:dice_mean < -0.01'. Repeatable;
    /// added to the report stages' `gates`.
    #[arg(long = "fail-on", value_name = "RULE")]
    fail_on: Vec<String>,
    /// Print the comparison as JSON on stdout (schema: docs/diff.md).
    #[arg(long, conflicts_with = "markdown")]
    json: bool,
    /// Print the comparison as Markdown (for $GITHUB_STEP_SUMMARY or a pull request).
    #[arg(long)]
    markdown: bool,
    /// Time every ONNX model of both sides again here, alternating (5 rounds, the
    /// report's warmup and iterations, ONNX Runtime's CPU provider), so latency compares
    /// even when the baseline was timed on another machine.
    #[arg(long)]
    retime: bool,
    /// Run at most N stages at once in each build.
    #[arg(short, long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    jobs: Option<u32>,
    #[command(flatten)]
    cache: super::cache::CacheArgs,
    #[command(flatten)]
    remote: super::remote::RemoteArgs,
}

impl DiffArgs {
    /// The revision and the pipeline files.
    fn split(&self) -> (String, Vec<PathBuf>) {
        let is_pipeline = |w: &str| w.ends_with(".toml") || Path::new(w).is_file();
        match self.words.split_first() {
            Some((first, rest)) if !is_pipeline(first) => (
                first.clone(),
                rest.iter().map(PathBuf::from).collect::<Vec<_>>(),
            ),
            _ => (
                "HEAD".into(),
                self.words.iter().map(PathBuf::from).collect(),
            ),
        }
    }
}

pub(super) fn run(args: DiffArgs) -> miette::Result<ExitCode> {
    let (rev, given) = args.split();
    let rules = match parse_rules(&args.fail_on) {
        Ok(rules) => rules,
        Err(usage) => {
            print_error(&usage);
            return Ok(ExitCode::from(2));
        }
    };
    let paths = super::pipeline_paths(&given);
    let (repo, relative) = locate(&paths)?;
    let commit = git::commit_of(&repo, &rev)?;
    for (path, inside) in paths.iter().zip(&relative) {
        if !git::exists_at(&repo, &commit, inside)? {
            return Err(git::GitError::PipelineMissing {
                path: path.display().to_string(),
                rev: rev.clone(),
            }
            .into());
        }
    }
    note!("building the working tree");
    let current = side::build(&paths, &args, None)?;
    let worktree = git::Worktree::add(&repo, &commit, &rev)?;
    let base_paths: Vec<PathBuf> = relative.iter().map(|r| worktree.path.join(r)).collect();
    note!(
        "building the baseline at {rev} ({}) in {}",
        &commit[..12.min(commit.len())],
        worktree.path.display()
    );
    let baseline = side::build(&base_paths, &args, Some(&rev))?;
    let revision = Baseline { rev, commit };
    let diff = compare(&paths, (&baseline, &current), &rules, revision, args.retime)?;
    drop(worktree);
    print(&diff, &args);
    let broken = diff.broken();
    super::exit_without_freeing(current.workspace);
    super::exit_without_freeing(baseline.workspace);
    if broken > 0 {
        note!("{broken} rule(s) broken");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// `--fail-on` rules; a bad one is a usage error that lists the known metrics.
fn parse_rules(texts: &[String]) -> Result<Vec<Rule>, miette::Report> {
    texts
        .iter()
        .map(|text| diff::rule::parse(text).map_err(|e| failure(e.message.clone(), e.help)))
        .collect()
}

/// The repository of the pipelines and each pipeline's path inside it.
fn locate(paths: &[PathBuf]) -> miette::Result<(PathBuf, Vec<PathBuf>)> {
    let mut repo: Option<PathBuf> = None;
    let mut relative = Vec::new();
    for path in paths {
        let absolute = std::fs::canonicalize(path).map_err(|e| {
            failure(
                format!("cannot read the pipeline {}: {e}", path.display()),
                "name an existing pipeline file (default: pipeline.toml here)",
            )
        })?;
        let dir = absolute.parent().unwrap_or(Path::new("/"));
        let top = std::fs::canonicalize(git::toplevel(dir)?).map_err(|e| {
            failure(
                format!("cannot read the repository of {}: {e}", path.display()),
                "check the directory's permissions",
            )
        })?;
        if repo.as_ref().is_some_and(|r| *r != top) {
            return Err(failure(
                format!(
                    "{} is in another git repository than the first pipeline",
                    path.display()
                ),
                "compare the pipelines of one repository at a time",
            ));
        }
        relative.push(
            absolute
                .strip_prefix(&top)
                .unwrap_or(&absolute)
                .to_path_buf(),
        );
        repo = Some(top);
    }
    repo.map(|r| (r, relative))
        .ok_or_else(|| failure("no pipeline to compare", "name a pipeline file"))
}

/// Both sides compared, pipeline by pipeline.
fn compare(
    paths: &[PathBuf],
    (baseline, current): (&Side, &Side),
    rules: &[Rule],
    revision: Baseline,
    retime: bool,
) -> miette::Result<Diff> {
    let mut all_rules: Vec<String> = rules.iter().map(|r| r.text.clone()).collect();
    let mut pipelines = Vec::new();
    for (i, path) in paths.iter().enumerate() {
        let (old, new) = (
            &baseline.workspace.projects[i],
            &current.workspace.projects[i],
        );
        let mut reports = Vec::new();
        for (name, stage) in side::reports(new) {
            let gates = side::gates(new, stage);
            let mut stage_rules = rules.to_vec();
            for gate in &gates {
                let rule =
                    diff::rule::parse(gate).map_err(|e| failure(e.message.clone(), e.help))?;
                all_rules.push(format!("{name}: {gate}"));
                stage_rules.push(rule);
            }
            let report = compare_report((old, new), &name, stage, &stage_rules, retime)?;
            check_models_named(&report, &stage_rules[rules.len()..])?;
            reports.push(report);
        }
        for rule in rules {
            if reports.iter().all(|r| r.lacks_model_of(rule)) {
                return Err(unknown_model(rule, &reports));
            }
        }
        if let Some((name, _)) = side::reports(old)
            .into_iter()
            .find(|(n, _)| !reports.iter().any(|r| &r.stage == n))
        {
            let error = DiffError::ReportRemoved { stage: name };
            return Err(failure(error.to_string(), error.help()));
        }
        pipelines.push(PipelineDiff {
            pipeline: path.display().to_string(),
            baseline_build: baseline.counts(),
            current_build: current.counts(),
            why: why(old, new),
            reports,
        });
    }
    let mut diff = Diff {
        schema_version: diff::SCHEMA_VERSION,
        baseline: revision,
        rules: all_rules,
        ok: true,
        pipelines,
    };
    diff.ok = diff.broken() == 0;
    Ok(diff)
}

/// A report's `gates` naming a model it does not have: an error, not a gate that never fires.
fn check_models_named(report: &ReportDiff, gates: &[Rule]) -> miette::Result<()> {
    match gates.iter().find(|rule| report.lacks_model_of(rule)) {
        Some(rule) => Err(unknown_model(rule, std::slice::from_ref(report))),
        None => Ok(()),
    }
}

fn unknown_model(rule: &Rule, reports: &[ReportDiff]) -> miette::Report {
    let models: Vec<&str> = reports
        .iter()
        .flat_map(|r| &r.models)
        .map(|m| m.model.as_str())
        .collect();
    failure(
        format!("rule `{rule}` names a model that no report compared has"),
        format!(
            "name one of: {} (with or without the `@`)",
            models.join(", ")
        ),
    )
}

fn compare_report(
    (old, new): (&crate::driver::Project, &crate::driver::Project),
    name: &str,
    stage: usize,
    rules: &[Rule],
    retime: bool,
) -> miette::Result<ReportDiff> {
    let Some((_, old_stage)) = side::reports(old).into_iter().find(|(n, _)| n == name) else {
        let error = DiffError::ReportAdded { stage: name.into() };
        return Err(failure(error.to_string(), error.help()));
    };
    let old_summary = side::read_summary(old, old_stage, "the baseline's")?;
    let new_summary = side::read_summary(new, stage, "the working tree's")?;
    let mut report = diff::compare::compare_report(name, &old_summary, &new_summary, rules)
        .map_err(|e| failure(e.to_string(), e.help()))?;
    if retime {
        retime::retime_report(&mut report, (old, &old_summary), (new, &new_summary), rules)?;
    }
    Ok(report)
}

/// The stages whose recorded keys differ, with explain's reasons.
fn why(old: &crate::driver::Project, new: &crate::driver::Project) -> Vec<StageChange> {
    let names = |p: &crate::driver::Project| -> Vec<String> {
        p.pipeline.stages.iter().map(|s| s.name.clone()).collect()
    };
    let (old_names, new_names) = (names(old), names(new));
    let mut changes = Vec::new();
    for name in &new_names {
        if !old_names.contains(name) {
            changes.push(change(name, "added", Vec::new()));
            continue;
        }
        let (Some(before), Some(after)) =
            (side::recorded_key(old, name), side::recorded_key(new, name))
        else {
            continue;
        };
        if before.0 == after.0 {
            continue;
        }
        let reasons = match (before.1, after.1) {
            (Some(b), Some(a)) => crate::driver::explain::diff(&b, &a)
                .iter()
                .map(ToString::to_string)
                .collect(),
            _ => vec!["the key was recorded by another pochi version".into()],
        };
        changes.push(change(name, "changed", reasons));
    }
    for name in old_names.iter().filter(|n| !new_names.contains(n)) {
        changes.push(change(name, "removed", Vec::new()));
    }
    changes
}

fn change(stage: &str, status: &'static str, reasons: Vec<String>) -> StageChange {
    StageChange {
        stage: stage.into(),
        status,
        reasons,
    }
}

fn print(diff: &Diff, args: &DiffArgs) {
    if args.json {
        show!("{}", diff::render::json(diff));
    } else if args.markdown {
        write_stdout(&super::output::sanitize(&diff::render::markdown(diff)));
    } else {
        write_stdout(&super::output::sanitize(&diff::render::text(diff)));
    }
}
