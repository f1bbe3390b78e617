//! Large blobs over ByteStream: writes stream 1 MiB chunks from disk (never the whole
//! blob in memory) and resume after an interruption from what `QueryWriteStatus` says
//! was committed (or restart under a new upload id where the server cannot say);
//! reads stream into a verifying sink and resume at the offset already received.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use bazel_remote_apis::google::bytestream::{QueryWriteStatusRequest, ReadRequest, WriteRequest};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status};

use super::resource::{new_upload_id, read_name, write_name};
use super::{CHUNK_SIZE, GrpcClient};
use crate::remote::digest::{Digest, Hasher};
use crate::remote::error::RemoteError;
use crate::remote::verify::Sink;

/// Tries per transfer (the first plus resumptions).
const ATTEMPTS: u32 = 3;
/// Chunks in flight between the caller's thread and the runtime.
const QUEUE: usize = 4;

/// Where an upload's bytes come from.
pub(crate) enum Source<'a> {
    File {
        path: &'a Path,
        file: File,
        position: u64,
    },
    Bytes(&'a [u8]),
}

impl<'a> Source<'a> {
    pub(crate) fn file(path: &'a Path) -> Result<Self, RemoteError> {
        let file = File::open(path).map_err(|source| RemoteError::Io {
            action: "open",
            path: path.to_owned(),
            source,
        })?;
        Ok(Source::File {
            path,
            file,
            position: 0,
        })
    }

    /// `len` bytes from `offset`.
    fn chunk(&mut self, offset: u64, len: usize) -> Result<Vec<u8>, RemoteError> {
        match self {
            Source::Bytes(bytes) => {
                let start = usize::try_from(offset)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                let end = start.saturating_add(len).min(bytes.len());
                Ok(bytes[start..end].to_vec())
            }
            Source::File {
                path,
                file,
                position,
            } => {
                let io = |source| RemoteError::Io {
                    action: "read",
                    path: path.to_path_buf(),
                    source,
                };
                if *position != offset {
                    file.seek(SeekFrom::Start(offset)).map_err(io)?;
                }
                // Read into spare capacity: no zeroing of a buffer about to be filled.
                let mut buffer = Vec::with_capacity(len);
                (&mut *file)
                    .take(len as u64)
                    .read_to_end(&mut buffer)
                    .map_err(io)?;
                *position = offset + buffer.len() as u64;
                Ok(buffer)
            }
        }
    }

    fn path(&self) -> std::path::PathBuf {
        match self {
            Source::File { path, .. } => path.to_path_buf(),
            Source::Bytes(_) => "<bytes in memory>".into(),
        }
    }
}

/// How one attempt ended short of success.
enum Interrupted {
    /// Worth resuming (the connection dropped, the server was briefly unavailable).
    Retry(RemoteError),
    Fatal(RemoteError),
}

fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable | Code::Aborted | Code::Internal | Code::Cancelled | Code::Unknown
    )
}

impl GrpcClient {
    /// Writes a blob over ByteStream, resuming after interruptions.
    pub(crate) fn write_blob(
        &self,
        source: &mut Source,
        digest: &Digest,
    ) -> Result<(), RemoteError> {
        let function = self.function()?;
        let instance = self.endpoint_ref().instance().to_owned();
        let mut resource = write_name(&instance, &new_upload_id(), function, digest);
        let mut offset = 0;
        let mut attempt = 1;
        loop {
            // The local check is only possible when this attempt sends every byte.
            let verifier = (offset == 0).then(|| function.hasher());
            let failure = match self.write_attempt(source, digest, &resource, offset, verifier) {
                Ok(()) => return Ok(()),
                Err(Interrupted::Fatal(e)) => return Err(e),
                Err(Interrupted::Retry(e)) if attempt >= ATTEMPTS => return Err(e),
                Err(Interrupted::Retry(e)) => e,
            };
            attempt += 1;
            tracing::debug!("resuming the upload of {digest} after: {failure}");
            match self.query_write_status(&resource) {
                Some((_, true)) => return Ok(()),
                Some((committed, false)) if committed <= digest.size() => offset = committed,
                _ => {
                    offset = 0;
                    resource = write_name(&instance, &new_upload_id(), function, digest);
                }
            }
        }
    }

    /// What the server committed of an upload, when it can say.
    fn query_write_status(&self, resource: &str) -> Option<(u64, bool)> {
        let mut client = self.bytestream.clone();
        let request = self.request(QueryWriteStatusRequest {
            resource_name: resource.to_owned(),
        });
        let answer = self
            .unary("QueryWriteStatus", async move {
                client.query_write_status(request).await
            })
            .ok()?;
        Some((u64::try_from(answer.committed_size).ok()?, answer.complete))
    }

    fn write_attempt(
        &self,
        source: &mut Source,
        digest: &Digest,
        resource: &str,
        offset: u64,
        mut verifier: Option<Hasher>,
    ) -> Result<(), Interrupted> {
        let (sender, receiver) = mpsc::channel::<WriteRequest>(QUEUE);
        let mut client = self.bytestream.clone();
        let call = self
            .runtime()
            .spawn(async move { client.write(ReceiverStream::new(receiver)).await });
        let timeout = self.endpoint_ref().timeout();
        let mut position = offset;
        let mut first = true;
        loop {
            let want = (digest.size() - position).min(CHUNK_SIZE as u64) as usize;
            let data = source.chunk(position, want).map_err(Interrupted::Fatal)?;
            if data.len() < want {
                call.abort();
                return Err(Interrupted::Fatal(
                    self.changed(source, digest, verifier, &data),
                ));
            }
            let last = position + want as u64 == digest.size();
            if let Some(hasher) = verifier.as_mut() {
                hasher.update(&data);
                if last && hasher.clone().finish() != *digest {
                    call.abort();
                    return Err(Interrupted::Fatal(self.changed(
                        source,
                        digest,
                        verifier,
                        &[],
                    )));
                }
            }
            let request = WriteRequest {
                resource_name: if first {
                    resource.to_owned()
                } else {
                    String::new()
                },
                write_offset: i64::try_from(position).unwrap_or(i64::MAX),
                finish_write: last,
                data,
            };
            first = false;
            position += want as u64;
            let sent = self.within(timeout, sender.send(request));
            match sent {
                Err(_) => {
                    call.abort();
                    return Err(Interrupted::Retry(self.timeout_error("ByteStream.Write")));
                }
                // The call ended early (the server has the blob, or failed): its answer says.
                Ok(Err(_)) => break,
                Ok(Ok(())) if last => break,
                Ok(Ok(())) => {}
            }
        }
        drop(sender);
        self.finish_write(call, digest)
    }

    fn finish_write(
        &self,
        call: tokio::task::JoinHandle<
            Result<tonic::Response<bazel_remote_apis::google::bytestream::WriteResponse>, Status>,
        >,
        digest: &Digest,
    ) -> Result<(), Interrupted> {
        let timeout = self.endpoint_ref().timeout();
        let abort = call.abort_handle();
        let answer = match self.within(timeout, call) {
            Err(_) => {
                abort.abort();
                return Err(Interrupted::Retry(self.timeout_error("ByteStream.Write")));
            }
            Ok(Err(join)) => {
                return Err(Interrupted::Retry(RemoteError::Server {
                    endpoint: self.name().to_owned(),
                    operation: "ByteStream.Write",
                    code: "Cancelled".into(),
                    message: join.to_string(),
                }));
            }
            Ok(Ok(Err(status))) => {
                let error = self.status_error("ByteStream.Write", &status);
                return Err(if retryable(status.code()) {
                    Interrupted::Retry(error)
                } else {
                    Interrupted::Fatal(error)
                });
            }
            Ok(Ok(Ok(response))) => response.into_inner(),
        };
        if u64::try_from(answer.committed_size).ok() == Some(digest.size()) {
            return Ok(());
        }
        Err(Interrupted::Retry(RemoteError::Protocol {
            endpoint: self.name().to_owned(),
            what: "ByteStream.Write answer",
            detail: format!(
                "committed {} of {} bytes of {digest}",
                answer.committed_size,
                digest.size()
            ),
        }))
    }

    /// The error for a source that no longer matches its digest.
    fn changed(
        &self,
        source: &Source,
        digest: &Digest,
        verifier: Option<Hasher>,
        tail: &[u8],
    ) -> RemoteError {
        let actual = match (verifier, source) {
            (Some(mut hasher), _) => {
                hasher.update(tail);
                hasher.finish()
            }
            (None, Source::File { path, .. }) => {
                match self.function().and_then(|f| Digest::of_file(f, path)) {
                    Ok(actual) => actual,
                    Err(e) => return e,
                }
            }
            (None, Source::Bytes(bytes)) => Digest::of_bytes(
                self.function()
                    .unwrap_or(crate::remote::DigestFunction::Sha256),
                bytes,
            ),
        };
        RemoteError::LocalFileChanged {
            path: source.path(),
            expected: digest.clone(),
            actual,
        }
    }

    /// Reads a blob over ByteStream into a verifying sink, resuming at the offset
    /// already received after an interruption. The caller finishes the sink.
    pub(crate) fn read_blob(
        &self,
        digest: &Digest,
        sink: &mut dyn Sink,
    ) -> Result<(), RemoteError> {
        let resource = read_name(self.endpoint_ref().instance(), self.function()?, digest);
        let mut attempt = 1;
        loop {
            match self.read_attempt(&resource, digest, sink) {
                Ok(()) => return Ok(()),
                Err(Interrupted::Fatal(e)) => return Err(e),
                Err(Interrupted::Retry(e)) if attempt >= ATTEMPTS => return Err(e),
                Err(Interrupted::Retry(e)) => {
                    tracing::debug!("resuming the download of {digest} after: {e}");
                    attempt += 1;
                }
            }
        }
    }

    fn read_attempt(
        &self,
        resource: &str,
        digest: &Digest,
        sink: &mut dyn Sink,
    ) -> Result<(), Interrupted> {
        let offset = sink.written();
        if offset == digest.size() && offset > 0 {
            return Ok(());
        }
        let (sender, mut receiver) = mpsc::channel::<Result<Vec<u8>, Status>>(QUEUE);
        let mut client = self.bytestream.clone();
        // No deadline on the whole call (it would cut a long stream): each chunk is timed.
        let request = tonic::Request::new(ReadRequest {
            resource_name: resource.to_owned(),
            read_offset: i64::try_from(offset).unwrap_or(i64::MAX),
            read_limit: 0,
        });
        let task = self.runtime().spawn(async move {
            let mut stream = match client.read(request).await {
                Ok(response) => response.into_inner(),
                Err(status) => {
                    let _ = sender.send(Err(status)).await;
                    return;
                }
            };
            loop {
                match stream.message().await {
                    Ok(Some(message)) => {
                        if sender.send(Ok(message.data)).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(status) => {
                        let _ = sender.send(Err(status)).await;
                        return;
                    }
                }
            }
        });
        let timeout = self.endpoint_ref().timeout();
        loop {
            let next = self.within(timeout, receiver.recv());
            match next {
                Err(_) => {
                    task.abort();
                    return Err(Interrupted::Retry(self.timeout_error("ByteStream.Read")));
                }
                Ok(None) => return Ok(()),
                Ok(Some(Ok(data))) => sink.write(&data).map_err(|e| {
                    task.abort();
                    Interrupted::Fatal(e)
                })?,
                Ok(Some(Err(status))) if status.code() == Code::NotFound => {
                    return Err(Interrupted::Fatal(RemoteError::NotFound {
                        endpoint: self.name().to_owned(),
                        operation: "ByteStream.Read",
                        digest: digest.clone(),
                    }));
                }
                Ok(Some(Err(status))) => {
                    let error = self.status_error("ByteStream.Read", &status);
                    return Err(if retryable(status.code()) {
                        Interrupted::Retry(error)
                    } else {
                        Interrupted::Fatal(error)
                    });
                }
            }
        }
    }
}
