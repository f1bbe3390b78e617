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

use bazel_remote_apis::google::rpc;

use super::operation::{Refusal, Stage, Verdict, judge, stage, verdict};
use super::service::{ExecutionService, StreamEvent};
use super::{ExecutionJob, ExecutionPhase};
use crate::remote::error::{ExecutionError, RemoteError};
use crate::remote::status::Code;

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
pub(crate) fn run<S: ExecutionService>(
    service: &S,
    job: &ExecutionJob,
    cancel: &AtomicBool,
    progress: &dyn Fn(ExecutionPhase),
) -> Result<Followed, ExecutionError> {
    let mut follower = Follower {
        service,
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

struct Follower<'a, S: ExecutionService> {
    service: &'a S,
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

impl<S: ExecutionService> Follower<'_, S> {
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
                        Some(name) => self.service.wait_execution(name),
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

    fn execute(&mut self) -> Result<S::Stream, RemoteError> {
        self.watch.queued_since = Some(Instant::now());
        self.service
            .execute(&self.job.action.digest, self.job.skip_cache_lookup)
    }

    /// Reads operations until the operation is done or the stream stops.
    fn read(&mut self, stream: &mut S::Stream) -> Result<End, ExecutionError> {
        let silence_limit = self.service.silence_limit();
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
            match self.service.next_event(stream, POLL) {
                StreamEvent::Quiet if last_heard.elapsed() > silence_limit => {
                    let call = call_name::<S>(stream);
                    return Ok(End::Broken(self.service.silence_error(call)));
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
                                endpoint: self.service.name().to_owned(),
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
                        endpoint: self.service.name().to_owned(),
                        what: "Execute stream",
                        detail: "it ended before the operation was done".into(),
                    }));
                }
                StreamEvent::Broken(status, error) => {
                    return broken::<S>(stream, &status, error);
                }
            }
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
    fn learn_name(&mut self, stream: &mut S::Stream) {
        if self.name.is_none()
            && let StreamEvent::Operation(operation) =
                self.service.next_event(stream, Duration::from_secs(1))
            && !operation.name.is_empty()
        {
            self.name = Some(operation.name);
        }
    }

    /// Asks the server to cancel the operation (best effort, bounded).
    fn cancel_operation(&self) {
        let Some(name) = &self.name else { return };
        let limit = CANCEL_LIMIT.min(self.service.silence_limit());
        if let Err(error) = self.service.cancel(name, limit) {
            tracing::debug!("CancelOperation of {name} failed: {error}");
        }
    }
}

/// What a failed call means: a refusal of the action, a break worth resuming, the
/// operation lost, or an error (`error`, the call's failure as the service named it).
fn broken<S: ExecutionService>(
    stream: &S::Stream,
    status: &rpc::Status,
    error: RemoteError,
) -> Result<End, ExecutionError> {
    match judge(Refusal::of_status(status), None) {
        Verdict::Refused(refusal, _) => match refusal.code {
            Code::NotFound if S::is_resumption(stream) => Ok(End::Lost(error)),
            Code::FailedPrecondition => Ok(End::Done(Verdict::Refused(refusal, None))),
            code if resumable(code) => Ok(End::Broken(error)),
            _ => Err(error.into()),
        },
        other => Ok(End::Done(other)),
    }
}

fn call_name<S: ExecutionService>(stream: &S::Stream) -> &'static str {
    if S::is_resumption(stream) {
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
    use crate::remote::digest::{Digest, DigestFunction};
    use crate::remote::execute::operation::tests::{at_stage, done, missing_status};
    use crate::remote::execute::service::fake::ScriptedService;
    use crate::remote::proto as re;
    use crate::remote::stage::StageAction;

    fn status(code: Code, message: &str) -> rpc::Status {
        rpc::Status {
            code: code.number(),
            message: message.into(),
            details: Vec::new(),
        }
    }

    /// A broken call as the fake server reports it.
    fn broken(code: Code) -> StreamEvent {
        let error = RemoteError::Unreachable {
            endpoint: "fake".into(),
            operation: "Execute",
            detail: format!("{code:?}"),
        };
        StreamEvent::Broken(status(code, "broken"), error)
    }

    fn queued() -> StreamEvent {
        StreamEvent::Operation(Box::new(at_stage(re::execution_stage::Value::Queued)))
    }

    fn finished() -> StreamEvent {
        let response = re::ExecuteResponse {
            result: Some(re::ActionResult::default()),
            ..Default::default()
        };
        StreamEvent::Operation(Box::new(done(response)))
    }

    /// Follows one execution on `service` with `queue_timeout`, cancelled when `cancel`.
    fn follow_on(
        service: &ScriptedService,
        queue_timeout: Duration,
        cancel: bool,
    ) -> Result<Followed, ExecutionError> {
        let action = StageAction {
            digest: Digest::of_bytes(DigestFunction::Sha256, b"action"),
            function: DigestFunction::Sha256,
            outputs: Vec::new(),
            blobs: Vec::new(),
            platform: Vec::new(),
        };
        let dest_for = |name: &str| std::path::PathBuf::from(name);
        let job = ExecutionJob {
            action: &action,
            files: &[],
            dest_for: &dest_for,
            queue_timeout,
            log: std::path::Path::new("log"),
            skip_cache_lookup: false,
            kept_on_failure: &[],
        };
        run(service, &job, &AtomicBool::new(cancel), &|_| {})
    }

    const LONG: Duration = Duration::from_secs(60);

    #[test]
    fn a_broken_stream_is_resumed_with_wait_execution_of_the_named_operation() {
        let service = ScriptedService::new(vec![
            vec![queued(), broken(Code::Unavailable)],
            vec![finished()],
        ]);
        let followed = follow_on(&service, LONG, false).unwrap();
        assert!(matches!(followed.verdict, Verdict::Ran(_)), "{followed:?}");
        assert_eq!(followed.resumed, 1);
        assert_eq!(service.calls(), ["Execute", "WaitExecution operations/1"]);
    }

    #[test]
    fn an_operation_the_server_lost_is_executed_once_more_and_not_twice() {
        let service = ScriptedService::new(vec![
            vec![queued(), broken(Code::Unavailable)],
            vec![broken(Code::NotFound)],
            vec![finished()],
        ]);
        let followed = follow_on(&service, LONG, false).unwrap();
        assert!(matches!(followed.verdict, Verdict::Ran(_)));
        assert_eq!(
            service.calls(),
            ["Execute", "WaitExecution operations/1", "Execute"]
        );
        let twice = ScriptedService::new(vec![
            vec![queued(), broken(Code::Unavailable)],
            vec![broken(Code::NotFound)],
            vec![queued(), broken(Code::Unavailable)],
            vec![broken(Code::NotFound)],
        ]);
        assert!(matches!(
            follow_on(&twice, LONG, false),
            Err(ExecutionError::Remote(_))
        ));
    }

    #[test]
    fn a_refused_call_is_an_error_and_missing_blobs_a_verdict_neither_resumed() {
        let refused = ScriptedService::new(vec![vec![broken(Code::PermissionDenied)]]);
        assert!(matches!(
            follow_on(&refused, LONG, false),
            Err(ExecutionError::Remote(_))
        ));
        assert_eq!(refused.calls(), ["Execute"]);
        let hash = "ab".repeat(32);
        let missing = missing_status(&[&format!("blobs/{hash}/12")]);
        let error = RemoteError::Unreachable {
            endpoint: "fake".into(),
            operation: "Execute",
            detail: "missing".into(),
        };
        let lacking = ScriptedService::new(vec![vec![StreamEvent::Broken(missing, error)]]);
        let followed = follow_on(&lacking, LONG, false).unwrap();
        assert_eq!(
            followed.verdict,
            Verdict::Missing(vec![Digest::new(&hash, 12).unwrap()])
        );
        assert_eq!(lacking.calls(), ["Execute"]);
    }

    #[test]
    fn a_cancel_cancels_the_named_operation_on_the_server() {
        let service = ScriptedService::new(vec![vec![queued()]]);
        assert!(matches!(
            follow_on(&service, LONG, true),
            Err(ExecutionError::Cancelled)
        ));
        assert_eq!(service.calls(), ["Execute", "Cancel operations/1"]);
    }

    #[test]
    fn an_action_queued_past_the_timeout_is_cancelled_as_unschedulable() {
        let mut events = vec![queued()];
        events.extend((0..500).map(|_| StreamEvent::Quiet));
        let service = ScriptedService::new(vec![events]);
        let followed = follow_on(&service, Duration::from_millis(50), false).unwrap();
        assert_eq!(followed.verdict, Verdict::Unschedulable);
        assert!(followed.queued >= Duration::from_millis(50));
        assert_eq!(service.calls(), ["Execute", "Cancel operations/1"]);
    }

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
