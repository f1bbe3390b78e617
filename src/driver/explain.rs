//! Why a stage would run: the differences between its key now and at its last success.

use std::collections::BTreeMap;
use std::fmt;

use crate::fingerprint::StageKey;

/// One reason a stage's fingerprint changed.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "what", rename_all = "snake_case")]
pub(crate) enum Change {
    NeverBuilt,
    Kind {
        old: String,
        new: String,
    },
    Param {
        key: String,
        old: serde_json::Value,
        new: serde_json::Value,
    },
    Outputs {
        old: String,
        new: String,
    },
    Device {
        old: String,
        new: String,
    },
    Env {
        key: String,
        old: Option<String>,
        new: Option<String>,
    },
    Input {
        key: String,
        path: String,
        old: Option<String>,
        new: Option<String>,
    },
    Upstream {
        stage: String,
        output: String,
        old: Option<String>,
        new: Option<String>,
    },
    Tool {
        old: Option<String>,
        new: Option<String>,
    },
    Format,
    OutputMissing {
        key: String,
        path: String,
    },
    OutputModified {
        key: String,
        path: String,
        old: String,
        new: String,
    },
}

fn short(digest: &Option<String>) -> String {
    digest
        .as_deref()
        .map(|d| d.chars().take(12).collect())
        .unwrap_or_else(|| "(none)".into())
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Change::NeverBuilt => f.write_str("never built"),
            Change::Kind { old, new } => write!(f, "kind changed: {old} -> {new}"),
            Change::Param { key, old, new } => {
                write!(f, "parameter `{key}` changed: {old} -> {new}")
            }
            Change::Outputs { old, new } => write!(f, "declared outputs changed: {old} -> {new}"),
            Change::Device { old, new } => write!(f, "device changed: {old} -> {new}"),
            Change::Env { key, old, new } => write!(
                f,
                "env `{key}` changed: {} -> {}",
                old.as_deref().unwrap_or("(unset)"),
                new.as_deref().unwrap_or("(unset)")
            ),
            Change::Input {
                key,
                path,
                old,
                new,
            } => match (old, new) {
                (None, _) => write!(f, "new input `{key}` ({path})"),
                (_, None) => write!(f, "input `{key}` removed ({path})"),
                _ => write!(
                    f,
                    "input `{key}` ({path}) changed: {} -> {}",
                    short(old),
                    short(new)
                ),
            },
            Change::Upstream {
                stage,
                output,
                old,
                new,
            } => write!(
                f,
                "output `{output}` of needed stage `{stage}` changed: {} -> {}",
                short(old),
                short(new)
            ),
            Change::Tool { old, new } => write!(
                f,
                "tool changed: {} -> {}",
                old.as_deref().unwrap_or("(none)"),
                new.as_deref().unwrap_or("(none)")
            ),
            Change::Format => f.write_str("pochi's key format changed"),
            Change::OutputMissing { key, path } => write!(f, "output `{key}` ({path}) is missing"),
            Change::OutputModified {
                key,
                path,
                old,
                new,
            } => write!(
                f,
                "output `{key}` ({path}) was modified: {} -> {}",
                short(&Some(old.clone())),
                short(&Some(new.clone()))
            ),
        }
    }
}

/// Every difference between the recorded key and the current one, in a stable order.
pub(crate) fn diff(old: &StageKey, new: &StageKey) -> Vec<Change> {
    let mut changes = Vec::new();
    if old.format != new.format {
        changes.push(Change::Format);
    }
    if old.kind != new.kind {
        changes.push(Change::Kind {
            old: old.kind.clone(),
            new: new.kind.clone(),
        });
    }
    diff_params(&old.params, &new.params, &mut changes);
    if old.outputs != new.outputs {
        let show = |o: &Vec<(String, std::path::PathBuf)>| {
            o.iter()
                .map(|(k, p)| format!("{k}={}", p.display()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        changes.push(Change::Outputs {
            old: show(&old.outputs),
            new: show(&new.outputs),
        });
    }
    if old.device != new.device {
        changes.push(Change::Device {
            old: old.device.clone(),
            new: new.device.clone(),
        });
    }
    for (key, (old_value, new_value)) in zip_maps(&old.env, &new.env) {
        if old_value != new_value {
            changes.push(Change::Env {
                key: key.clone(),
                old: old_value.cloned(),
                new: new_value.cloned(),
            });
        }
    }
    for (key, (old_input, new_input)) in zip_maps(&old.inputs, &new.inputs) {
        if old_input != new_input {
            let path = new_input
                .or(old_input)
                .map(|i| i.path.display().to_string())
                .unwrap_or_default();
            changes.push(Change::Input {
                key: key.clone(),
                path,
                old: old_input.map(|i| i.digest.clone()),
                new: new_input.map(|i| i.digest.clone()),
            });
        }
    }
    let empty = BTreeMap::new();
    for (stage, (old_outputs, new_outputs)) in zip_maps(&old.needs, &new.needs) {
        for (output, (old_digest, new_digest)) in
            zip_maps(old_outputs.unwrap_or(&empty), new_outputs.unwrap_or(&empty))
        {
            if old_digest != new_digest {
                changes.push(Change::Upstream {
                    stage: stage.clone(),
                    output: output.clone(),
                    old: old_digest.cloned(),
                    new: new_digest.cloned(),
                });
            }
        }
    }
    if old.tool != new.tool {
        changes.push(Change::Tool {
            old: old.tool.clone(),
            new: new.tool.clone(),
        });
    }
    changes
}

fn diff_params(old: &serde_json::Value, new: &serde_json::Value, changes: &mut Vec<Change>) {
    match (old.as_object(), new.as_object()) {
        (Some(old), Some(new)) => {
            let keys: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
            for key in keys {
                let (a, b) = (old.get(key), new.get(key));
                if a != b {
                    changes.push(Change::Param {
                        key: key.clone(),
                        old: a.cloned().unwrap_or(serde_json::Value::Null),
                        new: b.cloned().unwrap_or(serde_json::Value::Null),
                    });
                }
            }
        }
        _ if old != new => changes.push(Change::Param {
            key: "(all)".into(),
            old: old.clone(),
            new: new.clone(),
        }),
        _ => {}
    }
}

/// Pairs of values by key over the union of both maps' keys.
fn zip_maps<'a, K: Ord, V>(
    old: &'a BTreeMap<K, V>,
    new: &'a BTreeMap<K, V>,
) -> BTreeMap<&'a K, (Option<&'a V>, Option<&'a V>)> {
    let mut pairs: BTreeMap<&K, (Option<&V>, Option<&V>)> = BTreeMap::new();
    for (key, value) in old {
        pairs.entry(key).or_default().0 = Some(value);
    }
    for (key, value) in new {
        pairs.entry(key).or_default().1 = Some(value);
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::{InputDigest, KEY_FORMAT};

    fn key() -> StageKey {
        StageKey {
            format: KEY_FORMAT,
            kind: "command".into(),
            params: serde_json::json!({ "run": ["cp", "a", "b"] }),
            outputs: vec![("out".into(), "b".into())],
            device: "cpu".into(),
            env: BTreeMap::new(),
            inputs: BTreeMap::from([(
                "src".into(),
                InputDigest {
                    path: "a".into(),
                    digest: "aaaa".into(),
                },
            )]),
            needs: BTreeMap::new(),
            tool: None,
        }
    }

    #[test]
    fn names_the_changed_input_with_both_digests() {
        let mut new = key();
        new.inputs.get_mut("src").unwrap().digest = "bbbb".into();
        let changes = diff(&key(), &new);
        assert_eq!(changes.len(), 1);
        assert_eq!(
            changes[0].to_string(),
            "input `src` (a) changed: aaaa -> bbbb"
        );
    }

    #[test]
    fn names_the_changed_parameter_and_env() {
        let mut new = key();
        new.params = serde_json::json!({ "run": ["cp", "a", "c"] });
        new.env.insert("SEED".into(), "1".into());
        let text: Vec<String> = diff(&key(), &new).iter().map(|c| c.to_string()).collect();
        assert_eq!(
            text,
            vec![
                "parameter `run` changed: [\"cp\",\"a\",\"b\"] -> [\"cp\",\"a\",\"c\"]".to_string(),
                "env `SEED` changed: (unset) -> 1".to_string(),
            ]
        );
    }

    #[test]
    fn identical_keys_have_no_changes() {
        assert!(diff(&key(), &key()).is_empty());
    }
}
