//! A remote action's stdout and stderr, written one after the other into the stage's log:
//! inline bytes as the result carries them, or blobs downloaded (verified) beside the log
//! and appended, so a long log is never held in memory. The last lines of stderr are kept
//! for messages, cut as a local run's are (`process::StderrTail`).

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::process::StderrTail;
use crate::remote::CacheBackend;
use crate::remote::digest::Digest;
use crate::remote::error::RemoteError;
use crate::remote::proto as re;

/// What writing the log took.
#[derive(Debug, Default)]
pub(crate) struct Logged {
    pub(crate) stderr_tail: Vec<String>,
    /// Blobs downloaded for it, and their bytes.
    pub(crate) downloaded: (u64, u64),
}

/// Writes `result`'s stdout then stderr to `log` (parent directories created, an
/// existing log replaced).
pub(crate) fn write_log(
    backend: &dyn CacheBackend,
    result: &re::ActionResult,
    log: &Path,
) -> Result<Logged, RemoteError> {
    let io = |action: &'static str| {
        move |source| RemoteError::Io {
            action,
            path: log.to_path_buf(),
            source,
        }
    };
    if let Some(parent) = log.parent() {
        fs::create_dir_all(parent).map_err(io("create the directory of"))?;
    }
    let mut out = File::create(log).map_err(io("write"))?;
    let mut logged = Logged::default();
    let part = part_path(log);
    let streams = [
        (&result.stdout_raw, result.stdout_digest.as_ref(), false),
        (&result.stderr_raw, result.stderr_digest.as_ref(), true),
    ];
    let mut tail = StderrTail::default();
    for (raw, digest, is_stderr) in streams {
        let mut keep = |bytes: &[u8]| {
            if is_stderr {
                tail.push(bytes);
            }
        };
        if !raw.is_empty() {
            out.write_all(raw).map_err(io("write"))?;
            keep(raw);
            continue;
        }
        let Some(digest) = digest else { continue };
        let digest = Digest::from_proto(digest)?;
        if digest.size() == 0 {
            continue;
        }
        backend.download_to_file(&digest, &part)?;
        logged.downloaded.0 += 1;
        logged.downloaded.1 += digest.size();
        let appended = append(&part, &mut out, &mut keep);
        let _ = fs::remove_file(&part);
        appended.map_err(io("write"))?;
    }
    out.flush().map_err(io("write"))?;
    logged.stderr_tail = tail.finish();
    Ok(logged)
}

/// Where a downloaded stream waits before it is appended to the log.
fn part_path(log: &Path) -> PathBuf {
    let mut name = log.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    log.with_file_name(name)
}

fn append(part: &Path, out: &mut File, keep: &mut dyn FnMut(&[u8])) -> std::io::Result<()> {
    let mut file = File::open(part)?;
    let mut buffer = vec![0; 1 << 16];
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            return Ok(());
        }
        out.write_all(&buffer[..read])?;
        keep(&buffer[..read]);
    }
}
