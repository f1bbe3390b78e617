//! Fuzzing the pipeline parser and the graph builder in-process (issue 15, "Fuzzing in the
//! project"): thousands of generated and mutated `pipeline.toml` documents from a fixed seed,
//! each parsed (`pochi::pipeline::parse_pipeline`) and built into a graph
//! (`pochi::graph::StageGraph::build`). Every document must give a pipeline or an error,
//! never a panic or a hang, and every error must render as the CLI renders it: non-empty,
//! pointing into the file. The crashers found so far are replayed from
//! `tests/fixtures/fuzz-corpus/` (those not fixed yet wait in `pending/`, skipped unless
//! `POCHI_FUZZ_PENDING=1`). See docs/fuzzing.md for the knobs (`POCHI_FUZZ_CASES`, ...).

use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use pochi::graph::StageGraph;
use pochi::pipeline::Pipeline;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};

use crate::fuzz_support::{check, check_graph};

/// The fixed seed ("pochi"); `POCHI_FUZZ_SEED` picks another.
const SEED: u64 = 0x70_6f_63_68_69;
/// Documents per family (generated, mutated) in a plain `cargo test`.
const DEFAULT_CASES: u64 = 2000;
/// A document that takes longer than this to parse and build is a hang.
const HANG_AFTER: Duration = Duration::from_secs(10);
/// Nesting of arrays and inline tables the generator stays under (deeper documents are
/// refused by toml's recursion limit; `fuzz-corpus/deep-nesting.toml` checks that).
const MAX_DEPTH: usize = 24;

// ---------------------------------------------------------------------------------------
// The harness: a worker (a rayon pool thread with 8 MiB of stack, like a main thread)
// makes each document, writes it to `pipeline.toml` in a scratch directory, parses,
// builds, renders and counts; a panic is caught and reported with its location and
// backtrace, and the test's thread reports a hang when the worker makes no progress
// for `HANG_AFTER`.
// ---------------------------------------------------------------------------------------

/// What went wrong with one document.
#[derive(Debug, Clone)]
struct Failure {
    /// `panic`, `hang` or `property`.
    what: &'static str,
    message: String,
    /// `file:line:col` of a panic.
    location: String,
    backtrace: String,
}

impl Failure {
    /// Two failures with the same key are the same bug.
    fn key(&self) -> String {
        format!(
            "{} {} {}",
            self.what,
            self.location,
            first_line(&self.message)
        )
    }
}

fn first_line(text: &str) -> &str {
    let line = text.lines().next().unwrap_or("");
    &line[..line.floor_char_boundary(120)]
}

thread_local! {
    /// Set on the worker: its panics are recorded here instead of printed.
    static RECORDING: RefCell<Option<Failure>> = const { RefCell::new(None) };
    static IS_WORKER: Cell<bool> = const { Cell::new(false) };
}

/// Crashes this fuzzer found that are not fixed yet, as (panic message, a frame of its
/// location or backtrace). The generated and mutated families count a failure matching one
/// as known rather than failing (`POCHI_FUZZ_STRICT=1` fails on them too); each has its
/// minimized input in tests/fixtures/fuzz-corpus/pending/. After fixing one, delete its
/// entry here and move its file from pending/ up into the corpus.
const KNOWN_CRASHES: &[(&str, &str)] = &[];

fn is_known(failure: &Failure) -> bool {
    KNOWN_CRASHES.iter().any(|(message, frame)| {
        failure.message.contains(message)
            && (failure.location.contains(frame) || failure.backtrace.contains(frame))
    })
}

/// The last panic of a thread that is not the worker (a rayon thread).
static ELSEWHERE: Mutex<Option<Failure>> = Mutex::new(None);

/// Installs (once) a panic hook that records the worker's panics with a backtrace and
/// leaves every other thread's panics (the test's own assertions) to the default hook.
fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            // The worker's own panics, and those of unnamed threads (rayon's, which parse
            // stages in parallel; the panic then resumes on the worker) are recorded.
            let worker = IS_WORKER.get();
            if !worker && std::thread::current().name().is_some() {
                default(info);
                return;
            }
            let message = if let Some(s) = info.payload().downcast_ref::<&str>() {
                s.to_string()
            } else if let Some(s) = info.payload().downcast_ref::<String>() {
                s.clone()
            } else {
                "(a non-string panic payload)".to_string()
            };
            let location = info
                .location()
                .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
                .unwrap_or_default();
            let backtrace = std::backtrace::Backtrace::force_capture().to_string();
            let failure = Failure {
                what: "panic",
                message,
                location,
                backtrace,
            };
            if worker {
                RECORDING.with(|r| *r.borrow_mut() = Some(failure));
            } else {
                *ELSEWHERE.lock().unwrap_or_else(|e| e.into_inner()) = Some(failure);
            }
        }));
    });
}

/// The failure the hook recorded for a panic caught on the worker: its own, or a rayon
/// thread's with the same message.
fn recorded_panic(payload: Box<dyn std::any::Any + Send>) -> Failure {
    let message = if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a non-string panic payload)".to_string()
    };
    let elsewhere = ELSEWHERE.lock().unwrap_or_else(|e| e.into_inner()).take();
    RECORDING
        .with(|r| r.borrow_mut().take())
        .or(elsewhere.filter(|f| f.message == message))
        .unwrap_or(Failure {
            what: "panic",
            message,
            location: String::new(),
            backtrace: String::new(),
        })
}

/// One document: its bytes and a name for reports (`generated #12`, `demo.toml mutated`).
struct Document {
    name: String,
    bytes: Vec<u8>,
}

/// What one run gave: counts by outcome, and the failing documents.
#[derive(Default)]
struct Tally {
    /// How many documents parsed into a graph, were rejected by the parser, by the graph.
    counts: [u64; 3],
    /// Failures matching `KNOWN_CRASHES` (when tolerated).
    known: u64,
    /// Errors whose rendering holds a raw control character, and the first such document.
    raw_control: u64,
    raw_control_example: Option<String>,
    failures: Vec<(String, Vec<u8>, Failure)>,
    seconds: f64,
}

/// The worker's progress, watched by the test's thread for hangs.
#[derive(Default)]
struct Progress {
    done: AtomicU64,
    /// The document being checked (its name and bytes).
    current: Mutex<Option<(String, Vec<u8>)>>,
}

/// Checks documents `make(case)` for every case in `cases` on a worker: a thread of a
/// rayon pool with 8 MiB stacks (as a main thread has), so the parser's parallel stage
/// parsing runs on the worker and its sibling without waking a thread per document.
/// `tolerate_known`: failures matching `KNOWN_CRASHES` are counted, not failures.
fn run_documents(
    label: &str,
    cases: std::ops::Range<u64>,
    make: impl Fn(u64) -> Document + Send + 'static,
    tolerate_known: bool,
) {
    install_hook();
    let progress = Arc::new(Progress::default());
    let (reply, answer) = mpsc::channel::<Tally>();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .stack_size(8 << 20)
        .build()
        .expect("a thread pool");
    let watched = Arc::clone(&progress);
    let started = Instant::now();
    let label_owned = label.to_string();
    pool.spawn(move || {
        let label = label_owned;
        IS_WORKER.set(true);
        let dir = tempfile::tempdir().expect("a scratch directory");
        let file = dir.path().join("pipeline.toml");
        let mut tally = Tally::default();
        let dump = std::env::var_os("POCHI_FUZZ_DUMP").map(PathBuf::from);
        for case in cases {
            let document = make(case);
            if let Some(dump) = &dump {
                // Seeds for `cargo fuzz` (docs/fuzzing.md).
                let name = format!("{}-{case}.toml", label.replace(' ', "_"));
                std::fs::create_dir_all(dump).expect("create POCHI_FUZZ_DUMP");
                std::fs::write(dump.join(name), &document.bytes).expect("dump a document");
            }
            *watched.current.lock().unwrap() =
                Some((document.name.clone(), document.bytes.clone()));
            std::fs::write(&file, &document.bytes).expect("write pipeline.toml");
            let result = panic::catch_unwind(AssertUnwindSafe(|| check(&file, &document.bytes)));
            let failure = match result {
                Ok(Ok(checked)) => {
                    tally.counts[checked.outcome as usize] += 1;
                    if checked.raw_control {
                        tally.raw_control += 1;
                        tally
                            .raw_control_example
                            .get_or_insert(document.name.clone());
                    }
                    None
                }
                Ok(Err(message)) => Some(Failure {
                    what: "property",
                    message,
                    location: String::new(),
                    backtrace: String::new(),
                }),
                Err(payload) => Some(recorded_panic(payload)),
            };
            match failure {
                Some(failure) if tolerate_known && is_known(&failure) => tally.known += 1,
                Some(failure) => tally
                    .failures
                    .push((document.name, document.bytes, failure)),
                None => {}
            }
            watched.done.fetch_add(1, Ordering::Relaxed);
        }
        tally.seconds = started.elapsed().as_secs_f64();
        let _ = reply.send(tally);
    });
    let (mut last_done, mut since) = (0, Instant::now());
    let tally = loop {
        match answer.recv_timeout(Duration::from_millis(100)) {
            Ok(tally) => break tally,
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!("the fuzz worker died"),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let done = progress.done.load(Ordering::Relaxed);
                if done != last_done {
                    (last_done, since) = (done, Instant::now());
                } else if since.elapsed() > HANG_AFTER {
                    // The worker is stuck (it is left behind): report the document.
                    let (name, bytes) = progress.current.lock().unwrap().take().unwrap_or_default();
                    let failure = Failure {
                        what: "hang",
                        message: format!("no answer after {HANG_AFTER:?}"),
                        location: String::new(),
                        backtrace: String::new(),
                    };
                    let tally = Tally {
                        failures: vec![(name, bytes, failure)],
                        seconds: started.elapsed().as_secs_f64(),
                        ..Tally::default()
                    };
                    tally.finish(&format!(
                        "{label} (stopped at a hang after {done} documents)"
                    ));
                }
            }
        }
    };
    tally.finish(label);
}

impl Tally {
    /// Prints the figures, saves every failing document and fails the test if any.
    fn finish(&self, label: &str) {
        let total: u64 = self.counts.iter().sum::<u64>() + self.known + self.failures.len() as u64;
        let seconds = self.seconds;
        eprintln!(
            "fuzz {label}: {total} documents in {seconds:.2}s ({:.0}/s): {} graphs, {} parse errors, {} graph errors, {} known crashes (pending/), {} failures; {} errors print raw control characters (first: {})",
            total as f64 / seconds.max(1e-9),
            self.counts[0],
            self.counts[1],
            self.counts[2],
            self.known,
            self.failures.len(),
            self.raw_control,
            self.raw_control_example.as_deref().unwrap_or("none")
        );
        if self.failures.is_empty() {
            return;
        }
        let save = std::env::var_os("POCHI_FUZZ_SAVE")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures"));
        std::fs::create_dir_all(&save).expect("create the failure directory");
        let mut report = String::new();
        let mut seen = std::collections::BTreeSet::new();
        for (index, (name, bytes, failure)) in self.failures.iter().enumerate() {
            let stem: String = label
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            let file = save.join(format!("{stem}-{index}.toml"));
            std::fs::write(&file, bytes).expect("save a failing document");
            let first = seen.insert(failure.key());
            let _ = writeln!(
                report,
                "{} in {name} ({} bytes), saved as {}: {} at {}",
                failure.what,
                bytes.len(),
                file.display(),
                first_line(&failure.message),
                failure.location
            );
            if first && !failure.backtrace.is_empty() {
                let frames: String = failure
                    .backtrace
                    .lines()
                    .filter(|l| l.contains("pochi") || l.contains("at ./"))
                    .take(16)
                    .map(|l| format!("    {l}\n"))
                    .collect();
                report.push_str(&frames);
            }
        }
        panic!(
            "{} of {total} documents failed ({} distinct):\n{report}",
            self.failures.len(),
            seen.len()
        );
    }
}

// ---------------------------------------------------------------------------------------
// Randomness and the document generator.
// ---------------------------------------------------------------------------------------

struct Gen(ChaCha8Rng);

impl Gen {
    /// Case `case` of family `family`: independent of how many cases run before it.
    fn new(seed: u64, family: u64, case: u64) -> Gen {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ family.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        rng.set_stream(case);
        Gen(rng)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.0.next_u64() % n.max(1) as u64) as usize
    }

    /// True with probability `percent`/100.
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T: ?Sized>(&mut self, items: &[&'a T]) -> &'a T {
        items[self.below(items.len())]
    }
}

/// Stage names: valid, invalid, long, unicode.
const NAMES: &[&str] = &[
    "a",
    "b",
    "c",
    "onnx",
    "calib",
    "engine_fp16",
    "report",
    "x-1",
    "s0",
    "normalize",
];
const ODD_NAMES: &[&str] = &[
    "Bad",
    "a.b",
    "",
    " ",
    "-",
    "_",
    "é",
    "模型",
    "a b",
    "a\tb",
    "a\u{0}b",
    "a\u{1b}[2J",
    "pipeline",
    "stages",
    "..",
    "\u{202e}x",
];
const KINDS: &[&str] = &[
    "command", "dataset", "export", "quantize", "engine", "report",
];
const ODD_KINDS: &[&str] = &[
    "comand",
    "Command",
    "",
    "worker",
    "command ",
    "dataset\u{0}",
];
const OUTPUT_KEYS: &[&str] = &[
    "out",
    "onnx",
    "reference",
    "manifest",
    "summary",
    "report",
    "engine",
    "data",
    "predictions",
    "onnx_data",
    "latency_chart",
    "",
    "é",
];
/// Paths: plain, escaping the project, absolute, into pochi's state, long, unicode,
/// control characters, placeholders.
const PATHS: &[&str] = &[
    "build/out.txt",
    "build/{matrix.p}/{matrix.n}.txt",
    "build/a/b.onnx",
    "data",
    "demo_data/words.txt",
    "out",
    "out/keep.txt",
    ".",
    "./",
    "",
    " ",
    "..",
    "../outside",
    "a/../../b",
    "build/../..",
    "/tmp/abs",
    "/",
    "//",
    ".pochi",
    ".pochi/v1/pipeline/lock",
    ".pochi/v1/pipeline/log.jsonl",
    ".pochi/v1",
    "pipeline.toml",
    "./pipeline.toml",
    "build/{build_dir}/x",
    "{build_dir}",
    "données/模型.onnx",
    "emoji/😀.txt",
    "e\u{301}.txt",
    "a\u{0}b",
    "\u{0}",
    "nul\u{0}",
    "esc\u{1b}[2J",
    "tab\there",
    "new\nline",
    "cr\rx",
    "del\u{7f}",
    "\u{202e}txt.exe",
    "\u{feff}bom",
    "C:\\windows\\path",
    "back\\slash",
    "~/.cache",
    "$HOME/x",
    "a//b///c",
    "a/./b/.",
];
const STRINGS: &[&str] = &[
    "fp16",
    "fp32",
    "bf16",
    "int8",
    "fp8",
    "auto",
    "entropy",
    "max",
    "minmax",
    "percentile",
    "classification",
    "segmentation",
    "none",
    "fail",
    "warn",
    "legacy",
    "dynamo",
    "normal",
    "uniform",
    "rgb",
    "bgr",
    "batch",
    "height",
    "width",
    "depth",
    "length",
    "true",
    "1",
    "torchvision.models:resnet18",
    "monai.networks.nets:SwinUNETR",
    ":",
    "a:",
    ":b",
    "x",
    "cpu",
    "cuda",
    "cuda:0",
    "cuda:1",
    "cuda:-1",
    "cuda:",
    "cuda:99999999999999999999",
    "CUDA",
    "gpu",
    "6GiB",
    "512MiB",
    "1.5G",
    "0",
    "1000",
    "0s",
    "1s",
    "10ms",
    "1.5m",
    "-1s",
    "1e400s",
    "99999999999999999999h",
    "18446744073709551616",
    "1e30TiB",
    "99999999999999999999TiB",
    "-1GiB",
    ".",
    "..",
    "1..2",
    "GiB",
    "1 KiB",
    "nan",
    "inf",
];
const SIZES: &[&str] = &[
    "6GiB",
    "512MiB",
    "1.5G",
    "1000",
    "0",
    "1 KiB",
    "2GiB",
    "1e3",
    "18446744073709551616",
    "18446744073709551615",
    "99999999999999999999TiB",
    "1e30TiB",
    "-1GiB",
    ".",
    "..",
    "1..2",
    "GiB",
    "nan",
    "inf",
    "16777216TiB",
    "0.0000001",
    "",
    " ",
    "1.",
    ".5K",
    "١٢GiB",
];
const DURATIONS: &[&str] = &[
    "0s",
    "1s",
    "10ms",
    "1.5m",
    "2h",
    "1us",
    "1ns",
    "-1s",
    "1e400s",
    "1e300s",
    "99999999999999999999h",
    "18446744073709551616s",
    "s",
    "",
    "1",
    "1 s",
    "nan s",
    "inf s",
    "0.0000000001ns",
    "1d",
    "1.5.5s",
];
const INTEGERS: &[i64] = &[
    0,
    1,
    -1,
    2,
    3,
    4,
    5,
    16,
    17,
    32,
    96,
    224,
    255,
    256,
    65535,
    65536,
    i32::MAX as i64,
    u32::MAX as i64,
    u32::MAX as i64 + 1,
    1 << 40,
    1 << 53,
    i64::MAX,
    i64::MIN,
    i64::MIN + 1,
];
const FLOATS: &[&str] = &[
    "0.5", "-0.0", "1e308", "1e-320", "inf", "-inf", "nan", "+nan", "1e-3", "3.5", "-1.5",
];
/// Pieces of `run` arguments.
const RUN_PIECES: &[&str] = &[
    "{matrix.p}",
    "{{matrix.p}}",
    "sh",
    "-c",
    "true",
    "{python}",
    "{build_dir}",
    "{inputs.",
    "{outputs.",
    "}",
    "{",
    "{{",
    "}}",
    "{inputs.}",
    "{unknown}",
    "{inputs.é}",
    "{é",
    "é}",
    "${HOME}",
    "${{HOME}}",
    "x",
    "{python",
    "{.}",
    "{inputs..a}",
    "{outputs.a.b}",
    "echo",
    "> ",
    "模型",
    "\u{0}",
];
const TRANSFORMS: &[&str] = &[
    "resize",
    "center_crop",
    "to_float",
    "scale",
    "normalize",
    "channel_order",
    "scale_intensity",
    "crop_or_pad",
    "add_channel",
    "rotate",
];

/// The keys of each kind, and the value each one usually takes.
#[derive(Clone, Copy)]
enum Slot {
    Path,
    Reference,
    RefOrPath,
    Refs,
    Str,
    Strings,
    Int,
    Ints,
    Bool,
    Size,
    Duration,
    Run,
    NamedPaths,
    NamedInputs,
    Table,
    Synthetic,
    Transforms,
    Batch,
    Verify,
    Calibration,
    Tolerances,
    BoolOrStr,
    Matrix,
}

const KIND_KEYS: &[(&str, &[(&str, Slot)])] = &[
    (
        "command",
        &[
            ("run", Slot::Run),
            ("inputs", Slot::NamedInputs),
            ("outputs", Slot::NamedPaths),
        ],
    ),
    (
        "dataset",
        &[
            ("source", Slot::RefOrPath),
            ("synthetic", Slot::Synthetic),
            ("samples", Slot::Int),
            ("seed", Slot::Int),
            ("shuffle", Slot::Bool),
            ("transform", Slot::Transforms),
            ("output", Slot::Path),
        ],
    ),
    (
        "export",
        &[
            ("checkpoint", Slot::RefOrPath),
            ("model", Slot::Str),
            ("model_args", Slot::Table),
            ("input_shape", Slot::Ints),
            ("dynamic", Slot::Strings),
            ("opset", Slot::Int),
            ("input_names", Slot::Strings),
            ("output_names", Slot::Strings),
            ("exporter", Slot::Str),
            ("verify", Slot::Verify),
            ("seed", Slot::Int),
            ("external_data", Slot::BoolOrStr),
            ("output", Slot::Path),
        ],
    ),
    (
        "quantize",
        &[
            ("onnx", Slot::Reference),
            ("precision", Slot::Str),
            ("calibration", Slot::Calibration),
            ("keep_fp32", Slot::Strings),
            ("calibration_cache", Slot::Path),
            ("high_precision", Slot::Str),
            ("output", Slot::Path),
        ],
    ),
    (
        "engine",
        &[
            ("onnx", Slot::Reference),
            ("input_size", Slot::Ints),
            ("batch", Slot::Batch),
            ("workspace", Slot::Size),
            ("precision", Slot::Str),
            ("optimization_level", Slot::Int),
            ("output", Slot::Path),
        ],
    ),
    (
        "report",
        &[
            ("models", Slot::Refs),
            ("data", Slot::Reference),
            ("reference", Slot::Reference),
            ("labels", Slot::RefOrPath),
            ("task", Slot::Str),
            ("warmup", Slot::Int),
            ("iterations", Slot::Int),
            ("min_duration", Slot::Duration),
            ("threads", Slot::Int),
            ("batch", Slot::Int),
            ("tolerances", Slot::Tolerances),
            ("on_parity_failure", Slot::Str),
            ("output", Slot::Path),
        ],
    ),
];

const COMMON_KEYS: &[(&str, Slot)] = &[
    ("needs", Slot::Strings),
    ("device", Slot::Str),
    ("matrix", Slot::Matrix),
];

/// Matrix keys and values, and the placeholders that name them (`{matrix.p}`).
const MATRIX_KEYS: &[&str] = &["p", "n", "precision", "batch", "on", "x", "Bad-key", ""];
const MATRIX_VALUES: &[&str] = &[
    "\"fp16\"", "\"int8\"", "\"FP16\"", "\"a.b\"", "\"\"", "\"{x}\"", "1", "8", "-3", "0.5",
    "1e999", "nan", "true", "false", "[1]", "{}",
];

/// Writes TOML text for random documents. `stages` are the names the document declares,
/// so references and `needs` mostly resolve (and make edges, cycles, clashes).
/// A `clean` writer (a third of the documents) writes only well-formed TOML, valid names,
/// resolvable references and plausible values, so that documents reach the graph builder
/// (edges, cycles, clashing and overlapping outputs) instead of stopping at a typo.
struct Writer<'g> {
    g: &'g mut Gen,
    clean: bool,
    stages: Vec<String>,
    out: String,
}

/// Paths a clean document uses: inside the project, some nested in others.
const CLEAN_PATHS: &[&str] = &[
    "build/out.txt",
    "build/a",
    "build/a/b.onnx",
    "build/x",
    "build",
    "out",
    "out/keep.txt",
    "data",
    "data/val",
    "demo_data/words.txt",
    "scripts/s.py",
];

impl Writer<'_> {
    /// Something odd, `percent` of the time, never in a clean document.
    fn odd(&mut self, percent: usize) -> bool {
        !self.clean && self.g.chance(percent)
    }

    /// A string literal: mostly a basic string with escapes, sometimes literal or
    /// multi-line, rarely raw bytes TOML forbids.
    fn string(&mut self, value: &str) -> String {
        if self.clean {
            return self.basic(value);
        }
        match self.g.below(100) {
            0..=2 => format!("'{value}'"),
            3 => format!("\"\"\"{value}\"\"\""),
            4 => format!("\"{value}\""),
            _ => self.basic(value),
        }
    }

    /// A basic string with every character TOML needs escaped, escaped.
    fn basic(&self, value: &str) -> String {
        let mut quoted = String::from("\"");
        for c in value.chars() {
            match c {
                '"' => quoted.push_str("\\\""),
                '\\' => quoted.push_str("\\\\"),
                c if c.is_control() => {
                    let _ = write!(quoted, "\\u{:04X}", c as u32);
                }
                c => quoted.push(c),
            }
        }
        quoted.push('"');
        quoted
    }

    fn name(&mut self) -> String {
        if self.clean {
            return self.g.pick(NAMES).to_string();
        }
        match self.g.below(30) {
            0 => "n".repeat(*self.g.pick(&[&256usize, &300, &4096, &65536])),
            1 => self.g.pick(ODD_NAMES).to_string(),
            _ => self.g.pick(NAMES).to_string(),
        }
    }

    /// A key as written in TOML: bare when it can be, quoted otherwise.
    fn key(&mut self, key: &str) -> String {
        let bare = !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if bare && !self.odd(5) {
            key.to_string()
        } else if self.odd(3) {
            self.string(key)
        } else {
            self.basic(key)
        }
    }

    fn path(&mut self) -> String {
        if self.clean {
            let path = if self.g.chance(20) {
                format!("build/{}", self.some_stage())
            } else {
                self.g.pick(CLEAN_PATHS).to_string()
            };
            return self.basic(&path);
        }
        let path = match self.g.below(12) {
            0 => format!(
                "build/{}",
                "x".repeat(*self.g.pick(&[&255usize, &256, &5000]))
            ),
            1 => "d/".repeat(self.g.below(3000)) + "f",
            2 => {
                let stage = self.some_stage();
                format!("build/pipeline/{stage}/out")
            }
            _ => self.g.pick(PATHS).to_string(),
        };
        self.string(&path)
    }

    fn some_stage(&mut self) -> String {
        if self.stages.is_empty() || self.odd(8) {
            self.name()
        } else {
            self.stages[self.g.below(self.stages.len())].clone()
        }
    }

    fn reference(&mut self) -> String {
        let stage = self.some_stage();
        if self.clean {
            let text = if self.g.chance(60) {
                format!("@{stage}")
            } else {
                format!("@{stage}.{}", self.g.pick(&OUTPUT_KEYS[..10]))
            };
            return self.basic(&text);
        }
        let text = match self.g.below(40) {
            0..=23 => format!("@{stage}"),
            24..=36 => format!("@{stage}.{}", self.g.pick(OUTPUT_KEYS)),
            37 => self.g.pick(&["@", "@.", "@.out", "@@a", "@ a"]).to_string(),
            38 => format!("@{stage}.{}.x", self.g.pick(OUTPUT_KEYS)),
            _ => format!("@{stage}."),
        };
        self.string(&text)
    }

    fn integer(&mut self) -> String {
        if self.clean {
            return format!("{}", 1 + self.g.below(300));
        }
        match self.g.below(20) {
            0 => self.g.pick(FLOATS).to_string(),
            1 => format!("0x{:x}", self.g.below(1 << 20)),
            2 => format!("{}", self.g.below(100_000)),
            3..=8 => INTEGERS[self.g.below(INTEGERS.len())].to_string(),
            _ => format!("{}", 1 + self.g.below(300)),
        }
    }

    /// Any TOML value at all, `depth` levels deep at most.
    fn any(&mut self, depth: usize) -> String {
        let choices = if depth >= MAX_DEPTH { 8 } else { 11 };
        match self.g.below(choices) {
            0 => self.integer(),
            1 => self.g.pick(FLOATS).to_string(),
            2 => self.g.pick(&["true", "false"]).to_string(),
            3 => self
                .g
                .pick(&[
                    "1979-05-27T07:32:00Z",
                    "1979-05-27",
                    "07:32:00",
                    "1979-05-27T00:32:00.999999-07:00",
                ])
                .to_string(),
            4 => self.path(),
            5 => self.reference(),
            6 | 7 => {
                let s = self.g.pick(STRINGS);
                self.string(s)
            }
            8 => {
                let n = self.g.below(4);
                let items: Vec<String> = (0..n).map(|_| self.any(depth + 1)).collect();
                format!("[{}]", items.join(", "))
            }
            9 => self.table(depth + 1),
            _ => {
                // A deep but bounded nest of arrays.
                let levels = self.g.below(MAX_DEPTH.saturating_sub(depth).max(1));
                format!("{}1{}", "[".repeat(levels), "]".repeat(levels))
            }
        }
    }

    fn table(&mut self, depth: usize) -> String {
        let keys = self.distinct(|w| w.name());
        let pairs: Vec<String> = keys
            .iter()
            .map(|key| {
                let key = self.key(key);
                format!("{key} = {}", self.any(depth + 1))
            })
            .collect();
        format!("{{ {} }}", pairs.join(", "))
    }

    /// Up to 3 keys, distinct but for a rare repeat (a TOML "duplicate key").
    fn distinct(&mut self, mut key: impl FnMut(&mut Self) -> String) -> Vec<String> {
        let mut keys: Vec<String> = Vec::new();
        for _ in 0..self.g.below(4) {
            let candidate = key(self);
            if !keys.contains(&candidate) || self.g.chance(3) {
                keys.push(candidate);
            }
        }
        keys
    }

    /// `{ p = ["fp16", "int8"], n = [1, 8] }`: a clean one has identifier keys and
    /// distinct values of one type, an odd one anything from `MATRIX_VALUES`.
    fn matrix(&mut self) -> String {
        let keys = self.distinct(|w| {
            let pool = if w.clean {
                &MATRIX_KEYS[..6]
            } else {
                MATRIX_KEYS
            };
            w.g.pick(pool).to_string()
        });
        let pairs: Vec<String> = keys
            .iter()
            .map(|key| {
                let values = if self.clean {
                    let typed: &[&str] = self.g.pick(&[
                        &["\"fp16\"", "\"int8\"", "\"fp8\""][..],
                        &["1", "8", "16"],
                        &["true", "false"],
                    ]);
                    format!("[{}]", typed[..1 + self.g.below(typed.len())].join(", "))
                } else {
                    self.list(|w| w.g.pick(MATRIX_VALUES).to_string())
                };
                format!("{} = {values}", self.key(key))
            })
            .collect();
        format!("{{ {} }}", pairs.join(", "))
    }

    fn list(&mut self, mut item: impl FnMut(&mut Self) -> String) -> String {
        let n = match self.g.below(if self.clean { 1 } else { 40 }) {
            _ if self.clean => 1 + self.g.below(4),
            0..=3 => 0,
            4 => 20 + self.g.below(200),
            _ => 1 + self.g.below(4),
        };
        let items: Vec<String> = (0..n).map(|_| item(self)).collect();
        format!("[{}]", items.join(", "))
    }

    /// A value for `slot`: usually the right shape, sometimes any value at all.
    fn value(&mut self, slot: Slot) -> String {
        if self.odd(4) {
            return self.any(1);
        }
        match slot {
            Slot::Path => self.path(),
            Slot::Reference => self.reference(),
            Slot::RefOrPath => {
                if self.g.chance(60) {
                    self.reference()
                } else {
                    self.path()
                }
            }
            Slot::Refs => self.list(|w| w.reference()),
            Slot::Str => {
                let s = self.g.pick(STRINGS);
                self.string(s)
            }
            Slot::Strings => self.list(|w| {
                if w.g.chance(50) {
                    let s = w.some_stage();
                    w.string(&s)
                } else {
                    let s = w.g.pick(STRINGS);
                    w.string(s)
                }
            }),
            Slot::Int => self.integer(),
            Slot::Ints => self.list(|w| w.integer()),
            Slot::Bool => self.g.pick(&["true", "false"]).to_string(),
            Slot::Size => {
                let s = if self.clean || self.g.chance(50) {
                    self.g
                        .pick(&["6GiB", "512MiB", "1.5G", "1000", "1 KiB", "2GiB"])
                } else {
                    self.g.pick(SIZES)
                };
                if self.g.chance(20) {
                    self.integer()
                } else {
                    self.string(s)
                }
            }
            Slot::Duration if self.clean => {
                let s = self.g.pick(&["0s", "1s", "10ms", "1.5m"]);
                self.basic(s)
            }
            Slot::Run if self.clean => {
                let run =
                    self.g
                        .pick(&["[\"true\"]", "[\"sh\", \"-c\", \"true\"]", "[\"{python}\"]"]);
                run.to_string()
            }
            Slot::Duration => {
                let s = self.g.pick(DURATIONS);
                self.string(s)
            }
            Slot::Run => self.list(|w| {
                let n = 1 + w.g.below(3);
                let arg: String = (0..n).map(|_| w.g.pick(RUN_PIECES)).collect();
                let arg = match w.g.below(4) {
                    0 => format!("{{inputs.{}}}", w.g.pick(OUTPUT_KEYS)),
                    1 => format!("{{outputs.{}}}", w.g.pick(OUTPUT_KEYS)),
                    _ => arg,
                };
                w.string(&arg)
            }),
            Slot::NamedPaths | Slot::NamedInputs => {
                let keys = self.distinct(|w| w.g.pick(OUTPUT_KEYS).to_string());
                let pairs: Vec<String> = keys
                    .iter()
                    .map(|key| {
                        let key = self.key(key);
                        let value = match slot {
                            Slot::NamedInputs if self.g.chance(50) => self.reference(),
                            _ => self.path(),
                        };
                        format!("{key} = {value}")
                    })
                    .collect();
                format!("{{ {} }}", pairs.join(", "))
            }
            Slot::Table => self.table(1),
            Slot::Matrix => self.matrix(),
            Slot::Synthetic => {
                let shape = self.list(|w| w.integer());
                let count = self.integer();
                let mut fields = vec![format!("shape = {shape}"), format!("count = {count}")];
                if self.g.chance(50) {
                    fields.push(format!("seed = {}", self.integer()));
                }
                if self.g.chance(30) {
                    let d = self.g.pick(&["normal", "uniform", "poisson"]);
                    fields.push(format!("distribution = {}", self.string(d)));
                }
                if self.g.chance(10) {
                    fields.push(format!("extra = {}", self.any(2)));
                }
                format!("{{ {} }}", fields.join(", "))
            }
            Slot::Transforms => self.list(|w| {
                let name = w.g.pick(TRANSFORMS);
                let value = match w.g.below(5) {
                    0 => w.list(|w| w.integer()),
                    1 => format!(
                        "{{ mean = {}, std = {} }}",
                        w.list(|w| w.integer()),
                        w.list(|w| w.g.pick(FLOATS).to_string())
                    ),
                    2 => format!("{{ min = {}, max = {} }}", w.integer(), w.integer()),
                    3 => w.any(2),
                    _ => w.integer(),
                };
                format!("{{ {name} = {value} }}")
            }),
            Slot::Batch => {
                if self.g.chance(50) {
                    self.integer()
                } else {
                    format!(
                        "{{ min = {}, opt = {}, max = {} }}",
                        self.integer(),
                        self.integer(),
                        self.integer()
                    )
                }
            }
            Slot::Verify => match self.g.below(3) {
                0 => self.g.pick(&["true", "false"]).to_string(),
                _ => format!(
                    "{{ rtol = {}, atol = {} }}",
                    self.g.pick(FLOATS),
                    self.g.pick(FLOATS)
                ),
            },
            Slot::Calibration => {
                let data = self.reference();
                let mut fields = vec![format!("data = {data}")];
                for key in ["samples", "batch_size"] {
                    if self.g.chance(60) {
                        fields.push(format!("{key} = {}", self.integer()));
                    }
                }
                if self.g.chance(50) {
                    let m = self.g.pick(STRINGS);
                    fields.push(format!("method = {}", self.string(m)));
                }
                format!("{{ {} }}", fields.join(", "))
            }
            Slot::Tolerances => {
                let precision = self.g.pick(&["fp16", "int8", "fp32", "bf16", "fp8", "x"]);
                format!(
                    "{{ {precision} = {{ atol = {}, rtol = {}, cosine = {} }} }}",
                    self.g.pick(FLOATS),
                    self.g.pick(FLOATS),
                    self.g.pick(FLOATS)
                )
            }
            Slot::BoolOrStr => {
                if self.g.chance(50) {
                    self.g.pick(&["true", "false"]).to_string()
                } else {
                    let s = self.g.pick(&["auto", "always", "never", "x"]);
                    self.string(s)
                }
            }
        }
    }

    /// In a clean document, a valid value for the keys that take one of a few words.
    fn clean_value(&mut self, key: &str) -> Option<String> {
        if !self.clean {
            return None;
        }
        let words: &[&str] = match key {
            "precision" => &["fp16", "int8", "bf16", "fp8"],
            "high_precision" => &["fp32", "fp16"],
            "device" => &["cpu", "cuda", "cuda:0"],
            "task" => &["classification", "segmentation", "none"],
            "exporter" => &["legacy", "dynamo"],
            "on_parity_failure" => &["fail", "warn"],
            "model" => &[
                "torchvision.models:resnet18",
                "monai.networks.nets:SwinUNETR",
            ],
            "method" => &["entropy", "max"],
            "dynamic" => return Some("[\"batch\"]".into()),
            "needs" => {
                let stages = self.list(|w| {
                    let stage = w.some_stage();
                    w.basic(&stage)
                });
                return Some(stages);
            }
            _ => return None,
        };
        let word = self.g.pick(words);
        Some(self.basic(word))
    }

    /// The keys of one stage, as `key = value` lines.
    fn stage_lines(&mut self, kind: &str) -> Vec<String> {
        let mut lines = Vec::new();
        if !self.odd(3) {
            lines.push(format!("kind = {}", self.string(kind)));
        }
        let keys = KIND_KEYS
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, keys)| *keys)
            .unwrap_or(KIND_KEYS[self.g.below(KIND_KEYS.len())].1);
        for (index, &(key, slot)) in keys.iter().enumerate() {
            // The first keys (the required ones) come nearly always, the rest sometimes.
            if self.g.chance(if index < 2 { 95 } else { 50 }) {
                if kind == "dataset" && self.clean && key == "synthetic" && index > 0 {
                    continue; // a clean dataset has `source` or `synthetic`, not both
                }
                let value = self.clean_value(key).unwrap_or_else(|| self.value(slot));
                lines.push(format!("{key} = {value}"));
            }
        }
        for &(key, slot) in COMMON_KEYS {
            if self.g.chance(if key == "matrix" { 10 } else { 25 }) {
                let value = self.clean_value(key).unwrap_or_else(|| self.value(slot));
                lines.push(format!("{key} = {value}"));
            }
        }
        if self.g.chance(15) {
            let cpu = self.integer();
            let memory = self.value(Slot::Size);
            lines.push(format!("resources = {{ cpu = {cpu}, memory = {memory} }}"));
        }
        if self.odd(15) {
            let key = match self.g.below(6) {
                0 => "A=B".to_string(),
                1 => "".to_string(),
                2 => "NUL\u{0}".to_string(),
                _ => "LC_ALL".to_string(),
            };
            let key = self.key(&key);
            let value = if self.g.chance(70) {
                let s = self.g.pick(PATHS);
                self.string(s)
            } else {
                self.any(1)
            };
            lines.push(format!("env = {{ {key} = {value} }}"));
        }
        if self.odd(4) {
            let key = self
                .g
                .pick(&["rn", "input", "outputs", "kind", "Kind", "é", "needs"]);
            let key = self.key(key);
            lines.push(format!("{key} = {}", self.any(1)));
        }
        if self.odd(10) {
            let a = self.g.below(lines.len().max(1));
            let b = self.g.below(lines.len().max(1));
            if a < lines.len() && b < lines.len() {
                lines.swap(a, b);
            }
        }
        lines
    }

    /// One whole document.
    fn document(mut self) -> String {
        let n = match self.g.below(10) {
            0 => 0,
            1 => 10 + self.g.below(40),
            _ => 1 + self.g.below(6),
        };
        // Mostly distinct names (a repeated one is a TOML "duplicate key").
        let mut names: Vec<String> = Vec::new();
        for _ in 0..n {
            let name = self.name();
            if !names.contains(&name) || self.odd(3) {
                names.push(name);
            }
        }
        self.stages = names;
        if self.g.chance(60) {
            self.out.push_str("[pipeline]\n");
            if self.g.chance(80) {
                let name = if !self.odd(30) {
                    "pipeline".to_string()
                } else {
                    self.name()
                };
                let name = self.string(&name);
                let _ = writeln!(self.out, "name = {name}");
            }
            if self.g.chance(30) {
                let path = self.path();
                let _ = writeln!(self.out, "build_dir = {path}");
            }
            if self.odd(5) {
                let value = self.any(1);
                let _ = writeln!(self.out, "nmae = {value}");
            }
        }
        if self.g.chance(10) {
            let path = self.path();
            let _ = writeln!(self.out, "[toolchain]\npython = {path}");
        }
        if self.g.chance(25) {
            self.out.push_str("[resources]\n");
            for (key, slot) in [
                ("cpu", Slot::Int),
                ("memory", Slot::Size),
                ("gpus", Slot::Ints),
            ] {
                if self.g.chance(60) {
                    let value = self.value(slot);
                    let _ = writeln!(self.out, "{key} = {value}");
                }
            }
        }
        let style = if self.clean { 3 } else { self.g.below(20) };
        let stages = self.stages.clone();
        for name in &stages {
            let kind = if self.odd(5) {
                self.g.pick(ODD_KINDS)
            } else if self.clean && self.g.chance(50) {
                "command"
            } else {
                self.g.pick(KINDS)
            };
            let lines = self.stage_lines(kind);
            let key = self.key(name);
            match style {
                // stages = { a = { ... } } is not possible line by line; dotted keys are.
                0 => {
                    for line in lines {
                        let _ = writeln!(self.out, "stages.{key}.{line}");
                    }
                }
                1 => {
                    let quoted = self.string(name);
                    let _ = writeln!(self.out, "[[stages]]\nname = {quoted}");
                    for line in lines {
                        let _ = writeln!(self.out, "{line}");
                    }
                }
                2 => {
                    if !self.out.contains("[stages]\n") {
                        self.out.push_str("[stages]\n");
                    }
                    let _ = writeln!(self.out, "{key} = {{ {} }}", lines.join(", "));
                }
                _ => {
                    let _ = writeln!(self.out, "\n[stages.{key}]");
                    for line in lines {
                        let _ = writeln!(self.out, "{line}");
                    }
                }
            }
        }
        if self.odd(5) {
            let junk = self.g.pick(&[
                "stages = 1\n",
                "[stages]\n",
                "pipeline = \"x\"\n",
                "[extra]\nkey = 1\n",
                "[stages.a.resources]\ncpu = 0\n",
                "\u{feff}",
                "[stages.\"\"]\nkind = \"command\"\n",
            ]);
            self.out.push_str(junk);
        }
        self.out
    }
}

/// Generated document number `case`.
fn generated(seed: u64, case: u64) -> Document {
    let mut g = Gen::new(seed, 1, case);
    let clean = g.chance(33);
    let text = Writer {
        g: &mut g,
        clean,
        stages: Vec::new(),
        out: String::new(),
    }
    .document();
    Document {
        name: format!("generated #{case} (seed {seed:#x})"),
        bytes: text.into_bytes(),
    }
}

// ---------------------------------------------------------------------------------------
// Byte-level mutations of the example pipelines.
// ---------------------------------------------------------------------------------------

/// Tokens a mutation inserts: TOML syntax, references, odd bytes.
const TOKENS: &[&[u8]] = &[
    b"matrix = { p = [\"a\", \"b\"], n = [1, 8] }\n",
    b"{matrix.p}",
    b"@engine-fp16",
    b"\"",
    b"'",
    b"[",
    b"]",
    b"{",
    b"}",
    b"=",
    b",",
    b".",
    b"\n",
    b"#",
    b"@",
    b"\\",
    b"\\u",
    b"\\U0010FFFF",
    b"\\u0000",
    b"\0",
    b"\x1b",
    b"\r",
    b"\t",
    b"\xff",
    b"\xc3",
    b"\xe6\xa8\xa1",
    b"[[",
    b"]]",
    b"\"\"\"",
    b"'''",
    b"@onnx",
    b"@calib.x",
    b"..",
    b"/",
    b".pochi/",
    b"-1",
    b"99999999999999999999",
    b"1e999",
    b"nan",
    b"inf",
    b"true",
    b"kind = \"command\"\n",
    b"needs = [\"onnx\"]\n",
    b"[stages.onnx]\n",
    b"[pipeline]\n",
    b"{build_dir}",
    b"{inputs.",
    b"[stages.x]\nkind = \"report\"\nmodels = [\"@x\"]\n",
];

/// The example pipelines and the regression corpus: the mutation seeds.
fn seeds() -> Vec<(String, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut seeds = Vec::new();
    for dir in ["pipelines", "tests/fixtures/fuzz-corpus"] {
        for path in toml_files(&root.join(dir)) {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            seeds.push((name, std::fs::read(&path).expect("read a seed")));
        }
    }
    assert!(
        seeds.iter().any(|(name, _)| name == "resnet18.toml"),
        "the example pipelines are found"
    );
    seeds
}

fn toml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "toml"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Mutated document number `case`: 1 to 8 edits of one seed.
fn mutated(seed: u64, case: u64, seeds: &[(String, Vec<u8>)]) -> Document {
    let mut g = Gen::new(seed, 2, case);
    let (name, original) = &seeds[g.below(seeds.len())];
    let mut bytes = original.clone();
    let edits = 1 + g.below(8);
    for _ in 0..edits {
        let len = bytes.len();
        let at = g.below(len + 1);
        match g.below(9) {
            0 if len > 0 => bytes[at.min(len - 1)] ^= 1u8 << g.below(8),
            1 => {
                let token = TOKENS[g.below(TOKENS.len())];
                bytes.splice(at..at, token.iter().copied());
            }
            2 if len > 0 => {
                let end = (at + 1 + g.below(64)).min(len);
                bytes.drain(at.min(end)..end);
            }
            3 => {
                // Duplicate a line elsewhere (duplicate keys, tables, outputs).
                let lines: Vec<&[u8]> = original.split(|&b| b == b'\n').collect();
                let line = lines[g.below(lines.len())].to_vec();
                bytes.splice(at..at, line.into_iter().chain([b'\n']));
            }
            4 => bytes.truncate(at),
            5 => {
                // Replace the inside of a string with an odd path.
                let quotes: Vec<usize> = (0..len).filter(|&i| bytes[i] == b'"').collect();
                if quotes.len() >= 2 {
                    let q = g.below(quotes.len() - 1);
                    let (start, end) = (quotes[q] + 1, quotes[q + 1]);
                    let path = PATHS[g.below(PATHS.len())].replace('\0', "\\u0000");
                    bytes.splice(start..end, path.into_bytes());
                }
            }
            6 => {
                // Splice in a line of another seed.
                let (_, other) = &seeds[g.below(seeds.len())];
                let lines: Vec<&[u8]> = other.split(|&b| b == b'\n').collect();
                let line = lines[g.below(lines.len())].to_vec();
                bytes.splice(at..at, line.into_iter().chain([b'\n']));
            }
            7 => {
                // Rename: replace a stage name in a reference with another.
                let text = String::from_utf8_lossy(&bytes).into_owned();
                let to = NAMES[g.below(NAMES.len())];
                let from = NAMES[g.below(NAMES.len())];
                bytes = text
                    .replacen(&format!("@{from}"), &format!("@{to}"), 1)
                    .into_bytes();
            }
            _ => {
                let repeat = 1 + g.below(1000);
                let token = TOKENS[g.below(TOKENS.len())];
                let blob: Vec<u8> = token
                    .iter()
                    .copied()
                    .cycle()
                    .take(token.len() * repeat)
                    .collect();
                bytes.splice(at..at, blob);
            }
        }
    }
    Document {
        name: format!("{name} mutated #{case} (seed {seed:#x})"),
        bytes,
    }
}

// ---------------------------------------------------------------------------------------
// The tests.
// ---------------------------------------------------------------------------------------

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value} is not a number")),
        Err(_) => default,
    }
}

fn seed() -> u64 {
    match std::env::var("POCHI_FUZZ_SEED") {
        Ok(value) => {
            let value = value.trim();
            match value.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => value.parse(),
            }
            .unwrap_or_else(|_| panic!("POCHI_FUZZ_SEED={value} is not a number"))
        }
        Err(_) => SEED,
    }
}

/// `POCHI_FUZZ_CASE=N` runs case N alone and prints it (to reproduce a failure).
fn only_case() -> Option<u64> {
    std::env::var("POCHI_FUZZ_CASE")
        .ok()
        .map(|v| v.parse().expect("POCHI_FUZZ_CASE is a number"))
}

/// Runs cases `0..POCHI_FUZZ_CASES` of a family (or `POCHI_FUZZ_CASE` alone, printed).
fn run_family(label: &str, make: impl Fn(u64) -> Document + Send + 'static) {
    let strict = std::env::var_os("POCHI_FUZZ_STRICT").is_some_and(|v| v == "1");
    let cases = env_u64("POCHI_FUZZ_CASES", DEFAULT_CASES);
    let range = match only_case() {
        Some(case) => {
            let document = make(case);
            eprintln!(
                "{}:\n{}",
                document.name,
                String::from_utf8_lossy(&document.bytes)
            );
            case..case + 1
        }
        None => 0..cases,
    };
    run_documents(label, range, make, !strict);
}

#[test]
fn generated_pipelines_give_a_graph_or_an_error() {
    let seed = seed();
    run_family("generated", move |case| generated(seed, case));
}

#[test]
fn mutated_examples_give_a_graph_or_an_error() {
    let seed = seed();
    let seeds = seeds();
    run_family("mutated", move |case| mutated(seed, case, &seeds));
}

/// Every crasher found so far (and fixed) stays fixed; `pending/` holds those that still
/// crash, run only with `POCHI_FUZZ_PENDING=1`; `POCHI_FUZZ_FILES` adds any others.
#[test]
fn regression_corpus_gives_a_graph_or_an_error() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz-corpus");
    let mut files = toml_files(&root);
    assert!(
        !files.is_empty(),
        "the regression corpus is in {}",
        root.display()
    );
    if std::env::var_os("POCHI_FUZZ_PENDING").is_some_and(|v| v == "1") {
        files.extend(toml_files(&root.join("pending")));
    }
    // `POCHI_FUZZ_FILES=a:b` replays other files too (e.g. cargo fuzz's artifacts).
    if let Some(extra) = std::env::var_os("POCHI_FUZZ_FILES") {
        files.extend(std::env::split_paths(&extra));
    }
    let documents: Vec<(String, Vec<u8>)> = files
        .iter()
        .map(|file| {
            let bytes = std::fs::read(file).expect("read a corpus file");
            (file.display().to_string(), bytes)
        })
        .collect();
    let count = documents.len() as u64;
    let make = move |case: u64| {
        let (name, bytes) = documents[case as usize].clone();
        Document { name, bytes }
    };
    run_documents("corpus", 0..count, make, false);
}

/// The example pipelines are the mutation seeds: each is valid as it stands.
#[test]
fn example_pipelines_build_a_graph() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
    let files = toml_files(&root);
    assert!(files.len() >= 3, "examples in {}", root.display());
    for file in files {
        let pipeline = Pipeline::load(&file, pochi::kinds::KINDS)
            .unwrap_or_else(|e| panic!("{}: {:?}", file.display(), miette::Report::new(e)));
        let graph = StageGraph::build(&pipeline)
            .unwrap_or_else(|e| panic!("{}: {:?}", file.display(), miette::Report::new(e)));
        check_graph(&pipeline, &graph).unwrap();
        assert!(!graph.is_empty(), "{} has stages", file.display());
    }
}
