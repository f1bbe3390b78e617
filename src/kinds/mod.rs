//! The stage kinds, one folder (or file) each: its keys, its parse, its `StageKind` (or
//! `RequestStage`) implementation and, for Python kinds, its worker script beside it.
//! `KINDS` registers them. Adding a kind = one folder + one line in `KINDS` (+ its
//! packages in the toolchain's lock).

pub(crate) mod command;
pub(crate) mod dataset;
pub(crate) mod engine;
pub(crate) mod export;
pub(crate) mod quantize;
pub(crate) mod report;
pub(crate) mod request;

pub(crate) use crate::action::Action;
pub(crate) use crate::facts::MachineFacts;
pub(crate) use crate::pipeline::kind::{
    Accelerator, AcceleratorUse, InvocationContext, KindInfo, Requirements, StageError, StageKind,
    Tool, WithoutGpu,
};
pub(crate) use crate::pipeline::parse_api::keys_of;
use crate::toolchain::scripts::Script;

/// Every stage kind this build of pochi knows.
pub static KINDS: &[&KindInfo] = &[
    &command::INFO,
    &dataset::INFO,
    &export::INFO,
    &quantize::INFO,
    &engine::INFO,
    &report::INFO,
];

/// Every worker script of every kind (written to the cache before a build).
pub fn scripts() -> Vec<Script> {
    KINDS
        .iter()
        .flat_map(|info| info.scripts.iter().copied())
        .collect()
}

/// Finds a kind by name.
pub fn lookup(name: &str) -> Result<&'static KindInfo, crate::pipeline::kind::UnknownKind> {
    crate::pipeline::kind::lookup(KINDS, name)
}
