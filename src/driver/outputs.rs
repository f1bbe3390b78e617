//! A stage's outputs on their way out: checked where they will be published, its inputs
//! checked again, published by rename with their digests (removed again when they cannot
//! be recorded), then the stage recorded as built. A run and a restore finish the same way.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::temp::TempOutputs;
use super::{Project, cached, explain, standing};
use crate::cache::Restored;
use crate::fingerprint::StageKey;
use crate::state::{OutputRecord, StageRecord, unix_ms_now};

/// Why a stage's outputs were not published and recorded.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub(super) enum OutputError {
    #[error("cannot resolve the project directory: {0}")]
    ProjectDir(String),
    #[error(
        "the stage succeeded but did not write its declared output `{key}` ({})",
        path.display()
    )]
    #[diagnostic(help("it must write to the path given by {{outputs.{key}}}"))]
    NotWritten { key: String, path: PathBuf },
    #[error("output `{key}` ({}) cannot be published", path.display())]
    Unpublishable {
        key: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("an input changed while the stage ran ({changes}); its outputs were discarded")]
    #[diagnostic(help("run the build again"))]
    InputChanged { changes: String },
    #[error("{0}")]
    Inputs(String),
    #[error("cannot publish output `{key}` to {}", path.display())]
    Publish {
        key: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot hash output `{}`", path.display())]
    Hash {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("output `{key}` ({}) does not have the cached digest", path.display())]
    NotTheCachedDigest { key: String, path: PathBuf },
    #[error("cannot record the stage as built")]
    #[diagnostic(help("check that the state directory (.pochi/) is writable"))]
    Record(#[source] crate::state::StateError),
}

/// Verifies, re-checks inputs, publishes, hashes and records; returns what it recorded.
/// `restored`: the outputs came from the cache (their digests are the entry's).
pub(super) fn finish(
    project: &Project,
    canonical_dir: &std::io::Result<PathBuf>,
    stage: usize,
    key: &StageKey,
    temp: &TempOutputs,
    started: Instant,
    restored: Option<&Restored>,
) -> Result<Vec<OutputRecord>, OutputError> {
    let spec = &project.pipeline.stages[stage];
    let root = canonical_dir
        .as_ref()
        .map_err(|e| OutputError::ProjectDir(e.to_string()))?;
    check_written(project, root, stage, temp)?;
    let after = standing::current_key(project, stage)
        .map_err(|s| OutputError::Inputs(standing::describe(s)))?;
    if after.inputs != key.inputs || after.needs != key.needs {
        let changes: Vec<String> = explain::diff(key, &after)
            .iter()
            .map(|c| c.to_string())
            .collect();
        return Err(OutputError::InputChanged {
            changes: changes.join("; "),
        });
    }
    let outputs = publish_all(project, stage, temp, restored)?;
    let elapsed = started.elapsed().as_millis() as u64;
    let record = StageRecord {
        stage: spec.name.clone(),
        fingerprint: key.fingerprint(),
        key: crate::state::RecordedKey::new(key),
        outputs: outputs.clone(),
        // A restored stage keeps the duration of its run, for scheduling estimates.
        duration_ms: restored
            .and_then(|hit| hit.entry.meta.duration_ms)
            .unwrap_or(elapsed),
        finished_unix_ms: unix_ms_now(),
        restored_from: restored.map(|hit| hit.origin.to_string()),
    };
    project
        .state
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .record_built(record)
        .map_err(OutputError::Record)?;
    Ok(outputs)
}

/// Every declared output was written, holds only what may be published, and its
/// destination is inside the project (`root`, symbolic links resolved).
fn check_written(
    project: &Project,
    root: &Path,
    stage: usize,
    temp: &TempOutputs,
) -> Result<(), OutputError> {
    let pipeline = &project.pipeline;
    for output in pipeline.stages[stage].kind.outputs() {
        let written = pipeline.dir.join(&temp.paths[&output.key]);
        if std::fs::symlink_metadata(&written).is_err() {
            return Err(OutputError::NotWritten {
                key: output.key.clone(),
                path: output.path.clone(),
            });
        }
        let unpublishable = |source| OutputError::Unpublishable {
            key: output.key.clone(),
            path: output.path.clone(),
            source,
        };
        let dest = pipeline.dir.join(&output.path);
        crate::fsutil::check_confined(root, &dest).map_err(unpublishable)?;
        crate::fsutil::check_output_tree(root, &written, &dest).map_err(unpublishable)?;
    }
    Ok(())
}

/// Publishes every output of the stage from its temporary path and hashes it (a restored
/// one's digests are known: its files are not read again, and its digest must be the
/// entry's).
fn publish_all(
    project: &Project,
    stage: usize,
    temp: &TempOutputs,
    restored: Option<&Restored>,
) -> Result<Vec<OutputRecord>, OutputError> {
    let pipeline = &project.pipeline;
    let mut outputs = Vec::new();
    let mut published = Vec::new();
    let result = publish_each(project, stage, temp, restored, &mut outputs, &mut published);
    if result.is_err() {
        // Outputs that cannot be recorded are not left published: the stage failed.
        for path in published {
            let _ = crate::fsutil::remove_output(&pipeline.dir.join(&path));
            project.stats.forget(&path, true);
        }
    }
    result.map(|()| outputs)
}

fn publish_each(
    project: &Project,
    stage: usize,
    temp: &TempOutputs,
    restored: Option<&Restored>,
    outputs: &mut Vec<OutputRecord>,
    published: &mut Vec<PathBuf>,
) -> Result<(), OutputError> {
    let pipeline = &project.pipeline;
    for output in pipeline.stages[stage].kind.outputs() {
        let dest = pipeline.dir.join(&output.path);
        crate::fsutil::publish(&pipeline.dir.join(&temp.paths[&output.key]), &dest).map_err(
            |source| OutputError::Publish {
                key: output.key.clone(),
                path: output.path.clone(),
                source,
            },
        )?;
        published.push(output.path.clone());
        project.stats.forget(&output.path, dest.is_dir());
        let from_cache =
            restored.and_then(|hit| hit.entry.outputs.iter().find(|o| o.name == output.key));
        if let Some(record) = from_cache {
            cached::remember_restored(&project.stats, &pipeline.dir, &output.path, &record.node);
        }
        let digest = project
            .stats
            .digest_published(&pipeline.dir, &output.path)
            .map_err(|source| OutputError::Hash {
                path: output.path.clone(),
                source,
            })?;
        if let Some(record) = from_cache
            && record.digest != digest
        {
            return Err(OutputError::NotTheCachedDigest {
                key: output.key.clone(),
                path: output.path.clone(),
            });
        }
        outputs.push(OutputRecord {
            key: output.key.clone(),
            path: output.path.clone(),
            digest,
        });
    }
    Ok(())
}
