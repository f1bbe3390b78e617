//! Following one execution's operation to its end: `Execute`, then the stream's
//! operations read with a short wait each (so `cancel` is polled every `POLL`), their
//! stages reported once each. A stream that breaks before the operation is done
//! (a dropped connection, UNAVAILABLE, a server restart, or a silence longer than the
//! endpoint's timeout) is resumed with `WaitExecution` after a short backoff, a bounded
//! number of times in a row; an operation the server lost (NOT_FOUND) is executed once
//! more. An operation queued past the job's queue timeout, or one the caller cancels, is
//! cancelled on the server (`CancelOperation`, bounded).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tonic::{Code, Status};

use super::operation::{Refusal, Stage, Verdict, judge, stage, verdict};
use super::{ExecutionJob, ExecutionPhase};
use crate::remote::error::{ExecutionError, RemoteError};
use crate::remote::grpc::{GrpcClient, OperationStream, StreamEvent};

/// The longest wait for one read before `cancel` and the queue timeout are checked again.
const POLL: Duration = Duration::from_millis(100);
/// The longest wait for CancelOperation's answer.
const CANCEL_LIMIT: Duration = Duration::from_secs(5);
/// The waits before each resumption of a broken stream, in a row (about 30 s in all).
const BACKOFF: [Duration; 5] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
    Duration::from_secs(15),
];

/// How following an operation ended.
#[derive(Debug)]
pub(crate) struct Followed {
    pub(crate) verdict: Verdict,
    /// How long it was queued last (the wait an Unschedulable names).
    pub(crate) queued: Duration,
    /// How many times its stream was opened again.
    pub(crate) resumed: u32,
}

/// Executes the job's action and follows its operation to the end.
pub(crate) fn run(
    grpc: &GrpcClient,
    job: &ExecutionJob,
    cancel: &AtomicBool,
    progress: &dyn Fn(ExecutionPhase),
) -> Result<Followed, ExecutionError> {
    let mut follower = Follower {
        grpc,
        job,
        cancel,
        progress,
        name: None,
        watch: Watch::new(),
        resumed: 0,
        breaks: 0,
        executed_again: false,
    };
    follower.follow()
}

/// How reading one stream ended.
enum End {
    Done(Verdict),
    /// Worth resuming.
    Broken(RemoteError),
    /// The server does not know the operation (it lost it).
    Lost(RemoteError),
}

struct Follower<'a> {
    grpc: &'a GrpcClient,
    job: &'a ExecutionJob<'a>,
    cancel: &'a AtomicBool,
    progress: &'a dyn Fn(ExecutionPhase),
    /// The operation's name, once the server said it.
    name: Option<String>,
    watch: Watch,
    resumed: u32,
    /// Breaks since the last operation the server sent.
    breaks: usize,
    executed_again: bool,
}

impl Follower<'_> {
    fn follow(&mut self) -> Result<Followed, ExecutionError> {
        let mut stream = self.execute()?;
        loop {
            match self.read(&mut stream)? {
                End::Done(verdict) => {
                    return Ok(Followed {
                        verdict,
                        queued: self.watch.queued_for(),
                        resumed: self.resumed,
                    });
                }
                End::Broken(error) => {
                    drop(stream);
                    self.back_off(error)?;
                    self.resumed += 1;
                    stream = match &self.name {
                        Some(name) => self.grpc.wait_execution_stream(name),
                        None => self.execute()?,
                    };
                }
                End::Lost(error) if self.executed_again => return Err(error.into()),
                End::Lost(error) => {
                    tracing::debug!("executing again: {error}");
                    self.executed_again = true;
                    self.name = None;
                    self.resumed += 1;
                    stream = self.execute()?;
                }
            }
        }
    }

    fn execute(&mut self) -> Result<OperationStream, RemoteError> {
        self.watch.queued_since = Some(Instant::now());
        self.grpc
            .execute_stream(&self.job.action.digest, self.job.skip_cache_lookup)
    }

    /// Reads operations until the operation is done or the stream stops.
    fn read(&mut self, stream: &mut OperationStream) -> Result<End, ExecutionError> {
        let silence_limit = self.grpc.endpoint_ref().timeout();
        let mut last_heard = Instant::now();
        loop {
            if self.cancel.load(Ordering::Relaxed) {
                self.learn_name(stream);
                self.cancel_operation();
                return Err(ExecutionError::Cancelled);
            }
            if self.watch.queued_for() > self.job.queue_timeout {
                self.cancel_operation();
                return Ok(End::Done(Verdict::Unschedulable));
            }
            match self.grpc.next_event(stream, POLL) {
                StreamEvent::Quiet if last_heard.elapsed() > silence_limit => {
                    return Ok(End::Broken(self.grpc.timeout_error(call_name(stream))));
                }
                StreamEvent::Quiet => {}
                StreamEvent::Operation(operation) => {
                    last_heard = Instant::now();
                    self.breaks = 0;
                    if !operation.name.is_empty() {
                        self.name = Some(operation.name.clone());
                    }
                    if operation.done {
                        return verdict(&operation).map(End::Done).map_err(|detail| {
                            ExecutionError::Remote(RemoteError::Protocol {
                                endpoint: self.grpc.name().to_owned(),
                                what: "Execute answer",
                                detail: detail.to_string(),
                            })
                        });
                    }
                    if let Some(phase) = self.watch.saw(stage(&operation)) {
                        (self.progress)(phase);
                    }
                }
                StreamEvent::Ended => {
                    return Ok(End::Broken(RemoteError::Protocol {
                        endpoint: self.grpc.name().to_owned(),
                        what: "Execute stream",
                        detail: "it ended before the operation was done".into(),
                    }));
                }
                StreamEvent::Broken(status) => return self.broken(stream, &status),
            }
        }
    }

    /// What a failed call means: a refusal of the action, a break worth resuming, the
    /// operation lost, or an error.
    fn broken(&self, stream: &OperationStream, status: &Status) -> Result<End, ExecutionError> {
        let error = self.grpc.status_error(call_name(stream), status);
        match judge(Refusal::of_call(status), None) {
            Verdict::Refused(refusal, _) => match refusal.code {
                Code::NotFound if stream.resumed => Ok(End::Lost(error)),
                Code::FailedPrecondition => Ok(End::Done(Verdict::Refused(refusal, None))),
                code if resumable(code) => Ok(End::Broken(error)),
                _ => Err(error.into()),
            },
            other => Ok(End::Done(other)),
        }
    }

    /// Waits before the next resumption (polling `cancel`); the error when too many
    /// breaks came in a row.
    fn back_off(&mut self, error: RemoteError) -> Result<(), ExecutionError> {
        let Some(wait) = BACKOFF.get(self.breaks) else {
            return Err(error.into());
        };
        self.breaks += 1;
        tracing::debug!("resuming the execution in {wait:?} after: {error}");
        let until = Instant::now() + *wait;
        while Instant::now() < until {
            if self.cancel.load(Ordering::Relaxed) {
                self.cancel_operation();
                return Err(ExecutionError::Cancelled);
            }
            std::thread::sleep(POLL);
        }
        Ok(())
    }

    /// On a cancel before the server named the operation, waits briefly for its name.
    fn learn_name(&mut self, stream: &mut OperationStream) {
        if self.name.is_none()
            && let StreamEvent::Operation(operation) =
                self.grpc.next_event(stream, Duration::from_secs(1))
            && !operation.name.is_empty()
        {
            self.name = Some(operation.name);
        }
    }

    /// Asks the server to cancel the operation (best effort, bounded).
    fn cancel_operation(&self) {
        let Some(name) = &self.name else { return };
        let limit = CANCEL_LIMIT.min(self.grpc.endpoint_ref().timeout());
        if let Err(error) = self.grpc.cancel_operation(name, limit) {
            tracing::debug!("CancelOperation of {name} failed: {error}");
        }
    }
}

fn call_name(stream: &OperationStream) -> &'static str {
    if stream.resumed {
        "WaitExecution"
    } else {
        "Execute"
    }
}

/// Statuses of a broken operation stream worth resuming.
fn resumable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::Unknown
            | Code::Internal
            | Code::Aborted
            | Code::Cancelled
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
    )
}

/// The stage an operation is in, as the queue timeout and progress reports see it.
#[derive(Debug)]
struct Watch {
    /// Since when it has been queued (from the Execute call); `None` while it executes.
    queued_since: Option<Instant>,
    phase: Option<ExecutionPhase>,
}

impl Watch {
    fn new() -> Watch {
        Watch {
            queued_since: None,
            phase: None,
        }
    }

    fn queued_for(&self) -> Duration {
        self.queued_since.map(|t| t.elapsed()).unwrap_or_default()
    }

    /// Takes in an operation's stage; the phase to report when it changed.
    fn saw(&mut self, stage: Option<Stage>) -> Option<ExecutionPhase> {
        let phase = match stage? {
            Stage::Queued => {
                self.queued_since.get_or_insert_with(Instant::now);
                ExecutionPhase::Queued
            }
            Stage::Executing => {
                self.queued_since = None;
                ExecutionPhase::Executing
            }
            Stage::Completed => return None,
        };
        (self.phase != Some(phase)).then(|| {
            self.phase = Some(phase);
            phase
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_phase_is_reported_once_and_executing_stops_the_queue_clock() {
        let mut watch = Watch::new();
        assert_eq!(watch.saw(None), None);
        assert_eq!(watch.saw(Some(Stage::Queued)), Some(ExecutionPhase::Queued));
        assert_eq!(watch.saw(Some(Stage::Queued)), None);
        assert!(watch.queued_since.is_some());
        assert_eq!(
            watch.saw(Some(Stage::Executing)),
            Some(ExecutionPhase::Executing)
        );
        assert_eq!(watch.queued_for(), Duration::ZERO);
        // A worker died: the job is queued again and the clock restarts.
        assert_eq!(watch.saw(Some(Stage::Queued)), Some(ExecutionPhase::Queued));
        assert!(watch.queued_since.is_some());
        assert_eq!(watch.saw(Some(Stage::Completed)), None);
    }

    #[test]
    fn breaks_are_resumed_a_bounded_number_of_times_within_about_30_s() {
        let total: Duration = BACKOFF.iter().sum();
        assert!(total >= Duration::from_secs(20) && total <= Duration::from_secs(40));
        assert_eq!(BACKOFF.len(), 5);
        for code in [
            Code::Unavailable,
            Code::Internal,
            Code::Cancelled,
            Code::Unknown,
        ] {
            assert!(resumable(code), "{code:?}");
        }
        for code in [
            Code::InvalidArgument,
            Code::PermissionDenied,
            Code::Unauthenticated,
            Code::NotFound,
            Code::Unimplemented,
        ] {
            assert!(!resumable(code), "{code:?}");
        }
    }
}
