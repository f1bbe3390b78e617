//! The real `ProcessRunner`: each stage in its own process group (so Ctrl-C can stop the
//! whole tree), killed if pochi dies, stdout and stderr into the stage's log, the last
//! lines of stderr kept for the error message.

use std::collections::{HashSet, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::build::process::{ProcessResult, ProcessRunner, ProcessSpec};

/// How many lines of stderr an error message shows.
const STDERR_TAIL_LINES: usize = 20;
/// How long a stage gets to exit after SIGTERM before SIGKILL.
const TERMINATE_GRACE: Duration = Duration::from_secs(3);

/// Runs stage processes on this machine. Each run blocks in `wait`; one watcher thread
/// per runner turns a cancel into SIGTERM (then SIGKILL) for every running group.
#[derive(Debug, Default)]
pub struct SystemRunner {
    running: Arc<Mutex<HashSet<i32>>>,
    watcher: std::sync::OnceLock<()>,
}

impl ProcessRunner for SystemRunner {
    fn run(&self, spec: &ProcessSpec, cancel: &AtomicBool) -> ProcessResult {
        match self.run_process(spec, cancel) {
            Ok(result) => result,
            Err(error) => ProcessResult::SpawnError(error.to_string()),
        }
    }
}

impl SystemRunner {
    /// A runner whose stages are stopped once `cancel` is set.
    pub fn watching(cancel: Arc<AtomicBool>) -> Arc<SystemRunner> {
        let runner = Arc::new(SystemRunner::default());
        runner.watch(cancel);
        runner
    }

    /// Starts the watcher that stops running groups once `cancel` is set.
    pub fn watch(&self, cancel: Arc<AtomicBool>) {
        let running = Arc::clone(&self.running);
        self.watcher.get_or_init(|| {
            std::thread::spawn(move || {
                while !cancel.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(25));
                }
                signal_all(&running, libc::SIGTERM);
                let deadline = Instant::now() + TERMINATE_GRACE;
                while Instant::now() < deadline
                    && !running.lock().map(|r| r.is_empty()).unwrap_or(true)
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                signal_all(&running, libc::SIGKILL);
            });
        });
    }

    fn run_process(
        &self,
        spec: &ProcessSpec,
        cancel: &AtomicBool,
    ) -> std::io::Result<ProcessResult> {
        if let Some(dir) = spec.log.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let log = std::fs::File::create(&spec.log)?;
        let mut command = Command::new(&spec.program);
        command
            .args(&spec.args)
            .envs(&spec.env)
            .current_dir(&spec.cwd)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(Stdio::piped())
            .process_group(0);
        // SAFETY: prctl is async-signal-safe; it only asks the kernel to SIGKILL the child
        // when the thread that spawned it dies, so a killed pochi leaves no stage running.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = {
            // Registering under the lock means a cancel either sees this group or comes
            // before it, in which case the stage is not started at all.
            let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            if cancel.load(Ordering::Relaxed) {
                return Ok(ProcessResult::Cancelled);
            }
            let child = command.spawn()?;
            running.insert(child.id() as i32);
            child
        };
        let group = child.id() as i32;
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let reader = child.stderr.take().map(|stderr| {
            let tail = Arc::clone(&tail);
            std::thread::spawn(move || copy_stderr(stderr, log, &tail))
        });
        let status = child.wait();
        // Whatever the stage left running in its group goes with it.
        end_group(group);
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&group);
        if let Some(reader) = reader {
            let _ = reader.join();
        }
        let status = status?;
        if cancel.load(Ordering::Relaxed) {
            return Ok(ProcessResult::Cancelled);
        }
        if status.success() {
            return Ok(ProcessResult::Success);
        }
        let status = match (status.code(), status.signal()) {
            (Some(code), _) => format!("exit status {code}"),
            (None, Some(signal)) => format!(
                "signal {signal}{}",
                if signal == libc::SIGKILL {
                    " (killed; out of memory?)"
                } else {
                    ""
                }
            ),
            _ => "an unknown status".to_string(),
        };
        let stderr_tail = tail
            .lock()
            .map(|t| t.iter().cloned().collect())
            .unwrap_or_default();
        Ok(ProcessResult::Failed {
            status,
            stderr_tail,
        })
    }
}

/// Runs one process for in-process work, which holds only a borrowed cancel flag: a scoped
/// watcher stops the process's group (SIGTERM, then SIGKILL) once `cancel` is set.
pub fn run_borrowing_cancel(spec: &ProcessSpec, cancel: &AtomicBool) -> ProcessResult {
    let runner = SystemRunner::default();
    let finished = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !finished.load(Ordering::Relaxed) {
                if cancel.load(Ordering::Relaxed) {
                    signal_all(&runner.running, libc::SIGTERM);
                    let deadline = Instant::now() + TERMINATE_GRACE;
                    while Instant::now() < deadline && !finished.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    signal_all(&runner.running, libc::SIGKILL);
                    return;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
        });
        let result = runner.run(spec, cancel);
        finished.store(true, Ordering::Relaxed);
        result
    })
}

fn signal_all(running: &Mutex<HashSet<i32>>, signal: i32) {
    for &group in running.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        // SAFETY: signalling a stage's own process group.
        unsafe { libc::killpg(group, signal) };
    }
}

fn copy_stderr(
    stderr: std::process::ChildStderr,
    mut log: std::fs::File,
    tail: &Mutex<VecDeque<String>>,
) {
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::new();
    while let Ok(read) = reader.read_until(b'\n', &mut line) {
        if read == 0 {
            break;
        }
        let _ = log.write_all(&line);
        if let Ok(mut tail) = tail.lock() {
            if tail.len() == STDERR_TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(String::from_utf8_lossy(&line).trim_end().to_string());
        }
        line.clear();
    }
}

fn end_group(group: i32) {
    // SAFETY: the group is the stage's own; ESRCH (already gone) is fine.
    unsafe { libc::killpg(group, libc::SIGKILL) };
}
