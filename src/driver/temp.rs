//! A stage's private temporary directory inside `.pochi/`: one path per declared output
//! and a scratch directory, at a path of its own that is the same in every build
//! (`.pochi/v1/<pipeline>/tmp/<stage>/`), so the stage's Action is too; emptied after the
//! stage and kept for the next build.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::Project;

/// A stage's private temporary directory inside `.pochi/`, one path per declared output
/// (keeping the output's file name, since tools read formats from extensions).
///
/// The root is the stage's own and the same in every build (one build of a pipeline runs
/// at a time): the paths a stage's Action names do not change from build to build or
/// between clones, so a farm's action cache can answer a repeat. It is emptied after the
/// stage and kept, not deleted: creating and deleting directories per stage made ext4's
/// inode allocator scan its recently deleted inodes (a third of the time of a 2,000-stage
/// fan-out, perf), which reused directories avoid.
pub(super) struct TempOutputs {
    pub(super) root: PathBuf,
    /// Output key -> temporary path, relative to the pipeline directory.
    pub(super) paths: BTreeMap<String, PathBuf>,
    /// The directories of `paths`, absolute.
    dirs: Vec<PathBuf>,
}

impl TempOutputs {
    pub(super) fn create(project: &Project, stage: usize) -> std::io::Result<TempOutputs> {
        let pipeline = &project.pipeline;
        let spec = &pipeline.stages[stage];
        let root = project.temp_root().join(&spec.name);
        remove_strays(&root, spec.kind.outputs().iter().map(|o| o.key.as_str()))?;
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
    /// keeps the root for the next build; removes the root if that fails.
    pub(super) fn empty(self) {
        for dir in self.dirs.iter().filter(|dir| !is_empty_dir(dir)) {
            if crate::fsutil::remove_path(dir).is_err() {
                let _ = crate::fsutil::remove_path(&self.root);
                return;
            }
        }
    }
}

/// The name of the scratch directory in a temporary root (output keys are names of other
/// directories there; this one cannot be a key).
const SCRATCH: &str = ".scratch";

/// Removes what the stage's root holds besides its outputs' directories (`keys`) and the
/// scratch directory: what an older version of the stage, with other outputs, left there.
fn remove_strays<'a>(root: &Path, keys: impl Iterator<Item = &'a str>) -> std::io::Result<()> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Ok(());
    };
    let kept: Vec<&str> = keys.chain([SCRATCH]).collect();
    for entry in entries {
        let entry = entry?;
        if !kept.iter().any(|key| entry.file_name() == **key) {
            crate::fsutil::remove_path(&entry.path())?;
        }
    }
    Ok(())
}

/// Whether `dir` is a directory with nothing in it.
fn is_empty_dir(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_none())
}
