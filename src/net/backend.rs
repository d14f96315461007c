//! Named backends and the transport to them: endpoint URLs from the
//! configuration, TCP connect and TLS (implicit, or the upgrade after a
//! protocol's STARTTLS), all under timeouts so that a dead backend is a
//! prompt temporary error, never a hang.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::{rustls::ClientConfig, TlsConnector};

use super::health::{Health, Table};
use super::stream::Stream;
use crate::config::{BackendConfig, Protocol};
use crate::error::{BackendError, ConfigError};
use crate::secret::{Credentials, SecretKind};

/// Where one protocol of a backend listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    /// TLS from the first byte (`imaps://`, `pop3s://`, `smtps://`).
    pub implicit_tls: bool,
    /// Upgrade with the protocol's STARTTLS after the greeting.
    pub starttls: bool,
    /// `lmtp://`: LHLO, and one reply per recipient after DATA (RFC 2033).
    pub lmtp: bool,
    /// `mx://domain`: SMTP to the domain's mail hosts, found in the DNS
    /// (MX, then A/AAAA) at each delivery.
    pub mx: bool,
}

impl Endpoint {
    /// Parses `scheme://host[:port]`; the scheme decides implicit TLS and
    /// the default port.
    pub fn parse(text: &str, starttls: bool) -> Result<Endpoint, String> {
        let url = url::Url::parse(text).map_err(|e| format!("{text:?}: {e}"))?;
        let (implicit_tls, default_port) = match url.scheme() {
            "imap" => (false, 143),
            "imaps" => (true, 993),
            "pop3" => (false, 110),
            "pop3s" => (true, 995),
            "smtp" => (false, 25),
            "smtps" => (true, 465),
            "lmtp" => (false, 24),
            "mx" => (false, 25),
            other => return Err(format!("unknown scheme {other:?}")),
        };
        let host = match url.host() {
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            Some(h) => h.to_string(),
            None => return Err(format!("{text:?}: no host")),
        };
        if url.path().len() > 1 || url.query().is_some() || !url.username().is_empty() {
            return Err(format!("{text:?}: only scheme://host:port is allowed"));
        }
        Ok(Endpoint {
            host,
            port: url.port().unwrap_or(default_port),
            implicit_tls,
            starttls: starttls && !implicit_tls,
            lmtp: url.scheme() == "lmtp",
            mx: url.scheme() == "mx",
        })
    }

    /// Credentials sent here are encrypted on the wire.
    pub fn is_protected(&self) -> bool {
        self.implicit_tls || self.starttls
    }

    pub fn is_loopback(&self) -> bool {
        match self.host.parse::<IpAddr>() {
            Ok(ip) => ip.is_loopback(),
            Err(_) => self.host.eq_ignore_ascii_case("localhost"),
        }
    }
}

/// A named backend with its parsed endpoints and TLS client settings.
pub struct Backend {
    pub name: String,
    pub imap: Option<Endpoint>,
    pub pop3: Option<Endpoint>,
    pub submission: Option<Endpoint>,
    /// Where inbound mail is delivered (`smtp://`, `lmtp://` or `mx://`, plain:
    /// no credentials cross it).
    pub inbound: Option<Endpoint>,
    /// The master user for the delivery check (see
    /// `BackendConfig::check_user`), its password read from its file.
    pub check: Option<Credentials>,
    /// Connect latency and errors, for the dashboard.
    pub health: Arc<Health>,
    tls: Arc<ClientConfig>,
}

/// Every configured backend, by name.
pub type Backends = BTreeMap<String, Arc<Backend>>;

/// Builds the backends from the configuration (already validated); each
/// keeps its health record in `health`.
pub fn build(
    cfg: &BTreeMap<String, BackendConfig>,
    health: &Table,
) -> Result<Backends, ConfigError> {
    let mut out = BTreeMap::new();
    for (name, b) in cfg {
        let tls = super::tls::client_config(b.ca.as_deref())
            .map_err(|reason| ConfigError::invalid(format!("backend.{name}.ca"), reason))?;
        let endpoint = |url: &Option<String>, key: &str| {
            url.as_deref()
                .map(|u| Endpoint::parse(u, b.starttls))
                .transpose()
                .map_err(|reason| ConfigError::invalid(format!("backend.{name}.{key}"), reason))
        };
        let backend = Backend {
            name: name.clone(),
            imap: endpoint(&b.imap, "imap")?,
            pop3: endpoint(&b.pop3, "pop3")?,
            submission: endpoint(&b.submission, "submission")?,
            inbound: b
                .inbound
                .as_deref()
                .map(|u| Endpoint::parse(u, false))
                .transpose()
                .map_err(|reason| {
                    ConfigError::invalid(format!("backend.{name}.inbound"), reason)
                })?,
            check: check_login(name, b)?,
            health: health.get(name),
            tls,
        };
        out.insert(name.clone(), Arc::new(backend));
    }
    Ok(out)
}

/// The delivery check's master user, its password read from its file.
fn check_login(name: &str, b: &BackendConfig) -> Result<Option<Credentials>, ConfigError> {
    let (Some(user), Some(path)) = (&b.check_user, &b.check_password_file) else {
        return Ok(None);
    };
    let key = format!("backend.{name}.check_password_file");
    Ok(Some(Credentials {
        user: user.clone(),
        password: crate::secret::read_password_file(path, &key)?,
        authzid: None,
        kind: SecretKind::Password,
    }))
}

impl Backend {
    /// The endpoint for a protocol, or the error that says there is none.
    pub fn endpoint(&self, protocol: Protocol) -> Result<&Endpoint, BackendError> {
        let ep = match protocol {
            Protocol::Imap => self.imap.as_ref(),
            Protocol::Pop3 => self.pop3.as_ref(),
            Protocol::Submission => self.submission.as_ref(),
            Protocol::Smtp => self.inbound.as_ref(),
        };
        ep.ok_or_else(|| BackendError::NoEndpoint {
            backend: self.name.clone(),
            protocol: protocol.name(),
        })
    }

    /// TCP connect, then TLS at once if the endpoint is implicit TLS. The
    /// outcome goes to the backend's health record.
    pub async fn connect(&self, ep: &Endpoint, limit: Duration) -> Result<Stream, BackendError> {
        let started = std::time::Instant::now();
        let result = self.open(ep, limit).await;
        match &result {
            Ok(_) => self.health.record_ok(started.elapsed()),
            Err(e) => self.health.record_error(e),
        }
        result
    }

    async fn open(&self, ep: &Endpoint, limit: Duration) -> Result<Stream, BackendError> {
        let addr = format!("{}:{}", ep.host, ep.port);
        let started = std::time::Instant::now();
        let tcp = match tokio::time::timeout(limit, TcpStream::connect((ep.host.as_str(), ep.port)))
            .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => {
                return Err(BackendError::Connect {
                    backend: self.name.clone(),
                    addr,
                    source,
                })
            }
            Err(_) => return Err(self.timeout("connect")),
        };
        metrics::histogram!("ponte_backend_connect_seconds", "backend" => self.name.clone())
            .record(started.elapsed().as_secs_f64());
        // Small command/response exchanges: do not wait for ACKs to batch them.
        let _ = tcp.set_nodelay(true);
        if ep.implicit_tls {
            self.handshake(tcp, ep, limit).await
        } else {
            Ok(Stream::Plain(tcp))
        }
    }

    /// The TLS handshake after a protocol's STARTTLS; a failure goes to the
    /// backend's health record.
    pub async fn start_tls(
        &self,
        tcp: TcpStream,
        ep: &Endpoint,
        limit: Duration,
    ) -> Result<Stream, BackendError> {
        let result = self.handshake(tcp, ep, limit).await;
        if let Err(e) = &result {
            self.health.record_error(e);
        }
        result
    }

    /// The TLS handshake, verifying the certificate against the endpoint's
    /// host name (or IP address SAN for an IP host).
    async fn handshake(
        &self,
        tcp: TcpStream,
        ep: &Endpoint,
        limit: Duration,
    ) -> Result<Stream, BackendError> {
        let name = ServerName::try_from(ep.host.clone()).map_err(|e| BackendError::Tls {
            backend: self.name.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
        })?;
        let connector = TlsConnector::from(self.tls.clone());
        match tokio::time::timeout(limit, connector.connect(name, tcp)).await {
            Ok(Ok(s)) => Ok(Stream::Client(Box::new(s))),
            Ok(Err(source)) => Err(BackendError::Tls {
                backend: self.name.clone(),
                source,
            }),
            Err(_) => Err(self.timeout("TLS handshake")),
        }
    }

    pub fn timeout(&self, step: &'static str) -> BackendError {
        BackendError::Timeout {
            backend: self.name.clone(),
            step,
        }
    }

    pub fn protocol_error(&self, reason: impl Into<String>) -> BackendError {
        BackendError::Protocol {
            backend: self.name.clone(),
            reason: reason.into(),
        }
    }

    pub fn io_error(&self, source: std::io::Error) -> BackendError {
        BackendError::Io {
            backend: self.name.clone(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_endpoints() {
        let e = Endpoint::parse("imaps://legacy.example", false).unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.implicit_tls),
            ("legacy.example", 993, true)
        );
        let e = Endpoint::parse("imap://[::1]:1143", true).unwrap();
        assert_eq!((e.host.as_str(), e.port, e.starttls), ("::1", 1143, true));
        assert!(e.is_loopback() && e.is_protected());
        assert!(!Endpoint::parse("imap://10.0.0.1", false)
            .unwrap()
            .is_protected());
        assert!(Endpoint::parse("ftp://x", false).is_err());
        assert!(Endpoint::parse("imap://x/INBOX", false).is_err());
    }
}
