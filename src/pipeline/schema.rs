//! The JSON Schema of the pipeline file, assembled from the same types the parser uses
//! (so the schema and the parser cannot disagree about keys).

use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

use super::kind::Registry;
use super::tables::{CommonStageKeys, PipelineSection, ResourcesSection, ToolchainSection};

/// The schema `pochi schema` prints.
pub(crate) fn pipeline_schema(kinds: Registry) -> Value {
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
    for (key, schema) in properties.iter_mut() {
        if key != "matrix" {
            allow_placeholders(schema);
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

/// What a matrix stage writes for a typed value: the whole string `"{matrix.KEY}"`.
const PLACEHOLDER_PATTERN: &str = r"^\{matrix\.[A-Za-z_][A-Za-z0-9_]*\}$";

/// Lets every constrained scalar in `schema` also be a `"{matrix.KEY}"` string (a matrix
/// stage's `batch = "{matrix.batch}"`), so editors accept what pochi accepts. `oneOf`
/// becomes `anyOf`: two branches that both take the placeholder must not cancel out.
fn allow_placeholders(schema: &mut Value) {
    let Some(object) = schema.as_object_mut() else {
        return;
    };
    if let Some(one_of) = object.remove("oneOf") {
        object.insert("anyOf".into(), one_of);
    }
    for key in ["properties", "patternProperties"] {
        if let Some(Value::Object(properties)) = object.get_mut(key) {
            properties.values_mut().for_each(allow_placeholders);
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(inner) = object.get_mut(key) {
            allow_placeholders(inner);
        }
    }
    for key in ["anyOf", "allOf", "prefixItems"] {
        if let Some(Value::Array(list)) = object.get_mut(key) {
            list.iter_mut().for_each(allow_placeholders);
        }
    }
    if constrained_scalar(object) {
        let leaf = std::mem::take(schema);
        let placeholder = json!({ "type": "string", "pattern": PLACEHOLDER_PATTERN });
        *schema = json!({ "anyOf": [leaf, placeholder] });
    }
}

/// A schema that takes only scalars and is more than "any string".
fn constrained_scalar(object: &Map<String, Value>) -> bool {
    if object.contains_key("enum") || object.contains_key("const") {
        return true;
    }
    let types: Vec<&str> = match object.get("type") {
        Some(Value::String(one)) => vec![one.as_str()],
        Some(Value::Array(many)) => many.iter().filter_map(Value::as_str).collect(),
        _ => return false,
    };
    let scalars = !types.iter().any(|t| matches!(*t, "object" | "array"));
    let any_string = types.contains(&"string")
        && !["pattern", "format", "minLength", "maxLength"]
            .iter()
            .any(|k| object.contains_key(*k));
    scalars && !any_string
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

    #[test]
    fn typed_values_may_be_matrix_placeholders() {
        let mut leaf = json!({ "type": ["integer", "null"], "minimum": 0 });
        allow_placeholders(&mut leaf);
        assert_eq!(leaf["anyOf"][1]["pattern"], PLACEHOLDER_PATTERN);
        let mut text = json!({ "type": "string", "description": "any" });
        allow_placeholders(&mut text);
        assert_eq!(text, json!({ "type": "string", "description": "any" }));
        let mut list = json!({ "type": "array", "items": { "type": "integer" } });
        allow_placeholders(&mut list);
        assert_eq!(list["type"], "array");
        assert!(list["items"]["anyOf"].is_array());
    }
}
