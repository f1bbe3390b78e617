//! Python scripts shipped inside the binary. Each is written to the cache under its
//! content hash (so two pochi versions never overwrite each other's script) and run as
//! `python -I SCRIPT ...`; every script answers with a JSON result file, never free text.

use std::path::PathBuf;

use super::cache::CacheDir;

/// One embedded script.
#[derive(Debug, Clone, Copy)]
pub struct Script {
    pub name: &'static str,
    pub source: &'static str,
}

/// Reports which Python and which package versions an interpreter has.
pub(crate) const IDENTITY: Script = Script {
    name: "identity.py",
    source: include_str!("scripts/identity.py"),
};

impl Script {
    /// The first 16 hex digits of the script's blake3: part of the fingerprint of the
    /// stages it runs, so a changed script reruns them.
    pub fn hash(&self) -> String {
        super::short_hash(self.source.as_bytes())
    }

    /// Where the script lives in the cache.
    pub fn path_in(&self, cache: &CacheDir) -> PathBuf {
        cache.scripts().join(self.hash()).join(self.name)
    }

    /// Where the script lives in the cache of this process's environment.
    pub fn path(&self) -> PathBuf {
        match CacheDir::from_env() {
            Ok(cache) => self.path_in(&cache),
            Err(_) => PathBuf::from(self.name),
        }
    }

    /// Writes the script to the cache unless it is there already.
    pub fn materialize(&self, cache: &CacheDir) -> std::io::Result<PathBuf> {
        let path = self.path_in(cache);
        let current = std::fs::read(&path)
            .map(|bytes| bytes == self.source.as_bytes())
            .unwrap_or(false);
        if !current {
            crate::fsutil::write_atomic(&path, self.source.as_bytes())?;
        }
        Ok(path)
    }
}

/// Writes the identity script and the kinds' `scripts` to the cache.
pub(crate) fn materialize_all(cache: &CacheDir, scripts: &[Script]) -> std::io::Result<()> {
    std::iter::once(&IDENTITY)
        .chain(scripts)
        .try_for_each(|script| script.materialize(cache).map(|_| ()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_land_under_their_content_hash() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CacheDir::at(dir.path());
        let other = Script {
            name: "other.py",
            source: "print('other')\n",
        };
        let path = other.materialize(&cache).unwrap();
        assert_eq!(path, cache.scripts().join(other.hash()).join("other.py"));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), other.source);
        assert_ne!(other.hash(), IDENTITY.hash());
        // A second call leaves the file alone.
        assert_eq!(other.materialize(&cache).unwrap(), path);
    }
}
