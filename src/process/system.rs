//! The real `ProcessRunner`: each stage in its own process group (so Ctrl-C can stop the
//! whole tree), killed if pochi dies, stdout and stderr into the stage's log, the last
//! lines of stderr kept for the error message.

use std::collections::{HashSet, VecDeque};
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::watchdog;
use super::{ProcessResult, ProcessRunner, ProcessSpec};

/// How many lines of stderr an error message shows.
const STDERR_TAIL_LINES: usize = 20;
/// How many bytes of each of those lines it shows.
const STDERR_TAIL_LINE_BYTES: usize = 1000;
/// How long a stage gets to exit after SIGTERM before SIGKILL.
const TERMINATE_GRACE: Duration = Duration::from_secs(3);
/// How long stderr is still read after the stage's process exited.
const STDERR_DRAIN: Duration = Duration::from_secs(2);
/// How often the stderr reader looks whether the stage has exited, in ms.
const STDERR_POLL_MS: i32 = 100;

/// Runs stage processes on this machine. Each run blocks in `wait`; one watcher thread
/// per runner turns a cancel into SIGTERM (then SIGKILL) for every running group.
#[derive(Debug, Default)]
pub(crate) struct SystemRunner {
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
    pub(crate) fn watching(cancel: Arc<AtomicBool>) -> Arc<SystemRunner> {
        let runner = Arc::new(SystemRunner::default());
        runner.watch(cancel);
        runner
    }

    /// Starts the watcher that stops running groups once `cancel` is set.
    pub(crate) fn watch(&self, cancel: Arc<AtomicBool>) {
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
        tracing::debug!(program = %spec.program, outputs = ?spec.outputs, "starting a stage's process");
        let mut command = Command::new(&spec.program);
        command
            .args(&spec.args)
            .envs(&spec.env)
            .current_dir(&spec.cwd)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(Stdio::piped())
            .process_group(0);
        let watchdog = watchdog::get();
        if watchdog.is_none() {
            // No watchdog (it could not start): at least the stage's own process dies with
            // pochi. SAFETY: prctl is async-signal-safe; it only asks the kernel to SIGKILL
            // the child when the thread that spawned it dies.
            unsafe {
                command.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
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
            if let Some(watchdog) = watchdog {
                watchdog.watch(child.id() as i32);
            }
            child
        };
        let group = child.id() as i32;
        let tail = Arc::new(Mutex::new(StderrTail::default()));
        let exited = Arc::new(AtomicBool::new(false));
        let reader = child.stderr.take().map(|stderr| {
            let tail = Arc::clone(&tail);
            let exited = Arc::clone(&exited);
            std::thread::spawn(move || copy_stderr(stderr, log, &tail, &exited))
        });
        let status = child.wait();
        exited.store(true, Ordering::Relaxed);
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
        let stderr_tail =
            std::mem::take(&mut *tail.lock().unwrap_or_else(|e| e.into_inner())).finish();
        Ok(ProcessResult::Failed {
            status: describe_exit(status),
            stderr_tail,
        })
    }
}

/// How a failed process ended, for its error message.
fn describe_exit(status: std::process::ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(libc::SIGKILL)) => {
            format!("signal {} (killed; out of memory?)", libc::SIGKILL)
        }
        (None, Some(signal)) => format!("signal {signal}"),
        _ => "an unknown status".to_string(),
    }
}

/// Runs one process for in-process work, which holds only a borrowed cancel flag: a scoped
/// watcher stops the process's group (SIGTERM, then SIGKILL) once `cancel` is set.
pub(crate) fn run_borrowing_cancel(spec: &ProcessSpec, cancel: &AtomicBool) -> ProcessResult {
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

/// Copies a stage's stderr into its log, chunk by chunk (a 100 MB line is never held
/// whole), and keeps the last lines for the error message. Once the stage's process has
/// exited (`exited`), what is still in the pipe is drained for at most `STDERR_DRAIN`: a
/// process the stage started outside its group (a daemon, `setsid`) may hold the pipe open
/// for as long as it lives, and the stage must not wait for it.
fn copy_stderr(
    mut stderr: std::process::ChildStderr,
    mut log: std::fs::File,
    tail: &Mutex<StderrTail>,
    exited: &AtomicBool,
) {
    use std::os::fd::AsRawFd;
    let mut chunk = vec![0u8; 64 * 1024];
    let mut drain_until: Option<Instant> = None;
    let held_open = |log: &mut std::fs::File| {
        let _ = writeln!(
            log,
            "pochi: stopped reading the stage's stderr after it exited: a process it started outside its process group still holds stderr open"
        );
    };
    loop {
        if exited.load(Ordering::Relaxed) {
            let until = *drain_until.get_or_insert_with(|| Instant::now() + STDERR_DRAIN);
            if Instant::now() >= until {
                return held_open(&mut log);
            }
        }
        let mut poll = libc::pollfd {
            fd: stderr.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for a descriptor this function owns.
        let ready = unsafe { libc::poll(&mut poll, 1, STDERR_POLL_MS) };
        if ready == 0 {
            // Quiet for the poll interval and not closed after the exit: someone else
            // holds it.
            if drain_until.is_some() {
                return held_open(&mut log);
            }
            continue;
        }
        match stderr.read(&mut chunk) {
            Ok(0) => break,
            Ok(read) => {
                let _ = log.write_all(&chunk[..read]);
                if let Ok(mut tail) = tail.lock() {
                    tail.push(&chunk[..read]);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
}

/// The last `STDERR_TAIL_LINES` lines of a stream, each cut to `STDERR_TAIL_LINE_BYTES`.
/// A carriage return ends a line too, so a progress bar redrawn with `\r` keeps only its
/// last states.
#[derive(Debug, Default)]
pub(crate) struct StderrTail {
    lines: VecDeque<String>,
    current: Vec<u8>,
    cut: usize,
}

impl StderrTail {
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        for piece in bytes.split_inclusive(|&b| b == b'\n' || b == b'\r') {
            let (text, ends) = match piece.last() {
                Some(b'\n' | b'\r') => (&piece[..piece.len() - 1], true),
                _ => (piece, false),
            };
            let room = STDERR_TAIL_LINE_BYTES.saturating_sub(self.current.len());
            self.current
                .extend_from_slice(&text[..text.len().min(room)]);
            self.cut += text.len().saturating_sub(room);
            if ends {
                self.end_line();
            }
        }
    }

    fn end_line(&mut self) {
        let mut line = String::from_utf8_lossy(&self.current)
            .trim_end()
            .to_string();
        if self.cut > 0 {
            line.push_str(&format!(" [... {} more bytes]", self.cut));
        }
        self.current.clear();
        self.cut = 0;
        if line.is_empty() {
            return;
        }
        if self.lines.len() == STDERR_TAIL_LINES {
            self.lines.pop_front();
        }
        self.lines.push_back(line);
    }

    /// The kept lines, the unfinished last one included.
    pub(crate) fn finish(mut self) -> Vec<String> {
        if !self.current.is_empty() || self.cut > 0 {
            self.end_line();
        }
        self.lines.into()
    }
}

fn end_group(group: i32) {
    // SAFETY: the group is the stage's own; ESRCH (already gone) is fine.
    unsafe { libc::killpg(group, libc::SIGKILL) };
    if let Some(watchdog) = watchdog::get() {
        watchdog.forget(group);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_caps_lines_and_treats_carriage_returns_as_breaks() {
        let mut tail = StderrTail::default();
        tail.push(&vec![b'x'; 5 * STDERR_TAIL_LINE_BYTES]);
        tail.push(b"\n");
        for step in 0..1000 {
            tail.push(format!("progress {step}%\r").as_bytes());
        }
        tail.push(b"Traceback: boom\nlast words");
        let lines = tail.finish();
        assert_eq!(lines.len(), STDERR_TAIL_LINES);
        assert_eq!(lines[STDERR_TAIL_LINES - 1], "last words");
        assert_eq!(lines[STDERR_TAIL_LINES - 2], "Traceback: boom");
        assert_eq!(lines[STDERR_TAIL_LINES - 3], "progress 999%");
        let mut long = StderrTail::default();
        long.push(&vec![b'y'; 3 * STDERR_TAIL_LINE_BYTES]);
        let lines = long.finish();
        assert!(
            lines[0].len() < STDERR_TAIL_LINE_BYTES + 40,
            "{}",
            lines[0].len()
        );
        assert!(lines[0].ends_with(&format!("[... {} more bytes]", 2 * STDERR_TAIL_LINE_BYTES)));
    }
}
