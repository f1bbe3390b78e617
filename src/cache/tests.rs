//! The store's promises, on temporary directories: round trips of files and trees with
//! their executable bits, every kind of damage a miss with its reason, restored outputs
//! independent of the store, concurrent stores, and what `gc` removes and keeps.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::store::Stored;
use super::*;
use crate::fingerprint::StatCache;

const KEY_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const KEY_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const KEY_C: &str = "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";

struct Fixture {
    dir: tempfile::TempDir,
    cache: LocalCache,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let cache = LocalCache::at(&dir.path().join("store"));
        std::fs::create_dir_all(dir.path().join("project")).unwrap();
        Fixture { dir, cache }
    }

    fn project(&self) -> PathBuf {
        self.dir.path().join("project")
    }

    /// Writes `project/<rel>` (and its parents).
    fn write(&self, rel: &str, bytes: &[u8]) -> PathBuf {
        let path = self.project().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn store_one(&self, key: &str, rel: &str, bytes: &[u8]) -> Stored {
        let path = self.write(rel, bytes);
        self.cache
            .store(key, &[("out", &path)], &EntryMeta::default())
            .unwrap()
    }

    /// Restores `key` under `dir.path()/restored/<name>`.
    fn restore(&self, key: &str) -> Result<Restored, Miss> {
        let base = self.dir.path().join("restored");
        self.cache.restore(key, |name| base.join(name))
    }

    fn restored(&self, name: &str) -> PathBuf {
        self.dir.path().join("restored").join(name)
    }
}

fn meta() -> EntryMeta {
    EntryMeta {
        pipeline: "deploy".into(),
        stage: "export".into(),
        kind: "export".into(),
        platform: [("gpu".to_string(), "NVIDIA H200".to_string())].into(),
        duration_ms: Some(1234),
    }
}

fn set_mtime(path: &Path, ago: Duration) {
    std::fs::File::open(path)
        .unwrap()
        .set_modified(SystemTime::now() - ago)
        .unwrap();
}

fn make_writable(path: &Path) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
}

/// Whether the filesystem at `dir` makes reflinks.
fn has_reflinks(dir: &Path) -> bool {
    std::fs::write(dir.join("probe"), b"probe").unwrap();
    let from = std::fs::File::open(dir.join("probe")).unwrap();
    let to = std::fs::File::create(dir.join("probe-clone")).unwrap();
    super::digest::try_reflink(&from, &to)
}

fn hours(n: u64) -> Duration {
    Duration::from_secs(n * 3600)
}

/// Every file and directory under `root`: relative path, content (None for a directory),
/// owner-executable bit.
fn tree(root: &Path) -> Vec<(PathBuf, Option<Vec<u8>>, bool)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for item in std::fs::read_dir(&dir).unwrap() {
            let path = item.unwrap().path();
            let meta = std::fs::metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            if meta.is_dir() {
                out.push((rel, None, false));
                stack.push(path);
            } else {
                let exec = meta.permissions().mode() & 0o100 != 0;
                out.push((rel, Some(std::fs::read(&path).unwrap()), exec));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn files_and_trees_round_trip_with_executable_bits_and_digests() {
    let f = Fixture::new();
    let model = f.write("model.onnx", &vec![7u8; 100_000]);
    let tool = f.write("bin/run.sh", b"#!/bin/sh\necho hi\n");
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
    f.write("calib/a.npy", b"aaaa");
    f.write("calib/sub/b.npy", b"bb");
    f.write("calib/sub/deeper/same.npy", b"aaaa");
    let script = f.write("calib/sub/tool", b"exec");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::create_dir_all(f.project().join("calib/empty")).unwrap();
    let calib = f.project().join("calib");
    let outputs = [("model", &*model), ("tool", &*tool), ("calib", &*calib)];
    let stored = f.cache.store(KEY_A, &outputs, &meta()).unwrap();
    // "aaaa" is stored once.
    assert_eq!(stored.blobs_added, 5);

    let restored = f.restore(KEY_A).unwrap();
    assert_eq!(restored.files, 6);
    // Reflinks wherever this filesystem has them (run with TMPDIR on XFS or btrfs).
    let reflinks = has_reflinks(f.dir.path());
    assert_eq!(stored.reflinked, if reflinks { 6 } else { 0 });
    assert_eq!(restored.reflinked, if reflinks { 6 } else { 0 });
    assert_eq!(restored.entry.meta, meta());
    assert_eq!(
        std::fs::read(f.restored("model")).unwrap(),
        vec![7u8; 100_000]
    );
    assert_eq!(tree(&f.restored("calib")), tree(&calib));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode();
    assert_ne!(mode(&f.restored("tool")) & 0o100, 0);
    assert_eq!(mode(&f.restored("model")) & 0o111, 0);
    assert!(f.restored("calib/empty").is_dir());
    // The digests the entry gives are the fingerprint's.
    let stat = StatCache::default();
    for (output, (name, _)) in restored.entry.outputs.iter().zip(outputs) {
        assert_eq!(output.name, name);
        let rel = match name {
            "model" => "model.onnx",
            "tool" => "bin/run.sh",
            _ => "calib",
        };
        assert_eq!(
            output.digest,
            stat.digest(&f.project(), Path::new(rel)).unwrap()
        );
    }
    // Both digests of each file, for the remote caches.
    let Node::File(file) = &restored.entry.outputs[0].node else {
        panic!("model is a file");
    };
    assert_eq!(file, &{
        let d = FileDigests::of_path(&model).unwrap();
        FileRecord {
            blake3: d.blake3,
            sha256: d.sha256,
            size: d.size,
            executable: false,
        }
    });
}

#[test]
fn empty_files_and_empty_directories_round_trip() {
    let f = Fixture::new();
    let empty = f.write("empty.txt", b"");
    let dir = f.project().join("nothing");
    std::fs::create_dir_all(&dir).unwrap();
    let outputs = [("empty", &*empty), ("nothing", &*dir)];
    f.cache.store(KEY_A, &outputs, &meta()).unwrap();
    let restored = f.restore(KEY_A).unwrap();
    assert_eq!(std::fs::read(f.restored("empty")).unwrap(), b"");
    assert_eq!(std::fs::read_dir(f.restored("nothing")).unwrap().count(), 0);
    let stat = StatCache::default();
    let digest = stat.digest(&f.project(), Path::new("nothing")).unwrap();
    assert_eq!(restored.entry.outputs[1].digest, digest);
}

#[test]
fn an_unknown_or_malformed_key_is_a_miss() {
    let f = Fixture::new();
    assert_eq!(f.restore(KEY_A).unwrap_err(), Miss::NoEntry);
    assert!(matches!(f.restore("../../etc"), Err(Miss::BadKey(_))));
    assert!(matches!(
        f.cache
            .store("ABCDEF0123456789", &[], &EntryMeta::default()),
        Err(CacheError::InvalidKey { .. })
    ));
}

#[test]
fn a_corrupt_blob_is_a_miss_that_leaves_nothing_and_is_replaced_by_the_next_store() {
    let f = Fixture::new();
    let stored = f.store_one(KEY_A, "model.onnx", b"the real model bytes");
    let digest = stored.entry.outputs[0].digest.clone();
    let blob = f.cache.blob_path(&digest);
    make_writable(&blob);
    std::fs::write(&blob, b"the fake model bytes").unwrap(); // same size
    assert_eq!(
        f.restore(KEY_A).unwrap_err(),
        Miss::BlobCorrupt(digest.clone())
    );
    assert_eq!(
        f.restore(KEY_A).unwrap_err().to_string(),
        format!("blob {digest} missing"),
        "the corrupt blob was removed"
    );
    assert!(!f.restored("out").exists());
    f.store_one(KEY_A, "model.onnx", b"the real model bytes");
    f.restore(KEY_A).unwrap();
    assert_eq!(
        std::fs::read(f.restored("out")).unwrap(),
        b"the real model bytes"
    );
}

#[test]
fn a_truncated_blob_is_corrupt() {
    let f = Fixture::new();
    let digest = f.store_one(KEY_A, "m", b"0123456789").entry.outputs[0]
        .digest
        .clone();
    let blob = f.cache.blob_path(&digest);
    make_writable(&blob);
    std::fs::write(&blob, b"01234").unwrap();
    assert_eq!(f.restore(KEY_A).unwrap_err(), Miss::BlobCorrupt(digest));
}

#[test]
fn a_missing_blob_is_a_miss_and_outputs_already_restored_are_removed() {
    let f = Fixture::new();
    let first = f.write("first", b"first");
    let second = f.write("second", b"second");
    let stored = f
        .cache
        .store(KEY_A, &[("first", &first), ("second", &second)], &meta())
        .unwrap();
    let gone = stored.entry.outputs[1].digest.clone();
    std::fs::remove_file(f.cache.blob_path(&gone)).unwrap();
    let miss = f.restore(KEY_A).unwrap_err();
    assert_eq!(miss, Miss::BlobMissing(gone.clone()));
    assert_eq!(miss.to_string(), format!("blob {gone} missing"));
    assert!(!f.restored("first").exists());
    assert!(!f.restored("second").exists());
}

#[test]
fn a_truncated_or_tampered_entry_is_a_miss() {
    let f = Fixture::new();
    f.store_one(KEY_A, "m", b"model");
    let path = f.cache.entry_path(KEY_A);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, &text[..text.len() / 2]).unwrap();
    let miss = f.restore(KEY_A).unwrap_err();
    assert!(miss.to_string().starts_with("entry unreadable"), "{miss}");

    // A directory entry whose path leaves its output.
    f.write("dir/x", b"x");
    let dir = f.project().join("dir");
    f.cache.store(KEY_B, &[("d", &dir)], &meta()).unwrap();
    let path = f.cache.entry_path(KEY_B);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("\"x\"", "\"../x\"")).unwrap();
    assert!(matches!(f.restore(KEY_B), Err(Miss::EntryUnreadable(_))));
    assert!(!f.dir.path().join("restored/x").exists());

    // A file's digest changed in the entry but not the output's.
    f.store_one(KEY_C, "m", b"model");
    let path = f.cache.entry_path(KEY_C);
    let text = std::fs::read_to_string(&path).unwrap();
    let digest = blake3::hash(b"model").to_hex().to_string();
    let other = blake3::hash(b"other").to_hex().to_string();
    let tampered = text.replacen(&digest, &other, 2);
    std::fs::write(&path, tampered.replacen(&other, &digest, 1)).unwrap();
    assert!(matches!(f.restore(KEY_C), Err(Miss::EntryUnreadable(_))));
}

#[test]
fn editing_a_restored_output_leaves_the_store_intact() {
    let f = Fixture::new();
    let digest = f.store_one(KEY_A, "model.onnx", b"weights").entry.outputs[0]
        .digest
        .clone();
    f.restore(KEY_A).unwrap();
    let restored = f.restored("out");
    let blob = f.cache.blob_path(&digest);
    let (a, b) = (
        std::fs::metadata(&restored).unwrap(),
        std::fs::metadata(&blob).unwrap(),
    );
    assert_ne!(
        a.ino(),
        b.ino(),
        "a restored output is never a hard link into the store"
    );
    assert_eq!(a.nlink(), 1);
    std::fs::write(&restored, b"edited!").unwrap();
    assert_eq!(std::fs::read(&blob).unwrap(), b"weights");
    f.restore(KEY_A).unwrap();
    assert_eq!(std::fs::read(&restored).unwrap(), b"weights");
    // The stored copy does not follow the source either.
    std::fs::write(f.project().join("model.onnx"), b"changed").unwrap();
    assert_eq!(std::fs::read(&blob).unwrap(), b"weights");
}

#[test]
fn a_restore_replaces_what_is_at_the_destination() {
    let f = Fixture::new();
    f.store_one(KEY_A, "m", b"model");
    std::fs::create_dir_all(f.restored("out")).unwrap();
    std::fs::write(f.restored("out/stale"), b"old").unwrap();
    f.restore(KEY_A).unwrap();
    assert_eq!(std::fs::read(f.restored("out")).unwrap(), b"model");
}

#[test]
fn concurrent_stores_and_restores_of_one_key_are_safe() {
    let f = Fixture::new();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let file = f.write("big.bin", &data);
    f.write("tree/a", b"a");
    f.write("tree/b/c", &data[..1000]);
    let dir = f.project().join("tree");
    std::thread::scope(|scope| {
        for thread in 0..8 {
            let (cache, file, dir, data) = (&f.cache, &file, &dir, &data);
            let base = f.dir.path().join(format!("r{thread}"));
            scope.spawn(move || {
                let outputs = [("big", &**file), ("tree", &**dir)];
                for _ in 0..3 {
                    cache.store(KEY_A, &outputs, &meta()).unwrap();
                    // Between stores of other threads: a hit, or no entry yet; never wrong.
                    match cache.restore(KEY_A, |name| base.join(name)) {
                        Ok(_) => assert_eq!(&std::fs::read(base.join("big")).unwrap(), data),
                        Err(miss) => panic!("{miss}"),
                    }
                }
            });
        }
    });
    f.restore(KEY_A).unwrap();
    assert_eq!(std::fs::read(f.restored("big")).unwrap(), data);
    let left = std::fs::read_dir(f.cache.root().join("cache-tmp"))
        .unwrap()
        .count();
    assert_eq!(left, 0, "no temporary files are left");
    assert_eq!(f.cache.info().unwrap().blobs, 3);
}

#[test]
fn a_collection_during_stores_keeps_the_blobs_they_reuse() {
    // Real concurrency (the deterministic case of a reused blob is in
    // `gc_keeps_referenced_blobs_and_fresh_unreferenced_ones`): every entry written while
    // collections run can be restored.
    let f = Fixture::new();
    // An old blob that no entry references any more: garbage, until a store reuses it.
    let shared = f.write("shared.bin", &[5; 50_000]);
    let digest = f.store_one(KEY_A, "old", &[5; 50_000]).entry.outputs[0]
        .digest
        .clone();
    f.cache.remove(KEY_A).unwrap();
    set_mtime(&f.cache.blob_path(&digest), hours(2));
    let keys: Vec<String> = (0..40).map(|i| format!("{i:064x}")).collect();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for _ in 0..200 {
                f.cache.gc(None, None).unwrap();
            }
        });
        for chunk in keys.chunks(10) {
            let (cache, shared) = (&f.cache, &shared);
            scope.spawn(move || {
                for key in chunk {
                    let own = cache.root().join(format!("../project/{key}"));
                    std::fs::write(&own, key).unwrap();
                    let outputs = [("shared", &**shared), ("own", &*own)];
                    cache.store(key, &outputs, &meta()).unwrap();
                }
            });
        }
    });
    for key in &keys {
        f.restore(key).unwrap();
    }
}

#[test]
fn a_blob_already_stored_is_reused_and_refreshed() {
    let f = Fixture::new();
    let digest = f.store_one(KEY_A, "m", b"same bytes").entry.outputs[0]
        .digest
        .clone();
    let blob = f.cache.blob_path(&digest);
    set_mtime(&blob, hours(5));
    let again = f.store_one(KEY_B, "n", b"same bytes");
    assert_eq!((again.blobs_added, again.bytes_added), (0, 0));
    let age = std::fs::metadata(&blob).unwrap().modified().unwrap();
    assert!(
        age > SystemTime::now() - hours(1),
        "its mtime is refreshed for gc"
    );
}

#[test]
fn what_cannot_be_stored_is_refused() {
    let f = Fixture::new();
    let fifo = f.project().join("fifo");
    let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o644) }, 0);
    assert!(matches!(
        f.cache.store(KEY_A, &[("f", &fifo)], &meta()),
        Err(CacheError::NotAFile { .. })
    ));
    let file = f.write("x", b"x");
    assert!(matches!(
        f.cache.store(KEY_A, &[("x", &file), ("x", &file)], &meta()),
        Err(CacheError::DuplicateOutput { .. })
    ));
    // A link to its own directory is followed until the kernel's limit of links in a path.
    std::fs::create_dir_all(f.project().join("loop")).unwrap();
    std::os::unix::fs::symlink(".", f.project().join("loop/up")).unwrap();
    let looped = f.project().join("loop");
    assert!(matches!(
        f.cache.store(KEY_A, &[("l", &looped)], &meta()),
        Err(CacheError::Io { source, .. }) if source.raw_os_error() == Some(libc::ELOOP)
    ));
    assert_eq!(f.restore(KEY_A).unwrap_err(), Miss::NoEntry);
}

#[test]
fn gc_removes_the_least_recently_used_entries_first() {
    let f = Fixture::new();
    let cache = f.cache.clone().with_grace(Duration::ZERO);
    for (key, age, byte) in [(KEY_A, 3, b'a'), (KEY_B, 2, b'b'), (KEY_C, 1, b'c')] {
        f.store_one(key, &format!("{byte}"), &[byte; 10_000]);
        set_mtime(&cache.entry_path(key), hours(age));
    }
    // A was stored first but restored last: B is now the least recently used.
    f.restore(KEY_A).unwrap();
    let report = cache.gc(Some(25_000), None).unwrap();
    assert_eq!((report.entries_removed, report.blobs_removed), (1, 1));
    assert!(report.bytes_freed > 10_000);
    assert_eq!(f.restore(KEY_B).unwrap_err(), Miss::NoEntry);
    f.restore(KEY_A).unwrap();
    f.restore(KEY_C).unwrap();
    assert_eq!(report.bytes_after, report.bytes_before - report.bytes_freed);
    assert_eq!(report.bytes_after, cache.info().unwrap().bytes);
}

#[test]
fn gc_removes_entries_unused_for_longer_than_the_limit() {
    let f = Fixture::new();
    let cache = f.cache.clone().with_grace(Duration::ZERO);
    f.store_one(KEY_A, "a", b"old");
    f.store_one(KEY_B, "b", b"new");
    set_mtime(&cache.entry_path(KEY_A), hours(24 * 40));
    set_mtime(&cache.entry_path(KEY_B), hours(24));
    let report = cache
        .gc(None, Some(parse_duration("30d").unwrap()))
        .unwrap();
    assert_eq!((report.entries_removed, report.blobs_removed), (1, 1));
    assert_eq!(f.restore(KEY_A).unwrap_err(), Miss::NoEntry);
    f.restore(KEY_B).unwrap();
}

#[test]
fn gc_keeps_referenced_blobs_and_fresh_unreferenced_ones() {
    let f = Fixture::new();
    // Two entries share a blob; removing one keeps it for the other.
    f.store_one(KEY_A, "a", b"shared");
    f.store_one(KEY_B, "b", b"shared");
    set_mtime(&f.cache.entry_path(KEY_A), hours(24 * 60));
    // A blob whose entry is not written yet (a store in progress) and a stale one.
    let mut tally = Stored {
        entry: f.cache.lookup(KEY_B).unwrap(),
        blobs_added: 0,
        bytes_added: 0,
        reflinked: 0,
    };
    let fresh = f
        .cache
        .ingest(&f.write("c", b"in flight"), &mut tally)
        .unwrap();
    let stale = f
        .cache
        .ingest(&f.write("d", b"abandoned"), &mut tally)
        .unwrap();
    set_mtime(&f.cache.blob_path(&stale.blake3), hours(2));
    // An old unreferenced blob that a store in progress has just reused.
    let reused = f
        .cache
        .ingest(&f.write("e", b"reused"), &mut tally)
        .unwrap();
    set_mtime(&f.cache.blob_path(&reused.blake3), hours(2));
    f.cache
        .ingest(&f.write("e2", b"reused"), &mut tally)
        .unwrap();
    for blob in [&fresh.blake3, &stale.blake3] {
        assert!(f.cache.blob_path(blob).exists());
    }
    let report = f.cache.gc(None, Some(hours(24 * 30))).unwrap();
    assert_eq!((report.entries_removed, report.blobs_removed), (1, 1));
    assert!(
        f.cache.blob_path(&fresh.blake3).exists(),
        "within the grace period"
    );
    assert!(
        f.cache.blob_path(&reused.blake3).exists(),
        "refreshed by its reuse"
    );
    assert!(!f.cache.blob_path(&stale.blake3).exists());
    f.restore(KEY_B).unwrap();
    assert_eq!(std::fs::read(f.restored("out")).unwrap(), b"shared");
}

#[test]
fn gc_frees_the_blobs_of_the_entries_it_removes_at_once() {
    // With the default grace period, just after a build: `gc --max-size 0` frees it all.
    let f = Fixture::new();
    f.store_one(KEY_A, "a", &[b'a'; 10_000]);
    f.store_one(KEY_B, "b", &[b'b'; 10_000]);
    let report = f.cache.gc(Some(0), None).unwrap();
    assert_eq!((report.entries_removed, report.blobs_removed), (2, 2));
    assert_eq!(f.cache.info().unwrap().bytes, 0);
    assert_eq!(report.bytes_after, 0);
}

#[test]
fn gc_removes_stale_temporary_files_and_waits_for_no_other_collector() {
    let f = Fixture::new();
    f.store_one(KEY_A, "a", b"a");
    let tmp = f.cache.root().join("cache-tmp");
    std::fs::write(tmp.join("killed-store"), b"partial").unwrap();
    std::fs::write(tmp.join("running-store"), b"partial").unwrap();
    set_mtime(&tmp.join("killed-store"), hours(3));
    assert_eq!(f.cache.gc(None, None).unwrap().temp_removed, 1);
    assert!(tmp.join("running-store").exists());

    let _held = f.cache.gc_lock().unwrap().unwrap();
    assert!(matches!(f.cache.gc(None, None), Err(CacheError::GcBusy)));
    assert_eq!(f.cache.gc_if_over_limit().unwrap(), None);
}

#[test]
fn gc_if_over_limit_trims_to_ninety_percent_of_the_limit() {
    let f = Fixture::new();
    for (i, key) in [KEY_A, KEY_B, KEY_C].into_iter().enumerate() {
        f.store_one(key, &format!("o{i}"), &[i as u8; 100_000]);
        set_mtime(&f.cache.entry_path(key), hours(3 - i as u64));
    }
    let size = f.cache.info().unwrap().bytes;
    let cache = f.cache.clone().with_grace(Duration::ZERO);
    assert_eq!(
        cache
            .clone()
            .with_max_size(size)
            .gc_if_over_limit()
            .unwrap(),
        None
    );
    // One byte over: the oldest entry goes, and the store ends at most at 90% of the limit.
    let report = cache
        .with_max_size(size - 1)
        .gc_if_over_limit()
        .unwrap()
        .unwrap();
    assert_eq!((report.entries_removed, report.blobs_removed), (1, 1));
    assert!(report.bytes_after <= (size - 1) / 100 * 90);
    assert_eq!(f.restore(KEY_A).unwrap_err(), Miss::NoEntry);
    f.restore(KEY_B).unwrap();
    f.restore(KEY_C).unwrap();
}

#[test]
fn info_counts_sizes_and_ages() {
    let f = Fixture::new();
    let empty = f.cache.info().unwrap();
    assert_eq!((empty.bytes, empty.entries, empty.blobs), (0, 0, 0));
    assert_eq!(empty.oldest_use_unix_ms, None);
    f.store_one(KEY_A, "a", &[1; 1000]);
    f.store_one(KEY_B, "b", &[2; 3000]);
    f.store_one(KEY_C, "c", &[2; 3000]);
    set_mtime(&f.cache.entry_path(KEY_A), hours(48));
    f.cache
        .record_build_stats(&BuildStats::new(2, 0, 1))
        .unwrap();
    let info = f.cache.info().unwrap();
    assert_eq!((info.entries, info.blobs, info.blob_bytes), (3, 2, 4000));
    let entry_bytes: u64 = [KEY_A, KEY_B, KEY_C]
        .iter()
        .map(|k| std::fs::metadata(f.cache.entry_path(k)).unwrap().len())
        .sum();
    assert_eq!(info.bytes, 4000 + entry_bytes);
    let now = super::store::unix_ms(SystemTime::now());
    let oldest = info.oldest_use_unix_ms.unwrap();
    assert!(now - oldest >= 48 * 3_600_000 - 1000 && now - oldest < 49 * 3_600_000);
    assert!(now - info.newest_use_unix_ms.unwrap() < 60_000);
    assert_eq!(info.last_build.unwrap().hit_rate(), Some(2.0 / 3.0));
    assert_eq!(info.max_size, DEFAULT_MAX_SIZE);
}

#[test]
fn the_directory_and_size_limit_come_from_the_environment() {
    let vars = |pairs: &'static [(&'static str, &'static str)]| {
        move |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| std::ffi::OsString::from(v))
        }
    };
    let cache = LocalCache::from_vars(vars(&[("POCHI_CACHE_DIR", "/c")])).unwrap();
    assert_eq!(cache.root(), Path::new("/c/v1"));
    assert_eq!(cache.max_size(), DEFAULT_MAX_SIZE);
    let sized = &[("POCHI_CACHE_DIR", "/c"), ("POCHI_CACHE_MAX_SIZE", "20GiB")];
    assert_eq!(
        LocalCache::from_vars(vars(sized)).unwrap().max_size(),
        20 << 30
    );
    let apart = &[("POCHI_CACHE_DIR", "/c"), ("POCHI_OUTPUT_CACHE_DIR", "/o")];
    assert_eq!(
        LocalCache::from_vars(vars(apart)).unwrap().root(),
        Path::new("/o/v1")
    );
    let bad = &[("POCHI_CACHE_DIR", "/c"), ("POCHI_CACHE_MAX_SIZE", "lots")];
    assert!(matches!(
        LocalCache::from_vars(vars(bad)),
        Err(CacheError::BadMaxSize { .. })
    ));
}

/// The best of five runs of `work`, in seconds, each after an untimed `setup`.
fn best_of_five(mut setup: impl FnMut(), mut work: impl FnMut()) -> f64 {
    (0..5)
        .map(|_| {
            setup();
            let start = std::time::Instant::now();
            work();
            start.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// Restoring a large output against hashing it (bench/cache_restore.sh runs this):
/// `POCHI_BENCH_DIR` is where the project and the store go (the filesystem decides reflink
/// or copy), `POCHI_BENCH_MB` the size (250). Warm page cache; best of five runs.
#[test]
#[ignore = "a benchmark: bench/cache_restore.sh"]
fn bench_restore_of_a_large_output() {
    let base = std::env::var_os("POCHI_BENCH_DIR").map(PathBuf::from);
    let dir = match &base {
        Some(base) => tempfile::tempdir_in(base).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    let mb: usize = std::env::var("POCHI_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(250);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let data: Vec<u8> = (0..mb << 20)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let source = dir.path().join("model.onnx");
    std::fs::write(&source, &data).unwrap();
    drop(data);
    let cache = LocalCache::at(&dir.path().join("store"));
    let key = |i: usize| format!("{i:064x}");
    let hash = best_of_five(
        || {},
        || {
            crate::fingerprint::hash_file(&source).unwrap();
        },
    );
    let both = best_of_five(
        || {},
        || {
            FileDigests::of_path(&source).unwrap();
        },
    );
    let runs = std::cell::Cell::new(0);
    let next_key = || {
        runs.set(runs.get() + 1);
        key(runs.get())
    };
    let store_new = best_of_five(
        || {
            let _ = std::fs::remove_dir_all(cache.root());
        },
        || {
            cache
                .store(&next_key(), &[("m", &source)], &meta())
                .unwrap();
        },
    );
    let store_again = best_of_five(
        || {},
        || {
            cache
                .store(&next_key(), &[("m", &source)], &meta())
                .unwrap();
        },
    );
    let dest = dir.path().join("restored");
    let mut reflinked = 0;
    let restore = best_of_five(
        || {
            let _ = std::fs::remove_file(&dest);
        },
        || {
            reflinked = cache
                .restore(&key(runs.get()), |_| dest.clone())
                .unwrap()
                .reflinked
        },
    );
    let copy_to = dir.path().join("copy");
    let copy = best_of_five(
        || {
            let _ = std::fs::remove_file(&copy_to);
        },
        || {
            std::fs::copy(&source, &copy_to).unwrap();
        },
    );
    let rate = |secs: f64| format!("{:.3} s ({:.0} MB/s)", secs, mb as f64 * 1.048_576 / secs);
    let how = if reflinked > 0 { "reflink" } else { "copy" };
    let rows = [
        format!("| {mb} MiB on {} | time |", dir.path().display()),
        "| --- | --- |".to_string(),
        format!(
            "| blake3 of the file (the fingerprint's hash_file) | {} |",
            rate(hash)
        ),
        format!(
            "| blake3 + sha256 in one read (FileDigests) | {} |",
            rate(both)
        ),
        format!("| store, new blob | {} |", rate(store_new)),
        format!("| store, blob already there | {} |", rate(store_again)),
        format!(
            "| restore ({how}, every byte verified) | {} |",
            rate(restore)
        ),
        format!("| std::fs::copy (reference, no hashing) | {} |", rate(copy)),
    ];
    // Only the CLI prints: the table goes to a file (bench/cache_restore.sh shows it).
    let out = std::env::var_os("POCHI_BENCH_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("pochi-cache-restore.md"));
    std::fs::write(&out, rows.join("\n") + "\n").unwrap();
}
