//! The shared cache of stage outputs on a remote server, behind a blocking facade: the
//! Remote Execution API v2 over gRPC (`grpc://`, `grpcs://`: Capabilities, ActionCache,
//! ContentAddressableStorage with FindMissingBlobs and the batch calls, ByteStream for
//! large blobs) and Bazel's HTTP cache protocol (`http://`, `https://`: `GET/PUT/HEAD
//! {prefix}/ac/<sha256>` and `{prefix}/cas/<sha256>`). The engine is threads, not async:
//! the gRPC client owns a small tokio runtime and every call blocks its caller within a
//! bounded timeout.
//!
//! `stage` turns a stage into a REAPI Action (its digest is the action-cache key; pochi's
//! stage key is the salt); `RemoteCache` looks entries up and uploads them; `RemoteTier`
//! is the remote tier of a build's `cache::OutputCache`. `RemoteExecutor` runs a stage's
//! Action on a farm through the Execution service (`execute`). Every downloaded blob is
//! verified against its digest before it is used (`verify`).

mod action;
mod cache;
mod digest;
mod endpoint;
mod error;
mod execute;
mod grpc;
mod http;
mod results;
mod stage;
mod status;
pub use status::Code;
mod tier;
mod tls;
mod tree;
mod verify;

use std::path::Path;

pub use action::{
    ActionSpec, Blob, CommandSpec, InputFile, build_action, build_command, build_input_tree,
};
pub use bazel_remote_apis::build::bazel::remote::execution::v2 as proto;
pub use cache::{Lookup, RemoteCache};
pub use digest::{Digest, DigestFunction};
pub use endpoint::Endpoint;
pub(crate) use endpoint::Protocol;
pub(crate) use error::EndpointError;
pub use error::{ExecutionError, RemoteError};
pub use execute::{Executed, ExecutionJob, ExecutionPhase, RemoteExecutor};
pub use grpc::GrpcClient;
pub use http::HttpClient;
pub use results::RemoteMiss;
pub use stage::{StageAction, input_root_files, stage_action};
pub(crate) use tier::RemoteTier;
pub(crate) use tls::{TlsPaths, TlsSettings};

/// What a server says it supports (its Capabilities; fixed for the HTTP protocol).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// The digest functions the server offers that pochi speaks.
    pub digest_functions: Vec<DigestFunction>,
    /// The largest batch request in bytes; 0 when there are no batch calls.
    pub max_batch_total_size: u64,
    /// Whether clients may write action-cache entries.
    pub action_cache_update: bool,
    /// Whether the server executes actions.
    pub execution: bool,
}

/// A content-addressed store with an action cache: the REAPI gRPC services or Bazel's
/// HTTP cache. Blocking; safe to share between threads.
pub trait CacheBackend: Send + Sync {
    /// The server this talks to.
    fn endpoint(&self) -> &Endpoint;

    /// Asks the server what it supports (a cheap check that it is there).
    fn capabilities(&self) -> Result<Capabilities, RemoteError>;

    /// The digest function to use with this server: BLAKE3 where offered, else SHA-256.
    fn digest_function(&self) -> Result<DigestFunction, RemoteError>;

    /// The digests the store lacks, in the order given.
    fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>, RemoteError>;

    /// Uploads a file, streamed from disk; a file that no longer matches its digest is
    /// `LocalFileChanged` and stores nothing.
    fn upload_file(&self, path: &Path, digest: &Digest) -> Result<(), RemoteError>;

    /// Uploads bytes in memory.
    fn upload_bytes(&self, bytes: &[u8], digest: &Digest) -> Result<(), RemoteError>;

    /// Uploads many small blobs (batched where the protocol allows).
    fn upload_blobs(&self, blobs: &[Blob]) -> Result<(), RemoteError> {
        for blob in blobs {
            self.upload_bytes(&blob.bytes, &blob.digest)?;
        }
        Ok(())
    }

    /// Downloads a blob to `dest` through a temporary file beside it, verified while it
    /// streams and renamed only when it matches; mode 0644.
    fn download_to_file(&self, digest: &Digest, dest: &Path) -> Result<(), RemoteError>;

    /// Downloads a (small) blob into memory, verified.
    fn download_bytes(&self, digest: &Digest) -> Result<Vec<u8>, RemoteError>;

    /// The action-cache entry for an action, if there is one.
    fn get_action_result(
        &self,
        action: &Digest,
    ) -> Result<Option<proto::ActionResult>, RemoteError>;

    /// Writes an action-cache entry (upload its blobs first: the entry goes last).
    fn update_action_result(
        &self,
        action: &Digest,
        result: &proto::ActionResult,
    ) -> Result<(), RemoteError>;
}

/// Connects to the server an endpoint names (lazily: nothing is dialed until the first
/// call, so this fails only on a bad TLS setup or a runtime that cannot start).
pub fn connect(endpoint: &Endpoint) -> Result<Box<dyn CacheBackend>, RemoteError> {
    Ok(match endpoint.protocol() {
        Protocol::Grpc { .. } => Box::new(GrpcClient::connect(endpoint)?),
        Protocol::Http { .. } => Box::new(HttpClient::connect(endpoint)?),
    })
}

/// Whether a digest is the empty blob, which every store has without asking.
pub(crate) fn is_empty_blob(digest: &Digest, function: DigestFunction) -> bool {
    digest.size() == 0 && *digest == Digest::of_bytes(function, b"")
}
