//! The one place that decides whether a stage can run on this machine, for `build`,
//! `status`, `graph`, `explain` and `--dry-run` alike: first the kind's check of the
//! inputs that exist (an error there is the user's to fix, on every machine), then the
//! kind's declared `Requirements` against the `MachineFacts` (TensorRT, a GPU), with one rule
//! for every kind.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::{PlanStatus, Project};
use crate::pipeline::Device;
use crate::pipeline::kind::{AcceleratorUse, StageError, WithoutGpu};

/// Whether a stage can run here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    Runs,
    /// Its inputs are wrong for it (the engine's shape decision): it fails.
    Invalid(StageError),
    /// The machine lacks what it needs; the reason says what.
    Unavailable(String),
}

/// The stage's verdict from its inputs, its requirements and the project's host.
pub(super) fn verdict(project: &Project, stage: usize) -> Verdict {
    let spec = &project.pipeline.stages[stage];
    let present: BTreeMap<String, PathBuf> = project
        .graph
        .inputs(stage)
        .iter()
        .filter(|(_, input)| project.pipeline.dir.join(input.path()).exists())
        .map(|(key, input)| (key.clone(), input.path().to_path_buf()))
        .collect();
    if let Err(error) = spec.kind.check_inputs(&project.pipeline.dir, &present) {
        return Verdict::Invalid(error);
    }
    if project.runs_remotely(stage) {
        // The farm decides: an action no worker takes fails after the queue timeout.
        return Verdict::Runs;
    }
    if let Some(why) = project.nowhere.get(&stage) {
        return Verdict::Unavailable(why.clone());
    }
    let requirements = spec.kind.requirements();
    let facts = &project.facts;
    let mut missing = Vec::new();
    if let Some(reason) = other_target(project, stage) {
        missing.push(reason);
    }
    if let AcceleratorUse::Required(accelerator) = requirements.accelerator
        && facts.accelerator_version(accelerator.id).is_none()
    {
        let error = facts
            .accelerator(accelerator.id)
            .and_then(|found| found.error.clone())
            .unwrap_or_else(|| "not installed".to_string());
        missing.push(format!(
            "{} is not available on this machine ({} cannot `import {}`: {error})",
            accelerator.name,
            facts.toolchain.python.display(),
            accelerator.module
        ));
    }
    let gpu_stage = matches!(spec.device, Device::Cuda(_));
    if gpu_stage && facts.gpus.is_empty() && requirements.without_gpu == WithoutGpu::Unavailable {
        missing.push("no GPU (nvidia-smi lists none and [resources] gpus declares none)".into());
    }
    if missing.is_empty() {
        Verdict::Runs
    } else {
        Verdict::Unavailable(missing.join("; "))
    }
}

/// Why a stage that names its GPU model (`gpu`, and its accelerator's version, e.g.
/// `platform.tensorrt`) cannot run here: this machine has another GPU or version, so what
/// it built would not be what the key says.
fn other_target(project: &Project, stage: usize) -> Option<String> {
    let placement = &project.pipeline.stages[stage].placement;
    let gpu = placement.gpu.as_ref()?;
    let here: Vec<&str> = project
        .facts
        .gpu_models
        .iter()
        .map(|m| m.name.as_str())
        .collect();
    if !here.contains(&gpu.as_str()) {
        let found = if here.is_empty() {
            "no GPU model is known here".to_string()
        } else {
            format!("this machine has {}", here.join(", "))
        };
        return Some(format!(
            "it targets {gpu} (`gpu`), and {found} (build it on a farm's worker with --remote-executor)"
        ));
    }
    let accelerator = project.pipeline.stages[stage]
        .kind
        .requirements()
        .accelerator
        .accelerator()?;
    let (id, name) = (accelerator.id, accelerator.name);
    let wanted = placement.platform.get(id)?;
    match project.facts.accelerator_version(id) {
        Some(version) if version == wanted => None,
        found => Some(format!(
            "it targets {name} {wanted} (`platform.{id}`), and this machine has {}",
            found.map_or("none".to_string(), |v| format!("{name} {v}"))
        )),
    }
}

/// For a plan: the status and reason of a stage that cannot run (its inputs are wrong,
/// it is unavailable here, or it needs an unavailable stage and does not tolerate that),
/// given the statuses decided so far upstream; `None` when it can run.
pub(super) fn in_plan(
    project: &Project,
    stage: usize,
    status: &[Option<PlanStatus>],
) -> Option<(PlanStatus, String)> {
    match verdict(project, stage) {
        Verdict::Runs => {}
        Verdict::Invalid(error) => return Some((PlanStatus::Broken, error.message)),
        Verdict::Unavailable(reason) => {
            return Some((
                PlanStatus::Unavailable,
                format!("cannot run on this machine: {reason}"),
            ));
        }
    }
    let kind = &project.pipeline.stages[stage].kind;
    if kind.requirements().tolerates_unavailable_inputs {
        return None;
    }
    let dep = project
        .graph
        .deps(stage)
        .iter()
        .find(|&&d| status[d] == Some(PlanStatus::Unavailable))?;
    Some((
        PlanStatus::Unavailable,
        format!(
            "needs `{}`, which cannot run on this machine",
            project.pipeline.stages[*dep].name
        ),
    ))
}
