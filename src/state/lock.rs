//! One `pochi build` per pipeline at a time: an OS file lock (released by the kernel when
//! its holder dies, so a dead process's lock is reclaimed with no `--unlock`).

use std::fs::{File, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How often a waiting build looks at the lock again.
const POLL: Duration = Duration::from_millis(50);

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub(crate) enum LockError {
    #[error("another pochi (pid {holder}) is building pipeline `{pipeline}`")]
    #[diagnostic(help("wait for it to finish, or run without --no-wait to wait for it"))]
    Busy { pipeline: String, holder: String },
    #[error(
        "interrupted while waiting for another pochi (pid {holder}) to finish building pipeline `{pipeline}`"
    )]
    #[diagnostic(help("nothing was run or changed"))]
    Interrupted { pipeline: String, holder: String },
    #[error("cannot lock `{}`", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A held lock; dropping it releases the lock.
#[derive(Debug)]
pub(crate) struct StateLock {
    _file: File,
}

impl StateLock {
    /// Takes the lock in `dir`. When another process holds it, calls `on_wait` with that
    /// process's pid and waits until it is free or `cancel` is set, or fails at once when
    /// `wait` is false.
    pub(crate) fn acquire(
        dir: &Path,
        pipeline: &str,
        wait: bool,
        cancel: &AtomicBool,
        on_wait: impl FnOnce(&str),
    ) -> Result<StateLock, LockError> {
        let path = dir.join("lock");
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder = read_holder(&mut file);
                if !wait {
                    return Err(LockError::Busy {
                        pipeline: pipeline.to_string(),
                        holder,
                    });
                }
                on_wait(&holder);
                wait_for(&file, cancel).map_err(|error| match error {
                    Waited::Cancelled => LockError::Interrupted {
                        pipeline: pipeline.to_string(),
                        holder: holder.clone(),
                    },
                    Waited::Io(source) => io(source),
                })?;
            }
            Err(TryLockError::Error(source)) => return Err(io(source)),
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        write!(file, "{}", std::process::id()).map_err(io)?;
        Ok(StateLock { _file: file })
    }
}

enum Waited {
    Cancelled,
    Io(std::io::Error),
}

/// Polls the lock (a blocking `flock` could not be interrupted) until it is ours.
fn wait_for(file: &File, cancel: &AtomicBool) -> Result<(), Waited> {
    loop {
        if cancel.load(Ordering::Relaxed) {
            return Err(Waited::Cancelled);
        }
        match file.try_lock() {
            Ok(()) => return Ok(()),
            Err(TryLockError::WouldBlock) => std::thread::sleep(POLL),
            Err(TryLockError::Error(source)) => return Err(Waited::Io(source)),
        }
    }
}

fn read_holder(file: &mut File) -> String {
    let mut holder = String::new();
    let _ = file
        .rewind()
        .and_then(|()| file.read_to_string(&mut holder));
    let holder = holder.trim();
    if holder.is_empty() {
        "unknown".into()
    } else {
        holder.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_then_admitted_after_release() {
        let dir = tempfile::tempdir().unwrap();
        let first =
            StateLock::acquire(dir.path(), "p", false, &AtomicBool::new(false), |_| {}).unwrap();
        let busy = StateLock::acquire(dir.path(), "p", false, &AtomicBool::new(false), |_| {})
            .unwrap_err();
        assert!(
            matches!(&busy, LockError::Busy { holder, .. } if *holder == std::process::id().to_string())
        );
        drop(first);
        StateLock::acquire(dir.path(), "p", false, &AtomicBool::new(false), |_| {}).unwrap();
    }
}
