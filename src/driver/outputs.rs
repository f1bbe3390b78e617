//! A stage's outputs on their way out: its private temporary directory (one path per
//! declared output, and a scratch directory), and their publication by rename with the
//! digests recorded (removed again when they cannot be recorded).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{Project, cached};
use crate::cache::Restored;
use crate::state::OutputRecord;

/// Publishes every output of the stage from its temporary path and hashes it (a restored
/// one's digests are known: its files are not read again, and its digest must be the
/// entry's).
pub(super) fn publish_all(
    project: &Project,
    stage: usize,
    temp: &TempOutputs,
    restored: Option<&Restored>,
) -> Result<Vec<OutputRecord>, String> {
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
) -> Result<(), String> {
    let pipeline = &project.pipeline;
    for output in pipeline.stages[stage].kind.outputs() {
        let dest = pipeline.dir.join(&output.path);
        crate::fsutil::publish(&pipeline.dir.join(&temp.paths[&output.key]), &dest).map_err(
            |e| {
                format!(
                    "cannot publish output `{}` to {}: {e}",
                    output.key,
                    output.path.display()
                )
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
            .map_err(|e| format!("cannot hash output `{}`: {e}", output.path.display()))?;
        if let Some(record) = from_cache
            && record.digest != digest
        {
            return Err(format!(
                "output `{}` ({}) does not have the cached digest",
                output.key,
                output.path.display()
            ));
        }
        outputs.push(OutputRecord {
            key: output.key.clone(),
            path: output.path.clone(),
            digest,
        });
    }
    Ok(())
}

/// A stage's private temporary directory inside `.pochi/`, one path per declared output
/// (keeping the output's file name, since tools read formats from extensions). The root
/// is used by one stage at a time and reused by later ones once emptied.
pub(super) struct TempOutputs {
    pub(super) root: PathBuf,
    /// Output key -> temporary path, relative to the pipeline directory.
    pub(super) paths: BTreeMap<String, PathBuf>,
    /// The directories of `paths`, absolute.
    dirs: Vec<PathBuf>,
}

impl TempOutputs {
    pub(super) fn create(
        project: &Project,
        stage: usize,
        root: PathBuf,
    ) -> std::io::Result<TempOutputs> {
        let pipeline = &project.pipeline;
        let spec = &pipeline.stages[stage];
        let relative_root = root
            .strip_prefix(&pipeline.dir)
            .map(Path::to_path_buf)
            .unwrap_or_else(|_| root.clone());
        let mut paths = BTreeMap::new();
        let mut dirs = Vec::new();
        for output in spec.kind.outputs() {
            let dir = relative_root.join(&output.key);
            let full = pipeline.dir.join(&dir);
            if !is_empty_dir(&full) {
                crate::fsutil::remove_path(&full)?;
                std::fs::create_dir_all(&full)?;
            }
            let name = output
                .path
                .file_name()
                .map(|n| n.to_os_string())
                .unwrap_or_else(|| output.key.clone().into());
            paths.insert(output.key.clone(), dir.join(name));
            dirs.push(full);
        }
        let scratch = root.join(SCRATCH);
        if !is_empty_dir(&scratch) {
            crate::fsutil::remove_path(&scratch)?;
            std::fs::create_dir_all(&scratch)?;
        }
        dirs.push(scratch);
        Ok(TempOutputs { root, paths, dirs })
    }

    /// The run's directory for request and answer files, absolute.
    pub(super) fn scratch(&self) -> PathBuf {
        self.root.join(SCRATCH)
    }

    /// Empties the stage's directories (published outputs have already moved out) and
    /// returns the root for reuse; `None` (and the root removed) if that fails.
    pub(super) fn empty(self) -> Option<PathBuf> {
        for dir in self.dirs.iter().filter(|dir| !is_empty_dir(dir)) {
            if crate::fsutil::remove_path(dir).is_err() {
                let _ = crate::fsutil::remove_path(&self.root);
                return None;
            }
        }
        Some(self.root)
    }
}

/// The name of the scratch directory in a temporary root (output keys are names of other
/// directories there; this one cannot be a key).
const SCRATCH: &str = ".scratch";

/// Whether `dir` is a directory with nothing in it.
fn is_empty_dir(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_none())
}
