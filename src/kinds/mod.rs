//! The stage kinds, one folder (or file) each: its keys, its parse, its `StageKind` (or
//! `WorkerStage`) implementation and, for Python kinds, its worker script beside it.
//! `KINDS` registers them. Adding a kind = one folder + one line in `KINDS` (+ its
//! packages in the toolchain's lock).

pub mod command;
pub mod dataset;
pub mod engine;
pub mod export;
pub mod quantize;
pub mod report;
pub mod worker;

pub use crate::action::Action;
pub use crate::host::{Host, Toolchain};
pub use crate::pipeline::kind::{
    Accelerator, AcceleratorUse, InvocationContext, KindInfo, Requirements, StageError, StageKind,
    Tool, WithoutGpu,
};
use crate::toolchain::workers::Worker;

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
pub fn workers() -> Vec<Worker> {
    KINDS
        .iter()
        .flat_map(|info| info.workers.iter().copied())
        .collect()
}

/// Finds a kind by name, or returns a hint for the error.
pub fn lookup(name: &str) -> Result<&'static KindInfo, String> {
    crate::pipeline::kind::lookup(KINDS, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind's registered keys (what the parser accepts) are exactly the properties of
    /// its JSON Schema (what `pochi schema` documents).
    #[test]
    fn every_kinds_registered_keys_are_its_schema_keys() {
        for info in KINDS {
            let mut generator = schemars::SchemaGenerator::default();
            let reference = (info.schema)(&mut generator);
            let name = reference
                .get("$ref")
                .and_then(|r| r.as_str())
                .and_then(|r| r.rsplit('/').next())
                .unwrap_or_else(|| panic!("{}: the schema is not a reference", info.name))
                .to_string();
            let definitions = generator.take_definitions(true);
            let mut properties: Vec<String> = definitions[&name]["properties"]
                .as_object()
                .unwrap_or_else(|| panic!("{}: no properties", info.name))
                .keys()
                .cloned()
                .collect();
            properties.sort();
            let mut keys: Vec<String> = info.keys.iter().map(|k| k.to_string()).collect();
            keys.sort();
            assert_eq!(properties, keys, "kind `{}`", info.name);
        }
    }
}
