//! Segmentation metrics as MONAI defines them (reimplemented from MONAI's documented
//! definitions, not copied): `DiceMetric`, `MeanIoU` and `HausdorffDistanceMetric` with
//! `percentile = 95`, per sample and class, reduced like MONAI's `do_metric_reduction`;
//! and the pooled Dice of earlier pochi versions as an option.

use serde::{Serialize, Serializer};

use super::metrics::quantile;

/// How per-class Dice is reduced over the samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Reduction {
    /// Per sample, then the mean over the samples whose value is defined (MONAI's
    /// `DiceMetric`, reduction `mean_batch` per class, `mean` overall).
    MeanBatch,
    /// Over all voxels of all samples at once.
    Pooled,
}

/// The `dice = { ... }` options, defaults as MONAI's `DiceMetric()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct DiceOptions {
    pub reduction: Reduction,
    pub include_background: bool,
    pub ignore_empty: bool,
}

impl Default for DiceOptions {
    fn default() -> Self {
        DiceOptions {
            reduction: Reduction::MeanBatch,
            include_background: true,
            ignore_empty: true,
        }
    }
}

/// Label maps of `samples` volumes of `spatial` voxels each (`shape` = the spatial axes).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Volumes<'a> {
    pub predicted: &'a [usize],
    /// `usize::MAX` marks a voxel with no label (left out of every figure).
    pub truth: &'a [usize],
    pub classes: usize,
    pub shape: &'a [usize],
}

/// Every figure of one model against one truth. NaN: not defined (MONAI's NaN).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Segmentation {
    pub options: DiceOptions,
    /// The classes of the Dice and IoU figures (without 0 unless `include_background`).
    pub classes: Vec<usize>,
    #[serde(serialize_with = "figures")]
    pub dice_per_class: Vec<f64>,
    #[serde(serialize_with = "figure")]
    pub mean_dice: f64,
    #[serde(serialize_with = "figures")]
    pub iou_per_class: Vec<f64>,
    #[serde(serialize_with = "figure")]
    pub mean_iou: f64,
    /// The classes of the Hausdorff distance: the foreground (1..), as
    /// `HausdorffDistanceMetric`'s default `include_background = False`.
    pub hd95_classes: Vec<usize>,
    #[serde(serialize_with = "figures")]
    pub hd95_per_class: Vec<f64>,
    #[serde(serialize_with = "figure")]
    pub mean_hd95: f64,
    /// `[sample][k]` for `classes[k]`.
    #[serde(skip)]
    pub dice_per_sample: Vec<Vec<f64>>,
    #[serde(skip)]
    pub iou_per_sample: Vec<Vec<f64>>,
    /// `[sample][k]` for `hd95_classes[k]`.
    #[serde(skip)]
    pub hd95_per_sample: Vec<Vec<f64>>,
}

/// A figure in JSON: a number, `null` when not defined, `"inf"` when infinite.
fn figure<S: Serializer>(value: &f64, serializer: S) -> Result<S::Ok, S::Error> {
    if value.is_nan() {
        serializer.serialize_none()
    } else if value.is_infinite() {
        serializer.serialize_str(if *value > 0.0 { "inf" } else { "-inf" })
    } else {
        serializer.serialize_f64(*value)
    }
}

fn figures<S: Serializer>(values: &[f64], serializer: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    struct One(f64);
    impl Serialize for One {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            figure(&self.0, serializer)
        }
    }
    let mut seq = serializer.serialize_seq(Some(values.len()))?;
    for &v in values {
        seq.serialize_element(&One(v))?;
    }
    seq.end()
}

/// Voxel counts of one class: intersection, predicted, truth.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    both: u64,
    predicted: u64,
    truth: u64,
}

impl Counts {
    fn add(&mut self, other: Counts) {
        self.both += other.both;
        self.predicted += other.predicted;
        self.truth += other.truth;
    }

    /// MONAI's Dice of one channel.
    fn dice(self, ignore_empty: bool) -> f64 {
        let sum = self.truth + self.predicted;
        if self.truth > 0 {
            2.0 * self.both as f64 / sum as f64
        } else if ignore_empty {
            f64::NAN
        } else if sum == 0 {
            1.0
        } else {
            2.0 * self.both as f64 / sum as f64
        }
    }

    /// MONAI's IoU of one channel.
    fn iou(self, ignore_empty: bool) -> f64 {
        let union = self.truth + self.predicted - self.both;
        if ignore_empty && self.truth == 0 {
            f64::NAN
        } else if union == 0 {
            1.0
        } else {
            self.both as f64 / union as f64
        }
    }
}

/// Counts per sample and class (voxels without a label left out).
fn counts(v: &Volumes) -> Vec<Vec<Counts>> {
    let spatial: usize = v.shape.iter().product::<usize>().max(1);
    v.predicted
        .chunks(spatial)
        .zip(v.truth.chunks(spatial))
        .map(|(p, t)| {
            let mut per_class = vec![Counts::default(); v.classes];
            for (&p, &t) in p.iter().zip(t) {
                if t == usize::MAX {
                    continue;
                }
                if let Some(c) = per_class.get_mut(p) {
                    c.predicted += 1;
                }
                if let Some(c) = per_class.get_mut(t) {
                    c.truth += 1;
                    if p == t {
                        c.both += 1;
                    }
                }
            }
            per_class
        })
        .collect()
}

/// MONAI's `mean_batch`: per column, the mean of the values that are not NaN.
pub(crate) fn mean_batch(rows: &[Vec<f64>], columns: usize) -> Vec<f64> {
    (0..columns)
        .map(|k| mean_not_nan(rows.iter().filter_map(|r| r.get(k).copied())))
        .collect()
}

/// MONAI's `mean`: per row the mean of its values that are not NaN, then the mean of the
/// rows that have one. NaN when no value is defined (MONAI gives 0 there).
pub(crate) fn mean(rows: &[Vec<f64>]) -> f64 {
    mean_not_nan(rows.iter().map(|r| mean_not_nan(r.iter().copied())))
}

fn mean_not_nan(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values
        .filter(|v| !v.is_nan())
        .fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 { f64::NAN } else { sum / n as f64 }
}

/// Dice, IoU and the 95th-percentile Hausdorff distance of `v` under `options`.
pub(crate) fn evaluate(v: &Volumes, options: DiceOptions) -> Segmentation {
    let first = usize::from(!options.include_background && v.classes > 1);
    let classes: Vec<usize> = (first..v.classes).collect();
    let per_sample = counts(v);
    let table = |f: &dyn Fn(Counts) -> f64| -> Vec<Vec<f64>> {
        per_sample
            .iter()
            .map(|row| classes.iter().map(|&c| f(row[c])).collect())
            .collect()
    };
    let dice_per_sample = table(&|c| c.dice(options.ignore_empty));
    let iou_per_sample = table(&|c| c.iou(options.ignore_empty));
    let (dice_per_class, mean_dice) = match options.reduction {
        Reduction::MeanBatch => (
            mean_batch(&dice_per_sample, classes.len()),
            mean(&dice_per_sample),
        ),
        Reduction::Pooled => {
            let pooled: Vec<f64> = classes
                .iter()
                .map(|&c| {
                    let mut total = Counts::default();
                    per_sample.iter().for_each(|row| total.add(row[c]));
                    total.dice(options.ignore_empty)
                })
                .collect();
            let overall = mean_not_nan(pooled.iter().copied());
            (pooled, overall)
        }
    };
    let hd95_classes: Vec<usize> = (1.min(v.classes.saturating_sub(1))..v.classes).collect();
    let hd95_per_sample = hausdorff_table(v, &hd95_classes, 95.0);
    Segmentation {
        options,
        iou_per_class: mean_batch(&iou_per_sample, classes.len()),
        mean_iou: mean(&iou_per_sample),
        classes,
        dice_per_class,
        mean_dice,
        hd95_per_class: mean_batch(&hd95_per_sample, hd95_classes.len()),
        mean_hd95: mean(&hd95_per_sample),
        hd95_classes,
        dice_per_sample,
        iou_per_sample,
        hd95_per_sample,
    }
}

/// `[sample][k]`: the symmetric `percentile` Hausdorff distance of class `classes[k]`.
fn hausdorff_table(v: &Volumes, classes: &[usize], percentile: f64) -> Vec<Vec<f64>> {
    let spatial: usize = v.shape.iter().product::<usize>().max(1);
    v.predicted
        .chunks(spatial)
        .zip(v.truth.chunks(spatial))
        .map(|(p, t)| {
            classes
                .iter()
                .map(|&c| {
                    let predicted: Vec<bool> = p
                        .iter()
                        .zip(t)
                        .map(|(&p, &t)| p == c && t != usize::MAX)
                        .collect();
                    let truth: Vec<bool> = t.iter().map(|&t| t == c).collect();
                    hausdorff(&predicted, &truth, v.shape, percentile)
                })
                .collect()
        })
        .collect()
}

/// MONAI's `compute_hausdorff_distance(percentile, directed = False)` on two masks: the
/// larger of the two directed percentiles of the distances from each surface voxel of one
/// mask to the nearest surface voxel of the other (Euclidean, unit spacing). NaN when
/// either is empty: MONAI 1.6 takes `torch.quantile` of infinite distances there, which
/// interpolates `inf - inf` to NaN.
pub(crate) fn hausdorff(
    predicted: &[bool],
    truth: &[bool],
    shape: &[usize],
    percentile: f64,
) -> f64 {
    let edges_p = edges(predicted, shape);
    let edges_t = edges(truth, shape);
    let any_p = edges_p.iter().any(|&e| e);
    let any_t = edges_t.iter().any(|&e| e);
    match (any_p, any_t) {
        (false, _) | (_, false) => f64::NAN,
        (true, true) => {
            let one = directed(&edges_p, &edges_t, shape, percentile);
            let two = directed(&edges_t, &edges_p, shape, percentile);
            one.max(two)
        }
    }
}

/// The `percentile` of the distances from each voxel of `from` to the nearest of `to`.
fn directed(from: &[bool], to: &[bool], shape: &[usize], percentile: f64) -> f64 {
    let squared = squared_distance_to(to, shape);
    let mut distances: Vec<f64> = from
        .iter()
        .zip(&squared)
        .filter(|(f, _)| **f)
        .map(|(_, d)| d.sqrt())
        .collect();
    distances.sort_by(f64::total_cmp);
    quantile(&distances, percentile / 100.0)
}

/// The surface of a mask: its voxels with a face neighbour outside it or outside the
/// array (the mask minus its binary erosion by the cross-shaped element, border 0).
pub(crate) fn edges(mask: &[bool], shape: &[usize]) -> Vec<bool> {
    let strides = strides(shape);
    let mut index = vec![0usize; shape.len()];
    let mut out = vec![false; mask.len()];
    for (i, &inside) in mask.iter().enumerate() {
        if inside {
            out[i] = shape.iter().enumerate().any(|(axis, &n)| {
                let at = index[axis];
                let s = strides[axis];
                at == 0 || at + 1 == n || !mask[i - s] || !mask[i + s]
            });
        }
        // The next voxel's index, last axis fastest.
        for axis in (0..shape.len()).rev() {
            index[axis] += 1;
            if index[axis] < shape[axis] {
                break;
            }
            index[axis] = 0;
        }
    }
    out
}

fn strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1usize; shape.len()];
    for axis in (0..shape.len().saturating_sub(1)).rev() {
        strides[axis] = strides[axis + 1] * shape[axis + 1];
    }
    strides
}

/// Exact squared Euclidean distance from every voxel to the nearest `true` voxel of
/// `targets` (separable: Felzenszwalb and Huttenlocher's lower envelope per axis).
pub(crate) fn squared_distance_to(targets: &[bool], shape: &[usize]) -> Vec<f64> {
    let mut grid: Vec<f64> = targets
        .iter()
        .map(|&t| if t { 0.0 } else { f64::INFINITY })
        .collect();
    let strides = strides(shape);
    let total = grid.len();
    for (axis, &n) in shape.iter().enumerate() {
        let stride = strides[axis];
        let mut line = vec![0.0; n];
        let mut out = vec![0.0; n];
        // Every line along `axis` starts at an index whose coordinate on `axis` is 0.
        for start in (0..total).filter(|i| (i / stride).is_multiple_of(n)) {
            for (k, value) in line.iter_mut().enumerate() {
                *value = grid[start + k * stride];
            }
            envelope(&line, &mut out);
            for (k, value) in out.iter().enumerate() {
                grid[start + k * stride] = *value;
            }
        }
    }
    grid
}

/// One-dimensional squared distance transform of `f` (infinite = no target) into `out`.
fn envelope(f: &[f64], out: &mut [f64]) {
    let n = f.len();
    let finite: Vec<usize> = (0..n).filter(|&q| f[q].is_finite()).collect();
    if finite.is_empty() {
        out.iter_mut().for_each(|o| *o = f64::INFINITY);
        return;
    }
    // Parabolas of the lower envelope (their apexes) and where each starts to be lowest.
    let mut apex: Vec<usize> = Vec::with_capacity(finite.len());
    let mut from: Vec<f64> = Vec::with_capacity(finite.len());
    for &q in &finite {
        let mut start = f64::NEG_INFINITY;
        while let Some(&p) = apex.last() {
            let (qf, pf) = (q as f64, p as f64);
            let meet = ((f[q] + qf * qf) - (f[p] + pf * pf)) / (2.0 * (qf - pf));
            if meet <= *from.last().unwrap_or(&f64::NEG_INFINITY) {
                apex.pop();
                from.pop();
            } else {
                start = meet;
                break;
            }
        }
        apex.push(q);
        from.push(start);
    }
    let mut k = 0;
    for (x, o) in out.iter_mut().enumerate() {
        let xf = x as f64;
        while k + 1 < apex.len() && from[k + 1] < xf {
            k += 1;
        }
        let d = xf - apex[k] as f64;
        *o = d * d + f[apex[k]];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Brute force: the squared distance to the nearest target.
    fn brute(targets: &[bool], shape: &[usize]) -> Vec<f64> {
        let coords = |mut i: usize| -> Vec<f64> {
            let mut c = vec![0.0; shape.len()];
            for axis in (0..shape.len()).rev() {
                c[axis] = (i % shape[axis]) as f64;
                i /= shape[axis];
            }
            c
        };
        (0..targets.len())
            .map(|i| {
                let a = coords(i);
                (0..targets.len())
                    .filter(|&j| targets[j])
                    .map(|j| {
                        let b = coords(j);
                        a.iter().zip(&b).map(|(x, y)| (x - y).powi(2)).sum::<f64>()
                    })
                    .fold(f64::INFINITY, f64::min)
            })
            .collect()
    }

    #[test]
    fn the_distance_transform_is_exact() {
        let shape = [4, 5, 6];
        let targets: Vec<bool> = (0..120).map(|i| (i * 37) % 11 == 3).collect();
        assert_eq!(
            squared_distance_to(&targets, &shape),
            brute(&targets, &shape)
        );
        let one: Vec<bool> = (0..120).map(|i| i == 7).collect();
        assert_eq!(squared_distance_to(&one, &shape), brute(&one, &shape));
    }

    #[test]
    fn edges_are_the_mask_minus_its_erosion() {
        // A filled 3x3 square in a 5x5 image: all but its centre is edge.
        let mask: Vec<bool> = (0..25)
            .map(|i| (1..4).contains(&(i / 5)) && (1..4).contains(&(i % 5)))
            .collect();
        let e = edges(&mask, &[5, 5]);
        assert_eq!(e.iter().filter(|&&x| x).count(), 8);
        assert!(!e[12]);
        // Touching the array's border counts as an edge.
        assert_eq!(edges(&[true; 9], &[3, 3]).iter().filter(|&&x| x).count(), 8);
    }

    #[test]
    fn hausdorff_by_hand() {
        // 1 x 7 line: truth at 1..=2, prediction at 4..=5: surfaces 1,2 and 4,5.
        let truth = [false, true, true, false, false, false, false];
        let predicted = [false, false, false, false, true, true, false];
        // Distances pred -> truth: 2, 3; truth -> pred: 3, 2; p95 = 2 + 0.95 = 2.95.
        let hd = hausdorff(&predicted, &truth, &[1, 7], 95.0);
        assert!((hd - 2.95).abs() < 1e-12, "{hd}");
        assert!(hausdorff(&[false; 7], &truth, &[1, 7], 95.0).is_nan());
        assert!(hausdorff(&[false; 7], &[false; 7], &[1, 7], 95.0).is_nan());
    }

    #[test]
    fn dice_and_iou_follow_monai_on_empty_classes() {
        // Two samples of 4 voxels, 3 classes; class 2 appears only as a false positive in
        // sample 1, nowhere in the truth.
        let truth = [0, 1, 1, 0, 0, 0, 1, 1];
        let predicted = [0, 1, 0, 0, 2, 0, 1, 1];
        let v = Volumes {
            predicted: &predicted,
            truth: &truth,
            classes: 3,
            shape: &[4],
        };
        let s = evaluate(&v, DiceOptions::default());
        assert_eq!(s.classes, [0, 1, 2]);
        // Sample 0: class 0: 2*2/(2+3) = 0.8, class 1: 2*1/(2+1), class 2: NaN.
        assert!((s.dice_per_sample[0][0] - 0.8).abs() < 1e-12);
        assert!((s.dice_per_sample[0][1] - 2.0 / 3.0).abs() < 1e-12);
        assert!(s.dice_per_sample[0][2].is_nan() && s.dice_per_sample[1][2].is_nan());
        let pooled = evaluate(
            &v,
            DiceOptions {
                reduction: Reduction::Pooled,
                include_background: false,
                ignore_empty: false,
            },
        );
        assert_eq!(pooled.classes, [1, 2]);
        // Class 2 is empty in the truth and predicted once: 0 when not ignored.
        assert_eq!(pooled.dice_per_class[1], 0.0);
        // Class 1 pooled: both 3, predicted 3, truth 4: 6/7.
        assert!((pooled.dice_per_class[0] - 6.0 / 7.0).abs() < 1e-12);
    }
}
