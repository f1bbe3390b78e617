//! `pochi toolchain [sync|info|path]`: shows and prepares the Python toolchain.

use super::output::{note, show};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::output::failure;
use crate::pipeline::Pipeline;
use crate::toolchain::{self, Choice, Managed, Mode, Resolved};

#[derive(Debug, Args)]
pub(super) struct ToolchainArgs {
    #[command(subcommand)]
    action: Option<Action>,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Create the managed environment if it is missing (or check your own interpreter).
    Sync(Common),
    /// Show the interpreter pochi uses, its versions and its identity (the default).
    Info {
        #[command(flatten)]
        common: Common,
        /// Print JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Print the interpreter's path (fails if the managed environment is not created yet).
    Path(Common),
}

#[derive(Debug, Args)]
struct Common {
    /// A pipeline file whose `[toolchain] python` (and needed packages) to take into account.
    #[arg(short, long, value_name = "FILE")]
    pipeline: Option<PathBuf>,
}

impl Common {
    fn load(&self) -> miette::Result<(Choice, Vec<&'static str>)> {
        match &self.pipeline {
            None => Ok((Choice::of(None), Vec::new())),
            Some(path) => {
                let pipeline = Pipeline::load(path, crate::kinds::KINDS)?;
                Ok((
                    super::facts::choice_of(&pipeline),
                    super::facts::needed_modules(&pipeline),
                ))
            }
        }
    }
}

pub(super) fn run(args: ToolchainArgs) -> miette::Result<ExitCode> {
    match args.action.unwrap_or(Action::Info {
        common: Common { pipeline: None },
        json: false,
    }) {
        Action::Sync(common) => {
            let (choice, needed) = common.load()?;
            let resolved = toolchain::resolve(
                &choice,
                &needed,
                Mode::Create,
                &mut super::output::note_line,
            )?;
            note!(
                "the toolchain is ready: {}",
                resolved.toolchain.python.display()
            );
            note!("identity: {}", resolved.toolchain.identity);
            Ok(ExitCode::SUCCESS)
        }
        Action::Path(common) => {
            let (choice, needed) = common.load()?;
            let resolved = toolchain::resolve(
                &choice,
                &needed,
                Mode::Inspect,
                &mut super::output::note_line,
            )?;
            if !resolved.toolchain.python.exists() {
                return Err(failure(
                    format!(
                        "the managed toolchain is not created yet ({})",
                        resolved.toolchain.python.display()
                    ),
                    "run `pochi toolchain sync` (or `pochi build`, which creates it when a stage needs it)",
                ));
            }
            show!("{}", resolved.toolchain.python.display());
            Ok(ExitCode::SUCCESS)
        }
        Action::Info { common, json } => {
            let (choice, needed) = common.load()?;
            let resolved = toolchain::resolve(
                &choice,
                &needed,
                Mode::Inspect,
                &mut super::output::note_line,
            )?;
            if json {
                show!(
                    "{}",
                    serde_json::to_string_pretty(&info_json(&resolved)).unwrap_or_default()
                );
            } else {
                print_info(&resolved);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn source(resolved: &Resolved) -> String {
    match &resolved.choice {
        Choice::Managed => format!("managed toolchain {}", toolchain::lock_hash()),
        Choice::Interpreter { from, .. } => format!("your interpreter, from {from}"),
    }
}

fn info_json(resolved: &Resolved) -> serde_json::Value {
    let managed = Managed::new(&resolved.cache, &toolchain::lock_hash());
    serde_json::json!({
        "schema_version": 1,
        "python": resolved.toolchain.python,
        "source": source(resolved),
        "managed": matches!(resolved.choice, Choice::Managed),
        "created": resolved.toolchain.python.exists(),
        "cache_dir": resolved.cache.root(),
        "lock_hash": toolchain::lock_hash(),
        "managed_root": managed.root,
        "identity": resolved.toolchain.identity,
        "remote_platform": {
            toolchain::PLATFORM_PROPERTY: toolchain::platform_value(&resolved.toolchain.identity),
        },
        "facts": resolved.facts,
    })
}

fn print_info(resolved: &Resolved) {
    let managed = Managed::new(&resolved.cache, &toolchain::lock_hash());
    show!("interpreter  {}", resolved.toolchain.python.display());
    show!("source       {}", source(resolved));
    if matches!(resolved.choice, Choice::Managed) {
        let state = if managed.exists() {
            "created"
        } else {
            "not created (run `pochi toolchain sync`)"
        };
        show!("state        {state}");
        show!("location     {}", managed.root.display());
        let pins = toolchain::locked_versions(toolchain::LOCK).len();
        show!(
            "lock         {} ({pins} packages pinned with hashes)",
            toolchain::lock_hash()
        );
    }
    show!("cache        {}", resolved.cache.root().display());
    show!(
        "workers      {}={} (the platform property of remote workers with this toolchain)",
        toolchain::PLATFORM_PROPERTY,
        toolchain::platform_value(&resolved.toolchain.identity)
    );
    if let Some(facts) = &resolved.facts {
        show!("python       {} {}", facts.implementation, facts.python);
        show!("packages");
        for (module, fact) in &facts.modules {
            let version = match (&fact.distribution, &fact.version) {
                (Some(dist), Some(version)) => format!("{dist} {version}"),
                _ if fact.found => "installed (unknown version)".into(),
                _ => "not installed".into(),
            };
            show!("  {module:<12} {version}");
        }
    }
    show!("identity     {}", resolved.toolchain.identity);
}
