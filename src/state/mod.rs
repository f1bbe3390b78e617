//! What pochi remembers between runs, in `.pochi/v1/<pipeline>/`: an append-only log of
//! stage records (a record is written only after its outputs are published and hashed),
//! the stat cache, stage logs, temporary outputs, and the lock.

mod lock;

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub(crate) use lock::{LockError, StateLock};

use crate::fingerprint::{Digest, StageKey};

/// The on-disk layout version: a new layout gets a new directory, never a migration.
pub(crate) const LAYOUT_VERSION: &str = "v1";

const LOG_FILE: &str = "log.jsonl";
const STAT_CACHE_FILE: &str = "stat-cache.json";
/// The file name of the pipeline file that last built into this state directory.
const OWNER_FILE: &str = "pipeline-file";

/// The file name of the pipeline file that last built into the state directory `dir`.
pub(crate) fn owner(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join(OWNER_FILE)).ok()?;
    Some(text.trim_end_matches('\n').to_string()).filter(|name| !name.is_empty())
}

/// Records `file_name` as the pipeline file that builds into `dir` (under its lock). The
/// file is written on every build, before any stage runs: a state directory that cannot
/// take a new file (read-only, full) fails the build here, not after its stages ran.
pub(crate) fn claim(dir: &Path, file_name: &str) -> Result<(), StateError> {
    let path = dir.join(OWNER_FILE);
    crate::fsutil::write_cache(&path, format!("{file_name}\n").as_bytes())
        .map_err(|source| StateError::Io { path, source })
}

/// A stage's last successful run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StageRecord {
    pub stage: String,
    pub fingerprint: String,
    pub key: RecordedKey,
    pub outputs: Vec<OutputRecord>,
    pub duration_ms: u64,
    pub finished_unix_ms: u64,
    /// Where the outputs were restored from instead of running the stage (`local: DIR`,
    /// `remote: URL`); none when it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_from: Option<String>,
}

/// A recorded stage key, kept as the JSON text it was read as: the up-to-date test only
/// compares fingerprints, so the key is parsed only when `explain` or a diff needs it
/// (parsing 10,000 keys was a sixth of a no-op check).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub(crate) struct RecordedKey(Box<serde_json::value::RawValue>);

impl RecordedKey {
    pub(crate) fn new(key: &StageKey) -> RecordedKey {
        let json = serde_json::to_string(key).unwrap_or_else(|_| "null".into());
        RecordedKey(
            serde_json::value::RawValue::from_string(json)
                .unwrap_or_else(|_| serde_json::value::RawValue::NULL.to_owned()),
        )
    }

    /// The key, or `None` when it was written by a pochi with another key format.
    pub(crate) fn parse(&self) -> Option<StageKey> {
        serde_json::from_str(self.0.get()).ok()
    }
}

/// One published output and its digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct OutputRecord {
    pub key: String,
    pub path: PathBuf,
    pub digest: Digest,
}

/// A stage's last failed run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct FailureRecord {
    pub stage: String,
    pub message: String,
    /// The stage's log, relative to the pipeline directory.
    pub log: Option<PathBuf>,
    pub duration_ms: u64,
    pub finished_unix_ms: u64,
}

#[derive(Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum LogEntry {
    Built(Box<StageRecord>),
    Failed(FailureRecord),
    Cleaned {
        stage: String,
    },
    /// How long a stage that is no longer built took last time (written by compaction, so
    /// that scheduling estimates survive `pochi clean`).
    Duration {
        stage: String,
        duration_ms: u64,
    },
}

/// Why the state could not be read or written.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub(crate) enum StateError {
    #[error("cannot use pochi's state directory `{}`", path.display())]
    #[diagnostic(help(
        "check that the directory is writable; deleting it only costs a full rebuild"
    ))]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    #[diagnostic(transparent)]
    Lock(#[from] LockError),
}

/// One line of the log as read: every field of every entry, so that it deserializes
/// straight from the text (an internally tagged enum would buffer it first, which a
/// `RecordedKey` cannot be read from).
#[derive(Deserialize)]
struct LogLine {
    event: String,
    stage: String,
    fingerprint: Option<String>,
    key: Option<RecordedKey>,
    outputs: Option<Vec<OutputRecord>>,
    message: Option<String>,
    log: Option<PathBuf>,
    duration_ms: Option<u64>,
    finished_unix_ms: Option<u64>,
    restored_from: Option<String>,
}

impl LogLine {
    /// The entry this line holds, if it is complete.
    fn entry(self) -> Option<LogEntry> {
        let stage = self.stage;
        Some(match self.event.as_str() {
            "built" => LogEntry::Built(Box::new(StageRecord {
                stage,
                fingerprint: self.fingerprint?,
                key: self.key?,
                outputs: self.outputs?,
                duration_ms: self.duration_ms?,
                finished_unix_ms: self.finished_unix_ms?,
                restored_from: self.restored_from,
            })),
            "failed" => LogEntry::Failed(FailureRecord {
                stage,
                message: self.message?,
                log: self.log,
                duration_ms: self.duration_ms?,
                finished_unix_ms: self.finished_unix_ms?,
            }),
            "cleaned" => LogEntry::Cleaned { stage },
            "duration" => LogEntry::Duration {
                stage,
                duration_ms: self.duration_ms?,
            },
            _ => return None,
        })
    }
}

/// The records of one pipeline, loaded from its log; appends go straight to the log.
#[derive(Debug)]
pub(crate) struct StateStore {
    dir: PathBuf,
    built: HashMap<String, StageRecord>,
    failed: HashMap<String, FailureRecord>,
    /// The last successful run's duration of every stage ever built, cleaned ones too.
    durations: HashMap<String, u64>,
    log: Option<File>,
    lines: usize,
    /// The log's size and mtime when it was read, to tell whether another build changed it.
    read_stamp: Option<(u64, std::time::SystemTime)>,
}

impl StateStore {
    /// Reads the state in `dir` (empty when there is none). A torn last line, left by a
    /// process killed mid-write, is ignored.
    pub(crate) fn open(dir: &Path) -> Result<StateStore, StateError> {
        let mut store = StateStore {
            dir: dir.to_path_buf(),
            built: HashMap::new(),
            failed: HashMap::new(),
            durations: HashMap::new(),
            log: None,
            lines: 0,
            read_stamp: log_stamp(dir),
        };
        let text = match std::fs::read(dir.join(LOG_FILE)) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(store),
            Err(source) => return Err(store.io_error(source)),
        };
        for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            store.lines += 1;
            if let Some(entry) = serde_json::from_slice::<LogLine>(line)
                .ok()
                .and_then(LogLine::entry)
            {
                store.apply(entry);
            }
        }
        Ok(store)
    }

    fn apply(&mut self, entry: LogEntry) {
        match entry {
            LogEntry::Built(record) => {
                self.failed.remove(&record.stage);
                self.durations
                    .insert(record.stage.clone(), record.duration_ms);
                self.built.insert(record.stage.clone(), *record);
            }
            LogEntry::Duration { stage, duration_ms } => {
                self.durations.insert(stage, duration_ms);
            }
            LogEntry::Failed(record) => {
                self.failed.insert(record.stage.clone(), record);
            }
            LogEntry::Cleaned { stage } => {
                self.built.remove(&stage);
                self.failed.remove(&stage);
            }
        }
    }

    /// Whether the log on disk differs from what this store read (another process wrote it).
    pub(crate) fn changed_on_disk(&self) -> bool {
        self.log.is_none() && log_stamp(&self.dir) != self.read_stamp
    }

    /// The last successful run of `stage`.
    pub(crate) fn built(&self, stage: &str) -> Option<&StageRecord> {
        self.built.get(stage)
    }

    /// How long `stage` took the last time it was built, even if it was cleaned since.
    pub(crate) fn last_duration_ms(&self, stage: &str) -> Option<u64> {
        self.durations.get(stage).copied()
    }

    /// The last run of `stage`, if it failed after its last success.
    pub(crate) fn failed(&self, stage: &str) -> Option<&FailureRecord> {
        self.failed.get(stage)
    }

    pub(crate) fn record_built(&mut self, record: StageRecord) -> Result<(), StateError> {
        self.append(LogEntry::Built(Box::new(record)))
    }

    pub(crate) fn record_failed(&mut self, record: FailureRecord) -> Result<(), StateError> {
        self.append(LogEntry::Failed(record))
    }

    pub(crate) fn record_cleaned(&mut self, stage: &str) -> Result<(), StateError> {
        self.append(LogEntry::Cleaned {
            stage: stage.to_string(),
        })
    }

    /// Appends one entry as a single write of one line.
    fn append(&mut self, entry: LogEntry) -> Result<(), StateError> {
        let mut line =
            serde_json::to_vec(&entry).map_err(|e| self.io_error(io::Error::other(e)))?;
        line.push(b'\n');
        let log = match &mut self.log {
            Some(log) => log,
            None => {
                let opened = std::fs::create_dir_all(&self.dir).and_then(|()| {
                    File::options()
                        .create(true)
                        .read(true)
                        .append(true)
                        .open(self.dir.join(LOG_FILE))
                });
                let mut opened = opened.map_err(|e| self.io_error(e))?;
                // A log that does not end in a newline (a torn write, a hand edit) must not
                // swallow this record: start it on a fresh line.
                if !ends_with_newline(&mut opened).map_err(|e| self.io_error(e))? {
                    line.insert(0, b'\n');
                }
                self.log.insert(opened)
            }
        };
        log.write_all(&line).map_err(|e| self.io_error(e))?;
        self.lines += 1;
        self.apply(entry);
        Ok(())
    }

    /// Rewrites the log with one line per stage when it has grown well past that.
    pub(crate) fn compact_if_large(&mut self) -> Result<(), StateError> {
        // Every built stage has a duration, so this counts each live line once.
        let live = self.durations.len() + self.failed.len();
        if self.lines <= 2 * live + 64 {
            return Ok(());
        }
        let mut stages: Vec<&String> = self.built.keys().chain(self.failed.keys()).collect();
        stages.sort();
        stages.dedup();
        let mut bytes = Vec::new();
        for stage in stages {
            if let Some(record) = self.built.get(stage) {
                serde_json::to_writer(&mut bytes, &LogEntry::Built(Box::new(record.clone())))
                    .map_err(|e| self.io_error(io::Error::other(e)))?;
                bytes.push(b'\n');
            }
            if let Some(record) = self.failed.get(stage) {
                serde_json::to_writer(&mut bytes, &LogEntry::Failed(record.clone()))
                    .map_err(|e| self.io_error(io::Error::other(e)))?;
                bytes.push(b'\n');
            }
        }
        let mut cleaned: Vec<(&String, &u64)> = self
            .durations
            .iter()
            .filter(|(stage, _)| !self.built.contains_key(*stage))
            .collect();
        cleaned.sort();
        for (stage, &duration_ms) in cleaned {
            let entry = LogEntry::Duration {
                stage: stage.clone(),
                duration_ms,
            };
            serde_json::to_writer(&mut bytes, &entry)
                .map_err(|e| self.io_error(io::Error::other(e)))?;
            bytes.push(b'\n');
        }
        self.log = None;
        crate::fsutil::write_atomic(&self.dir.join(LOG_FILE), &bytes)
            .map_err(|e| self.io_error(e))?;
        self.lines = bytes.iter().filter(|&&b| b == b'\n').count();
        Ok(())
    }

    /// The log file (which may not exist yet).
    pub(crate) fn log_path_on_disk(&self) -> PathBuf {
        self.dir.join(LOG_FILE)
    }

    pub(crate) fn stat_cache_path(&self) -> PathBuf {
        self.dir.join(STAT_CACHE_FILE)
    }

    /// Where a stage's log goes.
    pub(crate) fn log_path(&self, stage: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{stage}.log"))
    }

    /// Where a stage's outputs are written before they are published.
    pub(crate) fn temp_root(&self) -> PathBuf {
        self.dir.join("tmp")
    }

    fn io_error(&self, source: io::Error) -> StateError {
        StateError::Io {
            path: self.dir.clone(),
            source,
        }
    }
}

/// Whether `file` is empty or its last byte is a newline.
fn ends_with_newline(file: &mut File) -> io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    if file.metadata()?.len() == 0 {
        return Ok(true);
    }
    file.seek(SeekFrom::End(-1))?;
    let mut last = [0u8; 1];
    file.read_exact(&mut last)?;
    Ok(last[0] == b'\n')
}

fn log_stamp(dir: &Path) -> Option<(u64, std::time::SystemTime)> {
    let metadata = std::fs::metadata(dir.join(LOG_FILE)).ok()?;
    Some((metadata.len(), metadata.modified().ok()?))
}

pub(crate) fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::KEY_FORMAT;

    fn record(stage: &str, fingerprint: &str) -> StageRecord {
        StageRecord {
            stage: stage.into(),
            fingerprint: fingerprint.into(),
            key: RecordedKey::new(&StageKey {
                format: KEY_FORMAT,
                kind: "command".into(),
                params: serde_json::Value::Null,
                outputs: vec![],
                device: "cpu".into(),
                env: Default::default(),
                inputs: Default::default(),
                needs: Default::default(),
                tool: None,
            }),
            outputs: vec![],
            duration_ms: 5,
            finished_unix_ms: 1,
            restored_from: None,
        }
    }

    #[test]
    fn records_survive_a_reopen_and_later_entries_win() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = StateStore::open(dir.path()).unwrap();
        store.record_built(record("a", "1")).unwrap();
        store.record_built(record("a", "2")).unwrap();
        store.record_built(record("b", "3")).unwrap();
        store.record_cleaned("b").unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        assert_eq!(store.built("a").unwrap().fingerprint, "2");
        assert!(store.built("b").is_none());
    }

    #[test]
    fn where_a_stage_was_restored_from_survives_a_reopen_and_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = StateStore::open(dir.path()).unwrap();
        let mut restored = record("a", "f1");
        restored.restored_from = Some("local: /cache/v1".into());
        store.record_built(restored).unwrap();
        store.record_built(record("b", "f2")).unwrap();
        let reopened = StateStore::open(dir.path()).unwrap();
        let from = |store: &StateStore, stage| store.built(stage).unwrap().restored_from.clone();
        assert_eq!(from(&reopened, "a").as_deref(), Some("local: /cache/v1"));
        assert_eq!(from(&reopened, "b"), None);
        let text = std::fs::read_to_string(dir.path().join(LOG_FILE)).unwrap();
        assert_eq!(text.matches("restored_from").count(), 1, "{text}");
    }

    #[test]
    fn a_torn_last_line_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = StateStore::open(dir.path()).unwrap();
        store.record_built(record("a", "1")).unwrap();
        drop(store);
        let mut log = File::options()
            .append(true)
            .open(dir.path().join(LOG_FILE))
            .unwrap();
        log.write_all(b"{\"event\":\"built\",\"stage\":\"b\",\"fingerp")
            .unwrap();
        let mut store = StateStore::open(dir.path()).unwrap();
        assert!(store.built("a").is_some());
        assert!(store.built("b").is_none());
        // The next record starts on a fresh line instead of being glued to the torn one.
        store.record_built(record("c", "4")).unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        assert_eq!(store.built("c").unwrap().fingerprint, "4");
    }

    #[test]
    fn a_valid_log_without_its_final_newline_keeps_both_records() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = StateStore::open(dir.path()).unwrap();
        store.record_built(record("a", "1")).unwrap();
        drop(store);
        let path = dir.path().join(LOG_FILE);
        let text = std::fs::read(&path).unwrap();
        std::fs::write(&path, text.strip_suffix(b"\n").unwrap()).unwrap();
        let mut store = StateStore::open(dir.path()).unwrap();
        store.record_built(record("b", "2")).unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        assert_eq!(store.built("a").unwrap().fingerprint, "1");
        assert_eq!(store.built("b").unwrap().fingerprint, "2");
    }

    #[test]
    fn a_success_clears_an_earlier_failure() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = StateStore::open(dir.path()).unwrap();
        store
            .record_failed(FailureRecord {
                stage: "a".into(),
                message: "boom".into(),
                log: None,
                duration_ms: 1,
                finished_unix_ms: 1,
            })
            .unwrap();
        assert!(store.failed("a").is_some());
        store.record_built(record("a", "1")).unwrap();
        assert!(store.failed("a").is_none());
    }

    #[test]
    fn a_recorded_key_parses_back_to_the_same_key() {
        let key = record("a", "1").key.parse().unwrap();
        let again = RecordedKey::new(&key).parse().unwrap();
        assert_eq!(key, again);
        assert_eq!(key.kind, "command");
    }

    #[test]
    fn durations_survive_clean_reopen_and_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = StateStore::open(dir.path()).unwrap();
        store.record_built(record("a", "1")).unwrap();
        store.record_cleaned("a").unwrap();
        assert!(store.built("a").is_none());
        assert_eq!(store.last_duration_ms("a"), Some(5));
        for i in 0..200 {
            store.record_built(record("b", &i.to_string())).unwrap();
        }
        store.compact_if_large().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        assert_eq!(store.last_duration_ms("a"), Some(5), "after compaction");
        assert_eq!(store.built("b").unwrap().fingerprint, "199");
        let lines = std::fs::read_to_string(dir.path().join(LOG_FILE)).unwrap();
        assert_eq!(lines.lines().count(), 2, "{lines}");
    }

    #[test]
    fn compaction_keeps_the_latest_records() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = StateStore::open(dir.path()).unwrap();
        for i in 0..100 {
            store.record_built(record("a", &i.to_string())).unwrap();
        }
        store.compact_if_large().unwrap();
        store.record_built(record("b", "x")).unwrap();
        let reopened = StateStore::open(dir.path()).unwrap();
        assert_eq!(reopened.built("a").unwrap().fingerprint, "99");
        assert_eq!(reopened.built("b").unwrap().fingerprint, "x");
        assert_eq!(reopened.lines, 2);
    }
}
