//! `pochi cache [info|gc]`: what the output cache holds and collecting it; and the cache
//! flags every command that builds shares (`CacheArgs`: `--no-cache`), which open the
//! cache a build restores from and stores to.

use super::output::{note, say, show};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clap::{Args, Subcommand};

use crate::cache::{CacheError, CacheInfo, LocalCache, OutputCache, Tiered, parse_duration};
use crate::size::ByteSize;

/// The cache flags of `build` and the one-shot commands.
#[derive(Debug, Clone, Args)]
pub(super) struct CacheArgs {
    /// Build without the output cache: restore nothing from it, store nothing in it.
    #[arg(long)]
    pub no_cache: bool,
}

impl CacheArgs {
    /// The cache a build uses: none with `--no-cache`, else the local store (a warning and
    /// none when there is no cache directory; an error when its size limit is not a size).
    pub(super) fn open(&self) -> miette::Result<Option<Arc<dyn OutputCache>>> {
        let local = self.open_local()?;
        Ok(local.map(|local| Arc::new(Tiered::local(local)) as Arc<dyn OutputCache>))
    }

    /// The local store a build uses (see `open`), for a build that adds a remote tier.
    pub(super) fn open_local(&self) -> miette::Result<Option<LocalCache>> {
        if self.no_cache {
            return Ok(None);
        }
        match LocalCache::from_env() {
            Ok(local) => Ok(Some(local)),
            Err(CacheError::NoCacheDir(why)) => {
                say!(
                    "{} {why}; building without the output cache",
                    super::output::paint("warning:", "1;33")
                );
                Ok(None)
            }
            Err(error) => Err(error.into()),
        }
    }
}

/// Where the local cache (`cache`) holds the outputs a stage would get with the key its
/// plan computed, if it does (the entry is read and checked; its blobs are checked by a
/// restore only). None for a stage that is up to date, waits on an upstream stage (its
/// key is not known yet), cannot run here or opts out (`cache = false`).
pub(super) fn restorable_from(
    cache: &LocalCache,
    project: &crate::driver::Project,
    plan: &crate::driver::StagePlan,
) -> Option<crate::cache::Origin> {
    use crate::driver::PlanStatus;
    if !matches!(
        plan.status,
        PlanStatus::Stale | PlanStatus::NeverBuilt | PlanStatus::Failed
    ) || !project.pipeline.stages[plan.id.1].cache
    {
        return None;
    }
    cache
        .lookup(&crate::driver::cache_key_of(plan.key.as_ref()?))
        .ok()?;
    Some(crate::cache::Origin::local(cache.root()))
}

#[derive(Debug, Args)]
pub(super) struct CacheCommandArgs {
    #[command(subcommand)]
    action: Option<Action>,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Where the cache is, its size, entries, and the last build's hit rate (the default).
    Info {
        /// Print JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Remove entries: those unused for longer than --older-than, then the least recently
    /// used until the cache fits in --max-size (default: its size limit), with their blobs;
    /// blobs no entry ever named are removed after an hour (a build may be storing them).
    Gc {
        /// The size to shrink the cache to, e.g. 20GiB (0 removes every entry).
        #[arg(long, value_name = "SIZE", value_parser = ByteSize::parse)]
        max_size: Option<ByteSize>,
        /// Remove entries not used for this long, e.g. 30d, 12h, 1d12h.
        #[arg(long, value_name = "AGE", value_parser = parse_duration)]
        older_than: Option<Duration>,
        /// Print JSON on stdout.
        #[arg(long)]
        json: bool,
    },
}

pub(super) fn run(args: CacheCommandArgs) -> miette::Result<ExitCode> {
    let cache = LocalCache::from_env()?;
    match args.action.unwrap_or(Action::Info { json: false }) {
        Action::Info { json } => info(&cache, json),
        Action::Gc {
            max_size,
            older_than,
            json,
        } => gc(&cache, max_size, older_than, json),
    }
}

fn info(cache: &LocalCache, json: bool) -> miette::Result<ExitCode> {
    let info = cache.info()?;
    if json {
        let hit_rate = info.last_build.and_then(|b| b.hit_rate());
        let mut value = serde_json::to_value(&info).unwrap_or_default();
        value["last_build_hit_rate"] = serde_json::json!(hit_rate);
        show!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
        return Ok(ExitCode::SUCCESS);
    }
    for line in info_lines(&info, SystemTime::now()) {
        show!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The lines of `pochi cache info`.
fn info_lines(info: &CacheInfo, now: SystemTime) -> Vec<String> {
    let mut lines = vec![
        format!("cache:    {}", info.root.display()),
        format!(
            "size:     {} of {} (the limit; POCHI_CACHE_MAX_SIZE changes it)",
            ByteSize(info.bytes).display(),
            ByteSize(info.max_size).display()
        ),
        format!("entries:  {} ({} blobs)", info.entries, info.blobs),
    ];
    if let (Some(newest), Some(oldest)) = (info.newest_use_unix_ms, info.oldest_use_unix_ms) {
        lines.push(format!(
            "used:     last {}, least recently {}",
            ago(newest, now),
            ago(oldest, now)
        ));
    }
    lines.push(match info.last_build {
        Some(last) => {
            let rate = last
                .hit_rate()
                .map(|r| format!("{:.0}%", r * 100.0))
                .unwrap_or_else(|| "-".into());
            format!(
                "last build ({}): hit rate {rate}: {} restored locally, {} restored remotely, {} ran",
                ago(last.recorded_unix_ms, now),
                last.restored_local,
                last.restored_remote,
                last.ran
            )
        }
        None => "last build: none recorded yet".to_string(),
    });
    lines
}

/// `3 min ago`, from milliseconds since the epoch.
fn ago(unix_ms: u64, now: SystemTime) -> String {
    let then = SystemTime::UNIX_EPOCH + Duration::from_millis(unix_ms);
    let seconds = now.duration_since(then).unwrap_or_default().as_secs();
    match seconds {
        0..60 => format!("{seconds} s ago"),
        60..3600 => format!("{} min ago", seconds / 60),
        3600..86_400 => format!("{} h ago", seconds / 3600),
        _ => format!("{} days ago", seconds / 86_400),
    }
}

fn gc(
    cache: &LocalCache,
    max_size: Option<ByteSize>,
    older_than: Option<Duration>,
    json: bool,
) -> miette::Result<ExitCode> {
    let limit = max_size.map_or(cache.max_size(), |size| size.0);
    let report = cache.gc(Some(limit), older_than)?;
    if json {
        show!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
        return Ok(ExitCode::SUCCESS);
    }
    note!(
        "removed {} entries and {} blobs, {} freed ({} -> {}; limit {})",
        report.entries_removed,
        report.blobs_removed,
        ByteSize(report.bytes_freed).display(),
        ByteSize(report.bytes_before).display(),
        ByteSize(report.bytes_after).display(),
        ByteSize(limit).display()
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_says_size_entries_and_the_hit_rate_of_the_last_build() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let ms = |ago_s: u64| (1_000_000 - ago_s) * 1000;
        let info = CacheInfo {
            root: "/c/v1".into(),
            max_size: 10 << 30,
            bytes: 3 << 20,
            entries: 4,
            blobs: 6,
            blob_bytes: 3 << 20,
            oldest_use_unix_ms: Some(ms(3 * 86_400)),
            newest_use_unix_ms: Some(ms(120)),
            last_build: Some(crate::cache::BuildStats {
                restored_local: 3,
                restored_remote: 0,
                ran: 1,
                recorded_unix_ms: ms(120),
            }),
        };
        let text = info_lines(&info, now).join("\n");
        for needle in [
            "/c/v1",
            "3.0 MiB of 10.0 GiB",
            "entries:  4 (6 blobs)",
            "last 2 min ago, least recently 3 days ago",
            "hit rate 75%: 3 restored locally, 0 restored remotely, 1 ran",
        ] {
            assert!(text.contains(needle), "{needle:?} not in\n{text}");
        }
    }
}
