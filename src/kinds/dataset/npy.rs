//! A streaming `.npy` (format 1.0) writer: the header first, then samples as they come, so
//! a data set never has to fit in memory twice. Little-endian, C order.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

/// The `.npy` header for an array of `descr` (`<f4`, `<i8`) and `shape`.
pub(super) fn header(descr: &str, shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let shape = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // Magic (6) + version (2) + length (2) + dict + '\n' is a multiple of 64.
    let unpadded = 10 + dict.len() + 1;
    dict.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    dict.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    bytes.extend_from_slice(dict.as_bytes());
    bytes
}

/// Writes one array's elements after its header.
pub(super) struct NpyWriter {
    out: BufWriter<File>,
}

impl NpyWriter {
    pub(super) fn create(path: &Path, descr: &str, shape: &[usize]) -> io::Result<NpyWriter> {
        let mut out = BufWriter::new(File::create(path)?);
        out.write_all(&header(descr, shape))?;
        Ok(NpyWriter { out })
    }

    pub(super) fn write_f32(&mut self, values: impl IntoIterator<Item = f32>) -> io::Result<()> {
        for value in values {
            self.out.write_all(&value.to_le_bytes())?;
        }
        Ok(())
    }

    pub(super) fn write_i64(&mut self, values: impl IntoIterator<Item = i64>) -> io::Result<()> {
        for value in values {
            self.out.write_all(&value.to_le_bytes())?;
        }
        Ok(())
    }

    /// Flushes and syncs the file.
    pub(super) fn finish(self) -> io::Result<()> {
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{ArrayD, IxDyn};
    use ndarray_npy::ReadNpyExt;

    #[test]
    fn header_is_aligned_and_readable() {
        let bytes = header("<f4", &[2, 3]);
        assert_eq!(bytes.len() % 64, 0);
        assert!(bytes.ends_with(b"\n"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.npy");
        let mut writer = NpyWriter::create(&path, "<f4", &[2, 3]).unwrap();
        writer.write_f32((0..6).map(|v| v as f32)).unwrap();
        writer.finish().unwrap();
        let array = ArrayD::<f32>::read_npy(File::open(&path).unwrap()).unwrap();
        assert_eq!(array.shape(), &[2, 3]);
        assert_eq!(array[IxDyn(&[1, 2])], 5.0);

        let path = dir.path().join("l.npy");
        let mut writer = NpyWriter::create(&path, "<i8", &[3]).unwrap();
        writer.write_i64([-1, 0, 7]).unwrap();
        writer.finish().unwrap();
        let labels = ndarray::Array1::<i64>::read_npy(File::open(&path).unwrap()).unwrap();
        assert_eq!(labels.to_vec(), vec![-1, 0, 7]);
    }
}
