//! Bazel's HTTP cache protocol (`http://`, `https://`), as bazel-remote, nginx with
//! WebDAV or an object store behind a proxy serve it: `GET/PUT/HEAD {prefix}/cas/<sha256>`
//! for blobs and `{prefix}/ac/<sha256>` for serialized `ActionResult` protos. Such
//! servers may verify nothing, so uploads are hashed as they stream and every download
//! is verified before it is used.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use prost::Message;

use super::digest::{Digest, DigestFunction, Hasher};
use super::endpoint::Endpoint;
use super::error::{RemoteError, TlsError};
use super::tls::ClientCertificateProbe;
use super::verify::{Sink, VerifiedBytes, VerifiedFile};
use super::{Blob, CacheBackend, Capabilities, is_empty_blob};

/// The only digest function of the HTTP protocol.
const FUNCTION: DigestFunction = DigestFunction::Sha256;
/// Bytes per read of an upload or a download.
const CHUNK: usize = 1 << 20;
/// The largest action-cache entry accepted.
const MAX_ACTION_RESULT: u64 = 64 << 20;

/// A blocking client of a Bazel HTTP cache.
pub struct HttpClient {
    agent: ureq::Agent,
    endpoint: Endpoint,
    name: String,
    base: String,
    tls_probe: ClientCertificateProbe,
}

impl HttpClient {
    /// Prepares a client; nothing is dialed until the first call.
    pub fn connect(endpoint: &Endpoint) -> Result<Self, RemoteError> {
        let timeout = Some(endpoint.timeout());
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_resolve(Some(endpoint.connect_timeout()))
            .timeout_connect(Some(endpoint.connect_timeout()))
            .timeout_send_request(timeout)
            .timeout_recv_response(timeout)
            .timeout_per_read(timeout)
            .timeout_per_write(timeout)
            .user_agent(concat!("pochi/", env!("CARGO_PKG_VERSION")))
            .tls_config(tls_config(endpoint)?)
            .build();
        Ok(HttpClient {
            agent: config.into(),
            name: endpoint.to_string(),
            base: format!("{}{}", endpoint.origin(), endpoint.prefix()),
            endpoint: endpoint.clone(),
            tls_probe: ClientCertificateProbe::default(),
        })
    }

    fn url(&self, kind: &str, digest: &Digest) -> String {
        format!("{}/{kind}/{}", self.base, digest.hash())
    }

    /// Runs a request with the endpoint's headers; `Ok(None)` on 404.
    fn exchange(
        &self,
        operation: &'static str,
        request: Request,
    ) -> Result<Option<ureq::http::Response<ureq::Body>>, RemoteError> {
        let result = match request {
            Request::Head(url) => self.with_headers(self.agent.head(&url)).call(),
            Request::Get(url) => self.with_headers(self.agent.get(&url)).call(),
            Request::Put(url, body, size) => self
                .with_headers(self.agent.put(&url))
                .header("content-length", size.to_string())
                .send(body),
        };
        let response = result.map_err(|e| self.transport_error(operation, e))?;
        match response.status().as_u16() {
            200..=299 => Ok(Some(response)),
            404 => Ok(None),
            401 | 403 => Err(RemoteError::PermissionDenied {
                endpoint: self.name.clone(),
                operation,
                message: format!("HTTP {}", response.status()),
            }),
            _ => Err(self.status_error(operation, response)),
        }
    }

    fn with_headers<B>(&self, mut request: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        for (key, value) in self.endpoint.headers() {
            request = request.header(key, value);
        }
        request
    }

    fn status_error(
        &self,
        operation: &'static str,
        response: ureq::http::Response<ureq::Body>,
    ) -> RemoteError {
        let status = response.status();
        let mut body = Vec::new();
        let _ = response
            .into_body()
            .into_with_config()
            .limit(4096)
            .reader()
            .read_to_end(&mut body);
        let text: String = String::from_utf8_lossy(&body)
            .chars()
            .filter(|c| !c.is_control() || *c == ' ')
            .take(200)
            .collect();
        // nginx answers a missing or refused client certificate (`ssl_verify_client on`)
        // with a 400 page rather than a TLS alert.
        if status == 400 && text.contains("SSL certificate") {
            return RemoteError::ClientCertificate {
                endpoint: self.name.clone(),
                operation,
                detail: format!("HTTP {status}: {}", without_tags(&text)),
            };
        }
        RemoteError::Server {
            endpoint: self.name.clone(),
            operation,
            code: format!("HTTP {status}"),
            message: if text.is_empty() {
                "no message".into()
            } else {
                text
            },
        }
    }

    fn transport_error(&self, operation: &'static str, error: ureq::Error) -> RemoteError {
        let failure = match &error {
            ureq::Error::Rustls(e) => self.tls_probe.failure(&self.endpoint, e, false),
            ureq::Error::Io(e) => self.tls_probe.failure(&self.endpoint, e, true),
            _ => None,
        };
        if let Some((failure, detail)) = failure {
            return failure.error(self.name.clone(), operation, detail);
        }
        match error {
            ureq::Error::Timeout(_) => RemoteError::Timeout {
                endpoint: self.name.clone(),
                operation,
                timeout: self.endpoint.timeout(),
            },
            ureq::Error::Io(e) if e.kind() == io::ErrorKind::TimedOut => RemoteError::Timeout {
                endpoint: self.name.clone(),
                operation,
                timeout: self.endpoint.timeout(),
            },
            other => RemoteError::Unreachable {
                endpoint: self.name.clone(),
                operation,
                detail: other.to_string(),
            },
        }
    }

    /// Streams a GET of a blob into a verifying sink.
    fn get_blob(&self, digest: &Digest, sink: &mut dyn Sink) -> Result<(), RemoteError> {
        let Some(response) = self.exchange("GET cas", Request::Get(self.url("cas", digest)))?
        else {
            return Err(RemoteError::NotFound {
                endpoint: self.name.clone(),
                operation: "GET cas",
                digest: digest.clone(),
            });
        };
        let mut reader = response.into_body().into_reader();
        let mut buffer = vec![0u8; CHUNK];
        loop {
            match reader.read(&mut buffer) {
                Ok(0) => return Ok(()),
                Ok(n) => sink.write(&buffer[..n])?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.read_error(e)),
            }
        }
    }

    fn read_error(&self, e: io::Error) -> RemoteError {
        if let Some((failure, detail)) = self.tls_probe.failure(&self.endpoint, &e, false) {
            return failure.error(self.name.clone(), "GET cas", detail);
        }
        if e.kind() == io::ErrorKind::TimedOut {
            return RemoteError::Timeout {
                endpoint: self.name.clone(),
                operation: "GET cas",
                timeout: self.endpoint.timeout(),
            };
        }
        RemoteError::Unreachable {
            endpoint: self.name.clone(),
            operation: "GET cas",
            detail: e.to_string(),
        }
    }

    fn put(
        &self,
        kind: &str,
        digest: &Digest,
        body: ureq::SendBody,
        size: u64,
    ) -> Result<(), RemoteError> {
        let operation = if kind == "ac" { "PUT ac" } else { "PUT cas" };
        let url = self.url(kind, digest);
        self.exchange(operation, Request::Put(url, body, size))?
            .map(|_| ())
            .ok_or_else(|| RemoteError::Server {
                endpoint: self.name.clone(),
                operation,
                code: "HTTP 404".into(),
                message: "the server has no such path; check the URL's prefix".into(),
            })
    }
}

/// An error page's text without its HTML tags, spaces collapsed.
fn without_tags(page: &str) -> String {
    let mut text = String::new();
    let mut in_tag = false;
    for c in page.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                text.push(' ');
            }
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// ureq's TLS: the Mozilla roots plus the endpoint's extra CAs (ureq takes the whole
/// list, so the Mozilla roots come as certificates), and its client certificate if any.
fn tls_config(endpoint: &Endpoint) -> Result<ureq::tls::TlsConfig, RemoteError> {
    use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig};
    let settings = endpoint.tls();
    let mut builder = TlsConfig::builder();
    if !settings.ca_certificates().is_empty() {
        let roots: Vec<Certificate<'static>> = webpki_root_certs::TLS_SERVER_ROOT_CERTS
            .iter()
            .chain(settings.ca_certificates())
            .map(|der| Certificate::from_der(der.as_ref()).to_owned())
            .collect();
        builder = builder.root_certs(RootCerts::new_with_certs(&roots));
    }
    if let Some((_, key_pem)) = settings.identity_pem() {
        let key = PrivateKey::from_pem(key_pem).map_err(|e| TlsError::Setup {
            endpoint: endpoint.to_string(),
            detail: format!("the client key: {e}"),
        })?;
        let chain: Vec<Certificate<'static>> = settings
            .client_chain()
            .iter()
            .map(|der| Certificate::from_der(der.as_ref()).to_owned())
            .collect();
        builder = builder.client_cert(Some(ClientCert::new_with_certs(&chain, key)));
    }
    Ok(builder.build())
}

enum Request<'a> {
    Head(String),
    Get(String),
    Put(String, ureq::SendBody<'a>, u64),
}

/// A file's bytes for an upload, hashed as they are read: the last chunk is handed out
/// only after the whole content matched the digest, so a file that changed since it
/// was hashed is never stored (the request fails instead).
struct HashingReader {
    file: File,
    hasher: Hasher,
    expected: Digest,
    buffer: Vec<u8>,
    start: usize,
    /// Set when the content did not match; the error the upload reports.
    mismatch: Option<Digest>,
}

impl Read for HashingReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.start == self.buffer.len() {
            let remaining = self.expected.size() - self.hasher.len();
            if remaining == 0 {
                return Ok(0);
            }
            self.buffer.resize(remaining.min(CHUNK as u64) as usize, 0);
            let n = read_full(&mut self.file, &mut self.buffer)?;
            self.buffer.truncate(n);
            self.start = 0;
            self.hasher.update(&self.buffer);
            if n == 0 || self.hasher.len() == self.expected.size() {
                let actual = self.hasher.clone().finish();
                if actual != self.expected {
                    self.mismatch = Some(actual);
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "file changed"));
                }
            }
        }
        let n = out.len().min(self.buffer.len() - self.start);
        out[..n].copy_from_slice(&self.buffer[self.start..self.start + n]);
        self.start += n;
        Ok(n)
    }
}

fn read_full(file: &mut File, buffer: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

impl CacheBackend for HttpClient {
    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Fixed for the protocol; a HEAD of the empty blob checks that the server answers.
    fn capabilities(&self) -> Result<Capabilities, RemoteError> {
        let empty = Digest::of_bytes(FUNCTION, b"");
        self.exchange("HEAD cas", Request::Head(self.url("cas", &empty)))?;
        Ok(Capabilities {
            digest_functions: vec![FUNCTION],
            max_batch_total_size: 0,
            action_cache_update: true,
            execution: false,
        })
    }

    fn digest_function(&self) -> Result<DigestFunction, RemoteError> {
        Ok(FUNCTION)
    }

    fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>, RemoteError> {
        let mut missing = Vec::new();
        for digest in digests {
            if is_empty_blob(digest, FUNCTION) {
                continue;
            }
            if self
                .exchange("HEAD cas", Request::Head(self.url("cas", digest)))?
                .is_none()
            {
                missing.push(digest.clone());
            }
        }
        Ok(missing)
    }

    fn upload_file(&self, path: &Path, digest: &Digest) -> Result<(), RemoteError> {
        let file = File::open(path).map_err(|source| RemoteError::Io {
            action: "open",
            path: path.to_owned(),
            source,
        })?;
        let mut reader = HashingReader {
            file,
            hasher: FUNCTION.hasher(),
            expected: digest.clone(),
            buffer: Vec::new(),
            start: 0,
            mismatch: None,
        };
        let result = self.put(
            "cas",
            digest,
            ureq::SendBody::from_reader(&mut reader),
            digest.size(),
        );
        match reader.mismatch {
            Some(actual) => Err(RemoteError::LocalFileChanged {
                path: path.to_owned(),
                expected: digest.clone(),
                actual,
            }),
            None => result,
        }
    }

    fn upload_bytes(&self, bytes: &[u8], digest: &Digest) -> Result<(), RemoteError> {
        let actual = Digest::of_bytes(FUNCTION, bytes);
        if actual != *digest {
            return Err(RemoteError::LocalFileChanged {
                path: "<bytes in memory>".into(),
                expected: digest.clone(),
                actual,
            });
        }
        let mut reader = bytes;
        let body = ureq::SendBody::from_reader(&mut reader);
        self.put("cas", digest, body, digest.size())
    }

    fn upload_blobs(&self, blobs: &[Blob]) -> Result<(), RemoteError> {
        for blob in blobs {
            self.upload_bytes(&blob.bytes, &blob.digest)?;
        }
        Ok(())
    }

    fn download_to_file(&self, digest: &Digest, dest: &Path) -> Result<(), RemoteError> {
        let mut file = VerifiedFile::create(&self.name, digest, FUNCTION, dest)?
            .stalling_after(self.endpoint.timeout());
        if !is_empty_blob(digest, FUNCTION) {
            self.get_blob(digest, &mut file)?;
        }
        file.finish(false)
    }

    fn download_bytes(&self, digest: &Digest) -> Result<Vec<u8>, RemoteError> {
        let mut sink = VerifiedBytes::new(&self.name, digest, FUNCTION)
            .stalling_after(self.endpoint.timeout());
        if !is_empty_blob(digest, FUNCTION) {
            self.get_blob(digest, &mut sink)?;
        }
        sink.finish()
    }

    fn get_action_result(&self, action: &Digest) -> Result<Option<re::ActionResult>, RemoteError> {
        let Some(response) = self.exchange("GET ac", Request::Get(self.url("ac", action)))? else {
            return Ok(None);
        };
        let mut bytes = Vec::new();
        response
            .into_body()
            .into_reader()
            .take(MAX_ACTION_RESULT + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| self.read_error(e))?;
        if bytes.len() as u64 > MAX_ACTION_RESULT {
            return Err(RemoteError::Protocol {
                endpoint: self.name.clone(),
                what: "action-cache entry",
                detail: format!(
                    "{action} is larger than {} MiB, the most pochi reads of an entry; it is not used",
                    MAX_ACTION_RESULT >> 20
                ),
            });
        }
        re::ActionResult::decode(bytes.as_slice())
            .map(Some)
            .map_err(|e| RemoteError::Protocol {
                endpoint: self.name.clone(),
                what: "action-cache entry",
                detail: format!("{action} is not an ActionResult: {e}"),
            })
    }

    fn update_action_result(
        &self,
        action: &Digest,
        result: &re::ActionResult,
    ) -> Result<(), RemoteError> {
        let bytes = result.encode_to_vec();
        let size = bytes.len() as u64;
        let mut reader = bytes.as_slice();
        self.put("ac", action, ureq::SendBody::from_reader(&mut reader), size)
    }
}
