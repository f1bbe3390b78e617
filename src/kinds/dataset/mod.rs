//! The `dataset` stage kind: calibration and evaluation data as `.npy` tensors, built in
//! pochi itself. A source (a folder of images or `.npy` volumes, a `.npy` array, or seeded
//! synthetic tensors), an optional seeded subset, and a declarative transform list;
//! outputs the data (float32, N x C x H x W or N x C x D x H x W), the labels (int64) and
//! a JSON manifest under `{build_dir}/<stage>/`.

mod npy;
mod pil;
mod random;
mod resample;
mod run;
mod source;
mod transform;
mod transform_keys;

use std::path::Path;
use std::sync::atomic::AtomicBool;

use schemars::JsonSchema;
use serde::Deserialize;
use toml::Spanned;
use toml::de::DeValue;

use super::request::{Program, RequestStage};
use super::{InvocationContext, KindInfo, MachineFacts, Requirements, StageError, StageKind};
use crate::pipeline::parse_api::Parser;
use crate::pipeline::{NamedInput, NamedOutput, SpanError};
pub(crate) use run::DatasetError;
use source::{Distribution, SyntheticSpec};
use transform::Transform;
use transform_keys::{RawTransform, TransformSchema};

pub(crate) static INFO: KindInfo = KindInfo {
    name: "dataset",
    keys: super::keys_of::<DatasetKeys>,
    parse,
    scripts: &[],
    schema: |generator| generator.subschema_for::<DatasetKeys>(),
};

/// Bumped when the same keys would produce different data (a changed algorithm), so
/// every dataset stage rebuilds once.
/// 2: `resize` on images defaults to Pillow's 8-bit arithmetic (`backend = "pil"`) and
/// JPEGs decode with libjpeg-turbo.
const FORMAT: u32 = 2;

/// `kind = "dataset"`: tensors, labels and a manifest from images, volumes or noise.
#[derive(Debug, Deserialize, JsonSchema)]
struct DatasetKeys {
    /// A folder of class-per-folder (or flat) images (.jpg, .jpeg, .png, .ppm, .bmp, .pgm, .tif, .tiff, .webp) or .npy
    /// volumes, a .npy array (samples on its first axis), or "@stage". Exclusive with
    /// `synthetic`.
    #[schemars(with = "Option<String>")]
    source: Option<Spanned<String>>,
    /// Seeded random tensors instead of a source.
    #[schemars(with = "Option<SyntheticKeys>")]
    synthetic: Option<Spanned<SyntheticKeys>>,
    /// Take a seeded random subset of this many samples (all when the source has fewer).
    #[schemars(with = "Option<u64>", range(min = 1))]
    samples: Option<Spanned<i64>>,
    /// The seed of the subset, of `shuffle`, and of `synthetic` unless it has its own.
    #[serde(default)]
    seed: u64,
    /// Shuffle the output order with `seed` (default: sorted file order).
    #[serde(default)]
    shuffle: bool,
    /// Steps applied in order to every sample, e.g. [{ resize = 256 }, { center_crop = 224 }].
    #[schemars(with = "Option<Vec<TransformSchema>>")]
    transform: Option<Vec<RawTransform>>,
    /// The directory of the outputs (default: `{build_dir}/<stage>`).
    #[schemars(with = "Option<String>")]
    output: Option<Spanned<String>>,
}

/// `synthetic = { shape = [1, 96, 96, 96], count = 16, seed = 0 }`
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct SyntheticKeys {
    /// One sample's shape, channels first (batch excluded).
    #[schemars(length(min = 1))]
    shape: Vec<usize>,
    /// How many samples.
    #[schemars(range(min = 1))]
    count: usize,
    /// The generator's seed (default: the stage's `seed`).
    seed: Option<u64>,
    /// `normal` (mean 0, std 1; the default) or `uniform` (in [0, 1)).
    distribution: Option<Distribution>,
}

/// What a source folder holds, listed as the stage lists it (nothing is decoded): for
/// `pochi infer`, which checks a `--data` folder and picks its transforms before it writes
/// the pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FolderContents {
    /// Images; else `.npy` volumes.
    pub images: bool,
    /// Usable files.
    pub files: usize,
    /// The class folders in label order; empty for a flat folder (every label -1).
    pub classes: Vec<String>,
}

/// Lists the folder `path` as a `source` would be; the error is the stage's own (an
/// empty folder, mixed kinds, a stray file next to class folders).
pub(crate) fn inspect_folder(path: &Path) -> Result<FolderContents, DatasetError> {
    if !path.is_dir() {
        return Err(DatasetError::NotAFolder(path.to_path_buf()));
    }
    let listing = source::Listing::open(path, &path.display().to_string())?;
    Ok(FolderContents {
        images: listing.is_images(),
        files: listing.len(),
        classes: listing.classes().to_vec(),
    })
}

/// Where the samples come from, as parsed.
#[derive(Debug, Clone, PartialEq)]
enum Origin {
    /// The `source` input (its path is resolved by the engine).
    Source,
    Synthetic(SyntheticSpec),
}

#[derive(Debug)]
struct Dataset {
    origin: Origin,
    samples: Option<usize>,
    seed: u64,
    shuffle: bool,
    transforms: Vec<Transform>,
    /// Worker threads for decoding (`resources.cpu` when given; else rayon's default).
    threads: Option<usize>,
    inputs: Vec<NamedInput>,
    outputs: Vec<NamedOutput>,
}

fn parse(parser: &Parser, value: &Spanned<DeValue>) -> Result<Box<dyn StageKind>, SpanError> {
    let keys: DatasetKeys = parser.deserialize(value)?;
    let stage_span = value.span();
    let (origin, inputs) = match (&keys.source, keys.synthetic) {
        (Some(source), Some(synthetic)) => {
            return Err(parser
                .src
                .error(synthetic.span(), "a dataset stage takes `source` or `synthetic`, not both")
                .also(source.span())
                .with_help("remove `synthetic` to use the data in `source`, or remove `source` to generate data"));
        }
        (None, None) => {
            let span = key_span(value, "kind").unwrap_or(stage_span);
            return Err(parser
                .src
                .error(span, "a dataset stage needs `source` or `synthetic`")
                .with_help("add source = \"data/val\" (a folder of images or .npy files), or synthetic = { shape = [3, 224, 224], count = 16 }"));
        }
        (Some(source), None) => (Origin::Source, vec![parser.input("source", source)?]),
        (None, Some(synthetic)) => {
            let span = synthetic.span();
            let synthetic = synthetic.into_inner();
            if synthetic.shape.is_empty() || synthetic.shape.contains(&0) || synthetic.count == 0 {
                return Err(parser
                    .src
                    .error(
                        span,
                        "`synthetic` needs a non-empty `shape` of sizes >= 1 and a `count` >= 1",
                    )
                    .with_help(
                        "for example synthetic = { shape = [1, 96, 96, 96], count = 16, seed = 0 }",
                    ));
            }
            let spec = SyntheticSpec {
                shape: synthetic.shape,
                count: synthetic.count,
                seed: synthetic.seed.unwrap_or(keys.seed),
                distribution: synthetic.distribution.unwrap_or(Distribution::Normal),
            };
            (Origin::Synthetic(spec), Vec::new())
        }
    };
    let samples = match &keys.samples {
        None => None,
        Some(samples) if *samples.get_ref() >= 1 => Some(*samples.get_ref() as usize),
        Some(samples) => {
            return Err(parser
                .src
                .error(samples.span(), "`samples` must be at least 1")
                .with_help("remove `samples` to take every sample"));
        }
    };
    let transforms = keys
        .transform
        .iter()
        .flatten()
        .map(|raw| transform_keys::parse(parser, raw))
        .collect::<Result<Vec<_>, _>>()?;
    let outputs = outputs(
        parser,
        keys.output.as_ref(),
        key_span(value, "kind").unwrap_or(stage_span),
    )?;
    Ok(Box::new(Dataset {
        origin,
        samples,
        seed: keys.seed,
        shuffle: keys.shuffle,
        transforms,
        threads: stage_cpus(parser, value),
        inputs,
        outputs,
    }))
}

/// The span of one key's value in the stage table.
fn key_span(value: &Spanned<DeValue>, key: &str) -> Option<std::ops::Range<usize>> {
    value.get_ref().as_table()?.get(key).map(Spanned::span)
}

/// `resources.cpu` as written (the common keys were validated already).
fn stage_cpus(parser: &Parser, value: &Spanned<DeValue>) -> Option<usize> {
    let resources = value.get_ref().as_table()?.get("resources")?;
    let resources: toml::Value = parser.deserialize(resources).ok()?;
    resources
        .get("cpu")?
        .as_integer()
        .and_then(|n| usize::try_from(n).ok())
        .filter(|&n| n >= 1)
}

/// `data`, `labels` and `manifest` under `output` or `{build_dir}/<stage>/`.
fn outputs(
    parser: &Parser,
    output: Option<&Spanned<String>>,
    default_span: std::ops::Range<usize>,
) -> Result<Vec<NamedOutput>, SpanError> {
    let (dir, span) = match output {
        Some(output) => (output.get_ref().clone(), output.span()),
        None => {
            let dir = parser.dir.join(parser.build_dir).join(parser.stage);
            (dir.to_string_lossy().into_owned(), default_span)
        }
    };
    let stage = parser.stage;
    [
        ("data", format!("{stage}.npy")),
        ("labels", format!("{stage}_labels.npy")),
        ("manifest", format!("{stage}_manifest.json")),
    ]
    .into_iter()
    .map(|(key, file)| {
        let path = Path::new(&dir).join(file).to_string_lossy().into_owned();
        parser.output(key, &Spanned::new(span.clone(), path))
    })
    .collect()
}

impl RequestStage for Dataset {
    fn kind(&self) -> &'static str {
        "dataset"
    }

    fn inputs(&self) -> &[NamedInput] {
        &self.inputs
    }

    fn outputs(&self) -> &[NamedOutput] {
        &self.outputs
    }

    fn params(&self, _host: &MachineFacts) -> serde_json::Value {
        serde_json::json!({
            "format": FORMAT,
            "synthetic": match &self.origin {
                Origin::Source => None,
                Origin::Synthetic(spec) => Some(spec),
            },
            "samples": self.samples,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "transform": self.transforms,
        })
    }

    fn requirements(&self) -> Requirements {
        Requirements::default()
    }

    fn program(&self) -> Program {
        Program::Pochi
    }

    fn run_in_process(
        &self,
        context: &InvocationContext,
        cancel: &AtomicBool,
    ) -> Result<Vec<String>, StageError> {
        run::run(self, context, cancel)?;
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{InputSource, parse_pipeline};

    fn load(body: &str) -> Result<crate::pipeline::Pipeline, String> {
        let text =
            format!("[pipeline]\nname = \"p\"\n\n[stages.calib]\nkind = \"dataset\"\n{body}");
        parse_pipeline(Path::new("/proj/pipeline.toml"), text, crate::kinds::KINDS).map_err(|e| {
            let report = miette::Report::new(e);
            format!("{report:?}")
        })
    }

    fn dataset(pipeline: &crate::pipeline::Pipeline) -> &dyn StageKind {
        pipeline.stages[0].kind.as_ref()
    }

    #[test]
    fn a_source_stage_has_its_input_and_conventional_outputs() {
        let pipeline = load("source = \"data/val\"\nsamples = 8\nseed = 3\ntransform = [{ resize = 32 }, { center_crop = 24 }]").unwrap();
        let kind = dataset(&pipeline);
        assert_eq!(
            kind.inputs()[0].source,
            InputSource::Path("data/val".into())
        );
        let outputs: Vec<(&str, String)> = kind
            .outputs()
            .iter()
            .map(|o| (o.key.as_str(), o.path.display().to_string()))
            .collect();
        assert_eq!(
            outputs,
            vec![
                ("data", "build/p/calib/calib.npy".into()),
                ("labels", "build/p/calib/calib_labels.npy".into()),
                ("manifest", "build/p/calib/calib_manifest.json".into()),
            ]
        );
        let params = kind.params(&crate::pipeline::kind::sample_facts("/py"));
        assert_eq!(params["samples"], 8);
        assert_eq!(
            params["transform"],
            serde_json::json!([
                { "resize": { "size": 32, "interpolation": "bilinear" } },
                { "center_crop": [24, 24] }
            ])
        );
    }

    #[test]
    fn output_overrides_the_directory_and_must_stay_inside() {
        let pipeline = load("source = \"@other\"\noutput = \"out/calib\"").unwrap();
        let kind = dataset(&pipeline);
        assert_eq!(kind.outputs()[0].path, Path::new("out/calib/calib.npy"));
        assert_eq!(
            kind.inputs()[0].source,
            InputSource::Output {
                stage: "other".into(),
                key: None
            }
        );
        let error = load("source = \"a\"\noutput = \"../elsewhere\"").unwrap_err();
        assert!(error.contains("outside the project"), "{error}");
    }

    #[test]
    fn synthetic_takes_the_stage_seed_by_default() {
        let pipeline = load("seed = 9\nsynthetic = { shape = [1, 4, 4, 4], count = 2 }").unwrap();
        let kind = dataset(&pipeline);
        assert!(kind.inputs().is_empty());
        assert_eq!(
            kind.params(&crate::pipeline::kind::sample_facts("/py"))["synthetic"]["seed"],
            9
        );
        assert_eq!(
            kind.params(&crate::pipeline::kind::sample_facts("/py"))["synthetic"]["distribution"],
            "normal"
        );
    }

    #[test]
    fn clear_errors_for_bad_keys() {
        let both = load("source = \"a\"\nsynthetic = { shape = [1], count = 1 }").unwrap_err();
        assert!(both.contains("not both"), "{both}");
        let neither = load("seed = 1").unwrap_err();
        assert!(
            neither.contains("needs `source` or `synthetic`"),
            "{neither}"
        );
        let unknown = load("source = \"a\"\ntransform = [{ resise = 3 }]").unwrap_err();
        assert!(
            unknown.contains("unknown transform `resise`")
                && unknown.contains("did you mean `resize`"),
            "{unknown}"
        );
        let two =
            load("source = \"a\"\ntransform = [{ resize = 3, center_crop = 2 }]").unwrap_err();
        assert!(two.contains("one key"), "{two}");
        let zero = load("source = \"a\"\nsamples = 0").unwrap_err();
        assert!(zero.contains("at least 1"), "{zero}");
        let typo = load("synthetic = { shape = [1], cout = 1 }").unwrap_err();
        assert!(typo.contains("cout"), "{typo}");
        let empty = load("synthetic = { shape = [], count = 1 }").unwrap_err();
        assert!(empty.contains("non-empty"), "{empty}");
    }
}
