//! The gRPC `CacheBackend`: FindMissingBlobs, small blobs through BatchUpdateBlobs and
//! BatchReadBlobs within the server's batch size, large ones over ByteStream, and the
//! ActionCache.

use std::path::Path;

use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use tonic::Code;

use super::GrpcClient;
use super::bytestream::Source;
use crate::remote::digest::{Digest, DigestFunction};
use crate::remote::endpoint::Endpoint;
use crate::remote::error::RemoteError;
use crate::remote::verify::{Sink, VerifiedBytes, VerifiedFile, verify_bytes};
use crate::remote::{Blob, CacheBackend, Capabilities};

/// Digests per FindMissingBlobs request (well under 4 MiB of digests).
const FIND_MISSING_CHUNK: usize = 10_000;
/// Blobs per batch request (BuildGrid refuses more than 500).
const BATCH_COUNT: usize = 500;
/// Bytes a blob adds to a batch request beyond its data (digest, framing).
const BLOB_OVERHEAD: u64 = 128;

impl GrpcClient {
    fn function_proto(&self) -> Result<i32, RemoteError> {
        Ok(self.function()?.to_proto())
    }

    fn fits_batch(&self, size: u64) -> Result<bool, RemoteError> {
        Ok(size + BLOB_OVERHEAD <= self.batch_limit()?)
    }

    /// Sends blobs in BatchUpdateBlobs requests of at most the batch size.
    fn batch_update(&self, blobs: &[&Blob]) -> Result<(), RemoteError> {
        let limit = self.batch_limit()?;
        let mut start = 0;
        while start < blobs.len() {
            let mut end = start;
            let mut total = 0;
            while end < blobs.len() && end - start < BATCH_COUNT {
                let size = blobs[end].digest.size() + BLOB_OVERHEAD;
                if end > start && total + size > limit {
                    break;
                }
                total += size;
                end += 1;
            }
            self.batch_update_once(&blobs[start..end])?;
            start = end;
        }
        Ok(())
    }

    fn batch_update_once(&self, blobs: &[&Blob]) -> Result<(), RemoteError> {
        let request = re::BatchUpdateBlobsRequest {
            instance_name: self.endpoint_ref().instance().to_owned(),
            requests: blobs
                .iter()
                .map(|blob| re::batch_update_blobs_request::Request {
                    digest: Some(blob.digest.to_proto()),
                    data: blob.bytes.clone(),
                    compressor: 0,
                })
                .collect(),
            digest_function: self.function_proto()?,
        };
        let mut client = self.cas.clone();
        let request = self.request(request);
        let answer = self.unary("BatchUpdateBlobs", async move {
            client.batch_update_blobs(request).await
        })?;
        for response in answer.responses {
            let status = response.status.unwrap_or_default();
            if status.code != Code::Ok as i32 {
                let digest = response
                    .digest
                    .as_ref()
                    .map(|d| format!("{}/{}", d.hash, d.size_bytes));
                return Err(RemoteError::Server {
                    endpoint: self.name().to_owned(),
                    operation: "BatchUpdateBlobs",
                    code: format!("{:?}", Code::from(status.code)),
                    message: format!("{} (blob {})", status.message, digest.unwrap_or_default()),
                });
            }
        }
        Ok(())
    }

    /// Reads one small blob with BatchReadBlobs, verified.
    fn batch_read(&self, digest: &Digest) -> Result<Vec<u8>, RemoteError> {
        let request = re::BatchReadBlobsRequest {
            instance_name: self.endpoint_ref().instance().to_owned(),
            digests: vec![digest.to_proto()],
            acceptable_compressors: Vec::new(),
            digest_function: self.function_proto()?,
        };
        let mut client = self.cas.clone();
        let request = self.request(request);
        let answer = self.unary("BatchReadBlobs", async move {
            client.batch_read_blobs(request).await
        })?;
        let response =
            answer
                .responses
                .into_iter()
                .next()
                .ok_or_else(|| RemoteError::Protocol {
                    endpoint: self.name().to_owned(),
                    what: "BatchReadBlobs answer",
                    detail: format!("no response for {digest}"),
                })?;
        let status = response.status.unwrap_or_default();
        match Code::from(status.code) {
            Code::Ok => verify_bytes(self.name(), digest, self.function()?, response.data),
            Code::NotFound => Err(RemoteError::NotFound {
                endpoint: self.name().to_owned(),
                operation: "BatchReadBlobs",
                digest: digest.clone(),
            }),
            code => Err(RemoteError::Server {
                endpoint: self.name().to_owned(),
                operation: "BatchReadBlobs",
                code: format!("{code:?}"),
                message: status.message,
            }),
        }
    }

    /// Checks bytes against the digest they are uploaded under.
    fn check_upload(&self, bytes: &[u8], digest: &Digest) -> Result<DigestFunction, RemoteError> {
        let function = self.function()?;
        let actual = Digest::of_bytes(function, bytes);
        if actual != *digest {
            return Err(RemoteError::LocalFileChanged {
                path: "<bytes in memory>".into(),
                expected: digest.clone(),
                actual,
            });
        }
        Ok(function)
    }
}

impl CacheBackend for GrpcClient {
    fn endpoint(&self) -> &Endpoint {
        self.endpoint_ref()
    }

    fn capabilities(&self) -> Result<Capabilities, RemoteError> {
        self.fetch_capabilities()
    }

    fn digest_function(&self) -> Result<DigestFunction, RemoteError> {
        self.function()
    }

    fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>, RemoteError> {
        let mut missing = Vec::new();
        let wanted: Vec<&Digest> = digests
            .iter()
            .filter(|d| !matches!(self.is_empty(d), Ok(true)))
            .collect();
        for chunk in wanted.chunks(FIND_MISSING_CHUNK) {
            let request = re::FindMissingBlobsRequest {
                instance_name: self.endpoint_ref().instance().to_owned(),
                blob_digests: chunk.iter().map(|d| d.to_proto()).collect(),
                digest_function: self.function_proto()?,
            };
            let mut client = self.cas.clone();
            let request = self.request(request);
            let answer = self.unary("FindMissingBlobs", async move {
                client.find_missing_blobs(request).await
            })?;
            let absent: Vec<Digest> = answer
                .missing_blob_digests
                .iter()
                .map(Digest::from_proto)
                .collect::<Result<_, _>>()?;
            missing.extend(
                chunk
                    .iter()
                    .filter(|d| absent.contains(d))
                    .map(|d| (*d).clone()),
            );
        }
        Ok(missing)
    }

    fn upload_file(&self, path: &Path, digest: &Digest) -> Result<(), RemoteError> {
        if self.is_empty(digest)? {
            return Ok(());
        }
        if self.fits_batch(digest.size())? {
            let blob = Blob::of_file(path, digest, self.function()?)?;
            return self.batch_update(&[&blob]);
        }
        self.write_blob(&mut Source::file(path)?, digest)
    }

    fn upload_bytes(&self, bytes: &[u8], digest: &Digest) -> Result<(), RemoteError> {
        self.check_upload(bytes, digest)?;
        if self.is_empty(digest)? {
            return Ok(());
        }
        if self.fits_batch(digest.size())? {
            let blob = Blob {
                digest: digest.clone(),
                bytes: bytes.to_vec(),
            };
            return self.batch_update(&[&blob]);
        }
        self.write_blob(&mut Source::Bytes(bytes), digest)
    }

    fn upload_blobs(&self, blobs: &[Blob]) -> Result<(), RemoteError> {
        let mut small = Vec::new();
        for blob in blobs {
            self.check_upload(&blob.bytes, &blob.digest)?;
            if self.is_empty(&blob.digest)? {
                continue;
            }
            if self.fits_batch(blob.digest.size())? {
                small.push(blob);
            } else {
                self.write_blob(&mut Source::Bytes(&blob.bytes), &blob.digest)?;
            }
        }
        self.batch_update(&small)
    }

    fn download_to_file(&self, digest: &Digest, dest: &Path) -> Result<(), RemoteError> {
        let function = self.function()?;
        let mut file = VerifiedFile::create(self.name(), digest, function, dest)?
            .stalling_after(self.endpoint_ref().timeout());
        if self.is_empty(digest)? {
            // Nothing to fetch: the empty blob.
        } else if self.fits_batch(digest.size())? {
            file.write(&self.batch_read(digest)?)?;
        } else {
            self.read_blob(digest, &mut file)?;
        }
        file.finish(false)
    }

    fn download_bytes(&self, digest: &Digest) -> Result<Vec<u8>, RemoteError> {
        if self.is_empty(digest)? {
            return Ok(Vec::new());
        }
        if self.fits_batch(digest.size())? {
            return self.batch_read(digest);
        }
        let mut sink = VerifiedBytes::new(self.name(), digest, self.function()?)
            .stalling_after(self.endpoint_ref().timeout());
        self.read_blob(digest, &mut sink)?;
        sink.finish()
    }

    fn get_action_result(&self, action: &Digest) -> Result<Option<re::ActionResult>, RemoteError> {
        let request = re::GetActionResultRequest {
            instance_name: self.endpoint_ref().instance().to_owned(),
            action_digest: Some(action.to_proto()),
            digest_function: self.function_proto()?,
            ..Default::default()
        };
        let mut client = self.action_cache.clone();
        let request = self.request(request);
        self.unary_optional("GetActionResult", async move {
            client.get_action_result(request).await
        })
    }

    fn update_action_result(
        &self,
        action: &Digest,
        result: &re::ActionResult,
    ) -> Result<(), RemoteError> {
        let request = re::UpdateActionResultRequest {
            instance_name: self.endpoint_ref().instance().to_owned(),
            action_digest: Some(action.to_proto()),
            action_result: Some(result.clone()),
            results_cache_policy: None,
            digest_function: self.function_proto()?,
        };
        let mut client = self.action_cache.clone();
        let request = self.request(request);
        self.unary("UpdateActionResult", async move {
            client.update_action_result(request).await
        })?;
        Ok(())
    }
}
