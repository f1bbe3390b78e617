//! Where pochi keeps what it shares between projects: `$POCHI_CACHE_DIR`, else
//! `$XDG_CACHE_HOME/pochi`, else `~/.cache/pochi`. Its layout carries a version so that a
//! later pochi that changes it starts afresh instead of misreading it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Bumped when the layout under the cache directory changes.
pub(crate) const CACHE_LAYOUT: &str = "v1";

/// Why there is no cache directory.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, miette::Diagnostic)]
pub enum CacheDirError {
    /// Neither POCHI_CACHE_DIR, XDG_CACHE_HOME nor HOME is set.
    #[error("cannot find a cache directory: set POCHI_CACHE_DIR (or HOME)")]
    Unset,
}

/// The per-user cache directory and the places inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheDir {
    root: PathBuf,
}

impl CacheDir {
    /// The cache directory named by the environment of this process.
    pub fn from_env() -> Result<CacheDir, CacheDirError> {
        Self::from_vars(|name| std::env::var_os(name))
    }

    /// The cache directory named by `var` (an environment lookup), for tests.
    pub fn from_vars(var: impl Fn(&str) -> Option<OsString>) -> Result<CacheDir, CacheDirError> {
        let set = |name: &str| {
            var(name)
                .filter(|value| !value.is_empty())
                .map(PathBuf::from)
        };
        let base = if let Some(dir) = set("POCHI_CACHE_DIR") {
            dir
        } else if let Some(dir) = set("XDG_CACHE_HOME") {
            dir.join("pochi")
        } else if let Some(home) = set("HOME") {
            home.join(".cache").join("pochi")
        } else {
            return Err(CacheDirError::Unset);
        };
        let base = std::path::absolute(&base).unwrap_or(base);
        Ok(CacheDir {
            root: base.join(CACHE_LAYOUT),
        })
    }

    /// A cache directory at `root` (its layout directory is `root/v1`).
    pub fn at(root: &Path) -> CacheDir {
        CacheDir {
            root: root.join(CACHE_LAYOUT),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Managed environments, one directory per lock hash.
    pub fn toolchains(&self) -> PathBuf {
        self.root.join("toolchains")
    }

    /// Identities of interpreters the user chose, one JSON file per interpreter path.
    pub fn interpreters(&self) -> PathBuf {
        self.root.join("interpreters")
    }

    /// The kinds' scripts, one directory per script content hash (`workers/`, its name
    /// from before they were called scripts).
    pub fn scripts(&self) -> PathBuf {
        self.root.join("workers")
    }

    /// Tools pochi installs for itself (uv).
    pub fn tools(&self) -> PathBuf {
        self.root.join("tools")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn pochi_cache_dir_wins_then_xdg_then_home() {
        let all = [
            ("POCHI_CACHE_DIR", "/p"),
            ("XDG_CACHE_HOME", "/x"),
            ("HOME", "/h"),
        ];
        assert_eq!(
            CacheDir::from_vars(vars(&all)).unwrap().root(),
            Path::new("/p/v1")
        );
        assert_eq!(
            CacheDir::from_vars(vars(&all[1..])).unwrap().root(),
            Path::new("/x/pochi/v1")
        );
        assert_eq!(
            CacheDir::from_vars(vars(&all[2..])).unwrap().root(),
            Path::new("/h/.cache/pochi/v1")
        );
        assert!(CacheDir::from_vars(vars(&[])).is_err());
    }

    #[test]
    fn empty_variables_are_unset() {
        let cache = CacheDir::from_vars(vars(&[("POCHI_CACHE_DIR", ""), ("HOME", "/h")])).unwrap();
        assert_eq!(
            cache.toolchains(),
            Path::new("/h/.cache/pochi/v1/toolchains")
        );
    }
}
