//! The REAPI Execution service and the longrunning Operations service, as blocking
//! primitives: `Execute` and `WaitExecution` streams of `Operation`s read on the client's
//! runtime and handed to the caller's thread one at a time with a short wait (so the
//! caller can poll for cancellation between reads), and a bounded `CancelOperation`.
//! What the operations mean is `remote::execute`'s business.

use std::future::Future;
use std::time::Duration;

use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use bazel_remote_apis::google::longrunning::{CancelOperationRequest, Operation};
use tokio::sync::mpsc;
use tonic::codec::Streaming;
use tonic::{Request, Response, Status};

use super::GrpcClient;
use crate::remote::digest::Digest;
use crate::remote::error::RemoteError;

/// Operations buffered between the runtime and the caller's thread.
const QUEUE: usize = 8;

/// One open `Execute` or `WaitExecution` stream. Dropping it ends the call.
pub(crate) struct OperationStream {
    receiver: mpsc::Receiver<Result<Operation, Status>>,
    task: tokio::task::JoinHandle<()>,
    /// Whether this is a `WaitExecution` (a resumption) rather than an `Execute`.
    pub(crate) resumed: bool,
}

impl Drop for OperationStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What one read of an operation stream gave.
#[derive(Debug)]
pub(crate) enum StreamEvent {
    /// The server sent the operation's state.
    Operation(Box<Operation>),
    /// Nothing arrived within the wait.
    Quiet,
    /// The server closed the stream.
    Ended,
    /// The call failed (the connection broke, or the server refused the call).
    Broken(Status),
}

impl GrpcClient {
    /// Sends `Execute` for an action; the stream follows its operation.
    pub(crate) fn execute_stream(
        &self,
        action: &Digest,
        skip_cache_lookup: bool,
    ) -> Result<OperationStream, RemoteError> {
        let request = re::ExecuteRequest {
            instance_name: self.endpoint_ref().instance().to_owned(),
            skip_cache_lookup,
            action_digest: Some(action.to_proto()),
            execution_policy: None,
            results_cache_policy: None,
            digest_function: self.function()?.to_proto(),
            ..Default::default()
        };
        let mut client = self.execution.clone();
        // No deadline on the call (it would cut a long action): each read is timed.
        let request = Request::new(request);
        Ok(self.spawn_stream(false, async move { client.execute(request).await }))
    }

    /// Sends `WaitExecution` for an operation the server named earlier.
    pub(crate) fn wait_execution_stream(&self, name: &str) -> OperationStream {
        let request = Request::new(re::WaitExecutionRequest {
            name: name.to_owned(),
        });
        let mut client = self.execution.clone();
        self.spawn_stream(true, async move { client.wait_execution(request).await })
    }

    fn spawn_stream<F>(&self, resumed: bool, open: F) -> OperationStream
    where
        F: Future<Output = Result<Response<Streaming<Operation>>, Status>> + Send + 'static,
    {
        let (sender, receiver) = mpsc::channel(QUEUE);
        let task = self.runtime().spawn(async move {
            let mut stream = match open.await {
                Ok(response) => response.into_inner(),
                Err(status) => {
                    let _ = sender.send(Err(status)).await;
                    return;
                }
            };
            loop {
                let next = stream.message().await;
                let stop = !matches!(next, Ok(Some(_)));
                let item = match next {
                    Ok(Some(operation)) => Ok(operation),
                    Ok(None) => return,
                    Err(status) => Err(status),
                };
                if sender.send(item).await.is_err() || stop {
                    return;
                }
            }
        });
        OperationStream {
            receiver,
            task,
            resumed,
        }
    }

    /// Waits at most `wait` for the stream's next message.
    pub(crate) fn next_event(&self, stream: &mut OperationStream, wait: Duration) -> StreamEvent {
        match self.within(wait, stream.receiver.recv()) {
            Err(_) => StreamEvent::Quiet,
            Ok(None) => StreamEvent::Ended,
            Ok(Some(Ok(operation))) => StreamEvent::Operation(Box::new(operation)),
            Ok(Some(Err(status))) => StreamEvent::Broken(status),
        }
    }

    /// Asks the server to cancel an operation, waiting at most `limit` for its answer.
    pub(crate) fn cancel_operation(&self, name: &str, limit: Duration) -> Result<(), RemoteError> {
        let mut request = Request::new(CancelOperationRequest {
            name: name.to_owned(),
        });
        request.set_timeout(limit);
        let mut client = self.operations.clone();
        match self.within(limit, async move { client.cancel_operation(request).await }) {
            Err(_) => Err(RemoteError::Timeout {
                endpoint: self.name().to_owned(),
                operation: "CancelOperation",
                timeout: limit,
            }),
            Ok(Err(status)) => Err(self.status_error("CancelOperation", &status)),
            Ok(Ok(_)) => Ok(()),
        }
    }
}
