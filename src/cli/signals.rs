//! Ctrl-C (SIGINT), SIGTERM and SIGHUP: the first stops waiting for a lock or stops the
//! running stages and discards their partial outputs; a second exits at once, and so does
//! the first if the command has not ended `STOP_DEADLINE` after it (whatever it was waiting
//! for: a server, a stuck file system). Either way pochi exits with 128 + the signal's
//! number (130 for Ctrl-C, 143 for SIGTERM), as shells do.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use super::output::say;

/// How long a command may take to stop after the first signal before it exits anyway. Stages
/// get 3 s after SIGTERM before SIGKILL, so a build that is not stuck stops well inside it.
const STOP_DEADLINE: Duration = Duration::from_secs(10);

/// The first signal received (0: none).
static RECEIVED: AtomicI32 = AtomicI32::new(0);
/// The flag the handler sets, shared by every build of this process.
static CANCEL: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// The cancel flag that the signals set; installs the handler on first use.
pub(super) fn cancel_flag() -> Arc<AtomicBool> {
    Arc::clone(CANCEL.get_or_init(|| {
        let cancel = Arc::new(AtomicBool::new(false));
        install(Arc::clone(&cancel));
        cancel
    }))
}

fn install(cancel: Arc<AtomicBool>) {
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else {
        return;
    };
    std::thread::spawn(move || {
        for signal in signals.forever() {
            let _ = RECEIVED.compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst);
            if cancel.swap(true, Ordering::SeqCst) {
                std::process::exit(128 + signal);
            }
            let again = if signal == SIGINT {
                "Ctrl-C"
            } else {
                "the signal"
            };
            say!(
                "interrupted ({}): stopping running stages ({again} again to quit at once)",
                name(signal)
            );
            std::thread::spawn(move || exit_after_deadline(signal));
        }
    });
}

/// Exits with the signal's status if the command is still running `STOP_DEADLINE` after
/// it. Stage processes still running then are killed by the watchdog when pochi exits;
/// temporary outputs are removed by the next build, and nothing partial was published.
fn exit_after_deadline(signal: i32) {
    std::thread::sleep(STOP_DEADLINE);
    say!(
        "still not stopped {} s after {}: exiting now (a stage, a server or a file system did not answer)",
        STOP_DEADLINE.as_secs(),
        name(signal)
    );
    std::process::exit(128 + signal);
}

fn name(signal: i32) -> &'static str {
    match signal {
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}

/// The exit status of an interrupted command: 128 + the signal (130 when none was seen).
pub(super) fn interrupted_exit_code() -> ExitCode {
    let signal = RECEIVED.load(Ordering::SeqCst);
    let signal = if signal == 0 { SIGINT } else { signal };
    ExitCode::from((128 + signal) as u8)
}

/// Whether a signal stopped this command.
pub(super) fn was_interrupted() -> bool {
    RECEIVED.load(Ordering::SeqCst) != 0
}
