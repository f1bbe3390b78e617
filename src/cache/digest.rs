//! Digests and byte moves for the cache: a file's BLAKE3 (pochi's content digest) and
//! SHA-256 (what REAPI servers and Bazel's HTTP cache name blobs by) in one read, and a
//! copy into or out of the store that hashes what it wrote: a reflink where the filesystem
//! has one, then a read of the clone; else a read, hash and write in one pass.

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::path::Path;

use sha2::Digest as _;

/// Bytes read at a time; large enough for BLAKE3's parallel hashing to pay off.
const CHUNK: usize = 8 << 20;
/// Below this a chunk is hashed on the calling thread.
const PARALLEL_BYTES: usize = 1 << 20;

/// A file's size and both digests (lowercase hex).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileDigests {
    pub blake3: String,
    pub sha256: String,
    pub size: u64,
}

impl FileDigests {
    /// Both digests of the file at `path`, read once.
    pub fn of_path(path: &Path) -> io::Result<FileDigests> {
        FileDigests::of_reader(File::open(path)?)
    }

    /// Both digests of everything `reader` yields, read once: each chunk is hashed with
    /// BLAKE3 (in parallel) and SHA-256 at the same time.
    pub fn of_reader(mut reader: impl Read) -> io::Result<FileDigests> {
        let mut blake = blake3::Hasher::new();
        let mut sha = sha2::Sha256::new();
        let mut buffer = vec![0; CHUNK];
        let mut size = 0u64;
        loop {
            let n = read_full(&mut reader, &mut buffer)?;
            if n == 0 {
                break;
            }
            let chunk = &buffer[..n];
            rayon::join(|| update_blake3(&mut blake, chunk), || sha.update(chunk));
            size += n as u64;
        }
        Ok(FileDigests {
            blake3: blake.finalize().to_hex().to_string(),
            sha256: hex(&sha.finalize()),
            size,
        })
    }
}

/// How a file went into or out of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Transfer {
    /// A copy-on-write clone: no data copied (btrfs, XFS, APFS...).
    Reflink,
    /// The bytes were copied.
    Copy,
}

/// Makes `to` (an empty file opened for reading and writing) a copy of `from`, by reflink
/// when possible, and returns how, with the BLAKE3 digest and size of what `to` now holds
/// (a clone is read back to hash it; a copy is hashed as it is written).
pub(super) fn clone_or_copy(
    from: &mut File,
    to: &mut File,
) -> io::Result<(Transfer, blake3::Hash, u64)> {
    if try_reflink(from, to) {
        to.rewind()?;
        let (hash, size) = hash_blake3(to)?;
        return Ok((Transfer::Reflink, hash, size));
    }
    // No reflink here (ext4, tmpfs, another filesystem): copy from the start.
    from.rewind()?;
    to.rewind()?;
    to.set_len(0)?;
    let (hash, size) = copy_hashing(from, to)?;
    Ok((Transfer::Copy, hash, size))
}

/// Makes `to` (empty) a copy-on-write clone of `from`; false where the filesystem has no
/// reflinks (or the two files are on different filesystems), leaving `to` empty.
pub(super) fn try_reflink(from: &File, to: &File) -> bool {
    reflink_copy::reflink_file(from, to).is_ok()
}

/// The BLAKE3 digest and length of everything `reader` yields.
pub(super) fn hash_blake3(reader: &mut impl Read) -> io::Result<(blake3::Hash, u64)> {
    let mut hasher = blake3::Hasher::new();
    let mut buffer = vec![0; CHUNK];
    let mut size = 0u64;
    loop {
        let n = read_full(reader, &mut buffer)?;
        if n == 0 {
            return Ok((hasher.finalize(), size));
        }
        update_blake3(&mut hasher, &buffer[..n]);
        size += n as u64;
    }
}

/// Copies `from` to `to`, hashing each chunk with BLAKE3 as it is written.
pub(super) fn copy_hashing(
    from: &mut impl Read,
    to: &mut (impl Write + Send),
) -> io::Result<(blake3::Hash, u64)> {
    let mut hasher = blake3::Hasher::new();
    let mut buffer = vec![0; CHUNK];
    let mut size = 0u64;
    loop {
        let n = read_full(from, &mut buffer)?;
        if n == 0 {
            to.flush()?;
            return Ok((hasher.finalize(), size));
        }
        let chunk = &buffer[..n];
        let ((), written) =
            rayon::join(|| update_blake3(&mut hasher, chunk), || to.write_all(chunk));
        written?;
        size += n as u64;
    }
}

fn update_blake3(hasher: &mut blake3::Hasher, chunk: &[u8]) {
    if chunk.len() >= PARALLEL_BYTES {
        hasher.update_rayon(chunk);
    } else {
        hasher.update(chunk);
    }
}

/// Reads until `buffer` is full or the input ends; returns how much was read.
fn read_full(reader: &mut impl Read, buffer: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn both_digests_match_the_reference_implementations() {
        for len in [0, 1, 1000, CHUNK - 1, CHUNK + 12_345] {
            let bytes = data(len);
            let digests = FileDigests::of_reader(&bytes[..]).unwrap();
            assert_eq!(digests.blake3, blake3::hash(&bytes).to_hex().to_string());
            assert_eq!(digests.sha256, hex(&sha2::Sha256::digest(&bytes)));
            assert_eq!(digests.size, len as u64);
        }
    }

    #[test]
    fn sha256_of_a_known_string() {
        // FIPS 180-2 test vector.
        let digests = FileDigests::of_reader(&b"abc"[..]).unwrap();
        assert_eq!(
            digests.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn clone_or_copy_copies_and_hashes_what_it_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = data(CHUNK * 2 + 7);
        std::fs::write(dir.path().join("from"), &bytes).unwrap();
        let mut from = File::open(dir.path().join("from")).unwrap();
        let mut to = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(dir.path().join("to"))
            .unwrap();
        let (_, hash, size) = clone_or_copy(&mut from, &mut to).unwrap();
        assert_eq!(hash, blake3::hash(&bytes));
        assert_eq!(size, bytes.len() as u64);
        assert_eq!(std::fs::read(dir.path().join("to")).unwrap(), bytes);
    }
}
