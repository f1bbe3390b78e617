//! The seam between the engine and the operating system: the engine describes a process,
//! a `ProcessRunner` runs it. The real one is `system` (process groups, logs, the stderr
//! tail, termination on cancel) with its `watchdog`; `fake` is the test double the
//! driver's unit tests run on.

#[allow(clippy::disallowed_methods)]
mod system;
mod watchdog;

pub(crate) use system::{StderrTail, SystemRunner, run_borrowing_cancel};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

/// A process to run for a stage.
#[derive(Debug, Clone)]
pub(crate) struct ProcessSpec {
    pub program: String,
    pub args: Vec<String>,
    /// Variables set on top of pochi's own environment.
    pub env: BTreeMap<String, String>,
    pub cwd: PathBuf,
    /// Where stdout and stderr go.
    pub log: PathBuf,
    /// The paths the process is to write (its Action's outputs, relative to `cwd` or
    /// absolute); the real runner does not need them, a test double writes them.
    pub outputs: Vec<PathBuf>,
}

/// How a process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ProcessResult {
    Success,
    /// It ran and failed: `status` says how ("exit status 1", "killed by signal 9").
    Failed {
        status: String,
        stderr_tail: Vec<String>,
    },
    /// It could not be started.
    SpawnError(String),
    /// The build was interrupted and the process group was terminated.
    Cancelled,
}

/// Runs processes; stops them when `cancel` becomes true.
pub(crate) trait ProcessRunner: Send + Sync {
    fn run(&self, spec: &ProcessSpec, cancel: &AtomicBool) -> ProcessResult;
}

#[cfg(test)]
pub(crate) mod fake {
    //! A TEST DOUBLE of the process runner, as ninja's `build_test.cc` has its fake command
    //! runner: it records every process it is asked to run and, instead of running it,
    //! writes each declared output and succeeds; a program named in `failing` fails
    //! without writing anything. By default an output is a file naming the call (so every
    //! run's output is new); `FakeRunner::writing` decides what each output holds, or that
    //! it is not written, and may act on the project meanwhile (an input changed mid-run).
    //! A script's answer file (its last argument, `.../answer.json`) says `ok`.

    use std::collections::BTreeSet;
    use std::sync::Mutex;
    use std::sync::atomic::AtomicBool;

    use super::{ProcessResult, ProcessRunner, ProcessSpec};

    /// What a fake process writes to one of its outputs (`None`: nothing).
    type Writes = Box<dyn Fn(&ProcessSpec, &std::path::Path) -> Option<String> + Send + Sync>;

    #[derive(Default)]
    pub(crate) struct FakeRunner {
        calls: Mutex<Vec<ProcessSpec>>,
        failing: BTreeSet<String>,
        writes: Option<Writes>,
    }

    impl FakeRunner {
        /// A runner whose processes named `program` fail (exit status 1).
        pub(crate) fn failing(program: &str) -> FakeRunner {
            FakeRunner {
                failing: BTreeSet::from([program.to_string()]),
                ..FakeRunner::default()
            }
        }

        /// A runner whose processes write what `writes` returns for each output (given
        /// the process and the output's path relative to its directory), or nothing.
        pub(crate) fn writing(
            writes: impl Fn(&ProcessSpec, &std::path::Path) -> Option<String> + Send + Sync + 'static,
        ) -> FakeRunner {
            FakeRunner {
                writes: Some(Box::new(writes)),
                ..FakeRunner::default()
            }
        }

        /// The first argument of every process run so far, in the order they ran.
        pub(crate) fn first_args(&self) -> Vec<String> {
            self.calls
                .lock()
                .unwrap()
                .iter()
                .map(|spec| spec.args.first().cloned().unwrap_or_default())
                .collect()
        }
    }

    impl ProcessRunner for FakeRunner {
        fn run(&self, spec: &ProcessSpec, _cancel: &AtomicBool) -> ProcessResult {
            let call = {
                let mut calls = self.calls.lock().unwrap();
                calls.push(spec.clone());
                calls.len()
            };
            if self.failing.contains(&spec.program) {
                return ProcessResult::Failed {
                    status: "exit status 1".into(),
                    stderr_tail: vec![format!("{} failed (fake)", spec.program)],
                };
            }
            for output in &spec.outputs {
                let text = match &self.writes {
                    Some(writes) => writes(spec, output),
                    None => Some(format!("{} {:?} call {call}\n", spec.program, spec.args)),
                };
                let Some(text) = text else { continue };
                let path = spec.cwd.join(output);
                let written = path
                    .parent()
                    .map_or(Ok(()), std::fs::create_dir_all)
                    .and_then(|()| std::fs::write(&path, text));
                if let Err(error) = written {
                    return ProcessResult::SpawnError(format!("{}: {error}", path.display()));
                }
            }
            if let Some(answer) = spec.args.last().filter(|a| a.ends_with("answer.json"))
                && let Err(error) = std::fs::write(spec.cwd.join(answer), r#"{"ok": true}"#)
            {
                return ProcessResult::SpawnError(format!("{answer}: {error}"));
            }
            ProcessResult::Success
        }
    }
}
