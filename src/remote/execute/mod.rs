//! Remote execution (REAPI Execution service): `RemoteExecutor::execute` runs one
//! stage's Action on a farm and brings back its log and outputs. Blocking, within bounded
//! time, cancellable.
//!
//! The steps: upload what the server lacks (`upload`), `Execute` and follow the
//! operation's stages (`follow`: resumed with `WaitExecution` when the stream breaks,
//! cancelled with `CancelOperation` on a queue timeout or when the caller cancels), then
//! write stdout and stderr into the stage's log (`logs`) and, when the command exited 0,
//! download the outputs, verified, with the cache's own `results::download_result`. A
//! FAILED_PRECONDITION naming MISSING blobs uploads them once more and executes again.

mod follow;
mod logs;
mod operation;
mod service;
mod upload;

pub(crate) use service::{ExecutionService, StreamEvent};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use super::action::InputFile;
use super::digest::DigestFunction;
use super::endpoint::{Endpoint, Protocol};
use super::error::{EndpointError, ExecutionError, RemoteError, properties};
use super::grpc::GrpcClient;
use super::proto as re;
use super::results::download_result;
use super::stage::StageAction;
use crate::remote::status::Code;
use operation::{Refusal, Verdict};

/// A client of one server's Execution service (and its CAS). Safe to share between
/// threads: every stage of a build executes through the same one.
#[derive(Clone)]
pub struct RemoteExecutor {
    grpc: Arc<GrpcClient>,
}

/// One action to run remotely.
pub struct ExecutionJob<'a> {
    /// Its digest, digest function, declared outputs (name, path in the input root) and
    /// the Action, Command and Directory blobs.
    pub action: &'a StageAction,
    /// Every file of the input root, with where it is on this machine.
    pub files: &'a [(InputFile, PathBuf)],
    /// Where output `name` is written.
    pub dest_for: &'a dyn Fn(&str) -> PathBuf,
    /// How long the operation may stay queued before it is cancelled as unschedulable.
    pub queue_timeout: Duration,
    /// The command's stdout, then its stderr, are written here.
    pub log: &'a Path,
    /// Whether the server may answer from its action cache.
    pub skip_cache_lookup: bool,
    /// Outputs fetched even when the command fails (a worker's answer file, which says
    /// why), when the worker sent them; best effort.
    pub kept_on_failure: &'a [&'a str],
}

/// Where an execution is, for progress reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExecutionPhase {
    Uploading,
    Queued,
    Executing,
    Downloading,
}

/// An action that ran (or came from the server's cache), whatever its exit code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Executed {
    pub exit_code: i32,
    /// The worker that ran it (`ExecutedActionMetadata.worker`; empty if not named).
    pub worker: String,
    /// Whether the server answered from its action cache.
    pub cached: bool,
    /// The last lines of stderr (at most 20, each at most 1,000 bytes), for messages.
    pub stderr_tail: Vec<String>,
    /// Blobs uploaded and their bytes.
    pub uploaded: (u64, u64),
    /// Blobs downloaded (log and outputs) and their bytes.
    pub downloaded: (u64, u64),
    /// The server's message (`ExecuteResponse.message`).
    pub message: String,
    /// How many times the operation's stream broke and was resumed with `WaitExecution`.
    pub resumed: u32,
}

impl RemoteExecutor {
    /// Prepares a client of the server's Execution service (lazily: nothing is dialed
    /// before the first call).
    pub fn connect(endpoint: &Endpoint) -> Result<RemoteExecutor, RemoteError> {
        if let Protocol::Http { .. } = endpoint.protocol() {
            return Err(EndpointError::ExecutorScheme {
                url: endpoint.to_string(),
            }
            .into());
        }
        Ok(RemoteExecutor {
            grpc: Arc::new(GrpcClient::connect(endpoint)?),
        })
    }

    pub fn endpoint(&self) -> &Endpoint {
        self.grpc.endpoint_ref()
    }

    /// BLAKE3 where the server offers it, else SHA-256 (as for the cache).
    pub fn digest_function(&self) -> Result<DigestFunction, RemoteError> {
        self.grpc.function()
    }

    /// Asks the server's Capabilities whether it executes actions.
    pub fn check(&self) -> Result<(), RemoteError> {
        if self.grpc.fetch_capabilities()?.execution {
            Ok(())
        } else {
            Err(RemoteError::NoExecution {
                endpoint: self.grpc.name().to_owned(),
            })
        }
    }

    /// Runs one action remotely and downloads its log and, when it exited 0, its
    /// outputs. Blocking; returns within bounded time (the queue timeout while queued,
    /// the action's own run while it executes); `cancel` is polled at least every 200 ms.
    pub fn execute(
        &self,
        job: &ExecutionJob,
        cancel: &AtomicBool,
        progress: &dyn Fn(ExecutionPhase),
    ) -> Result<Executed, ExecutionError> {
        self.check_function(job.action)?;
        progress(ExecutionPhase::Uploading);
        let mut uploaded = upload::upload_missing(&self.grpc, job, cancel)?;
        let mut uploaded_again = false;
        let mut resumed = 0;
        loop {
            let followed = follow::run(&*self.grpc, job, cancel, progress)?;
            resumed += followed.resumed;
            let response = match followed.verdict {
                Verdict::Ran(response) => response,
                Verdict::Missing(digests) if !uploaded_again => {
                    tracing::debug!(
                        "the server lacks {} blob(s); sending them again",
                        digests.len()
                    );
                    uploaded_again = true;
                    progress(ExecutionPhase::Uploading);
                    let again = upload::upload_again(&self.grpc, job, &digests, cancel)?;
                    uploaded = (uploaded.0 + again.0, uploaded.1 + again.1);
                    continue;
                }
                Verdict::Missing(digests) => return Err(self.still_missing(&digests)),
                Verdict::Unschedulable => {
                    return Err(ExecutionError::Unschedulable {
                        waited: followed.queued,
                        platform: job.action.platform.clone(),
                    });
                }
                Verdict::Refused(refusal, response) => {
                    return Err(self.refused(job, refusal, response.as_deref()));
                }
            };
            let mut executed = self.finish(job, &response, progress)?;
            executed.uploaded = uploaded;
            executed.resumed = resumed;
            return Ok(executed);
        }
    }

    fn check_function(&self, action: &StageAction) -> Result<(), RemoteError> {
        let function = self.grpc.function()?;
        if function == action.function {
            return Ok(());
        }
        Err(RemoteError::UnsupportedDigestFunction {
            endpoint: self.grpc.name().to_owned(),
            function: action.function.name(),
            offered: function.name().to_owned(),
        })
    }

    /// The log, then (exit code 0) the outputs.
    fn finish(
        &self,
        job: &ExecutionJob,
        response: &re::ExecuteResponse,
        progress: &dyn Fn(ExecutionPhase),
    ) -> Result<Executed, ExecutionError> {
        let result = response.result.as_ref().ok_or_else(|| {
            ExecutionError::BadResult("the server's answer has no ActionResult".into())
        })?;
        progress(ExecutionPhase::Downloading);
        let logged = logs::write_log(&*self.grpc, result, job.log)?;
        let mut downloaded = logged.downloaded;
        if result.exit_code != 0 {
            self.fetch_kept_on_failure(job, result);
        } else {
            match download_result(&*self.grpc, job.action, result, job.dest_for)? {
                Ok(outputs) => {
                    downloaded.0 += outputs.files;
                    downloaded.1 += outputs.bytes;
                }
                Err(miss) => {
                    return Err(ExecutionError::BadResult(format!(
                        "the outputs the worker sent do not match the action: {miss}"
                    )));
                }
            }
        }
        Ok(Executed {
            exit_code: result.exit_code,
            worker: result
                .execution_metadata
                .as_ref()
                .map(|m| m.worker.clone())
                .unwrap_or_default(),
            cached: response.cached_result,
            stderr_tail: logged.stderr_tail,
            uploaded: (0, 0),
            downloaded,
            message: response.message.clone(),
            resumed: 0,
        })
    }

    /// After a failed command: the outputs the job keeps on failure, each verified; one
    /// that is absent or fails to download is left out (the failure is told anyway).
    fn fetch_kept_on_failure(&self, job: &ExecutionJob, result: &re::ActionResult) {
        for name in job.kept_on_failure {
            let Some((_, path)) = job.action.outputs.iter().find(|(n, _)| n == name) else {
                continue;
            };
            let Some(file) = result.output_files.iter().find(|f| &f.path == path) else {
                continue;
            };
            let fetched = file
                .digest
                .as_ref()
                .ok_or_else(|| RemoteError::InvalidDigest {
                    digest: String::new(),
                    reason: format!("output `{path}` has no digest"),
                })
                .and_then(super::Digest::from_proto)
                .and_then(|digest| {
                    super::CacheBackend::download_to_file(
                        &*self.grpc,
                        &digest,
                        &(job.dest_for)(name),
                    )
                });
            if let Err(error) = fetched {
                tracing::debug!("output `{path}` of the failed action not fetched: {error}");
            }
        }
    }

    /// A refused execution: its log is written when the answer carries one, and a
    /// FAILED_PRECONDITION without missing blobs names the platform (an unknown
    /// property key is refused that way).
    fn refused(
        &self,
        job: &ExecutionJob,
        refusal: Refusal,
        response: Option<&re::ExecuteResponse>,
    ) -> ExecutionError {
        if let Some(result) = response.and_then(|r| r.result.as_ref())
            && let Err(error) = logs::write_log(&*self.grpc, result, job.log)
        {
            tracing::debug!("no log of the failed remote action: {error}");
        }
        let mut message = refusal.message;
        if refusal.code == Code::FailedPrecondition {
            message.push_str(&format!(
                "; the action asks for {}: check that the server knows every property key \
                 (e.g. BuildGrid's match-property-keys)",
                properties(&job.action.platform)
            ));
        }
        ExecutionError::Failed {
            endpoint: self.grpc.name().to_owned(),
            code: refusal.code,
            message,
        }
    }

    fn still_missing(&self, digests: &[super::Digest]) -> ExecutionError {
        let names: Vec<String> = digests.iter().map(|d| d.to_string()).collect();
        ExecutionError::Failed {
            endpoint: self.grpc.name().to_owned(),
            code: Code::FailedPrecondition,
            message: format!(
                "it still lacks blob(s) {} after they were sent again; its storage may be \
                 dropping blobs (check its CAS)",
                names.join(", ")
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_http_cache_url_is_no_executor() {
        let endpoint = Endpoint::parse("http://127.0.0.1:9/cache").unwrap();
        let Err(error) = RemoteExecutor::connect(&endpoint) else {
            panic!("an HTTP URL was taken for an executor");
        };
        let text = error.to_string();
        assert!(text.contains("grpc://HOST:PORT"), "{text}");
        let endpoint = Endpoint::parse("grpc://127.0.0.1:9").unwrap();
        let executor = RemoteExecutor::connect(&endpoint).unwrap();
        assert_eq!(executor.endpoint(), &endpoint);
    }
}
