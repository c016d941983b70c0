//! TLS for QUIC (rustls with the ring provider; TLS 1.3 only, as QUIC requires).
//!
//! On first start `sextant serve` writes a development CA and a server certificate signed by
//! it into `DATA_DIR/tls/` ([`ensure_dev_certs`]): `ca.pem` (give it to clients with
//! `--ca`), `ca.key` (mode 0600, signs client certificates for mTLS), `server.pem`,
//! `server.key`. Clients always verify the server against a CA; there is no "accept any
//! certificate" mode. With `--client-ca`, the server also requires client certificates
//! (mTLS).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use sextant_proto::ALPN;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A PEM file holds no usable certificate or key.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// Certificate generation failed.
    #[error("generating certificates: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built.
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// The TLS configuration offers no cipher suite QUIC can start with.
    #[error("QUIC needs a TLS 1.3 cipher suite: {0}")]
    CipherSuite(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    /// A host or client name that cannot name its files.
    #[error("{0:?} is not a usable name: letters, digits, '.', '-', '_', not starting with '.'")]
    BadName(String),
}

/// The files of a server identity.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The CA clients verify the server with.
    pub ca: PathBuf,
    /// The CA's key (signs client certificates).
    pub ca_key: PathBuf,
    /// The server's certificate.
    pub cert: PathBuf,
    /// The server's key.
    pub key: PathBuf,
}

impl TlsFiles {
    /// The file names under `DATA_DIR/tls/`.
    #[must_use]
    pub fn in_data_dir(data_dir: &Path) -> Self {
        let dir = data_dir.join("tls");
        Self {
            ca: dir.join("ca.pem"),
            ca_key: dir.join("ca.key"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
        }
    }
}

fn write(path: &Path, contents: &str, private: bool) -> Result<(), TlsError> {
    let io = |source| TlsError::Io { path: path.to_owned(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).map_err(io)?;
    if private {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Io { path: path.to_owned(), source })
}

fn ca_params() -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, "sextant development CA");
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    Ok(params)
}

/// Writes a development CA and server certificate (for `localhost`, `127.0.0.1`, `::1`)
/// into `DATA_DIR/tls/` unless they exist; returns the files.
pub fn ensure_dev_certs(data_dir: &Path) -> Result<TlsFiles, TlsError> {
    let files = TlsFiles::in_data_dir(data_dir);
    if files.ca.exists() && files.cert.exists() && files.key.exists() {
        return Ok(files);
    }
    let ca_key = KeyPair::generate()?;
    let ca_key_pem = ca_key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(ca_params()?, ca_key)?;
    let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()])?;
    params.distinguished_name.push(DnType::CommonName, "sextant server");
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca)?;
    write(&files.ca_key, &ca_key_pem, true)?;
    write(&files.key, &key.serialize_pem(), true)?;
    write(&files.cert, &cert.pem(), false)?;
    // The CA last: its presence says the set is complete.
    write(&files.ca, &ca.pem(), false)?;
    tracing::info!(ca = %files.ca.display(), "wrote a development TLS certificate; clients verify with --ca");
    Ok(files)
}

/// Issues a client certificate for `name`, signed by the CA in `files` (for mTLS). Returns
/// `(certificate PEM, key PEM)`.
pub fn issue_client_cert(files: &TlsFiles, name: &str) -> Result<(String, String), TlsError> {
    issue(files, name, &[name.to_owned()])
}

/// Issues a certificate with common name `name` for `names` (DNS names or IP addresses),
/// signed by the CA in `files`. Returns `(certificate PEM, key PEM)`.
fn issue(files: &TlsFiles, name: &str, names: &[String]) -> Result<(String, String), TlsError> {
    let ca_key = KeyPair::from_pem(&read(&files.ca_key)?)?;
    // The CA's parameters are fixed (ca_params), so rebuilding them with its key gives the
    // issuer that signed ca.pem.
    let issuer = Issuer::new(ca_params()?, ca_key);
    let mut params = CertificateParams::new(names.to_vec())?;
    params.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// What [`init_fleet`] wrote.
#[derive(Debug, Clone)]
pub struct FleetFiles {
    /// The CA every client trusts (`--ca`).
    pub ca: PathBuf,
    /// Whether the CA was made now (`false`: an existing one in the directory was used).
    pub new_ca: bool,
    /// Per server: name, certificate, key (`serve --cert --key`).
    pub servers: Vec<(String, PathBuf, PathBuf)>,
    /// Per client: name, certificate, key (`--client-cert --client-key`, with `--client-ca`).
    pub clients: Vec<(String, PathBuf, PathBuf)>,
}

/// One CA for several hosts (`sextant tls init`): in `dir`, `ca.pem` and `ca.key` (made unless
/// present), then per server `NAME.pem` / `NAME.key` for its `names` (DNS names or addresses
/// clients dial), and per client `client-NAME.pem` / `client-NAME.key`. Names are file names:
/// letters, digits, `.`, `-`, `_`.
pub fn init_fleet(dir: &Path, servers: &[(String, Vec<String>)], clients: &[String]) -> Result<FleetFiles, TlsError> {
    let files = TlsFiles {
        ca: dir.join("ca.pem"),
        ca_key: dir.join("ca.key"),
        cert: dir.join("unused.pem"),
        key: dir.join("unused.key"),
    };
    let valid = |n: &str| {
        !n.is_empty() && !n.starts_with('.') && n.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    };
    for n in servers.iter().map(|(n, _)| n).chain(clients) {
        if !valid(n) {
            return Err(TlsError::BadName(n.clone()));
        }
    }
    let new_ca = !(files.ca.exists() && files.ca_key.exists());
    if new_ca {
        let ca_key = KeyPair::generate()?;
        let ca_key_pem = ca_key.serialize_pem();
        let ca = CertifiedIssuer::self_signed(ca_params()?, ca_key)?;
        write(&files.ca_key, &ca_key_pem, true)?;
        write(&files.ca, &ca.pem(), false)?;
    }
    let mut out = FleetFiles { ca: files.ca.clone(), new_ca, servers: Vec::new(), clients: Vec::new() };
    for (name, names) in servers {
        let names = if names.is_empty() { vec![name.clone()] } else { names.clone() };
        let (cert, key) = issue(&files, name, &names)?;
        let (c, k) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
        write(&k, &key, true)?;
        write(&c, &cert, false)?;
        out.servers.push((name.clone(), c, k));
    }
    for name in clients {
        let (cert, key) = issue_client_cert(&files, name)?;
        let (c, k) = (dir.join(format!("client-{name}.pem")), dir.join(format!("client-{name}.key")));
        write(&k, &key, true)?;
        write(&c, &cert, false)?;
        out.clients.push((name.clone(), c, k));
    }
    Ok(out)
}

/// The subject (`CN=...` and the rest, RFC 4514 order) of a DER certificate; `None` if it
/// does not parse.
#[must_use]
pub fn certificate_subject(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.subject().to_string())
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = |what: String| TlsError::Pem { path: path.to_owned(), what };
    let certs: Vec<_> = CertificateDer::pem_slice_iter(read(path)?.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(pem("no certificate in the file".into()));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(read(path)?.as_bytes())
        .map_err(|e| TlsError::Pem { path: path.to_owned(), what: e.to_string() })
}

fn roots(ca: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs(ca)? {
        roots.add(cert).map_err(|e| TlsError::Pem { path: ca.to_owned(), what: e.to_string() })?;
    }
    Ok(roots)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// QUIC transport settings shared by both ends: keep-alives every 2 s and a 10 s idle
/// timeout, so a lost peer is noticed within 10 s. The first round-trip estimate is 100 ms
/// (quinn's default, 333 ms, suits the open internet): a handshake whose first packets went to
/// a server that was restarting is retried after ~0.3 s, 0.6 s, ... instead of 1 s, 2 s, ...,
/// which is most of what a reconnect storm waits for.
fn transport(max_streams: u32) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.initial_rtt(Duration::from_millis(100));
    t.keep_alive_interval(Some(Duration::from_secs(2)));
    // 10 s always fits quinn's idle timeout range.
    t.max_idle_timeout(quinn::IdleTimeout::try_from(Duration::from_secs(10)).ok());
    t.max_concurrent_bidi_streams(max_streams.into());
    t.max_concurrent_uni_streams(0u32.into());
    Arc::new(t)
}

/// A rustls server configuration (TLS 1.3) for the identity in `files`; with `client_ca`,
/// clients must present a certificate signed by it.
fn rustls_server(files: &TlsFiles, client_ca: Option<&Path>, alpn: &[u8]) -> Result<rustls::ServerConfig, TlsError> {
    let builder =
        rustls::ServerConfig::builder_with_provider(provider()).with_protocol_versions(&[&rustls::version::TLS13])?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider()).build()?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut tls = builder.with_single_cert(certs(&files.cert)?, key(&files.key)?)?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    Ok(tls)
}

/// The admin HTTP API's TLS configuration (`serve --admin-tls`): the same certificate, key
/// and client CA as QUIC, HTTP/1.1.
pub fn https_server_config(files: &TlsFiles, client_ca: Option<&Path>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    Ok(Arc::new(rustls_server(files, client_ca, b"http/1.1")?))
}

/// The server's QUIC configuration; with `client_ca`, clients must present a certificate
/// signed by it.
pub fn server_config(
    files: &TlsFiles,
    client_ca: Option<&Path>,
    max_streams: u32,
) -> Result<quinn::ServerConfig, TlsError> {
    let tls = rustls_server(files, client_ca, ALPN)?;
    let crypto = QuicServerConfig::try_from(tls)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport(max_streams));
    Ok(config)
}

/// A client's QUIC configuration: trust `ca`, optionally present a client certificate.
pub fn client_config(ca: &Path, client_cert: Option<(&Path, &Path)>) -> Result<quinn::ClientConfig, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(ca)?);
    let mut tls = match client_cert {
        None => builder.with_no_client_auth(),
        Some((cert, k)) => builder.with_client_auth_cert(certs(cert)?, key(k)?)?,
    };
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicClientConfig::try_from(tls)?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport(0));
    Ok(config)
}
