//! The Execution service: `Execute` and `WaitExecution` streams as blocking iterators of
//! progress (QUEUED, EXECUTING, the worker's name), `execute` that follows one action to
//! its result through dropped streams (resumed with WaitExecution), a queue timeout that
//! cancels the operation, and FAILED_PRECONDITION for missing inputs as `MissingBlobs`.

use std::time::{Duration, Instant};

use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use bazel_remote_apis::google::longrunning::{CancelOperationRequest, Operation, operation};
use prost::Message;
use tokio::sync::mpsc;
use tonic::{Code, Status};

use super::{GrpcClient, missing_in_status};
use crate::remote::digest::Digest;
use crate::remote::error::RemoteError;

/// Where an operation stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExecutionStage {
    Unknown,
    CacheCheck,
    Queued,
    Executing,
    Completed,
}

impl ExecutionStage {
    fn from_proto(value: i32) -> Self {
        use re::execution_stage::Value;
        match Value::try_from(value) {
            Ok(Value::CacheCheck) => ExecutionStage::CacheCheck,
            Ok(Value::Queued) => ExecutionStage::Queued,
            Ok(Value::Executing) => ExecutionStage::Executing,
            Ok(Value::Completed) => ExecutionStage::Completed,
            _ => ExecutionStage::Unknown,
        }
    }

    /// Still waiting for a worker.
    fn waiting(self) -> bool {
        matches!(
            self,
            ExecutionStage::Unknown | ExecutionStage::CacheCheck | ExecutionStage::Queued
        )
    }
}

/// One update of a running operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecutionProgress {
    /// The operation's name (for `wait_execution` and `cancel_operation`).
    pub operation: String,
    pub stage: ExecutionStage,
    /// The worker's name, when the server tells it (partial execution metadata).
    pub worker: Option<String>,
}

/// What an operation stream yields.
#[derive(Clone, Debug)]
pub enum OperationEvent {
    Progress(ExecutionProgress),
    /// The operation finished; `status` inside is checked by `execute`, not here.
    Done {
        operation: String,
        response: Box<re::ExecuteResponse>,
    },
}

/// How `execute` follows an action.
#[derive(Clone, Debug)]
pub struct ExecuteOptions {
    /// Run even if the action cache has a result.
    pub skip_cache: bool,
    /// Give up (and cancel) when no worker took the action within this long.
    pub queue_timeout: Option<Duration>,
    /// A stream silent this long counts as dropped and is resumed with WaitExecution.
    pub stream_idle_timeout: Duration,
    /// How many times a dropped stream is resumed.
    pub max_resumes: u32,
    /// The action's platform properties, named in a queue-timeout message.
    pub properties: Vec<(String, String)>,
}

impl Default for ExecuteOptions {
    fn default() -> Self {
        ExecuteOptions {
            skip_cache: false,
            queue_timeout: None,
            stream_idle_timeout: Duration::from_secs(120),
            max_resumes: 5,
            properties: Vec::new(),
        }
    }
}

/// A blocking iterator over an `Execute` or `WaitExecution` stream; dropping it drops
/// the stream.
pub struct OperationStream<'a> {
    client: &'a GrpcClient,
    receiver: mpsc::Receiver<Result<Operation, Status>>,
    task: tokio::task::JoinHandle<()>,
    idle: Duration,
    operation: &'static str,
}

/// What waiting on a stream for a while gave.
enum Next {
    Event(OperationEvent),
    /// The server closed the stream without a finished operation.
    Ended,
    /// Nothing arrived in time.
    Silent,
    Failed(RemoteError, Code),
}

impl Drop for OperationStream<'_> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl OperationStream<'_> {
    fn next_within(&mut self, limit: Duration) -> Next {
        let runtime = self.client.runtime();
        match runtime.block_on(tokio::time::timeout(limit, self.receiver.recv())) {
            Err(_) => Next::Silent,
            Ok(None) => Next::Ended,
            Ok(Some(Err(status))) => Next::Failed(
                self.client.status_error(self.operation, &status),
                status.code(),
            ),
            Ok(Some(Ok(operation))) => match decode(self.client, operation) {
                Ok(event) => Next::Event(event),
                Err(e) => Next::Failed(e, Code::Internal),
            },
        }
    }
}

impl Iterator for OperationStream<'_> {
    type Item = Result<OperationEvent, RemoteError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.next_within(self.idle) {
            Next::Event(event) => Some(Ok(event)),
            Next::Ended => None,
            Next::Silent => Some(Err(self.client.timeout_error(self.operation))),
            Next::Failed(e, _) => Some(Err(e)),
        }
    }
}

fn decode(client: &GrpcClient, op: Operation) -> Result<OperationEvent, RemoteError> {
    let malformed = |detail: String| RemoteError::Protocol {
        endpoint: client.name().to_owned(),
        what: "operation",
        detail,
    };
    if op.done {
        let response = match op.result {
            Some(operation::Result::Response(any)) => {
                re::ExecuteResponse::decode(any.value.as_slice())
                    .map_err(|e| malformed(format!("ExecuteResponse: {e}")))?
            }
            Some(operation::Result::Error(status)) => re::ExecuteResponse {
                status: Some(status),
                ..Default::default()
            },
            None => return Err(malformed(format!("{} is done without a result", op.name))),
        };
        return Ok(OperationEvent::Done {
            operation: op.name,
            response: Box::new(response),
        });
    }
    let metadata = match op.metadata {
        Some(any) => re::ExecuteOperationMetadata::decode(any.value.as_slice())
            .map_err(|e| malformed(format!("ExecuteOperationMetadata: {e}")))?,
        None => re::ExecuteOperationMetadata::default(),
    };
    let worker = metadata
        .partial_execution_metadata
        .map(|m| m.worker)
        .filter(|w| !w.is_empty());
    Ok(OperationEvent::Progress(ExecutionProgress {
        operation: op.name,
        stage: ExecutionStage::from_proto(metadata.stage),
        worker,
    }))
}

impl GrpcClient {
    /// Starts executing an action; the stream yields its progress and result.
    pub fn execute_stream(
        &self,
        action: &Digest,
        options: &ExecuteOptions,
    ) -> Result<OperationStream<'_>, RemoteError> {
        let request = re::ExecuteRequest {
            instance_name: self.endpoint_ref().instance().to_owned(),
            skip_cache_lookup: options.skip_cache,
            action_digest: Some(action.to_proto()),
            digest_function: self.function()?.to_proto(),
            ..Default::default()
        };
        let mut client = self.execution.clone();
        Ok(self.operation_stream("Execute", options.stream_idle_timeout, async move {
            client.execute(request).await
        }))
    }

    /// Follows an operation again after its stream dropped.
    pub fn wait_execution(&self, operation: &str, idle: Duration) -> OperationStream<'_> {
        let request = re::WaitExecutionRequest {
            name: operation.to_owned(),
        };
        let mut client = self.execution.clone();
        self.operation_stream("WaitExecution", idle, async move {
            client.wait_execution(request).await
        })
    }

    /// Asks the server to cancel an operation.
    pub fn cancel_operation(&self, operation: &str) -> Result<(), RemoteError> {
        let mut client = self.operations.clone();
        let request = self.request(CancelOperationRequest {
            name: operation.to_owned(),
        });
        self.unary("CancelOperation", async move {
            client.cancel_operation(request).await
        })?;
        Ok(())
    }

    fn operation_stream<F>(
        &self,
        operation: &'static str,
        idle: Duration,
        call: F,
    ) -> OperationStream<'_>
    where
        F: Future<Output = Result<tonic::Response<tonic::Streaming<Operation>>, Status>>
            + Send
            + 'static,
    {
        let (sender, receiver) = mpsc::channel(16);
        let task = self.runtime().spawn(async move {
            let mut stream = match call.await {
                Ok(response) => response.into_inner(),
                Err(status) => {
                    let _ = sender.send(Err(status)).await;
                    return;
                }
            };
            loop {
                let item = match stream.message().await {
                    Ok(Some(op)) => Ok(op),
                    Ok(None) => return,
                    Err(status) => Err(status),
                };
                let failed = item.is_err();
                if sender.send(item).await.is_err() || failed {
                    return;
                }
            }
        });
        OperationStream {
            client: self,
            receiver,
            task,
            idle,
            operation,
        }
    }

    /// Executes an action and waits for its result, reporting progress; resumes dropped
    /// streams with WaitExecution, cancels after the queue timeout. A non-OK status in
    /// the answer is an error (missing inputs: `MissingBlobs`); a command that ran and
    /// exited non-zero is a result, not an error.
    pub fn execute(
        &self,
        action: &Digest,
        options: &ExecuteOptions,
        progress: &mut dyn FnMut(&ExecutionProgress),
    ) -> Result<re::ExecuteResponse, RemoteError> {
        let started = Instant::now();
        let mut stream = self.execute_stream(action, options)?;
        let mut name: Option<String> = None;
        let mut stage = ExecutionStage::Unknown;
        let mut resumes = 0;
        loop {
            let limit = match (options.queue_timeout, stage.waiting()) {
                (Some(queue), true) => queue
                    .saturating_sub(started.elapsed())
                    .min(options.stream_idle_timeout),
                _ => options.stream_idle_timeout,
            };
            let dropped = match stream.next_within(limit) {
                Next::Event(OperationEvent::Done { response, .. }) => {
                    return self.check_response(*response);
                }
                Next::Event(OperationEvent::Progress(update)) => {
                    stage = update.stage;
                    name = Some(update.operation.clone());
                    progress(&update);
                    None
                }
                Next::Silent => Some(self.timeout_error("Execute")),
                Next::Ended => Some(RemoteError::Protocol {
                    endpoint: self.name().to_owned(),
                    what: "Execute stream",
                    detail: "it ended before the operation finished".into(),
                }),
                Next::Failed(e, code) if resumable(code) => Some(e),
                Next::Failed(e, _) => return Err(e),
            };
            if let (Some(queue), true) = (options.queue_timeout, stage.waiting())
                && started.elapsed() >= queue
            {
                if let Some(name) = &name {
                    let _ = self.cancel_operation(name);
                }
                return Err(RemoteError::QueueTimeout {
                    endpoint: self.name().to_owned(),
                    waited: started.elapsed(),
                    properties: options.properties.clone(),
                });
            }
            if let Some(error) = dropped {
                let Some(name) = name.as_deref() else { return Err(error) };
                if resumes >= options.max_resumes {
                    return Err(error);
                }
                resumes += 1;
                tracing::debug!("resuming {name} with WaitExecution after: {error}");
                drop(stream);
                stream = self.wait_execution(name, options.stream_idle_timeout);
            }
        }
    }

    fn check_response(&self, response: re::ExecuteResponse) -> Result<re::ExecuteResponse, RemoteError> {
        let Some(status) = response.status.as_ref().filter(|s| s.code != Code::Ok as i32) else {
            return Ok(response);
        };
        let code = Code::from(status.code);
        let missing = missing_in_status(status);
        if code == Code::FailedPrecondition && !missing.is_empty() {
            return Err(RemoteError::MissingBlobs {
                endpoint: self.name().to_owned(),
                digests: missing,
            });
        }
        Err(RemoteError::Server {
            endpoint: self.name().to_owned(),
            operation: "Execute",
            code: format!("{code:?}"),
            message: status.message.clone(),
        })
    }
}

/// Stream failures after which the operation may still be running on the server.
fn resumable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable | Code::Internal | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
    )
}
