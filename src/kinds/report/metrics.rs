//! The report's figures, as pure functions over plain slices: latency statistics, parity
//! against a reference, classification and segmentation metrics.

use serde::Serialize;

/// Latency statistics over timed runs, in milliseconds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct Latency {
    pub runs: usize,
    pub batch: usize,
    pub min_ms: f64,
    pub mean_ms: f64,
    pub median_ms: f64,
    pub p90_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Standard deviation over mean (outliers weigh in).
    pub cv: f64,
    /// Robust spread: (p90 - p10) / median; the noise warning uses this.
    pub spread: f64,
    /// Samples per second: runs x batch over the summed run times.
    pub throughput: f64,
}

/// Runs whose robust spread ((p90 - p10) / median) exceeds this are flagged as too noisy
/// to compare.
pub(crate) const NOISY_CV: f64 = 0.25;

/// The `q`-quantile (0..=1) of sorted values, linearly interpolated (numpy's default).
pub(crate) fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let position = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let low = position.floor() as usize;
    let high = position.ceil() as usize;
    let fraction = position - low as f64;
    sorted[low] + (sorted[high] - sorted[low]) * fraction
}

/// Statistics of run times in seconds, for runs of `batch` samples each (`samples` in all:
/// the last batch of the data may be smaller).
pub(crate) fn latency(times_s: &[f64], samples: usize, batch: usize) -> Latency {
    let mut ms: Vec<f64> = times_s.iter().map(|t| t * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    let n = ms.len().max(1) as f64;
    let total: f64 = ms.iter().sum();
    let mean = total / n;
    let variance = ms.iter().map(|m| (m - mean).powi(2)).sum::<f64>() / n;
    Latency {
        runs: ms.len(),
        batch,
        min_ms: ms.first().copied().unwrap_or(f64::NAN),
        mean_ms: mean,
        median_ms: quantile(&ms, 0.5),
        p90_ms: quantile(&ms, 0.9),
        p95_ms: quantile(&ms, 0.95),
        p99_ms: quantile(&ms, 0.99),
        max_ms: ms.last().copied().unwrap_or(f64::NAN),
        cv: if mean > 0.0 {
            variance.sqrt() / mean
        } else {
            0.0
        },
        spread: {
            let median = quantile(&ms, 0.5);
            if median > 0.0 {
                (quantile(&ms, 0.9) - quantile(&ms, 0.1)) / median
            } else {
                0.0
            }
        },
        throughput: if total > 0.0 {
            samples as f64 / (total / 1e3)
        } else {
            0.0
        },
    }
}

/// How one output compares with its reference.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct Parity {
    pub values: usize,
    pub max_abs: f64,
    pub mean_abs: f64,
    pub p99_abs: f64,
    /// |a - r| / max(|r|, 1e-6 x max|r|, tiny)
    pub max_rel: f64,
    pub mean_rel: f64,
    pub cosine: f64,
    /// Largest |reference| (the scale `rtol` applies to).
    pub ref_max_abs: f64,
    /// NaN or Inf in the model's output.
    pub non_finite: usize,
}

/// Compares `actual` with `reference` (same length).
pub(crate) fn parity(actual: &[f32], reference: &[f32]) -> Parity {
    let ref_max_abs = reference
        .iter()
        .map(|r| f64::from(r.abs()))
        .fold(0.0, f64::max);
    let floor = (ref_max_abs * 1e-6).max(f64::MIN_POSITIVE);
    let mut abs: Vec<f64> = Vec::with_capacity(actual.len());
    let (mut sum_rel, mut max_rel, mut dot, mut na, mut nr) = (0.0, 0.0f64, 0.0, 0.0, 0.0);
    let mut non_finite = 0;
    for (&a, &r) in actual.iter().zip(reference) {
        if !a.is_finite() {
            non_finite += 1;
            continue;
        }
        let (a, r) = (f64::from(a), f64::from(r));
        let diff = (a - r).abs();
        abs.push(diff);
        let rel = diff / r.abs().max(floor);
        sum_rel += rel;
        max_rel = max_rel.max(rel);
        dot += a * r;
        na += a * a;
        nr += r * r;
    }
    let count = abs.len().max(1) as f64;
    let mean_abs = abs.iter().sum::<f64>() / count;
    abs.sort_by(f64::total_cmp);
    let cosine = if na == 0.0 && nr == 0.0 {
        1.0
    } else if na == 0.0 || nr == 0.0 {
        0.0
    } else {
        dot / (na.sqrt() * nr.sqrt())
    };
    Parity {
        values: actual.len(),
        max_abs: abs.last().copied().unwrap_or(0.0),
        mean_abs,
        p99_abs: quantile(&abs, 0.99),
        max_rel,
        mean_rel: sum_rel / count,
        cosine,
        ref_max_abs,
        non_finite,
    }
}

/// How |model - reference| is spread, by decade: `zero` values are exactly 0; `counts[k]`
/// lie in `[edges[k], edges[k + 1])` (the first bin excludes 0; the last,
/// `[edges[last], inf)`, is unbounded). Non-finite values are left out.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct ErrorHistogram {
    pub zero: u64,
    pub edges: Vec<f64>,
    pub counts: Vec<u64>,
}

/// The histogram's edges: 0, then each decade from 1e-8 to 1.
pub(crate) const ERROR_EDGES: [f64; 10] =
    [0.0, 1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0];

/// |a - r| (in f64) of each pair, counted into [`ERROR_EDGES`]' bins.
pub(crate) fn error_histogram(actual: &[f32], reference: &[f32]) -> ErrorHistogram {
    let mut histogram = ErrorHistogram {
        zero: 0,
        edges: ERROR_EDGES.to_vec(),
        counts: vec![0; ERROR_EDGES.len()],
    };
    for (&a, &r) in actual.iter().zip(reference) {
        let diff = (f64::from(a) - f64::from(r)).abs();
        if !diff.is_finite() {
            continue;
        }
        if diff == 0.0 {
            histogram.zero += 1;
            continue;
        }
        let bin = ERROR_EDGES.partition_point(|&edge| edge <= diff) - 1;
        histogram.counts[bin] += 1;
    }
    histogram
}

/// Tolerances of a parity verdict: pass when max |a - r| <= atol + rtol x max|r|, the
/// cosine similarity is at least `cosine`, and every value is finite.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub(crate) struct Tolerance {
    pub atol: f64,
    pub rtol: f64,
    pub cosine: f64,
}

/// The default tolerances by precision: fp32 tight, fp16 looser, int8 looser still.
/// The precisions a model can have, each with default tolerances.
pub(crate) const PRECISIONS: &[&str] = &["fp32", "fp16", "bf16", "int8", "fp8"];

pub(crate) fn default_tolerance(precision: &str) -> Tolerance {
    match precision {
        "fp16" => Tolerance {
            atol: 1e-2,
            rtol: 1e-2,
            cosine: 0.999,
        },
        // bf16 keeps 8 bits of mantissa to fp16's 11.
        "bf16" => Tolerance {
            atol: 5e-2,
            rtol: 5e-2,
            cosine: 0.995,
        },
        "int8" | "fp8" => Tolerance {
            atol: 1e-1,
            rtol: 1e-1,
            cosine: 0.99,
        },
        _ => Tolerance {
            atol: 1e-4,
            rtol: 1e-3,
            cosine: 0.99999,
        },
    }
}

/// `None` when `parity` passes `tolerance`, else why not.
pub(crate) fn verdict(parity: &Parity, tolerance: &Tolerance) -> Option<String> {
    if parity.non_finite > 0 {
        return Some(format!(
            "{} NaN/Inf value(s) in the output",
            parity.non_finite
        ));
    }
    let limit = tolerance.atol + tolerance.rtol * parity.ref_max_abs;
    let mut problems = Vec::new();
    if parity.max_abs > limit {
        problems.push(format!(
            "max |diff| {:.3e} > {:.3e} (atol {:e} + rtol {:e} x max|ref| {:.3e})",
            parity.max_abs, limit, tolerance.atol, tolerance.rtol, parity.ref_max_abs
        ));
    }
    if parity.cosine.is_nan() || parity.cosine < tolerance.cosine {
        problems.push(format!(
            "cosine {:.6} < {}",
            parity.cosine, tolerance.cosine
        ));
    }
    (!problems.is_empty()).then(|| problems.join(", "))
}

/// Argmax of each row of a `rows x classes` matrix (first maximum wins).
pub(crate) fn argmax_rows(values: &[f32], classes: usize) -> Vec<usize> {
    values
        .chunks(classes.max(1))
        .map(|row| {
            row.iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
                    if v > best.1 { (i, v) } else { best }
                })
                .0
        })
        .collect()
}

/// Softmax probability of the top class of each row.
pub(crate) fn top_confidence(values: &[f32], classes: usize) -> Vec<f64> {
    values
        .chunks(classes.max(1))
        .map(|row| {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f64 = row.iter().map(|&v| f64::from(v - max).exp()).sum();
            1.0 / sum
        })
        .collect()
}

/// Argmax over the channel axis of an `N x C x S` array (S = product of spatial axes):
/// `N x S` labels.
pub(crate) fn argmax_channels(values: &[f32], channels: usize, spatial: usize) -> Vec<usize> {
    let mut labels = vec![0usize; values.len() / channels.max(1)];
    for (n, sample) in values.chunks(channels * spatial).enumerate() {
        for s in 0..spatial {
            let mut best = (0, f32::NEG_INFINITY);
            for c in 0..channels {
                let v = sample[c * spatial + s];
                if v > best.1 {
                    best = (c, v);
                }
            }
            labels[n * spatial + s] = best.0;
        }
    }
    labels
}

/// Share of equal positions.
pub(crate) fn agreement(a: &[usize], b: &[usize]) -> f64 {
    if a.is_empty() {
        return f64::NAN;
    }
    a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / a.len() as f64
}

/// Precision, recall, F1 and support of one class.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct ClassScores {
    pub class: usize,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: u64,
}

/// Classification against labels (samples whose label is negative are left out).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct Classification {
    pub labelled: usize,
    pub accuracy: f64,
    pub per_class: Vec<ClassScores>,
    /// `confusion[true][predicted]`
    pub confusion: Vec<Vec<u64>>,
}

/// Classification figures over the labelled samples (a negative label: no label). A label
/// the model has no output for is a class too, never predicted: its samples count as
/// wrong, as scikit-learn counts them (dropping them overstated the accuracy).
pub(crate) fn classification(
    predicted: &[usize],
    labels: &[i64],
    classes: usize,
) -> Classification {
    let classes = labels
        .iter()
        .filter_map(|&t| usize::try_from(t).ok())
        .map(|t| t + 1)
        .max()
        .unwrap_or(0)
        .max(classes);
    let mut confusion = vec![vec![0u64; classes]; classes];
    let mut labelled = 0;
    let mut correct = 0;
    for (&p, &t) in predicted.iter().zip(labels) {
        let Ok(t) = usize::try_from(t) else { continue };
        if t >= classes || p >= classes {
            continue;
        }
        labelled += 1;
        if p == t {
            correct += 1;
        }
        confusion[t][p] += 1;
    }
    let per_class = (0..classes)
        .map(|c| {
            let tp = confusion[c][c] as f64;
            let predicted_c: u64 = confusion.iter().map(|row| row[c]).sum();
            let support: u64 = confusion[c].iter().sum();
            let precision = if predicted_c > 0 {
                tp / predicted_c as f64
            } else {
                0.0
            };
            let recall = if support > 0 {
                tp / support as f64
            } else {
                0.0
            };
            let f1 = if precision + recall > 0.0 {
                2.0 * precision * recall / (precision + recall)
            } else {
                0.0
            };
            ClassScores {
                class: c,
                precision,
                recall,
                f1,
                support,
            }
        })
        .collect();
    Classification {
        labelled,
        accuracy: if labelled > 0 {
            correct as f64 / labelled as f64
        } else {
            f64::NAN
        },
        per_class,
        confusion,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_like_numpy() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile(&v, 0.5), 2.5);
        assert!((quantile(&v, 0.9) - 3.7).abs() < 1e-12);
        assert_eq!(quantile(&v, 0.0), 1.0);
        assert_eq!(quantile(&v, 1.0), 4.0);
    }

    #[test]
    fn latency_figures_are_ordered_and_throughput_follows_the_mean() {
        let times: Vec<f64> = (1..=100).map(|i| i as f64 * 1e-3).collect();
        let l = latency(&times, 400, 4);
        assert_eq!(l.runs, 100);
        assert_eq!(l.min_ms, 1.0);
        assert_eq!(l.max_ms, 100.0);
        assert!((l.mean_ms - 50.5).abs() < 1e-9);
        assert!((l.median_ms - 50.5).abs() < 1e-9);
        assert!(l.min_ms <= l.median_ms && l.median_ms <= l.p90_ms);
        assert!(l.p90_ms <= l.p95_ms && l.p95_ms <= l.p99_ms && l.p99_ms <= l.max_ms);
        // 4 samples per 50.5 ms on average.
        assert!((l.throughput - 4.0 / 0.0505).abs() < 1e-6);
    }

    #[test]
    fn parity_figures_by_hand() {
        let p = parity(&[1.0, 2.0, 3.5], &[1.0, 2.0, 3.0]);
        assert_eq!(p.max_abs, 0.5);
        assert!((p.mean_abs - 0.5 / 3.0).abs() < 1e-12);
        assert!((p.max_rel - 0.5 / 3.0).abs() < 1e-12);
        let cosine = (1.0 + 4.0 + 10.5) / ((1.0f64 + 4.0 + 12.25).sqrt() * 14f64.sqrt());
        assert!((p.cosine - cosine).abs() < 1e-12);
        assert_eq!(p.ref_max_abs, 3.0);
        let t = default_tolerance("fp32");
        assert!(verdict(&p, &t).unwrap().contains("max |diff|"));
        let same = parity(&[1.0, -2.0], &[1.0, -2.0]);
        assert_eq!(verdict(&same, &t), None);
        assert!((same.cosine - 1.0).abs() < 1e-12);
    }

    #[test]
    fn error_histogram_by_decade() {
        let h = error_histogram(
            &[1.0, 1.5, 1.0, 3.0, f32::NAN, 1.0],
            &[1.0, 1.0, 1.0 + 1e-6, 1.0, 0.0, 1.0 + 1e-3],
        );
        assert_eq!(h.zero, 1);
        assert_eq!(h.counts.iter().sum::<u64>(), 4);
        assert_eq!(h.counts[5] + h.counts[6], 1, "about 1e-3: {h:?}");
        assert_eq!(h.counts[8], 1, "0.5 in [0.1, 1): {h:?}");
        assert_eq!(h.counts[9], 1, "2 in [1, inf): {h:?}");
        assert_eq!(h.counts[3] + h.counts[2], 1, "about 1e-6: {h:?}");
    }

    #[test]
    fn nan_and_inf_always_fail() {
        let p = parity(&[f32::NAN, 1.0, f32::INFINITY], &[0.0, 1.0, 0.0]);
        assert_eq!(p.non_finite, 2);
        let loose = Tolerance {
            atol: 1e9,
            rtol: 1e9,
            cosine: -1.0,
        };
        assert!(verdict(&p, &loose).unwrap().contains("NaN/Inf"));
    }

    #[test]
    fn tolerances_loosen_with_precision() {
        let (a, b, c) = (
            default_tolerance("fp32"),
            default_tolerance("fp16"),
            default_tolerance("int8"),
        );
        assert!(a.atol < b.atol && b.atol < c.atol);
        assert!(a.cosine > b.cosine && b.cosine > c.cosine);
    }

    #[test]
    fn classification_by_hand() {
        // truth:     0 0 1 1 2 2 -1
        // predicted: 0 1 1 1 2 0  2
        let c = classification(&[0, 1, 1, 1, 2, 0, 2], &[0, 0, 1, 1, 2, 2, -1], 3);
        assert_eq!(c.labelled, 6);
        assert!((c.accuracy - 4.0 / 6.0).abs() < 1e-12);
        assert_eq!(
            c.confusion,
            vec![vec![1, 1, 0], vec![0, 2, 0], vec![1, 0, 1]]
        );
        // class 0: tp 1, predicted 2, support 2 -> p 0.5, r 0.5
        assert_eq!(c.per_class[0].precision, 0.5);
        assert_eq!(c.per_class[0].recall, 0.5);
        // class 1: tp 2, predicted 3, support 2 -> p 2/3, r 1, f1 0.8
        assert!((c.per_class[1].precision - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(c.per_class[1].recall, 1.0);
        assert!((c.per_class[1].f1 - 0.8).abs() < 1e-12);
        // class 2: tp 1, predicted 1, support 2 -> p 1, r 0.5
        assert_eq!(c.per_class[2].precision, 1.0);
        assert_eq!(c.per_class[2].support, 2);
    }

    #[test]
    fn argmax_and_confidence() {
        assert_eq!(argmax_rows(&[0.1, 0.9, 0.0, 5.0, 1.0, 1.0], 3), vec![1, 0]);
        let conf = top_confidence(&[0.0, 0.0], 2);
        assert!((conf[0] - 0.5).abs() < 1e-12);
        // N=1, C=2, S=3: channel 1 wins at positions 0 and 2.
        assert_eq!(
            argmax_channels(&[0.0, 5.0, 0.0, 1.0, 1.0, 2.0], 2, 3),
            vec![1, 0, 1]
        );
    }
}
