//! Where mail for a domain goes (RFC 5321 §5.1): its MX records in order of
//! preference, each exchange's addresses (AAAA, then A), or the domain's
//! own addresses when it has no MX record (the implicit MX). A null MX
//! (RFC 7505) or a nonexistent domain is a permanent failure; timeouts and
//! server failures are temporary. Every step is bounded: a query limit, at
//! most [`MAX_MX_HOSTS`] exchanges and [`MAX_ADDRESSES`] addresses, and a
//! connect budget for [`Dns::connect_mail_host`].

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::proto::ProtoErrorKind;
use hickory_resolver::{Name, ResolveError, TokioResolver};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::{timeout, Instant};

use crate::error::ConfigError;

/// At most this many MX hosts are looked at, the most preferred first.
pub const MAX_MX_HOSTS: usize = 10;
/// At most this many addresses in all, over every MX host.
pub const MAX_ADDRESSES: usize = 20;
/// [`Dns::connect_mail_host`] spends at most this many connect timeouts in
/// all: refused connections are cheap, but a black hole costs the full
/// timeout per address.
pub const CONNECT_BUDGET: u32 = 5;

/// How to reach the DNS.
#[derive(Debug, Clone)]
pub struct DnsOptions {
    /// Recursive resolvers, asked over UDP (TCP for truncated answers).
    /// Empty: the nameservers of the system's `/etc/resolv.conf`.
    pub nameservers: Vec<SocketAddr>,
    /// How long one query to one nameserver may take.
    pub timeout: Duration,
    /// Tries per query (at least one).
    pub attempts: usize,
}

impl Default for DnsOptions {
    fn default() -> Self {
        DnsOptions {
            nameservers: Vec::new(),
            timeout: Duration::from_secs(5),
            attempts: 2,
        }
    }
}

/// One place to deliver to: an MX exchange (or the domain itself for an
/// implicit MX, or an address literal) with its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailHost {
    /// The host name without the trailing dot (the literal for `[1.2.3.4]`).
    pub name: String,
    /// The MX preference (0 for an implicit MX or a literal).
    pub preference: u16,
    /// IPv6 addresses first, then IPv4; never empty.
    pub addrs: Vec<IpAddr>,
}

/// Why no mail host could be found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// RFC 7505: the domain says it accepts no mail.
    #[error("{domain}: null MX, the domain accepts no mail")]
    NullMx { domain: String },
    /// NXDOMAIN.
    #[error("{domain}: no such domain")]
    NoSuchDomain { domain: String },
    /// The domain exists, but has neither an MX record nor an address.
    #[error("{domain}: no MX record and no address")]
    NoAddress { domain: String },
    /// A domain name with non-ASCII characters (see [`parse_target`]).
    #[error("{domain:?}: non-ASCII domain names are not supported")]
    NonAscii { domain: String },
    /// Not a syntactically valid domain or address literal.
    #[error("{domain:?}: invalid domain: {reason}")]
    InvalidDomain { domain: String, reason: String },
    /// Timeout, SERVFAIL, REFUSED, network error, or MX hosts that all lack
    /// addresses: worth trying again later.
    #[error("{domain}: temporary DNS failure: {reason}")]
    Temporary { domain: String, reason: String },
}

impl DnsError {
    /// Mail to this domain cannot be delivered however often it is retried.
    pub fn is_permanent(&self) -> bool {
        !matches!(self, DnsError::Temporary { .. })
    }
}

/// Why [`Dns::connect_mail_host`] has no connection.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Dns(#[from] DnsError),
    /// Every address tried was refused, unreachable or timed out (or the
    /// connect budget ran out).
    #[error("{domain}: no mail host reachable ({tried} addresses tried; last: {last})")]
    Unreachable {
        domain: String,
        tried: usize,
        last: String,
    },
}

impl ConnectError {
    /// Only a DNS verdict can be permanent; unreachable hosts may come back.
    pub fn is_permanent(&self) -> bool {
        match self {
            ConnectError::Dns(e) => e.is_permanent(),
            ConnectError::Unreachable { .. } => false,
        }
    }
}

/// A shared DNS resolver (with its cache); cheap to clone.
#[derive(Clone)]
pub struct Dns {
    inner: Arc<Inner>,
}

struct Inner {
    resolver: TokioResolver,
    /// Upper bound of one lookup, whatever the resolver does inside.
    query_limit: Duration,
}

impl std::fmt::Debug for Dns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dns")
            .field("nameservers", &self.inner.resolver.config().name_servers())
            .field("query_limit", &self.inner.query_limit)
            .finish()
    }
}

/// What a name has of one record type.
enum Answer<T> {
    /// Never empty.
    Records(Vec<T>),
    /// NOERROR without records of that type.
    NoData,
    NxDomain,
}

/// A domain argument: a name to look up, or an address literal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Name(Name),
    Literal(IpAddr),
}

impl Dns {
    /// A resolver for `opts`; fails only when the system configuration is
    /// needed and unreadable.
    pub fn new(opts: &DnsOptions) -> Result<Dns, ConfigError> {
        let config = if opts.nameservers.is_empty() {
            let (system, _) = hickory_resolver::system_conf::read_system_conf().map_err(|e| {
                ConfigError::invalid("outbound.nameservers", format!("/etc/resolv.conf: {e}"))
            })?;
            // Only the servers: every query is fully qualified, so the
            // search list and local domain never apply.
            let mut config = ResolverConfig::new();
            for ns in system.name_servers() {
                config.add_name_server(ns.clone());
            }
            config
        } else {
            let mut config = ResolverConfig::new();
            for addr in &opts.nameservers {
                config.add_name_server(NameServerConfig::new(*addr, Protocol::Udp));
                config.add_name_server(NameServerConfig::new(*addr, Protocol::Tcp));
            }
            config
        };
        if config.name_servers().is_empty() {
            return Err(ConfigError::invalid(
                "outbound.nameservers",
                "none configured and none in /etc/resolv.conf",
            ));
        }
        let attempts = opts.attempts.max(1);
        let mut ro = ResolverOpts::default();
        ro.timeout = opts.timeout;
        // hickory counts retries after the first try.
        ro.attempts = attempts - 1;
        // Mail routing is the DNS's business: /etc/hosts is for this host.
        ro.use_hosts_file = ResolveHosts::Never;
        // Room for many MX records without falling back to TCP.
        ro.edns0 = true;
        let resolver =
            TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
                .with_options(ro)
                .build();
        // The resolver's own bound is per try and nameserver; this one holds
        // whatever it does (several servers, TCP fallback), with some slack.
        let query_limit = opts.timeout * attempts as u32 + Duration::from_millis(500);
        Ok(Dns {
            inner: Arc::new(Inner {
                resolver,
                query_limit,
            }),
        })
    }

    /// The hosts to deliver mail for `domain` to, most preferred first
    /// (RFC 5321 §5.1). `domain` may be an address literal (`[192.0.2.1]`,
    /// `[IPv6:2001:db8::1]`), which is returned as is without a lookup.
    pub async fn mail_hosts(&self, domain: &str) -> Result<Vec<MailHost>, DnsError> {
        let name = match parse_target(domain)? {
            Target::Literal(ip) => {
                return Ok(vec![MailHost {
                    name: domain.to_string(),
                    preference: 0,
                    addrs: vec![ip],
                }])
            }
            Target::Name(name) => name,
        };
        let temporary = |reason: String| DnsError::Temporary {
            domain: domain.to_string(),
            reason,
        };
        let mx = match self.inner.lookup_mx(&name).await.map_err(temporary)? {
            Answer::NxDomain => {
                return Err(DnsError::NoSuchDomain {
                    domain: domain.to_string(),
                })
            }
            Answer::Records(mx) => mx,
            Answer::NoData => return self.implicit_mx(domain, name).await,
        };
        if is_null_mx(&mx) {
            return Err(DnsError::NullMx {
                domain: domain.to_string(),
            });
        }
        let exchanges = select_exchanges(mx, &mut Rng::new());
        let hosts = self.resolve_hosts(exchanges).await;
        let mut last_error = None;
        let mut found = Vec::new();
        for (mx, addrs) in hosts {
            match addrs {
                Ok(addrs) => found.push(MailHost {
                    name: host_name(&mx.exchange),
                    preference: mx.preference,
                    addrs,
                }),
                Err(e) => last_error = Some(e),
            }
        }
        let found = cap_addresses(found);
        if found.is_empty() {
            let why = last_error.unwrap_or_else(|| "no address".to_string());
            return Err(temporary(format!("no MX host has an address ({why})")));
        }
        Ok(found)
    }

    /// Connects to the first reachable address of `domain`'s mail hosts, in
    /// order, each try under `connect_timeout` and all of them under
    /// [`CONNECT_BUDGET`] times that. Returns the stream and the name of the
    /// host it reached (for EHLO replies, TLS and logs).
    pub async fn connect_mail_host(
        &self,
        domain: &str,
        port: u16,
        connect_timeout: Duration,
    ) -> Result<(TcpStream, String), ConnectError> {
        let hosts = self.mail_hosts(domain).await?;
        let deadline = Instant::now() + connect_timeout * CONNECT_BUDGET;
        let mut tried = 0;
        let mut last = String::from("connect budget spent");
        'hosts: for host in &hosts {
            for ip in &host.addrs {
                let now = Instant::now();
                if now >= deadline {
                    last = format!("connect budget spent; {last}");
                    break 'hosts;
                }
                let limit = connect_timeout.min(deadline - now);
                let addr = SocketAddr::new(*ip, port);
                tried += 1;
                match timeout(limit, TcpStream::connect(addr)).await {
                    Ok(Ok(tcp)) => {
                        // Command/reply exchanges: no waiting to batch them.
                        let _ = tcp.set_nodelay(true);
                        return Ok((tcp, host.name.clone()));
                    }
                    Ok(Err(e)) => last = format!("{} {addr}: {e}", host.name),
                    Err(_) => last = format!("{} {addr}: timed out after {limit:?}", host.name),
                }
                tracing::debug!(domain, "mail host connect failed: {last}");
            }
        }
        Err(ConnectError::Unreachable {
            domain: domain.to_string(),
            tried,
            last,
        })
    }

    /// No MX record: the domain itself is the mail host (RFC 5321 §5.1).
    async fn implicit_mx(&self, domain: &str, name: Name) -> Result<Vec<MailHost>, DnsError> {
        match self.inner.lookup_addrs(&name).await {
            Ok(Answer::Records(addrs)) => Ok(cap_addresses(vec![MailHost {
                name: host_name(&name),
                preference: 0,
                addrs,
            }])),
            Ok(Answer::NoData) => Err(DnsError::NoAddress {
                domain: domain.to_string(),
            }),
            Ok(Answer::NxDomain) => Err(DnsError::NoSuchDomain {
                domain: domain.to_string(),
            }),
            Err(reason) => Err(DnsError::Temporary {
                domain: domain.to_string(),
                reason,
            }),
        }
    }

    /// The addresses of every exchange, looked up concurrently, in the
    /// exchanges' order; an exchange without addresses gets its reason.
    async fn resolve_hosts(&self, exchanges: Vec<Mx>) -> Vec<(Mx, Result<Vec<IpAddr>, String>)> {
        let mut set = JoinSet::new();
        for (i, mx) in exchanges.iter().enumerate() {
            let inner = self.inner.clone();
            let name = mx.exchange.clone();
            set.spawn(async move { (i, inner.lookup_addrs(&name).await) });
        }
        let mut results: Vec<Option<Result<Vec<IpAddr>, String>>> = vec![None; exchanges.len()];
        while let Some(joined) = set.join_next().await {
            if let Ok((i, answer)) = joined {
                results[i] = Some(match answer {
                    Ok(Answer::Records(addrs)) => Ok(addrs),
                    Ok(Answer::NoData) => Err("no A or AAAA record".to_string()),
                    Ok(Answer::NxDomain) => Err("no such host".to_string()),
                    Err(reason) => Err(reason),
                });
            }
        }
        exchanges
            .into_iter()
            .zip(results)
            .map(|(mx, r)| (mx, r.unwrap_or_else(|| Err("lookup task failed".into()))))
            .collect()
    }
}

impl Inner {
    async fn lookup_mx(&self, name: &Name) -> Result<Answer<Mx>, String> {
        let lookup = timeout(self.query_limit, self.resolver.mx_lookup(name.clone())).await;
        classify(lookup, |l| {
            l.iter()
                .map(|mx| Mx {
                    preference: mx.preference(),
                    exchange: mx.exchange().clone(),
                })
                .collect()
        })
    }

    /// AAAA and A together: IPv6 first, then IPv4. Records of either type
    /// win over a failure of the other; NXDOMAIN needs both to agree.
    async fn lookup_addrs(&self, name: &Name) -> Result<Answer<IpAddr>, String> {
        let (v6, v4) = tokio::join!(
            timeout(self.query_limit, self.resolver.ipv6_lookup(name.clone())),
            timeout(self.query_limit, self.resolver.ipv4_lookup(name.clone())),
        );
        let v6 = classify(v6, |l| l.iter().map(|r| IpAddr::V6(r.0)).collect());
        let v4 = classify(v4, |l| l.iter().map(|r| IpAddr::V4(r.0)).collect());
        let mut addrs = Vec::new();
        let mut error = None;
        let mut nxdomain = true;
        for answer in [v6, v4] {
            match answer {
                Ok(Answer::Records(a)) => {
                    nxdomain = false;
                    addrs.extend(a);
                }
                Ok(Answer::NoData) => nxdomain = false,
                Ok(Answer::NxDomain) => {}
                Err(e) => {
                    nxdomain = false;
                    error = Some(e);
                }
            }
        }
        match (addrs.is_empty(), error) {
            (false, _) => Ok(Answer::Records(addrs)),
            (true, Some(e)) => Err(e),
            (true, None) if nxdomain => Ok(Answer::NxDomain),
            (true, None) => Ok(Answer::NoData),
        }
    }
}

/// Sorts a lookup result into records, NODATA, NXDOMAIN, or the reason of
/// a temporary failure. hickory reports SERVFAIL and REFUSED as "no
/// records found" too: only the response code tells them apart.
fn classify<L, T>(
    result: Result<Result<L, ResolveError>, tokio::time::error::Elapsed>,
    records: impl FnOnce(&L) -> Vec<T>,
) -> Result<Answer<T>, String> {
    let err = match result {
        Err(_) => return Err("DNS query timed out".to_string()),
        Ok(Ok(lookup)) => {
            let found = records(&lookup);
            return Ok(if found.is_empty() {
                Answer::NoData
            } else {
                Answer::Records(found)
            });
        }
        Ok(Err(e)) => e,
    };
    match err.proto().map(|p| p.kind()) {
        Some(ProtoErrorKind::NoRecordsFound { response_code, .. }) => match *response_code {
            ResponseCode::NXDomain => Ok(Answer::NxDomain),
            ResponseCode::NoError => Ok(Answer::NoData),
            code => Err(format!("DNS server answered {code}")),
        },
        _ => Err(err.to_string()),
    }
}

/// One MX record.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mx {
    preference: u16,
    exchange: Name,
}

/// RFC 7505 §3: a single MX record whose exchange is the root ("."). Its
/// preference should be 0; any is accepted, since no host follows anyway.
/// A "." among other records is not a null MX, just an unusable host.
fn is_null_mx(records: &[Mx]) -> bool {
    matches!(records, [only] if only.exchange.is_root())
}

/// The exchanges to try: by preference, equal preferences in random order
/// (RFC 5321 §5.1, to spread the load), without "." and duplicates, at most
/// [`MAX_MX_HOSTS`].
fn select_exchanges(mut records: Vec<Mx>, rng: &mut Rng) -> Vec<Mx> {
    records.retain(|mx| !mx.exchange.is_root());
    records.sort_by_key(|mx| mx.preference);
    let mut start = 0;
    while start < records.len() {
        let pref = records[start].preference;
        let end = start
            + records[start..]
                .iter()
                .take_while(|mx| mx.preference == pref)
                .count();
        rng.shuffle(&mut records[start..end]);
        start = end;
    }
    let mut out: Vec<Mx> = Vec::new();
    for mx in records {
        // Name equality ignores case, as the DNS does.
        if !out.iter().any(|o| o.exchange == mx.exchange) {
            out.push(mx);
        }
    }
    out.truncate(MAX_MX_HOSTS);
    out
}

/// Keeps each address once (at its first host) and at most
/// [`MAX_ADDRESSES`] in all; hosts left without addresses are dropped.
fn cap_addresses(hosts: Vec<MailHost>) -> Vec<MailHost> {
    let mut seen: Vec<IpAddr> = Vec::new();
    let mut out = Vec::new();
    for mut host in hosts {
        host.addrs.retain(|ip| {
            if seen.len() >= MAX_ADDRESSES || seen.contains(ip) {
                return false;
            }
            seen.push(*ip);
            true
        });
        if !host.addrs.is_empty() {
            out.push(host);
        }
    }
    out
}

/// Checks a domain argument: an address literal, or an ASCII domain name
/// made fully qualified (so no resolv.conf search list applies).
///
/// Non-ASCII names are refused for now: looking them up needs the IDNA
/// (UTS #46) mapping to A-labels, which hickory does only with its
/// `idna`-backed feature not enabled here, and a non-ASCII domain reaches
/// us only with SMTPUTF8, which ponte does not offer. Names already in
/// A-label form (`xn--…`) are plain ASCII and work.
pub fn parse_target(domain: &str) -> Result<Target, DnsError> {
    let invalid = |reason: &str| DnsError::InvalidDomain {
        domain: domain.to_string(),
        reason: reason.to_string(),
    };
    if let Some(inner) = domain.strip_prefix('[') {
        let inner = inner
            .strip_suffix(']')
            .ok_or_else(|| invalid("unclosed address literal"))?;
        // RFC 5321 §4.1.3: IPv6 literals carry an "IPv6:" tag.
        let ip = match inner.get(..5) {
            Some(tag) if tag.eq_ignore_ascii_case("IPv6:") => {
                inner[5..].parse::<Ipv6Addr>().map(IpAddr::V6)
            }
            _ => inner.parse::<Ipv4Addr>().map(IpAddr::V4),
        };
        return ip
            .map(Target::Literal)
            .map_err(|_| invalid("not an address literal"));
    }
    if !domain.is_ascii() {
        return Err(DnsError::NonAscii {
            domain: domain.to_string(),
        });
    }
    let bare = domain.strip_suffix('.').unwrap_or(domain);
    if bare.is_empty() || bare.len() > 253 {
        return Err(invalid("empty or longer than 253 characters"));
    }
    for label in bare.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(invalid("empty label or label over 63 characters"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(invalid("only letters, digits, '-' and '.' are allowed"));
        }
    }
    if bare
        .rsplit('.')
        .next()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(invalid("an IP address must be written as [192.0.2.1]"));
    }
    Name::from_ascii(format!("{bare}."))
        .map(Target::Name)
        .map_err(|e| invalid(&e.to_string()))
}

/// A DNS name as mail software writes it: no trailing dot.
fn host_name(name: &Name) -> String {
    let text = name.to_ascii();
    text.strip_suffix('.').unwrap_or(&text).to_string()
}

/// A small non-cryptographic generator (splitmix64) for shuffling equal
/// MX preferences: load spreading needs no more than that.
struct Rng(u64);

impl Rng {
    /// Seeded from std's per-process random hash keys, which differ for
    /// every `RandomState`.
    fn new() -> Rng {
        let mut h = RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        Rng(h.finish())
    }

    /// A fixed sequence, for tests.
    #[cfg(test)]
    fn with_seed(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Fisher–Yates.
    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mx(preference: u16, exchange: &str) -> Mx {
        Mx {
            preference,
            exchange: Name::from_ascii(exchange).unwrap(),
        }
    }

    fn names(records: &[Mx]) -> Vec<String> {
        records.iter().map(|m| host_name(&m.exchange)).collect()
    }

    fn host(name: &str, addrs: &[&str]) -> MailHost {
        MailHost {
            name: name.to_string(),
            preference: 10,
            addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn sorts_exchanges_by_preference() {
        let records = vec![mx(30, "c."), mx(10, "a."), mx(20, "b.")];
        let got = select_exchanges(records, &mut Rng::with_seed(1));
        assert_eq!(names(&got), ["a", "b", "c"]);
        assert_eq!(got[0].preference, 10);
    }

    #[test]
    fn shuffles_only_within_equal_preferences() {
        let records = vec![mx(20, "y."), mx(10, "a1."), mx(20, "x."), mx(10, "a2.")];
        let mut orders = std::collections::BTreeSet::new();
        for seed in 0..64 {
            let got = names(&select_exchanges(
                records.clone(),
                &mut Rng::with_seed(seed),
            ));
            let (first, second) = got.split_at(2);
            assert_eq!(sorted(first), ["a1", "a2"], "{got:?}");
            assert_eq!(sorted(second), ["x", "y"], "{got:?}");
            orders.insert(got);
        }
        assert_eq!(orders.len(), 4, "every order of both pairs shows up");
    }

    fn sorted(s: &[String]) -> Vec<String> {
        let mut v = s.to_vec();
        v.sort();
        v
    }

    #[test]
    fn drops_root_and_duplicate_exchanges_and_caps_hosts() {
        let mut records = vec![mx(5, "."), mx(10, "A.example."), mx(20, "a.example.")];
        records.extend((0..20).map(|i| mx(30 + i, &format!("h{i}.example."))));
        let got = select_exchanges(records, &mut Rng::with_seed(7));
        assert_eq!(got.len(), MAX_MX_HOSTS);
        assert_eq!(got[0].preference, 10);
        assert_eq!(got[1].preference, 30, "the duplicate a.example is gone");
    }

    #[test]
    fn detects_null_mx() {
        assert!(is_null_mx(&[mx(0, ".")]));
        assert!(is_null_mx(&[mx(10, ".")]));
        assert!(!is_null_mx(&[mx(0, "."), mx(10, "mx.example.")]));
        assert!(!is_null_mx(&[mx(0, "mx.example.")]));
        assert!(!is_null_mx(&[]));
    }

    #[test]
    fn caps_and_deduplicates_addresses() {
        let hosts = vec![
            host("a", &["::1", "127.0.0.1"]),
            host("b", &["127.0.0.1"]),
            host("c", &["127.0.0.3"]),
        ];
        let got = cap_addresses(hosts);
        assert_eq!(got.len(), 2, "b has only a duplicate left: {got:?}");
        assert_eq!((got[0].name.as_str(), got[1].name.as_str()), ("a", "c"));

        let many: Vec<MailHost> = (0..10u8)
            .map(|h| {
                let addrs: Vec<String> = (0..5).map(|i| format!("127.0.{h}.{i}")).collect();
                host(
                    &format!("h{h}"),
                    &addrs.iter().map(String::as_str).collect::<Vec<_>>(),
                )
            })
            .collect();
        let got = cap_addresses(many);
        let total: usize = got.iter().map(|h| h.addrs.len()).sum();
        assert_eq!((total, got.len()), (MAX_ADDRESSES, 4));
    }

    #[test]
    fn parses_targets() {
        let lit = |s: &str| match parse_target(s) {
            Ok(Target::Literal(ip)) => ip.to_string(),
            other => panic!("{s}: {other:?}"),
        };
        assert_eq!(lit("[127.0.0.1]"), "127.0.0.1");
        assert_eq!(lit("[IPv6:::1]"), "::1");
        assert_eq!(lit("[ipv6:2001:db8::1]"), "2001:db8::1");
        match parse_target("Mail.Example.") {
            Ok(Target::Name(n)) => assert!(n.is_fqdn() && host_name(&n) == "Mail.Example"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_target("xn--bcher-kva.example"),
            Ok(Target::Name(_))
        ));
        for bad in [
            "",
            ".",
            "a..b",
            "[127.0.0.1",
            "[::1]",
            "[mail]",
            "a_b.example",
            "1.2.3.4",
        ] {
            let e = parse_target(bad).unwrap_err();
            assert!(
                matches!(e, DnsError::InvalidDomain { .. }),
                "{bad:?}: {e:?}"
            );
            assert!(e.is_permanent());
        }
        let long = format!("{}.example", "a".repeat(64));
        assert!(parse_target(&long).is_err());
        let e = parse_target("bücher.example").unwrap_err();
        assert!(matches!(e, DnsError::NonAscii { .. }) && e.is_permanent());
    }

    #[test]
    fn only_temporary_errors_are_retryable() {
        let d = || "x.example".to_string();
        assert!(DnsError::NullMx { domain: d() }.is_permanent());
        assert!(DnsError::NoSuchDomain { domain: d() }.is_permanent());
        assert!(DnsError::NoAddress { domain: d() }.is_permanent());
        let temp = DnsError::Temporary {
            domain: d(),
            reason: "SERVFAIL".into(),
        };
        assert!(!temp.is_permanent());
        assert!(!ConnectError::Dns(temp).is_permanent());
        let unreachable = ConnectError::Unreachable {
            domain: d(),
            tried: 2,
            last: "refused".into(),
        };
        assert!(!unreachable.is_permanent());
    }

    #[tokio::test]
    async fn literals_need_no_lookup() {
        // A nameserver nothing answers on: a literal must not ask it.
        let dns = Dns::new(&DnsOptions {
            nameservers: vec!["127.0.0.1:9".parse().unwrap()],
            timeout: Duration::from_millis(50),
            attempts: 1,
        })
        .unwrap();
        let hosts = dns.mail_hosts("[127.0.0.1]").await.unwrap();
        assert_eq!(hosts, vec![host_lit("[127.0.0.1]", "127.0.0.1")]);
    }

    fn host_lit(name: &str, ip: &str) -> MailHost {
        MailHost {
            name: name.to_string(),
            preference: 0,
            addrs: vec![ip.parse().unwrap()],
        }
    }
}
