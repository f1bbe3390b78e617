//! Verified downloads, shared by both backends: bytes from a server are hashed while they
//! arrive, written to a temporary file beside the destination, and renamed into place
//! only when they match the digest asked for. A server that returns other bytes gets
//! `DigestMismatch`, never a wrong file.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::digest::{Digest, DigestFunction, Hasher};
use super::error::RemoteError;

/// Where downloaded bytes go while they are checked.
pub(crate) trait Sink {
    /// Takes the next bytes; more bytes than the digest's size is a mismatch at once.
    fn write(&mut self, bytes: &[u8]) -> Result<(), RemoteError>;
    /// The bytes taken so far (the offset a resumed read starts at).
    fn written(&self) -> u64;
}

/// The least a download must bring in each window of the endpoint's timeout (or all it has
/// left, when less): a server that sends one byte every two seconds, or empty messages,
/// passes every per-message timeout, and would otherwise hold a build as long as it likes.
pub(crate) const MIN_BYTES_PER_WINDOW: u64 = 64 << 10;

/// Hashing, the size limit and the progress floor, common to the file and the memory sink.
struct Check {
    endpoint: String,
    expected: Digest,
    hasher: Hasher,
    progress: Option<Progress>,
}

/// What arrived since the current window started.
struct Progress {
    window: Duration,
    started: Instant,
    at_start: u64,
}

impl Check {
    fn new(endpoint: &str, expected: &Digest, function: DigestFunction) -> Self {
        Check {
            endpoint: endpoint.to_owned(),
            expected: expected.clone(),
            hasher: function.hasher(),
            progress: None,
        }
    }

    fn take(&mut self, bytes: &[u8]) -> Result<(), RemoteError> {
        self.hasher.update(bytes);
        if self.hasher.len() > self.expected.size() {
            return Err(self.mismatch_now());
        }
        self.check_progress()
    }

    /// Fails once a window has passed with less than the floor received in it.
    fn check_progress(&mut self) -> Result<(), RemoteError> {
        let received = self.hasher.len();
        let Some(progress) = self.progress.as_mut() else {
            return Ok(());
        };
        if progress.started.elapsed() < progress.window {
            return Ok(());
        }
        let needed = MIN_BYTES_PER_WINDOW.min(self.expected.size() - progress.at_start);
        let got = received - progress.at_start;
        if got < needed {
            return Err(RemoteError::Stalled {
                endpoint: self.endpoint.clone(),
                digest: self.expected.clone(),
                received: got,
                needed,
                window: progress.window,
            });
        }
        progress.started = Instant::now();
        progress.at_start = received;
        Ok(())
    }

    fn watch_progress(&mut self, window: Duration) {
        self.progress = Some(Progress {
            window,
            started: Instant::now(),
            at_start: 0,
        });
    }

    /// The mismatch for what arrived so far (used when a server sends too much).
    fn mismatch_now(&self) -> RemoteError {
        RemoteError::DigestMismatch {
            endpoint: self.endpoint.clone(),
            expected: self.expected.clone(),
            actual: self.hasher.clone().finish(),
        }
    }

    fn finish(self) -> Result<(), RemoteError> {
        let actual = self.hasher.finish();
        if actual != self.expected {
            return Err(RemoteError::DigestMismatch {
                endpoint: self.endpoint,
                expected: self.expected,
                actual,
            });
        }
        Ok(())
    }
}

/// A download into memory (small blobs: directories, trees, action results).
pub(crate) struct VerifiedBytes {
    check: Check,
    bytes: Vec<u8>,
}

impl VerifiedBytes {
    pub(crate) fn new(endpoint: &str, expected: &Digest, function: DigestFunction) -> Self {
        let capacity = usize::try_from(expected.size()).unwrap_or(0).min(64 << 20);
        VerifiedBytes {
            check: Check::new(endpoint, expected, function),
            bytes: Vec::with_capacity(capacity),
        }
    }

    /// The same sink, failing when less than `MIN_BYTES_PER_WINDOW` arrives in a `window`.
    pub(crate) fn stalling_after(mut self, window: Duration) -> Self {
        self.check.watch_progress(window);
        self
    }

    /// The bytes, if they match the digest.
    pub(crate) fn finish(self) -> Result<Vec<u8>, RemoteError> {
        self.check.finish()?;
        Ok(self.bytes)
    }
}

impl Sink for VerifiedBytes {
    fn write(&mut self, bytes: &[u8]) -> Result<(), RemoteError> {
        self.check.take(bytes)?;
        self.bytes.extend_from_slice(bytes);
        Ok(())
    }

    fn written(&self) -> u64 {
        self.bytes.len() as u64
    }
}

/// A download into a temporary file beside its destination; dropped unfinished, the
/// temporary file is removed.
pub(crate) struct VerifiedFile {
    check: Check,
    temp: tempfile::NamedTempFile,
    dest: PathBuf,
    written: u64,
}

impl VerifiedFile {
    /// Creates the temporary file (and the destination's parent directories).
    pub(crate) fn create(
        endpoint: &str,
        expected: &Digest,
        function: DigestFunction,
        dest: &Path,
    ) -> Result<Self, RemoteError> {
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        fs::create_dir_all(&parent).map_err(|source| RemoteError::Io {
            action: "create the directory",
            path: parent.clone(),
            source,
        })?;
        let temp = tempfile::Builder::new()
            .prefix(".pochi-download-")
            .tempfile_in(&parent)
            .map_err(|source| RemoteError::Io {
                action: "create a temporary file in",
                path: parent,
                source,
            })?;
        Ok(VerifiedFile {
            check: Check::new(endpoint, expected, function),
            temp,
            dest: dest.to_owned(),
            written: 0,
        })
    }

    /// The same sink, failing when less than `MIN_BYTES_PER_WINDOW` arrives in a `window`.
    pub(crate) fn stalling_after(mut self, window: Duration) -> Self {
        self.check.watch_progress(window);
        self
    }

    /// Verifies and renames into place (mode 0644, or 0755 when `executable`).
    pub(crate) fn finish(self, executable: bool) -> Result<(), RemoteError> {
        self.check.finish()?;
        let io = |action, source| RemoteError::Io {
            action,
            path: self.dest.clone(),
            source,
        };
        set_mode(self.temp.path(), executable).map_err(|e| io("set the mode of", e))?;
        self.temp
            .persist(&self.dest)
            .map_err(|e| io("rename a download to", e.error))?;
        Ok(())
    }
}

impl Sink for VerifiedFile {
    fn write(&mut self, bytes: &[u8]) -> Result<(), RemoteError> {
        self.check.take(bytes)?;
        self.temp
            .as_file_mut()
            .write_all(bytes)
            .map_err(|source| RemoteError::Io {
                action: "write a download beside",
                path: self.dest.clone(),
                source,
            })?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn written(&self) -> u64 {
        self.written
    }
}

/// Sets a file's mode to 0644, or 0755 when executable.
pub(crate) fn set_mode(path: &Path, executable: bool) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = if executable { 0o755 } else { 0o644 };
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

/// Checks bytes in memory against a digest.
pub(crate) fn verify_bytes(
    endpoint: &str,
    expected: &Digest,
    function: DigestFunction,
    bytes: Vec<u8>,
) -> Result<Vec<u8>, RemoteError> {
    let mut sink = VerifiedBytes::new(endpoint, expected, function);
    sink.write(&bytes)?;
    sink.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(bytes: &[u8]) -> Digest {
        Digest::of_bytes(DigestFunction::Sha256, bytes)
    }

    #[test]
    fn a_matching_download_is_renamed_into_place() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("sub/out.bin");
        let expected = digest(b"hello world");
        let mut file =
            VerifiedFile::create("test", &expected, DigestFunction::Sha256, &dest).unwrap();
        file.write(b"hello ").unwrap();
        file.write(b"world").unwrap();
        assert_eq!(file.written(), 11);
        file.finish(true).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"hello world");
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&dest).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o755);
    }

    #[test]
    fn other_bytes_leave_no_file_and_name_both_digests() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.bin");
        fs::write(&dest, b"previous").unwrap();
        let expected = digest(b"hello world");
        let mut file =
            VerifiedFile::create("test", &expected, DigestFunction::Sha256, &dest).unwrap();
        file.write(b"hello w0rld").unwrap();
        let err = file.finish(false).unwrap_err();
        match err {
            RemoteError::DigestMismatch {
                expected: e,
                actual,
                ..
            } => {
                assert_eq!(e, expected);
                assert_eq!(actual, digest(b"hello w0rld"));
            }
            other => panic!("unexpected {other}"),
        }
        assert_eq!(fs::read(&dest).unwrap(), b"previous");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "the temporary file is removed");
    }

    #[test]
    fn too_many_bytes_fail_at_once() {
        let expected = digest(b"abc");
        let mut sink = VerifiedBytes::new("test", &expected, DigestFunction::Sha256);
        sink.write(b"ab").unwrap();
        assert!(matches!(
            sink.write(b"cd"),
            Err(RemoteError::DigestMismatch { .. })
        ));
        assert!(verify_bytes("t", &expected, DigestFunction::Sha256, b"abc".to_vec()).is_ok());
        assert!(verify_bytes("t", &expected, DigestFunction::Sha256, b"ab".to_vec()).is_err());
    }

    #[test]
    fn a_window_without_enough_bytes_is_a_stall_and_one_with_them_is_not() {
        let big = vec![7u8; 3 * MIN_BYTES_PER_WINDOW as usize];
        let expected = digest(&big);
        // Every write comes after its window: each must bring the floor (or the rest).
        let mut steady = VerifiedBytes::new("test", &expected, DigestFunction::Sha256)
            .stalling_after(Duration::ZERO);
        for chunk in big.chunks(MIN_BYTES_PER_WINDOW as usize) {
            steady.write(chunk).unwrap();
        }
        assert!(steady.finish().is_ok());
        let mut trickle = VerifiedBytes::new("test", &expected, DigestFunction::Sha256)
            .stalling_after(Duration::ZERO);
        assert!(matches!(
            trickle.write(&big[..1]),
            Err(RemoteError::Stalled { received: 1, .. })
        ));
        let mut empty = VerifiedBytes::new("test", &expected, DigestFunction::Sha256)
            .stalling_after(Duration::ZERO);
        assert!(matches!(
            empty.write(&[]),
            Err(RemoteError::Stalled { received: 0, .. })
        ));
        // Without a window (the default), nothing is timed.
        let mut untimed = VerifiedBytes::new("test", &expected, DigestFunction::Sha256);
        untimed.write(&big[..1]).unwrap();
    }
}
