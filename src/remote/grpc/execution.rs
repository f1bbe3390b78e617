//! The REAPI Execution service and the longrunning Operations service, as blocking
//! primitives: `Execute` and `WaitExecution` streams of `Operation`s read on the client's
//! runtime and handed to the caller's thread one at a time with a short wait (so the
//! caller can poll for cancellation between reads), and a bounded `CancelOperation`.
//! What the operations mean is `remote::execute`'s business; this is its
//! `ExecutionService`, with tonic's statuses turned into `google.rpc.Status` here.

use std::future::Future;
use std::time::Duration;

use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use bazel_remote_apis::google::longrunning::{CancelOperationRequest, Operation};
use bazel_remote_apis::google::rpc;
use prost::Message;
use tokio::sync::mpsc;
use tonic::codec::Streaming;
use tonic::{Request, Response, Status};

use super::GrpcClient;
use crate::remote::digest::Digest;
use crate::remote::error::RemoteError;
use crate::remote::execute::{ExecutionService, StreamEvent};

/// Operations buffered between the runtime and the caller's thread.
const QUEUE: usize = 8;

/// One open `Execute` or `WaitExecution` stream, read on the client's runtime. Dropping it
/// ends the call.
pub(crate) struct OperationStream {
    receiver: mpsc::Receiver<Result<Operation, Status>>,
    task: tokio::task::JoinHandle<()>,
    /// Whether this is a `WaitExecution` (a resumption) rather than an `Execute`.
    resumed: bool,
}

impl Drop for OperationStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl GrpcClient {
    /// Sends `Execute` for an action; the stream follows its operation.
    fn execute_stream(
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
    fn wait_execution_stream(&self, name: &str) -> OperationStream {
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

    /// Asks the server to cancel an operation, waiting at most `limit` for its answer.
    fn cancel_operation(&self, name: &str, limit: Duration) -> Result<(), RemoteError> {
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

/// A failed call's status as REAPI carries one (`google.rpc.Status`): its details, when
/// the server sent any, are one.
fn rpc_status(status: &Status) -> rpc::Status {
    rpc::Status {
        code: status.code() as i32,
        message: status.message().to_owned(),
        details: rpc::Status::decode(status.details())
            .map(|s| s.details)
            .unwrap_or_default(),
    }
}

impl ExecutionService for GrpcClient {
    type Stream = OperationStream;

    fn name(&self) -> &str {
        GrpcClient::name(self)
    }

    fn silence_limit(&self) -> Duration {
        self.endpoint_ref().timeout()
    }

    fn execute(&self, action: &Digest, skip: bool) -> Result<OperationStream, RemoteError> {
        self.execute_stream(action, skip)
    }

    fn wait_execution(&self, name: &str) -> OperationStream {
        self.wait_execution_stream(name)
    }

    fn next_event(&self, stream: &mut OperationStream, wait: Duration) -> StreamEvent {
        match self.within(wait, stream.receiver.recv()) {
            Err(_) => StreamEvent::Quiet,
            Ok(None) => StreamEvent::Ended,
            Ok(Some(Ok(operation))) => StreamEvent::Operation(Box::new(operation)),
            Ok(Some(Err(status))) => {
                let call = if stream.resumed {
                    "WaitExecution"
                } else {
                    "Execute"
                };
                StreamEvent::Broken(rpc_status(&status), self.status_error(call, &status))
            }
        }
    }

    fn is_resumption(stream: &OperationStream) -> bool {
        stream.resumed
    }

    fn cancel(&self, name: &str, limit: Duration) -> Result<(), RemoteError> {
        self.cancel_operation(name, limit)
    }

    fn silence_error(&self, call: &'static str) -> RemoteError {
        self.timeout_error(call)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failed call's details (a `google.rpc.Status` the server encoded) reach the
    /// execution client as the status it reads.
    #[test]
    fn a_failed_calls_details_are_kept() {
        let details = rpc::Status {
            code: 9,
            message: "missing".into(),
            details: vec![bazel_remote_apis::google::protobuf::Any {
                type_url: "type.googleapis.com/google.rpc.PreconditionFailure".into(),
                value: vec![1, 2, 3],
            }],
        };
        let call = Status::with_details(
            tonic::Code::FailedPrecondition,
            "missing",
            details.encode_to_vec().into(),
        );
        let status = rpc_status(&call);
        assert_eq!(status.code, 9);
        assert_eq!(status.message, "missing");
        assert_eq!(status.details, details.details);
        let bare = rpc_status(&Status::unavailable("gone"));
        assert_eq!((bare.code, bare.details.len()), (14, 0));
    }
}
