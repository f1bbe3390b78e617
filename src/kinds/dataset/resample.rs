//! The float backend of `resize` (`backend = "tensor"`): antialiased resampling along one
//! axis as torchvision's `Resize(antialias=True)` computes it on float tensors: the
//! filter's support widens with the downscale factor, pixel centres at half-integers,
//! weights normalized. Weights and sums are in f64, so a constant region stays exactly
//! constant. The filters themselves are Pillow's (shared with the `pil` backend).

use ndarray::{ArrayD, Axis, Zip};
use serde::Serialize;

/// The resampling filter of `resize`: Pillow's `BILINEAR` (a triangle, support 1) or
/// `BICUBIC` (Keys' cubic with a = -0.5, support 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Filter {
    #[default]
    Bilinear,
    Bicubic,
}

impl Filter {
    /// Half the filter's width at scale 1.
    pub(super) fn support(self) -> f64 {
        match self {
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
        }
    }

    /// The filter's weight at `x`, evaluated in the order Pillow's `Resample.c` does.
    pub(super) fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Filter::Bilinear => {
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Filter::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

/// For each output position: the first input index and the weights from there on.
pub(super) fn coefficients(
    in_len: usize,
    out_len: usize,
    filter: Filter,
) -> Vec<(usize, Vec<f64>)> {
    let scale = in_len as f64 / out_len as f64;
    let filter_scale = scale.max(1.0);
    let support = filter.support() * filter_scale;
    (0..out_len)
        .map(|i| {
            let center = (i as f64 + 0.5) * scale;
            let start = (center - support + 0.5).floor().max(0.0) as usize;
            let end = ((center + support + 0.5).floor() as usize).min(in_len);
            let mut weights: Vec<f64> = (start..end)
                .map(|x| filter.weight((x as f64 - center + 0.5) / filter_scale))
                .collect();
            let total: f64 = weights.iter().sum();
            if total > 0.0 {
                weights.iter_mut().for_each(|w| *w /= total);
            }
            (start, weights)
        })
        .collect()
}

/// Resamples `input` along `axis` to `out_len` positions.
pub(super) fn resample_axis(
    input: &ArrayD<f32>,
    axis: usize,
    out_len: usize,
    filter: Filter,
) -> ArrayD<f32> {
    let in_len = input.shape()[axis];
    if in_len == out_len {
        return input.clone();
    }
    let coefficients = coefficients(in_len, out_len, filter);
    let mut shape = input.shape().to_vec();
    shape[axis] = out_len;
    let mut output = ArrayD::<f32>::zeros(shape);
    Zip::from(input.lanes(Axis(axis)))
        .and(output.lanes_mut(Axis(axis)))
        .for_each(|source, mut target| {
            for (value, (start, weights)) in target.iter_mut().zip(&coefficients) {
                let sum: f64 = weights
                    .iter()
                    .enumerate()
                    .map(|(k, w)| f64::from(source[start + k]) * w)
                    .sum();
                *value = sum as f32;
            }
        });
    output
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_and_stay_in_range() {
        for filter in [Filter::Bilinear, Filter::Bicubic] {
            for (input, output) in [(10, 3), (3, 10), (224, 256), (256, 224), (5, 5)] {
                for (start, weights) in coefficients(input, output, filter) {
                    assert!((weights.iter().sum::<f64>() - 1.0).abs() < 1e-12);
                    assert!(start + weights.len() <= input);
                }
            }
        }
    }

    #[test]
    fn halving_averages_neighbour_pairs() {
        // Downscaling by 2: the first output (centre 1.0) weighs pixels 0, 1, 2 as
        // 0.75, 0.75, 0.25 before normalization (PIL's coefficients).
        let input = ArrayD::from_shape_vec(vec![1, 4], vec![0.0, 8.0, 16.0, 24.0]).unwrap();
        let output = resample_axis(&input, 1, 2, Filter::Bilinear);
        assert_eq!(output.shape(), &[1, 2]);
        let coefficients = coefficients(4, 2, Filter::Bilinear);
        assert_eq!(coefficients[0].0, 0);
        assert_eq!(
            coefficients[0].1,
            vec![0.75 / 1.75, 0.75 / 1.75, 0.25 / 1.75]
        );
        let expected: f64 = coefficients[0]
            .1
            .iter()
            .zip([0.0, 8.0, 16.0, 24.0])
            .map(|(w, v)| w * v)
            .sum();
        assert_eq!(output[[0, 0]], expected as f32);
        assert!(output[[0, 0]] < output[[0, 1]]);
    }

    #[test]
    fn upscaling_keeps_the_edges_and_constant_values() {
        let input = ArrayD::from_shape_vec(vec![2], vec![0.0, 1.0]).unwrap();
        let output = resample_axis(&input, 0, 4, Filter::Bilinear);
        assert_eq!(output.as_slice().unwrap(), &[0.0, 0.25, 0.75, 1.0]);
        let constant = ArrayD::from_elem(vec![3, 7], 0.3f32);
        assert!(
            resample_axis(&constant, 1, 5, Filter::Bicubic)
                .iter()
                .all(|&v| v == 0.3)
        );
    }
}
