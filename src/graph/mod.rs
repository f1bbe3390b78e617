//! The stage graph: references resolved into edges, checked (unknown names, cycles,
//! clashing or overlapping outputs), then sealed into a read-only `StageGraph`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use petgraph::algo::{tarjan_scc, toposort};
use petgraph::graph::{DiGraph, NodeIndex};

use crate::pipeline::{InputSource, Pipeline, STATE_ROOT, SpanError, suggest};

/// A stage's input with its reference resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolvedInput {
    /// A file or directory that no stage produces.
    Source(PathBuf),
    /// Output `output` of stage `stage`, at `path`.
    Upstream {
        stage: usize,
        output: usize,
        path: PathBuf,
    },
}

impl ResolvedInput {
    pub fn path(&self) -> &Path {
        match self {
            ResolvedInput::Source(path) | ResolvedInput::Upstream { path, .. } => path,
        }
    }
}

/// Why a pipeline's stages do not form a valid graph.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[error(transparent)]
#[diagnostic(transparent)]
pub struct GraphError(#[from] SpanError);

/// The sealed graph of one pipeline; stage indexes are those of `Pipeline::stages`.
#[derive(Debug)]
pub struct StageGraph {
    deps: Vec<Vec<usize>>,
    dependents: Vec<Vec<usize>>,
    topo: Vec<usize>,
    by_name: HashMap<String, usize>,
    /// A matrix stage's name -> its variants, in name order.
    variants: HashMap<String, Vec<usize>>,
    inputs: Vec<Vec<(String, ResolvedInput)>>,
}

impl StageGraph {
    /// Resolves references and checks the pipeline's structure.
    pub fn build(pipeline: &Pipeline) -> Result<StageGraph, GraphError> {
        let by_name: HashMap<String, usize> = pipeline
            .stages
            .iter()
            .enumerate()
            .map(|(index, stage)| (stage.name.clone(), index))
            .collect();
        let mut variants: HashMap<String, Vec<usize>> = HashMap::new();
        for (index, stage) in pipeline.stages.iter().enumerate() {
            if let Some(matrix) = &stage.matrix {
                variants.entry(matrix.base.clone()).or_default().push(index);
            }
        }
        let resolver = Resolver {
            pipeline,
            by_name: &by_name,
            variants: &variants,
        };
        let mut deps = Vec::with_capacity(pipeline.stages.len());
        let mut inputs = Vec::with_capacity(pipeline.stages.len());
        for stage in &pipeline.stages {
            let (stage_inputs, stage_deps) = resolver.stage(stage)?;
            inputs.push(stage_inputs);
            deps.push(stage_deps);
        }
        check_outputs(pipeline)?;
        let topo = topological_order(pipeline, &deps)?;
        let mut dependents = vec![Vec::new(); deps.len()];
        for (stage, stage_deps) in deps.iter().enumerate() {
            for &dep in stage_deps {
                dependents[dep].push(stage);
            }
        }
        Ok(StageGraph {
            deps,
            dependents,
            topo,
            by_name,
            variants,
            inputs,
        })
    }

    pub fn len(&self) -> usize {
        self.deps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.deps.is_empty()
    }

    /// The stages `stage` depends on (through references and `needs`), sorted.
    pub fn deps(&self, stage: usize) -> &[usize] {
        &self.deps[stage]
    }

    pub fn dependents(&self, stage: usize) -> &[usize] {
        &self.dependents[stage]
    }

    /// Stages in an order where every stage follows its dependencies.
    pub fn topological(&self) -> &[usize] {
        &self.topo
    }

    pub fn index(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// The stages a name selects (`--target`, `explain`): the stage of that name, or every
    /// variant of the matrix stage declared with it; empty when there is none.
    pub fn select(&self, name: &str) -> Vec<usize> {
        match self.by_name.get(name) {
            Some(&index) => vec![index],
            None => self.variants.get(name).cloned().unwrap_or_default(),
        }
    }

    /// The stage's inputs in declaration order, resolved.
    pub fn inputs(&self, stage: usize) -> &[(String, ResolvedInput)] {
        &self.inputs[stage]
    }

    /// `targets` and everything they depend on.
    pub fn closure(&self, targets: &[usize]) -> Vec<bool> {
        let mut wanted = vec![false; self.len()];
        let mut stack: Vec<usize> = targets.to_vec();
        while let Some(stage) = stack.pop() {
            if !std::mem::replace(&mut wanted[stage], true) {
                stack.extend(&self.deps[stage]);
            }
        }
        wanted
    }
}

/// A stage's resolved inputs and its dependencies.
type Resolved = (Vec<(String, ResolvedInput)>, Vec<usize>);

struct Resolver<'a> {
    pipeline: &'a Pipeline,
    by_name: &'a HashMap<String, usize>,
    variants: &'a HashMap<String, Vec<usize>>,
}

impl Resolver<'_> {
    fn stage(&self, stage: &crate::pipeline::Stage) -> Result<Resolved, SpanError> {
        let mut deps = Vec::new();
        let mut inputs = Vec::with_capacity(stage.kind.inputs().len());
        for input in stage.kind.inputs() {
            let resolved = match &input.source {
                InputSource::Path(path) => ResolvedInput::Source(path.clone()),
                InputSource::Output {
                    stage: upstream,
                    key,
                } => {
                    let resolved = self.reference(upstream, key.as_deref(), input.span.clone())?;
                    if let ResolvedInput::Upstream { stage, .. } = resolved {
                        deps.push(stage);
                    }
                    resolved
                }
            };
            inputs.push((input.key.clone(), resolved));
        }
        for need in &stage.needs {
            deps.push(self.stage_index(&need.value, need.span.clone())?);
        }
        deps.sort_unstable();
        deps.dedup();
        Ok((inputs, deps))
    }

    fn stage_index(&self, name: &str, span: std::ops::Range<usize>) -> Result<usize, SpanError> {
        self.by_name.get(name).copied().ok_or_else(|| {
            if let Some(error) = self.unknown_variant(name, span.clone()) {
                return error;
            }
            let names = self.pipeline.stages.iter().map(|s| s.name.as_str());
            let help = match suggest::nearest(name, names) {
                Some(best) => format!("did you mean `{best}`?"),
                None => "no stage of this pipeline has that name".to_string(),
            };
            self.pipeline
                .source
                .error(span, format!("unknown stage `{name}`"))
                .with_label("no such stage")
                .with_help(help)
        })
    }

    /// `engine-fp32` where `engine` is a matrix stage without that variant: the error names
    /// the nearest variant and lists them all.
    fn unknown_variant(&self, name: &str, span: std::ops::Range<usize>) -> Option<SpanError> {
        let (base, variants) = self
            .variants
            .iter()
            .filter(|(base, _)| {
                name.strip_prefix(base.as_str())
                    .is_some_and(|rest| rest.starts_with('-'))
            })
            .max_by_key(|(base, _)| base.len())?;
        let names: Vec<&str> = variants
            .iter()
            .map(|&v| self.pipeline.stages[v].name.as_str())
            .collect();
        let nearest = suggest::nearest(name, names.iter().copied())
            .map(|best| format!("did you mean `{best}`? "))
            .unwrap_or_default();
        Some(
            self.pipeline
                .source
                .error(span, format!("stage `{base}` has no variant `{name}`"))
                .with_label("no such variant")
                .with_help(format!("{nearest}its variants are: {}", names.join(", "))),
        )
    }

    fn reference(
        &self,
        name: &str,
        key: Option<&str>,
        span: std::ops::Range<usize>,
    ) -> Result<ResolvedInput, SpanError> {
        let stage = self.stage_index(name, span.clone())?;
        let outputs = self.pipeline.stages[stage].kind.outputs();
        let found = match key {
            None => outputs.first().map(|o| (0, o)),
            Some(key) => outputs.iter().enumerate().find(|(_, o)| o.key == key),
        };
        match found {
            Some((output, named)) => Ok(ResolvedInput::Upstream {
                stage,
                output,
                path: named.path.clone(),
            }),
            None => {
                let keys: Vec<&str> = outputs.iter().map(|o| o.key.as_str()).collect();
                let (message, help) = match key {
                    None => (
                        format!("stage `{name}` declares no outputs"),
                        "a reference `@stage` needs the stage to declare an output".to_string(),
                    ),
                    Some(key) => (
                        format!("stage `{name}` has no output `{key}`"),
                        match suggest::nearest(key, keys.iter().copied()) {
                            Some(best) => format!("did you mean `@{name}.{best}`?"),
                            None => format!("its outputs are: {}", keys.join(", ")),
                        },
                    ),
                };
                Err(self.pipeline.source.error(span, message).with_help(help))
            }
        }
    }
}

/// Two stages may not declare the same output; outputs may not nest in one another or
/// overlap a source input (which would change behind pochi's back). Every check walks a
/// path's ancestors through hash maps, so it stays linear in the number of paths.
fn check_outputs(pipeline: &Pipeline) -> Result<(), SpanError> {
    let mut outputs: HashMap<&Path, (usize, usize)> = HashMap::new();
    let mut sources: HashMap<&Path, (usize, usize)> = HashMap::new();
    let pipeline_file = pipeline
        .file
        .strip_prefix(&pipeline.dir)
        .unwrap_or(&pipeline.file);
    for (stage_index, stage) in pipeline.stages.iter().enumerate() {
        for (index, output) in stage.kind.outputs().iter().enumerate() {
            check_not_reserved(pipeline, pipeline_file, &stage.name, output)?;
            if let Some(&(other_stage, other)) = outputs.get(output.path.as_path()) {
                let first = &pipeline.stages[other_stage];
                return Err(pipeline
                    .source
                    .error(
                        output.span.clone(),
                        format!(
                            "stages `{}` and `{}` both declare the output `{}`",
                            first.name,
                            stage.name,
                            output.path.display()
                        ),
                    )
                    .also(first.kind.outputs()[other].span.clone())
                    .with_help(
                        "each file is produced by one stage; give one of them another path",
                    ));
            }
            outputs.insert(&output.path, (stage_index, index));
        }
        for (index, input) in stage.kind.inputs().iter().enumerate() {
            if let InputSource::Path(path) = &input.source {
                sources.insert(path, (stage_index, index));
            }
        }
    }
    let output_of = |(stage, index): (usize, usize)| &pipeline.stages[stage].kind.outputs()[index];
    let input_of = |(stage, index): (usize, usize)| &pipeline.stages[stage].kind.inputs()[index];
    let overlap = |path: &Path, id: (usize, usize), input_path: &Path, input_id: (usize, usize)| {
        let (output, input) = (output_of(id), input_of(input_id));
        overlap_error(pipeline, path, output, id.0, input_path, input, input_id.0)
    };
    // In declaration order, not the map's: with several overlaps, the same file always
    // gives the same error (fuzzing found it varied from run to run).
    let mut in_order: Vec<(&Path, (usize, usize))> =
        outputs.iter().map(|(p, id)| (*p, *id)).collect();
    in_order.sort_unstable_by_key(|(_, id)| *id);
    for &(path, id) in &in_order {
        if let Some((&outer, &outer_id)) = ancestor_in(&outputs, path) {
            return Err(pipeline
                .source
                .error(
                    output_of(id).span.clone(),
                    format!(
                        "output `{}` overlaps output `{}` of stage `{}`",
                        path.display(),
                        outer.display(),
                        pipeline.stages[outer_id.0].name
                    ),
                )
                .also(output_of(outer_id).span.clone())
                .with_help("one output may not lie inside another; give them separate paths"));
        }
        let containing_input = sources
            .get_key_value(path)
            .or_else(|| ancestor_in(&sources, path));
        if let Some((&input_path, &input_id)) = containing_input {
            return Err(overlap(path, id, input_path, input_id));
        }
    }
    let mut sources_in_order: Vec<(&Path, (usize, usize))> =
        sources.iter().map(|(p, id)| (*p, *id)).collect();
    sources_in_order.sort_unstable_by_key(|(_, id)| *id);
    for &(input_path, input_id) in &sources_in_order {
        if let Some((&path, &id)) = ancestor_in(&outputs, input_path) {
            return Err(overlap(path, id, input_path, input_id));
        }
    }
    Ok(())
}

/// pochi's own files are never a stage's output: not its state directory (the lock, the
/// record log) and not the pipeline file.
fn check_not_reserved(
    pipeline: &Pipeline,
    pipeline_file: &Path,
    stage: &str,
    output: &crate::pipeline::NamedOutput,
) -> Result<(), SpanError> {
    let path = output.path.as_path();
    let (message, help) = if crate::pipeline::paths::overlaps(path, Path::new(STATE_ROOT)) {
        (
            format!(
                "output `{}` of stage `{stage}` is inside pochi's state directory `{STATE_ROOT}/`",
                path.display()
            ),
            "pochi keeps its lock, records and logs there; write the output elsewhere, e.g. under \"build/\"",
        )
    } else if crate::pipeline::paths::overlaps(path, pipeline_file) {
        (
            format!(
                "output `{}` of stage `{stage}` would overwrite the pipeline file `{}`",
                path.display(),
                pipeline_file.display()
            ),
            "give the output another path",
        )
    } else {
        return Ok(());
    };
    Err(pipeline
        .source
        .error(output.span.clone(), message)
        .with_label("reserved path")
        .with_help(help))
}

/// The nearest proper ancestor of `path` that is a key of `map`.
fn ancestor_in<'m, 'p, V>(
    map: &'m HashMap<&'p Path, V>,
    path: &Path,
) -> Option<(&'m &'p Path, &'m V)> {
    path.ancestors()
        .skip(1)
        .find_map(|ancestor| map.get_key_value(ancestor))
}

fn overlap_error(
    pipeline: &Pipeline,
    output_path: &Path,
    output: &crate::pipeline::NamedOutput,
    producer: usize,
    input_path: &Path,
    input: &crate::pipeline::NamedInput,
    reader: usize,
) -> SpanError {
    pipeline
        .source
        .error(
            output.span.clone(),
            format!(
                "output `{}` overlaps input `{}` of stage `{}`",
                output_path.display(),
                input_path.display(),
                pipeline.stages[reader].name
            ),
        )
        .also(input.span.clone())
        .with_help(format!(
            "refer to the output as \"@{}\" instead of by path, or move it out of the input",
            pipeline.stages[producer].name
        ))
}

fn topological_order(pipeline: &Pipeline, deps: &[Vec<usize>]) -> Result<Vec<usize>, SpanError> {
    let mut graph: DiGraph<usize, ()> = DiGraph::with_capacity(deps.len(), deps.len());
    let nodes: Vec<NodeIndex> = (0..deps.len()).map(|stage| graph.add_node(stage)).collect();
    for (stage, stage_deps) in deps.iter().enumerate() {
        for &dep in stage_deps {
            graph.add_edge(nodes[dep], nodes[stage], ());
        }
    }
    match toposort(&graph, None) {
        Ok(order) => Ok(order.into_iter().map(|node| graph[node]).collect()),
        Err(_) => Err(cycle_error(pipeline, &graph)),
    }
}

fn cycle_error(pipeline: &Pipeline, graph: &DiGraph<usize, ()>) -> SpanError {
    let component = tarjan_scc(graph)
        .into_iter()
        .filter(|c| c.len() > 1 || graph.contains_edge(c[0], c[0]))
        .min_by_key(|c| c.iter().map(|n| graph[*n]).min())
        .unwrap_or_default();
    let cycle = cycle_path(graph, &component);
    let names: Vec<&str> = cycle
        .iter()
        .map(|&stage| pipeline.stages[stage].name.as_str())
        .collect();
    let first = cycle.first().copied().unwrap_or(0);
    pipeline
        .source
        .error(
            pipeline.stages[first].span.clone(),
            format!(
                "the stages form a cycle: {} -> {}",
                names.join(" -> "),
                names.first().unwrap_or(&"?")
            ),
        )
        .with_label("this stage depends on itself through the cycle")
        .with_help("remove one of these references or `needs` entries")
}

/// The shortest cycle through the smallest stage of the strongly connected `component`
/// (a breadth-first search back to it), as stage indexes.
fn cycle_path(graph: &DiGraph<usize, ()>, component: &[NodeIndex]) -> Vec<usize> {
    let Some(&start) = component.iter().min_by_key(|n| graph[**n]) else {
        return Vec::new();
    };
    let mut parent: HashMap<NodeIndex, NodeIndex> = HashMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(node) = queue.pop_front() {
        let mut next: Vec<NodeIndex> = graph
            .neighbors(node)
            .filter(|n| component.contains(n))
            .collect();
        next.sort_by_key(|n| graph[*n]);
        for successor in next {
            if successor == start {
                let mut path = vec![graph[node]];
                let mut current = node;
                while current != start {
                    current = parent[&current];
                    path.push(graph[current]);
                }
                path.reverse();
                return path;
            }
            if successor != start && !parent.contains_key(&successor) {
                parent.insert(successor, node);
                queue.push_back(successor);
            }
        }
    }
    vec![graph[start]]
}
