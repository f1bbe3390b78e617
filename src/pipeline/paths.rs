//! Lexical path handling: every path in a pipeline is relative to the pipeline's directory.

use std::path::{Component, Path, PathBuf};

/// Resolves `raw` against `dir` lexically: a path inside `dir` comes back relative to it
/// (no `.` or `..`), one outside comes back absolute.
pub fn normalize(dir: &Path, raw: &Path) -> PathBuf {
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
pub fn lexical_clean(path: &Path) -> PathBuf {
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
pub fn is_inside_project(normalized: &Path) -> bool {
    normalized.is_relative()
        && normalized.components().next().is_some()
        && !normalized.starts_with("..")
}

/// Whether one path equals or contains the other.
pub fn overlaps(a: &Path, b: &Path) -> bool {
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
