//! `pochi build`: build what is out of date, or with `--dry-run` say what would run.

use super::output::{note, say, show};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;

use super::output::{failure, paint};
use super::progress::Reporter;
use crate::cache::{LocalCache, OutputCache, Tiered};
use crate::driver::portable::PortableActions;
use crate::driver::{BuildOptions, BuildSummary, Workspace};
use crate::remote::RemoteTier;
use crate::toolchain::Mode;

#[derive(Debug, Args)]
pub(super) struct BuildArgs {
    /// Pipeline files (default: pipeline.toml); several share one scheduler and resources.
    pipelines: Vec<PathBuf>,
    /// Build only these stages (and what they need); `stage` or `pipeline/stage`.
    #[arg(short, long = "target", value_name = "STAGE")]
    targets: Vec<String>,
    /// Run at most N stages at once (default: the number of cores).
    #[arg(short, long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    jobs: Option<u32>,
    /// Keep building independent stages after a failure.
    #[arg(short, long)]
    keep_going: bool,
    /// Say what would run and why, without running anything.
    #[arg(short = 'n', long)]
    dry_run: bool,
    /// Print a machine-readable summary on stdout.
    #[arg(long)]
    json: bool,
    /// Fail at once if another pochi is building the same pipeline, instead of waiting.
    #[arg(long)]
    no_wait: bool,
    /// Fail at once if a stage cannot run on this machine (e.g. a TensorRT engine without
    /// TensorRT or a GPU) instead of reporting it as unavailable and exiting 0.
    #[arg(long, alias = "require-engines")]
    require_all: bool,
    #[command(flatten)]
    cache: super::cache::CacheArgs,
    #[command(flatten)]
    remote: super::remote::RemoteArgs,
}

pub(super) fn run(args: BuildArgs) -> miette::Result<ExitCode> {
    let started = std::time::Instant::now();
    let paths = super::pipeline_paths(&args.pipelines);
    // Before the no-op test, so that a wrong POCHI_CACHE_MAX_SIZE is an error on every
    // build (opening reads the environment only).
    let local = args.cache.open_local()?;
    if !args.json
        && !args.dry_run
        && let Some(stages) = nothing_changed(&paths)
    {
        note!(
            "0 ran, {stages} up to date in {} (nothing changed since the last build)",
            super::output::duration(started.elapsed())
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mode = match args.dry_run {
        true => Mode::Inspect,
        false => Mode::Create,
    };
    let workspace = super::open_workspace(&paths, mode, args.remote.executor_configured())?;
    tracing::debug!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "pipelines loaded"
    );
    if args.dry_run {
        return dry_run(&workspace, &args);
    }
    // The executor must answer only when a stage goes there.
    let any_remote = workspace.projects.iter().any(|p| !p.remote.is_empty());
    let execution = match any_remote {
        true => args.remote.execution()?.map(Arc::new),
        false => None,
    };
    let remote = remote_tier(&args.remote, local.as_ref())?;
    let portable = portable_actions(&args.remote, remote.is_some() || execution.is_some())?;
    let cache = tiered(local, remote.as_ref());
    let options = BuildOptions {
        targets: args.targets.clone(),
        jobs: args.jobs,
        keep_going: args.keep_going,
        no_wait: args.no_wait,
        require_all: args.require_all,
        cache,
        remote: execution,
        remote_jobs: args.remote.remote_jobs,
        portable,
    };
    let summary = run_build(&workspace, &options)?;
    super::exit_without_freeing(workspace);
    if args.json {
        show!(
            "{}",
            serde_json::to_string_pretty(&summary).unwrap_or_default()
        );
    }
    if summary.interrupted {
        return Ok(super::signals::interrupted_exit_code());
    }
    args.remote.check_required(remote.as_deref())?;
    if !summary.ok {
        let failed: Vec<String> = summary
            .stages
            .iter()
            .filter(|s| s.status == crate::driver::StageStatus::Failed)
            .map(|s| s.stage.clone())
            .collect();
        return Err(failure(
            format!("{} stage(s) failed: {}", failed.len(), failed.join(", ")),
            "the lines above say why each stage failed (with its log, when it ran); `pochi status` shows what is left to build",
        ));
    }
    Ok(ExitCode::SUCCESS)
}

/// The remote tier of the build's cache, when `--remote-cache` names one (never with
/// `--no-cache`).
pub(super) fn remote_tier(
    remote: &super::remote::RemoteArgs,
    local: Option<&LocalCache>,
) -> miette::Result<Option<Arc<RemoteTier>>> {
    let Some(local) = local else {
        return Ok(None);
    };
    Ok(remote.tier(local)?.map(Arc::new))
}

/// How the build makes its stages' Actions portable, when it `uses_remote` (a remote tier
/// or an executor).
pub(super) fn portable_actions(
    remote: &super::remote::RemoteArgs,
    uses_remote: bool,
) -> miette::Result<Option<Arc<PortableActions>>> {
    match uses_remote {
        true => Ok(remote.portable_actions()?.map(Arc::new)),
        false => Ok(None),
    }
}

/// The output cache of a build: the local store, then the remote tier if any.
pub(super) fn tiered(
    local: Option<LocalCache>,
    remote: Option<&Arc<RemoteTier>>,
) -> Option<Arc<dyn OutputCache>> {
    local.map(|local| {
        let tiers = Tiered::local(local);
        let tiers = match remote {
            Some(remote) => tiers.with_remote(Arc::clone(remote) as Arc<dyn OutputCache>),
            None => tiers,
        };
        Arc::new(tiers) as Arc<dyn OutputCache>
    })
}

/// The stage count when every pipeline's no-op stamp still holds (see `build::noop`).
fn nothing_changed(paths: &[std::path::PathBuf]) -> Option<usize> {
    paths
        .iter()
        .map(|path| crate::driver::noop::up_to_date(path))
        .sum()
}

fn dry_run(workspace: &Workspace, args: &BuildArgs) -> miette::Result<ExitCode> {
    let targets = workspace.resolve_targets(&args.targets)?;
    let plans = workspace.plan(&targets);
    let cache = match args.cache.no_cache {
        true => None,
        false => crate::cache::LocalCache::from_env().ok(),
    };
    let mut would_run = 0;
    let mut would_fail = 0;
    for plan in &plans {
        if plan.status == crate::driver::PlanStatus::Broken {
            would_fail += 1;
            say!(
                "{} {}: {}",
                paint("would fail", "1;31"),
                workspace.display_name(plan.id),
                plan.reasons.join("; ")
            );
        } else if plan.status.would_run() {
            would_run += 1;
            let (p, s) = plan.id;
            let restored = cache.as_ref().and_then(|cache| {
                super::cache::restorable_from(cache, &workspace.projects[p], plan)
            });
            let restored = restored
                .map(|origin| format!(" (would be restored from cache ({origin}))"))
                .unwrap_or_default();
            let remote = match workspace.projects[p].runs_remotely(s) {
                true => " [remote]",
                false => "",
            };
            say!(
                "{} {}{remote}: {}{restored}",
                paint("would run", "1;34"),
                workspace.display_name(plan.id),
                plan.reasons.join("; ")
            );
        }
    }
    if args.json {
        let stages: Vec<serde_json::Value> = plans
            .iter()
            .map(|plan| {
                let remote = workspace.projects[plan.id.0].runs_remotely(plan.id.1);
                serde_json::json!({ "stage": workspace.display_name(plan.id), "status": plan.status, "reasons": plan.reasons, "remote": remote })
            })
            .collect();
        show!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "schema_version": 1, "dry_run": true, "stages": stages })
            )
            .unwrap_or_default()
        );
    }
    note!("{would_run} of {} stages would run", plans.len());
    if would_fail > 0 {
        note!("{would_fail} would fail: fix what the lines above say");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Builds `workspace` on this machine with real processes, progress on stderr and Ctrl-C
/// handling: the one way every command (`build` and the one-shots) runs a build.
pub(super) fn run_build(
    workspace: &Workspace,
    options: &BuildOptions,
) -> miette::Result<BuildSummary> {
    let cancel = super::signals::cancel_flag();
    let machine = crate::machine::detect();
    let mut reporter = Reporter::new();
    let runner = crate::process::SystemRunner::watching(Arc::clone(&cancel));
    let summary = workspace.build(options, &machine, runner, cancel, &mut |event| {
        reporter.event(event)
    })?;
    reporter.summary(&summary);
    Ok(summary)
}
