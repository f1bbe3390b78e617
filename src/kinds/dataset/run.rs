//! Running a dataset stage: list the source, select the samples, decode and transform them
//! in parallel chunks (written in selection order, whatever the thread timing), then the
//! labels and the manifest. Everything goes to the engine's temporary output paths.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use ndarray::ArrayD;
use rayon::prelude::*;

use super::npy::NpyWriter;
use super::source::{FileKind, Listing, SourceError};
use super::transform::{Backend, Resize, ResizeTo, Transform, TransformError};
use super::{Dataset, FORMAT, Origin, random};
use crate::kinds::InvocationContext;

/// Samples decoded per chunk and thread: bounds memory while keeping threads busy.
const CHUNK_PER_THREAD: usize = 4;

/// Why a dataset stage failed.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub(crate) enum DatasetError {
    #[error("{} is not a folder", .0.display())]
    NotAFolder(PathBuf),
    #[error("internal error: the stage has no `source` input")]
    NoSourceInput,
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("cannot start decoding threads")]
    Threads(#[source] rayon::ThreadPoolBuildError),
    #[error("interrupted")]
    Interrupted,
    #[error(
        "`resize` with backend = \"pil\" needs 8-bit images (an image folder, before to_float, scale or normalize); here the samples are {samples}: use backend = \"tensor\" or move the resize first"
    )]
    PilAfterFloats { samples: &'static str },
    /// A step failed on one sample.
    #[error("sample `{name}`")]
    Step {
        name: String,
        #[source]
        source: TransformError,
    },
    #[error(
        "sample `{name}` has shape {shape:?} after the transforms; samples must be C x H x W or C x D x H x W (add {{ add_channel = true }} to give a D x H x W volume its channel axis)"
    )]
    VolumeLayout { name: String, shape: Vec<usize> },
    #[error(
        "samples differ in shape after the transforms: `{name}` is {shape:?} but `{first_name}` is {first_shape:?}; add a resize, center_crop or crop_or_pad so every sample ends the same size"
    )]
    ShapesDiffer {
        name: String,
        shape: Vec<usize>,
        first_name: String,
        first_shape: Vec<usize>,
    },
    #[error("the source has no samples")]
    NoSamples,
    #[error("cannot write {}", .path.display())]
    CannotWrite {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the data")]
    WriteData(#[source] std::io::Error),
    #[error("cannot write the labels")]
    WriteLabels(#[source] std::io::Error),
    #[error(transparent)]
    Manifest(#[from] serde_json::Error),
}

impl DatasetError {
    fn cannot_write(path: &Path) -> impl FnOnce(std::io::Error) -> DatasetError + '_ {
        move |source| DatasetError::CannotWrite {
            path: path.to_path_buf(),
            source,
        }
    }
}

pub(super) fn run(
    dataset: &Dataset,
    context: &InvocationContext,
    cancel: &AtomicBool,
) -> Result<(), DatasetError> {
    let (listing, shown_source) = match &dataset.origin {
        Origin::Source => {
            let path = context
                .inputs
                .get("source")
                .ok_or(DatasetError::NoSourceInput)?;
            let shown = path.display().to_string();
            (Listing::open(&context.dir.join(path), &shown)?, Some(shown))
        }
        Origin::Synthetic(spec) => (Listing::Synthetic(spec.clone()), None),
    };
    let selected = select(dataset, listing.len());
    let steps = effective_steps(&dataset.transforms, listing.is_images())?;
    let output = |key: &str| context.dir.join(&context.outputs[key]);
    let samples = Samples {
        listing: &listing,
        steps: &steps,
        selected: &selected,
    };
    let sample_shape = samples.write(&output("data"), dataset.threads, cancel)?;

    let labels: Vec<i64> = selected.iter().map(|&index| listing.label(index)).collect();
    write_labels(&output("labels"), &labels)?;

    let manifest = manifest(
        dataset,
        &listing,
        shown_source,
        &selected,
        &labels,
        &sample_shape,
        &steps,
    );
    let mut text = serde_json::to_string_pretty(&manifest)?;
    text.push('\n');
    let path = output("manifest");
    std::fs::write(&path, text).map_err(DatasetError::cannot_write(&path))
}

/// The selected samples of a listing and the steps that prepare each.
struct Samples<'a> {
    listing: &'a Listing,
    steps: &'a [Transform],
    selected: &'a [usize],
}

impl Samples<'_> {
    /// Decodes and transforms the samples in parallel chunks (on `threads` threads, else
    /// rayon's default) and writes them in selection order to the `.npy` at `path`; returns
    /// the shape of one sample.
    fn write(
        &self,
        path: &Path,
        threads: Option<usize>,
        cancel: &AtomicBool,
    ) -> Result<Vec<usize>, DatasetError> {
        let pool = match threads {
            Some(threads) => Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .map_err(DatasetError::Threads)?,
            ),
            None => None,
        };
        let threads = pool
            .as_ref()
            .map_or_else(rayon::current_num_threads, |p| p.current_num_threads());
        let chunk_len = (threads * CHUNK_PER_THREAD).max(8);
        let mut writer: Option<(NpyWriter, Vec<usize>, String)> = None;
        for chunk in self.selected.chunks(chunk_len) {
            if cancel.load(Ordering::Relaxed) {
                return Err(DatasetError::Interrupted);
            }
            let work = || {
                chunk
                    .par_iter()
                    .map(|&index| prepare(self.listing, self.steps, index, cancel))
                    .collect::<Vec<_>>()
            };
            let samples = match &pool {
                Some(pool) => pool.install(work),
                None => work(),
            };
            for (sample, &index) in samples.into_iter().zip(chunk) {
                let sample = sample?;
                let (npy, ..) = match &mut writer {
                    None => writer.insert(self.first(path, &sample, index)?),
                    Some(open) => {
                        self.check_same_shape(open, &sample, index)?;
                        open
                    }
                };
                npy.write_f32(sample.iter().copied())
                    .map_err(DatasetError::WriteData)?;
            }
        }
        let Some((npy, shape, _)) = writer else {
            return Err(DatasetError::NoSamples);
        };
        npy.finish().map_err(DatasetError::WriteData)?;
        Ok(shape)
    }

    /// The writer for every sample, opened at the first one (whose shape and name the
    /// others are compared with).
    fn first(
        &self,
        path: &Path,
        sample: &ArrayD<f32>,
        index: usize,
    ) -> Result<(NpyWriter, Vec<usize>, String), DatasetError> {
        check_layout(self.listing, sample, index)?;
        let mut shape = vec![self.selected.len()];
        shape.extend_from_slice(sample.shape());
        let npy =
            NpyWriter::create(path, "<f4", &shape).map_err(DatasetError::cannot_write(path))?;
        Ok((npy, sample.shape().to_vec(), self.listing.name(index)))
    }

    fn check_same_shape(
        &self,
        (_, first_shape, first_name): &(NpyWriter, Vec<usize>, String),
        sample: &ArrayD<f32>,
        index: usize,
    ) -> Result<(), DatasetError> {
        if first_shape.as_slice() == sample.shape() {
            return Ok(());
        }
        Err(DatasetError::ShapesDiffer {
            name: self.listing.name(index),
            shape: sample.shape().to_vec(),
            first_name: first_name.clone(),
            first_shape: first_shape.clone(),
        })
    }
}

/// The labels as an int64 `.npy` at `path`.
fn write_labels(path: &Path, labels: &[i64]) -> Result<(), DatasetError> {
    let mut writer = NpyWriter::create(path, "<i8", &[labels.len()])
        .map_err(DatasetError::cannot_write(path))?;
    writer
        .write_i64(labels.iter().copied())
        .map_err(DatasetError::WriteLabels)?;
    writer.finish().map_err(DatasetError::WriteLabels)
}

/// The samples to take, in output order: every one in source order, or a seeded subset
/// (kept in source order), shuffled with the seed when asked.
fn select(dataset: &Dataset, total: usize) -> Vec<usize> {
    let mut selected: Vec<usize> = match dataset.samples {
        Some(samples) if samples < total => {
            let mut subset = random::subset(total, samples, dataset.seed);
            subset.sort_unstable();
            subset
        }
        _ => (0..total).collect(),
    };
    if dataset.shuffle {
        random::shuffle(&mut selected, dataset.seed);
    }
    selected
}

/// The steps as run. Images are 8-bit (0..255) until a step changes values; a `resize`
/// without a `backend` takes `pil` while they are and `tensor` after, and an explicit
/// `pil` after such a step is an error. Images get an implicit `to_float` (ToTensor)
/// unless the list places one: right before the first step that works on floats, as
/// torchvision's `Resize`, `CenterCrop` on the PIL image then `ToTensor`.
fn effective_steps(transforms: &[Transform], images: bool) -> Result<Vec<Transform>, DatasetError> {
    let placed = transforms
        .iter()
        .any(|step| matches!(step, Transform::ToFloat(_)));
    let mut implicit = images && !placed;
    let mut eight_bit = images;
    let mut steps = Vec::with_capacity(transforms.len() + 1);
    for step in transforms {
        let mut step = step.clone();
        if let Transform::Resize(resize) = &mut step {
            match resize.backend {
                // Pillow resizes 2-D images; a [d, h, w] size takes the float resize.
                None if eight_bit
                    && !matches!(&resize.size, ResizeTo::Exact(s) if s.len() != 2) =>
                {
                    resize.backend = Some(Backend::Pil)
                }
                None => resize.backend = Some(Backend::Tensor),
                Some(Backend::Pil) if !eight_bit => {
                    return Err(DatasetError::PilAfterFloats {
                        samples: if images {
                            "floats already"
                        } else {
                            "read from .npy data"
                        },
                    });
                }
                Some(_) => {}
            }
        }
        let keeps_bytes = matches!(
            &step,
            Transform::Resize(Resize {
                backend: Some(Backend::Pil),
                ..
            }) | Transform::CenterCrop(_)
                | Transform::CropOrPad(_)
                | Transform::ChannelOrder(_)
                | Transform::AddChannel(_)
                | Transform::ToFloat(false)
        );
        if !keeps_bytes {
            if implicit {
                steps.push(Transform::ToFloat(true));
                implicit = false;
            }
            eight_bit = false;
        }
        steps.push(step);
    }
    if implicit {
        steps.push(Transform::ToFloat(true));
    }
    Ok(steps)
}

/// Loads and transforms one sample.
fn prepare(
    listing: &Listing,
    steps: &[Transform],
    index: usize,
    cancel: &AtomicBool,
) -> Result<ArrayD<f32>, DatasetError> {
    if cancel.load(Ordering::Relaxed) {
        return Err(DatasetError::Interrupted);
    }
    let mut sample = listing.load(index)?;
    for step in steps {
        sample = step.apply(sample).map_err(|source| DatasetError::Step {
            name: listing.name(index),
            source,
        })?;
    }
    Ok(sample)
}

/// A folder of `.npy` volumes must end channels first: C x H x W or C x D x H x W.
fn check_layout(listing: &Listing, sample: &ArrayD<f32>, index: usize) -> Result<(), DatasetError> {
    let volumes = matches!(
        listing,
        Listing::Files {
            kind: FileKind::Volumes,
            ..
        }
    );
    if volumes && !(3..=4).contains(&sample.ndim()) {
        return Err(DatasetError::VolumeLayout {
            name: listing.name(index),
            shape: sample.shape().to_vec(),
        });
    }
    Ok(())
}

fn manifest(
    dataset: &Dataset,
    listing: &Listing,
    source: Option<String>,
    selected: &[usize],
    labels: &[i64],
    sample_shape: &[usize],
    steps: &[Transform],
) -> serde_json::Value {
    let mut shape = vec![selected.len()];
    shape.extend_from_slice(sample_shape);
    let classes = listing.classes();
    let mut class_counts: BTreeMap<&str, usize> = classes.iter().map(|c| (c.as_str(), 0)).collect();
    for &label in labels {
        if let Some(class) = usize::try_from(label).ok().and_then(|l| classes.get(l)) {
            *class_counts.entry(class.as_str()).or_default() += 1;
        }
    }
    let files: Option<Vec<String>> = match listing {
        Listing::Synthetic(_) => None,
        _ => Some(selected.iter().map(|&index| listing.name(index)).collect()),
    };
    serde_json::json!({
        "format": FORMAT,
        "count": selected.len(),
        "shape": shape,
        "dtype": "float32",
        "labels_dtype": "int64",
        "source": {
            "kind": listing.kind_name(),
            "path": source,
            "available": listing.len(),
            "files_digest": listing.files_digest(),
            "synthetic": match &dataset.origin {
                Origin::Synthetic(spec) => Some(spec),
                Origin::Source => None,
            },
        },
        "classes": classes,
        "class_counts": class_counts,
        "unlabelled": labels.iter().filter(|&&l| l < 0).count(),
        "samples": dataset.samples,
        "seed": dataset.seed,
        "shuffle": dataset.shuffle,
        "transform": steps,
        "files": files,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dataset(samples: Option<usize>, shuffle: bool) -> Dataset {
        Dataset {
            origin: Origin::Source,
            samples,
            seed: 1,
            shuffle,
            transforms: Vec::new(),
            threads: None,
            inputs: Vec::new(),
            outputs: Vec::new(),
        }
    }

    #[test]
    fn selection_keeps_source_order_unless_shuffled() {
        assert_eq!(select(&dataset(None, false), 4), vec![0, 1, 2, 3]);
        assert_eq!(select(&dataset(Some(9), false), 4), vec![0, 1, 2, 3]);
        let subset = select(&dataset(Some(3), false), 10);
        assert_eq!(subset.len(), 3);
        assert!(subset.windows(2).all(|w| w[0] < w[1]), "{subset:?}");
        let mut shuffled = select(&dataset(None, true), 10);
        assert_ne!(shuffled, (0..10).collect::<Vec<_>>());
        shuffled.sort_unstable();
        assert_eq!(shuffled, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn images_get_to_float_after_the_8_bit_steps_unless_placed() {
        let crop = Transform::CenterCrop(vec![2, 2]);
        let normalize = Transform::Normalize {
            mean: vec![0.5],
            std: vec![0.5],
        };
        let resize = |backend| {
            Transform::Resize(Resize {
                backend,
                ..Resize::to(ResizeTo::Shorter(4))
            })
        };
        // torchvision's order: Resize and CenterCrop on the PIL image, then ToTensor.
        assert_eq!(
            effective_steps(&[resize(None), crop.clone(), normalize.clone()], true).unwrap(),
            vec![
                resize(Some(Backend::Pil)),
                crop.clone(),
                Transform::ToFloat(true),
                normalize.clone()
            ]
        );
        // The tensor backend resizes floats, as before: to_float comes first.
        assert_eq!(
            effective_steps(&[resize(Some(Backend::Tensor)), crop.clone()], true).unwrap(),
            vec![
                Transform::ToFloat(true),
                resize(Some(Backend::Tensor)),
                crop.clone()
            ]
        );
        assert_eq!(
            effective_steps(&[resize(None)], false).unwrap(),
            vec![resize(Some(Backend::Tensor))]
        );
        assert!(effective_steps(&[resize(Some(Backend::Pil))], false).is_err());
        assert!(effective_steps(&[normalize.clone(), resize(Some(Backend::Pil))], true).is_err());
        assert_eq!(
            effective_steps(&[normalize.clone(), resize(None)], true).unwrap(),
            vec![
                Transform::ToFloat(true),
                normalize,
                resize(Some(Backend::Tensor))
            ]
        );
        let volume = Transform::Resize(Resize::to(ResizeTo::Exact(vec![3, 4, 4])));
        assert_eq!(
            effective_steps(std::slice::from_ref(&volume), true).unwrap()[1],
            Transform::Resize(Resize {
                backend: Some(Backend::Tensor),
                ..Resize::to(ResizeTo::Exact(vec![3, 4, 4]))
            })
        );
        let placed = vec![crop.clone(), Transform::ToFloat(false)];
        assert_eq!(effective_steps(&placed, true).unwrap(), placed);
        assert_eq!(
            effective_steps(std::slice::from_ref(&crop), true).unwrap(),
            vec![crop, Transform::ToFloat(true)]
        );
    }
}
