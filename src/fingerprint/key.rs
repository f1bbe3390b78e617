//! A stage's key: everything that can change its output, serialized canonically (sorted
//! maps, fixed field order) and hashed with blake3 into its fingerprint.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Bumped when the key's meaning changes, so every stage rebuilds once.
pub(crate) const KEY_FORMAT: u32 = 1;

/// One input as the key sees it: where it is and what it contains.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct InputDigest {
    pub path: PathBuf,
    pub digest: super::Digest,
}

/// Everything that can change a stage's output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct StageKey {
    pub format: u32,
    pub kind: String,
    /// The kind's parameters (for `command`: the run list).
    pub params: serde_json::Value,
    /// Declared output paths, in order (`key` -> path).
    pub outputs: Vec<(String, PathBuf)>,
    pub device: String,
    pub env: BTreeMap<String, String>,
    /// Inputs by key: sources and upstream outputs, by content.
    pub inputs: BTreeMap<String, InputDigest>,
    /// Outputs of stages named in `needs`: stage -> output key -> digest.
    pub needs: BTreeMap<String, BTreeMap<String, super::Digest>>,
    /// The identity of the tool the kind runs (e.g. the Python toolchain), if any.
    pub tool: Option<String>,
}

impl StageKey {
    /// blake3 over the canonical JSON of the key, in hex.
    pub(crate) fn fingerprint(&self) -> String {
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        blake3::hash(&bytes).to_hex().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> StageKey {
        StageKey {
            format: KEY_FORMAT,
            kind: "command".into(),
            params: serde_json::json!({ "run": ["cp", "a", "b"] }),
            outputs: vec![("out".into(), "b".into())],
            device: "cpu".into(),
            env: BTreeMap::from([("B".into(), "2".into()), ("A".into(), "1".into())]),
            inputs: BTreeMap::new(),
            needs: BTreeMap::new(),
            tool: None,
        }
    }

    #[test]
    fn fingerprint_is_stable_and_sensitive() {
        let a = key();
        assert_eq!(a.fingerprint(), key().fingerprint());
        let mut b = key();
        b.env.insert("A".into(), "changed".into());
        assert_ne!(a.fingerprint(), b.fingerprint());
        let mut c = key();
        c.params = serde_json::json!({ "run": ["cp", "a", "c"] });
        assert_ne!(a.fingerprint(), c.fingerprint());
    }

    #[test]
    fn map_insertion_order_does_not_matter() {
        let mut a = key();
        a.env = BTreeMap::from([("A".into(), "1".into()), ("B".into(), "2".into())]);
        assert_eq!(a.fingerprint(), key().fingerprint());
    }
}
