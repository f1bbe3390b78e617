//! The no-op stamp: after a build that left every stage of a pipeline up to date, pochi
//! records the pipeline text's digest and the stat of every file and directory those
//! stages read or wrote. While all of these stay the same, every fingerprint is unchanged
//! too, so the next `pochi build` can answer "nothing to do" without parsing the pipeline
//! or hashing anything. Any difference (or a racily fresh file) falls back to the full
//! check. This is the same stat test ninja makes, on top of pochi's content keys.

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::Project;
use crate::fingerprint::{FileStat, KEY_FORMAT};
use crate::graph::ResolvedInput;

/// A file or directory is too fresh to trust its stat within this window (ns).
const RACY_WINDOW_NS: i128 = 2_000_000_000;

#[derive(Debug, Serialize, Deserialize)]
struct Stamp {
    pochi: String,
    key_format: u32,
    pipeline_digest: String,
    stages: usize,
    /// The state log's (size, mtime): any record written since voids the stamp.
    log: Option<FileStat>,
    files: Vec<(PathBuf, FileStat)>,
}

/// Where the stamp of the pipeline file `file` lives.
fn stamp_path(file: &Path) -> Option<PathBuf> {
    let dir = file.parent()?;
    let name = file.file_name()?.to_string_lossy().into_owned();
    Some(
        dir.join(crate::pipeline::STATE_ROOT)
            .join(crate::state::LAYOUT_VERSION)
            .join("noop")
            .join(format!("{name}.json")),
    )
}

/// The number of stages, if the pipeline in `file` is known to be entirely up to date.
pub(crate) fn up_to_date(file: &Path) -> Option<usize> {
    let file = std::path::absolute(file).ok()?;
    let stamp: Stamp = serde_json::from_slice(&std::fs::read(stamp_path(&file)?).ok()?).ok()?;
    if stamp.pochi != env!("CARGO_PKG_VERSION") || stamp.key_format != KEY_FORMAT {
        return None;
    }
    let text = std::fs::read(&file).ok()?;
    if blake3::hash(&text).to_hex().as_str() != stamp.pipeline_digest {
        return None;
    }
    let dir = file.parent()?;
    let unchanged = |path: &Path, recorded: &FileStat| {
        std::fs::metadata(dir.join(path)).is_ok_and(|m| FileStat::of(&m) == *recorded)
    };
    let log_ok = match (&stamp.log, stamp.files.first()) {
        (Some(log), Some((path, _))) if path.ends_with("log.jsonl") => unchanged(path, log),
        _ => false,
    };
    // Thousands of independent stats: spread over the cores.
    (log_ok
        && stamp
            .files
            .par_iter()
            .all(|(path, stat)| unchanged(path, stat)))
    .then_some(stamp.stages)
}

/// Removes the stamp: done before a build runs anything and by `clean`.
pub(crate) fn invalidate(project: &Project) {
    if let Some(path) = stamp_path(&project.pipeline.file) {
        let _ = std::fs::remove_file(path);
    }
}

/// Writes the stamp after a build in which every stage of `project` is up to date. Skipped
/// when a file is too fresh to trust its stat, or the pipeline runs Python (whose toolchain
/// identity is not a file pochi can stat).
pub(crate) fn record(project: &Project) {
    if project.needs_python() {
        return;
    }
    let Some(path) = stamp_path(&project.pipeline.file) else {
        return;
    };
    let dir = &project.pipeline.dir;
    let log = project.state().log_path_on_disk();
    let relative_log = log.strip_prefix(dir).map(Path::to_path_buf).unwrap_or(log);
    // Appends always grow the log, so its stat is trusted however fresh it is.
    let Ok(log_metadata) = std::fs::metadata(dir.join(&relative_log)) else {
        return;
    };
    let mut files = vec![(relative_log, FileStat::of(&log_metadata))];
    let mut fresh = false;
    for (index, stage) in project.pipeline.stages.iter().enumerate() {
        for (_, input) in project.graph.inputs(index) {
            if let ResolvedInput::Source(source) = input {
                fresh |= !collect(dir, source, &mut files);
            }
        }
        for output in stage.kind.outputs() {
            fresh |= !collect(dir, &output.path, &mut files);
        }
    }
    if fresh {
        return;
    }
    let stamp = Stamp {
        pochi: env!("CARGO_PKG_VERSION").to_string(),
        key_format: KEY_FORMAT,
        pipeline_digest: blake3::hash(project.pipeline.source.text.as_bytes())
            .to_hex()
            .to_string(),
        stages: project.pipeline.stages.len(),
        log: files.first().map(|(_, stat)| *stat),
        files,
    };
    if let Ok(bytes) = serde_json::to_vec(&stamp) {
        let _ = crate::fsutil::write_cache(&path, &bytes);
    }
}

/// Adds `path` (recursively for a directory) to `files`; false if something is missing or
/// too recently modified to trust.
fn collect(dir: &Path, path: &Path, files: &mut Vec<(PathBuf, FileStat)>) -> bool {
    let Ok(metadata) = std::fs::metadata(dir.join(path)) else {
        return false;
    };
    let stat = FileStat::of(&metadata);
    if stat.mtime_ns > now_ns() - RACY_WINDOW_NS {
        return false;
    }
    files.push((path.to_path_buf(), stat));
    if !metadata.is_dir() {
        return true;
    }
    let Ok(entries) = std::fs::read_dir(dir.join(path)) else {
        return false;
    };
    entries
        .flatten()
        .all(|entry| collect(dir, &path.join(entry.file_name()), files))
}

fn now_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}
