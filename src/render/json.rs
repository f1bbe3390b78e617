//! JSON rendering: the view as pretty-printed, versioned JSON with stages sorted by name.

use super::{GraphView, StageView, normalized};

/// Bumped whenever a field is renamed, removed or changes meaning.
pub(crate) const SCHEMA_VERSION: u32 = 1;

/// The document written out; field order is the order in the output.
#[derive(serde::Serialize)]
struct Document<'a> {
    schema_version: u32,
    pipeline: &'a str,
    stages: &'a [StageView],
}

pub(crate) fn render(view: &GraphView) -> String {
    let view = normalized(view);
    let document = Document {
        schema_version: SCHEMA_VERSION,
        pipeline: &view.pipeline,
        stages: &view.stages,
    };
    // Plain strings, numbers and derived structs: serializing cannot fail.
    let json = serde_json::to_string_pretty(&document).expect("graph view serializes to JSON");
    json + "\n"
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{diamond, wide};
    use super::*;
    use serde_json::Value;

    fn parsed(view: &GraphView) -> Value {
        serde_json::from_str(&render(view)).expect("output is valid JSON")
    }

    #[test]
    fn round_trips_with_schema_version_and_every_stage() {
        let value = parsed(&wide());
        assert_eq!(value["schema_version"], 1);
        assert_eq!(value["pipeline"], "resnet-deploy");
        assert_eq!(value["stages"].as_array().unwrap().len(), 7);
    }

    #[test]
    fn stages_are_sorted_and_fields_are_snake_case() {
        let value = parsed(&diamond());
        let stages = value["stages"].as_array().unwrap();
        let names: Vec<&str> = stages.iter().map(|s| s["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["engine", "export", "quantize"]);
        let engine = &stages[0];
        assert_eq!(engine["status"], "never_built");
        assert_eq!(engine["last_duration_ms"], Value::Null);
        assert_eq!(engine["deps"], serde_json::json!(["export", "quantize"]));
        assert_eq!(engine["outputs"], serde_json::json!(["build/engine.out"]));
        assert_eq!(stages[1]["last_duration_ms"], 1234);
    }

    #[test]
    fn schema_version_comes_first() {
        assert!(render(&diamond()).starts_with("{\n  \"schema_version\": 1,\n"));
    }
}
