//! The TensorRT DOUBLE of the engine tests (`tests/fixtures/fake_tensorrt/tensorrt`, a test
//! double of the `tensorrt` Python package, never TensorRT) with the REAL Python bindings of
//! one TensorRT version beside it: the directory a test gives the engine worker through
//! `POCHI_TEST_TENSORRT_STANDIN`.
//!
//! The bindings (PyPI's `tensorrt-cu12-bindings` wheels, hashes pinned in
//! `tests/fixtures/fake_tensorrt/bindings.lock`) are installed once per machine and version
//! into the per-user cache by `install_bindings.py`, which also compiles the stub libraries
//! they load. When they cannot be downloaded, every test that needs them fails, saying so.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use super::servers::output_within;

/// The versions the engine worker is checked against: the first 10.x on PyPI, the newest
/// 10.x and the newest 11.x.
pub const VERSIONS: [&str; 3] = [FIRST_10, NEWEST_10, NEWEST];
pub const FIRST_10: &str = "10.0.1";
pub const NEWEST_10: &str = "10.16.1.11";
pub const NEWEST: &str = "11.4.0.106";

/// A download of 1.3 MB and three small compilations; bounds a slow mirror (pip's own
/// timeouts are 30 s a connection, two retries).
const INSTALL_TIMEOUT: Duration = Duration::from_secs(300);

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake_tensorrt")
}

/// The double with the real bindings of `version` (one of `VERSIONS`), for
/// `POCHI_TEST_TENSORRT_STANDIN`.
pub fn double_dir(version: &str) -> String {
    static DIRS: Mutex<BTreeMap<String, PathBuf>> = Mutex::new(BTreeMap::new());
    let mut dirs = DIRS.lock().unwrap_or_else(|e| e.into_inner());
    let dir = dirs
        .entry(version.to_string())
        .or_insert_with(|| assemble(&install(version)));
    dir.to_string_lossy().into_owned()
}

/// The installed bindings of `version` (`tensorrt_bindings/` and `stubs/`).
fn install(version: &str) -> PathBuf {
    let mut command = Command::new("python3");
    command
        .arg(fixture().join("install_bindings.py"))
        .arg(version);
    let what = format!(
        "install_bindings.py {version} (the real TensorRT {version} Python bindings from PyPI, \
         which the TensorRT engine tests need)"
    );
    PathBuf::from(output_within(command, INSTALL_TIMEOUT, &what).trim())
}

/// `<target tmp>/tensorrt-double/<bindings dir name>/` holding `tensorrt` (a link to the
/// double in this checkout) and `bindings` (a link to the installed bindings), made
/// atomically.
fn assemble(bindings: &Path) -> PathBuf {
    let name = bindings.file_name().expect("the bindings' directory name");
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("tensorrt-double");
    let dir = root.join(name);
    if dir.is_dir() {
        return dir;
    }
    std::fs::create_dir_all(&root).expect("tensorrt-double directory");
    let partial = root.join(format!(
        "{}.partial-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir(&partial).expect("partial double directory");
    std::os::unix::fs::symlink(fixture().join("tensorrt"), partial.join("tensorrt"))
        .expect("link to the double");
    std::os::unix::fs::symlink(bindings, partial.join("bindings")).expect("link to the bindings");
    if std::fs::rename(&partial, &dir).is_err() {
        // Another test process made it first.
        let _ = std::fs::remove_dir_all(&partial);
        assert!(dir.is_dir(), "cannot make {}", dir.display());
    }
    dir
}
