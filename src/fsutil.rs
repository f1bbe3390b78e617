//! The one place that writes state and publishes outputs: atomic writes (temp file in the
//! same directory, fsync, rename) and atomic publication of a finished output.

use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};

/// Writes `bytes` to `path` so that readers see either the old or the new content, and
/// makes it durable (fsync of the file and its directory): for state.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace(path, bytes, true)
}

/// Like `write_atomic` without the fsyncs: for caches, where losing the file to a power
/// cut only costs recomputing it.
pub(crate) fn write_cache(path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace(path, bytes, false)
}

fn replace(path: &Path, bytes: &[u8], durable: bool) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut temp = tempfile::NamedTempFile::new_in(dir)?;
    temp.write_all(bytes)?;
    if durable {
        temp.as_file().sync_all()?;
    }
    temp.persist(path).map_err(|e| e.error)?;
    if durable {
        sync_dir(dir);
    }
    Ok(())
}

/// Moves a finished output from its temporary path to `dest`, replacing what was there.
/// A file is replaced in one rename; a directory is swapped with two renames, so a crash
/// in between leaves `dest` missing (rebuilt next time), never half-written. Like make and
/// ninja, pochi does not fsync outputs: a killed process never leaves a partial output; after
/// a power cut an output may come back truncated, and since its digest then differs from
/// the recorded one, the next build reruns its stage.
pub(crate) fn publish(temp: &Path, dest: &Path) -> io::Result<()> {
    let parent = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let is_dir = std::fs::symlink_metadata(temp)?.is_dir();
    let old = std::fs::symlink_metadata(dest).ok();
    let trash = sibling(dest, "pochi-old");
    // A build killed in the middle of a swap left its trash: it goes first.
    remove_path(&trash)?;
    match old {
        Some(meta) if is_dir || meta.is_dir() => {
            std::fs::rename(dest, &trash)?;
            rename_or_copy(temp, dest)?;
            remove_path(&trash)?;
        }
        _ => rename_or_copy(temp, dest)?,
    }
    Ok(())
}

/// Removes a file or a directory tree; a missing path is fine.
pub(crate) fn remove_path(path: &Path) -> io::Result<()> {
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
            remove_path(&staged)?;
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

/// The publish protocol's temporary name beside `path`. It is the same in every build (one
/// build per pipeline holds the lock), so the next publish or `clean` of `path` removes
/// what a killed build left there.
fn sibling(path: &Path, tag: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{tag}"))
}

/// Makes `path` (below `base`) a directory reached from `base` through real directories
/// only: each missing one is created, and a symbolic link or anything but a directory on
/// the way is an error, never followed. pochi's own directories in `.pochi/` are written
/// and emptied through this, so a link committed there cannot make it write or delete
/// outside them.
pub(crate) fn real_dirs(base: &Path, path: &Path) -> io::Result<()> {
    let relative = path.strip_prefix(base).map_err(|_| {
        io::Error::other(format!(
            "{} is not inside {}",
            path.display(),
            base.display()
        ))
    })?;
    let mut at = base.to_path_buf();
    for component in relative.components() {
        at.push(component);
        match std::fs::symlink_metadata(&at) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(io::Error::other(format!(
                    "{} is a symbolic link or a file, not a directory; pochi does not write \
                     through it: remove it",
                    at.display()
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => match std::fs::create_dir(&at) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
                _ => {}
            },
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Removes an output and whatever an interrupted publish of it left beside it.
pub(crate) fn remove_output(path: &Path) -> io::Result<bool> {
    remove_path(&sibling(path, "pochi-old"))?;
    remove_path(&sibling(path, "pochi-new"))?;
    let existed = std::fs::symlink_metadata(path).is_ok();
    remove_path(path)?;
    Ok(existed)
}

/// Fails when writing `path` would go through a symbolic link that leaves `root` (the
/// project directory, canonical): its nearest existing ancestor must resolve inside `root`.
pub(crate) fn check_confined(root: &Path, path: &Path) -> io::Result<()> {
    let Some(existing) = path
        .parent()
        .into_iter()
        .flat_map(Path::ancestors)
        .find(|a| std::fs::symlink_metadata(a).is_ok())
    else {
        return Ok(());
    };
    let resolved = std::fs::canonicalize(existing)?;
    if resolved.starts_with(root) {
        return Ok(());
    }
    Err(io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!(
            "`{}` resolves to `{}`, outside the project `{}` (through a symbolic link); pochi never writes or deletes outside the project",
            existing.display(),
            resolved.display(),
            root.display()
        ),
    ))
}

/// Checks a finished output at `temp` before it is published to `dest`: only regular files,
/// directories, and symbolic links to one of those inside `root` (canonical). Links are
/// resolved as they will be at `dest` (a relative link climbs from there, not from the
/// temporary directory several levels deeper), through the output's own links. A dangling
/// link, a link out of the project, a link to a directory holding it (a cycle: the output
/// could never be hashed), or a FIFO or device (which a reader could wait on forever) is an
/// error.
pub(crate) fn check_output_tree(root: &Path, temp: &Path, dest: &Path) -> io::Result<()> {
    let place = Relocation {
        temp,
        dest: &final_location(dest)?,
    };
    let dest = place.dest.to_path_buf();
    check_entry(root, &place, temp, &dest)
}

fn check_entry(root: &Path, place: &Relocation, path: &Path, shown: &Path) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    let file_type = meta.file_type();
    if file_type.is_symlink() {
        return check_link(root, place, shown);
    }
    if file_type.is_dir() {
        for entry in std::fs::read_dir(path)? {
            let name = entry?.file_name();
            check_entry(root, place, &path.join(&name), &shown.join(&name))?;
        }
        return Ok(());
    }
    if file_type.is_file() {
        return Ok(());
    }
    Err(not_a_file(shown))
}

/// The link that will be at `link` (its published place) must lead to a file or directory
/// inside `root` that does not hold it.
fn check_link(root: &Path, place: &Relocation, link: &Path) -> io::Result<()> {
    let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidInput, what);
    let nowhere = |e: io::Error| {
        io::Error::new(
            e.kind(),
            format!(
                "`{}` is a symbolic link that leads nowhere ({e})",
                link.display()
            ),
        )
    };
    let target = place.resolve_link(link, &mut 0).map_err(nowhere)?;
    if !target.starts_with(root) {
        return Err(invalid(format!(
            "`{}` is a symbolic link to `{}`, outside the project",
            link.display(),
            target.display()
        )));
    }
    // A link to a directory on its own path (which publishing creates, if it is not there
    // yet) is a cycle.
    if link.starts_with(&target) {
        return Err(invalid(format!(
            "`{}` is a symbolic link to `{}`, a directory that holds it: a cycle, which could never be hashed",
            link.display(),
            target.display()
        )));
    }
    let followed = std::fs::metadata(place.physical(&target)).map_err(nowhere)?;
    if !followed.is_file() && !followed.is_dir() {
        return Err(not_a_file(link));
    }
    Ok(())
}

/// Where `dest` will be once published, with the symbolic links of its existing ancestors
/// resolved.
fn final_location(dest: &Path) -> io::Result<PathBuf> {
    let mut existing = dest.parent().unwrap_or(Path::new("."));
    let mut rest = vec![dest.file_name().unwrap_or_default().to_owned()];
    while std::fs::symlink_metadata(existing).is_err() {
        rest.push(existing.file_name().unwrap_or_default().to_owned());
        existing = existing.parent().unwrap_or(Path::new("/"));
    }
    let mut location = std::fs::canonicalize(existing)?;
    location.extend(rest.iter().rev());
    Ok(location)
}

/// An output that is at `temp` now and will be at `dest` (resolved): paths are given as
/// they will be once published, and read where they are now.
struct Relocation<'a> {
    temp: &'a Path,
    dest: &'a Path,
}

/// Most links followed to resolve one, as the kernel's own limit.
const MAX_LINK_HOPS: u32 = 40;

impl Relocation<'_> {
    /// Where `path` (as published) can be read now.
    fn physical(&self, path: &Path) -> PathBuf {
        match path.strip_prefix(self.dest) {
            // Joined with an empty path, it would end in `/` and name the link's target.
            Ok(rest) if rest.as_os_str().is_empty() => self.temp.to_path_buf(),
            Ok(rest) => self.temp.join(rest),
            Err(_) => path.to_path_buf(),
        }
    }

    /// Where the link at `link` (as published, its directories resolved) leads, every
    /// link on the way followed, as the kernel would resolve it there.
    fn resolve_link(&self, link: &Path, hops: &mut u32) -> io::Result<PathBuf> {
        *hops += 1;
        if *hops > MAX_LINK_HOPS {
            return Err(io::Error::other("too many levels of symbolic links"));
        }
        let target = std::fs::read_link(self.physical(link))?;
        let mut at = link.parent().unwrap_or(Path::new("/")).to_path_buf();
        for component in target.components() {
            match component {
                Component::RootDir | Component::Prefix(_) => at = PathBuf::from("/"),
                Component::CurDir => {}
                Component::ParentDir => {
                    at.pop();
                }
                Component::Normal(name) => {
                    at.push(name);
                    let is_link = std::fs::symlink_metadata(self.physical(&at))
                        .is_ok_and(|m| m.file_type().is_symlink());
                    if is_link {
                        at = self.resolve_link(&at, hops)?;
                    }
                }
            }
        }
        Ok(at)
    }
}

fn not_a_file(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "`{}` is not a regular file or directory (a FIFO, device or socket)",
            path.display()
        ),
    )
}

fn sync_dir(dir: &Path) {
    if let Ok(handle) = std::fs::File::open(dir) {
        let _ = handle.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A link on the way is refused, never followed; missing directories are made.
    #[test]
    fn real_dirs_makes_directories_and_refuses_links() {
        let base = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        real_dirs(base.path(), &base.path().join("a/b/c")).unwrap();
        assert!(base.path().join("a/b/c").is_dir());
        std::os::unix::fs::symlink(outside.path(), base.path().join("a/link")).unwrap();
        let error = real_dirs(base.path(), &base.path().join("a/link/d")).unwrap_err();
        assert!(error.to_string().contains("not a directory"), "{error}");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        assert!(
            real_dirs(base.path(), outside.path()).is_err(),
            "not inside base"
        );
    }

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
