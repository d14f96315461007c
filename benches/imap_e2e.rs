//! End-to-end benchmark on loopback, three ways in one run: a real Dovecot
//! (the test harness's) directly, through nginx's mail proxy (Debian's
//! `nginx-full` + `libnginx-mod-mail`, with an `auth_http` responder in this
//! process) and through the release `ponte` binary, both proxies as separate
//! processes. The same tokio load generator measures logins per second with
//! concurrent clients (plain IMAP, IMAPS, IMAP STARTTLS, POP3), the latency
//! of a whole login cycle, CPU per login, the throughput of a large
//! `FETCH BODY.PEEK[]`, and the proxies' memory per idle session. Writes
//! benches/results/imap_e2e.md and a chart; see benches/README.md.
//!
//! `cargo bench --bench imap_e2e`; without `--bench` (e.g. under
//! `cargo test --benches`) it does nothing.

#[path = "../tests/common/mod.rs"]
mod common;

#[path = "imap_e2e/auth_http.rs"]
mod auth_http;
#[path = "imap_e2e/load.rs"]
mod load;
#[path = "imap_e2e/memory.rs"]
mod memory;
#[path = "imap_e2e/nginx.rs"]
mod nginx;
#[path = "imap_e2e/params.rs"]
mod params;
#[path = "imap_e2e/ponte.rs"]
mod ponte;
#[path = "imap_e2e/procs.rs"]
mod procs;
#[path = "imap_e2e/report.rs"]
mod report;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_rustls::TlsConnector;

use common::certs::TestCa;
use common::dovecot::{Dovecot, DovecotOptions};
use common::net::wait_greeting;

use auth_http::{AuthHttp, Routes, State};
use load::{Kind, LoginResult, Side, Target};
use nginx::{NginxProc, Sizing};
use params::Params;
use ponte::PonteProc;
use procs::{Probe, Victims};
use report::{IdleSet, LoginSet, RunInfo};

pub const DOMAIN: &str = "bench.example";
pub const FETCH_USER: &str = "fetch@bench.example";
pub const FETCH_PASS: &str = "fetch-pass";
/// The bench domain's mailbox state, in ponte's configuration and in the
/// routes of nginx's auth_http responder.
pub const DOMAIN_STATE: &str = "legacy";
/// File descriptors a proxy keeps besides its sessions' (listeners, logs,
/// state, epoll, …), with room to spare.
const FD_RESERVE: u64 = 200;

/// Dovecot's documented high-performance settings, appended to the
/// harness's configuration and applied with `doveadm reload`: long-lived
/// login processes (one per CPU, each serving many connections) and imap
/// and pop3 processes reused across sessions (all users share one uid).
/// The stock harness configuration forks and execs a fresh login and mail
/// process for every connection, which costs ~10 ms of CPU per login and
/// hides everything a proxy does.
const DOVECOT_TUNING: &str = r#"
# Appended by benches/imap_e2e.rs.
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
}
service pop3 {
  service_count = 1000
}
"#;

/// Before the idle sessions: many sessions per imap process (instead of one
/// process per session), and no per-user connection limit to speak of.
const DOVECOT_IDLE_TUNING: &str = r#"
# Appended by benches/imap_e2e.rs for the idle sessions.
mail_max_userip_connections = 1000000
service imap {
  client_limit = 1000
  process_limit = 1000
  vsz_limit = 4G
}
"#;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("imap_e2e: a benchmark; run it with `cargo bench --bench imap_e2e`");
        return;
    }
    let started = Instant::now();
    let p = Params::from_env();
    // Before anything is spawned: Dovecot, nginx and ponte inherit it.
    let nofile = procs::raise_nofile();
    let nginx_use = if !p.nginx {
        Err("PONTE_BENCH_NGINX=0".to_string())
    } else if nginx::binary().is_none() {
        Err(format!(
            "nginx or {} is not installed (nginx-full and libnginx-mod-mail, see .ci/install)",
            nginx::MODULE
        ))
    } else {
        Ok(nginx::version())
    };
    let sides: Vec<Side> = Side::ALL
        .into_iter()
        .filter(|&s| s != Side::Nginx || nginx_use.is_ok())
        .collect();
    let planned = p.planned(sides.len());
    let watchdog = planned + Duration::from_secs(180);
    println!(
        "imap_e2e{}: {} ({}); {} clients, {:.1} s warm-up + {:.1} s per login scenario, {}; \
         FETCH {} MiB x {}; idle sessions {:?} held {:.0}/{:.0} s; Dovecot {}; \
         fds per process {nofile}; planned ≈ {:.0} s, watchdog at {:.0} s",
        if p.quick { " (quick mode)" } else { "" },
        sides
            .iter()
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join(", "),
        nginx_use.as_deref().unwrap_or_else(|e| e),
        p.clients,
        p.warmup.as_secs_f64(),
        p.secs.as_secs_f64(),
        if p.kinds.is_empty() {
            "no login scenarios".to_string()
        } else {
            p.kinds
                .iter()
                .map(|k| k.label())
                .collect::<Vec<_>>()
                .join(", ")
        },
        p.fetch_mib,
        p.fetch_rounds,
        p.idle_sizes,
        p.idle_hold.as_secs_f64(),
        p.idle_hold_small.as_secs_f64(),
        if p.tuned { "tuned" } else { "stock" },
        planned.as_secs_f64(),
        watchdog.as_secs_f64(),
    );
    // What else the machine is doing (other builds and tests skew results).
    let before = procs::machine_ticks();
    std::thread::sleep(Duration::from_secs(1));
    let background = procs::busy_pct(before, procs::machine_ticks());
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
    let dovecot = start_dovecot(&users, &cert, &key);
    let big = load::big_message(p.fetch_mib * 1024 * 1024);
    dovecot.deliver(FETCH_USER, "INBOX", &big);
    let victims = Arc::new(Victims::default());
    let dovecot_pgid = procs::find_child("dovecot");
    if let Some(g) = dovecot_pgid {
        victims.add_group(g);
    }
    procs::spawn_watchdog(watchdog, victims.clone());

    let backend = ponte::Backend {
        imap: dovecot.imap_addr(),
        pop3: dovecot.pop3_addr(),
    };
    let ponte = PonteProc::start(dir.path(), &cert, &key, backend);
    victims.add_pid(ponte.pid());
    let auth = nginx_use.is_ok().then(|| AuthHttp::start(routes(backend)));
    let sizing = Sizing {
        workers: p.nginx_workers,
        // One worker may end up with every connection of the idle test.
        connections: nofile.saturating_sub(FD_RESERVE / 2).max(1024),
        nofile,
    };
    let nginx_dir = dir.path().join("nginx");
    let ngx = auth
        .as_ref()
        .map(|a| NginxProc::start(&nginx_dir, &cert, &key, a.addr, sizing));
    if let Some(n) = &ngx {
        victims.add_group(n.pgid());
    }
    println!(
        "dovecot imap {} pop3 {}; ponte pid {} imap {}; nginx {}",
        dovecot.imap_addr(),
        dovecot.pop3_addr(),
        ponte.pid(),
        ponte.imap,
        ngx.as_ref().map_or("–".into(), |n| format!(
            "master pid {} imap {}, auth_http {}",
            n.pgid(),
            n.imap,
            auth.as_ref().map_or("–".into(), |a| a.addr.to_string())
        )),
    );

    let tls = load::client_tls(&ca.cert_pem);
    let addr_of = |side: Side, kind: Kind| -> Option<SocketAddr> {
        match side {
            Side::Direct => Some(match kind {
                Kind::Imap | Kind::Starttls => dovecot.imap_addr(),
                Kind::Imaps => dovecot.imaps_addr().expect("dovecot imaps"),
                Kind::Pop3 => dovecot.pop3_addr(),
            }),
            Side::Nginx => ngx.as_ref().map(|n| n.addr(kind)),
            Side::Ponte => Some(ponte.addr(kind)),
        }
    };
    let probe = Probe {
        ponte: ponte.pid(),
        nginx: ngx.as_ref().map(NginxProc::pgid),
        dovecot: dovecot_pgid,
        auth_tid: auth.as_ref().map(|a| a.tid),
        ticks: procs::clock_ticks(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");

    // Every side must serve every kind end to end before anything is timed.
    let mut kinds_checked = p.kinds.clone();
    for k in [Kind::Imap, Kind::Imaps] {
        if !kinds_checked.contains(&k) && (k == Kind::Imap || p.idle_tls) {
            kinds_checked.push(k);
        }
    }
    let answered = || {
        auth.as_ref()
            .map_or(0, |a| a.stats.ok.load(Ordering::Relaxed))
    };
    let asked_before = answered();
    let mut nginx_logins = 0;
    for &kind in &kinds_checked {
        for &side in &sides {
            let t = Target::new(addr_of(side, kind).expect("address"), kind, &tls);
            let (user, pass) = &users[0];
            if let Err(e) = rt.block_on(load::login_cycle(&t, user, pass)) {
                panic!(
                    "smoke check: {} {} login failed: {e}\n--- ponte ---\n{}\n--- nginx ---\n{}",
                    kind.label(),
                    side.name(),
                    ponte.log(),
                    ngx.as_ref().map(NginxProc::log).unwrap_or_default()
                );
            }
            nginx_logins += usize::from(side == Side::Nginx);
        }
    }
    if auth.is_some() {
        let asked = answered() - asked_before;
        assert_eq!(
            asked, nginx_logins as u64,
            "nginx made {asked} auth_http requests for {nginx_logins} logins"
        );
        println!(
            "smoke check: every kind logs in on every side; nginx asked auth_http once per login ({asked})"
        );
    }
    // How fast the responder alone is: it must not be what limits nginx.
    let auth_capacity = auth.as_ref().map(|a| {
        let cap = rt.block_on(auth_http::capacity(
            a.addr,
            &users[0].0,
            16,
            Duration::from_secs(1),
        ));
        println!(
            "auth_http responder alone: {:.0} requests/s ({} errors)",
            cap.0, cap.1
        );
        a.stats.reset();
        cap
    });

    let say = |msg: String| println!("[{:4.0} s] {msg}", started.elapsed().as_secs_f64());
    let run = |label: &str, side: Side, kind: Kind, users: &[(String, String)], secs| {
        let addr = addr_of(side, kind)?;
        let warmup = if users.len() == 1 {
            p.warmup.min(Duration::from_millis(500))
        } else {
            p.warmup
        };
        let t = Target::new(addr, kind, &tls);
        let r = rt.block_on(load::login_scenario(&t, users, warmup, secs, &probe));
        say(format!("{label} {}: {}", side.name(), r.summary(side)));
        settle();
        Some(r)
    };
    let all_sides = |f: &dyn Fn(Side) -> Option<LoginResult>| Side::ALL.map(f);

    let mut logins = Vec::new();
    if p.stock_rows {
        // The harness's own configuration first, for reference.
        let label = "IMAP, stock Dovecot";
        logins.push(LoginSet {
            label: label.into(),
            many: all_sides(&|s| run(label, s, Kind::Imap, &users, p.secs)),
            single: None,
        });
    }
    if p.tuned {
        tune_dovecot(&dovecot, DOVECOT_TUNING);
    }
    for &kind in &p.kinds {
        let label = kind.label();
        let many = all_sides(&|s| run(label, s, kind, &users, p.secs));
        let single = p.serial_kinds.contains(&kind).then(|| {
            all_sides(&|s| {
                run(
                    &format!("{label}, 1 client"),
                    s,
                    kind,
                    &users[..1],
                    p.serial_secs,
                )
            })
        });
        logins.push(LoginSet {
            label: label.into(),
            many,
            single,
        });
    }

    let fetches = Side::ALL.map(|side| {
        if !p.fetch {
            return None;
        }
        let addr = addr_of(side, Kind::Imap)?;
        let t = Target::new(addr, Kind::Imap, &tls);
        let r = rt
            .block_on(load::fetch_scenario(&t, side, &big, p.fetch_rounds, &probe))
            .unwrap_or_else(|e| panic!("FETCH {}: {e}", side.name()));
        say(format!(
            "FETCH {}: median {:.0} MB/s, rounds (ms) {:?}",
            side.name(),
            r.median_mbps(big.len()),
            r.rounds_ms()
        ));
        Some(r)
    });

    // Idle sessions, through each proxy restarted fresh for every count.
    let mut idle = Vec::new();
    let mut notes = Vec::new();
    // Client and backend connection of each session in one process.
    let fit = (nofile.saturating_sub(FD_RESERVE) / 2 / 100 * 100) as usize;
    if !p.idle_sizes.is_empty() {
        tune_dovecot(&dovecot, DOVECOT_IDLE_TUNING);
    }
    let mut idle_kinds = vec![Kind::Imap];
    if p.idle_tls {
        idle_kinds.push(Kind::Imaps);
    }
    let ctx = IdleCtx {
        dir: dir.path(),
        cert: &cert,
        key: &key,
        backend,
        auth: auth.as_ref(),
        sizing,
        tls: &tls,
        users: &users,
        victims: &victims,
    };
    for (i, &asked) in p.idle_sizes.iter().enumerate() {
        let n = asked.min(fit.max(100));
        if n < asked {
            notes.push(format!(
                "idle sessions: {} asked, {} measured: a single-process proxy needs two file \
                 descriptors per session and this machine's hard limit is {nofile} per process \
                 (`ulimit -Hn`; raising it needs CAP_SYS_RESOURCE, which this sandbox lacks)",
                report::thousands(asked),
                report::thousands(n)
            ));
        }
        for &kind in &idle_kinds {
            let mut res: [Option<memory::IdleResult>; 3] = Default::default();
            for &side in sides.iter().filter(|&&s| s != Side::Direct) {
                let tag = format!("idle-{i}-{}-{}", kind.label(), side.name());
                let r = rt.block_on(ctx.run(&tag, side, kind, n, p.hold_for(asked)));
                say(format!(
                    "idle {} × {} {}: {}",
                    kind.label(),
                    n,
                    side.name(),
                    r.summary()
                ));
                res[side.index()] = Some(r);
            }
            idle.push(IdleSet {
                kind,
                requested: asked,
                res,
            });
        }
    }
    drop(rt);

    let ponte_log = ponte.stop();
    let nginx_log = ngx.map(NginxProc::stop).unwrap_or_default();
    let auth_stats = auth.as_ref().map(|a| {
        let s = &a.stats;
        (
            s.ok.load(Ordering::Relaxed),
            s.refused.load(Ordering::Relaxed),
            s.bad.load(Ordering::Relaxed),
            s.mean_us(),
            s.max_us.load(Ordering::Relaxed),
        )
    });
    drop(auth);
    drop(dovecot);
    let info = RunInfo {
        elapsed: started.elapsed(),
        background,
        big: big.len(),
        commit: report::git_commit(),
        dovecot: report::dovecot_version(),
        nginx: nginx_use,
        nginx_workers: p.nginx_workers,
        nginx_connections: sizing.connections,
        nofile,
        auth_capacity,
        auth_stats,
        ponte_log,
        nginx_log: nginx_log
            .lines()
            .filter(|l| {
                l.contains("[warn]")
                    || l.contains("[error]")
                    || l.contains("[crit]")
                    || l.contains("[alert]")
                    || l.contains("[emerg]")
            })
            .collect::<Vec<_>>()
            .join("\n"),
        notes,
    };
    let mut rep = report::render(&p, &logins, &fetches, &idle, &info);
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/results");
    std::fs::create_dir_all(&out).expect("create benches/results");
    let png = out.join("imap_e2e.png");
    match report::chart(&rep, dir.path(), &png) {
        Ok(()) => rep.markdown.push_str(
            "
Chart of the ratios: [imap_e2e.png](imap_e2e.png)
",
        ),
        Err(why) => {
            println!("chart skipped: {why}");
            rep.markdown
                .push_str(&format!("\nNo chart this run: {why}.\n"));
        }
    }
    println!("\n{}", rep.markdown);
    println!("Ratios (ponte/nginx, ponte/direct):\n{}", rep.ratios);
    let file = out.join("imap_e2e.md");
    std::fs::write(&file, &rep.markdown).unwrap_or_else(|e| panic!("write {file:?}: {e}"));
    println!("written to {}", file.display());
    if png.exists() {
        println!("chart: {}", png.display());
    }
}

/// Dovecot with `users` (one small message each in INBOX) and the FETCH
/// user, IMAPS enabled.
fn start_dovecot(users: &[(String, String)], cert: &Path, key: &Path) -> Dovecot {
    let mut opts = DovecotOptions::new(
        "bench",
        &users
            .iter()
            .map(|(u, pw)| (u.as_str(), pw.as_str()))
            .chain([(FETCH_USER, FETCH_PASS)])
            .collect::<Vec<_>>(),
    );
    opts.tls = Some((cert.to_path_buf(), key.to_path_buf()));
    let dovecot = Dovecot::start(opts);
    for (i, (user, _)) in users.iter().enumerate() {
        let msg = format!(
            "From: Sender <sender@{DOMAIN}>\r\nTo: {user}\r\nSubject: hello {i}\r\n\
             Date: Mon, 01 Jan 2024 10:00:00 +0000\r\nMessage-ID: <small.{i}@{DOMAIN}>\r\n\r\n\
             A small message so that SELECT finds one.\r\n"
        );
        dovecot.deliver(user, "INBOX", msg.as_bytes());
    }
    dovecot
}

/// What nginx's auth_http responder routes by: the same domain table as
/// ponte's configuration.
fn routes(backend: ponte::Backend) -> Routes {
    Routes {
        domains: HashMap::from([(DOMAIN.to_string(), State::parse(DOMAIN_STATE))]),
        legacy: backend,
        new: backend,
    }
}

fn tune_dovecot(dovecot: &Dovecot, tuning: &str) {
    let conf = dovecot.dir().join("dovecot.conf");
    let mut text = std::fs::read_to_string(&conf).expect("read dovecot.conf");
    text.push_str(tuning);
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

/// What an idle-session run needs to start a fresh proxy.
struct IdleCtx<'a> {
    dir: &'a Path,
    cert: &'a Path,
    key: &'a Path,
    backend: ponte::Backend,
    auth: Option<&'a AuthHttp>,
    sizing: Sizing,
    tls: &'a TlsConnector,
    users: &'a [(String, String)],
    victims: &'a Victims,
}

impl IdleCtx<'_> {
    /// Starts the proxy in its own directory, warms it up with one login
    /// of the kind, measures `n` idle sessions, stops it.
    async fn run(
        &self,
        tag: &str,
        side: Side,
        kind: Kind,
        n: usize,
        hold: Duration,
    ) -> memory::IdleResult {
        let dir: PathBuf = self.dir.join(tag.replace(' ', "_"));
        std::fs::create_dir_all(&dir).expect("create idle dir");
        let (ponte, ngx) = match side {
            Side::Ponte => {
                let x = PonteProc::start(&dir, self.cert, self.key, self.backend);
                self.victims.add_pid(x.pid());
                (Some(x), None)
            }
            _ => {
                let auth = self.auth.expect("auth_http for nginx").addr;
                let x = NginxProc::start(&dir, self.cert, self.key, auth, self.sizing);
                self.victims.add_group(x.pgid());
                (None, Some(x))
            }
        };
        let addr = match (&ponte, &ngx) {
            (Some(x), _) => x.addr(kind),
            (_, Some(x)) => x.addr(kind),
            _ => unreachable!("one proxy"),
        };
        let t = Target::new(addr, kind, self.tls);
        let (user, pass) = &self.users[0];
        if let Err(e) = load::login_cycle(&t, user, pass).await {
            eprintln!("idle {tag}: warm-up login failed: {e}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let pids = || match (&ponte, &ngx) {
            (Some(x), _) => vec![x.pid()],
            (_, Some(x)) => x.pids(),
            _ => Vec::new(),
        };
        let r = memory::idle_scenario(&t, self.users, n, hold, &pids).await;
        if let Some(x) = ponte {
            self.victims.remove(x.pid());
            x.stop();
        }
        if let Some(x) = ngx {
            self.victims.remove(x.pgid());
            x.stop();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        r
    }
}
