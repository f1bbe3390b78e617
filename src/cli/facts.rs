//! Gathering the `MachineFacts` of every pipeline of a build, once, before any key is computed:
//! the toolchain (created with `Mode::Create`, only inspected otherwise), the machine
//! (one `nvidia-smi` query), the TensorRT probe when a stage uses TensorRT, and the Python
//! packages' versions when a stage reports its environment.

use crate::driver::{Project, Workspace, default_toolchain};
use crate::facts::MachineFacts;
use std::collections::BTreeMap;

use crate::facts::AcceleratorFacts;
use crate::kinds::Accelerator;
use crate::pipeline::Pipeline;
use crate::toolchain::{self, Choice, Mode, Toolchain, ToolchainError};

/// Attaches the machine facts of every pipeline in `workspace`. With `Mode::Create`, the
/// scripts are written to the cache and a missing managed toolchain is created.
pub(super) fn gather_facts(workspace: &mut Workspace, mode: Mode) -> miette::Result<()> {
    if mode == Mode::Create {
        toolchain::materialize_scripts(&crate::kinds::scripts())?;
    }
    let machine = crate::machine::detect();
    let gpus = workspace.capacity(&machine, None).gpus;
    workspace.attach_facts(|project| gather(project, mode, &machine, &gpus))?;
    Ok(())
}

/// The workspace of `paths` ready to plan or build, the one sequence every command uses:
/// the pipelines loaded and checked, their hosts gathered (`mode`), each stage placed
/// (here or on the remote executor, when one is configured).
pub(super) fn open_workspace(
    paths: &[std::path::PathBuf],
    mode: Mode,
    remote_configured: bool,
) -> miette::Result<Workspace> {
    let mut workspace = Workspace::load(paths, crate::kinds::KINDS)?;
    gather_facts(&mut workspace, mode)?;
    workspace.place(remote_configured)?;
    Ok(workspace)
}

/// The host of one pipeline.
fn gather(
    project: &Project,
    mode: Mode,
    machine: &crate::machine::Hardware,
    gpus: &[u32],
) -> Result<MachineFacts, ToolchainError> {
    let toolchain = if project.needs_python() {
        for_pipeline(&project.pipeline, mode)?
    } else {
        default_toolchain(&project.pipeline)
    };
    let python_exists = toolchain.python.exists();
    let accelerators = probe_accelerators(project, &toolchain.python, python_exists);
    let reports = project
        .pipeline
        .stages
        .iter()
        .any(|stage| stage.kind.requirements().reports_environment);
    let python = (python_exists && reports)
        .then(|| toolchain::python_facts(&toolchain.python))
        .flatten();
    Ok(MachineFacts {
        gpus: gpus.to_vec(),
        gpu_models: machine.gpu_models.clone(),
        accelerators,
        python,
        ..MachineFacts::plain(toolchain)
    })
}

/// What the probe of every accelerator the pipeline's stages declare finds with the
/// toolchain's interpreter; without the interpreter, why a stage that requires one cannot
/// have it.
fn probe_accelerators(
    project: &Project,
    python: &std::path::Path,
    python_exists: bool,
) -> BTreeMap<String, AcceleratorFacts> {
    let mut declared: BTreeMap<&str, (&Accelerator, bool)> = BTreeMap::new();
    for stage in &project.pipeline.stages {
        let wanted = stage.kind.requirements().accelerator;
        if let Some(accelerator) = wanted.accelerator() {
            let entry = declared
                .entry(accelerator.id)
                .or_insert((accelerator, false));
            entry.1 |= wanted.is_required();
        }
    }
    declared
        .into_values()
        .filter_map(|(accelerator, required)| {
            let facts = match python_exists {
                true => (accelerator.probe)(python),
                false if required => AcceleratorFacts {
                    error: Some(format!("{} does not exist", python.display())),
                    ..Default::default()
                },
                false => return None,
            };
            Some((accelerator.id.to_string(), facts))
        })
        .collect()
}

/// What a pipeline asks of the toolchain: its `[toolchain] python`, if any.
pub(super) fn choice_of(pipeline: &Pipeline) -> Choice {
    Choice::of(
        pipeline
            .toolchain
            .python
            .as_deref()
            .map(|python| (python, pipeline.dir.as_path(), pipeline.file.as_path())),
    )
}

/// The modules the pipeline's stages import (from each kind's requirements).
pub(super) fn needed_modules(pipeline: &Pipeline) -> Vec<&'static str> {
    let set: std::collections::BTreeSet<&'static str> = pipeline
        .stages
        .iter()
        .flat_map(|stage| stage.kind.requirements().python_modules)
        .collect();
    set.into_iter().collect()
}

/// The toolchain of a pipeline, resolved (and created with `Mode::Create`).
fn for_pipeline(pipeline: &Pipeline, mode: Mode) -> Result<Toolchain, ToolchainError> {
    toolchain::resolve(
        &choice_of(pipeline),
        &needed_modules(pipeline),
        mode,
        &mut super::output::note_line,
    )
    .map(|resolved| resolved.toolchain)
}
