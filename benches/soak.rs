//! A bounded soak on loopback: a real Dovecot (the test harness's, a few
//! hundred users) behind the release `ponte` binary as a separate process
//! (plain IMAP, IMAPS and POP3 listeners, the bench domain in `legacy`),
//! and 1,000 concurrent clients that loop whole sessions for a fixed time
//! (connect, [TLS], LOGIN with 1% wrong passwords, SELECT, FETCH a few
//! messages, IDLE 1–5 s, DONE, LOGOUT; some POP3). Every 10 s it samples
//! ponte's RSS, PSS, open file descriptors and threads and the sessions
//! completed; 10 s after the load it samples again. It fails if the file
//! descriptors do not come back to the baseline, if memory grows more than
//! [`MAX_GROWTH_PCT`] from the end of the warm-up to the end of the load,
//! or if any client fails other than by the expected wrong-password
//! refusal. Writes benches/results/soak.md; see benches/README.md.
//!
//! `cargo bench --bench soak`; without `--bench` (e.g. under
//! `cargo test --benches`) it does nothing.

#[path = "../tests/common/mod.rs"]
mod common;

#[allow(dead_code)] // shared with imap_e2e, which uses the rest
#[path = "imap_e2e/load.rs"]
mod load;
#[allow(dead_code)]
#[path = "imap_e2e/ponte.rs"]
mod ponte;
#[allow(dead_code)]
#[path = "imap_e2e/procs.rs"]
mod procs;

#[path = "soak/client.rs"]
mod client;
#[path = "soak/report.rs"]
mod report;
#[path = "soak/sample.rs"]
mod sample;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::certs::TestCa;
use common::dovecot::{Dovecot, DovecotOptions};
use common::net::wait_greeting;

use client::{Client, Proto, Stats};
use ponte::PonteProc;
use sample::Sample;

/// Names the imap_e2e modules included above refer to.
pub const DOMAIN: &str = "bench.example";
pub const DOMAIN_STATE: &str = "legacy";
#[allow(dead_code)]
pub const FETCH_USER: &str = "fetch@bench.example";
#[allow(dead_code)]
pub const FETCH_PASS: &str = "fetch-pass";

/// Between samples.
const INTERVAL: Duration = Duration::from_secs(10);
/// After the load has stopped, before the last sample.
const AFTER_LOAD: Duration = Duration::from_secs(10);
/// Clients start at random moments within this (no thundering herd).
const RAMP: Duration = Duration::from_secs(10);
/// Descriptors ponte may hold after the load beyond its baseline.
pub const FD_SLACK: u64 = 5;
/// PSS growth from the end of the warm-up to the end of the load, %.
pub const MAX_GROWTH_PCT: f64 = 10.0;

/// Dovecot's high-performance settings (as benches/imap_e2e.rs uses them)
/// and room for 1,000 concurrent sessions: long-lived login processes,
/// imap and pop3 processes reused across sessions and serving up to 100
/// sessions each (all users share one uid), no per-user limit to speak of.
const DOVECOT_TUNING: &str = r#"
# Appended by benches/soak.rs.
mail_max_userip_connections = 100000
service imap-login {
  service_count = 0
  process_min_avail = 2
}
service pop3-login {
  service_count = 0
  process_min_avail = 2
}
service imap {
  service_count = 1000
  client_limit = 100
  process_limit = 1000
  vsz_limit = 1G
}
service pop3 {
  service_count = 1000
}
"#;

/// Knobs (environment variables, all optional).
pub struct Params {
    pub quick: bool,
    pub secs: u64,
    pub clients: usize,
    pub users: usize,
    /// Warm-up excluded from the growth figure: 2 minutes, or a third of a
    /// shorter run (whole intervals).
    pub warm_secs: u64,
}

impl Params {
    fn from_env() -> Params {
        let quick = std::env::var("PONTE_BENCH_QUICK").is_ok_and(|v| v == "1");
        fn get(name: &str, default: u64, min: u64, max: u64) -> u64 {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
                .clamp(min, max)
        }
        let secs = get("PONTE_SOAK_SECS", if quick { 60 } else { 600 }, 30, 3600);
        // Whole intervals.
        let secs = secs.div_ceil(INTERVAL.as_secs()) * INTERVAL.as_secs();
        let warm_secs = if secs >= 360 {
            120
        } else {
            (secs / 3 / INTERVAL.as_secs()).max(1) * INTERVAL.as_secs()
        };
        Params {
            quick,
            secs,
            clients: get("PONTE_SOAK_CLIENTS", 1000, 10, 5000) as usize,
            users: get("PONTE_SOAK_USERS", 300, 10, 5000) as usize,
            warm_secs,
        }
    }

    /// Start-up (Dovecot, mailboxes, ponte), the load, the drain and the
    /// last sample.
    fn planned(&self) -> Duration {
        Duration::from_secs(60 + self.secs)
            + client::SESSION_TIMEOUT
            + AFTER_LOAD
            + Duration::from_secs(10)
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("soak: a benchmark; run it with `cargo bench --bench soak`");
        return;
    }
    // run() returns (and stops ponte and Dovecot) first.
    let code = match run() {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("soak failed: {e}");
            2
        }
    };
    std::process::exit(code);
}

/// What the report needs.
pub struct Run {
    pub samples: Vec<Sample>,
    /// Before the load, the last under load, after the load, in `samples`.
    pub before: usize,
    pub end: usize,
    pub after: usize,
    pub stats: Arc<Stats>,
    pub nofile: u64,
    pub busy_before: f64,
    pub elapsed: Duration,
    pub ponte_log: String,
    pub ponte_alive: bool,
    pub ticks: f64,
    pub drain_secs: f64,
    pub overran: usize,
}

fn run() -> Result<bool, String> {
    let started = Instant::now();
    let p = Params::from_env();
    let planned = p.planned();
    let nofile = procs::raise_nofile();
    let m0 = procs::machine_ticks();
    std::thread::sleep(Duration::from_secs(1));
    let busy_before = procs::busy_pct(m0, procs::machine_ticks());
    println!(
        "soak{}: {} clients over {} users for {} s (warm-up {} s), samples every {} s; \
         fds per process {nofile}; machine busy {busy_before:.0}% in the last second; \
         planned ≈ {} s, watchdog at {} s",
        if p.quick { " (quick mode)" } else { "" },
        p.clients,
        p.users,
        p.secs,
        p.warm_secs,
        INTERVAL.as_secs(),
        planned.as_secs(),
        (planned + Duration::from_secs(120)).as_secs(),
    );
    if (nofile as usize) < 2 * p.clients + 500 {
        return Err(format!(
            "{} clients need about {} descriptors in ponte; the limit is {nofile}",
            p.clients,
            2 * p.clients + 500
        ));
    }

    let dir = tempfile::Builder::new()
        .prefix("ponte-soak-")
        .tempdir()
        .map_err(|e| format!("tempdir: {e}"))?;
    let ca = TestCa::new("ponte soak CA");
    let (cert, key) = ca
        .issue(&["localhost", "127.0.0.1"])
        .write_to(dir.path(), "server");
    let users: Vec<(String, String)> = (0..p.users)
        .map(|i| (format!("user{i}@{DOMAIN}"), format!("pass{i}")))
        .collect();
    let dovecot = start_dovecot(&users);
    let dovecot_pgid = procs::find_child("dovecot");
    let ponte = PonteProc::start(
        dir.path(),
        &cert,
        &key,
        ponte::Backend {
            imap: dovecot.imap_addr(),
            pop3: dovecot.pop3_addr(),
        },
    );
    let pid = ponte.pid();
    watchdog(planned + Duration::from_secs(120), pid, dovecot_pgid);
    println!(
        "[{:4.0} s] dovecot imap {} pop3 {}; ponte pid {pid}: imap {} imaps {} pop3 {}",
        started.elapsed().as_secs_f64(),
        dovecot.imap_addr(),
        dovecot.pop3_addr(),
        ponte.imap,
        ponte.imaps,
        ponte.pop3
    );

    let tls = load::client_tls(&ca.cert_pem);
    let proto_of = |i: usize| {
        if i % 50 == 49 {
            Proto::Pop3
        } else if i % 3 == 0 {
            Proto::Imaps
        } else {
            Proto::Imap
        }
    };
    let client_of = |i: usize, seed: u64| {
        let proto = proto_of(i);
        let (user, pass) = users[i % users.len()].clone();
        Client {
            proto,
            src: client::source_addr(i),
            target: match proto {
                Proto::Imap => ponte.imap,
                Proto::Imaps => ponte.imaps,
                Proto::Pop3 => ponte.pop3,
            },
            user,
            pass,
            tls: tls.clone(),
            seed,
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;

    // One session of each kind must work before anything is measured.
    for i in [1, 0, 49] {
        let c = client_of(i, 1);
        rt.block_on(client::smoke(&c))
            .map_err(|e| format!("smoke check, {}: {e}\n{}", c.proto.label(), ponte.log()))?;
    }
    std::thread::sleep(Duration::from_secs(2));

    let stats = Arc::new(Stats::default());
    let mut samples = Vec::new();
    let gone = || format!("ponte (pid {pid}) is gone:\n{}", ponte.log());
    samples.push(sample::take(pid, 0.0, &stats).ok_or_else(gone)?);
    let before = 0;
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs(p.secs);
    let tasks: Vec<_> = (0..p.clients)
        .map(|i| {
            let c = client_of(i, 0x5eed_0000 + i as u64);
            rt.spawn(client::run(c, RAMP, end, stats.clone()))
        })
        .collect();
    println!(
        "[{:4.0} s] load started: {} clients ({} IMAP, {} IMAPS, {} POP3)",
        started.elapsed().as_secs_f64(),
        p.clients,
        (0..p.clients)
            .filter(|&i| proto_of(i) == Proto::Imap)
            .count(),
        (0..p.clients)
            .filter(|&i| proto_of(i) == Proto::Imaps)
            .count(),
        (0..p.clients)
            .filter(|&i| proto_of(i) == Proto::Pop3)
            .count(),
    );
    let ticks = procs::clock_ticks();
    let mut k = 1;
    let mut alive = true;
    while t0 + INTERVAL * k <= end {
        std::thread::sleep((t0 + INTERVAL * k).saturating_duration_since(Instant::now()));
        let Some(s) = sample::take(pid, t0.elapsed().as_secs_f64(), &stats) else {
            alive = false;
            break;
        };
        println!("{}", report::progress(samples.last(), &s, ticks));
        samples.push(s);
        k += 1;
    }
    let end_idx = samples.len() - 1;
    // The clients finish their current sessions (each bounded).
    let deadline = end + client::SESSION_TIMEOUT + Duration::from_secs(5);
    let mut overran = 0;
    for task in tasks {
        let abort = task.abort_handle();
        if rt
            .block_on(async { tokio::time::timeout_at(deadline.into(), task).await })
            .is_err()
        {
            abort.abort();
            overran += 1;
        }
    }
    let drain_secs = end.elapsed().as_secs_f64();
    println!(
        "[{:4.0} s] load stopped; the last sessions ended {drain_secs:.1} s after the end; \
         waiting {} s",
        started.elapsed().as_secs_f64(),
        AFTER_LOAD.as_secs()
    );
    std::thread::sleep(AFTER_LOAD);
    let after = match sample::take(pid, t0.elapsed().as_secs_f64(), &stats) {
        Some(s) => {
            samples.push(s);
            Some(samples.len() - 1)
        }
        None => {
            alive = false;
            None
        }
    };
    drop(rt);
    let ponte_log = ponte.stop();
    drop(dovecot);
    let after = after.ok_or_else(|| format!("ponte died during the soak:\n{ponte_log}"))?;

    let r = Run {
        samples,
        before,
        end: end_idx,
        after,
        stats,
        nofile,
        busy_before,
        elapsed: started.elapsed(),
        ponte_log,
        ponte_alive: alive,
        ticks,
        drain_secs,
        overran,
    };
    let rep = report::render(&p, &r);
    println!("\n{}", rep.markdown);
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/results");
    std::fs::create_dir_all(&out).map_err(|e| format!("create {out:?}: {e}"))?;
    let file = out.join("soak.md");
    std::fs::write(&file, &rep.markdown).map_err(|e| format!("write {file:?}: {e}"))?;
    println!("written to {}", file.display());
    for f in &rep.failures {
        eprintln!("FAIL: {f}");
    }
    Ok(rep.failures.is_empty())
}

/// Dovecot with `users`, each with [`client::MESSAGES`] messages of a few
/// KB in INBOX, tuned for the load.
fn start_dovecot(users: &[(String, String)]) -> Dovecot {
    let opts = DovecotOptions::new(
        "soak",
        &users
            .iter()
            .map(|(u, pw)| (u.as_str(), pw.as_str()))
            .collect::<Vec<_>>(),
    );
    let dovecot = Dovecot::start(opts);
    for (i, (user, _)) in users.iter().enumerate() {
        for m in 1..=client::MESSAGES {
            dovecot.deliver(user, "INBOX", &message(i, m, user));
        }
    }
    let conf = dovecot.dir().join("dovecot.conf");
    let mut text = std::fs::read_to_string(&conf).expect("read dovecot.conf");
    text.push_str(DOVECOT_TUNING);
    std::fs::write(&conf, text).expect("write dovecot.conf");
    dovecot.doveadm(&["reload"]);
    // The master restarts its services; wait until new logins work.
    std::thread::sleep(Duration::from_millis(500));
    wait_greeting(dovecot.imap_addr(), "* OK", Duration::from_secs(10))
        .expect("dovecot after reload");
    dovecot
}

/// Message `m` of user `i`: headers and a text body of 1–8 KB.
fn message(i: usize, m: u32, user: &str) -> Vec<u8> {
    let mut msg = format!(
        "Return-Path: <sender@{DOMAIN}>\r\nFrom: Sender <sender@{DOMAIN}>\r\nTo: {user}\r\n\
         Subject: soak message {m} for user {i}\r\nDate: Mon, 01 Jan 2024 10:0{m}:00 +0000\r\n\
         Message-ID: <soak.{i}.{m}@{DOMAIN}>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n"
    );
    let lines = 16 * (1 << (m % 4));
    for l in 0..lines {
        msg.push_str(&format!(
            "Line {l} of message {m}: the quick brown fox jumps over the lazy dog.\r\n"
        ));
    }
    msg.into_bytes()
}

/// Kills ponte and Dovecot's process group and exits if the run is still
/// going after `limit`.
fn watchdog(limit: Duration, ponte: u32, dovecot: Option<u32>) {
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("soak: still running after {limit:?}; killing ponte and Dovecot");
        procs::kill(ponte, libc::SIGKILL);
        if let Some(g) = dovecot {
            procs::kill_group(g, libc::SIGKILL);
        }
        std::process::exit(3);
    });
}
