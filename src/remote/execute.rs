//! STUB (replaced by the Execution client from branch `exec` at merge): the API the driver
//! calls to run an action on a REAPI farm.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use super::action::InputFile;
use super::digest::DigestFunction;
use super::endpoint::Endpoint;
use super::error::RemoteError;
use super::stage::StageAction;

pub struct RemoteExecutor {
    endpoint: Endpoint,
}

impl RemoteExecutor {
    pub fn connect(endpoint: &Endpoint) -> Result<RemoteExecutor, RemoteError> {
        Ok(RemoteExecutor {
            endpoint: endpoint.clone(),
        })
    }
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }
    pub fn digest_function(&self) -> Result<DigestFunction, RemoteError> {
        Ok(DigestFunction::Sha256)
    }
    pub fn check(&self) -> Result<(), RemoteError> {
        Ok(())
    }
    pub fn execute(
        &self,
        _job: &ExecutionJob,
        _cancel: &AtomicBool,
        _progress: &dyn Fn(ExecutionPhase),
    ) -> Result<Executed, ExecutionError> {
        Err(ExecutionError::BadResult("stub".into()))
    }
}

pub struct ExecutionJob<'a> {
    pub action: &'a StageAction,
    pub files: &'a [(InputFile, PathBuf)],
    pub dest_for: &'a dyn Fn(&str) -> PathBuf,
    pub queue_timeout: Duration,
    pub log: &'a Path,
    pub skip_cache_lookup: bool,
}

pub enum ExecutionPhase {
    Uploading,
    Queued,
    Executing,
    Downloading,
}

pub struct Executed {
    pub exit_code: i32,
    pub worker: String,
    pub cached: bool,
    pub stderr_tail: Vec<String>,
    pub uploaded: (u64, u64),
    pub downloaded: (u64, u64),
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecutionError {
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error("unschedulable after {waited:?}: {platform:?}")]
    Unschedulable {
        waited: Duration,
        platform: Vec<(String, String)>,
    },
    #[error("cancelled")]
    Cancelled,
    #[error("failed: {message}")]
    Failed { code: i32, message: String },
    #[error("bad result: {0}")]
    BadResult(String),
}
