//! The REAPI v2 gRPC backend (`grpc://`, `grpcs://`): one HTTP/2 channel, a two-thread
//! tokio runtime that only this client uses, blocking calls with per-call timeouts, and
//! gRPC statuses turned into `RemoteError`s that name the server.

mod bytestream;
mod cas;
mod execution;
mod resource;

use std::future::Future;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use bazel_remote_apis::google::bytestream::byte_stream_client::ByteStreamClient;
use bazel_remote_apis::google::longrunning::operations_client::OperationsClient;
use re::action_cache_client::ActionCacheClient;
use re::capabilities_client::CapabilitiesClient;
use re::content_addressable_storage_client::ContentAddressableStorageClient;
use re::execution_client::ExecutionClient;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::{Code, Request, Status};

use super::digest::{Digest, DigestFunction};
use super::endpoint::{Endpoint, Protocol};
use super::error::{EndpointError, RemoteError, TlsError};
use super::tls::ClientCertificateProbe;
use super::{Capabilities, is_empty_blob};

/// Bytes per ByteStream message (the REAPI servers' usual chunk).
pub(crate) const CHUNK_SIZE: usize = 1 << 20;
/// Batch size used when a server advertises none (0 means "no limit", but most gRPC
/// servers still refuse messages over 4 MiB).
const DEFAULT_BATCH: u64 = 4 << 20;
/// Largest batch used even when a server advertises more.
const MAX_BATCH: u64 = 16 << 20;
/// Largest message accepted from a server (batch responses carry up to a batch of data).
const MAX_DECODE: usize = 64 << 20;

type Transport = InterceptedService<Channel, Headers>;

/// Adds the endpoint's extra headers (auth tokens) to every call.
#[derive(Clone)]
pub(crate) struct Headers(Arc<Vec<(AsciiMetadataKey, AsciiMetadataValue)>>);

impl Interceptor for Headers {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        for (key, value) in self.0.iter() {
            request.metadata_mut().insert(key.clone(), value.clone());
        }
        Ok(request)
    }
}

/// A blocking client of one REAPI server's services (CAS, ByteStream, ActionCache,
/// Capabilities; Execution and Operations for remote execution). Safe to share between
/// threads.
pub struct GrpcClient {
    runtime: tokio::runtime::Runtime,
    endpoint: Endpoint,
    name: String,
    cas: ContentAddressableStorageClient<Transport>,
    bytestream: ByteStreamClient<Transport>,
    action_cache: ActionCacheClient<Transport>,
    capabilities: CapabilitiesClient<Transport>,
    execution: ExecutionClient<Transport>,
    operations: OperationsClient<Transport>,
    cached: OnceLock<Capabilities>,
    tls_probe: ClientCertificateProbe,
}

impl GrpcClient {
    /// Prepares a client; the connection opens on the first call.
    pub fn connect(endpoint: &Endpoint) -> Result<Self, RemoteError> {
        let tls = match endpoint.protocol() {
            Protocol::Grpc { tls } => tls,
            Protocol::Http { .. } => {
                return Err(EndpointError::Scheme {
                    url: endpoint.to_string(),
                    scheme: "http".into(),
                }
                .into());
            }
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("pochi-remote")
            .enable_all()
            .build()
            .map_err(RemoteError::Runtime)?;
        let channel = open_channel(&runtime, endpoint, tls)?;
        let headers = Headers(Arc::new(metadata(endpoint)?));
        let transport = InterceptedService::new(channel, headers);
        Ok(GrpcClient {
            runtime,
            name: endpoint.to_string(),
            endpoint: endpoint.clone(),
            cas: ContentAddressableStorageClient::new(transport.clone())
                .max_decoding_message_size(MAX_DECODE),
            bytestream: ByteStreamClient::new(transport.clone())
                .max_decoding_message_size(MAX_DECODE),
            action_cache: ActionCacheClient::new(transport.clone())
                .max_decoding_message_size(MAX_DECODE),
            capabilities: CapabilitiesClient::new(transport.clone()),
            execution: ExecutionClient::new(transport.clone())
                .max_decoding_message_size(MAX_DECODE),
            operations: OperationsClient::new(transport),
            cached: OnceLock::new(),
            tls_probe: ClientCertificateProbe::default(),
        })
    }

    /// The server's capabilities, asked now (and remembered for batch sizes and the
    /// digest function).
    pub fn fetch_capabilities(&self) -> Result<Capabilities, RemoteError> {
        let request = re::GetCapabilitiesRequest {
            instance_name: self.endpoint.instance().to_owned(),
        };
        let mut client = self.capabilities.clone();
        let request = self.request(request);
        let answer = self.unary("GetCapabilities", async move {
            client.get_capabilities(request).await
        })?;
        let capabilities = summarize(&answer);
        let _ = self.cached.set(capabilities.clone());
        Ok(capabilities)
    }

    pub(crate) fn cached_capabilities(&self) -> Result<&Capabilities, RemoteError> {
        if let Some(c) = self.cached.get() {
            return Ok(c);
        }
        self.fetch_capabilities()?;
        Ok(self.cached.get().expect("set by fetch_capabilities"))
    }

    /// The digest function for this server: BLAKE3 where offered, else SHA-256.
    pub fn function(&self) -> Result<DigestFunction, RemoteError> {
        let offered = &self.cached_capabilities()?.digest_functions;
        if offered.contains(&DigestFunction::Blake3) {
            Ok(DigestFunction::Blake3)
        } else if offered.is_empty() || offered.contains(&DigestFunction::Sha256) {
            Ok(DigestFunction::Sha256)
        } else {
            Err(RemoteError::UnsupportedDigestFunction {
                endpoint: self.name.clone(),
                function: "sha256",
                offered: "neither SHA-256 nor BLAKE3".into(),
            })
        }
    }

    /// The largest blob sent or read in a batch call.
    pub(crate) fn batch_limit(&self) -> Result<u64, RemoteError> {
        let advertised = self.cached_capabilities()?.max_batch_total_size;
        let limit = if advertised == 0 {
            DEFAULT_BATCH
        } else {
            advertised.min(MAX_BATCH)
        };
        // Room for the request's own fields and each blob's digest.
        Ok(limit.saturating_sub(2048))
    }

    /// A request carrying the per-call deadline, so the server can give up too.
    pub(crate) fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(self.endpoint.timeout());
        request
    }

    /// Runs a future on the client's runtime for at most `limit` (the timer is made inside
    /// the runtime, which it needs).
    pub(crate) fn within<F: Future>(
        &self,
        limit: Duration,
        future: F,
    ) -> Result<F::Output, tokio::time::error::Elapsed> {
        self.runtime
            .block_on(async { tokio::time::timeout(limit, future).await })
    }

    /// Runs a unary call to completion within the endpoint's timeout.
    pub(crate) fn unary<T, F>(&self, operation: &'static str, call: F) -> Result<T, RemoteError>
    where
        F: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let timeout = self.endpoint.timeout();
        match self.within(timeout, call) {
            Err(_) => Err(self.timeout_error(operation)),
            Ok(Err(status)) => Err(self.status_error(operation, &status)),
            Ok(Ok(response)) => Ok(response.into_inner()),
        }
    }

    /// Like `unary`, with NOT_FOUND answered as `None`.
    pub(crate) fn unary_optional<T, F>(
        &self,
        operation: &'static str,
        call: F,
    ) -> Result<Option<T>, RemoteError>
    where
        F: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let timeout = self.endpoint.timeout();
        match self.within(timeout, call) {
            Err(_) => Err(self.timeout_error(operation)),
            Ok(Err(status)) if status.code() == Code::NotFound => Ok(None),
            Ok(Err(status)) => Err(self.status_error(operation, &status)),
            Ok(Ok(response)) => Ok(Some(response.into_inner())),
        }
    }

    pub(crate) fn timeout_error(&self, operation: &'static str) -> RemoteError {
        RemoteError::Timeout {
            endpoint: self.name.clone(),
            operation,
            timeout: self.endpoint.timeout(),
        }
    }

    /// A gRPC status as a `RemoteError` naming this server and the operation.
    pub(crate) fn status_error(&self, operation: &'static str, status: &Status) -> RemoteError {
        let endpoint = self.name.clone();
        let message = describe(status);
        let closed = matches!(
            status.code(),
            Code::Unavailable | Code::Cancelled | Code::Unknown
        );
        if let Some((failure, detail)) = self.tls_probe.failure(&self.endpoint, status, closed) {
            return failure.error(endpoint, operation, detail);
        }
        match status.code() {
            Code::DeadlineExceeded => self.timeout_error(operation),
            // tonic's own deadline (the request's timeout) ends the call this way.
            Code::Cancelled if message.contains("Timeout expired") => self.timeout_error(operation),
            Code::Unavailable => RemoteError::Unreachable {
                endpoint,
                operation,
                detail: message,
            },
            Code::PermissionDenied | Code::Unauthenticated => RemoteError::PermissionDenied {
                endpoint,
                operation,
                message,
            },
            code => RemoteError::Server {
                endpoint,
                operation,
                code: format!("{code:?}"),
                message,
            },
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.runtime
    }

    pub(crate) fn endpoint_ref(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Whether a blob needs no transfer (the empty blob every store has).
    pub(crate) fn is_empty(&self, digest: &Digest) -> Result<bool, RemoteError> {
        Ok(digest.size() == 0 && is_empty_blob(digest, self.function()?))
    }
}

fn open_channel(
    runtime: &tokio::runtime::Runtime,
    endpoint: &Endpoint,
    tls: bool,
) -> Result<Channel, RemoteError> {
    let bad_url = |reason: String| EndpointError::Url {
        url: endpoint.to_string(),
        reason,
    };
    let mut builder = Channel::from_shared(endpoint.origin())
        .map_err(|e| bad_url(e.to_string()))?
        .connect_timeout(endpoint.connect_timeout())
        .tcp_nodelay(true)
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(16 << 20))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20))
        .user_agent(concat!("pochi/", env!("CARGO_PKG_VERSION")))
        .map_err(|e| bad_url(e.to_string()))?;
    if tls {
        builder = builder
            .tls_config(tls_config(endpoint))
            .map_err(|e| TlsError::Setup {
                endpoint: endpoint.to_string(),
                detail: e.to_string(),
            })?;
    }
    let _entered = runtime.enter();
    Ok(builder.connect_lazy())
}

/// The Mozilla roots plus the endpoint's extra CAs, and its client certificate if any.
fn tls_config(endpoint: &Endpoint) -> ClientTlsConfig {
    let settings = endpoint.tls();
    let mut config = ClientTlsConfig::new()
        .with_webpki_roots()
        .domain_name(endpoint.host());
    if let Some(ca) = settings.ca_pem() {
        config = config.ca_certificate(Certificate::from_pem(ca));
    }
    if let Some((certificate, key)) = settings.identity_pem() {
        config = config.identity(Identity::from_pem(certificate, key));
    }
    config
}

fn metadata(
    endpoint: &Endpoint,
) -> Result<Vec<(AsciiMetadataKey, AsciiMetadataValue)>, EndpointError> {
    endpoint
        .headers()
        .iter()
        .map(|(key, value)| {
            let bad = |reason: &str| EndpointError::Header {
                header: format!("{key}=..."),
                reason: reason.to_owned(),
            };
            let key =
                AsciiMetadataKey::from_str(key).map_err(|_| bad("not a gRPC metadata key"))?;
            let value = AsciiMetadataValue::try_from(value.as_str())
                .map_err(|_| bad("not a gRPC metadata value"))?;
            Ok((key, value))
        })
        .collect()
}

fn summarize(answer: &re::ServerCapabilities) -> Capabilities {
    let cache = answer.cache_capabilities.clone().unwrap_or_default();
    let mut digest_functions: Vec<DigestFunction> = cache
        .digest_functions
        .iter()
        .filter_map(|f| DigestFunction::from_proto(*f))
        .collect();
    digest_functions.sort();
    digest_functions.dedup();
    Capabilities {
        digest_functions,
        max_batch_total_size: u64::try_from(cache.max_batch_total_size_bytes).unwrap_or(0),
        action_cache_update: cache
            .action_cache_update_capabilities
            .is_some_and(|u| u.update_enabled),
        execution: answer
            .execution_capabilities
            .as_ref()
            .is_some_and(|e| e.exec_enabled),
    }
}

/// A status's message with the transport error behind it (e.g. "connection refused").
fn describe(status: &Status) -> String {
    let mut text = status.message().to_owned();
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    if text.is_empty() {
        text = format!("{:?}", status.code());
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_keep_the_functions_pochi_speaks() {
        let answer = re::ServerCapabilities {
            cache_capabilities: Some(re::CacheCapabilities {
                digest_functions: vec![2, 9, 1, 1],
                max_batch_total_size_bytes: 4 << 20,
                action_cache_update_capabilities: Some(re::ActionCacheUpdateCapabilities {
                    update_enabled: true,
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let summary = summarize(&answer);
        assert_eq!(
            summary.digest_functions,
            [DigestFunction::Sha256, DigestFunction::Blake3]
        );
        assert_eq!(summary.max_batch_total_size, 4 << 20);
        assert!(summary.action_cache_update);
        assert!(!summary.execution);
    }
}
