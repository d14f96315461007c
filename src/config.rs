//! The configuration contract (see DESIGN.md): serde structures, loading
//! from TOML with `PONTE_…` environment overrides, and `validate()`, which
//! rejects a file that cannot run, naming the key and the reason.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use time::OffsetDateTime;

use crate::error::ConfigError;
use crate::route::MailboxState;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub state: StateConfig,
    #[serde(default)]
    pub spool: SpoolConfig,
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub listener: Vec<ListenerConfig>,
    #[serde(default)]
    pub backend: BTreeMap<String, BackendConfig>,
    #[serde(default)]
    pub domain: BTreeMap<String, DomainConfig>,
    #[serde(default)]
    pub outbound: OutboundConfig,
}

/// Mail ponte sends on its own behalf: delivery status notifications to
/// the senders of spooled mail that failed for good.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundConfig {
    /// ponte's mail name: `Reporting-MTA` and `MAILER-DAEMON@` of its
    /// DSNs, and its EHLO to other servers. Default: the system's host
    /// name.
    #[serde(default)]
    pub hostname: Option<String>,
    /// `smtp://host[:port]`: a relay (smarthost) for every recipient
    /// outside the managed domains. Without it ponte looks up the
    /// recipient domain's MX (then A/AAAA) itself.
    #[serde(default)]
    pub relay: Option<String>,
    /// DNS servers (`ip:port`) for MX lookups; empty: /etc/resolv.conf.
    #[serde(default)]
    pub nameservers: Vec<std::net::SocketAddr>,
    /// The SMTP port of MX hosts: 25 (a test points it elsewhere).
    #[serde(default)]
    pub mx_port: Option<u16>,
}

impl OutboundConfig {
    /// The configured host name, else the system's, else `localhost`.
    pub fn hostname(&self) -> String {
        self.hostname.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "localhost".into())
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// Directory of the embedded durable store (the default store).
    #[serde(default = "default_state_path")]
    pub path: PathBuf,
    /// `address,state` rows imported when the store holds no mailbox yet.
    #[serde(default)]
    pub seed: Option<PathBuf>,
    /// `postgres://…`: a PostgreSQL shared by a fleet of nodes, instead of
    /// the embedded store.
    #[serde(default)]
    pub url: Option<String>,
    /// This node's name in the fleet. Default: the host name.
    #[serde(default)]
    pub node: Option<String>,
    /// The PostgreSQL password, read from this file (out of the
    /// configuration and the URL). Without it: `PGPASSWORD`, then the
    /// URL's own.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

fn default_state_path() -> PathBuf {
    PathBuf::from("var/state")
}

impl StateConfig {
    /// The configured node name, else the system's host name.
    pub fn node(&self) -> String {
        self.node
            .clone()
            .unwrap_or_else(|| OutboundConfig::default().hostname())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    pub path: PathBuf,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            path: PathBuf::from("var/spool"),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    pub bind: SocketAddr,
    pub token_file: PathBuf,
    /// How often the dashboard samples sessions and logins for its charts
    /// (it keeps six hours of samples).
    #[serde(with = "humantime_serde", default = "default_history_interval")]
    pub history_interval: Duration,
}

fn default_history_interval() -> Duration {
    Duration::from_secs(60)
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Chosen by SNI; the first one is the default.
    #[serde(default)]
    pub certificate: Vec<CertificateConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    pub names: Vec<String>,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Bounds on what one client may cost.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Everything before a successful login (greeting, TLS, auth).
    #[serde(with = "humantime_serde")]
    pub preauth_timeout: Duration,
    /// Inactivity in both directions after login. RFC 9051 §5.4: at least 30 minutes.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// TCP connect, TLS and greeting of a backend, each.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Time a backend has to answer the login.
    #[serde(with = "humantime_serde")]
    pub login_timeout: Duration,
    /// How long open sessions may go on after a shutdown signal.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Longest command line accepted before login, literals included.
    pub max_preauth_bytes: u32,
    /// Concurrent client connections, all listeners together.
    pub max_connections: usize,
    /// Concurrent connections from one client address.
    pub max_connections_per_ip: u32,
    /// Failed logins in one connection before it is closed.
    pub max_auth_failures: u32,
    /// Pause before answering a login for an unknown domain, as a backend
    /// pauses before a wrong password, so that probes learn nothing.
    #[serde(with = "humantime_serde")]
    pub auth_failure_delay: Duration,
    /// Largest message inbound SMTP accepts (advertised as `SIZE`).
    pub max_message_size: u64,
    /// Failed-login throttling per client address and per account.
    pub throttle: ThrottleConfig,
}

/// `[limits.throttle]`: see `net::throttle`. Failures are scored per
/// address and per account, halving every `window / 2`; past `delay_after`
/// a failed login is answered after `auth_failure_delay`, doubling per
/// further failure up to `max_delay`; at `refuse_after` (address) or
/// `account_refuse_after` (account, except from addresses that logged in
/// to it before) logins are refused for a while without asking a backend.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThrottleConfig {
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    pub delay_after: u32,
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    pub refuse_after: u32,
    pub account_refuse_after: u32,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            window: Duration::from_secs(15 * 60),
            delay_after: 3,
            max_delay: Duration::from_secs(15),
            refuse_after: 30,
            account_refuse_after: 50,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            preauth_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(31 * 60),
            connect_timeout: Duration::from_secs(5),
            login_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
            max_preauth_bytes: 16 * 1024,
            max_connections: 20_000,
            max_connections_per_ip: 500,
            max_message_size: 50 * 1024 * 1024,
            max_auth_failures: 3,
            auth_failure_delay: Duration::from_secs(2),
            throttle: ThrottleConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Imap,
    Pop3,
    Submission,
    Smtp,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Imap => "imap",
            Protocol::Pop3 => "pop3",
            Protocol::Submission => "submission",
            Protocol::Smtp => "smtp",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    #[default]
    None,
    Starttls,
    Implicit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum View {
    #[default]
    Live,
    Tempmail,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub name: String,
    pub protocol: Protocol,
    pub bind: SocketAddr,
    #[serde(default)]
    pub tls: TlsMode,
    #[serde(default)]
    pub view: View,
    /// Domain appended to logins given without `@domain`.
    #[serde(default)]
    pub default_domain: Option<String>,
    /// Every connection starts with a PROXY protocol header (v1 or v2)
    /// naming the real client: ponte behind HAProxy or a cloud balancer.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// The balancers' networks: only they may connect to a
    /// `proxy_protocol` listener (anyone else could claim any address).
    #[serde(default)]
    pub proxy_trusted: Vec<ipnet::IpNet>,
    /// Offer XOAUTH2 and OAUTHBEARER: the client's bearer token goes to the
    /// backend as given, which must accept it (Dovecot: an oauth2 passdb).
    #[serde(default)]
    pub oauth: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// `imap://host:port` or `imaps://host:port`.
    #[serde(default)]
    pub imap: Option<String>,
    #[serde(default)]
    pub pop3: Option<String>,
    #[serde(default)]
    pub submission: Option<String>,
    #[serde(default)]
    pub inbound: Option<String>,
    /// Upgrade `imap://`, `pop3://` and `smtp://` endpoints with STARTTLS.
    #[serde(default)]
    pub starttls: bool,
    /// CA bundle that backend certificates are verified against; system roots otherwise.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// A master user of this backend's IMAP service, and a file holding
    /// its password: ponte logs in as it (acting as a mailbox, RFC 4616
    /// authorization identity) only to check whether a spooled message
    /// whose delivery was cut short (ponte killed mid-transaction) did
    /// reach the mailbox, so that it is not delivered twice. Without
    /// them such a message is delivered again (at least once).
    #[serde(default)]
    pub check_user: Option<String>,
    #[serde(default)]
    pub check_password_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainConfig {
    pub state: MailboxState,
    #[serde(default = "default_legacy")]
    pub legacy: String,
    #[serde(default = "default_new")]
    pub new: String,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub tempmail_until: Option<OffsetDateTime>,
    #[serde(default)]
    pub notice: Option<String>,
}

fn default_legacy() -> String {
    "legacy".into()
}

fn default_new() -> String {
    "new".into()
}

impl Config {
    /// Reads the file, applies `PONTE_…` overrides (`PONTE_STATE__PATH`,
    /// `PONTE_LIMITS__IDLE_TIMEOUT`, …) and validates the result.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let source = config::File::from(path).format(config::FileFormat::Toml);
        Self::build(source)
    }

    /// Same as [`Config::load`] from a TOML text (tests, embedded defaults).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Self::build(config::File::from_str(text, config::FileFormat::Toml))
    }

    fn build<S>(source: S) -> Result<Config, ConfigError>
    where
        S: config::Source + Send + Sync + 'static,
    {
        // Only `PONTE_SECTION__KEY` variables are overrides; the others
        // (`PONTE_LOG`) belong to the process, not to the file.
        let vars: config::Map<String, String> = std::env::vars()
            .filter(|(k, _)| k.starts_with("PONTE_") && k.contains("__"))
            .collect();
        let env = config::Environment::with_prefix("PONTE")
            .prefix_separator("_")
            .separator("__")
            .try_parsing(true)
            .source(Some(vars));
        let cfg: Config = config::Config::builder()
            .add_source(source)
            .add_source(env)
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigError::Load(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Cross-checks that serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_state()?;
        self.validate_listeners()?;
        self.validate_backends()?;
        self.validate_domains()?;
        if let Some(a) = &self.admin {
            if a.history_interval < Duration::from_secs(1) {
                return Err(ConfigError::invalid(
                    "admin.history_interval",
                    "must be at least 1s",
                ));
            }
        }
        // RFC 9051 §5.4: an inactivity autologout timer must be at least
        // 30 minutes; IDLE clients re-issue IDLE every 29 minutes.
        if self.limits.idle_timeout < Duration::from_secs(30 * 60) {
            return Err(ConfigError::invalid(
                "limits.idle_timeout",
                "must be at least 30m (RFC 9051 autologout)",
            ));
        }
        self.validate_limits()
    }

    fn validate_state(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.state.url {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(ConfigError::invalid(
                    "state.url",
                    "expected postgres://user@host:port/database",
                ));
            }
            crate::route::pg::parse_url(url, "check")
                .map_err(|e| ConfigError::invalid("state.url", e.message))?;
        }
        if self
            .state
            .node
            .as_deref()
            .is_some_and(|n| n.trim().is_empty())
        {
            return Err(ConfigError::invalid("state.node", "must not be empty"));
        }
        Ok(())
    }

    fn validate_limits(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        let bad = |key: &'static str, reason: &str| {
            Err(ConfigError::invalid(format!("limits.{key}"), reason))
        };
        if !(1024..=1024 * 1024).contains(&l.max_preauth_bytes) {
            return bad("max_preauth_bytes", "must be between 1024 and 1048576");
        }
        if !(1..=1_000_000).contains(&l.max_connections) {
            return bad("max_connections", "must be between 1 and 1000000");
        }
        if l.max_connections_per_ip == 0 {
            return bad("max_connections_per_ip", "must be at least 1");
        }
        if l.max_auth_failures == 0 {
            return bad("max_auth_failures", "must be at least 1");
        }
        for (key, d) in [
            ("preauth_timeout", l.preauth_timeout),
            ("connect_timeout", l.connect_timeout),
            ("login_timeout", l.login_timeout),
        ] {
            if d.is_zero() {
                return bad(key, "must be more than 0");
            }
        }
        Ok(())
    }

    fn validate_listeners(&self) -> Result<(), ConfigError> {
        let mut names = HashSet::new();
        for (i, l) in self.listener.iter().enumerate() {
            let key = |field: &str| format!("listener[{i}].{field}");
            if !names.insert(l.name.as_str()) {
                return Err(ConfigError::invalid(key("name"), "duplicate listener name"));
            }
            if l.tls != TlsMode::None && self.tls.certificate.is_empty() {
                return Err(ConfigError::invalid(
                    key("tls"),
                    "TLS needs at least one [[tls.certificate]]",
                ));
            }
            let sends_mail = matches!(l.protocol, Protocol::Submission | Protocol::Smtp);
            if l.view == View::Tempmail && sends_mail {
                return Err(ConfigError::invalid(
                    key("view"),
                    "tempmail is a read-only view: imap or pop3 only",
                ));
            }
            if l.proxy_protocol && l.proxy_trusted.is_empty() {
                return Err(ConfigError::invalid(
                    key("proxy_trusted"),
                    "proxy_protocol needs the balancers' networks (e.g. [\"10.0.0.0/24\"])",
                ));
            }
            if let Some(d) = &l.default_domain {
                if !self.domain.contains_key(&d.to_ascii_lowercase()) {
                    return Err(ConfigError::invalid(
                        key("default_domain"),
                        format!("{d} is not a configured [domain]"),
                    ));
                }
            }
        }
        Ok(())
    }

    fn validate_backends(&self) -> Result<(), ConfigError> {
        for (name, b) in &self.backend {
            for (field, url) in [
                ("imap", &b.imap),
                ("pop3", &b.pop3),
                ("submission", &b.submission),
            ] {
                let Some(url) = url else { continue };
                let key = format!("backend.{name}.{field}");
                let ep = crate::net::backend::Endpoint::parse(url, b.starttls)
                    .map_err(|reason| ConfigError::invalid(key.clone(), reason))?;
                let schemes: &[&str] = match field {
                    "imap" => &["imap://", "imaps://"],
                    "pop3" => &["pop3://", "pop3s://"],
                    _ => &["smtp://", "smtps://"],
                };
                if !schemes.iter().any(|s| url.starts_with(s)) {
                    return Err(ConfigError::invalid(
                        key,
                        format!("expected {}", schemes.join(" or ")),
                    ));
                }
                if !ep.is_protected() && !ep.is_loopback() {
                    return Err(ConfigError::invalid(
                        key,
                        "credentials would cross the network in clear text: use a TLS scheme or starttls = true",
                    ));
                }
            }
            if let Some(url) = &b.inbound {
                let key = format!("backend.{name}.inbound");
                crate::net::backend::Endpoint::parse(url, false)
                    .map_err(|reason| ConfigError::invalid(key.clone(), reason))?;
                if !["smtp://", "lmtp://", "mx://"]
                    .iter()
                    .any(|s| url.starts_with(s))
                {
                    return Err(ConfigError::invalid(
                        key,
                        "expected smtp://, lmtp:// or mx://",
                    ));
                }
            }
            match (&b.check_user, &b.check_password_file) {
                (Some(_), None) | (None, Some(_)) => {
                    return Err(ConfigError::invalid(
                        format!("backend.{name}.check_user"),
                        "check_user and check_password_file go together",
                    ))
                }
                (Some(_), Some(_)) if b.imap.is_none() => {
                    return Err(ConfigError::invalid(
                        format!("backend.{name}.check_user"),
                        "the delivery check logs in over IMAP: set backend.{name}.imap",
                    ))
                }
                _ => {}
            }
        }
        if let Some(url) = &self.outbound.relay {
            crate::net::backend::Endpoint::parse(url, false)
                .ok()
                .filter(|_| url.starts_with("smtp://"))
                .ok_or_else(|| {
                    ConfigError::invalid("outbound.relay", "expected smtp://host[:port]")
                })?;
        }
        Ok(())
    }

    fn validate_domains(&self) -> Result<(), ConfigError> {
        for (name, d) in &self.domain {
            if name.chars().any(|c| c.is_ascii_uppercase()) {
                return Err(ConfigError::invalid(
                    format!("domain.{name}"),
                    "domain names are written in lower case",
                ));
            }
            for (field, backend) in [("legacy", &d.legacy), ("new", &d.new)] {
                let key = format!("domain.{name}.{field}");
                let Some(b) = self.backend.get(backend) else {
                    return Err(ConfigError::invalid(key, format!("no [backend.{backend}]")));
                };
                for (protocol, field, url) in [
                    (Protocol::Imap, "imap", &b.imap),
                    (Protocol::Pop3, "pop3", &b.pop3),
                    (Protocol::Submission, "submission", &b.submission),
                    (Protocol::Smtp, "inbound", &b.inbound),
                ] {
                    let served = self.listener.iter().any(|l| l.protocol == protocol);
                    if served && url.is_none() {
                        return Err(ConfigError::invalid(
                            format!("backend.{backend}.{field}"),
                            format!(
                                "missing, and domain {name} routes {} to it",
                                protocol.name()
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}
