//! The process-group watchdog: a forked child of pochi that learns every running stage's
//! process group through a pipe and, when that pipe closes because pochi is gone (even by
//! `kill -9`, which no handler sees), terminates the groups still registered. A stage's
//! grandchildren therefore never outlive the build that started them.
//!
//! The child is forked, not executed, so it works whatever binary embeds the runner; after
//! `fork` in a multi-threaded process it calls only async-signal-safe functions (`read`,
//! `kill`, `nanosleep`, `close`, `_exit`) and allocates nothing.

use std::collections::HashSet;
use std::fs::File;
use std::io::Write;
use std::os::fd::FromRawFd;
use std::sync::{Mutex, OnceLock};

/// A message on the pipe: an opcode and a process group id, native-endian.
const MESSAGE: usize = 8;
const WATCH: i32 = 1;
const FORGET: i32 = 2;
/// How many groups the watchdog tracks at once (more running stages than this are not
/// guarded; pochi runs at most a few dozen at a time).
const CAPACITY: usize = 4096;
/// How long groups get between SIGTERM and SIGKILL once pochi is gone.
const GRACE_MS: u64 = 3000;

/// pochi's end of the watchdog's pipe, the watchdog's process id, and the groups it was
/// told of (so that a new watchdog can be told them again).
pub(super) struct Watchdog {
    state: Mutex<Guard>,
}

struct Guard {
    pipe: File,
    pid: i32,
    groups: HashSet<i32>,
}

static WATCHDOG: OnceLock<Option<Watchdog>> = OnceLock::new();

/// The process's watchdog, started on first use; `None` if it could not be started. A
/// thread waits on it and starts another if it dies (`kill -9` of the watchdog alone),
/// telling it the groups still registered.
pub(super) fn get() -> Option<&'static Watchdog> {
    let watchdog = WATCHDOG
        .get_or_init(|| {
            start().map(|(pipe, pid)| Watchdog {
                state: Mutex::new(Guard {
                    pipe,
                    pid,
                    groups: HashSet::new(),
                }),
            })
        })
        .as_ref();
    static MONITOR: OnceLock<()> = OnceLock::new();
    if let Some(watchdog) = watchdog {
        MONITOR.get_or_init(|| {
            std::thread::spawn(move || watchdog.replace_when_it_dies());
        });
    }
    watchdog
}

impl Watchdog {
    /// Registers a stage's process group.
    pub(super) fn watch(&self, group: i32) {
        let mut state = self.lock();
        state.groups.insert(group);
        send(&mut state.pipe, WATCH, group);
    }

    /// Unregisters a group that pochi has ended itself.
    pub(super) fn forget(&self, group: i32) {
        let mut state = self.lock();
        state.groups.remove(&group);
        send(&mut state.pipe, FORGET, group);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Guard> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for the watchdog process to end (it never does while pochi lives, unless it
    /// is killed), then starts a new one and registers the groups again; gives up, leaving
    /// `PR_SET_PDEATHSIG`-less stages unguarded, only if no process can be forked.
    fn replace_when_it_dies(&self) {
        loop {
            let pid = self.lock().pid;
            let mut status = 0;
            // SAFETY: waiting for our own child.
            let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
            if waited < 0 && last_errno() == libc::EINTR {
                continue;
            }
            let mut state = self.lock();
            let Some((pipe, pid)) = start() else {
                return;
            };
            state.pipe = pipe;
            state.pid = pid;
            let groups: Vec<i32> = state.groups.iter().copied().collect();
            for group in groups {
                send(&mut state.pipe, WATCH, group);
            }
        }
    }
}

fn send(pipe: &mut File, op: i32, group: i32) {
    let mut message = [0u8; MESSAGE];
    message[..4].copy_from_slice(&op.to_ne_bytes());
    message[4..].copy_from_slice(&group.to_ne_bytes());
    // One write of 8 bytes (< PIPE_BUF) is atomic. If the watchdog died, the write fails
    // with EPIPE (Rust ignores SIGPIPE); the monitor thread starts another, which is told
    // every registered group.
    let _ = pipe.write_all(&message);
}

/// Forks a watchdog; pochi's end of its pipe and its process id.
fn start() -> Option<(File, i32)> {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 fills the two descriptors; close-on-exec keeps them out of stages.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return None;
    }
    let [read_end, write_end] = fds;
    // SAFETY: the child runs only `watch_groups`, which is async-signal-safe (see the
    // module docs) and never returns.
    match unsafe { libc::fork() } {
        -1 => {
            // SAFETY: closing the descriptors this function just opened.
            unsafe {
                libc::close(read_end);
                libc::close(write_end);
            }
            None
        }
        0 => watch_groups(read_end),
        pid => {
            // SAFETY: the read end belongs to the child now; the write end is ours alone.
            unsafe { libc::close(read_end) };
            Some((unsafe { File::from_raw_fd(write_end) }, pid))
        }
    }
}

/// The watchdog's whole life, in the forked child.
fn watch_groups(pipe: i32) -> ! {
    // SAFETY (whole function): only async-signal-safe calls on our own descriptors and on
    // process groups pochi registered.
    unsafe {
        for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
            libc::signal(signal, libc::SIG_IGN);
        }
        // Its own group: a signal to pochi's group (Ctrl-C, `kill -- -PGID`) leaves it be.
        libc::setpgid(0, 0);
        close_all_but(pipe);
    }
    let mut groups = [0i32; CAPACITY];
    let mut message = [0u8; MESSAGE];
    let mut filled = 0;
    loop {
        // SAFETY: reading into our own stack buffer.
        let read = unsafe {
            libc::read(
                pipe,
                message[filled..].as_mut_ptr().cast(),
                MESSAGE - filled,
            )
        };
        if read < 0 && last_errno() == libc::EINTR {
            continue;
        }
        if read <= 0 {
            break;
        }
        filled += read as usize;
        if filled == MESSAGE {
            filled = 0;
            apply(&mut groups, &message);
        }
    }
    end_groups(&groups);
    // SAFETY: leaving the child without running the parent's atexit handlers.
    unsafe { libc::_exit(0) }
}

fn apply(groups: &mut [i32; CAPACITY], message: &[u8; MESSAGE]) {
    let op = i32::from_ne_bytes([message[0], message[1], message[2], message[3]]);
    let group = i32::from_ne_bytes([message[4], message[5], message[6], message[7]]);
    if group <= 0 {
        return;
    }
    let (wanted, new) = if op == WATCH { (0, group) } else { (group, 0) };
    if let Some(slot) = groups.iter_mut().find(|slot| **slot == wanted) {
        *slot = new;
    }
}

/// SIGTERM to every registered group, then SIGKILL to those still there after the grace.
fn end_groups(groups: &[i32; CAPACITY]) {
    let signal_all = |signal: i32| {
        let mut alive = false;
        for &group in groups.iter().filter(|&&g| g > 0) {
            // SAFETY: signalling a group pochi registered; ESRCH (gone) is fine.
            alive |= unsafe { libc::kill(-group, signal) } == 0;
        }
        alive
    };
    if !signal_all(libc::SIGTERM) {
        return;
    }
    let mut waited = 0;
    while waited < GRACE_MS && signal_all(0) {
        sleep_ms(50);
        waited += 50;
    }
    signal_all(libc::SIGKILL);
}

fn sleep_ms(ms: u64) {
    let time = libc::timespec {
        tv_sec: (ms / 1000) as libc::time_t,
        tv_nsec: ((ms % 1000) * 1_000_000) as libc::c_long,
    };
    // SAFETY: nanosleep with a valid timespec.
    unsafe { libc::nanosleep(&time, std::ptr::null_mut()) };
}

fn last_errno() -> i32 {
    // SAFETY: reading this thread's errno.
    unsafe { *libc::__errno_location() }
}

/// Closes every descriptor but `keep`: the child must not hold pochi's files, pipes or
/// locks open (a stage's stderr pipe would never see its end, a lock never be released).
unsafe fn close_all_but(keep: i32) {
    // SAFETY: close_range on descriptor ranges of this process.
    unsafe {
        let below = if keep > 0 {
            libc::syscall(libc::SYS_close_range, 0u32, (keep - 1) as u32, 0u32)
        } else {
            0
        };
        let above = libc::syscall(libc::SYS_close_range, (keep + 1) as u32, u32::MAX, 0u32);
        if below != 0 || above != 0 {
            for fd in (0..1024).filter(|&fd| fd != keep) {
                libc::close(fd);
            }
        }
    }
}
