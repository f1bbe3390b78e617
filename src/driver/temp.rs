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
            // Normally empty already (emptied after the last run; after a killed build,
            // at the lock).
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

/// Present in a pipeline's `tmp/` while a build holds its lock (`InUse`): a build that
/// finds it when it takes the lock follows one that was killed.
const IN_USE: &str = ".in-use";

/// The marker of a build in progress; removed when the build lets go of the pipeline.
#[derive(Debug)]
pub(super) struct InUse {
    marker: Option<PathBuf>,
}

impl Drop for InUse {
    fn drop(&mut self) {
        if let Some(marker) = &self.marker {
            let _ = std::fs::remove_file(marker);
        }
    }
}

/// What a build finds in its pipeline's `tmp/` when it takes the lock: each current
/// stage's directory is kept (its paths are in the stage's Action, and recreating
/// thousands of directories per build is slow on ext4); anything else (a stage that no
/// longer exists, a link, a file) is removed. One listing of `tmp/`: a stage's own
/// directories are emptied when it next runs (`TempOutputs::create`), and only after a
/// build that was killed (its `IN_USE` marker left behind) is every stage's directory
/// emptied now, so a no-op build of 10,000 stages reads no stage's directory.
pub(super) fn tidy(temp_root: &Path, stages: &[&str]) -> std::io::Result<InUse> {
    if let Ok(meta) = std::fs::symlink_metadata(temp_root)
        && !meta.is_dir()
    {
        crate::fsutil::remove_path(temp_root)?;
    }
    std::fs::create_dir_all(temp_root)?;
    let marker = temp_root.join(IN_USE);
    let killed = std::fs::symlink_metadata(&marker).is_ok();
    let stages: std::collections::HashSet<&str> = stages.iter().copied().collect();
    for entry in std::fs::read_dir(temp_root)? {
        let entry = entry?;
        let name = entry.file_name();
        let is_dir = entry.file_type()?.is_dir();
        let current = name.to_str().is_some_and(|name| stages.contains(name));
        if current && is_dir {
            if killed {
                for inner in std::fs::read_dir(entry.path())? {
                    empty_contents(&inner?.path())?;
                }
            }
        } else if name != IN_USE || is_dir {
            crate::fsutil::remove_path(&entry.path())?;
        }
    }
    let _ = crate::fsutil::remove_path(&marker);
    std::fs::write(&marker, b"")?;
    Ok(InUse {
        marker: Some(marker),
    })
}

impl InUse {
    /// No marker (the temporary root could not be tidied: stages still check their own
    /// directories when they run).
    pub(super) fn none() -> InUse {
        InUse { marker: None }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn file_in(dir: &Path) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        let file = dir.join("left.bin");
        std::fs::write(&file, b"partial").unwrap();
        file
    }

    #[test]
    fn the_lock_lists_tmp_once_and_empties_stages_only_after_a_killed_build() {
        let root = tempfile::tempdir().unwrap();
        let tmp = root.path().join("tmp");
        let left = file_in(&tmp.join("a/out"));
        let gone = file_in(&tmp.join("removed-stage/out"));
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), tmp.join("b")).unwrap();
        let kept_outside = file_in(outside.path());

        // After a build that ended: only what is not a current stage's directory goes.
        let in_use = tidy(&tmp, &["a", "b"]).unwrap();
        assert!(
            tmp.join(IN_USE).is_file(),
            "marked while the build holds it"
        );
        assert!(left.exists(), "emptied when the stage runs, not now");
        assert!(!gone.exists() && !tmp.join("removed-stage").exists());
        assert!(
            !tmp.join("b").exists(),
            "a link named as a stage is removed"
        );
        assert!(kept_outside.exists(), "never followed");
        drop(in_use);
        assert!(
            !tmp.join(IN_USE).exists(),
            "unmarked when the build lets go"
        );

        // After a killed build (its marker left): every stage's directory is emptied.
        std::fs::write(tmp.join(IN_USE), b"").unwrap();
        let in_use = tidy(&tmp, &["a", "b"]).unwrap();
        assert!(!left.exists(), "what a killed build left is removed");
        assert!(tmp.join("a/out").is_dir(), "the directories are kept");
        drop(in_use);
    }
}
