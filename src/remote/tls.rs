//! TLS for remote servers beyond the Mozilla roots: a company CA trusted in addition to
//! them (`--tls-ca-cert`) and a client certificate with its key for mTLS
//! (`--tls-client-cert`, `--tls-client-key`). The files are read and checked once, when
//! the endpoint is set up, so a bad file stops the command before anything is built; the
//! transports (gRPC, HTTP) take the checked certificates from here. Also: which TLS
//! failures of a connection are the server's certificate, and which the client's.

use std::fmt;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use rustls::client::ResolvesClientCert;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::sign::CertifiedKey;
use rustls::{AlertDescription, ClientConfig, ClientConnection, RootCertStore, SignatureScheme};

use super::endpoint::{Endpoint, Protocol};
use super::error::{RemoteError, TlsError};

/// One of the TLS files, as the user names it: its flag and its environment variable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TlsFile {
    CaCert,
    ClientCert,
    ClientKey,
}

impl TlsFile {
    pub(crate) fn flag(self) -> &'static str {
        match self {
            TlsFile::CaCert => "--tls-ca-cert",
            TlsFile::ClientCert => "--tls-client-cert",
            TlsFile::ClientKey => "--tls-client-key",
        }
    }

    pub(crate) fn variable(self) -> &'static str {
        match self {
            TlsFile::CaCert => "POCHI_TLS_CA_CERT",
            TlsFile::ClientCert => "POCHI_TLS_CLIENT_CERT",
            TlsFile::ClientKey => "POCHI_TLS_CLIENT_KEY",
        }
    }
}

/// `--tls-ca-cert (POCHI_TLS_CA_CERT)`.
impl fmt::Display for TlsFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.flag(), self.variable())
    }
}

/// The TLS files given on the command line or in the environment, not yet read.
#[derive(Clone, Debug, Default)]
pub struct TlsPaths {
    pub ca_cert: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

/// Checked TLS material for an endpoint: extra trusted CAs and a client identity. Empty
/// (the default): the Mozilla roots only, no client certificate.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    ca: Option<CaCertificates>,
    client: Option<ClientIdentity>,
}

#[derive(Clone, PartialEq, Eq)]
struct CaCertificates {
    pem: Arc<[u8]>,
    certificates: Vec<CertificateDer<'static>>,
}

#[derive(Clone, PartialEq, Eq)]
struct ClientIdentity {
    certificate_pem: Arc<[u8]>,
    key_pem: Arc<[u8]>,
    chain: Vec<CertificateDer<'static>>,
}

/// Says which parts are set, never the key.
impl fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSettings")
            .field(
                "ca_certificates",
                &self.ca.as_ref().map_or(0, |ca| ca.certificates.len()),
            )
            .field("client_certificate", &self.client.is_some())
            .finish()
    }
}

impl TlsSettings {
    /// Reads and checks the files: each CA file holds at least one X.509 certificate in
    /// PEM, the client certificate and key come together, and the key belongs to the
    /// certificate.
    pub fn load(paths: &TlsPaths) -> Result<TlsSettings, TlsError> {
        let given = |path: &Option<PathBuf>| path.clone().filter(|p| !p.as_os_str().is_empty());
        let ca = given(&paths.ca_cert)
            .map(|path| load_ca(&path))
            .transpose()?;
        let client = match (given(&paths.client_cert), given(&paths.client_key)) {
            (None, None) => None,
            (Some(_), None) => return Err(half_identity(TlsFile::ClientCert, TlsFile::ClientKey)),
            (None, Some(_)) => return Err(half_identity(TlsFile::ClientKey, TlsFile::ClientCert)),
            (Some(certificate), Some(key)) => Some(load_identity(&certificate, &key)?),
        };
        Ok(TlsSettings { ca, client })
    }

    /// Whether nothing beyond the Mozilla roots is set.
    pub fn is_empty(&self) -> bool {
        self.ca.is_none() && self.client.is_none()
    }

    /// Whether a client certificate (mTLS) is set.
    pub fn has_client_certificate(&self) -> bool {
        self.client.is_some()
    }

    /// The extra CA certificates as the PEM file held them.
    pub(crate) fn ca_pem(&self) -> Option<&[u8]> {
        self.ca.as_ref().map(|ca| &*ca.pem)
    }

    /// The extra CA certificates, DER.
    pub(crate) fn ca_certificates(&self) -> &[CertificateDer<'static>] {
        self.ca.as_ref().map_or(&[], |ca| &ca.certificates)
    }

    /// The client certificate (with any intermediates) and its key, PEM.
    pub(crate) fn identity_pem(&self) -> Option<(&[u8], &[u8])> {
        self.client
            .as_ref()
            .map(|c| (&*c.certificate_pem, &*c.key_pem))
    }

    /// The client certificate chain, DER.
    pub(crate) fn client_chain(&self) -> &[CertificateDer<'static>] {
        self.client.as_ref().map_or(&[], |c| &c.chain)
    }
}

fn half_identity(given: TlsFile, missing: TlsFile) -> TlsError {
    TlsError::HalfIdentity {
        given: given.to_string(),
        missing: missing.to_string(),
    }
}

fn read(file: TlsFile, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|error| TlsError::Read {
        file: file.to_string(),
        flag: file.flag(),
        path: path.to_owned(),
        error,
    })
}

/// The X.509 certificates of a PEM file: at least one, each one that parses.
fn certificates(
    file: TlsFile,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let malformed = |detail: String| TlsError::Malformed {
        file: file.to_string(),
        flag: file.flag(),
        path: path.to_owned(),
        detail,
    };
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| malformed(format!("its PEM does not parse ({e})")))?;
    if certificates.is_empty() {
        return Err(malformed(
            "it holds no `-----BEGIN CERTIFICATE-----` block".into(),
        ));
    }
    let mut store = RootCertStore::empty();
    for (index, certificate) in certificates.iter().enumerate() {
        store
            .add(certificate.clone())
            .map_err(|e| malformed(format!("certificate {} is not X.509 ({e})", index + 1)))?;
    }
    Ok(certificates)
}

fn load_ca(path: &Path) -> Result<CaCertificates, TlsError> {
    let pem = read(TlsFile::CaCert, path)?;
    let certificates = certificates(TlsFile::CaCert, path, &pem)?;
    Ok(CaCertificates {
        pem: pem.into(),
        certificates,
    })
}

fn load_identity(certificate_path: &Path, key_path: &Path) -> Result<ClientIdentity, TlsError> {
    let certificate_pem = read(TlsFile::ClientCert, certificate_path)?;
    let chain = certificates(TlsFile::ClientCert, certificate_path, &certificate_pem)?;
    let key_pem = read(TlsFile::ClientKey, key_path)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Malformed {
        file: TlsFile::ClientKey.to_string(),
        flag: TlsFile::ClientKey.flag(),
        path: key_path.to_owned(),
        detail: match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "it holds no `-----BEGIN PRIVATE KEY-----` (PKCS#8), `RSA PRIVATE KEY` or `EC PRIVATE KEY` block".into()
            }
            other => format!("its PEM does not parse ({other})"),
        },
    })?;
    check_pair(&chain, key, certificate_path, key_path)?;
    Ok(ClientIdentity {
        certificate_pem: certificate_pem.into(),
        key_pem: key_pem.into(),
        chain,
    })
}

/// Whether the key is one rustls signs with and belongs to the first certificate.
fn check_pair(
    chain: &[CertificateDer<'static>],
    key: PrivateKeyDer<'static>,
    certificate_path: &Path,
    key_path: &Path,
) -> Result<(), TlsError> {
    let provider = rustls::crypto::ring::default_provider();
    match CertifiedKey::from_der(chain.to_vec(), key, &provider) {
        Ok(_) => Ok(()),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(TlsError::KeyMismatch {
                certificate: certificate_path.to_owned(),
                key: key_path.to_owned(),
            })
        }
        Err(e) => Err(TlsError::UnusableKey {
            path: key_path.to_owned(),
            detail: e.to_string(),
        }),
    }
}

/// Which side of a TLS connection failed, from the rustls error behind a transport error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TlsFailure {
    /// The server's certificate did not verify against the trusted roots.
    ServerCertificate,
    /// The server refused the client's certificate, or its absence.
    ClientCertificate,
}

impl TlsFailure {
    /// The error for this failure of a call to `endpoint`.
    pub(crate) fn error(
        self,
        endpoint: String,
        operation: &'static str,
        detail: String,
    ) -> RemoteError {
        match self {
            TlsFailure::ServerCertificate => RemoteError::ServerCertificate {
                endpoint,
                operation,
                detail,
            },
            TlsFailure::ClientCertificate => RemoteError::ClientCertificate {
                endpoint,
                operation,
                detail,
            },
        }
    }
}

/// The TLS failure somewhere in `error`'s chain of causes, if any (an `io::Error`
/// wrapping one included, whose `source` skips what it wraps).
fn tls_failure(error: &(dyn std::error::Error + 'static)) -> Option<(TlsFailure, String)> {
    let mut current = Some(error);
    while let Some(cause) = current {
        if let Some(rustls_error) = cause.downcast_ref::<rustls::Error>() {
            return classify(rustls_error).map(|kind| (kind, rustls_error.to_string()));
        }
        if let Some(found) = cause
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            .and_then(|inner| tls_failure(inner))
        {
            return Some(found);
        }
        current = cause.source();
    }
    None
}

/// What a client learned of its server's wish for a client certificate: asked once, on
/// the first failed call that may be a refusal of none (a definite answer is kept).
#[derive(Debug, Default)]
pub(crate) struct ClientCertificateProbe(OnceLock<bool>);

impl ClientCertificateProbe {
    /// The TLS failure behind `error`, a failed call to `endpoint`: one rustls names, or
    /// (when `closed` says the connection ended, and pochi sent no client certificate) a
    /// server that asks for a client certificate. Such a server (mTLS) ends the
    /// connection after a handshake without one, often before its alert can be read.
    pub(crate) fn failure(
        &self,
        endpoint: &Endpoint,
        error: &(dyn std::error::Error + 'static),
        closed: bool,
    ) -> Option<(TlsFailure, String)> {
        if !endpoint.is_tls() {
            return None;
        }
        if let Some(found) = tls_failure(error) {
            return Some(found);
        }
        if !closed || endpoint.tls().has_client_certificate() {
            return None;
        }
        let asks = match self.0.get() {
            Some(asks) => *asks,
            None => {
                let asks = asks_for_client_certificate(endpoint)?;
                *self.0.get_or_init(|| asks)
            }
        };
        asks.then(|| {
            let detail = "it asks for one during the handshake, then ended the connection";
            (TlsFailure::ClientCertificate, detail.to_owned())
        })
    }
}

/// Whether the server asks for a client certificate during the TLS handshake
/// (CertificateRequest), learned by a handshake of its own that sends none and no data;
/// None when it cannot tell (no connection, a handshake that fails before).
fn asks_for_client_certificate(endpoint: &Endpoint) -> Option<bool> {
    let asked = Arc::new(AskedResolver::default());
    let config = probe_config(endpoint, Arc::clone(&asked) as Arc<dyn ResolvesClientCert>)?;
    let name = ServerName::try_from(endpoint.host().to_owned()).ok()?;
    let mut connection = ClientConnection::new(Arc::new(config), name).ok()?;
    let limit = endpoint.connect_timeout();
    let mut stream = (endpoint.host(), endpoint.port())
        .to_socket_addrs()
        .ok()?
        .find_map(|address| TcpStream::connect_timeout(&address, limit).ok())?;
    stream.set_read_timeout(Some(limit)).ok()?;
    stream.set_write_timeout(Some(limit)).ok()?;
    while connection.is_handshaking() && !asked.asked.load(Ordering::SeqCst) {
        if connection.complete_io(&mut stream).is_err() {
            break;
        }
    }
    let asked = asked.asked.load(Ordering::SeqCst);
    (asked || !connection.is_handshaking()).then_some(asked)
}

/// The Mozilla roots and the endpoint's CAs, ALPN as its protocol speaks, and `resolver`.
fn probe_config(
    endpoint: &Endpoint,
    resolver: Arc<dyn ResolvesClientCert>,
) -> Option<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(webpki_root_certs::TLS_SERVER_ROOT_CERTS.iter().cloned());
    roots.add_parsable_certificates(endpoint.tls().ca_certificates().iter().cloned());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(roots)
        .with_client_cert_resolver(resolver);
    config.alpn_protocols = match endpoint.protocol() {
        Protocol::Grpc { .. } => vec![b"h2".to_vec()],
        Protocol::Http { .. } => vec![b"http/1.1".to_vec()],
    };
    Some(config)
}

/// A client-certificate resolver that has none and notes that the server asked.
#[derive(Debug, Default)]
struct AskedResolver {
    asked: AtomicBool,
}

impl ResolvesClientCert for AskedResolver {
    fn resolve(
        &self,
        _issuers: &[&[u8]],
        _schemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.asked.store(true, Ordering::SeqCst);
        None
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn classify(error: &rustls::Error) -> Option<TlsFailure> {
    match error {
        rustls::Error::InvalidCertificate(_) => Some(TlsFailure::ServerCertificate),
        rustls::Error::AlertReceived(
            AlertDescription::CertificateRequired
            | AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::AccessDenied,
        ) => Some(TlsFailure::ClientCertificate),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_is_found_behind_an_io_error() {
        let inner = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, inner);
        let (kind, text) = tls_failure(&io).unwrap();
        assert_eq!(kind, TlsFailure::ServerCertificate);
        assert!(text.contains("UnknownIssuer"), "{text}");
        let alert = rustls::Error::AlertReceived(AlertDescription::CertificateRequired);
        assert_eq!(
            tls_failure(&alert).map(|f| f.0),
            Some(TlsFailure::ClientCertificate)
        );
        let other = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(tls_failure(&other), None);
    }

    #[test]
    fn files_are_checked_and_name_their_flag() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let error = TlsSettings::load(&TlsPaths {
            ca_cert: Some(missing.clone()),
            ..TlsPaths::default()
        })
        .unwrap_err();
        assert!(matches!(error, TlsError::Read { .. }), "{error}");
        assert!(error.to_string().contains("--tls-ca-cert"), "{error}");

        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate\n").unwrap();
        let error = TlsSettings::load(&TlsPaths {
            ca_cert: Some(garbage.clone()),
            ..TlsPaths::default()
        })
        .unwrap_err();
        assert!(matches!(error, TlsError::Malformed { .. }), "{error}");

        let bad_body = dir.path().join("bad.pem");
        std::fs::write(
            &bad_body,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let error = TlsSettings::load(&TlsPaths {
            ca_cert: Some(bad_body),
            ..TlsPaths::default()
        })
        .unwrap_err();
        assert!(error.to_string().contains("not X.509"), "{error}");

        let error = TlsSettings::load(&TlsPaths {
            client_key: Some(garbage),
            ..TlsPaths::default()
        })
        .unwrap_err();
        assert!(matches!(error, TlsError::HalfIdentity { .. }), "{error}");
        assert!(error.to_string().contains("--tls-client-cert"), "{error}");

        let empty = TlsSettings::load(&TlsPaths {
            ca_cert: Some(PathBuf::new()),
            ..TlsPaths::default()
        })
        .unwrap();
        assert!(empty.is_empty());
    }
}
