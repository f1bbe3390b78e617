//! Where a remote server is and how to talk to it: the URL (gRPC or Bazel's HTTP cache,
//! plain or TLS), the REAPI instance name, extra headers (auth tokens), timeouts, and the
//! TLS settings beyond the Mozilla roots (a company CA, a client certificate).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use super::error::EndpointError;
use super::tls::TlsSettings;

/// The wire protocol a URL's scheme selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// REAPI v2 over gRPC (`grpc://` plain, `grpcs://` TLS).
    Grpc { tls: bool },
    /// Bazel's HTTP cache protocol (`http://`, `https://`).
    Http { tls: bool },
}

/// A remote cache or executor: parsed and checked once, then handed to `connect`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    protocol: Protocol,
    host: String,
    port: u16,
    /// For HTTP: the path before `/ac/` and `/cas/`, without a trailing slash.
    prefix: String,
    instance: String,
    headers: Vec<(String, String)>,
    timeout: Duration,
    connect_timeout: Duration,
    tls: TlsSettings,
}

/// Default limit for one call (a unary RPC, or the wait for each chunk of a stream).
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Default limit for opening a connection.
pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl Endpoint {
    /// Parses `grpc://host:port`, `grpcs://host[:port]`, `http://host[:port]/prefix` or
    /// `https://host[:port]/prefix`.
    pub fn parse(url: &str) -> Result<Self, EndpointError> {
        // Every error shows the URL without the credentials it may carry.
        let shown = redact_url(url);
        let bad = |reason: &str| EndpointError::Url {
            url: shown.clone(),
            reason: reason.to_owned(),
        };
        let uri = http::Uri::from_str(url).map_err(|e| bad(&e.to_string()))?;
        let scheme = uri.scheme_str().ok_or_else(|| bad("it has no scheme"))?;
        let protocol = match scheme.to_ascii_lowercase().as_str() {
            "grpc" => Protocol::Grpc { tls: false },
            "grpcs" => Protocol::Grpc { tls: true },
            "http" => Protocol::Http { tls: false },
            "https" => Protocol::Http { tls: true },
            _ => {
                return Err(EndpointError::Scheme {
                    url: shown.clone(),
                    scheme: scheme.to_owned(),
                });
            }
        };
        let authority = uri.authority().ok_or_else(|| bad("it has no host"))?;
        if authority.as_str().contains('@') {
            return Err(EndpointError::Credentials { url: shown.clone() });
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("it has no host"));
        }
        if uri.query().is_some() {
            return Err(bad("it has a query (`?...`)"));
        }
        let tls = matches!(
            protocol,
            Protocol::Grpc { tls: true } | Protocol::Http { tls: true }
        );
        let port_text = authority
            .as_str()
            .strip_prefix(authority.host())
            .unwrap_or("");
        let port = match (authority.port_u16(), port_text) {
            (Some(0), _) => return Err(bad("port 0 is not a port")),
            (Some(port), _) => port,
            (None, "") => {
                if tls {
                    443
                } else {
                    80
                }
            }
            (None, _) => return Err(bad("the port is not a number from 1 to 65535")),
        };
        let prefix = uri.path().trim_end_matches('/').to_owned();
        if matches!(protocol, Protocol::Grpc { .. }) && !prefix.is_empty() {
            return Err(EndpointError::GrpcPath { url: shown.clone() });
        }
        Ok(Endpoint {
            protocol,
            host: host.to_owned(),
            port,
            prefix,
            instance: String::new(),
            headers: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            tls: TlsSettings::default(),
        })
    }

    /// Sets the REAPI instance name (ignored by the HTTP protocol, which has none).
    pub fn with_instance(mut self, instance: &str) -> Self {
        self.instance = instance.trim_matches('/').to_owned();
        self
    }

    /// Adds a header given as `KEY=VALUE` (e.g. `x-buildbuddy-api-key=...`).
    pub fn with_header_arg(mut self, arg: &str) -> Result<Self, EndpointError> {
        let (key, value) = parse_header(arg)?;
        self.headers.push((key, value));
        Ok(self)
    }

    /// Sets the limit for one call (a unary RPC, or each chunk of a stream).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets the limit for opening a connection.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the extra CAs and the client certificate (used by `grpcs://` and `https://`).
    pub fn with_tls(mut self, tls: TlsSettings) -> Self {
        self.tls = tls;
        self
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The HTTP path prefix (empty or starting with `/`, no trailing slash).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Extra headers, keys lowercase, in the order given.
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// The TLS settings beyond the Mozilla roots (empty unless `with_tls` set some).
    pub fn tls(&self) -> &TlsSettings {
        &self.tls
    }

    /// Whether the URL asks for TLS (`grpcs://`, `https://`).
    pub fn is_tls(&self) -> bool {
        matches!(
            self.protocol,
            Protocol::Grpc { tls: true } | Protocol::Http { tls: true }
        )
    }

    /// `scheme://host:port`, the address a transport dials (`http`/`https` for gRPC too).
    pub fn origin(&self) -> String {
        let scheme = if self.is_tls() { "https" } else { "http" };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!("{scheme}://{host}:{}", self.port)
    }
}

impl FromStr for Endpoint {
    type Err = EndpointError;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        Endpoint::parse(url)
    }
}

/// The endpoint as a user would write it (no headers: they may hold secrets).
impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.protocol {
            Protocol::Grpc { tls } => {
                if tls {
                    "grpcs"
                } else {
                    "grpc"
                }
            }
            Protocol::Http { tls } => {
                if tls {
                    "https"
                } else {
                    "http"
                }
            }
        };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        write!(f, "{scheme}://{host}:{}{}", self.port, self.prefix)?;
        if !self.instance.is_empty() {
            write!(f, " (instance {})", self.instance)?;
        }
        Ok(())
    }
}

/// Parses `KEY=VALUE`: the key a valid lowercase HTTP/gRPC header name, not a binary
/// (`-bin`) or reserved (`grpc-`, `:`) one; the value visible ASCII or spaces.
pub(crate) fn parse_header(arg: &str) -> Result<(String, String), EndpointError> {
    let bad = |reason: &str| EndpointError::Header {
        header: redact(arg),
        reason: reason.to_owned(),
    };
    let (key, value) = arg.split_once('=').ok_or_else(|| bad("there is no `=`"))?;
    let key = key.trim().to_ascii_lowercase();
    let value = value.trim();
    if key.is_empty() {
        return Err(bad("the key is empty"));
    }
    let key_ok = key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !key_ok {
        return Err(bad(
            "the key may hold only letters, digits, `-`, `_` and `.`",
        ));
    }
    if key.starts_with("grpc-") || key.ends_with("-bin") {
        return Err(bad(
            "`grpc-` keys are reserved and binary `-bin` keys are not supported",
        ));
    }
    if !value
        .bytes()
        .all(|b| b == b' ' || b == b'\t' || b.is_ascii_graphic())
    {
        return Err(bad("the value may hold only printable ASCII"));
    }
    Ok((key, value.to_owned()))
}

/// `KEY=...`: a header argument without its value, which may be a secret.
/// A header argument as errors show it: its key, never its value (`KEY=...`); without
/// `=`, only what comes before a `:` or a space, since `authorization: Bearer TOKEN` is a
/// likely mistake.
fn redact(arg: &str) -> String {
    match arg.split_once('=') {
        Some((key, _)) => format!("{key}=..."),
        None => {
            let name: String = arg
                .split([':', ' ', '\t'])
                .next()
                .unwrap_or("")
                .chars()
                .take(40)
                .collect();
            if name.len() < arg.len() {
                format!("{name}...")
            } else {
                name
            }
        }
    }
}

/// A URL as messages show it: credentials in its authority (`user:token@`) become `***@`.
pub(super) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_error_shows_a_secret() {
        for url in [
            "grpcs://user:s3cret-token@farm.example.com",
            "grpcs://s3cret-token@farm.example.com:443",
            "gopher://user:s3cret-token@farm.example.com",
            "https://user:s3cret-token@cache.example.com/prefix",
            "grpc://user:s3cret-token@host/path",
        ] {
            let error = Endpoint::parse(url).unwrap_err().to_string();
            assert!(!error.contains("s3cret"), "{error}");
            assert!(error.contains("***@"), "{error}");
        }
        for header in [
            "authorization: Bearer s3cret",
            "authorization:s3cret",
            "x=\u{1}s3cret",
        ] {
            let error = parse_header(header).unwrap_err().to_string();
            assert!(!error.contains("s3cret"), "{error}");
        }
    }

    #[test]
    fn grpc_urls() {
        let e = Endpoint::parse("grpc://127.0.0.1:8980").unwrap();
        assert_eq!(e.protocol(), Protocol::Grpc { tls: false });
        assert_eq!((e.host(), e.port()), ("127.0.0.1", 8980));
        assert_eq!(e.origin(), "http://127.0.0.1:8980");
        let e = Endpoint::parse("grpcs://remote.buildbuddy.io").unwrap();
        assert_eq!(e.protocol(), Protocol::Grpc { tls: true });
        assert_eq!(e.port(), 443);
        assert_eq!(e.origin(), "https://remote.buildbuddy.io:443");
        let e = Endpoint::parse("grpc://[::1]:9092/").unwrap();
        assert_eq!(e.host(), "::1");
        assert_eq!(e.origin(), "http://[::1]:9092");
        assert_eq!(e.to_string(), "grpc://[::1]:9092");
    }

    #[test]
    fn http_urls_keep_their_prefix() {
        let e = Endpoint::parse("http://cache.local:8080/team/a/").unwrap();
        assert_eq!(e.protocol(), Protocol::Http { tls: false });
        assert_eq!(e.prefix(), "/team/a");
        assert_eq!(e.to_string(), "http://cache.local:8080/team/a");
        let e = Endpoint::parse("https://cache.example.com").unwrap();
        assert_eq!((e.port(), e.prefix()), (443, ""));
    }

    #[test]
    fn bad_urls_are_refused_with_the_reason() {
        assert!(matches!(
            Endpoint::parse("ftp://host:1"),
            Err(EndpointError::Scheme { .. })
        ));
        assert!(matches!(
            Endpoint::parse("grpc://host:1/main"),
            Err(EndpointError::GrpcPath { .. })
        ));
        assert!(matches!(
            Endpoint::parse("https://user:secret@host/x"),
            Err(EndpointError::Credentials { .. })
        ));
        assert!(matches!(
            Endpoint::parse("host:1"),
            Err(EndpointError::Url { .. }) | Err(EndpointError::Scheme { .. })
        ));
        assert!(Endpoint::parse("").is_err());
        assert!(Endpoint::parse("http://host:99999").is_err());
        assert!(Endpoint::parse("http://host/x?y=1").is_err());
        let message = Endpoint::parse("grpc://host:1/main")
            .unwrap_err()
            .to_string();
        assert!(message.contains("--remote-instance"), "{message}");
    }

    #[test]
    fn options_are_kept() {
        let e = Endpoint::parse("grpc://h:1")
            .unwrap()
            .with_instance("/main/")
            .with_timeout(Duration::from_secs(2))
            .with_connect_timeout(Duration::from_millis(300))
            .with_header_arg("X-BuildBuddy-API-Key = abc123")
            .unwrap();
        assert_eq!(e.instance(), "main");
        assert_eq!(e.timeout(), Duration::from_secs(2));
        assert_eq!(e.connect_timeout(), Duration::from_millis(300));
        assert_eq!(
            e.headers(),
            [("x-buildbuddy-api-key".to_owned(), "abc123".to_owned())]
        );
        assert_eq!(e.to_string(), "grpc://h:1 (instance main)");
    }

    #[test]
    fn headers_are_checked_and_values_never_echoed() {
        assert_eq!(
            parse_header("authorization=Bearer a=b").unwrap(),
            ("authorization".into(), "Bearer a=b".into())
        );
        assert!(parse_header("novalue").is_err());
        assert!(parse_header("=v").is_err());
        assert!(parse_header("bad key=v").is_err());
        assert!(parse_header("grpc-timeout=1").is_err());
        assert!(parse_header("x-token-bin=AAAA").is_err());
        let err = parse_header("x-key=secret\u{7}").unwrap_err().to_string();
        assert!(!err.contains("secret"), "{err}");
    }
}
