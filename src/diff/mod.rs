//! `pochi diff`'s comparison: two builds' report summaries, the rules they are gated by,
//! and the text, Markdown and JSON that show them (`cli::diff` runs git and the builds).

pub(crate) mod compare;
pub(crate) mod render;
pub(crate) mod rule;

use std::collections::BTreeMap;

use serde::Serialize;

pub(crate) use compare::ReportDiff;
pub(crate) use rule::Rule;

/// The version of `pochi diff --json`'s schema (docs/diff.md).
pub(crate) const SCHEMA_VERSION: u32 = 1;

/// What `pochi diff` found, for every pipeline compared.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Diff {
    pub schema_version: u32,
    pub baseline: Baseline,
    /// Every rule applied: `--fail-on`, then the report stages' `gates`.
    pub rules: Vec<String>,
    /// No rule broken.
    pub ok: bool,
    pub pipelines: Vec<PipelineDiff>,
}

/// The revision compared against.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Baseline {
    /// As given (`HEAD`, `origin/main`).
    pub rev: String,
    /// The commit it names.
    pub commit: String,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct PipelineDiff {
    /// The pipeline file, as given.
    pub pipeline: String,
    /// The baseline's build in the temporary worktree: stages by status (`ran`,
    /// `restored`, `skipped`, ...).
    pub baseline_build: BTreeMap<String, usize>,
    /// The working tree's build.
    pub current_build: BTreeMap<String, usize>,
    /// The stages whose keys differ between the two revisions, with why.
    pub why: Vec<StageChange>,
    pub reports: Vec<ReportDiff>,
}

/// A stage whose key differs between the revisions.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct StageChange {
    pub stage: String,
    /// `changed`, `added` (only in the working tree) or `removed` (only at the revision).
    pub status: &'static str,
    /// `explain`'s reasons.
    pub reasons: Vec<String>,
}

impl Diff {
    /// The rules broken, over every report.
    pub(crate) fn broken(&self) -> usize {
        self.pipelines
            .iter()
            .flat_map(|p| &p.reports)
            .map(ReportDiff::broken)
            .sum()
    }
}

/// What stops a comparison, each with what to do about it.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum DiffError {
    #[error(
        "report stage `{stage}`: model `{model}` is new in the working tree (not at the revision)"
    )]
    ModelAdded { stage: String, model: String },
    #[error(
        "report stage `{stage}`: model `{model}` is at the revision but not in the working tree"
    )]
    ModelRemoved { stage: String, model: String },
    #[error("report stage `{stage}` is new in the working tree (not at the revision)")]
    ReportAdded { stage: String },
    #[error("report stage `{stage}` is at the revision but not in the working tree")]
    ReportRemoved { stage: String },
    #[error("report stage `{stage}`: cannot read {side} summary {path}: {reason}")]
    Summary {
        stage: String,
        side: &'static str,
        path: String,
        reason: String,
    },
}

impl DiffError {
    /// The help line.
    pub(crate) fn help(&self) -> String {
        match self {
            DiffError::ModelAdded { .. } | DiffError::ModelRemoved { .. } => "models are matched by name; compare against a revision with the same models, or rename the model back for the comparison".into(),
            DiffError::ReportAdded { .. } | DiffError::ReportRemoved { .. } => "report stages are matched by name (a renamed stage counts as removed and added); compare against a revision that has it".into(),
            DiffError::Summary { .. } => "the report stage's summary.json is missing or damaged; `pochi build` the pipeline and try again".into(),
        }
    }
}
