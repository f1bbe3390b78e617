//! pochi: a declarative, make-like build-graph engine for model deployment.
//!
//! Phases, one module each: `pipeline` (the pipeline file, parsed) -> `graph` (resolve, check, seal) -> `driver`
//! (one build: plan with `fingerprint` and `state`) -> `scheduler` (run under resources).
//! Every stage becomes an `action::Action` through the kind seam (`pipeline::kind`, kinds in
//! `kinds`); `facts` holds the machine facts gathered once per build; `process` (the
//! runner seam and the real runner), `machine` and `toolchain` touch the OS; `render` draws graphs; `cli` is the command
//! line and the only module that prints. `clippy.toml` enforces both: `Command::new` is
//! allowed only in `process::system`, `machine`, `toolchain` and `cli`, printing only in
//! `cli`.
//!
//! Visibility: `pub(crate)` by default; `pub` only for what the binary (`cli::main`) and the
//! integration tests (`tests/it`: the remote client, the cache, the pipeline parser and
//! graph, the kinds' registry, `onnx_info`'s encoder) use.
#![warn(unreachable_pub)]

pub mod action;
pub mod cache;
#[allow(clippy::disallowed_methods)]
pub mod cli;
pub(crate) mod diff;
pub(crate) mod driver;
pub(crate) mod facts;
pub(crate) mod fingerprint;
mod fsutil;
pub mod graph;
pub mod kinds;
#[allow(clippy::disallowed_methods)]
pub(crate) mod machine;
pub mod onnx_info;
pub mod pipeline;
pub(crate) mod process;
pub mod remote;
pub(crate) mod render;
pub(crate) mod scheduler;
pub(crate) mod size;
pub(crate) mod state;
#[allow(clippy::disallowed_methods)]
pub(crate) mod toolchain;
