//! The load generator: just enough IMAP and POP3 client, the login cycle of
//! each kind (plain IMAP, IMAPS, IMAP with STARTTLS, POP3), the login
//! scenario (N clients looping cycles for a fixed time) and the FETCH
//! scenario. The same code drives Dovecot directly, nginx and ponte.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

use crate::common::net::literal_len;
use crate::procs::{CpuUse, Probe};
use crate::{DOMAIN, FETCH_PASS, FETCH_USER};

/// Bound on any single read, write, connect or TLS handshake.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on one whole login cycle.
pub const CYCLE_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on one FETCH round (the whole literal).
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);
/// Cycles per client per scenario, whatever the duration (a safety bound).
const MAX_CYCLES_PER_CLIENT: u64 = 1_000_000;
/// Distinct error texts kept per client; the rest are counted as "other".
const MAX_ERROR_KINDS: usize = 16;
/// Read buffer of the FETCH session: few syscalls per literal.
const FETCH_BUF: usize = 256 * 1024;

/// Who the client talks to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Side {
    Direct,
    Nginx,
    Ponte,
}

impl Side {
    pub const ALL: [Side; 3] = [Side::Direct, Side::Nginx, Side::Ponte];

    pub fn name(self) -> &'static str {
        match self {
            Side::Direct => "direct",
            Side::Nginx => "nginx",
            Side::Ponte => "ponte",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// What a login cycle speaks.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Imap,
    /// Implicit TLS.
    Imaps,
    /// Plain IMAP upgraded with STARTTLS before LOGIN.
    Starttls,
    Pop3,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Imap => "IMAP",
            Kind::Imaps => "IMAPS",
            Kind::Starttls => "IMAP STARTTLS",
            Kind::Pop3 => "POP3",
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Where a client connects, what it speaks, and its TLS settings.
pub struct Target {
    pub addr: SocketAddr,
    pub kind: Kind,
    tls: TlsConnector,
    name: ServerName<'static>,
}

impl Target {
    pub fn new(addr: SocketAddr, kind: Kind, tls: &TlsConnector) -> Arc<Target> {
        Arc::new(Target {
            addr,
            kind,
            tls: tls.clone(),
            name: ServerName::try_from("localhost").expect("server name"),
        })
    }

    /// TCP, and the TLS handshake for IMAPS.
    pub async fn open(&self, buf: usize) -> Result<Conn, String> {
        let tcp = within("connect", TcpStream::connect(self.addr)).await?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = if self.kind == Kind::Imaps {
            Box::new(within("TLS", self.tls.connect(self.name.clone(), tcp)).await?)
        } else {
            Box::new(tcp)
        };
        Ok(Conn {
            io: BufReader::with_capacity(buf, io),
            line: Vec::with_capacity(256),
            buf,
        })
    }

    /// Connects and greets; for STARTTLS also upgrades the connection.
    pub async fn open_greeted(&self, buf: usize) -> Result<Conn, String> {
        let mut c = self.open(buf).await?;
        if self.kind == Kind::Pop3 {
            c.pop3_reply("greeting").await?;
            return Ok(c);
        }
        c.greeting().await?;
        if self.kind == Kind::Starttls {
            c.command("s", "STARTTLS").await?;
            c = c.starttls(&self.tls, &self.name).await?;
        }
        Ok(c)
    }
}

/// Full handshakes every time: no session resumption, as for a crowd of
/// distinct clients.
pub fn client_tls(ca_pem: &str) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes()).expect("CA PEM");
    roots.add(ca).expect("add CA");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.resumption = rustls::client::Resumption::disabled();
    TlsConnector::from(Arc::new(cfg))
}

pub async fn within<T, E: std::fmt::Display>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(IO_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: timeout")),
    }
}

/// Just enough IMAP and POP3: lines, tagged replies, literals.
pub struct Conn {
    io: BufReader<Box<dyn Io>>,
    line: Vec<u8>,
    /// Capacity of the read buffer.
    buf: usize,
}

impl Conn {
    /// One line into `self.line`; an error on EOF or timeout.
    async fn read_line(&mut self, what: &str) -> Result<(), String> {
        self.line.clear();
        within(what, self.io.read_until(b'\n', &mut self.line)).await?;
        if self.line.ends_with(b"\n") {
            Ok(())
        } else {
            Err(format!("{what}: connection closed"))
        }
    }

    /// Writes `line` and CRLF.
    pub async fn send_line(&mut self, line: &str) -> Result<(), String> {
        let bytes = format!("{line}\r\n");
        let what = line.split(' ').next().unwrap_or(line);
        within(what, async {
            self.io.write_all(bytes.as_bytes()).await?;
            self.io.flush().await
        })
        .await
    }

    async fn send(&mut self, tag: &str, command: &str) -> Result<(), String> {
        self.send_line(&format!("{tag} {command}")).await
    }

    async fn greeting(&mut self) -> Result<(), String> {
        self.read_line("greeting").await?;
        if self.line.starts_with(b"* OK") {
            Ok(())
        } else {
            Err(format!("greeting: {}", self.line_text()))
        }
    }

    /// Sends a command and reads up to its tagged OK, skipping literals.
    pub async fn command(&mut self, tag: &str, command: &str) -> Result<(), String> {
        self.send(tag, command).await?;
        let what = command.split(' ').next().unwrap_or(command);
        self.until_tagged(tag, what).await
    }

    /// Reads up to the line tagged `tag`: `Ok` if it says OK.
    pub async fn until_tagged(&mut self, tag: &str, what: &str) -> Result<(), String> {
        for _ in 0..10_000 {
            self.read_line(what).await?;
            if let Some(status) = self.tagged(tag) {
                return status.map_err(|s| format!("{what}: {s}"));
            }
            if let Some(n) = literal_len(&self.line) {
                self.skip(n, None).await?;
            }
        }
        Err(format!("{what}: no tagged reply"))
    }

    /// Reads lines until one starts with `prefix` (e.g. `+ ` after IDLE).
    pub async fn until_prefix(&mut self, prefix: &[u8], what: &str) -> Result<(), String> {
        for _ in 0..1_000 {
            self.read_line(what).await?;
            if self.line.starts_with(prefix) {
                return Ok(());
            }
            if self.line.first() != Some(&b'*') {
                return Err(format!("{what}: {}", self.line_text()));
            }
        }
        Err(format!("{what}: no {:?}", String::from_utf8_lossy(prefix)))
    }

    /// `+OK` expected.
    async fn pop3_reply(&mut self, what: &str) -> Result<(), String> {
        self.read_line(what).await?;
        if self.line.starts_with(b"+OK") {
            Ok(())
        } else {
            Err(format!("{what}: {}", self.line_text()))
        }
    }

    async fn pop3(&mut self, command: &str) -> Result<(), String> {
        self.send_line(command).await?;
        let what = command.split(' ').next().unwrap_or(command);
        self.pop3_reply(what).await
    }

    /// `Some(Ok)` / `Some(Err(line))` if the current line is tagged `tag`.
    fn tagged(&self, tag: &str) -> Option<Result<(), String>> {
        let rest = self.line.strip_prefix(tag.as_bytes())?.strip_prefix(b" ")?;
        Some(if rest.starts_with(b"OK") {
            Ok(())
        } else {
            Err(self.line_text())
        })
    }

    fn line_text(&self) -> String {
        let mut s = String::from_utf8_lossy(&self.line).trim_end().to_string();
        s.truncate(100);
        s
    }

    /// After the tagged OK to STARTTLS: the TLS handshake on the same
    /// connection.
    async fn starttls(
        self,
        tls: &TlsConnector,
        name: &ServerName<'static>,
    ) -> Result<Conn, String> {
        if !self.io.buffer().is_empty() {
            return Err("STARTTLS: data after the OK".into());
        }
        let plain = self.io.into_inner();
        let io: Box<dyn Io> = Box::new(within("TLS", tls.connect(name.clone(), plain)).await?);
        Ok(Conn {
            io: BufReader::with_capacity(self.buf, io),
            line: self.line,
            buf: self.buf,
        })
    }

    /// Consumes exactly `n` bytes straight from the read buffer, appending
    /// them to `keep` if given.
    async fn skip(&mut self, mut n: usize, mut keep: Option<&mut Vec<u8>>) -> Result<(), String> {
        while n > 0 {
            let buf = within("literal", self.io.fill_buf()).await?;
            if buf.is_empty() {
                return Err(format!("literal: connection closed, {n} bytes missing"));
            }
            let k = buf.len().min(n);
            if let Some(v) = keep.as_deref_mut() {
                v.extend_from_slice(&buf[..k]);
            }
            self.io.consume(k);
            n -= k;
        }
        Ok(())
    }

    /// Waits, without a timeout, until the server sends something; drops
    /// it and returns `false` at EOF or on an error. Cancel-safe.
    pub async fn discard_incoming(&mut self) -> bool {
        match self.io.fill_buf().await {
            Ok([]) | Err(_) => false,
            Ok(b) => {
                let n = b.len();
                self.io.consume(n);
                true
            }
        }
    }

    /// After LOGOUT / QUIT: the server closes first (so TIME_WAIT lands on
    /// the server side, not on our ephemeral ports).
    pub async fn expect_close(&mut self) -> Result<(), String> {
        for _ in 0..100 {
            self.line.clear();
            match tokio::time::timeout(IO_TIMEOUT, self.io.read_until(b'\n', &mut self.line)).await
            {
                Ok(Ok(0)) => return Ok(()),
                Ok(Ok(_)) => {}
                // A TLS peer that closes without close_notify.
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Ok(Err(e)) => return Err(format!("close: {e}")),
                Err(_) => return Err("close: server kept the connection open".into()),
            }
        }
        Err("close: server kept talking".into())
    }
}

/// IMAP: connect, [TLS], greeting, [STARTTLS, TLS], LOGIN, SELECT INBOX,
/// LOGOUT, close. POP3: connect, greeting, USER, PASS, STAT, QUIT, close.
pub async fn login_cycle(t: &Target, user: &str, pass: &str) -> Result<(), String> {
    let mut c = t.open_greeted(4096).await?;
    if t.kind == Kind::Pop3 {
        c.pop3(&format!("USER {user}")).await?;
        c.pop3(&format!("PASS {pass}")).await?;
        c.pop3("STAT").await?;
        c.pop3("QUIT").await?;
    } else {
        c.command("a", &format!("LOGIN {user} {pass}")).await?;
        c.command("b", "SELECT INBOX").await?;
        c.command("c", "LOGOUT").await?;
    }
    c.expect_close().await
}

// ------------------------------------------------------------ login scenario

#[derive(Default)]
struct Worker {
    lat_us: Vec<u32>,
    errors: BTreeMap<String, u64>,
}

pub struct LoginResult {
    pub clients: usize,
    secs: f64,
    lat_us: Vec<u32>,
    pub errors: BTreeMap<String, u64>,
    pub cpu: CpuUse,
}

impl LoginResult {
    pub fn rate(&self) -> f64 {
        self.lat_us.len() as f64 / self.secs
    }

    pub fn pct_ms(&self, p: f64) -> Option<f64> {
        if self.lat_us.is_empty() {
            return None;
        }
        let i =
            ((p / 100.0 * self.lat_us.len() as f64).ceil() as usize).clamp(1, self.lat_us.len());
        Some(self.lat_us[i - 1] as f64 / 1000.0)
    }

    pub fn errors(&self) -> u64 {
        self.errors.values().sum()
    }

    /// `ms` of CPU divided by the logins of the window.
    pub fn per_login(&self, ms: f64) -> Option<f64> {
        (!self.lat_us.is_empty()).then(|| ms / self.lat_us.len() as f64)
    }

    /// The proxy's CPU per login: ponte's process, nginx's master and
    /// workers (not its auth_http responder); none when direct.
    pub fn proxy_ms(&self, side: Side) -> Option<f64> {
        match side {
            Side::Direct => None,
            Side::Nginx => self.per_login(self.cpu.nginx_ms),
            Side::Ponte => self.per_login(self.cpu.ponte_ms),
        }
    }

    pub fn summary(&self, side: Side) -> String {
        let f = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.3}"));
        let mut s = format!(
            "{} clients: {:.0} logins/s, p50 {:.2} ms, p99 {:.2} ms, {} errors, CPU ms/login proxy {} dovecot {} client {}",
            self.clients,
            self.rate(),
            self.pct_ms(50.0).unwrap_or(f64::NAN),
            self.pct_ms(99.0).unwrap_or(f64::NAN),
            self.errors(),
            f(self.proxy_ms(side)),
            f(self.per_login(self.cpu.dovecot_ms)),
            f(self.per_login(self.cpu.client_ms)),
        );
        if side == Side::Nginx {
            let _ = write!(s, " auth_http {}", f(self.per_login(self.cpu.auth_ms)));
        }
        let _ = write!(
            s,
            ", machine {:.0}% busy ({:.0}% other)",
            self.cpu.busy_pct, self.cpu.other_pct
        );
        for (e, n) in &self.errors {
            let _ = write!(s, "\n    {n} x {e}");
        }
        s
    }
}

/// One client per user, each looping login cycles until the end; cycles
/// that complete within [warm-up end, end] count.
pub async fn login_scenario(
    target: &Arc<Target>,
    users: &[(String, String)],
    warmup: Duration,
    secs: Duration,
    probe: &Probe,
) -> LoginResult {
    let start = Instant::now();
    let measure = start + warmup;
    let end = measure + secs;
    let mut tasks = Vec::new();
    for (user, pass) in users {
        let (t, user, pass) = (target.clone(), user.clone(), pass.clone());
        tasks.push(tokio::spawn(async move {
            let mut w = Worker::default();
            let mut cycles = 0;
            while Instant::now() < end && cycles < MAX_CYCLES_PER_CLIENT {
                cycles += 1;
                let t0 = Instant::now();
                let r = tokio::time::timeout(CYCLE_TIMEOUT, login_cycle(&t, &user, &pass)).await;
                let t1 = Instant::now();
                match r.unwrap_or_else(|_| Err("cycle: timeout".into())) {
                    Ok(()) if t1 >= measure && t1 <= end => w
                        .lat_us
                        .push((t1 - t0).as_micros().min(u32::MAX as u128) as u32),
                    Ok(()) => {}
                    Err(e) => {
                        count_error(&mut w.errors, e);
                        // Don't spin on a refusing server.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            w
        }));
    }
    tokio::time::sleep_until(measure.into()).await;
    let a = probe.sample();
    tokio::time::sleep_until(end.into()).await;
    let b = probe.sample();
    let mut lat_us = Vec::new();
    let mut errors = BTreeMap::new();
    let deadline = end + CYCLE_TIMEOUT + Duration::from_secs(5);
    for task in tasks {
        let abort = task.abort_handle();
        match tokio::time::timeout_at(deadline.into(), task).await {
            Ok(Ok(w)) => {
                lat_us.extend(w.lat_us);
                for (e, n) in w.errors {
                    *errors.entry(e).or_default() += n;
                }
            }
            Ok(Err(e)) => *errors.entry(format!("client task: {e}")).or_default() += 1,
            Err(_) => {
                abort.abort();
                *errors.entry("client task: overran".into()).or_default() += 1;
            }
        }
    }
    lat_us.sort_unstable();
    LoginResult {
        clients: users.len(),
        secs: secs.as_secs_f64(),
        lat_us,
        errors,
        cpu: probe.between(a, b),
    }
}

/// Counts `e`, keeping at most [`MAX_ERROR_KINDS`] distinct texts.
pub fn count_error(errors: &mut BTreeMap<String, u64>, e: String) {
    let key = if errors.len() < MAX_ERROR_KINDS || errors.contains_key(&e) {
        e
    } else {
        "other".to_string()
    };
    *errors.entry(key).or_default() += 1;
}

// ------------------------------------------------------------ FETCH scenario

pub struct FetchResult {
    rounds: Vec<Duration>,
    /// The proxy's CPU per round (ms); 0 direct.
    pub proxy_ms_per_round: f64,
}

impl FetchResult {
    pub fn median(&self) -> Duration {
        let mut v = self.rounds.clone();
        v.sort_unstable();
        v[v.len() / 2]
    }

    pub fn median_mbps(&self, bytes: usize) -> f64 {
        bytes as f64 / 1e6 / self.median().as_secs_f64()
    }

    /// All rounds together: total bytes over total time (stalls count).
    pub fn overall_mbps(&self, bytes: usize) -> f64 {
        let total: Duration = self.rounds.iter().sum();
        (bytes * self.rounds.len()) as f64 / 1e6 / total.as_secs_f64()
    }

    pub fn slowest(&self) -> Duration {
        self.rounds.iter().copied().max().unwrap_or_default()
    }

    pub fn rounds_ms(&self) -> Vec<u64> {
        self.rounds.iter().map(|d| d.as_millis() as u64).collect()
    }
}

/// One session: log in, EXAMINE, then `FETCH 1 BODY.PEEK[]` once to warm up
/// (and check the bytes) and `rounds` times measured.
pub async fn fetch_scenario(
    t: &Target,
    side: Side,
    expected: &[u8],
    rounds: usize,
    probe: &Probe,
) -> Result<FetchResult, String> {
    let mut c = t.open_greeted(FETCH_BUF).await?;
    c.command("a", &format!("LOGIN {FETCH_USER} {FETCH_PASS}"))
        .await?;
    c.command("b", "EXAMINE INBOX").await?;
    let mut times = Vec::new();
    let mut cpu = None;
    for r in 0..=rounds {
        if r == 1 {
            cpu = Some(probe.sample());
        }
        let tag = format!("f{r}");
        let t0 = Instant::now();
        let round = tokio::time::timeout(FETCH_TIMEOUT, fetch_once(&mut c, &tag, expected, r == 0));
        round
            .await
            .unwrap_or_else(|_| Err(format!("FETCH round {r}: timeout")))?;
        if r > 0 {
            times.push(t0.elapsed());
        }
    }
    let after = probe.sample();
    c.command("z", "LOGOUT").await?;
    let used = cpu.map(|a| probe.between(a, after)).unwrap_or_default();
    let proxy_ms = match side {
        Side::Direct => 0.0,
        Side::Nginx => used.nginx_ms,
        Side::Ponte => used.ponte_ms,
    };
    Ok(FetchResult {
        proxy_ms_per_round: proxy_ms / rounds as f64,
        rounds: times,
    })
}

async fn fetch_once(c: &mut Conn, tag: &str, expected: &[u8], check: bool) -> Result<(), String> {
    c.send(tag, "FETCH 1 BODY.PEEK[]").await?;
    let mut got = false;
    for _ in 0..100 {
        c.read_line("FETCH").await?;
        if let Some(status) = c.tagged(tag) {
            status.map_err(|s| format!("FETCH: {s}"))?;
            return if got {
                Ok(())
            } else {
                Err("FETCH: no literal".into())
            };
        }
        if let Some(n) = literal_len(&c.line) {
            if n != expected.len() {
                return Err(format!("FETCH: {n} bytes, expected {}", expected.len()));
            }
            let mut copy = check.then(|| Vec::with_capacity(n));
            c.skip(n, copy.as_mut()).await?;
            if copy.is_some_and(|v| v != expected) {
                return Err("FETCH: the body differs from the delivered message".into());
            }
            got = true;
        }
    }
    Err("FETCH: no tagged reply".into())
}

/// A realistic large message: headers, a text part and a base64 attachment
/// in 76-character lines, `size` bytes or a little more.
pub fn big_message(size: usize) -> Vec<u8> {
    const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut m = format!(
        "Return-Path: <sender@{DOMAIN}>\r\n\
         Received: from mx.{DOMAIN} (mx.{DOMAIN} [127.0.0.1])\r\n\tby imap.{DOMAIN}; Mon, 01 Jan 2024 10:00:00 +0000\r\n\
         From: Sender <sender@{DOMAIN}>\r\n\
         To: {FETCH_USER}\r\n\
         Subject: a large attachment\r\n\
         Date: Mon, 01 Jan 2024 10:00:00 +0000\r\n\
         Message-ID: <big.1@{DOMAIN}>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"=_bench_boundary\"\r\n\
         \r\n\
         --=_bench_boundary\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         \r\n\
         The attachment follows.\r\n\
         \r\n\
         --=_bench_boundary\r\n\
         Content-Type: application/octet-stream; name=\"data.bin\"\r\n\
         Content-Transfer-Encoding: base64\r\n\
         Content-Disposition: attachment; filename=\"data.bin\"\r\n\
         \r\n"
    )
    .into_bytes();
    let tail = b"--=_bench_boundary--\r\n";
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while m.len() + tail.len() < size {
        for _ in 0..76 {
            // xorshift64: cheap, deterministic, incompressible enough.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            m.push(B64[(x >> 58) as usize]);
        }
        m.extend_from_slice(b"\r\n");
    }
    m.extend_from_slice(tail);
    m
}
