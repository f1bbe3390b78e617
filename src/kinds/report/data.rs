//! The report's inputs on disk: a dataset's `.npy` (float32 N x C x ...), labels (`.npy`
//! int64, -1 = none), and an export's reference `.npz` (`input.<name>` and
//! `output.<name>` arrays, as written by the export script).

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use ndarray::ArrayD;
use ndarray_npy::{NpzReader, ReadNpyError, ReadNpyExt, ReadNpzError};

/// Named arrays, in file order.
pub(super) type Named = Vec<(String, ArrayD<f32>)>;

/// Why an input file could not be read.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub(crate) enum DataError {
    #[error("cannot read {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a float32 .npy array", path.display())]
    NotFloat {
        path: PathBuf,
        #[source]
        source: ReadNpyError,
    },
    #[error("{} is not an int64 .npy array of labels", path.display())]
    NotLabels {
        path: PathBuf,
        #[source]
        source: ReadNpyError,
    },
    #[error("{} is not an .npz archive", path.display())]
    NotNpz {
        path: PathBuf,
        #[source]
        source: ReadNpzError,
    },
    #[error("cannot list {}", path.display())]
    List {
        path: PathBuf,
        #[source]
        source: ReadNpzError,
    },
    #[error("{}: array `{name}`", path.display())]
    Array {
        path: PathBuf,
        name: String,
        #[source]
        source: ReadNpzError,
    },
}

/// `path` opened for reading.
fn open(path: &Path) -> Result<BufReader<File>, DataError> {
    File::open(path)
        .map(BufReader::new)
        .map_err(|source| DataError::Open {
            path: path.to_path_buf(),
            source,
        })
}

/// Reads a float array (float32, or float64 converted) from an `.npy` file.
pub(super) fn read_f32(path: &Path) -> Result<ArrayD<f32>, DataError> {
    match ArrayD::<f32>::read_npy(open(path)?) {
        Ok(array) => Ok(array),
        Err(first) => match ArrayD::<f64>::read_npy(open(path)?) {
            Ok(array) => Ok(array.mapv(|v| v as f32)),
            Err(_) => Err(DataError::NotFloat {
                path: path.to_path_buf(),
                source: first,
            }),
        },
    }
}

/// Reads integer labels (int64 or int32) from an `.npy` file.
pub(super) fn read_labels(path: &Path) -> Result<ArrayD<i64>, DataError> {
    match ArrayD::<i64>::read_npy(open(path)?) {
        Ok(array) => Ok(array),
        Err(first) => match ArrayD::<i32>::read_npy(open(path)?) {
            Ok(array) => Ok(array.mapv(i64::from)),
            Err(_) => Err(DataError::NotLabels {
                path: path.to_path_buf(),
                source: first,
            }),
        },
    }
}

/// The `input.*` and `output.*` arrays of an export's reference `.npz`.
pub(super) fn read_reference(path: &Path) -> Result<(Named, Named), DataError> {
    let with_path = |source| (path.to_path_buf(), source);
    let mut npz = NpzReader::new(open(path)?).map_err(|source| {
        let (path, source) = with_path(source);
        DataError::NotNpz { path, source }
    })?;
    let names = npz.names().map_err(|source| {
        let (path, source) = with_path(source);
        DataError::List { path, source }
    })?;
    let (mut inputs, mut outputs) = (Vec::new(), Vec::new());
    for name in names {
        let array: ArrayD<f32> = match npz.by_name(&name) {
            Ok(array) => array,
            Err(source) => {
                let path = path.to_path_buf();
                return Err(DataError::Array { path, name, source });
            }
        };
        if let Some(short) = name.strip_prefix("input.") {
            inputs.push((short.to_string(), array));
        } else if let Some(short) = name.strip_prefix("output.") {
            outputs.push((short.to_string(), array));
        }
    }
    Ok((inputs, outputs))
}
