//! What an execution sends before it asks the server to run anything: the Action, its
//! Command and input-root Directory messages, and every input file, each once by digest.
//! FindMissingBlobs decides what is sent (a tool file such as the pochi binary or a
//! worker script goes up once for every stage); small files go in batches read from disk
//! a batch at a time, large ones stream from disk over ByteStream.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::remote::action::Blob;
use crate::remote::digest::Digest;
use crate::remote::error::ExecutionError;
use crate::remote::grpc::GrpcClient;
use crate::remote::{CacheBackend, is_empty_blob};

use super::ExecutionJob;

/// Where a blob's bytes are.
#[derive(Clone, Copy)]
pub(crate) enum Source<'a> {
    Message(&'a Blob),
    File(&'a Path),
}

/// Every blob an execution needs on the server, by digest (a digest named twice is one
/// blob).
pub(crate) fn sources<'a>(job: &'a ExecutionJob) -> BTreeMap<Digest, Source<'a>> {
    let mut all = BTreeMap::new();
    for blob in &job.action.blobs {
        all.insert(blob.digest.clone(), Source::Message(blob));
    }
    for (file, path) in job.files {
        all.entry(file.digest.clone())
            .or_insert(Source::File(path.as_path()));
    }
    all
}

/// Sends the blobs the server lacks; returns how many and their bytes.
pub(crate) fn upload_missing(
    grpc: &GrpcClient,
    job: &ExecutionJob,
    cancel: &AtomicBool,
) -> Result<(u64, u64), ExecutionError> {
    let all = sources(job);
    let wanted: Vec<Digest> = all.keys().cloned().collect();
    let missing = grpc.find_missing(&wanted)?;
    let chosen = missing
        .iter()
        .filter_map(|digest| all.get(digest).map(|source| (digest, *source)))
        .collect::<Vec<_>>();
    send(grpc, &chosen, cancel)
}

/// Sends these blobs again (the server said it lacks them after all); a digest that is
/// none of the execution's blobs fails.
pub(crate) fn upload_again(
    grpc: &GrpcClient,
    job: &ExecutionJob,
    digests: &[Digest],
    cancel: &AtomicBool,
) -> Result<(u64, u64), ExecutionError> {
    let all = sources(job);
    let mut chosen = Vec::new();
    for digest in digests {
        match all.get_key_value(digest) {
            Some((digest, source)) => chosen.push((digest, *source)),
            None => {
                return Err(ExecutionError::BadResult(format!(
                    "the server asks for blob {digest}, which is no input of the action"
                )));
            }
        }
    }
    chosen.sort_by(|a, b| a.0.cmp(b.0));
    chosen.dedup_by(|a, b| a.0 == b.0);
    send(grpc, &chosen, cancel)
}

/// Uploads: messages and small files in batches (at most about one batch of bytes read
/// at a time), large files streamed from disk.
fn send(
    grpc: &GrpcClient,
    chosen: &[(&Digest, Source)],
    cancel: &AtomicBool,
) -> Result<(u64, u64), ExecutionError> {
    let function = grpc.function()?;
    let limit = grpc.batch_limit()?;
    let mut sent = (0, 0);
    let mut batch: Vec<Blob> = Vec::new();
    let mut batch_bytes = 0;
    for (digest, source) in chosen {
        if cancel.load(Ordering::Relaxed) {
            return Err(ExecutionError::Cancelled);
        }
        if is_empty_blob(digest, function) {
            continue;
        }
        sent.0 += 1;
        sent.1 += digest.size();
        let batched = match source {
            Source::Message(blob) => Some((*blob).clone()),
            Source::File(path) if digest.size() < limit => {
                Some(Blob::of_file(path, digest, function)?)
            }
            Source::File(path) => {
                grpc.upload_file(path, digest)?;
                None
            }
        };
        if let Some(blob) = batched {
            batch_bytes += blob.digest.size();
            batch.push(blob);
            if batch_bytes >= limit {
                grpc.upload_blobs(&batch)?;
                batch.clear();
                batch_bytes = 0;
            }
        }
    }
    grpc.upload_blobs(&batch)?;
    Ok(sent)
}
