//! The remote client's errors: each says what failed, against which server, and what to
//! do about it.

use std::path::PathBuf;
use std::time::Duration;

use super::digest::Digest;

/// A bad `--remote-*` setting: the URL, a header, or a timeout.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EndpointError {
    #[error(
        "`{url}` is not a remote URL: {reason}; write grpc://HOST:PORT, grpcs://HOST[:PORT], \
         http://HOST[:PORT]/PREFIX or https://HOST[:PORT]/PREFIX"
    )]
    Url { url: String, reason: String },
    #[error("`{url}` has an unsupported scheme `{scheme}`; use grpc, grpcs, http or https")]
    Scheme { url: String, scheme: String },
    #[error(
        "`{url}` carries credentials in the URL; pass them as a header instead \
         (e.g. --remote-header authorization=Basic ...), so they are not printed with the URL"
    )]
    Credentials { url: String },
    #[error(
        "`{url}` has a path; a gRPC server takes no path: give the instance name separately \
         (--remote-instance NAME)"
    )]
    GrpcPath { url: String },
    #[error("header `{header}` is not KEY=VALUE: {reason}")]
    Header { header: String, reason: String },
    #[error(
        "`{url}` is a Bazel HTTP cache URL; remote execution needs a REAPI server: write \
         grpc://HOST:PORT or grpcs://HOST[:PORT]"
    )]
    ExecutorScheme { url: String },
}

/// A TLS file (`--tls-ca-cert`, `--tls-client-cert`, `--tls-client-key`) pochi cannot use.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum TlsError {
    #[error("cannot read {file} `{}`: {error}", path.display())]
    #[diagnostic(help("give {flag} the path of a readable PEM file"))]
    Read {
        file: String,
        flag: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{file} `{}` is not usable: {detail}", path.display())]
    #[diagnostic(help(
        "give {flag} a PEM file (`-----BEGIN ...-----` blocks); convert a DER file with \
         `openssl x509 -inform der -in FILE -out FILE.pem` (a key: `openssl pkey -inform der`)"
    ))]
    Malformed {
        file: String,
        flag: &'static str,
        path: PathBuf,
        detail: String,
    },
    #[error(
        "the key `{}` (--tls-client-key) does not belong to the certificate `{}` \
         (--tls-client-cert)", key.display(), certificate.display()
    )]
    #[diagnostic(help(
        "give the key the certificate was made for: `openssl x509 -noout -pubkey -in CERT` \
         and `openssl pkey -pubout -in KEY` print the same public key for a matching pair"
    ))]
    KeyMismatch { certificate: PathBuf, key: PathBuf },
    #[error("the key `{}` (--tls-client-key) cannot sign: {detail}", path.display())]
    #[diagnostic(help("give an RSA, ECDSA (P-256, P-384) or Ed25519 key in PEM"))]
    UnusableKey { path: PathBuf, detail: String },
    #[error("{given} is given without {missing}")]
    #[diagnostic(help(
        "a client certificate (mTLS) needs both the certificate and its key: give {missing} \
         too, or neither"
    ))]
    HalfIdentity { given: String, missing: String },
    #[error("cannot set up TLS for {endpoint}: {detail}")]
    Setup { endpoint: String, detail: String },
}

/// An operation against a remote cache or executor that failed.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum RemoteError {
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Tls(#[from] TlsError),
    /// The server's certificate did not verify against the trusted roots.
    #[error(
        "the certificate of the remote server {endpoint} does not verify ({detail}) for \
         {operation}: pochi trusts the Mozilla roots and the CA given with --tls-ca-cert"
    )]
    #[diagnostic(help(
        "give the CA that signed the server's certificate with --tls-ca-cert FILE (or \
         POCHI_TLS_CA_CERT); if the certificate is for another name, use that name in the URL"
    ))]
    ServerCertificate {
        endpoint: String,
        operation: &'static str,
        detail: String,
    },
    /// The server refused the client's certificate, or its absence (mTLS).
    #[error(
        "the remote server {endpoint} did not accept the TLS connection for {operation} \
         without a client certificate it trusts (--tls-client-cert, --tls-client-key): {detail}"
    )]
    #[diagnostic(help(
        "give a client certificate the server trusts and its key with --tls-client-cert FILE \
         --tls-client-key FILE (or POCHI_TLS_CLIENT_CERT, POCHI_TLS_CLIENT_KEY)"
    ))]
    ClientCertificate {
        endpoint: String,
        operation: &'static str,
        detail: String,
    },
    #[error(
        "cannot reach the remote server {endpoint} for {operation}: {detail}; check the \
         address and that the server is running"
    )]
    Unreachable {
        endpoint: String,
        operation: &'static str,
        detail: String,
    },
    #[error(
        "the remote server {endpoint} did not answer {operation} within {}; it may be \
         overloaded or hung (raise the timeout if it is only slow)", seconds(*.timeout)
    )]
    Timeout {
        endpoint: String,
        operation: &'static str,
        timeout: Duration,
    },
    #[error(
        "the remote server {endpoint} refused {operation}: {message}; check the credentials \
         (--remote-header) and the instance name"
    )]
    PermissionDenied {
        endpoint: String,
        operation: &'static str,
        message: String,
    },
    #[error("the remote server {endpoint} failed {operation}: {code}: {message}")]
    Server {
        endpoint: String,
        operation: &'static str,
        code: String,
        message: String,
    },
    #[error("the remote server {endpoint} has no blob {digest} ({operation})")]
    NotFound {
        endpoint: String,
        operation: &'static str,
        digest: Digest,
    },
    #[error(
        "the remote server {endpoint} returned other bytes for blob {expected} (they hash to \
         {actual}); its copy is corrupt and was not used: delete it on the server"
    )]
    DigestMismatch {
        endpoint: String,
        expected: Digest,
        actual: Digest,
    },
    #[error(
        "the download of blob {digest} from {endpoint} stalled: {received} byte(s) in {} (at \
         least {needed} are needed in that time; the server is trickling or sending empty \
         messages); it was not used", seconds(*.window)
    )]
    Stalled {
        endpoint: String,
        digest: Digest,
        received: u64,
        needed: u64,
        window: Duration,
    },
    #[error(
        "`{}` changed while it was uploaded (expected {expected}, read {actual}); nothing was \
         stored, retry once the file is stable", path.display()
    )]
    LocalFileChanged {
        path: PathBuf,
        expected: Digest,
        actual: Digest,
    },
    #[error("the remote server {endpoint} sent a malformed {what}: {detail}")]
    Protocol {
        endpoint: String,
        what: &'static str,
        detail: String,
    },
    /// An output tree pochi will not write: it breaks REAPI's rules for one, claims more
    /// than pochi holds in memory, or its links lead out of the output.
    #[error("the remote server {endpoint} sent an output tree pochi refuses: {detail}")]
    RefusedTree { endpoint: String, detail: String },
    #[error("`{digest}` is not a valid digest: {reason}")]
    InvalidDigest { digest: String, reason: String },
    #[error(
        "the remote server {endpoint} does not accept {function} digests (it offers {offered}); \
         use one it offers"
    )]
    UnsupportedDigestFunction {
        endpoint: String,
        function: &'static str,
        offered: String,
    },
    #[error("cannot {action} `{}`: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid input tree: {0}")]
    InputTree(String),
    #[error(
        "the output tree from {endpoint} names an unsafe path `{path}`; nothing outside the \
         destination is written"
    )]
    UnsafePath { endpoint: String, path: String },
    #[error("cannot start the remote client's runtime: {0}")]
    Runtime(std::io::Error),
    #[error("the remote server {endpoint} is not used for the rest of this build: {first}")]
    Down { endpoint: String, first: String },
    #[error(
        "the remote server {endpoint} does not execute actions (its Capabilities say \
         execution is disabled); give a server with the Execution service, or use this one \
         as a remote cache only"
    )]
    NoExecution { endpoint: String },
}

/// A remote execution that did not give a usable result; what to do is its `help`.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum ExecutionError {
    #[error(transparent)]
    #[diagnostic(transparent)]
    Remote(#[from] RemoteError),
    #[error(
        "no worker of the farm took the action within {}: no worker offers {}",
        seconds(*.waited), properties(platform)
    )]
    #[diagnostic(help(
        "check that the farm has a worker offering these properties (docs/remote.md lists what pochi sets), or raise --remote-queue-timeout"
    ))]
    Unschedulable {
        waited: Duration,
        platform: Vec<(String, String)>,
    },
    #[error("the remote action was cancelled (the server was asked to cancel it)")]
    Cancelled,
    #[error("the remote server {endpoint} failed the action: {code:?}: {message}")]
    #[diagnostic(help("the farm's message says why; its logs say more"))]
    Failed {
        endpoint: String,
        code: super::status::Code,
        message: String,
    },
    #[error("the remote action's result is unusable: {0}; nothing of it was used")]
    #[diagnostic(help("run the build again; if it repeats, check the worker that ran it"))]
    BadResult(String),
}

/// Platform properties as `key=value, key=value` (or a note that there are none).
pub(crate) fn properties(platform: &[(String, String)]) -> String {
    if platform.is_empty() {
        return "an empty platform (the action names no properties)".into();
    }
    platform
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn seconds(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_server_and_the_remedy() {
        let timeout = RemoteError::Timeout {
            endpoint: "grpc://127.0.0.1:1".into(),
            operation: "GetCapabilities",
            timeout: Duration::from_millis(1500),
        };
        let text = timeout.to_string();
        assert!(text.contains("grpc://127.0.0.1:1"), "{text}");
        assert!(text.contains("1.5 s"), "{text}");
    }

    #[test]
    fn unschedulable_names_every_property_and_the_remedy() {
        let error = ExecutionError::Unschedulable {
            waited: Duration::from_secs(30),
            platform: vec![
                ("OSFamily".into(), "linux".into()),
                ("gpu".into(), "NVIDIA H100".into()),
            ],
        };
        let text = error.to_string();
        assert!(text.contains("within 30.0 s"), "{text}");
        assert!(
            text.ends_with("no worker offers OSFamily=linux, gpu=NVIDIA H100"),
            "{text}"
        );
        let help = miette::Diagnostic::help(&error).unwrap().to_string();
        assert!(help.contains("--remote-queue-timeout"), "{help}");
        let none = ExecutionError::Unschedulable {
            waited: Duration::from_secs(3),
            platform: Vec::new(),
        };
        assert!(none.to_string().contains("names no properties"), "{none}");
    }
}
