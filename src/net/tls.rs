//! TLS on both sides: the server configuration that presents the old
//! hostnames' certificates (chosen by SNI, the first as default), and the
//! client configurations that verify backends (a CA file or system roots).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{
    self, crypto::ring, server::ClientHello, server::ResolvesServerCert, sign::CertifiedKey,
    ClientConfig, RootCertStore, ServerConfig,
};

use crate::config::CertificateConfig;
use crate::error::ConfigError;

/// Certificates by server name; exact names first, then `*.domain`.
#[derive(Debug)]
struct SniResolver {
    by_name: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = hello.server_name() else {
            return Some(self.default.clone());
        };
        let name = name.to_ascii_lowercase();
        let wildcard = name.split_once('.').map(|(_, rest)| format!("*.{rest}"));
        self.by_name
            .get(&name)
            .or_else(|| wildcard.and_then(|w| self.by_name.get(&w)))
            .or(Some(&self.default))
            .cloned()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// Builds the server side from `[[tls.certificate]]`. `None` when no
/// certificate is configured (then no listener may use TLS).
pub fn server_config(
    certs: &[CertificateConfig],
) -> Result<Option<Arc<ServerConfig>>, ConfigError> {
    let mut by_name = HashMap::new();
    let mut default = None;
    for (i, c) in certs.iter().enumerate() {
        let key = load_certified_key(&c.cert, &c.key)
            .map_err(|reason| ConfigError::invalid(format!("tls.certificate[{i}]"), reason))?;
        let key = Arc::new(key);
        for name in &c.names {
            by_name
                .entry(name.to_ascii_lowercase())
                .or_insert_with(|| key.clone());
        }
        default.get_or_insert(key);
    }
    let Some(default) = default else {
        return Ok(None);
    };
    let resolver = SniResolver { by_name, default };
    let cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::invalid("tls", e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    Ok(Some(Arc::new(cfg)))
}

fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate found", cert.display()));
    }
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let signing =
        ring::sign::any_supported_type(&der).map_err(|e| format!("{}: {e}", key.display()))?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match()
        .map_err(|e| format!("{} does not match {}: {e}", key.display(), cert.display()))?;
    Ok(ck)
}

/// A client configuration that verifies backends against `ca` (PEM bundle)
/// or, without one, the bundled web PKI roots.
pub fn client_config(ca: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("{}: {e}", path.display()))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!("{}: no usable CA certificate", path.display()));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// The client configuration for opportunistic STARTTLS to other mail
/// hosts (RFC 7435; the `may` level of common MTAs): encryption against
/// passive eavesdropping without authenticating the server, because MX
/// hosts' certificates commonly do not match their names, and refusing
/// them would only push the delivery back to clear text. The handshake's
/// signatures are still checked, so the key exchange is sound.
pub fn opportunistic_client_config() -> Arc<ClientConfig> {
    static CONFIG: std::sync::OnceLock<Arc<ClientConfig>> = std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = provider();
            let verifier = Arc::new(AnyCertificate(provider.clone()));
            let cfg = ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("ring supports the default protocol versions")
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth();
            Arc::new(cfg)
        })
        .clone()
}

/// Accepts any server certificate; see [`opportunistic_client_config`].
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Why a server-side TLS handshake did not complete.
#[derive(Debug)]
pub enum Handshake {
    Failed(std::io::Error),
    TimedOut,
}

/// The server side of a TLS handshake on `tcp` (implicit TLS or after a
/// protocol's STARTTLS), bounded by `deadline`.
pub async fn accept(
    config: Arc<ServerConfig>,
    tcp: tokio::net::TcpStream,
    deadline: tokio::time::Instant,
) -> Result<super::stream::Stream, Handshake> {
    // Boxed, and freed once the handshake is over: the caller's future
    // would otherwise keep room for the handshake's state and its timer for
    // the session's life (the task of every idle session).
    let handshake = Box::pin(tokio::time::timeout_at(
        deadline,
        super::tls_server::TlsServer::accept(config, tcp),
    ));
    match handshake.await {
        Ok(Ok(tls)) => Ok(super::stream::Stream::Server(Box::new(tls))),
        Ok(Err(e)) => Err(Handshake::Failed(e)),
        Err(_) => Err(Handshake::TimedOut),
    }
}
