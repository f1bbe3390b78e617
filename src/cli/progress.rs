//! The build reporter: fed by build events, it shows one line per running stage with its
//! elapsed time on a terminal (indicatif), plain lines otherwise, and a summary at the end.

use super::output::say;
use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::output::{duration, paint};
use crate::driver::remote::RanRemotely;
use crate::driver::{BuildEvent, BuildSummary};
use crate::scheduler::Outcome;

pub(super) struct Reporter {
    bars: Option<MultiProgress>,
    running: HashMap<String, ProgressBar>,
}

impl Reporter {
    pub(super) fn new() -> Reporter {
        let fancy = std::io::stderr().is_terminal()
            && std::env::var("TERM").map(|t| t != "dumb").unwrap_or(true);
        let bars = fancy.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Reporter {
            bars,
            running: HashMap::new(),
        }
    }

    fn line(&self, text: &str) {
        match &self.bars {
            Some(bars) => {
                let _ = bars.println(super::output::sanitize(text));
            }
            None => say!("{text}"),
        }
    }

    pub(super) fn event(&mut self, event: BuildEvent) {
        match event {
            BuildEvent::WaitingForLock { pipeline, holder } => {
                self.line(&format!("waiting: another pochi (pid {holder}) is building `{pipeline}`; this build starts when it ends (Ctrl-C to stop waiting)"));
            }
            BuildEvent::Warning { message } => {
                self.line(&format!("{} {message}", paint("warning:", "1;33")));
            }
            BuildEvent::Planned {
                stages,
                to_run,
                may_follow,
            } => {
                if to_run > 0 {
                    let more = if may_follow > 0 {
                        format!(
                            "; up to {may_follow} more depend on them and run if their inputs change"
                        )
                    } else {
                        String::new()
                    };
                    self.line(&format!(
                        "{} {to_run} of {stages} stages are out of date{more}",
                        paint("plan", "1")
                    ));
                }
            }
            BuildEvent::Started {
                stage,
                reason,
                gpu,
                remote,
            } => self.started(stage, reason, gpu, remote),
            BuildEvent::Finished {
                stage,
                outcome,
                duration: took,
                ran_remotely,
            } => self.finished(stage, outcome, took, ran_remotely),
        }
    }

    fn started(&mut self, stage: &str, reason: &str, gpu: Option<u32>, remote: bool) {
        let device = match (gpu, remote) {
            (_, true) => " [remote]".to_string(),
            (Some(g), false) => format!(" [gpu {g}]"),
            (None, false) => String::new(),
        };
        match &self.bars {
            Some(bars) => {
                let bar = bars.add(ProgressBar::new_spinner());
                bar.set_style(
                    ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                bar.set_message(
                    super::output::sanitize(&format!("{stage}{device} ({reason})")).into_owned(),
                );
                bar.enable_steady_tick(Duration::from_millis(120));
                self.running.insert(stage.to_string(), bar);
            }
            None => say!("{} {stage}{device}: {reason}", paint("run ", "1;34")),
        }
    }

    fn finished(
        &mut self,
        stage: &str,
        outcome: &Outcome,
        took: Duration,
        ran_remotely: Option<&RanRemotely>,
    ) {
        if let Some(bar) = self.running.remove(stage) {
            bar.finish_and_clear();
            if let Some(bars) = &self.bars {
                bars.remove(&bar);
            }
        }
        match outcome {
            Outcome::Ran(_) => self.line(&format!(
                "{} {stage}{} ({})",
                paint("done", "1;32"),
                ran_remotely.map(where_it_ran).unwrap_or_default(),
                duration(took)
            )),
            Outcome::Restored(source) => self.line(&format!(
                "{} {stage} from the cache ({source}, {})",
                paint("restored", "1;32"),
                duration(took)
            )),
            Outcome::Failed(failure) => {
                let rendered = render_stage_failure(stage, failure, super::output::color());
                self.line(&format!("{} {stage}\n{rendered}", paint("FAILED", "1;31")));
            }
            Outcome::Cancelled => self.line(&format!(
                "{} {stage}: interrupted, its partial outputs were discarded",
                paint("stop", "1;33")
            )),
            Outcome::Unavailable(reason) => self.line(&format!(
                "{} {stage}: cannot run on this machine: {reason}",
                paint("unavailable", "1;33")
            )),
            Outcome::Skipped
            | Outcome::Blocked(_)
            | Outcome::Stopped
            | Outcome::NeedsUnavailable(_) => {}
        }
    }

    /// The closing line: counts and time.
    pub(super) fn summary(&mut self, summary: &BuildSummary) {
        for bar in self.running.drain().map(|(_, bar)| bar) {
            bar.finish_and_clear();
        }
        let count = |status: &str| summary.counts.get(status).copied().unwrap_or(0);
        let mut parts = vec![format!("{} ran", count("ran"))];
        for (status, label) in [
            ("restored_local", "restored locally"),
            ("restored_remote", "restored remotely"),
        ] {
            if count(status) > 0 {
                parts.push(format!("{} {label}", count(status)));
            }
        }
        parts.push(format!("{} up to date", count("skipped")));
        for (status, label) in [
            ("failed", "failed"),
            ("blocked", "not run (upstream failed)"),
            ("stopped", "not started"),
            ("cancelled", "interrupted"),
            ("unavailable", "unavailable on this machine"),
        ] {
            if count(status) > 0 {
                parts.push(format!("{} {label}", count(status)));
            }
        }
        let head = if summary.ok {
            paint("pochi:", "1;32")
        } else {
            paint("pochi:", "1;31")
        };
        say!(
            "{head} {} in {}",
            parts.join(", "),
            duration(Duration::from_millis(summary.duration_ms))
        );
    }
}

/// " on worker W (remote: URL)", for a stage that ran remotely.
fn where_it_ran(ran: &RanRemotely) -> String {
    let worker = if ran.worker.is_empty() {
        " remotely".to_string()
    } else {
        format!(" on worker `{}`", ran.worker)
    };
    let cached = if ran.cached {
        ", the farm's cached result"
    } else {
        ""
    };
    format!("{worker} ({}{cached})", ran.executor)
}

/// A stage's failure rendered like every other error: `error:` with the message (and the
/// log's path), then `help:` with the hint.
pub(super) fn render_stage_failure(
    stage: &str,
    failure: &crate::scheduler::Failure,
    color: bool,
) -> String {
    let mut message = format!("stage `{stage}` failed: {}", failure.message);
    if let Some(log) = &failure.log {
        message.push_str(&format!("\nlog: {}", log.display()));
    }
    let diagnostic = super::output::Failure {
        message,
        hint: failure.hint.clone(),
    };
    super::output::render_error_unwrapped(&diagnostic, color)
        .trim_end()
        .to_string()
}
