//! Hidden commands for the benchmark: `hash` (blake3 as pochi computes it) and
//! `bench-internal` (graph construction at scale, a stat-cache hit).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::Args;

use super::output::{failure, show};
use crate::fingerprint::{StatCache, hash_file};
use crate::graph::StageGraph;

#[derive(Debug, Args)]
pub(super) struct BenchArgs {
    /// Parse and build the graph of a generated pipeline with this many stages.
    #[arg(long, value_name = "N")]
    graph: Option<usize>,
    /// Time a stat-cache hit on this file.
    #[arg(long, value_name = "FILE")]
    stat_hit: Option<PathBuf>,
}

pub(super) fn hash(files: &[PathBuf]) -> miette::Result<ExitCode> {
    for file in files {
        let digest = hash_file(file).map_err(|e| {
            failure(
                format!("cannot hash {}: {e}", file.display()),
                "check the path",
            )
        })?;
        show!("{}  {}", digest.to_hex(), file.display());
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn bench(args: BenchArgs) -> miette::Result<ExitCode> {
    if let Some(stages) = args.graph {
        bench_graph(stages)?;
    }
    if let Some(file) = args.stat_hit {
        bench_stat_hit(&file)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// A chain of `stages` command stages, each reading the previous one's output.
fn chain_pipeline(stages: usize) -> String {
    let mut text = String::from("[pipeline]\nname = \"bench\"\n");
    for index in 0..stages {
        let input = if index == 0 {
            "\"src.txt\"".to_string()
        } else {
            format!("\"@s{:06}\"", index - 1)
        };
        text.push_str(&format!(
            "\n[stages.s{index:06}]\nkind = \"command\"\nrun = [\"cp\", \"{{inputs.src}}\", \"{{outputs.out}}\"]\ninputs = {{ src = {input} }}\noutputs = {{ out = \"out/s{index:06}.txt\" }}\n"
        ));
    }
    text
}

fn bench_graph(stages: usize) -> miette::Result<()> {
    let text = chain_pipeline(stages);
    let started = Instant::now();
    let pipeline = crate::pipeline::parse_pipeline(
        Path::new("/bench/pipeline.toml"),
        text,
        crate::kinds::KINDS,
    )?;
    let parsed = started.elapsed();
    let graph = StageGraph::build(&pipeline)?;
    let total = started.elapsed();
    show!(
        "graph construction: {} stages, parse {:.1} ms, graph {:.1} ms, total {:.1} ms",
        graph.len(),
        parsed.as_secs_f64() * 1e3,
        (total - parsed).as_secs_f64() * 1e3,
        total.as_secs_f64() * 1e3
    );
    Ok(())
}

fn bench_stat_hit(file: &Path) -> miette::Result<()> {
    let cache = StatCache::default();
    let root = Path::new("/");
    let absolute =
        std::path::absolute(file).map_err(|e| failure(e.to_string(), "check the path"))?;
    let cold = Instant::now();
    cache.digest(root, &absolute).map_err(|e| {
        failure(
            format!("cannot hash {}: {e}", file.display()),
            "check the path",
        )
    })?;
    let cold = cold.elapsed();
    if !cache.contains(&absolute) {
        return Err(failure(
            format!(
                "{} was modified less than 2 s ago, so its digest is not cached",
                file.display()
            ),
            "wait two seconds and run again",
        ));
    }
    const ROUNDS: u32 = 1000;
    let started = Instant::now();
    for _ in 0..ROUNDS {
        cache
            .digest(root, &absolute)
            .map_err(|e| failure(e.to_string(), "check the path"))?;
    }
    let hit = started.elapsed() / ROUNDS;
    show!(
        "stat-cache: {} bytes, first digest {:.1} ms, hit {:.1} us (mean of {ROUNDS})",
        std::fs::metadata(&absolute).map(|m| m.len()).unwrap_or(0),
        cold.as_secs_f64() * 1e3,
        hit.as_secs_f64() * 1e6
    );
    Ok(())
}
