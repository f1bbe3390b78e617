//! `cargo fuzz run pipeline`: each input is a `pipeline.toml`, parsed and built into a graph
//! in-process; a panic, a hang, or an error that does not render (tests/it/fuzz_support) is a
//! crash. See docs/fuzzing.md.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/it/fuzz_support/mod.rs"]
#[allow(
    dead_code,
    reason = "the suite test reads the outcome counts; here only failures count"
)]
mod fuzz_support;

/// A scratch directory holding `pipeline.toml`, for the whole run.
fn pipeline_file() -> &'static PathBuf {
    static FILE: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &FILE
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("a scratch directory");
            let file = dir.path().join("pipeline.toml");
            (dir, file)
        })
        .1
}

fuzz_target!(|data: &[u8]| {
    let file = pipeline_file();
    std::fs::write(file, data).expect("write pipeline.toml");
    if let Err(message) = fuzz_support::check(file, data) {
        panic!("{message}");
    }
});
