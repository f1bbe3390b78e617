//! pochi: a declarative, make-like build-graph engine for model deployment.
//!
//! Phases, one module each: `spec` (parse) -> `graph` (resolve, check, seal) -> `driver`
//! (one build: plan with `fingerprint` and `state`) -> `scheduler` (run under resources).
//! Every stage becomes an `action::Action` through the kind seam (`spec::kind`, kinds in
//! `kinds`); `host` holds the machine facts gathered once per build; `process`, `runner`,
//! `machine` and `toolchain` touch the OS; `render` draws graphs; `cli` is the command
//! line and the only module that prints. `clippy.toml` enforces both: `Command::new` is
//! allowed only in `runner`, `machine`, `toolchain` and `cli`, printing only in `cli`.

pub mod action;
pub mod cache;
#[allow(clippy::disallowed_methods, clippy::disallowed_macros)]
pub mod cli;
pub mod driver;
pub mod fingerprint;
mod fsutil;
pub mod graph;
pub mod host;
pub mod kinds;
#[allow(clippy::disallowed_methods)]
pub mod machine;
pub mod onnx_info;
pub mod process;
pub mod render;
#[allow(clippy::disallowed_methods)]
pub mod runner;
pub mod scheduler;
pub mod size;
pub mod spec;
pub mod state;
#[allow(clippy::disallowed_methods)]
pub mod toolchain;
