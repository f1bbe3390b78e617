//! pochi: a declarative, make-like build-graph engine for model deployment.
//!
//! Phases, one module each: `spec` (parse) -> `graph` (resolve, check, seal) -> `build`
//! (plan with `fingerprint` and `state`) -> `scheduler` (run under resources). `kinds` is
//! the stage-kind seam; `runner` and `machine` touch the OS; `toolchain` creates and
//! identifies Python environments (the only module that spawns Python outside a stage);
//! `render` draws graphs; `cli` is the command line.

pub mod build;
pub mod cli;
pub mod fingerprint;
mod fsutil;
pub mod graph;
pub mod kinds;
pub mod machine;
pub mod onnx_info;
pub mod remote;
pub mod render;
pub mod runner;
pub mod scheduler;
pub mod spec;
pub mod state;
pub mod toolchain;
