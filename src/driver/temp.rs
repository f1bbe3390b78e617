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
        let keys: Vec<&str> = spec.kind.outputs().iter().map(|o| o.key.as_str()).collect();
        let relative_root = root
            .strip_prefix(&pipeline.dir)
            .map(Path::to_path_buf)
            .unwrap_or_else(|_| root.clone());
        let mut paths = BTreeMap::new();
        let mut dirs = Vec::new();
        for (output, key) in spec.kind.outputs().iter().zip(&keys) {
            let name = output
                .path
                .file_name()
                .map(|n| n.to_os_string())
                .unwrap_or_else(|| output.key.clone().into());
            paths.insert(output.key.clone(), relative_root.join(key).join(name));
            dirs.push(root.join(key));
        }
        dirs.push(root.join(SCRATCH));
        // Its name is known in advance: a link planted there (a committed `.pochi/`) is
        // refused, never followed. The state directory itself was checked when the build
        // took its lock, so only what lies below it is (a few `lstat`s per stage).
        let state_dir = pipeline.state_dir();
        crate::fsutil::real_dirs(&state_dir, &root)?;
        tidy_stage_dir(&root, &keys)?;
        for dir in &dirs {
            crate::fsutil::real_dirs(&root, dir)?;
            // Normally empty already (emptied after the last run, tidied at the lock).
            empty_contents(dir)?;
        }
        Ok(TempOutputs { root, paths, dirs })
    }

    /// The run's directory for request and answer files, absolute.
    pub(super) fn scratch(&self) -> PathBuf {
        self.root.join(SCRATCH)
    }

    /// Empties the stage's directories (published outputs have already moved out) and
    /// keeps them for the next run; removes the root if that fails.
    pub(super) fn empty(self) {
        for dir in &self.dirs {
            if empty_contents(dir).is_err() {
                let _ = crate::fsutil::remove_path(&self.root);
                return;
            }
        }
    }
}

/// The name of the scratch directory in a temporary root (output keys are names of other
/// directories there; this one cannot be a key).
const SCRATCH: &str = ".scratch";

/// What a build finds in its pipeline's `tmp/` when it takes the lock: each stage's
/// directory is kept (its paths are in the stage's Action, and recreating thousands of
/// directories per build is slow on ext4) but emptied of what a killed build left there;
/// anything else (a stage that no longer exists, a link, a file) is removed.
pub(super) fn tidy(temp_root: &Path, stages: &[&str]) -> std::io::Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(temp_root) else {
        return Ok(());
    };
    if !meta.is_dir() {
        return crate::fsutil::remove_path(temp_root);
    }
    for entry in std::fs::read_dir(temp_root)? {
        let entry = entry?;
        let is_dir = entry.file_type()?.is_dir();
        let stage = entry.file_name();
        match stages.iter().find(|name| stage == **name) {
            Some(_) if is_dir => {
                for inner in std::fs::read_dir(entry.path())? {
                    empty_contents(&inner?.path())?;
                }
            }
            _ => crate::fsutil::remove_path(&entry.path())?,
        }
    }
    Ok(())
}

/// Removes what a stage's directory holds besides its outputs' directories (`keys`) and
/// the scratch directory (what a version of the stage with other outputs left there), and
/// any of those that is not a real directory.
fn tidy_stage_dir(root: &Path, keys: &[&str]) -> std::io::Result<()> {
    for entry in std::fs::read_dir(root)? {
        let entry = entry?;
        let kept = keys
            .iter()
            .chain([&SCRATCH])
            .any(|key| entry.file_name() == **key);
        if !kept || !entry.file_type()?.is_dir() {
            crate::fsutil::remove_path(&entry.path())?;
        }
    }
    Ok(())
}

/// Removes everything inside `dir`, keeping `dir`; a `dir` that is not a real directory
/// (a link, a file) is removed itself. Links inside are removed, never followed.
fn empty_contents(dir: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(dir) {
        Ok(meta) if meta.is_dir() => {
            for entry in std::fs::read_dir(dir)? {
                crate::fsutil::remove_path(&entry?.path())?;
            }
            Ok(())
        }
        Ok(_) => crate::fsutil::remove_path(dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}
