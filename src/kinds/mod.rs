//! The stage kinds, one folder (or file) each: its keys, its parse, its `StageKind` (or
//! `RequestStage`) implementation and, for Python kinds, its script beside it.
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

/// Every script of every kind (written to the cache before a build).
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// Every kind's keys are read from its serde struct (a `#[serde(flatten)]` there would
    /// panic here, not at a user's parse) and are the keys its schema documents.
    #[test]
    fn every_kinds_keys_come_from_its_struct_and_are_its_schemas() {
        for info in super::KINDS {
            let keys: BTreeSet<&str> = (info.keys)().iter().copied().collect();
            let mut generator = schemars::SchemaGenerator::default();
            let schema = (info.schema)(&mut generator);
            let mut value = schema.as_value().clone();
            if let Some(reference) = value.get("$ref").and_then(|r| r.as_str()) {
                let name = reference.rsplit('/').next().unwrap_or_default();
                value = generator.definitions()[name].clone();
            }
            let documented: BTreeSet<&str> = value["properties"]
                .as_object()
                .unwrap_or_else(|| panic!("{}: no properties in {value}", info.name))
                .keys()
                .map(String::as_str)
                .collect();
            assert!(!keys.is_empty(), "{}", info.name);
            assert_eq!(keys, documented, "{}", info.name);
        }
    }
}
