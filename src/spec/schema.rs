//! The JSON Schema of the pipeline file, assembled from the same types the parser uses
//! (so the schema and the parser cannot disagree about keys).

use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

use super::kind::Registry;
use super::parse::{CommonStageKeys, PipelineSection, ResourcesSection, ToolchainSection};

/// The schema `pochi schema` prints.
pub fn pipeline_schema(kinds: Registry) -> Value {
    let mut generator = SchemaSettings::draft2020_12()
        .with(|s| s.inline_subschemas = true)
        .into_generator();
    let section = |schema: schemars::Schema| {
        let mut value = schema.to_value();
        close(&mut value);
        value
    };
    let pipeline = section(generator.root_schema_for::<PipelineSection>());
    let toolchain = section(generator.root_schema_for::<ToolchainSection>());
    let resources = section(generator.root_schema_for::<ResourcesSection>());
    let common = generator.root_schema_for::<CommonStageKeys>().to_value();
    let stage_variants: Vec<Value> = kinds
        .iter()
        .map(|kind| {
            let own = (kind.schema)(&mut generator).to_value();
            stage_schema(kind.name, &common, &own)
        })
        .collect();
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "pochi pipeline",
        "description": "A pochi pipeline file: stages from a checkpoint to a report.",
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "pipeline": pipeline,
            "toolchain": toolchain,
            "resources": resources,
            "stages": {
                "description": "One table per stage; names use a-z, 0-9, `_` and `-`.",
                "type": "object",
                "propertyNames": { "pattern": "^[a-z0-9_-]+$" },
                "additionalProperties": { "oneOf": stage_variants }
            }
        }
    })
}

/// Common keys plus one kind's keys, with `kind` fixed to that kind's name.
fn stage_schema(name: &str, common: &Value, own: &Value) -> Value {
    let mut properties = Map::new();
    let mut required: Vec<Value> = vec![json!("kind")];
    for schema in [common, own] {
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            properties.extend(props.clone());
        }
        if let Some(list) = schema.get("required").and_then(Value::as_array) {
            required.extend(
                list.iter()
                    .filter(|k| !required.contains(k))
                    .cloned()
                    .collect::<Vec<_>>(),
            );
        }
    }
    properties.insert(
        "kind".into(),
        json!({ "const": name, "description": "The stage kind." }),
    );
    json!({
        "title": format!("{name} stage"),
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false
    })
}

fn close(value: &mut Value) {
    if let Some(object) = value.as_object_mut() {
        object.remove("$schema");
        object.insert("additionalProperties".into(), json!(false));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_lists_every_kind_and_its_keys() {
        let schema = pipeline_schema(crate::kinds::KINDS);
        let variants = schema["properties"]["stages"]["additionalProperties"]["oneOf"]
            .as_array()
            .unwrap();
        assert_eq!(variants.len(), crate::kinds::KINDS.len());
        let command = &variants[0];
        assert_eq!(command["properties"]["kind"]["const"], "command");
        for key in [
            "run",
            "inputs",
            "outputs",
            "needs",
            "device",
            "resources",
            "env",
        ] {
            assert!(command["properties"].get(key).is_some(), "missing {key}");
        }
        assert_eq!(command["additionalProperties"], false);
    }
}
