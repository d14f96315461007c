//! A real DNS server for tests: Debian's dnsmasq (package `dnsmasq-base`,
//! `/usr/sbin/dnsmasq`, installed by `.ci/install`), serving only the
//! records a test gives it, on a fresh loopback port (UDP and TCP), in the
//! foreground as a child process in its own process group. It logs every
//! query to a file in its tempdir and is killed on Drop.
//!
//! ```ignore
//! let dns = DnsmasqOptions::new()
//!     .local("test.example")                  // unknown names: NXDOMAIN
//!     .mx("test.example", "mx1.test.example", 10)
//!     .host("mx1.test.example", "127.0.0.2")
//!     .start();
//! // resolver pointed at dns.addr()
//! ```
//!
//! No upstream servers and no `/etc/hosts` or `/etc/resolv.conf`: a name
//! outside the configured zones is REFUSED, never resolved for real.
#![allow(dead_code)] // each test binary uses a different subset

use std::fs;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// How long a starting dnsmasq may take to answer.
const READY_WITHIN: Duration = Duration::from_secs(10);
/// Port races with parallel tests are retried this many times in all.
const START_ATTEMPTS: usize = 5;
/// How long dnsmasq may take to exit on SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_millis(500);

/// The records to serve: each method adds one dnsmasq option.
#[derive(Clone, Debug, Default)]
pub struct DnsmasqOptions {
    args: Vec<String>,
}

impl DnsmasqOptions {
    pub fn new() -> DnsmasqOptions {
        DnsmasqOptions::default()
    }

    /// Answers for names under `zone` come only from this configuration:
    /// unknown names get NXDOMAIN (`--local=/zone/`).
    pub fn local(self, zone: &str) -> Self {
        self.arg(format!("--local=/{zone}/"))
    }

    /// An MX record `name. MX preference exchange.` (`--mx-host`).
    pub fn mx(self, name: &str, exchange: &str, preference: u16) -> Self {
        self.arg(format!("--mx-host={name},{exchange},{preference}"))
    }

    /// The RFC 7505 null MX `name. MX 0 .`, written as raw RDATA
    /// (preference 0, then the root name's zero-length label).
    pub fn null_mx(self, name: &str) -> Self {
        self.arg(format!("--dns-rr={name},15,000000"))
    }

    /// A and/or AAAA records for `name`: comma-separated addresses
    /// (`--host-record`; also answers the matching PTR queries).
    pub fn host(self, name: &str, addrs: &str) -> Self {
        self.arg(format!("--host-record={name},{addrs}"))
    }

    /// Any other dnsmasq option.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Starts dnsmasq and waits until it answers; panics with its log if it
    /// does not come up.
    pub fn start(self) -> Dnsmasq {
        let mut failures = String::new();
        for attempt in 1..=START_ATTEMPTS {
            match Dnsmasq::try_start(&self.args) {
                Ok(dnsmasq) => return dnsmasq,
                // Another process took the port between pick_port() and
                // dnsmasq's bind(): try again with a fresh one.
                Err(log) if log.contains("Address already in use") && attempt < START_ATTEMPTS => {
                    failures.push_str(&format!("attempt {attempt}: the port was taken\n"));
                }
                Err(log) => panic!("dnsmasq failed to start:\n{failures}{log}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }
}

/// A running dnsmasq; dropping it stops it.
pub struct Dnsmasq {
    dir: tempfile::TempDir,
    child: Child,
    addr: SocketAddr,
    stopped: bool,
}

impl Dnsmasq {
    fn try_start(args: &[String]) -> Result<Dnsmasq, String> {
        let dir = tempfile::Builder::new()
            .prefix("ponte-dnsmasq-")
            .tempdir()
            .expect("create tempdir");
        let addr = pick_port();
        let child = spawn(dir.path(), addr, args);
        let mut dnsmasq = Dnsmasq {
            dir,
            child,
            addr,
            stopped: false,
        };
        match dnsmasq.wait_ready() {
            Ok(()) => Ok(dnsmasq),
            Err(why) => {
                dnsmasq.stop();
                Err(format!("{why}\n--- log ---\n{}", dnsmasq.log()))
            }
        }
    }

    /// Where it answers, over UDP and TCP.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// dnsmasq's own log: startup, then one line per query and answer.
    pub fn log(&self) -> String {
        fs::read_to_string(log_path(self.dir.path())).unwrap_or_default()
    }

    /// Polls with a query until any answer comes back, failing early if
    /// dnsmasq exits (bad option, port taken).
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_WITHIN;
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind UDP client");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("set_read_timeout");
        let query = probe_query(0x5054);
        let mut reply = [0u8; 512];
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("dnsmasq exited during startup: {status}"));
            }
            let _ = socket.send_to(&query, self.addr);
            if let Ok((n, from)) = socket.recv_from(&mut reply) {
                if from == self.addr && n >= 12 && reply[..2] == query[..2] {
                    return Ok(());
                }
            }
        }
        Err(format!(
            "no answer on {} within {READY_WITHIN:?}",
            self.addr
        ))
    }

    /// SIGTERM to the process group (dnsmasq forks a child per TCP
    /// connection), then SIGKILL after [`STOP_GRACE`].
    fn stop(&mut self) {
        if std::mem::replace(&mut self.stopped, true) {
            return;
        }
        let pgid = self.child.id() as libc::pid_t;
        signal_group(pgid, libc::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            sleep(Duration::from_millis(2));
        }
        signal_group(pgid, libc::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A nameserver that never answers: a bound UDP socket nobody reads (so no
/// ICMP "port unreachable" either). Keep the socket alive while it is used.
pub fn silent_nameserver() -> (UdpSocket, SocketAddr) {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind silent UDP socket");
    let addr = socket.local_addr().expect("local_addr");
    (socket, addr)
}

/// A loopback port free for both UDP and TCP a moment ago (racy: see
/// [`DnsmasqOptions::start`]).
fn pick_port() -> SocketAddr {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind 127.0.0.1:0/udp");
        let addr = udp.local_addr().expect("local_addr");
        if TcpListener::bind(addr).is_ok() {
            return addr;
        }
    }
}

fn log_path(dir: &Path) -> PathBuf {
    dir.join("dnsmasq.log")
}

/// dnsmasq in the foreground, serving only its command line: no config
/// file, no resolv.conf, no /etc/hosts, no pid file, logging every query to
/// stderr (captured in the tempdir). As root it still drops to `nobody`
/// after binding, which is all it needs.
fn spawn(dir: &Path, addr: SocketAddr, args: &[String]) -> Child {
    let log = fs::File::create(log_path(dir)).expect("create dnsmasq.log");
    let stdout = log.try_clone().expect("dup dnsmasq.log");
    Command::new(binary())
        .args([
            "--keep-in-foreground",
            "--no-daemon",
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            "--conf-file=/dev/null",
            "--pid-file=",
            "--log-facility=-",
            "--log-queries",
        ])
        .arg(format!("--listen-address={}", addr.ip()))
        .arg(format!("--port={}", addr.port()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(log)
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn dnsmasq (is dnsmasq-base installed?): {e}"))
}

/// Debian installs dnsmasq in /usr/sbin, which a non-login PATH may lack.
fn binary() -> PathBuf {
    let sbin = PathBuf::from("/usr/sbin/dnsmasq");
    if sbin.exists() {
        sbin
    } else {
        PathBuf::from("dnsmasq")
    }
}

/// A standard query (RD set) for `probe.invalid. IN A`: whatever dnsmasq
/// answers (REFUSED, with no upstream) shows it is serving.
fn probe_query(id: u16) -> Vec<u8> {
    let mut q = Vec::with_capacity(32);
    q.extend_from_slice(&id.to_be_bytes());
    // flags RD; QDCOUNT 1; AN/NS/AR 0
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in ["probe", "invalid"] {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    // root, QTYPE A, QCLASS IN
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

fn signal_group(pgid: libc::pid_t, signal: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions; a negative pid
    // addresses the process group we created with process_group(0).
    unsafe {
        libc::kill(-pgid, signal);
    }
}
