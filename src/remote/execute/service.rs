//! What following an execution needs of a server: the REAPI Execution and Operations
//! services as blocking calls. The gRPC facade (`remote::grpc`) implements it; the test
//! double `fake::ScriptedService` drives the unit tests of `follow` (broken streams,
//! resumption, a lost operation, cancellation) without a server.

use std::time::Duration;

use bazel_remote_apis::google::longrunning::Operation;
use bazel_remote_apis::google::rpc;

use crate::remote::digest::Digest;
use crate::remote::error::RemoteError;

/// What one read of an operation stream gave.
#[derive(Debug)]
pub(crate) enum StreamEvent {
    /// The server sent the operation's state.
    Operation(Box<Operation>),
    /// Nothing arrived within the wait.
    Quiet,
    /// The server closed the stream.
    Ended,
    /// The call failed (the connection broke, or the server refused the call): its status
    /// (code, message, details) and the error it is for the caller.
    Broken(rpc::Status, RemoteError),
}

/// The calls of the Execution and Operations services that `follow` makes.
pub(crate) trait ExecutionService: Send + Sync {
    /// One open `Execute` or `WaitExecution` stream. Dropping it ends the call.
    type Stream;
    /// The server, as messages name it.
    fn name(&self) -> &str;
    /// The longest silence of a stream before it counts as broken.
    fn silence_limit(&self) -> Duration;
    /// Sends `Execute` for an action; the stream follows its operation.
    fn execute(
        &self,
        action: &Digest,
        skip_cache_lookup: bool,
    ) -> Result<Self::Stream, RemoteError>;
    /// Sends `WaitExecution` for an operation the server named earlier.
    fn wait_execution(&self, name: &str) -> Self::Stream;
    /// Waits at most `wait` for the stream's next message.
    fn next_event(&self, stream: &mut Self::Stream, wait: Duration) -> StreamEvent;
    /// Whether the stream is a `WaitExecution` (a resumption) rather than an `Execute`.
    fn is_resumption(stream: &Self::Stream) -> bool;
    /// Asks the server to cancel an operation, waiting at most `limit` for its answer.
    fn cancel(&self, name: &str, limit: Duration) -> Result<(), RemoteError>;
    /// The error of a stream silent for longer than `silence_limit`.
    fn silence_error(&self, call: &'static str) -> RemoteError;
}

#[cfg(test)]
pub(crate) mod fake {
    //! A TEST DOUBLE of an execution server: each `Execute` or `WaitExecution` plays the
    //! next scripted stream; every call is recorded.

    use std::collections::VecDeque;
    use std::sync::Mutex;
    use std::time::Duration;

    use super::{ExecutionService, StreamEvent};
    use crate::remote::digest::Digest;
    use crate::remote::error::RemoteError;

    /// What a scripted stream sends, in order; after the last, it ends.
    pub(crate) type Script = Vec<StreamEvent>;

    #[derive(Default)]
    pub(crate) struct ScriptedService {
        streams: Mutex<VecDeque<Script>>,
        /// "Execute", "WaitExecution NAME", "Cancel NAME", in order.
        calls: Mutex<Vec<String>>,
    }

    /// A scripted stream being played.
    pub(crate) struct Played {
        events: VecDeque<StreamEvent>,
        resumed: bool,
    }

    impl ScriptedService {
        pub(crate) fn new(streams: Vec<Script>) -> ScriptedService {
            ScriptedService {
                streams: Mutex::new(streams.into()),
                calls: Mutex::new(Vec::new()),
            }
        }

        pub(crate) fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }

        fn play(&self, call: String, resumed: bool) -> Played {
            self.calls.lock().unwrap().push(call);
            let events = self.streams.lock().unwrap().pop_front().unwrap_or_default();
            Played {
                events: events.into(),
                resumed,
            }
        }
    }

    impl ExecutionService for ScriptedService {
        type Stream = Played;

        fn name(&self) -> &str {
            "fake"
        }

        fn silence_limit(&self) -> Duration {
            Duration::from_secs(60)
        }

        fn execute(&self, _action: &Digest, _skip: bool) -> Result<Played, RemoteError> {
            Ok(self.play("Execute".into(), false))
        }

        fn wait_execution(&self, name: &str) -> Played {
            self.play(format!("WaitExecution {name}"), true)
        }

        fn next_event(&self, stream: &mut Played, wait: Duration) -> StreamEvent {
            let event = stream.events.pop_front().unwrap_or(StreamEvent::Ended);
            if matches!(event, StreamEvent::Quiet) {
                std::thread::sleep(wait.min(Duration::from_millis(10)));
            }
            event
        }

        fn is_resumption(stream: &Played) -> bool {
            stream.resumed
        }

        fn cancel(&self, name: &str, _limit: Duration) -> Result<(), RemoteError> {
            self.calls.lock().unwrap().push(format!("Cancel {name}"));
            Ok(())
        }

        fn silence_error(&self, call: &'static str) -> RemoteError {
            RemoteError::Timeout {
                endpoint: "fake".into(),
                operation: call,
                timeout: self.silence_limit(),
            }
        }
    }
}
