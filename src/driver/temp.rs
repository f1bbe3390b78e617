//! A stage's private temporary directory inside `.pochi/`: one path per declared output
//! and a scratch directory, emptied after the stage and reused by the next one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::Project;

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
