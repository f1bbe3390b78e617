//! The `pil` backend of `resize`: Pillow's `Image.resize` (what torchvision's `Resize`
//! runs on a PIL image) on 8-bit planes, bit for bit, as Pillow 13 (the toolchain's)
//! computes it. Pillow resamples separably, each pass rounding to 8 bits, horizontal pass
//! first unless the height shrinks by more than twice as many pixels as the width (then
//! vertical first; Pillow 12 and older always go horizontal first); its weights are computed in f64
//! (support widened by the downscale factor, so shrinking is antialiased), normalized,
//! then turned into fixed point with 22 fractional bits, and each output is the rounded,
//! clamped sum of `pixel * weight`. This module follows that arithmetic step by step.

use ndarray::ArrayD;

use super::resample::Filter;

/// Fractional bits of Pillow's fixed-point weights (`32 - 8 - 2`).
const PRECISION_BITS: u32 = 22;

/// The fixed-point weights of one pass: for output `i`, `len` weights from input `start`,
/// stored at `weights[i * ksize..]`.
struct Coefficients {
    bounds: Vec<(usize, usize)>,
    ksize: usize,
    weights: Vec<i32>,
}

/// Pillow's `precompute_coeffs` then `normalize_coeffs_8bpc`, for the whole axis.
fn coefficients(in_len: usize, out_len: usize, filter: Filter) -> Coefficients {
    // The box is (0, in_len) in f32, as Pillow passes it; sizes below 2^24 are exact.
    let scale = f64::from(in_len as f32) / out_len as f64;
    let filter_scale = scale.max(1.0);
    let support = filter.support() * filter_scale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_len);
    let mut weights = vec![0i32; out_len * ksize];
    let mut row = vec![0f64; ksize];
    for i in 0..out_len {
        let center = (i as f64 + 0.5) * scale;
        let inverse = 1.0 / filter_scale;
        // C's `(int)` truncates toward zero; the clamps make that a floor here.
        let start = ((center - support + 0.5) as i64).max(0) as usize;
        let end = ((center + support + 0.5) as i64).min(in_len as i64) as usize;
        let len = end.saturating_sub(start);
        let mut total = 0.0;
        for (k, slot) in row.iter_mut().enumerate().take(len) {
            let w = filter.weight(((start + k) as f64 - center + 0.5) * inverse);
            *slot = w;
            total += w;
        }
        for (k, slot) in row.iter().enumerate().take(len) {
            let w = if total != 0.0 { slot / total } else { *slot };
            weights[i * ksize + k] = fixed_point(w);
        }
        bounds.push((start, len));
    }
    Coefficients {
        bounds,
        ksize,
        weights,
    }
}

/// A normalized weight in fixed point, rounded half away from zero then truncated.
fn fixed_point(w: f64) -> i32 {
    let scaled = w * f64::from(1u32 << PRECISION_BITS);
    if w < 0.0 {
        (scaled - 0.5) as i32
    } else {
        (scaled + 0.5) as i32
    }
}

/// One output value: Pillow's rounding constant, the weighted sum, then `clip8`.
fn weighted(values: impl Iterator<Item = u8>, weights: &[i32]) -> u8 {
    let mut sum: i64 = 1 << (PRECISION_BITS - 1);
    for (v, &w) in values.zip(weights) {
        sum += i64::from(v) * i64::from(w);
    }
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// The horizontal pass over one `height x width` plane.
fn horizontal(plane: &[u8], width: usize, c: &Coefficients) -> Vec<u8> {
    let out_width = c.bounds.len();
    let mut out = Vec::with_capacity(plane.len() / width.max(1) * out_width);
    for row in plane.chunks_exact(width) {
        for (i, &(start, len)) in c.bounds.iter().enumerate() {
            let weights = &c.weights[i * c.ksize..i * c.ksize + len];
            out.push(weighted(row[start..start + len].iter().copied(), weights));
        }
    }
    out
}

/// The vertical pass over one plane of `width` columns.
fn vertical(plane: &[u8], width: usize, c: &Coefficients) -> Vec<u8> {
    let mut out = Vec::with_capacity(c.bounds.len() * width);
    for (i, &(start, len)) in c.bounds.iter().enumerate() {
        let weights = &c.weights[i * c.ksize..i * c.ksize + len];
        for x in 0..width {
            let column = (start..start + len).map(|y| plane[y * width + x]);
            out.push(weighted(column, weights));
        }
    }
    out
}

/// Why Pillow's resize cannot take a sample.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub(crate) enum PilError {
    #[error(
        "resize with backend = \"pil\" works on 8-bit images (whole values 0..255, before to_float), but the sample holds {value}; place the resize before to_float, scale and normalize, or use backend = \"tensor\""
    )]
    NotEightBit { value: f32 },
    #[error("resize cannot map {}x{} to {}x{}: a side is 0", .size[0], .size[1], .target[0], .target[1])]
    ZeroSide {
        size: [usize; 2],
        target: [usize; 2],
    },
    #[error(transparent)]
    Shape(#[from] ndarray::ShapeError),
}

/// Resizes the last two axes of `sample` (every leading index, e.g. each RGB channel, is
/// one 8-bit plane) to `[out_h, out_w]` as Pillow's `Image.resize` does. The values must
/// be whole numbers in 0..=255, as decoded images are before `to_float`.
pub(super) fn resize(
    sample: &ArrayD<f32>,
    out_h: usize,
    out_w: usize,
    filter: Filter,
) -> Result<ArrayD<f32>, PilError> {
    let ndim = sample.ndim();
    let (h, w) = (sample.shape()[ndim - 2], sample.shape()[ndim - 1]);
    let bytes = to_u8(sample)?;
    let mut shape = sample.shape().to_vec();
    shape[ndim - 2] = out_h;
    shape[ndim - 1] = out_w;
    if h * w == 0 || out_h * out_w == 0 {
        return Err(PilError::ZeroSide {
            size: [h, w],
            target: [out_h, out_w],
        });
    }
    let horizontal_pass = (out_w != w).then(|| coefficients(w, out_w, filter));
    let vertical_pass = (out_h != h).then(|| coefficients(h, out_h, filter));
    let vertical_first = vertical_first([h, w], [out_h, out_w]);
    let mut out = Vec::with_capacity(shape.iter().product());
    for plane in bytes.chunks_exact(h * w) {
        let mut plane = plane.to_vec();
        let mut width = w;
        let across = |plane: Vec<u8>, width: &mut usize| match &horizontal_pass {
            Some(c) => {
                let out = horizontal(&plane, *width, c);
                *width = out_w;
                out
            }
            None => plane,
        };
        let down = |plane: Vec<u8>, width: usize| match &vertical_pass {
            Some(c) => vertical(&plane, width, c),
            None => plane,
        };
        if vertical_first {
            plane = down(plane, width);
            plane = across(plane, &mut width);
        } else {
            plane = across(plane, &mut width);
            plane = down(plane, width);
        }
        out.extend(plane.into_iter().map(f32::from));
    }
    Ok(ArrayD::from_shape_vec(shape, out)?)
}

/// Pillow 13's choice of pass order: vertical first when the height loses more than
/// twice as many pixels as the width (in whole pixels, as its C code compares them).
fn vertical_first([h, w]: [usize; 2], [out_h, out_w]: [usize; 2]) -> bool {
    let shrink_h = h as i64 - out_h as i64;
    let shrink_w = w as i64 - out_w as i64;
    shrink_h > 0 && shrink_h > shrink_w * 2
}

/// The sample's values as bytes, or an error naming the first value that is not one.
fn to_u8(sample: &ArrayD<f32>) -> Result<Vec<u8>, PilError> {
    sample
        .iter()
        .map(|&v| {
            if (0.0..=255.0).contains(&v) && v.fract() == 0.0 {
                Ok(v as u8)
            } else {
                Err(PilError::NotEightBit { value: v })
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_point_weights_of_a_halving_match_pillows_arithmetic() {
        // 4 -> 2 bilinear: centre 1.0, support 2, weights 0.75, 0.75, 0.25 (normalized by
        // 1.75), each scaled by 2^22 and rounded half away from zero.
        let c = coefficients(4, 2, Filter::Bilinear);
        assert_eq!(c.bounds[0], (0, 3));
        let expected: Vec<i32> = [0.75, 0.75, 0.25]
            .iter()
            .map(|w| (w / 1.75 * 4_194_304.0 + 0.5) as i32)
            .collect();
        assert_eq!(&c.weights[..3], expected.as_slice());
        assert_eq!(fixed_point(-0.1), (-0.1f64 * 4_194_304.0 - 0.5) as i32);
    }

    #[test]
    fn the_pass_order_follows_pillow_13() {
        // 49 -> 2 rows loses 47, 80 -> 59 columns 21: vertical first.
        assert!(vertical_first([49, 80], [2, 59]));
        // 44 -> 2 loses 42, but 110 -> 74 loses 36 (x 2 = 72): horizontal first.
        assert!(!vertical_first([44, 110], [2, 74]));
        assert!(!vertical_first([18, 4], [91, 121]));
        // The order matters: rounding to 8 bits between the passes differs.
        let plane: Vec<f32> = (0..49 * 80)
            .map(|i| ((i * 37 + i / 80 * 11) % 256) as f32)
            .collect();
        let sample = ArrayD::from_shape_vec(vec![1, 49, 80], plane).unwrap();
        let ours = resize(&sample, 2, 59, Filter::Bilinear).unwrap();
        let bytes = to_u8(&sample).unwrap();
        let across = horizontal(&bytes, 80, &coefficients(80, 59, Filter::Bilinear));
        let other = vertical(&across, 59, &coefficients(49, 2, Filter::Bilinear));
        let other: Vec<f32> = other.into_iter().map(f32::from).collect();
        assert_ne!(ours.as_slice().unwrap(), other.as_slice());
    }

    #[test]
    fn constant_planes_stay_constant_and_bicubic_is_clamped() {
        let constant = ArrayD::from_elem(vec![3, 7, 5], 200.0f32);
        for filter in [Filter::Bilinear, Filter::Bicubic] {
            let out = resize(&constant, 3, 11, filter).unwrap();
            assert_eq!(out.shape(), &[3, 3, 11]);
            assert!(out.iter().all(|&v| v == 200.0), "{filter:?}");
        }
        // A hard edge overshoots with bicubic; Pillow clamps to 0..255.
        let edge = ArrayD::from_shape_vec(vec![1, 1, 4], vec![0.0, 0.0, 255.0, 255.0]).unwrap();
        let out = resize(&edge, 1, 9, Filter::Bicubic).unwrap();
        assert!(out.iter().all(|&v| (0.0..=255.0).contains(&v)));
        assert!(resize(&(edge / 255.0 * 0.5), 1, 9, Filter::Bicubic).is_err());
    }
}
