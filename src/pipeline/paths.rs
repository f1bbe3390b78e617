//! Lexical path handling: every path in a pipeline is relative to the pipeline's directory.

use std::path::{Component, Path, PathBuf};

/// The longest name in an output path: 255 bytes, less the 11 that `.NAME.pochi-new` adds
/// while it is published.
pub(crate) const MAX_OUTPUT_NAME_BYTES: usize = 255 - ".pochi-new".len() - 1;
/// The operating system's longest path, its terminating NUL included (Linux's `PATH_MAX`).
const PATH_MAX_BYTES: usize = 4096;
/// What a stage's temporary directory adds before an output path at most:
/// `/.pochi/v1/<pipeline name>/tmp/<stage>/<output key>/` (pipeline and stage names of at
/// most `MAX_NAME_LEN`, the output key counted as that long too) and the publish
/// sibling's 11 bytes.
const TEMP_PATH_RESERVE: usize = "/.pochi/v1//tmp///".len() + 3 * super::parse::MAX_NAME_LEN + 11;

/// Why an output could never be published.
pub(crate) struct Unpublishable {
    pub what: String,
    pub label: &'static str,
    pub help: String,
}

/// An output at `path` (relative to `dir`) that could never be published: a name too
/// long for its publish sibling, or a path too long for the operating system from the
/// deepest place pochi writes it (the stage's temporary directory).
pub(crate) fn unpublishable(dir: &Path, path: &Path) -> Option<Unpublishable> {
    let longest = path.components().map(|c| c.as_os_str().len()).max()?;
    if longest > MAX_OUTPUT_NAME_BYTES {
        return Some(Unpublishable {
            what: format!("has a name of {longest} bytes, over {MAX_OUTPUT_NAME_BYTES}"),
            label: "name too long",
            help: format!(
                "file systems take names of up to 255 bytes, and pochi publishes through `.NAME.pochi-new` beside it: use names of at most {MAX_OUTPUT_NAME_BYTES} bytes"
            ),
        });
    }
    let deepest = dir.as_os_str().len() + 1 + path.as_os_str().len() + TEMP_PATH_RESERVE;
    (deepest >= PATH_MAX_BYTES).then(|| Unpublishable {
        what: format!(
            "is too long a path: with the project directory and pochi's temporary directory it takes {deepest} bytes, over the operating system's {PATH_MAX_BYTES}"
        ),
        label: "path too long",
        help: "use a shorter output path (or a project directory nearer the root)".into(),
    })
}

/// Resolves `raw` against `dir` lexically: a path inside `dir` comes back relative to it
/// (no `.` or `..`), one outside comes back absolute.
pub(crate) fn normalize(dir: &Path, raw: &Path) -> PathBuf {
    let joined = if raw.is_absolute() {
        raw.to_path_buf()
    } else {
        dir.join(raw)
    };
    let absolute = lexical_clean(&joined);
    match absolute.strip_prefix(dir) {
        Ok(relative) => relative.to_path_buf(),
        Err(_) => absolute,
    }
}

/// Removes `.` and resolves `..` without touching the filesystem.
pub(crate) fn lexical_clean(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// Whether a normalized path lies inside the project (is relative and non-empty).
pub(crate) fn is_inside_project(normalized: &Path) -> bool {
    normalized.is_relative()
        && normalized.components().next().is_some()
        && !normalized.starts_with("..")
}

/// Whether one path equals or contains the other.
pub(crate) fn overlaps(a: &Path, b: &Path) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inside_paths_become_relative() {
        let dir = Path::new("/p/proj");
        assert_eq!(
            normalize(dir, Path::new("./a/../b/c.txt")),
            PathBuf::from("b/c.txt")
        );
        assert_eq!(normalize(dir, Path::new("/p/proj/x")), PathBuf::from("x"));
    }

    #[test]
    fn outside_paths_stay_absolute() {
        let dir = Path::new("/p/proj");
        assert_eq!(
            normalize(dir, Path::new("../other/x")),
            PathBuf::from("/p/other/x")
        );
        assert!(!is_inside_project(&normalize(dir, Path::new("../x"))));
        assert!(!is_inside_project(&normalize(dir, Path::new("."))));
        assert!(is_inside_project(&normalize(dir, Path::new("out/x"))));
    }

    #[test]
    fn overlap_is_prefix_by_component() {
        assert!(overlaps(Path::new("out"), Path::new("out/a")));
        assert!(!overlaps(Path::new("out"), Path::new("outer")));
    }
}
