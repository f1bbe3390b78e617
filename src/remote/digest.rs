//! Content digests as the Remote Execution API names blobs: a hash function, the
//! lowercase hex of the hash and the size in bytes; computed streaming from files.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use sha2::Digest as _;

use super::error::RemoteError;

/// Bytes hashed per read when digesting a file.
const READ_CHUNK: usize = 1 << 20;

/// The hash functions pochi speaks to remote servers: SHA-256 everywhere (every REAPI
/// server and Bazel's HTTP cache), BLAKE3 where a server's Capabilities offers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DigestFunction {
    Sha256,
    Blake3,
}

impl DigestFunction {
    /// The REAPI `DigestFunction.Value` number.
    pub fn to_proto(self) -> i32 {
        match self {
            DigestFunction::Sha256 => re::digest_function::Value::Sha256 as i32,
            DigestFunction::Blake3 => re::digest_function::Value::Blake3 as i32,
        }
    }

    /// The function a REAPI `DigestFunction.Value` names, if pochi speaks it.
    pub fn from_proto(value: i32) -> Option<Self> {
        match re::digest_function::Value::try_from(value).ok()? {
            re::digest_function::Value::Sha256 => Some(DigestFunction::Sha256),
            re::digest_function::Value::Blake3 => Some(DigestFunction::Blake3),
            _ => None,
        }
    }

    /// The lowercase name used in ByteStream resource names (`blobs/blake3/...`).
    pub fn name(self) -> &'static str {
        match self {
            DigestFunction::Sha256 => "sha256",
            DigestFunction::Blake3 => "blake3",
        }
    }

    /// A fresh streaming hasher.
    pub fn hasher(self) -> Hasher {
        match self {
            DigestFunction::Sha256 => Hasher::Sha256(sha2::Sha256::new(), 0),
            DigestFunction::Blake3 => Hasher::Blake3(Box::new(blake3::Hasher::new()), 0),
        }
    }
}

impl fmt::Display for DigestFunction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A blob's name in a content-addressed store: the hash as 64 lowercase hex digits and
/// the size in bytes (both functions pochi speaks have 32-byte hashes).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hash: String,
    size: u64,
}

impl Digest {
    /// A digest from a hex hash and a size; the hash must be 64 hex digits.
    pub fn new(hash: &str, size: u64) -> Result<Self, RemoteError> {
        let valid = hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit());
        if !valid {
            return Err(RemoteError::InvalidDigest {
                digest: format!("{hash}/{size}"),
                reason: "the hash is not 64 hexadecimal digits".into(),
            });
        }
        Ok(Digest {
            hash: hash.to_ascii_lowercase(),
            size,
        })
    }

    /// Parses `HASH/SIZE`, the form used in resource names and error messages.
    pub fn parse(text: &str) -> Result<Self, RemoteError> {
        let invalid = |reason: &str| RemoteError::InvalidDigest {
            digest: text.to_owned(),
            reason: reason.to_owned(),
        };
        let (hash, size) = text
            .split_once('/')
            .ok_or_else(|| invalid("expected HASH/SIZE"))?;
        let size = size
            .parse::<u64>()
            .map_err(|_| invalid("the size is not a number"))?;
        Digest::new(hash, size)
    }

    /// The digest of bytes in memory.
    pub fn of_bytes(function: DigestFunction, bytes: &[u8]) -> Self {
        let mut hasher = function.hasher();
        hasher.update(bytes);
        hasher.finish()
    }

    /// The digest of a file, read in 1 MiB chunks (never held in memory whole).
    pub fn of_file(function: DigestFunction, path: &Path) -> Result<Self, RemoteError> {
        let io_error = |source| RemoteError::Io {
            action: "read",
            path: path.to_owned(),
            source,
        };
        let mut file = File::open(path).map_err(io_error)?;
        Self::of_reader(function, &mut file).map_err(io_error)
    }

    /// The digest of everything a reader yields.
    pub fn of_reader(function: DigestFunction, reader: &mut dyn Read) -> io::Result<Self> {
        let mut hasher = function.hasher();
        let mut buffer = vec![0u8; READ_CHUNK];
        loop {
            match reader.read(&mut buffer) {
                Ok(0) => return Ok(hasher.finish()),
                Ok(n) => hasher.update(&buffer[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// The hash as lowercase hex.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// The size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The REAPI message.
    pub fn to_proto(&self) -> re::Digest {
        re::Digest {
            hash: self.hash.clone(),
            size_bytes: i64::try_from(self.size).unwrap_or(i64::MAX),
        }
    }

    /// A digest from the REAPI message, checked (a server's answer is input).
    pub fn from_proto(digest: &re::Digest) -> Result<Self, RemoteError> {
        let size = u64::try_from(digest.size_bytes).map_err(|_| RemoteError::InvalidDigest {
            digest: format!("{}/{}", digest.hash, digest.size_bytes),
            reason: "the size is negative".into(),
        })?;
        Digest::new(&digest.hash, size)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.hash, self.size)
    }
}

/// A streaming hasher that also counts the bytes it saw.
#[derive(Clone)]
pub enum Hasher {
    Sha256(sha2::Sha256, u64),
    Blake3(Box<blake3::Hasher>, u64),
}

impl Hasher {
    /// Feeds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h, n) => {
                h.update(bytes);
                *n += bytes.len() as u64;
            }
            Hasher::Blake3(h, n) => {
                h.update(bytes);
                *n += bytes.len() as u64;
            }
        }
    }

    /// The bytes fed so far.
    pub fn len(&self) -> u64 {
        match self {
            Hasher::Sha256(_, n) | Hasher::Blake3(_, n) => *n,
        }
    }

    /// Whether no bytes were fed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The digest of everything fed.
    pub fn finish(self) -> Digest {
        let (hash, size) = match self {
            Hasher::Sha256(h, n) => (hex(&h.finalize()), n),
            Hasher::Blake3(h, n) => (h.finalize().to_hex().to_string(), n),
        };
        Digest { hash, size }
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn sha256_matches_known_vectors() {
        let empty = Digest::of_bytes(DigestFunction::Sha256, b"");
        assert_eq!(
            empty.hash(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(empty.size(), 0);
        let abc = Digest::of_bytes(DigestFunction::Sha256, b"abc");
        assert_eq!(
            abc.hash(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn blake3_matches_the_blake3_crate() {
        let d = Digest::of_bytes(DigestFunction::Blake3, b"abc");
        assert_eq!(d.hash(), blake3::hash(b"abc").to_hex().as_str());
        assert_eq!(d.size(), 3);
    }

    #[test]
    fn file_digest_streams_across_chunks() {
        // 2.5 chunks, so the streaming path crosses read boundaries.
        let data: Vec<u8> = (0..READ_CHUNK * 5 / 2).map(|i| (i % 251) as u8).collect();
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(&data).unwrap();
        for function in [DigestFunction::Sha256, DigestFunction::Blake3] {
            let streamed = Digest::of_file(function, file.path()).unwrap();
            assert_eq!(streamed, Digest::of_bytes(function, &data));
            assert_eq!(streamed.size(), data.len() as u64);
        }
    }

    #[test]
    fn parse_and_display_roundtrip() {
        let text = format!("{}/42", "Ab".repeat(32));
        let d = Digest::parse(&text).unwrap();
        assert_eq!(d.to_string(), format!("{}/42", "ab".repeat(32)));
        assert!(Digest::parse("abc/1").is_err());
        assert!(Digest::parse(&"a".repeat(64)).is_err());
        assert!(Digest::parse(&format!("{}/x", "a".repeat(64))).is_err());
        let negative = re::Digest {
            hash: "a".repeat(64),
            size_bytes: -1,
        };
        assert!(Digest::from_proto(&negative).is_err());
    }

    #[test]
    fn proto_numbers_roundtrip() {
        for f in [DigestFunction::Sha256, DigestFunction::Blake3] {
            assert_eq!(DigestFunction::from_proto(f.to_proto()), Some(f));
        }
        assert_eq!(DigestFunction::from_proto(2), None); // SHA-1
    }
}
