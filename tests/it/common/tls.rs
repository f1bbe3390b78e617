//! Certificates for the TLS tests, made with openssl (`openssl` on PATH) in a private
//! directory: a private CA (EC P-256), a server certificate signed by it for `localhost`,
//! `127.0.0.1` and `::1`, a client certificate signed by it, and a stranger's key that
//! belongs to neither. The servers of `common::servers` serve them (`start_tls`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use super::servers::{delete_at_exit, output_within};

const CA_CONFIG: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = pochi test CA
[v3]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
";

const SERVER_EXTENSIONS: &str = "\
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost,IP:127.0.0.1,IP:::1
";

const CLIENT_EXTENSIONS: &str = "\
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
";

/// The files, in one private directory: `ca.pem`, `server.pem`/`server.key`,
/// `client.pem`/`client.key`, `stranger.key`.
pub struct Certificates {
    dir: tempfile::TempDir,
}

impl Certificates {
    /// Makes a fresh set (a second or so).
    pub fn make() -> Certificates {
        let dir = tempfile::Builder::new()
            .prefix("pochi-certs-")
            .tempdir()
            .expect("temp dir");
        delete_at_exit(dir.path());
        let at = |name: &str| dir.path().join(name);
        std::fs::write(at("ca.cnf"), CA_CONFIG).expect("ca.cnf");
        std::fs::write(at("server.ext"), SERVER_EXTENSIONS).expect("server.ext");
        std::fs::write(at("client.ext"), CLIENT_EXTENSIONS).expect("client.ext");
        for key in ["ca", "server", "client", "stranger"] {
            openssl(
                dir.path(),
                &[
                    "genpkey",
                    "-algorithm",
                    "EC",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-out",
                    &format!("{key}.key"),
                ],
            );
        }
        openssl(
            dir.path(),
            &[
                "req",
                "-x509",
                "-new",
                "-key",
                "ca.key",
                "-config",
                "ca.cnf",
                "-extensions",
                "v3",
                "-days",
                "2",
                "-out",
                "ca.pem",
            ],
        );
        for (name, subject) in [
            ("server", "/CN=localhost"),
            ("client", "/CN=pochi test client"),
        ] {
            sign(dir.path(), name, subject);
        }
        Certificates { dir }
    }

    /// One set for the whole test binary.
    pub fn shared() -> &'static Certificates {
        static SHARED: OnceLock<Certificates> = OnceLock::new();
        SHARED.get_or_init(Certificates::make)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The private CA that signed the server's and the client's certificates.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    pub fn client_cert(&self) -> PathBuf {
        self.dir.path().join("client.pem")
    }

    pub fn client_key(&self) -> PathBuf {
        self.dir.path().join("client.key")
    }

    /// A valid key that belongs to no certificate here.
    pub fn stranger_key(&self) -> PathBuf {
        self.dir.path().join("stranger.key")
    }
}

/// `NAME.pem`: a certificate for `NAME.key`, signed by the CA, with `NAME.ext`.
fn sign(dir: &Path, name: &str, subject: &str) {
    let (key, csr, pem, ext) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
        format!("{name}.ext"),
    );
    openssl(
        dir,
        &["req", "-new", "-key", &key, "-subj", subject, "-out", &csr],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &pem,
            "-extfile",
            &ext,
        ],
    );
}

fn openssl(dir: &Path, args: &[&str]) {
    let mut command = Command::new("openssl");
    command.current_dir(dir).args(args);
    output_within(
        command,
        Duration::from_secs(60),
        &format!("openssl {}", args.join(" ")),
    );
}
