//! The last build's cache figures, kept in one small file so `pochi cache info` can show
//! the hit rate. Builds of different projects share the store, so "last" is whichever
//! build recorded last.

use std::time::SystemTime;

use super::store::unix_ms;
use super::{CacheError, LocalCache};

/// How the stages of one build that were not up to date got their outputs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BuildStats {
    pub restored_local: u64,
    pub restored_remote: u64,
    /// Stages that ran (cache misses).
    pub ran: u64,
    pub recorded_unix_ms: u64,
}

impl BuildStats {
    /// Figures recorded now.
    pub fn new(restored_local: u64, restored_remote: u64, ran: u64) -> BuildStats {
        BuildStats {
            restored_local,
            restored_remote,
            ran,
            recorded_unix_ms: unix_ms(SystemTime::now()),
        }
    }

    /// Restored stages over stages looked up (restored or run), or None when there were none.
    pub fn hit_rate(&self) -> Option<f64> {
        let hits = self.restored_local + self.restored_remote;
        let total = hits + self.ran;
        (total > 0).then(|| hits as f64 / total as f64)
    }
}

impl LocalCache {
    /// Records a build's figures (replacing the previous build's).
    pub fn record_build_stats(&self, stats: &BuildStats) -> Result<(), CacheError> {
        let path = self.stats_path();
        let bytes = serde_json::to_vec_pretty(stats).map_err(|e| CacheError::Io {
            path: path.clone(),
            source: e.into(),
        })?;
        crate::fsutil::write_cache(&path, &bytes).map_err(CacheError::io(&path))
    }

    /// The figures of the last build that recorded any; None if none did or the file is
    /// unreadable (it is only a statistic).
    pub fn last_build_stats(&self) -> Option<BuildStats> {
        let bytes = std::fs::read(self.stats_path()).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_round_trip_and_hit_rate() {
        let dir = tempfile::tempdir().unwrap();
        let cache = LocalCache::at(dir.path());
        assert_eq!(cache.last_build_stats(), None);
        let stats = BuildStats::new(3, 1, 4);
        cache.record_build_stats(&stats).unwrap();
        assert_eq!(cache.last_build_stats(), Some(stats));
        assert_eq!(stats.hit_rate(), Some(0.5));
        assert_eq!(BuildStats::new(0, 0, 0).hit_rate(), None);
        std::fs::write(cache.stats_path(), b"{torn").unwrap();
        assert_eq!(cache.last_build_stats(), None);
    }
}
