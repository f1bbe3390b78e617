//! Unit tests of the report's keys.

use super::*;
use crate::kinds::report::sliding_window::{Blend, Padding};
use crate::pipeline::SourceFile;

fn parse_stage(table: &str) -> Result<Config, SpanError> {
    let text = format!("[stages.rep]\nkind = \"report\"\n{table}");
    let src = SourceFile::new("pipeline.toml".into(), text.clone());
    let root = toml::de::DeTable::parse(&text).unwrap();
    let stage = root.get_ref()["stages"].get_ref().as_table().unwrap()["rep"].clone();
    let parser = Parser {
        src: &src,
        dir: Path::new("/project"),
        build_dir: Path::new("build/p"),
        stage: "rep",
        kinds: crate::kinds::KINDS,
    };
    parse(&parser, &stage)
}

/// The error of a stage table that does not parse, with its help: "error | help".
fn error_of(table: &str) -> String {
    let error = parse_stage(table).unwrap_err();
    let help = miette::Diagnostic::help(&error)
        .map(|h| h.to_string())
        .unwrap_or_default();
    format!("{error} | {help}")
}

fn keys(config: &Config) -> Vec<String> {
    config.outputs.iter().map(|o| o.key.clone()).collect()
}

#[test]
fn defaults_and_the_export_reference_as_data() {
    let c = parse_stage("models = [\"@onnx\", \"@int8\"]\n").unwrap();
    assert_eq!((c.warmup, c.iterations), (10, 100));
    assert_eq!(c.min_duration, Duration::from_secs(1));
    assert!(c.fail_on_parity && c.task == Task::None && !c.has_data);
    let data = c.inputs.iter().find(|i| i.key == "data").unwrap();
    assert_eq!(
        data.source,
        InputSource::Output {
            stage: "onnx".into(),
            key: Some("reference".into())
        }
    );
    assert_eq!(
        keys(&c),
        ["summary", "report", "latency_chart", "error_chart"]
    );
    assert_eq!(
        c.outputs[0].path,
        std::path::PathBuf::from("build/p/rep/summary.json")
    );
}

#[test]
fn classification_outputs_follow_the_labels() {
    let c = parse_stage("models = [\"m.onnx\"]\ndata = \"d.npy\"\ntask = \"classification\"\n")
        .unwrap();
    assert_eq!(
        keys(&c),
        [
            "summary",
            "report",
            "latency_chart",
            "error_chart",
            "predictions",
            "disagreements"
        ]
    );
    let c = parse_stage("models = [\"m.onnx\"]\ndata = \"d.npy\"\nlabels = \"l.npy\"\ntask = \"classification\"\noutput = \"out\"\n").unwrap();
    assert!(keys(&c).contains(&"confusion_matrix".to_string()));
    assert!(keys(&c).contains(&"classification_report".to_string()));
    assert_eq!(
        c.outputs[0].path,
        std::path::PathBuf::from("out/summary.json")
    );
}

#[test]
fn tolerance_overrides_merge_with_the_defaults() {
    let c = parse_stage(
        "models = [\"@onnx\"]\ntolerances = { fp16 = { atol = 0.5 } }\non_parity_failure = \"warn\"\n",
    )
    .unwrap();
    assert_eq!(c.tolerances["fp16"].atol, 0.5);
    assert_eq!(c.tolerances["fp16"].rtol, default_tolerance("fp16").rtol);
    assert_eq!(c.tolerances["fp32"], default_tolerance("fp32"));
    assert!(!c.fail_on_parity);
}

#[test]
fn gates_are_checked_as_diff_rules() {
    parse_stage("models = [\"@onnx\"]\ngates = [\"accuracy < -1pp\", \"@onnx:p50_ms > +10%\"]\n")
        .unwrap();
    let error = error_of("models = [\"@onnx\"]\ngates = [\"acuracy < -1pp\"]\n");
    assert!(
        error.contains("`gates`: rule `acuracy < -1pp`: unknown metric"),
        "{error}"
    );
    assert!(error.contains("known metrics: accuracy"), "{error}");
}

#[test]
fn bad_settings_are_named() {
    let error = error_of("models = [\"@onnx\"]\ntolerances = { fp4 = { atol = 1 } }\n");
    assert!(error.contains("unknown precision"), "{error}");
    let error = error_of("models = [\"@onnx\"]\nmin_duration = \"soon\"\n");
    assert!(error.contains("not a duration"), "{error}");
    let error = error_of("models = [\"@onnx\"]\non_parity_failure = \"ignore\"\n");
    assert!(error.contains("\"warn\""), "{error}");
    let error = error_of("models = []\n");
    assert!(error.contains("`models` is empty"), "{error}");
}

#[test]
fn dice_options_default_to_monai_and_are_checked() {
    let c =
        parse_stage("models = [\"m.onnx\"]\ndata = \"d.npy\"\ntask = \"segmentation\"\n").unwrap();
    assert_eq!(c.dice, DiceOptions::default());
    assert!(c.dice.include_background && c.dice.ignore_empty);
    assert_eq!(c.dice.reduction, Reduction::MeanBatch);
    assert!(keys(&c).contains(&"per_sample".to_string()));
    let c = parse_stage(
        "models = [\"m.onnx\"]\ndata = \"d.npy\"\ndice = { reduction = \"pooled\", include_background = false }\n",
    )
    .unwrap();
    assert_eq!(c.dice.reduction, Reduction::Pooled);
    assert!(!c.dice.include_background && c.dice.ignore_empty);
    let error = error_of(
        "models = [\"m.onnx\"]\ndata = \"d.npy\"\ndice = { reduction = \"mean_btach\" }\n",
    );
    assert!(
        error.contains("unknown Dice reduction `mean_btach`") && error.contains("mean_batch"),
        "{error}"
    );
    let error =
        error_of("models = [\"m.onnx\"]\ndata = \"d.npy\"\ndice = { background = false }\n");
    assert!(error.contains("background"), "{error}");
}

#[test]
fn saved_outputs_are_declared_per_model_under_short_names() {
    let c = parse_stage(
        "models = [\"@onnx\", \"/abs/models/a.onnx\", \"b/a.onnx\"]\ndata = \"d.npy\"\nsave_outputs = true\n",
    )
    .unwrap();
    assert_eq!(c.labels, ["onnx", "a-2", "a-3"]);
    let saved: Vec<_> = c
        .outputs
        .iter()
        .filter(|o| o.key.starts_with("output_model"))
        .map(|o| o.path.clone())
        .collect();
    assert_eq!(
        saved,
        [
            std::path::PathBuf::from("build/p/rep/outputs/onnx.npy"),
            "build/p/rep/outputs/a-2.npy".into(),
            "build/p/rep/outputs/a-3.npy".into()
        ]
    );
    let c = parse_stage("models = [\"@onnx\"]\n").unwrap();
    assert!(!c.save_outputs);
}

#[test]
fn a_batch_list_is_a_sweep_and_sliding_windows_get_monais_defaults() {
    let c = parse_stage("models = [\"m.onnx\"]\ndata = \"d.npy\"\nbatch = [4, 1, 16]\n").unwrap();
    assert_eq!((c.batch, c.sweep.clone()), (Some(4), vec![4, 1, 16]));
    assert!(keys(&c).contains(&"throughput_chart".to_string()));
    let c = parse_stage("models = [\"m.onnx\"]\ndata = \"d.npy\"\nbatch = 2\n").unwrap();
    assert_eq!((c.batch, c.sweep.len()), (Some(2), 0));
    assert!(!keys(&c).contains(&"throughput_chart".to_string()));
    for (bad, needle) in [
        ("[]", "lists no batch size"),
        ("[1, 0]", "0 is not a batch size"),
        ("[2, 2]", "2 is listed twice"),
    ] {
        let error = error_of(&format!(
            "models = [\"m.onnx\"]\ndata = \"d.npy\"\nbatch = {bad}\n"
        ));
        assert!(error.contains(needle), "{bad}: {error}");
    }
    let c = parse_stage(
        "models = [\"m.onnx\"]\ndata = \"d.npy\"\nsliding_window = { roi = [96, 96, 64] }\n",
    )
    .unwrap();
    let sw = c.sliding_window.unwrap();
    assert_eq!(sw.roi, [96, 96, 64]);
    assert_eq!(
        (sw.overlap.clone(), sw.sigma_scale.clone()),
        (vec![0.25; 3], vec![0.125; 3])
    );
    assert_eq!(
        (sw.mode, sw.padding_mode, sw.sw_batch_size, sw.cval),
        (Blend::Constant, Padding::Constant, 1, 0.0)
    );
}

#[test]
fn durations() {
    assert_eq!(parse_duration("1s"), Some(Duration::from_secs(1)));
    assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
    assert_eq!(parse_duration("0"), Some(Duration::ZERO));
    assert_eq!(parse_duration("1m"), Some(Duration::from_secs(60)));
    assert_eq!(parse_duration("fast"), None);
    assert_eq!(parse_duration("-1s"), None);
}
