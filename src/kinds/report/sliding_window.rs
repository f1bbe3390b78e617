//! Sliding-window inference for volumes larger than a model's fixed input, with the
//! semantics of MONAI 1.6's `sliding_window_inference`: an image smaller than the window is
//! padded (half before, the rest after, per axis); windows start every
//! `int(roi * (1 - overlap))` voxels (`roi` when the window covers the axis), the last one
//! moved back to end at the border (`dense_patch_slices`); each window's prediction is
//! weighted by the importance map (`compute_importance_map`: ones, or a separable Gaussian
//! with sigma `sigma_scale * roi`, small weights clamped to `max(min, 1e-3)`), summed, divided
//! by the summed weights, and cropped back to the image. Everything is float32 in MONAI's
//! order of operations. The predictor is not here: [`Plan::cut`] gives the windows,
//! [`Plan::stitch`] takes their predictions (ONNX Runtime or the TensorRT script).

use ndarray::{ArrayD, ArrayViewD, Axis, IxDyn, Slice, Zip};
use serde::Serialize;

/// How overlapping windows are blended (MONAI's `BlendMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Blend {
    Constant,
    Gaussian,
}

/// How an image smaller than the window is padded (torch's `F.pad` modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Padding {
    Constant,
    Reflect,
    Replicate,
    Circular,
}

impl Padding {
    /// Each padding mode by its name (as in torch).
    pub(crate) const CHOICES: &'static [(&'static str, Padding)] = &[
        ("constant", Padding::Constant),
        ("reflect", Padding::Reflect),
        ("replicate", Padding::Replicate),
        ("circular", Padding::Circular),
    ];
}

impl Blend {
    /// Each blending mode by its name (as in MONAI).
    pub(crate) const CHOICES: &'static [(&'static str, Blend)] =
        &[("constant", Blend::Constant), ("gaussian", Blend::Gaussian)];
}

/// `sliding_window = { ... }` as parsed (overlap and sigma_scale given per axis).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Settings {
    pub roi: Vec<usize>,
    pub overlap: Vec<f64>,
    pub mode: Blend,
    pub sigma_scale: Vec<f64>,
    pub sw_batch_size: usize,
    pub padding_mode: Padding,
    pub cval: f64,
}

/// What can go wrong when a plan meets the data or the predictions.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub(crate) enum WindowError {
    #[error(
        "sliding_window.roi {roi:?} has {} axes, but each sample has {spatial} spatial axes (sample shape {shape:?}, channels first)",
        roi.len()
    )]
    Dimensions {
        roi: Vec<usize>,
        spatial: usize,
        shape: Vec<usize>,
    },
    #[error(
        "padding_mode = \"{mode}\" cannot pad axis {axis} of length {length} by {pad} (torch's limit for this mode)"
    )]
    Padding {
        mode: &'static str,
        axis: usize,
        length: usize,
        pad: usize,
    },
    #[error(
        "the model's output has shape {got:?} for {windows} windows of {roi:?}: sliding-window inference needs N x K x roi outputs (the window's spatial size)"
    )]
    OutputShape {
        got: Vec<usize>,
        windows: usize,
        roi: Vec<usize>,
    },
}

/// The windows of one image size: where they start, the padding, and the weights.
#[derive(Debug)]
pub(crate) struct Plan {
    roi: Vec<usize>,
    /// The image's spatial size, before padding.
    image: Vec<usize>,
    /// Padding before and after, per spatial axis.
    pad: Vec<(usize, usize)>,
    padding_mode: Padding,
    cval: f32,
    /// Each window's start per spatial axis (in the padded image), last axis fastest.
    pub starts: Vec<Vec<usize>>,
    importance: ArrayD<f32>,
    /// The summed weights over the padded image.
    count: ArrayD<f32>,
}

/// MONAI's scan interval: `roi` when the window covers the axis, else
/// `int(roi * (1 - overlap))`, at least 1.
pub(crate) fn scan_interval(image: usize, roi: usize, overlap: f64) -> usize {
    if roi == image {
        return roi;
    }
    ((roi as f64 * (1.0 - overlap)) as usize).max(1)
}

/// MONAI's `dense_patch_slices` along one axis: the starts of windows of `patch` every
/// `interval` over `image`, the last moved back to end at the border.
pub(crate) fn axis_starts(image: usize, patch: usize, interval: usize) -> Vec<usize> {
    let patch = patch.min(image);
    let num = image.div_ceil(interval);
    let count = (0..num)
        .find(|d| d * interval + patch >= image)
        .map_or(1, |d| d + 1);
    (0..count)
        .map(|i| {
            let start = i * interval;
            start - (start + patch).saturating_sub(image)
        })
        .collect()
}

/// MONAI's `compute_importance_map` for a window of `patch`, in float32.
pub(crate) fn importance_map(patch: &[usize], mode: Blend, sigma_scale: &[f64]) -> ArrayD<f32> {
    let mut map = ArrayD::<f32>::ones(IxDyn(patch));
    if mode == Blend::Gaussian {
        for (axis, &n) in patch.iter().enumerate() {
            let sigma = n as f64 * sigma_scale[axis];
            let denominator = (-2.0 * sigma * sigma) as f32;
            let half = (n as f32 - 1.0) / 2.0;
            let weights: Vec<f32> = (0..n)
                .map(|i| {
                    let x = i as f32 - half;
                    (x * x / denominator).exp()
                })
                .collect();
            // Outer product in MONAI's order: ((w0 * w1) * w2).
            for (mut lane, &w) in map.axis_iter_mut(Axis(axis)).zip(&weights) {
                lane.mapv_inplace(|v| v * w);
            }
        }
    }
    let min = map.iter().copied().fold(f32::INFINITY, f32::min);
    let floor = (min as f64).max(1e-3) as f32;
    map.mapv_inplace(|v| v.max(floor));
    map
}

impl Plan {
    /// The plan for samples of `shape` (channels first: C x spatial...).
    pub(crate) fn new(settings: &Settings, shape: &[usize]) -> Result<Plan, WindowError> {
        let spatial = shape.len().saturating_sub(1);
        if spatial != settings.roi.len() {
            return Err(WindowError::Dimensions {
                roi: settings.roi.clone(),
                spatial,
                shape: shape.to_vec(),
            });
        }
        let image = shape[1..].to_vec();
        let roi = settings.roi.clone();
        let pad: Vec<(usize, usize)> = image
            .iter()
            .zip(&roi)
            .map(|(&i, &r)| {
                let diff = r.saturating_sub(i);
                (diff / 2, diff - diff / 2)
            })
            .collect();
        let padded: Vec<usize> = image.iter().zip(&roi).map(|(&i, &r)| i.max(r)).collect();
        for (axis, (&length, &(before, after))) in image.iter().zip(&pad).enumerate() {
            check_padding(settings.padding_mode, axis, length, before.max(after))?;
        }
        let per_axis: Vec<Vec<usize>> = (0..spatial)
            .map(|a| {
                let interval = scan_interval(padded[a], roi[a], settings.overlap[a]);
                axis_starts(padded[a], roi[a], interval)
            })
            .collect();
        let starts = cartesian(&per_axis);
        let patch: Vec<usize> = padded.iter().zip(&roi).map(|(&p, &r)| p.min(r)).collect();
        let importance = importance_map(&patch, settings.mode, &settings.sigma_scale);
        let mut count = ArrayD::<f32>::zeros(IxDyn(&padded));
        for start in &starts {
            let mut region = count.slice_each_axis_mut(|a| window(start, &roi, a.axis.index()));
            region += &importance;
        }
        Ok(Plan {
            roi,
            image,
            pad,
            padding_mode: settings.padding_mode,
            cval: settings.cval as f32,
            starts,
            importance,
            count,
        })
    }

    pub(crate) fn windows(&self) -> usize {
        self.starts.len()
    }

    /// The windows of one sample (C x spatial): `windows x C x roi`.
    pub(crate) fn cut(&self, sample: ArrayViewD<f32>) -> ArrayD<f32> {
        let padded = self.padded(sample);
        let channels = padded.shape()[0];
        let mut shape = vec![self.windows(), channels];
        shape.extend(&self.roi);
        let mut out = ArrayD::<f32>::zeros(IxDyn(&shape));
        for (w, start) in self.starts.iter().enumerate() {
            let region = padded.slice_each_axis(|a| match a.axis.index() {
                0 => Slice::from(..),
                i => window(start, &self.roi, i - 1),
            });
            out.index_axis_mut(Axis(0), w).assign(&region);
        }
        out
    }

    /// The stitched prediction (K x spatial) from each window's (`windows x K x roi`):
    /// weighted sum, divided by the summed weights, cropped to the image.
    pub(crate) fn stitch(&self, predictions: ArrayViewD<f32>) -> Result<ArrayD<f32>, WindowError> {
        let shape = predictions.shape();
        if shape.len() != self.roi.len() + 2 || shape[0] != self.windows() || shape[2..] != self.roi
        {
            return Err(WindowError::OutputShape {
                got: shape.to_vec(),
                windows: self.windows(),
                roi: self.roi.clone(),
            });
        }
        let channels = shape[1];
        let mut full = vec![channels];
        full.extend(self.count.shape());
        let mut sum = ArrayD::<f32>::zeros(IxDyn(&full));
        for (w, start) in self.starts.iter().enumerate() {
            let prediction = predictions.index_axis(Axis(0), w);
            let mut region = sum.slice_each_axis_mut(|a| match a.axis.index() {
                0 => Slice::from(..),
                i => window(start, &self.roi, i - 1),
            });
            for (mut out, p) in region.outer_iter_mut().zip(prediction.outer_iter()) {
                Zip::from(&mut out)
                    .and(&p)
                    .and(&self.importance)
                    .for_each(|o, &p, &w| *o += p * w);
            }
        }
        for mut channel in sum.outer_iter_mut() {
            Zip::from(&mut channel)
                .and(&self.count)
                .for_each(|o, &c| *o /= c);
        }
        let cropped = sum.slice_each_axis(|a| match a.axis.index() {
            0 => Slice::from(..),
            i => {
                let before = self.pad[i - 1].0 as isize;
                Slice::from(before..before + self.image[i - 1] as isize)
            }
        });
        Ok(cropped.to_owned())
    }

    /// The sample padded to at least the window (C x padded).
    fn padded(&self, sample: ArrayViewD<f32>) -> ArrayD<f32> {
        if self.pad.iter().all(|&(b, a)| b == 0 && a == 0) {
            return sample.to_owned();
        }
        let mut shape = vec![sample.shape()[0]];
        shape.extend(self.count.shape());
        let maps: Vec<Vec<Option<usize>>> = (0..self.image.len())
            .map(|a| source_indices(self.padding_mode, self.image[a], self.pad[a]))
            .collect();
        ArrayD::from_shape_fn(IxDyn(&shape), |index| {
            let mut from = vec![index[0]];
            for (a, map) in maps.iter().enumerate() {
                match map[index[a + 1]] {
                    Some(i) => from.push(i),
                    None => return self.cval,
                }
            }
            sample[IxDyn(&from)]
        })
    }
}

/// The slice of one window along spatial axis `axis`.
fn window(start: &[usize], roi: &[usize], axis: usize) -> Slice {
    let s = start[axis] as isize;
    Slice::from(s..s + roi[axis] as isize)
}

/// Every combination of the per-axis starts, the last axis fastest (numpy's
/// `meshgrid(indexing="ij")` flattened, as MONAI orders its windows).
fn cartesian(per_axis: &[Vec<usize>]) -> Vec<Vec<usize>> {
    per_axis.iter().fold(vec![Vec::new()], |acc, starts| {
        acc.iter()
            .flat_map(|prefix| {
                starts.iter().map(move |&s| {
                    let mut next = prefix.clone();
                    next.push(s);
                    next
                })
            })
            .collect()
    })
}

/// torch's `F.pad` limits: reflect needs a pad below the length, circular at most it.
fn check_padding(mode: Padding, axis: usize, length: usize, pad: usize) -> Result<(), WindowError> {
    let fits = match mode {
        Padding::Constant | Padding::Replicate => true,
        Padding::Reflect => pad < length,
        Padding::Circular => pad <= length,
    };
    if pad == 0 || fits {
        return Ok(());
    }
    let mode = match mode {
        Padding::Reflect => "reflect",
        _ => "circular",
    };
    Err(WindowError::Padding {
        mode,
        axis,
        length,
        pad,
    })
}

/// For each index of a padded axis, the index it reads in the original (None: `cval`).
fn source_indices(
    mode: Padding,
    length: usize,
    (before, after): (usize, usize),
) -> Vec<Option<usize>> {
    let n = length as isize;
    (0..(length + before + after) as isize)
        .map(|i| {
            let x = i - before as isize;
            if (0..n).contains(&x) {
                return Some(x as usize);
            }
            let mapped = match mode {
                Padding::Constant => return None,
                Padding::Replicate => x.clamp(0, n - 1),
                Padding::Reflect if x < 0 => -x,
                Padding::Reflect => 2 * (n - 1) - x,
                Padding::Circular => x.rem_euclid(n),
            };
            Some(mapped as usize)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(roi: &[usize], overlap: f64, mode: Blend) -> Settings {
        Settings {
            roi: roi.to_vec(),
            overlap: vec![overlap; roi.len()],
            mode,
            sigma_scale: vec![0.125; roi.len()],
            sw_batch_size: 1,
            padding_mode: Padding::Constant,
            cval: 0.0,
        }
    }

    #[test]
    fn windows_are_placed_as_monai_places_them() {
        // 160 with a window of 96 and overlap 0.25: every 72, the last moved back to 64.
        assert_eq!(scan_interval(160, 96, 0.25), 72);
        assert_eq!(axis_starts(160, 96, 72), [0, 64]);
        assert_eq!(axis_starts(128, 96, 72), [0, 32]);
        assert_eq!(axis_starts(96, 96, scan_interval(96, 96, 0.25)), [0]);
        assert_eq!(axis_starts(10, 4, 3), [0, 3, 6]);
        assert_eq!(scan_interval(10, 1, 0.5), 1);
        let plan = Plan::new(&settings(&[4, 4], 0.5, Blend::Constant), &[1, 6, 5]).unwrap();
        assert_eq!(
            plan.starts,
            [[0, 0], [0, 1], [2, 0], [2, 1]].map(|s| s.to_vec())
        );
    }

    #[test]
    fn the_gaussian_map_is_clamped_at_a_thousandth() {
        let map = importance_map(&[96, 96, 96], Blend::Gaussian, &[0.125; 3]);
        let max = map.iter().copied().fold(0.0, f32::max);
        let min = map.iter().copied().fold(1.0, f32::min);
        assert_eq!(min, 1e-3);
        assert!((max - (-(0.5f32 * 0.5) / 288.0).exp().powi(3)).abs() < 1e-6);
        let flat = importance_map(&[3, 2], Blend::Constant, &[0.125; 2]);
        assert!(flat.iter().all(|&v| v == 1.0));
    }

    #[test]
    fn a_constant_model_stitches_to_itself_and_padding_is_cropped() {
        let mut s = settings(&[4, 4], 0.25, Blend::Gaussian);
        s.cval = -5.0;
        let plan = Plan::new(&s, &[1, 3, 7]).unwrap();
        let sample = ArrayD::from_shape_fn(IxDyn(&[1, 3, 7]), |i| (i[1] * 7 + i[2]) as f32);
        let windows = plan.cut(sample.view());
        assert_eq!(windows.shape(), [plan.windows(), 1, 4, 4]);
        // The identity model gives back the image, however the windows blend.
        let stitched = plan.stitch(windows.view()).unwrap();
        assert_eq!(stitched.shape(), [1, 3, 7]);
        for (a, b) in stitched.iter().zip(sample.iter()) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
        // Padded to the window (none before, one row after): the last row is cval.
        assert_eq!(windows[[0, 0, 2, 0]], 14.0);
        assert_eq!(windows[[0, 0, 3, 0]], -5.0);
    }

    #[test]
    fn padding_modes_read_as_torch_pads() {
        let map = |mode| source_indices(mode, 3, (2, 2));
        assert_eq!(
            map(Padding::Replicate),
            [0, 0, 0, 1, 2, 2, 2].map(Some).to_vec()
        );
        assert_eq!(
            map(Padding::Reflect),
            [2, 1, 0, 1, 2, 1, 0].map(Some).to_vec()
        );
        assert_eq!(
            map(Padding::Circular),
            [1, 2, 0, 1, 2, 0, 1].map(Some).to_vec()
        );
        assert_eq!(map(Padding::Constant)[0], None);
        assert!(check_padding(Padding::Reflect, 0, 2, 2).is_err());
        assert!(check_padding(Padding::Circular, 0, 2, 2).is_ok());
    }

    #[test]
    fn mismatched_dimensions_and_outputs_are_named() {
        let error =
            Plan::new(&settings(&[4, 4, 4], 0.25, Blend::Constant), &[1, 8, 8]).unwrap_err();
        assert!(error.to_string().contains("2 spatial axes"), "{error}");
        let plan = Plan::new(&settings(&[4, 4], 0.25, Blend::Constant), &[1, 8, 8]).unwrap();
        let wrong = ArrayD::<f32>::zeros(IxDyn(&[plan.windows(), 2, 2, 2]));
        assert!(plan.stitch(wrong.view()).is_err());
    }
}
