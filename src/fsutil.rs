//! The one place that writes state and publishes outputs: atomic writes (temp file in the
//! same directory, fsync, rename) and atomic publication of a finished output.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` so that readers see either the old or the new content.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut temp = tempfile::NamedTempFile::new_in(dir)?;
    temp.write_all(bytes)?;
    temp.as_file().sync_all()?;
    temp.persist(path).map_err(|e| e.error)?;
    sync_dir(dir);
    Ok(())
}

/// Moves a finished output from its temporary path to `dest`, replacing what was there.
/// A file is replaced in one rename; a directory is swapped with two renames, so a crash
/// in between leaves `dest` missing (rebuilt next time), never half-written.
pub fn publish(temp: &Path, dest: &Path) -> io::Result<()> {
    let parent = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let is_dir = std::fs::symlink_metadata(temp)?.is_dir();
    let old = std::fs::symlink_metadata(dest).ok();
    match old {
        Some(meta) if is_dir || meta.is_dir() => {
            let trash = sibling(dest, "pochi-old");
            std::fs::rename(dest, &trash)?;
            rename_or_copy(temp, dest)?;
            remove_path(&trash)?;
        }
        _ => rename_or_copy(temp, dest)?,
    }
    sync_dir(parent);
    Ok(())
}

/// Removes a file or a directory tree; a missing path is fine.
pub fn remove_path(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn rename_or_copy(from: &Path, to: &Path) -> io::Result<()> {
    match std::fs::rename(from, to) {
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            // Another filesystem: copy next to the destination, then rename there.
            let staged = sibling(to, "pochi-new");
            copy_tree(from, &staged)?;
            std::fs::rename(&staged, to)?;
            remove_path(from)
        }
        other => other,
    }
}

fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    if std::fs::metadata(from)?.is_dir() {
        std::fs::create_dir_all(to)?;
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
        Ok(())
    } else {
        std::fs::copy(from, to).map(|_| ())
    }
}

fn sibling(path: &Path, tag: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{tag}.{}", std::process::id()))
}

fn sync_dir(dir: &Path) {
    if let Ok(handle) = std::fs::File::open(dir) {
        let _ = handle.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_replaces_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let temp = dir.path().join("t");
        let dest = dir.path().join("out/d.txt");
        std::fs::write(&temp, b"new").unwrap();
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::write(&dest, b"old").unwrap();
        publish(&temp, &dest).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"new");
        assert!(!temp.exists());
    }

    #[test]
    fn publish_replaces_a_directory_and_leaves_no_trash() {
        let dir = tempfile::tempdir().unwrap();
        let temp = dir.path().join("t");
        let dest = dir.path().join("d");
        std::fs::create_dir_all(&temp).unwrap();
        std::fs::write(temp.join("new"), b"1").unwrap();
        std::fs::create_dir_all(&dest).unwrap();
        std::fs::write(dest.join("old"), b"0").unwrap();
        publish(&temp, &dest).unwrap();
        assert!(dest.join("new").exists());
        assert!(!dest.join("old").exists());
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1);
    }

    #[test]
    fn write_atomic_creates_parents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/c.json");
        write_atomic(&path, b"{}").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"{}");
    }
}
