//! End-to-end IMAP benchmark on loopback: a real Dovecot (the test
//! harness's), the release `ponte` binary as a separate process in front of
//! it, and a tokio load generator. Measures, directly and through ponte:
//! logins per second with concurrent clients (plain IMAP and IMAPS), the
//! latency of one whole login cycle, CPU per login, and the throughput of a
//! large `FETCH BODY.PEEK[]`. See benches/README.md.
//!
//! `cargo bench --bench imap_e2e`; without `--bench` (e.g. under
//! `cargo test --benches`) it does nothing.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

use common::certs::TestCa;
use common::dovecot::{Dovecot, DovecotOptions};
use common::net::{free_ports, literal_len, wait_greeting};

/// Bound on any single read, write, connect or TLS handshake.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on one whole login cycle.
const CYCLE_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on one FETCH round (the whole literal).
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);
/// Hard ceiling on the whole run: past it the watchdog kills ponte and
/// Dovecot and exits, so a wedged run can never hang CI or a terminal.
const WATCHDOG: Duration = Duration::from_secs(290);
/// Cycles per client per scenario, whatever the duration (a safety bound).
const MAX_CYCLES_PER_CLIENT: u64 = 1_000_000;
/// Distinct error texts kept per client; the rest are counted as "other".
const MAX_ERROR_KINDS: usize = 16;
const DOMAIN: &str = "bench.example";
const FETCH_USER: &str = "fetch@bench.example";
const FETCH_PASS: &str = "fetch-pass";
/// Read buffer of the FETCH session: few syscalls per literal.
const FETCH_BUF: usize = 256 * 1024;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("imap_e2e: a benchmark; run it with `cargo bench --bench imap_e2e`");
        return;
    }
    let started = Instant::now();
    let p = Params::from_env();
    println!(
        "imap_e2e: {} clients, {:.1} s warm-up + {:.1} s per login scenario, \
         FETCH {} MiB x {} rounds (+1 warm-up), IMAPS {}, Dovecot {}",
        p.clients,
        p.warmup.as_secs_f64(),
        p.secs.as_secs_f64(),
        p.fetch_mib,
        p.fetch_rounds,
        if p.tls { "on" } else { "off" },
        if p.tuned { "tuned" } else { "stock" },
    );
    // What else the machine is doing (other builds and tests skew results).
    let before = machine_ticks();
    std::thread::sleep(Duration::from_secs(1));
    let background = busy_pct(before, machine_ticks());
    println!("machine CPU busy before the run: {background:.0}%");

    let dir = tempfile::Builder::new()
        .prefix("ponte-bench-")
        .tempdir()
        .expect("tempdir");
    let ca = TestCa::new("ponte bench CA");
    let (cert, key) = ca
        .issue(&["localhost", "127.0.0.1"])
        .write_to(dir.path(), "server");

    let users: Vec<(String, String)> = (0..p.clients)
        .map(|i| (format!("user{i}@{DOMAIN}"), format!("pass{i}")))
        .collect();
    let mut opts = DovecotOptions::new(
        "bench",
        &users
            .iter()
            .map(|(u, pw)| (u.as_str(), pw.as_str()))
            .chain([(FETCH_USER, FETCH_PASS)])
            .collect::<Vec<_>>(),
    );
    opts.tls = Some((cert.clone(), key.clone()));
    let dovecot = Dovecot::start(opts);
    for (i, (user, _)) in users.iter().enumerate() {
        let msg = format!(
            "From: Sender <sender@{DOMAIN}>\r\nTo: {user}\r\nSubject: hello {i}\r\n\
             Date: Mon, 01 Jan 2024 10:00:00 +0000\r\nMessage-ID: <small.{i}@{DOMAIN}>\r\n\r\n\
             A small message so that SELECT finds one.\r\n"
        );
        dovecot.deliver(user, "INBOX", msg.as_bytes());
    }
    let big = big_message(p.fetch_mib * 1024 * 1024);
    dovecot.deliver(FETCH_USER, "INBOX", &big);
    let dovecot_pgid = find_child("dovecot");

    let ponte = PonteProc::start(dir.path(), &cert, &key, dovecot.imap_addr());
    let _watchdog = spawn_watchdog(ponte.pid(), dovecot_pgid);
    println!(
        "dovecot imap {} imaps {:?}; ponte pid {} imap {} imaps {}",
        dovecot.imap_addr(),
        dovecot.imaps_addr(),
        ponte.pid(),
        ponte.imap,
        ponte.imaps
    );

    let tls = TlsConnector::from(Arc::new(client_tls(&ca.cert_pem)));
    let name = ServerName::try_from("localhost").expect("server name");
    let target = |addr: SocketAddr, tls_on: bool| {
        Arc::new(Target {
            addr,
            tls: tls_on.then(|| (tls.clone(), name.clone())),
        })
    };
    let probe = Probe {
        ponte: ponte.pid(),
        dovecot: dovecot_pgid,
        ticks: clock_ticks(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let run = |label: &str, side: &str, t: &Arc<Target>, users: &[(String, String)], secs| {
        let warmup = if users.len() == 1 {
            p.warmup.min(Duration::from_millis(500))
        } else {
            p.warmup
        };
        let r = rt.block_on(login_scenario(t, users, warmup, secs, &probe));
        println!("{label} {side}: {}", r.summary());
        settle();
        r
    };

    let mut logins = Vec::new();
    if p.tuned {
        // The harness's own configuration first, for reference, then the
        // tuned one for everything else.
        let label = "IMAP, stock Dovecot";
        let d = run(
            label,
            "direct",
            &target(dovecot.imap_addr(), false),
            &users,
            p.secs,
        );
        let x = run(label, "ponte", &target(ponte.imap, false), &users, p.secs);
        logins.push(LoginSet {
            label: label.into(),
            many: [d, x],
            single: None,
        });
        tune_dovecot(&dovecot);
    }
    let mut kinds = vec![("IMAP", false)];
    if p.tls {
        kinds.push(("IMAPS", true));
    }
    for (label, tls_on) in kinds {
        let direct_addr = if tls_on {
            dovecot.imaps_addr().expect("dovecot imaps")
        } else {
            dovecot.imap_addr()
        };
        let ponte_addr = if tls_on { ponte.imaps } else { ponte.imap };
        let (td, tx) = (target(direct_addr, tls_on), target(ponte_addr, tls_on));
        let d = run(label, "direct", &td, &users, p.secs);
        let d1 = run(label, "direct, 1 client", &td, &users[..1], p.serial_secs);
        let x = run(label, "ponte", &tx, &users, p.secs);
        let x1 = run(label, "ponte, 1 client", &tx, &users[..1], p.serial_secs);
        logins.push(LoginSet {
            label: label.into(),
            many: [d, x],
            single: Some([d1, x1]),
        });
    }

    let mut fetches = Vec::new();
    for (side, addr) in [("direct", dovecot.imap_addr()), ("ponte", ponte.imap)] {
        let r = rt
            .block_on(fetch_scenario(
                &target(addr, false),
                &big,
                p.fetch_rounds,
                &probe,
            ))
            .unwrap_or_else(|e| panic!("FETCH {side}: {e}"));
        println!(
            "FETCH {side}: median {:.0} MB/s, rounds (ms) {:?}",
            r.median_mbps(big.len()),
            r.rounds_ms()
        );
        fetches.push(r);
    }
    drop(rt);

    let ponte_log = ponte.stop();
    drop(dovecot);
    let run_info = RunInfo {
        elapsed: started.elapsed(),
        background,
        big: big.len(),
        ponte_log,
    };
    let report = render(&p, &logins, &fetches, &run_info);
    println!("\n{report}");
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/results");
    std::fs::create_dir_all(&out).expect("create benches/results");
    let file = out.join("imap_e2e.md");
    std::fs::write(&file, &report).unwrap_or_else(|e| panic!("write {file:?}: {e}"));
    println!("written to {}", file.display());
}

/// Dovecot's documented high-performance settings, appended to the
/// harness's configuration and applied with `doveadm reload`: long-lived
/// imap-login processes (one per CPU, each serving many connections) and
/// imap processes reused across sessions (all users share one uid). The
/// stock harness configuration forks and execs a fresh imap-login and imap
/// process for every connection, which costs ~10 ms of CPU per login and
/// hides everything a proxy does.
const DOVECOT_TUNING: &str = r#"
# Appended by benches/imap_e2e.rs.
service imap-login {
  service_count = 0
  process_min_avail = 2
}
service imap {
  service_count = 1000
}
"#;

fn tune_dovecot(dovecot: &Dovecot) {
    let conf = dovecot.dir().join("dovecot.conf");
    let mut text = std::fs::read_to_string(&conf).expect("read dovecot.conf");
    text.push_str(DOVECOT_TUNING);
    std::fs::write(&conf, text).expect("write dovecot.conf");
    dovecot.doveadm(&["reload"]);
    // The master restarts its services; wait until new logins work.
    std::thread::sleep(Duration::from_millis(500));
    wait_greeting(dovecot.imap_addr(), "* OK", Duration::from_secs(10))
        .expect("dovecot after reload");
}

/// Lets the last sessions of a scenario close (and Dovecot's processes
/// exit) before the next one starts.
fn settle() {
    std::thread::sleep(Duration::from_millis(500));
}

// ---------------------------------------------------------------- parameters

struct Params {
    secs: Duration,
    warmup: Duration,
    serial_secs: Duration,
    clients: usize,
    fetch_rounds: usize,
    fetch_mib: usize,
    tls: bool,
    /// Dovecot in high-performance mode (see [`DOVECOT_TUNING`]).
    tuned: bool,
}

impl Params {
    /// Environment knobs, clamped so that a run always ends well within
    /// the watchdog.
    fn from_env() -> Params {
        let num = |name: &str, default: f64, min: f64, max: f64| -> f64 {
            match std::env::var(name) {
                Ok(v) => v
                    .trim()
                    .parse::<f64>()
                    .unwrap_or_else(|_| panic!("{name}={v:?}: not a number"))
                    .clamp(min, max),
                Err(_) => default,
            }
        };
        let secs = num("PONTE_BENCH_SECS", 8.0, 0.5, 30.0);
        Params {
            secs: Duration::from_secs_f64(secs),
            warmup: Duration::from_secs_f64(num("PONTE_BENCH_WARMUP", 1.0, 0.0, 10.0)),
            serial_secs: Duration::from_secs_f64(secs.min(3.0)),
            clients: num("PONTE_BENCH_CLIENTS", 50.0, 1.0, 90.0) as usize,
            fetch_rounds: num("PONTE_BENCH_FETCH_ROUNDS", 10.0, 1.0, 50.0) as usize,
            fetch_mib: num("PONTE_BENCH_FETCH_MB", 10.0, 1.0, 50.0) as usize,
            tls: num("PONTE_BENCH_TLS", 1.0, 0.0, 1.0) != 0.0,
            tuned: match std::env::var("PONTE_BENCH_DOVECOT").as_deref() {
                Err(_) | Ok("tuned") => true,
                Ok("stock") => false,
                Ok(v) => panic!("PONTE_BENCH_DOVECOT={v:?}: tuned or stock"),
            },
        }
    }
}

// ------------------------------------------------------------- ponte process

/// The release `ponte` binary, serving a generated configuration.
struct PonteProc {
    child: Option<Child>,
    imap: SocketAddr,
    imaps: SocketAddr,
    stderr: PathBuf,
}

impl PonteProc {
    fn start(dir: &Path, cert: &Path, key: &Path, backend: SocketAddr) -> PonteProc {
        let stderr = dir.join("ponte.stderr");
        let mut last = String::new();
        // The ports are free a moment before ponte binds them: retry a race.
        for _ in 0..3 {
            let ports = free_ports(2);
            let imap = SocketAddr::from(([127, 0, 0, 1], ports[0]));
            let imaps = SocketAddr::from(([127, 0, 0, 1], ports[1]));
            let config = dir.join("ponte.toml");
            std::fs::write(&config, ponte_config(dir, cert, key, imap, imaps, backend))
                .expect("write ponte.toml");
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_ponte"));
            cmd.arg("serve").arg("--config").arg(&config);
            // ponte reads PONTE_<SECTION>__<KEY> overrides and rejects unknown
            // keys, so none of ours (PONTE_BENCH_…, PONTE_LOG) may reach it;
            // RUST_LOG is its fallback log filter.
            for (k, _) in std::env::vars_os() {
                if k.to_string_lossy().starts_with("PONTE_") {
                    cmd.env_remove(k);
                }
            }
            let err = std::fs::File::create(&stderr).expect("create ponte.stderr");
            let mut child = cmd
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(err)
                .spawn()
                .expect("spawn ponte");
            let ready = wait_greeting(imap, "* OK", Duration::from_secs(10));
            let mut proc = PonteProc {
                child: None,
                imap,
                imaps,
                stderr: stderr.clone(),
            };
            match (ready, child.try_wait()) {
                (Ok(_), Ok(None)) => {
                    proc.child = Some(child);
                    return proc;
                }
                (r, _) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    last = format!("{r:?}\n{}", proc.log());
                }
            }
        }
        panic!("ponte did not start: {last}");
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// SIGTERM, wait for the drain (grace 1 s in the config), SIGKILL after
    /// 10 s. Returns what ponte wrote to stderr.
    fn stop(mut self) -> String {
        self.stop_inner();
        self.log()
    }

    fn stop_inner(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: kill(2) has no memory-safety preconditions; the pid is our
        // own child, not yet reaped, so it cannot have been reused.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for PonteProc {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

fn ponte_config(
    dir: &Path,
    cert: &Path,
    key: &Path,
    imap: SocketAddr,
    imaps: SocketAddr,
    backend: SocketAddr,
) -> String {
    let d = dir.display();
    format!(
        r#"# Generated by benches/imap_e2e.rs.
[state]
path = "{d}/state"

[spool]
path = "{d}/spool"

[limits]
shutdown_grace = "1s"

[[tls.certificate]]
names = ["localhost"]
cert = "{cert}"
key = "{key}"

[[listener]]
name = "imap"
protocol = "imap"
bind = "{imap}"
tls = "none"

[[listener]]
name = "imaps"
protocol = "imap"
bind = "{imaps}"
tls = "implicit"

[backend.legacy]
imap = "imap://{backend}"

[backend.new]
imap = "imap://{backend}"

[domain."{DOMAIN}"]
state = "legacy"
"#,
        cert = cert.display(),
        key = key.display(),
    )
}

/// Kills ponte and the Dovecot process group and exits if the run is still
/// going after [`WATCHDOG`].
fn spawn_watchdog(ponte: u32, dovecot_pgid: Option<u32>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        std::thread::sleep(WATCHDOG);
        eprintln!("imap_e2e: still running after {WATCHDOG:?}; killing ponte and Dovecot");
        // SAFETY: kill(2) has no memory-safety preconditions; the targets are
        // our own child and the process group Dovecot's harness created.
        unsafe {
            libc::kill(ponte as libc::pid_t, libc::SIGKILL);
            if let Some(g) = dovecot_pgid {
                libc::kill(-(g as libc::pid_t), libc::SIGKILL);
            }
        }
        std::process::exit(3);
    })
}

// ------------------------------------------------------------------ CPU time

/// /proc/<pid>/stat fields after the command name: (ppid, pgrp, utime +
/// stime, cutime + cstime), in clock ticks.
fn proc_stat(pid: u32) -> Option<(u32, u32, u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok());
    Some((n(1)? as u32, n(2)? as u32, n(11)? + n(12)?, n(13)? + n(14)?))
}

fn proc_comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Our child process named `comm` (the Dovecot master, which the harness
/// started in its own process group).
fn find_child(comm: &str) -> Option<u32> {
    let me = std::process::id();
    all_pids()
        .into_iter()
        .find(|&pid| proc_stat(pid).is_some_and(|s| s.0 == me) && proc_comm(pid) == comm)
}

/// CPU of a whole process group: each member's own time plus what its
/// reaped children used (Dovecot's master reaps its short-lived imap and
/// imap-login processes, so their time lands in its cutime).
fn group_ticks(pgid: u32) -> u64 {
    all_pids()
        .into_iter()
        .filter_map(proc_stat)
        .filter(|s| s.1 == pgid)
        .map(|s| s.2 + s.3)
        .sum()
}

/// Share of the machine busy between two [`machine_ticks`] samples.
fn busy_pct(a: (u64, u64), b: (u64, u64)) -> f64 {
    100.0 * b.0.saturating_sub(a.0) as f64 / b.1.saturating_sub(a.1).max(1) as f64
}

/// Busy and total ticks of the whole machine (/proc/stat `cpu` line).
fn machine_ticks() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = text
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|s| s.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest is inside user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// What to sample around a measurement window.
struct Probe {
    ponte: u32,
    dovecot: Option<u32>,
    ticks: f64,
}

#[derive(Clone, Copy)]
struct CpuSample {
    at: Instant,
    ponte: u64,
    dovecot: u64,
    client: u64,
    busy: u64,
    total: u64,
}

/// CPU used in a window, in milliseconds; shares of the whole machine
/// (all cores) in percent.
#[derive(Clone, Copy, Default)]
struct CpuUse {
    ponte_ms: f64,
    dovecot_ms: f64,
    client_ms: f64,
    busy_pct: f64,
    /// Busy, but not in ponte, Dovecot or the load generator: interrupts
    /// and softirq not charged to a process, and other processes.
    other_pct: f64,
}

impl Probe {
    fn sample(&self) -> CpuSample {
        let (busy, total) = machine_ticks();
        CpuSample {
            at: Instant::now(),
            ponte: proc_stat(self.ponte).map(|s| s.2).unwrap_or(0),
            dovecot: self.dovecot.map(group_ticks).unwrap_or(0),
            client: proc_stat(std::process::id()).map(|s| s.2).unwrap_or(0),
            busy,
            total,
        }
    }

    fn between(&self, a: CpuSample, b: CpuSample) -> CpuUse {
        let ms = |x: u64, y: u64| y.saturating_sub(x) as f64 * 1000.0 / self.ticks;
        let (ponte_ms, dovecot_ms, client_ms) = (
            ms(a.ponte, b.ponte),
            ms(a.dovecot, b.dovecot),
            ms(a.client, b.client),
        );
        let busy_pct = busy_pct((a.busy, a.total), (b.busy, b.total));
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let window_ms = (b.at - a.at).as_secs_f64() * 1000.0 * cores;
        let ours = 100.0 * (ponte_ms + dovecot_ms + client_ms) / window_ms.max(1.0);
        CpuUse {
            ponte_ms,
            dovecot_ms,
            client_ms,
            busy_pct,
            other_pct: (busy_pct - ours).max(0.0),
        }
    }
}

// ------------------------------------------------------------------ clients

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Where a client connects, and with which TLS settings if any.
struct Target {
    addr: SocketAddr,
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl Target {
    async fn open(&self, buf: usize) -> Result<Conn, String> {
        let tcp = within("connect", TcpStream::connect(self.addr)).await?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = match &self.tls {
            None => Box::new(tcp),
            Some((tls, name)) => Box::new(within("TLS", tls.connect(name.clone(), tcp)).await?),
        };
        Ok(Conn {
            io: BufReader::with_capacity(buf, io),
            line: Vec::with_capacity(256),
        })
    }
}

/// Full handshakes every time: no session resumption, as for a crowd of
/// distinct clients.
fn client_tls(ca_pem: &str) -> ClientConfig {
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
    cfg
}

async fn within<T, E: std::fmt::Display>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(IO_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: timeout")),
    }
}

/// Just enough IMAP: lines, tagged replies, literals.
struct Conn {
    io: BufReader<Box<dyn Io>>,
    line: Vec<u8>,
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

    async fn send(&mut self, tag: &str, command: &str) -> Result<(), String> {
        let bytes = format!("{tag} {command}\r\n");
        within(command, async {
            self.io.write_all(bytes.as_bytes()).await?;
            self.io.flush().await
        })
        .await
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
    async fn command(&mut self, tag: &str, command: &str) -> Result<(), String> {
        self.send(tag, command).await?;
        let what = command.split(' ').next().unwrap_or(command);
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

    /// After LOGOUT: the server closes first (so TIME_WAIT lands on the
    /// server side, not on our ephemeral ports).
    async fn expect_close(&mut self) -> Result<(), String> {
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

/// connect, greeting, LOGIN, SELECT INBOX, LOGOUT, close.
async fn login_cycle(t: &Target, user: &str, pass: &str) -> Result<(), String> {
    let mut c = t.open(4096).await?;
    c.greeting().await?;
    c.command("a", &format!("LOGIN {user} {pass}")).await?;
    c.command("b", "SELECT INBOX").await?;
    c.command("c", "LOGOUT").await?;
    c.expect_close().await
}

// ------------------------------------------------------------ login scenario

#[derive(Default)]
struct Worker {
    lat_us: Vec<u32>,
    errors: BTreeMap<String, u64>,
}

struct LoginResult {
    clients: usize,
    secs: f64,
    lat_us: Vec<u32>,
    errors: BTreeMap<String, u64>,
    cpu: CpuUse,
}

impl LoginResult {
    fn rate(&self) -> f64 {
        self.lat_us.len() as f64 / self.secs
    }

    fn pct_ms(&self, p: f64) -> Option<f64> {
        if self.lat_us.is_empty() {
            return None;
        }
        let i =
            ((p / 100.0 * self.lat_us.len() as f64).ceil() as usize).clamp(1, self.lat_us.len());
        Some(self.lat_us[i - 1] as f64 / 1000.0)
    }

    fn errors(&self) -> u64 {
        self.errors.values().sum()
    }

    fn per_login(&self, ms: f64) -> Option<f64> {
        (!self.lat_us.is_empty()).then(|| ms / self.lat_us.len() as f64)
    }

    fn summary(&self) -> String {
        let mut s = format!(
            "{} clients: {:.0} logins/s, p50 {:.2} ms, p99 {:.2} ms, {} errors, CPU ms/login ponte {:.3} dovecot {:.3} client {:.3}, machine {:.0}% busy ({:.0}% other)",
            self.clients,
            self.rate(),
            self.pct_ms(50.0).unwrap_or(f64::NAN),
            self.pct_ms(99.0).unwrap_or(f64::NAN),
            self.errors(),
            self.per_login(self.cpu.ponte_ms).unwrap_or(f64::NAN),
            self.per_login(self.cpu.dovecot_ms).unwrap_or(f64::NAN),
            self.per_login(self.cpu.client_ms).unwrap_or(f64::NAN),
            self.cpu.busy_pct,
            self.cpu.other_pct,
        );
        for (e, n) in &self.errors {
            let _ = write!(s, "\n    {n} x {e}");
        }
        s
    }
}

/// One client per user, each looping login cycles until the end; cycles
/// that complete within [warm-up end, end] count.
async fn login_scenario(
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
                let r = r.unwrap_or_else(|_| Err("cycle: timeout".into()));
                match r {
                    Ok(()) if t1 >= measure && t1 <= end => w
                        .lat_us
                        .push((t1 - t0).as_micros().min(u32::MAX as u128) as u32),
                    Ok(()) => {}
                    Err(e) => {
                        let key = if w.errors.len() < MAX_ERROR_KINDS || w.errors.contains_key(&e) {
                            e
                        } else {
                            "other".to_string()
                        };
                        *w.errors.entry(key).or_default() += 1;
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

// ------------------------------------------------------------ FETCH scenario

struct FetchResult {
    rounds: Vec<Duration>,
    ponte_ms_per_round: f64,
}

impl FetchResult {
    fn median(&self) -> Duration {
        let mut v = self.rounds.clone();
        v.sort_unstable();
        v[v.len() / 2]
    }

    fn median_mbps(&self, bytes: usize) -> f64 {
        bytes as f64 / 1e6 / self.median().as_secs_f64()
    }

    fn rounds_ms(&self) -> Vec<u64> {
        self.rounds.iter().map(|d| d.as_millis() as u64).collect()
    }
}

/// One session: log in, EXAMINE, then `FETCH 1 BODY.PEEK[]` once to warm up
/// (and check the bytes) and `rounds` times measured.
async fn fetch_scenario(
    t: &Target,
    expected: &[u8],
    rounds: usize,
    probe: &Probe,
) -> Result<FetchResult, String> {
    let mut c = t.open(FETCH_BUF).await?;
    c.greeting().await?;
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
        let dt = t0.elapsed();
        if r > 0 {
            times.push(dt);
        }
    }
    let after = probe.sample();
    c.command("z", "LOGOUT").await?;
    let ponte_ms = cpu.map(|a| probe.between(a, after).ponte_ms).unwrap_or(0.0);
    Ok(FetchResult {
        ponte_ms_per_round: ponte_ms / rounds as f64,
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
fn big_message(size: usize) -> Vec<u8> {
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

// ------------------------------------------------------------------- report

/// The login results of one protocol: 50 clients direct and through ponte,
/// and optionally 1 client each (latency without queueing).
struct LoginSet {
    label: String,
    many: [LoginResult; 2],
    single: Option<[LoginResult; 2]>,
}

struct RunInfo {
    elapsed: Duration,
    /// Machine CPU busy (%) in the second before anything started.
    background: f64,
    /// Size of the FETCHed message.
    big: usize,
    ponte_log: String,
}

struct Row {
    label: String,
    direct: Option<f64>,
    ponte: Option<f64>,
    decimals: usize,
    /// Whether ponte/direct means anything for this measure.
    ratio: bool,
}

fn row(label: impl Into<String>, direct: Option<f64>, ponte: Option<f64>, decimals: usize) -> Row {
    Row {
        label: label.into(),
        direct,
        ponte,
        decimals,
        ratio: true,
    }
}

/// A row whose ponte/direct ratio would mean nothing (counts, shares).
fn row_no_ratio(label: impl Into<String>, direct: f64, ponte: f64, decimals: usize) -> Row {
    Row {
        ratio: false,
        ..row(label, Some(direct), Some(ponte), decimals)
    }
}

fn login_rows(set: &LoginSet, rows: &mut Vec<Row>) {
    let label = &set.label;
    let [d, x] = &set.many;
    rows.push(row(
        format!("{label}: logins/s, {} clients", d.clients),
        Some(d.rate()),
        Some(x.rate()),
        0,
    ));
    for q in [50.0, 99.0] {
        rows.push(row(
            format!("{label}: login cycle p{q} (ms)"),
            d.pct_ms(q),
            x.pct_ms(q),
            2,
        ));
    }
    rows.push(row_no_ratio(
        format!("{label}: errors"),
        d.errors() as f64,
        x.errors() as f64,
        0,
    ));
    rows.push(row(
        format!("{label}: ponte CPU per login (ms)"),
        None,
        x.per_login(x.cpu.ponte_ms),
        3,
    ));
    rows.push(row(
        format!("{label}: Dovecot CPU per login (ms)"),
        d.per_login(d.cpu.dovecot_ms),
        x.per_login(x.cpu.dovecot_ms),
        3,
    ));
    rows.push(row(
        format!("{label}: load generator CPU per login (ms)"),
        d.per_login(d.cpu.client_ms),
        x.per_login(x.cpu.client_ms),
        3,
    ));
    rows.push(row_no_ratio(
        format!("{label}: machine CPU busy (%)"),
        d.cpu.busy_pct,
        x.cpu.busy_pct,
        0,
    ));
    rows.push(row_no_ratio(
        format!("{label}: of which not ponte, Dovecot or load generator (%)"),
        d.cpu.other_pct,
        x.cpu.other_pct,
        0,
    ));
    if let Some([d1, x1]) = &set.single {
        rows.push(row(
            format!("{label}: 1 client, login cycle p50 (ms)"),
            d1.pct_ms(50.0),
            x1.pct_ms(50.0),
            2,
        ));
        rows.push(row(
            format!("{label}: 1 client, ponte CPU per login (ms)"),
            None,
            x1.per_login(x1.cpu.ponte_ms),
            3,
        ));
    }
}

fn render(p: &Params, logins: &[LoginSet], fetches: &[FetchResult], run: &RunInfo) -> String {
    let mut rows = Vec::new();
    for set in logins {
        login_rows(set, &mut rows);
    }
    if let [d, x] = fetches {
        let (mib, rounds, big) = (p.fetch_mib, p.fetch_rounds, run.big);
        rows.push(row(
            format!("FETCH {mib} MiB BODY.PEEK[]: MB/s (median of {rounds})"),
            Some(d.median_mbps(big)),
            Some(x.median_mbps(big)),
            0,
        ));
        rows.push(row(
            format!("FETCH {mib} MiB: ms per FETCH (median)"),
            Some(d.median().as_secs_f64() * 1000.0),
            Some(x.median().as_secs_f64() * 1000.0),
            1,
        ));
        rows.push(row(
            format!("FETCH {mib} MiB: ponte CPU per FETCH (ms)"),
            None,
            Some(x.ponte_ms_per_round),
            1,
        ));
    }

    let mut s = String::new();
    let _ = writeln!(s, "# ponte IMAP end-to-end benchmark\n");
    let _ = writeln!(
        s,
        "`cargo bench --bench imap_e2e` (see benches/README.md)\n"
    );
    let _ = writeln!(
        s,
        "- when: {} (UTC); run time {:.0} s",
        now_utc(),
        run.elapsed.as_secs_f64()
    );
    let _ = writeln!(
        s,
        "- ponte: commit {}, release build, separate process, `RUST_LOG=warn`",
        git_commit()
    );
    let _ = writeln!(
        s,
        "- Dovecot {}, the test harness's instance{}",
        dovecot_version(),
        if p.tuned {
            "; rows marked *stock* use the harness's configuration (a new imap-login and imap \
             process per connection), all others Dovecot's high-performance settings \
             (imap-login `service_count = 0`, `process_min_avail = 2`; imap `service_count = 1000`)"
        } else {
            " with the harness's configuration (a new imap-login and imap process per connection)"
        }
    );
    let _ = writeln!(
        s,
        "- machine: {} CPU(s) ({}), loopback 127.0.0.1, **shared by Dovecot, ponte and the load \
         generator** (tokio, 2 worker threads); busy before the run: {:.0}%{}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model(),
        run.background,
        if run.background > 10.0 {
            " — **the machine was not idle: figures are skewed**"
        } else {
            ""
        }
    );
    let _ = writeln!(
        s,
        "- logins: {} clients, one user each, looping connect / greeting / LOGIN / SELECT INBOX / \
         LOGOUT / close (the server closes first); {:.1} s warm-up, then {:.1} s measured \
         (1-client rows: {:.1} s); IMAPS: TLS 1.3 full handshake every time (no resumption), \
         implicit TLS to ponte and plain IMAP from ponte to Dovecot",
        p.clients,
        p.warmup.as_secs_f64(),
        p.secs.as_secs_f64(),
        p.serial_secs.as_secs_f64()
    );
    let _ = writeln!(
        s,
        "- FETCH: one {} byte message (headers, base64 body in 76-character lines), one session, \
         1 warm-up + {} rounds; MB = 10^6 bytes\n",
        run.big, p.fetch_rounds
    );
    let _ = writeln!(s, "| measure | direct | ponte | ponte/direct |");
    let _ = writeln!(s, "|---|---:|---:|---:|");
    for r in &rows {
        let fmt = |v: Option<f64>| match v {
            Some(v) if v.is_finite() => format!("{v:.*}", r.decimals),
            _ => "–".to_string(),
        };
        let ratio = match (r.direct, r.ponte) {
            (Some(d), Some(x)) if r.ratio && d > 0.0 && x.is_finite() => {
                format!("{:.2}", x / d)
            }
            _ => "–".to_string(),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            r.label,
            fmt(r.direct),
            fmt(r.ponte),
            ratio
        );
    }
    let mut errors = String::new();
    for set in logins {
        let all = set.many.iter().chain(set.single.iter().flatten());
        for (r, side) in all.zip(["direct", "ponte", "direct", "ponte"]) {
            for (e, n) in &r.errors {
                let _ = writeln!(
                    errors,
                    "- {} {side}, {} client(s): {n} x `{e}`",
                    set.label, r.clients
                );
            }
        }
    }
    if !errors.is_empty() {
        let _ = writeln!(s, "\nErrors:\n\n{errors}");
    }
    let logged: Vec<&str> = run
        .ponte_log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    if let Some(first) = logged.first() {
        let first: String = first.chars().take(200).collect();
        let _ = writeln!(
            s,
            "\nponte logged {} line(s) at warn or above; the first: `{first}`",
            logged.len()
        );
    }
    let _ = writeln!(
        s,
        "\nCPU per login: CPU time used in the measured window (ponte: utime + stime from \
         /proc/<pid>/stat; Dovecot: its whole process group, reaped children included; the load \
         generator: this process) divided by the logins completed in it. With a fixed number of \
         clients the login rate is clients / cycle latency; when the machine is saturated it is \
         2 cores / CPU per login of everything together."
    );
    s
}

fn now_utc() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn command_line(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_string())
}

fn git_commit() -> String {
    let head = command_line("git", &["rev-parse", "--short", "HEAD"]).unwrap_or("unknown".into());
    let dirty = command_line("git", &["status", "--porcelain", "--", "src"]).is_some();
    if dirty {
        format!("{head} + uncommitted changes in src/")
    } else {
        head
    }
}

fn dovecot_version() -> String {
    ["/usr/sbin/dovecot", "dovecot"]
        .iter()
        .find_map(|d| command_line(d, &["--version"]))
        .unwrap_or("(version unknown)".into())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown model".into())
}
