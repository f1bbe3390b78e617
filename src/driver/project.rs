//! One pipeline of a build: loaded and checked, with its graph, state, stat cache, host
//! and where each stage runs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use super::*;
use crate::facts::{MachineFacts, Toolchain};
use crate::fingerprint::StatCache;
use crate::graph::{ResolvedInput, StageGraph};
use crate::pipeline::kind::{Registry, Tool};
use crate::pipeline::{Pipeline, PipelineError, StageSources};
use crate::state::{OutputRecord, StateStore};

/// One pipeline with its graph, state and stat cache.
#[derive(Debug)]
pub(crate) struct Project {
    pub pipeline: Pipeline,
    pub graph: StageGraph,
    pub state: Mutex<StateStore>,
    pub stats: StatCache,
    /// The machine facts of this build, set by the caller (`Workspace::attach_facts`);
    /// until then a host without GPUs whose toolchain is `[toolchain] python` or
    /// `python3` on PATH.
    pub facts: MachineFacts,
    /// The stages that run on the remote executor in this build (`Workspace::place`).
    pub remote: BTreeSet<usize>,
    /// The stages that must run remotely when no executor is configured, with why they
    /// cannot run in this build.
    pub nowhere: BTreeMap<usize, String>,
    /// The pipeline file cut at its stage headers, when a stage's text is first asked for.
    sources: OnceLock<Option<StageSources>>,
}

impl Project {
    /// Parses, resolves and checks a pipeline, and reads its state.
    pub(crate) fn load(path: &Path, kinds: Registry) -> Result<Project, BuildError> {
        let started = Instant::now();
        let pipeline = Pipeline::load(path, kinds)?;
        let parsed = started.elapsed();
        let graph = StageGraph::build(&pipeline)?;
        check_sources_exist(&pipeline, &graph)?;
        let checked = started.elapsed();
        let state = StateStore::open(&pipeline.state_dir())?;
        let stats = StatCache::load(&state.stat_cache_path());
        tracing::debug!(
            parse_ms = parsed.as_millis() as u64,
            graph_ms = (checked - parsed).as_millis() as u64,
            state_ms = (started.elapsed() - checked).as_millis() as u64,
            "pipeline loaded"
        );
        Ok(Project {
            graph,
            state: Mutex::new(state),
            facts: MachineFacts::plain(default_toolchain(&pipeline)),
            remote: BTreeSet::new(),
            nowhere: BTreeMap::new(),
            sources: OnceLock::new(),
            pipeline,
            stats,
        })
    }

    /// The pipeline text a stage that pochi runs itself parses again (`pochi run-stage`,
    /// whose request is an input of the stage's Action): the part before the first stage
    /// header and the stage's own section, so an edit to another stage leaves its Action
    /// alone. The whole file when it does not cut cleanly or has a matrix (a matrix
    /// rewrites references across stages).
    pub(crate) fn stage_text(&self, stage: usize) -> Arc<String> {
        let whole = &self.pipeline.source.text;
        if self.pipeline.stages.iter().any(|s| s.matrix.is_some()) {
            return Arc::clone(whole);
        }
        let sources = self.sources.get_or_init(|| StageSources::of(whole));
        let name = &self.pipeline.stages[stage].name;
        match sources.as_ref().and_then(|s| s.text_of(whole, name)) {
            Some(text) => Arc::new(text),
            None => Arc::clone(whole),
        }
    }

    /// Whether any stage runs the Python toolchain.
    pub(crate) fn needs_python(&self) -> bool {
        self.pipeline
            .stages
            .iter()
            .any(|stage| stage.kind.requirements().tool == Tool::Python)
    }

    /// The facts a stage is keyed and run with: the attached host, or for a stage that
    /// names its GPU model (`gpu = ...`) and uses an accelerator, that target (and the
    /// accelerator's declared version) instead of what the probe found, wherever the
    /// stage runs.
    pub(crate) fn stage_facts(&self, stage: usize) -> std::borrow::Cow<'_, MachineFacts> {
        let spec = &self.pipeline.stages[stage];
        let accelerator = spec.kind.requirements().accelerator.accelerator();
        match (&spec.placement.gpu, accelerator) {
            (Some(gpu), Some(accelerator)) => {
                let version = spec.placement.platform.get(accelerator.id);
                let target =
                    self.facts
                        .for_declared_gpu(accelerator.id, gpu, version.map(String::as_str));
                std::borrow::Cow::Owned(target)
            }
            _ => std::borrow::Cow::Borrowed(&self.facts),
        }
    }

    /// Whether the stage runs on the remote executor in this build.
    pub(crate) fn runs_remotely(&self, stage: usize) -> bool {
        self.remote.contains(&stage)
    }

    /// The toolchain of the attached host.
    pub(crate) fn toolchain(&self) -> &Toolchain {
        &self.facts.toolchain
    }

    pub(crate) fn state_log_path(&self, stage: usize) -> PathBuf {
        self.state().log_path(&self.pipeline.stages[stage].name)
    }

    pub(crate) fn temp_root(&self) -> PathBuf {
        self.state().temp_root()
    }

    pub(super) fn state(&self) -> std::sync::MutexGuard<'_, StateStore> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The last recorded duration of a stage, in ms.
    pub(crate) fn last_duration_ms(&self, stage: usize) -> Option<u64> {
        self.state()
            .last_duration_ms(&self.pipeline.stages[stage].name)
    }

    /// The published outputs of a stage's last successful run.
    pub(crate) fn recorded_outputs(&self, stage: usize) -> Vec<OutputRecord> {
        self.state()
            .built(&self.pipeline.stages[stage].name)
            .map(|r| r.outputs.clone())
            .unwrap_or_default()
    }

    /// The message of the stage's last run, if it failed after its last success.
    pub(crate) fn last_failure(&self, stage: usize) -> Option<String> {
        self.state()
            .failed(&self.pipeline.stages[stage].name)
            .map(|f| f.message.clone())
    }

    /// Saves the stat cache and compacts the record log. Both are optimizations (the
    /// records are already on disk), so a failure is a warning, not a failed build.
    pub(super) fn persist_caches(&self) -> Vec<String> {
        let mut state = self.state();
        let path = state.stat_cache_path();
        let mut warnings = Vec::new();
        if let Err(e) = self.stats.save(&path) {
            warnings.push(format!(
                "cannot save the stat cache {}: {e}; the next build reads every file again to check it",
                path.display()
            ));
        }
        if let Err(e) = state.compact_if_large() {
            warnings.push(format!(
                "cannot compact the record log: {e}; it is compacted next time"
            ));
        }
        warnings
    }
}

/// `[toolchain] python`, or `python3` on PATH, identified by its path only: the toolchain
/// of a project whose caller attached none.
pub(crate) fn default_toolchain(pipeline: &Pipeline) -> Toolchain {
    let python = pipeline
        .toolchain
        .python
        .clone()
        .unwrap_or_else(|| PathBuf::from("python3"));
    Toolchain {
        identity: format!("python:{}", python.display()),
        python,
    }
}

/// Source inputs (not produced by a stage) must exist before anything runs.
fn check_sources_exist(pipeline: &Pipeline, graph: &StageGraph) -> Result<(), PipelineError> {
    for (index, stage) in pipeline.stages.iter().enumerate() {
        for ((key, input), named) in graph.inputs(index).iter().zip(stage.kind.inputs()) {
            if let ResolvedInput::Source(path) = input
                && std::fs::symlink_metadata(pipeline.dir.join(path)).is_err()
            {
                return Err(pipeline
                    .source
                    .error(named.span.clone(), format!("input `{key}` of stage `{}` does not exist: {}", stage.name, path.display()))
                    .with_label("no such file or directory")
                    .with_help("create it, fix the path (relative to the pipeline file), or refer to a stage's output with \"@stage\"")
                    .into());
            }
        }
    }
    Ok(())
}

/// Two pipeline files in one directory with the same name would share a state directory:
/// refused while the file that last built there still exists and still has that name.
pub(super) fn check_state_owner(pipeline: &Pipeline, kinds: Registry) -> Result<(), BuildError> {
    let Some(owner) = crate::state::owner(&pipeline.state_dir()) else {
        return Ok(());
    };
    if Some(owner.as_str()) == pipeline_file_name(pipeline).as_deref() {
        return Ok(());
    }
    let other = pipeline.dir.join(&owner);
    match Pipeline::load(&other, kinds) {
        Ok(other_pipeline) if other_pipeline.name == pipeline.name => {
            Err(BuildError::SharedState {
                name: pipeline.name.clone(),
                first: other,
                second: pipeline.file.clone(),
            })
        }
        _ => Ok(()),
    }
}

pub(super) fn pipeline_file_name(pipeline: &Pipeline) -> Option<String> {
    Some(pipeline.file.file_name()?.to_string_lossy().into_owned())
}
