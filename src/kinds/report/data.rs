//! The report's inputs on disk: a dataset's `.npy` (float32 N x C x ...), labels (`.npy`
//! int64, -1 = none), and an export's reference `.npz` (`input.<name>` and
//! `output.<name>` arrays, as written by the export worker).

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use ndarray::ArrayD;
use ndarray_npy::{NpzReader, ReadNpyExt};

/// Named arrays, in file order.
pub type Named = Vec<(String, ArrayD<f32>)>;

/// Reads a float array (float32, or float64 converted) from an `.npy` file.
pub fn read_f32(path: &Path) -> Result<ArrayD<f32>, String> {
    let open = || {
        File::open(path)
            .map(BufReader::new)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    match ArrayD::<f32>::read_npy(open()?) {
        Ok(array) => Ok(array),
        Err(first) => match ArrayD::<f64>::read_npy(open()?) {
            Ok(array) => Ok(array.mapv(|v| v as f32)),
            Err(_) => Err(format!(
                "{} is not a float32 .npy array: {first}",
                path.display()
            )),
        },
    }
}

/// Reads integer labels (int64 or int32) from an `.npy` file.
pub fn read_labels(path: &Path) -> Result<ArrayD<i64>, String> {
    let open = || {
        File::open(path)
            .map(BufReader::new)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    match ArrayD::<i64>::read_npy(open()?) {
        Ok(array) => Ok(array),
        Err(first) => match ArrayD::<i32>::read_npy(open()?) {
            Ok(array) => Ok(array.mapv(i64::from)),
            Err(_) => Err(format!(
                "{} is not an int64 .npy array of labels: {first}",
                path.display()
            )),
        },
    }
}

/// The `input.*` and `output.*` arrays of an export's reference `.npz`.
pub fn read_reference(path: &Path) -> Result<(Named, Named), String> {
    let file = File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut npz = NpzReader::new(BufReader::new(file))
        .map_err(|e| format!("{} is not an .npz archive: {e}", path.display()))?;
    let names = npz
        .names()
        .map_err(|e| format!("cannot list {}: {e}", path.display()))?;
    let (mut inputs, mut outputs) = (Vec::new(), Vec::new());
    for name in names {
        let array: ArrayD<f32> = npz
            .by_name(&name)
            .map_err(|e| format!("{}: array `{name}`: {e}", path.display()))?;
        if let Some(short) = name.strip_prefix("input.") {
            inputs.push((short.to_string(), array));
        } else if let Some(short) = name.strip_prefix("output.") {
            outputs.push((short.to_string(), array));
        }
    }
    Ok((inputs, outputs))
}
