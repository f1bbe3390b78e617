//! A stage's key and its standing: the one place that decides whether a stage is up to
//! date (its key from what is on disk now, against its last successful run), for `build`,
//! `status`, `--dry-run`, `explain` and what `status` says would be restored.

use std::collections::BTreeMap;

use super::Project;
use super::explain::{self, Change};
use crate::fingerprint::{InputDigest, KEY_FORMAT, StageKey};
use crate::graph::ResolvedInput;
use crate::pipeline::kind::Tool;

/// A stage's standing against its last successful run.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Standing {
    UpToDate,
    /// It must run; the changes say why (never empty).
    Stale(Vec<Change>),
    /// Its key cannot be computed yet: an upstream output is missing.
    WaitsOnUpstream(String),
    /// An input is missing or unreadable.
    Broken(String),
}

/// The digest a missing upstream output has in the key of a stage that tolerates it.
const MISSING_DIGEST: &str = "missing";

/// Computes a stage's key from what is on disk now.
pub(super) fn current_key(project: &Project, stage: usize) -> Result<StageKey, Standing> {
    let pipeline = &project.pipeline;
    let spec = &pipeline.stages[stage];
    let requirements = spec.kind.requirements();
    let mut inputs = BTreeMap::new();
    for (key, input) in project.graph.inputs(stage) {
        let path = input.path();
        let found = project.stats.digest(&pipeline.dir, path);
        // A stage that tolerates unavailable inputs runs without them: the output of an
        // upstream stage that could not run here enters its key as missing.
        let found = match (found, input) {
            (Err(_), ResolvedInput::Upstream { .. })
                if requirements.tolerates_unavailable_inputs =>
            {
                Ok(MISSING_DIGEST.to_string())
            }
            (found, _) => found,
        };
        let digest = found.map_err(|error| match input {
            ResolvedInput::Upstream {
                stage: upstream, ..
            } => Standing::WaitsOnUpstream(format!(
                "output `{}` of stage `{}` is not built",
                path.display(),
                pipeline.stages[*upstream].name
            )),
            ResolvedInput::Source(_) => {
                Standing::Broken(format!("input `{key}` (`{}`): {error}", path.display()))
            }
        })?;
        inputs.insert(
            key.clone(),
            InputDigest {
                path: path.to_path_buf(),
                digest,
            },
        );
    }
    let mut needs = BTreeMap::new();
    for need in &spec.needs {
        let Some(upstream) = project.graph.index(&need.value) else {
            continue;
        };
        let mut digests = BTreeMap::new();
        for output in pipeline.stages[upstream].kind.outputs() {
            let digest = project
                .stats
                .digest(&pipeline.dir, &output.path)
                .map_err(|_| {
                    Standing::WaitsOnUpstream(format!(
                        "output `{}` of stage `{}` is not built",
                        output.path.display(),
                        need.value
                    ))
                })?;
            digests.insert(output.key.clone(), digest);
        }
        needs.insert(need.value.clone(), digests);
    }
    Ok(StageKey {
        format: KEY_FORMAT,
        kind: spec.kind.kind().to_string(),
        params: stage_params(project, stage),
        outputs: spec
            .kind
            .outputs()
            .iter()
            .map(|o| (o.key.clone(), o.path.clone()))
            .collect(),
        device: spec.device.to_string(),
        env: spec.env.clone(),
        inputs,
        needs,
        tool: match requirements.tool {
            Tool::None => None,
            Tool::Python => Some(project.toolchain().identity.clone()),
        },
    })
}

/// The kind's parameters for the stage's host, with the GPU model and the platform
/// properties it declares (they decide what it is built for, wherever it runs).
fn stage_params(project: &Project, stage: usize) -> serde_json::Value {
    let spec = &project.pipeline.stages[stage];
    let mut params = spec.kind.params(&project.stage_facts(stage));
    let placement = &spec.placement;
    if (placement.gpu.is_some() || !placement.platform.is_empty())
        && let Some(object) = params.as_object_mut()
    {
        object.insert(
            "placement".into(),
            serde_json::json!({ "gpu": placement.gpu, "platform": placement.platform }),
        );
    }
    params
}

/// Compares the stage's current key and outputs with its last successful run.
pub(crate) fn standing(project: &Project, stage: usize) -> (Standing, Option<StageKey>) {
    let key = match current_key(project, stage) {
        Ok(key) => key,
        Err(standing) => return (standing, None),
    };
    let name = &project.pipeline.stages[stage].name;
    // What the record says is copied out and the state's lock let go before any output is
    // hashed: a large file hashes on rayon's pool, whose threads may meanwhile run other
    // stages' checks, and those take this lock (holding it here deadlocked builds).
    let (mut changes, recorded_outputs) = {
        let state = project.state.lock().unwrap_or_else(|e| e.into_inner());
        let Some(record) = state.built(name) else {
            return (Standing::Stale(vec![Change::NeverBuilt]), Some(key));
        };
        let mut changes = if record.fingerprint == key.fingerprint() {
            Vec::new()
        } else {
            match record.key.parse() {
                Some(old) => explain::diff(&old, &key),
                None => vec![Change::Format],
            }
        };
        if changes.is_empty() && record.fingerprint != key.fingerprint() {
            changes.push(Change::Format);
        }
        (changes, record.outputs.clone())
    };
    for output in &recorded_outputs {
        let path = output.path.display().to_string();
        match project.stats.digest(&project.pipeline.dir, &output.path) {
            Err(_) => changes.push(Change::OutputMissing {
                key: output.key.clone(),
                path,
            }),
            Ok(digest) if digest != output.digest => changes.push(Change::OutputModified {
                key: output.key.clone(),
                path,
                old: output.digest.clone(),
                new: digest,
            }),
            Ok(_) => {}
        }
    }
    let standing = if changes.is_empty() {
        Standing::UpToDate
    } else {
        Standing::Stale(changes)
    };
    (standing, Some(key))
}

/// Describes a standing that prevents computing a key.
pub(super) fn describe(standing: Standing) -> String {
    match standing {
        Standing::WaitsOnUpstream(why) | Standing::Broken(why) => why,
        Standing::UpToDate => "up to date".into(),
        Standing::Stale(changes) => changes.first().map(|c| c.to_string()).unwrap_or_default(),
    }
}
