//! The properties every fuzzed pipeline document must keep, shared by the suite test
//! (tests/fuzz_pipeline.rs) and the `cargo fuzz` target (fuzz/fuzz_targets/pipeline.rs):
//! parsing and building give a graph or an error, every error renders as the CLI renders
//! it (non-empty, pointing into the file), a graph error is the same on every build, and a
//! built graph is a valid order of all stages.

use std::path::Path;

use miette::Diagnostic;
use pochi::graph::StageGraph;
use pochi::pipeline::{Pipeline, parse_pipeline};

/// What a document gave.
#[derive(Debug, Clone, Copy)]
pub enum Outcome {
    Graph,
    PipelineError,
    GraphError,
}

/// What a document gave, and whether its rendered error holds a raw control character
/// (an escape sequence a terminal would obey; issue 15 asks for them to be escaped). The
/// latter is counted, not a failure, until pochi escapes them.
pub struct Checked {
    pub outcome: Outcome,
    pub raw_control: bool,
}

/// Parses `file` (already holding `bytes`), builds its graph and checks what comes back.
/// Text goes through `parse_pipeline`, bytes that are not UTF-8 through `Pipeline::load`
/// (which must refuse them).
pub fn check(file: &Path, bytes: &[u8]) -> Result<Checked, String> {
    let text = String::from_utf8_lossy(bytes).into_owned();
    let parsed = match std::str::from_utf8(bytes) {
        Ok(text) => parse_pipeline(file, text.to_string(), pochi::kinds::KINDS),
        Err(_) => Pipeline::load(file, pochi::kinds::KINDS),
    };
    let pipeline = match parsed {
        Ok(pipeline) => pipeline,
        Err(error) => {
            let raw_control = check_error(&error, &text)?;
            check_report(miette::Report::new(error))?;
            return Ok(Checked {
                outcome: Outcome::PipelineError,
                raw_control,
            });
        }
    };
    if std::str::from_utf8(bytes).is_err() {
        return Err("a file that is not UTF-8 was accepted".into());
    }
    for stage in &pipeline.stages {
        if !pochi::pipeline::parse_api::is_valid_name(&stage.name) {
            return Err(format!("stage name {:?} was accepted", stage.name));
        }
    }
    match StageGraph::build(&pipeline) {
        Ok(graph) => {
            check_graph(&pipeline, &graph)?;
            Ok(Checked {
                outcome: Outcome::Graph,
                raw_control: false,
            })
        }
        Err(error) => {
            let raw_control = check_error(&error, &text)?;
            // The same pipeline gives the same error every time (as the parser promises
            // for stages parsed in parallel): build it twice more.
            let first = error.to_string();
            for _ in 0..2 {
                let again = StageGraph::build(&pipeline)
                    .err()
                    .map(|e| e.to_string())
                    .unwrap_or_default();
                if again != first {
                    return Err(format!(
                        "the same pipeline gives different graph errors: `{first}`, then `{again}`"
                    ));
                }
            }
            check_report(miette::Report::new(error))?;
            Ok(Checked {
                outcome: Outcome::GraphError,
                raw_control,
            })
        }
    }
}

/// An error has a message, its labels lie inside the file on character boundaries, and it
/// renders with the CLI's handler (`cli::output::print_error`) naming the file.
fn check_error(error: &dyn Diagnostic, text: &str) -> Result<bool, String> {
    let message = error.to_string();
    if std::env::var_os("POCHI_FUZZ_VERBOSE").is_some() {
        eprintln!("error: {}", message.lines().next().unwrap_or(""));
    }
    if message.trim().is_empty() {
        return Err(format!("an error with an empty message: {error:?}"));
    }
    let mut labelled = false;
    for label in error.labels().into_iter().flatten() {
        labelled = true;
        let (start, end) = (label.offset(), label.offset() + label.len());
        if end > text.len() || !text.is_char_boundary(start) || !text.is_char_boundary(end) {
            return Err(format!(
                "error `{message}` has the span {start}..{end} outside the file's {} bytes or inside a character",
                text.len()
            ));
        }
    }
    // Exactly what the CLI prints (without colour).
    let rendered = pochi::cli::render_error(error, false);
    if rendered.trim().is_empty() {
        return Err(format!("error `{message}` renders empty"));
    }
    if labelled && !rendered.contains("pipeline.toml:") {
        return Err(format!(
            "error `{message}` renders without pointing at pipeline.toml:LINE:COL:\n{rendered}"
        ));
    }
    // The CLI escapes control characters (an ESC from a file must not reach a terminal).
    if rendered
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(format!(
            "error `{message}` renders with a raw control character:\n{rendered:?}"
        ));
    }
    Ok(false)
}

/// The error as the CLI's `main` gets it (a `miette::Report`), rendered as it prints it,
/// with colour on this time. (miette's own `{:?}` rendering, which pochi never uses, panics
/// on a label past column 65,535; `render_error` shows such a label as file:line:col.)
fn check_report(report: miette::Report) -> Result<(), String> {
    let diagnostic: &dyn Diagnostic = report.as_ref();
    let debug = pochi::cli::render_error(diagnostic, true);
    if debug.trim().is_empty() {
        return Err(format!("`{report}` renders empty through miette::Report"));
    }
    Ok(())
}

/// A built graph covers every stage once, in an order where dependencies come first.
pub fn check_graph(pipeline: &Pipeline, graph: &StageGraph) -> Result<(), String> {
    let n = pipeline.stages.len();
    if graph.len() != n || graph.topological().len() != n {
        return Err(format!(
            "graph of {} stages (order of {}) for {n} stages",
            graph.len(),
            graph.topological().len()
        ));
    }
    let mut position = vec![usize::MAX; n];
    for (at, &stage) in graph.topological().iter().enumerate() {
        if stage >= n || position[stage] != usize::MAX {
            return Err(format!(
                "topological order {:?} is not a permutation",
                graph.topological()
            ));
        }
        position[stage] = at;
    }
    for stage in 0..n {
        for &dep in graph.deps(stage) {
            if dep == stage || position[dep] >= position[stage] {
                return Err(format!(
                    "stage `{}` comes before its dependency `{}`",
                    pipeline.stages[stage].name, pipeline.stages[dep].name
                ));
            }
        }
        if graph.index(&pipeline.stages[stage].name) != Some(stage) {
            return Err(format!(
                "stage `{}` is not found by name",
                pipeline.stages[stage].name
            ));
        }
    }
    Ok(())
}
