//! Graph rendering: the view types every format draws from, the helpers they share (ordering, layering, durations, status colours) and the dispatch to each renderer.

mod dot;
mod html;
mod json;
mod mermaid;
mod text;

use std::collections::{BTreeMap, BTreeSet};

/// What a graph rendering shows: one pipeline's stages, their edges and status.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct GraphView {
    pub pipeline: String,
    pub stages: Vec<StageView>, // caller gives them sorted by name; renderers must still sort to be deterministic
}

/// One stage of the pipeline as a rendering shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct StageView {
    pub name: String,   // [a-z0-9_-]+
    pub kind: String,   // "command", "export", "dataset", "quantize", "engine", "report"
    pub device: String, // "cpu", "cuda", "cuda:1"
    pub status: StageStatus,
    pub last_duration_ms: Option<u64>,
    pub deps: Vec<String>, // names of stages this one depends on (edge dep -> name)
    pub outputs: Vec<String>, // output paths relative to the pipeline file
    /// For a variant of a matrix stage: the stage it was declared as.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matrix_of: Option<String>,
    /// For a variant: its matrix values (a JSON object).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matrix: Option<serde_json::Value>,
    /// Why a stage that cannot build fails or cannot run here (empty otherwise).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

impl StageView {
    /// `engine: batch = 1, precision = "fp16"` for a variant of a matrix stage.
    pub(crate) fn matrix_text(&self) -> Option<String> {
        let base = self.matrix_of.as_ref()?;
        let values = self
            .matrix
            .as_ref()
            .and_then(|m| m.as_object())
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k} = {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        Some(format!("{base}: {values}"))
    }
}

/// The matrix stages of a view and their variants (indexes into `stages`), by name.
pub(crate) fn matrix_groups(stages: &[StageView]) -> BTreeMap<&str, Vec<usize>> {
    let mut groups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (index, stage) in stages.iter().enumerate() {
        if let Some(base) = &stage.matrix_of {
            groups.entry(base.as_str()).or_default().push(index);
        }
    }
    groups
}

/// Where a stage stands relative to its inputs and its last build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum StageStatus {
    UpToDate,
    Stale,
    NeverBuilt,
    Failed,
    WaitsOnUpstream,
    /// Cannot run on this machine (e.g. a TensorRT engine without TensorRT or a GPU).
    Unavailable,
}

impl StageStatus {
    /// Every status, in the order legends list them.
    pub(crate) const ALL: [StageStatus; 6] = [
        StageStatus::UpToDate,
        StageStatus::Stale,
        StageStatus::NeverBuilt,
        StageStatus::Failed,
        StageStatus::WaitsOnUpstream,
        StageStatus::Unavailable,
    ];

    /// The words a person reads for this status.
    pub(crate) fn label(self) -> &'static str {
        match self {
            StageStatus::UpToDate => "up to date",
            StageStatus::Stale => "stale",
            StageStatus::NeverBuilt => "never built",
            StageStatus::Failed => "failed",
            StageStatus::WaitsOnUpstream => "waits on upstream",
            StageStatus::Unavailable => "unavailable here",
        }
    }

    /// An identifier-safe name (`[a-z_]+`), used for CSS and mermaid class names.
    pub(crate) fn slug(self) -> &'static str {
        match self {
            StageStatus::UpToDate => "up_to_date",
            StageStatus::Stale => "stale",
            StageStatus::NeverBuilt => "never_built",
            StageStatus::Failed => "failed",
            StageStatus::WaitsOnUpstream => "waits_on_upstream",
            StageStatus::Unavailable => "unavailable",
        }
    }

    /// The colours every graphical format paints this status with.
    pub(crate) fn style(self) -> StatusStyle {
        let (fill, stroke, text) = match self {
            StageStatus::UpToDate => ("#2e7d32", "#1b5e20", "#ffffff"),
            StageStatus::Stale => ("#ffb300", "#c68400", "#212121"),
            StageStatus::NeverBuilt => ("#bdbdbd", "#757575", "#212121"),
            StageStatus::Failed => ("#c62828", "#8e0000", "#ffffff"),
            StageStatus::WaitsOnUpstream => ("#81d4fa", "#0288d1", "#212121"),
            StageStatus::Unavailable => ("#eceff1", "#90a4ae", "#546e7a"),
        };
        StatusStyle { fill, stroke, text }
    }
}

/// Fill, border and text colour (CSS hex) for one status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StatusStyle {
    pub(crate) fill: &'static str,
    pub(crate) stroke: &'static str,
    pub(crate) text: &'static str,
}

/// The output formats `pochi graph` can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GraphFormat {
    Text,
    Dot,
    Mermaid,
    Json,
    Html,
}

/// Renders `view` in `format`. The result is deterministic whatever the order of the
/// stages and deps given, and always ends with a newline.
pub(crate) fn render(view: &GraphView, format: GraphFormat) -> String {
    match format {
        GraphFormat::Text => text::render(view),
        GraphFormat::Dot => dot::render(view),
        GraphFormat::Mermaid => mermaid::render(view),
        GraphFormat::Json => json::render(view),
        GraphFormat::Html => html::render(view),
    }
}

/// A copy of `view` with stages sorted by name and each stage's deps sorted and deduplicated.
/// Outputs keep their declared order.
pub(crate) fn normalized(view: &GraphView) -> GraphView {
    let mut stages = view.stages.clone();
    stages.sort_by(|a, b| a.name.cmp(&b.name));
    for stage in &mut stages {
        stage.deps.sort();
        stage.deps.dedup();
    }
    GraphView {
        pipeline: view.pipeline.clone(),
        stages,
    }
}

/// Formats a duration: "-" when unknown, then "350ms", "1.2s", "2m03s", "1h02m03s".
pub(crate) fn format_duration(ms: Option<u64>) -> String {
    let Some(ms) = ms else {
        return "-".to_string();
    };
    let secs = ms / 1000;
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{secs}.{}s", (ms % 1000) / 100),
        60_000..3_600_000 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m{:02}s", secs / 3600, (secs / 60) % 60, secs % 60),
    }
}

/// For each stage (by index), the indices of its deps that name a stage in `stages`.
/// Deps naming no known stage are left out: they cannot take part in ordering or layout.
pub(crate) fn known_dep_indices(stages: &[StageView]) -> Vec<Vec<usize>> {
    let index_of: BTreeMap<&str, usize> = stages
        .iter()
        .enumerate()
        .map(|(index, stage)| (stage.name.as_str(), index))
        .collect();
    stages
        .iter()
        .map(|stage| {
            let mut deps: Vec<usize> = stage
                .deps
                .iter()
                .filter_map(|dep| index_of.get(dep.as_str()).copied())
                .collect();
            deps.sort_unstable();
            deps.dedup();
            deps
        })
        .collect()
}

/// Stage indices in topological order (deps first), ties broken by the lower index.
/// `stages` must be sorted by name, so ties are broken by name. Should the graph hold a
/// cycle after all, the stages caught in it are appended by index rather than lost.
pub(crate) fn topological_order(stages: &[StageView]) -> Vec<usize> {
    let deps = known_dep_indices(stages);
    let mut dependents = vec![Vec::new(); stages.len()];
    for (index, stage_deps) in deps.iter().enumerate() {
        for &dep in stage_deps {
            dependents[dep].push(index);
        }
    }
    let mut waiting_on: Vec<usize> = deps.iter().map(Vec::len).collect();
    let mut ready: BTreeSet<usize> = (0..stages.len()).filter(|&i| waiting_on[i] == 0).collect();
    let mut order = Vec::with_capacity(stages.len());
    while let Some(next) = ready.pop_first() {
        order.push(next);
        for &dependent in &dependents[next] {
            waiting_on[dependent] -= 1;
            if waiting_on[dependent] == 0 {
                ready.insert(dependent);
            }
        }
    }
    let placed: BTreeSet<usize> = order.iter().copied().collect();
    order.extend((0..stages.len()).filter(|i| !placed.contains(i)));
    order
}

/// Each stage's layer: 0 for stages with no known deps, else one more than the deepest dep
/// (the longest path from a root).
pub(crate) fn layers(stages: &[StageView]) -> Vec<usize> {
    let deps = known_dep_indices(stages);
    let mut layer = vec![0; stages.len()];
    for index in topological_order(stages) {
        layer[index] = deps[index]
            .iter()
            .map(|&dep| layer[dep] + 1)
            .max()
            .unwrap_or(0);
    }
    layer
}

/// Test fixtures shared by every renderer's tests.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::{GraphView, StageStatus, StageView};

    pub(crate) fn stage(
        name: &str,
        kind: &str,
        device: &str,
        status: StageStatus,
        last_duration_ms: Option<u64>,
        deps: &[&str],
    ) -> StageView {
        StageView {
            name: name.to_string(),
            kind: kind.to_string(),
            device: device.to_string(),
            status,
            last_duration_ms,
            deps: deps.iter().map(|dep| dep.to_string()).collect(),
            outputs: vec![format!("build/{name}.out")],
            matrix_of: None,
            matrix: None,
            problems: Vec::new(),
        }
    }

    /// export -> quantize -> engine, and export -> engine directly.
    pub(crate) fn diamond() -> GraphView {
        GraphView {
            pipeline: "demo".to_string(),
            stages: vec![
                stage(
                    "engine",
                    "engine",
                    "cuda:1",
                    StageStatus::NeverBuilt,
                    None,
                    &["quantize", "export"],
                ),
                stage(
                    "export",
                    "export",
                    "cpu",
                    StageStatus::UpToDate,
                    Some(1234),
                    &[],
                ),
                stage(
                    "quantize",
                    "quantize",
                    "cuda",
                    StageStatus::Stale,
                    Some(350),
                    &["export"],
                ),
            ],
        }
    }

    /// A wider graph using every status, a name with '-', and two roots.
    pub(crate) fn wide() -> GraphView {
        GraphView {
            pipeline: "resnet-deploy".to_string(),
            stages: vec![
                stage(
                    "calib-data",
                    "dataset",
                    "cpu",
                    StageStatus::UpToDate,
                    Some(800),
                    &[],
                ),
                stage(
                    "engine-fp16",
                    "engine",
                    "cuda:1",
                    StageStatus::Failed,
                    Some(123_456),
                    &["onnx"],
                ),
                stage(
                    "engine-int8",
                    "engine",
                    "cuda",
                    StageStatus::WaitsOnUpstream,
                    None,
                    &["quantized"],
                ),
                stage(
                    "onnx",
                    "export",
                    "cpu",
                    StageStatus::Stale,
                    Some(5_000),
                    &["train"],
                ),
                stage(
                    "quantized",
                    "quantize",
                    "cuda",
                    StageStatus::NeverBuilt,
                    None,
                    &["onnx", "calib-data"],
                ),
                stage(
                    "report",
                    "report",
                    "cpu",
                    StageStatus::Unavailable,
                    None,
                    &["engine-int8", "engine-fp16", "train"],
                ),
                stage(
                    "train",
                    "command",
                    "cuda",
                    StageStatus::UpToDate,
                    Some(3_723_000),
                    &[],
                ),
            ],
        }
    }

    /// The same view with stages in a different order and every stage's deps reversed.
    pub(crate) fn shuffled(view: &GraphView) -> GraphView {
        let mut stages = view.stages.clone();
        stages.reverse();
        let middle = stages.len() / 2;
        stages.rotate_left(middle);
        for stage in &mut stages {
            stage.deps.reverse();
        }
        GraphView {
            pipeline: view.pipeline.clone(),
            stages,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{diamond, shuffled, wide};
    use super::*;

    const ALL_FORMATS: [GraphFormat; 5] = [
        GraphFormat::Text,
        GraphFormat::Dot,
        GraphFormat::Mermaid,
        GraphFormat::Json,
        GraphFormat::Html,
    ];

    #[test]
    fn durations_format_by_magnitude() {
        assert_eq!(format_duration(None), "-");
        assert_eq!(format_duration(Some(0)), "0ms");
        assert_eq!(format_duration(Some(350)), "350ms");
        assert_eq!(format_duration(Some(999)), "999ms");
        assert_eq!(format_duration(Some(1_000)), "1.0s");
        assert_eq!(format_duration(Some(1_234)), "1.2s");
        assert_eq!(format_duration(Some(59_999)), "59.9s");
        assert_eq!(format_duration(Some(60_000)), "1m00s");
        assert_eq!(format_duration(Some(123_456)), "2m03s");
        assert_eq!(format_duration(Some(3_723_000)), "1h02m03s");
    }

    #[test]
    fn labels_match_the_spec() {
        let labels: Vec<&str> = StageStatus::ALL.iter().map(|s| s.label()).collect();
        assert_eq!(
            labels,
            [
                "up to date",
                "stale",
                "never built",
                "failed",
                "waits on upstream",
                "unavailable here",
            ]
        );
    }

    #[test]
    fn every_format_is_deterministic_under_shuffling() {
        for view in [diamond(), wide()] {
            let other = shuffled(&view);
            assert_ne!(
                view.stages.iter().map(|s| &s.name).collect::<Vec<_>>(),
                other.stages.iter().map(|s| &s.name).collect::<Vec<_>>(),
                "the shuffle must actually change the order"
            );
            for format in ALL_FORMATS {
                assert_eq!(render(&view, format), render(&other, format), "{format:?}");
            }
        }
    }

    #[test]
    fn every_format_ends_with_a_newline() {
        for format in ALL_FORMATS {
            assert!(render(&wide(), format).ends_with('\n'), "{format:?}");
        }
    }

    #[test]
    fn empty_pipeline_renders_in_every_format() {
        let view = GraphView {
            pipeline: "empty".to_string(),
            stages: Vec::new(),
        };
        for format in ALL_FORMATS {
            assert!(render(&view, format).contains("empty"), "{format:?}");
        }
    }

    #[test]
    fn topological_order_puts_deps_first_and_breaks_ties_by_name() {
        let view = normalized(&wide());
        let names: Vec<&str> = topological_order(&view.stages)
            .into_iter()
            .map(|i| view.stages[i].name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "calib-data",
                "train",
                "onnx",
                "engine-fp16",
                "quantized",
                "engine-int8",
                "report"
            ]
        );
    }

    #[test]
    fn layers_follow_the_longest_path_from_a_root() {
        let view = normalized(&diamond());
        // engine, export, quantize
        assert_eq!(layers(&view.stages), [2, 0, 1]);
    }

    #[test]
    fn unknown_deps_and_cycles_do_not_lose_stages() {
        let mut view = diamond();
        view.stages[1].deps.push("engine".to_string()); // export <- engine: a cycle
        view.stages[2].deps.push("missing".to_string());
        let view = normalized(&view);
        let mut order = topological_order(&view.stages);
        order.sort_unstable();
        assert_eq!(order, [0, 1, 2]);
        assert_eq!(layers(&view.stages).len(), 3);
    }
}
