//! Unit tests of the measuring helpers.

use std::path::Path;

use ndarray::{ArrayD, IxDyn};

use super::super::sliding_window::{Blend, Padding, Settings};
use super::{check_roi, full_batches};

#[test]
fn full_batches_cycle_through_the_samples() {
    let samples = ArrayD::from_shape_fn(IxDyn(&[3, 2]), |i| i[0] as f32);
    let batches = full_batches(&samples, 2);
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0].shape(), [2, 2]);
    let big = full_batches(&samples, 5);
    let firsts: Vec<f32> = big[0].outer_iter().map(|r| r[0]).collect();
    assert_eq!(firsts, [0.0, 1.0, 2.0, 0.0, 1.0]);
    assert_eq!(full_batches(&samples, 1).len(), 3);
}

#[test]
fn a_fixed_spatial_input_must_be_the_window() {
    let settings = Settings {
        roi: vec![4, 4],
        overlap: vec![0.25; 2],
        mode: Blend::Constant,
        sigma_scale: vec![0.125; 2],
        sw_batch_size: 1,
        padding_mode: Padding::Constant,
        cval: 0.0,
    };
    assert!(check_roi(&[-1, 1, 4, 4], &settings, Path::new("m.onnx")).is_ok());
    assert!(check_roi(&[-1, 1, -1, -1], &settings, Path::new("m.onnx")).is_ok());
    let error = check_roi(&[-1, 1, 8, 4], &settings, Path::new("m.onnx"))
        .unwrap_err()
        .to_string();
    assert!(error.contains("roi = [4, 4]"), "{error}");
}
