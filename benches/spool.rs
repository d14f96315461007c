//! Inbound spool throughput on loopback, in one run: ponte's inbound SMTP
//! listener with every recipient in `blackout` (each accepted message is
//! stored in the durable spool, `250` only after the data and envelope
//! files and their directories are fsynced) against a throwaway Postfix
//! instance that puts every accepted message on its hold queue (cleanup
//! fsyncs the queue file before the `250`). The same async SMTP senders
//! drive both: concurrent connections, several ~50 KB messages per
//! connection. Reports accepted messages/s, MB/s, the latency from the
//! end of DATA to the `250`, server CPU per message, checks that each
//! queue holds exactly the messages acknowledged, and writes
//! benches/results/spool.md; see benches/README.md.
//!
//! `cargo bench --bench spool`; without `--bench` (e.g. under
//! `cargo test --benches`) it does nothing.

#[path = "../tests/common/mod.rs"]
mod common;

#[allow(dead_code)] // shared with imap_e2e, which uses the rest
#[path = "imap_e2e/procs.rs"]
mod procs;

#[path = "spool/ponte.rs"]
mod ponte;
#[path = "spool/postfix.rs"]
mod postfix;
#[path = "spool/smtp.rs"]
mod smtp;
#[path = "spool/watch.rs"]
mod watch;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use ponte::PonteProc;
use postfix::Postfix;
use smtp::{Body, Plan};
use watch::{Usage, Who};

/// Knobs (environment variables, all optional).
struct Params {
    quick: bool,
    senders: usize,
    msg_size: usize,
    per_conn: u64,
    /// Most messages per sender and round (the time is the usual bound).
    max_per_sender: u64,
    secs: f64,
    warmup: f64,
    rounds: usize,
    postfix: bool,
}

impl Params {
    fn from_env() -> Params {
        let quick = std::env::var("PONTE_BENCH_QUICK").is_ok_and(|v| v == "1");
        fn get<T: std::str::FromStr + PartialOrd>(name: &str, default: T, min: T, max: T) -> T {
            let v = std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default);
            if v < min {
                min
            } else if v > max {
                max
            } else {
                v
            }
        }
        let q = |full: f64, short: f64| if quick { short } else { full };
        Params {
            quick,
            senders: get("PONTE_BENCH_SENDERS", 20, 1, 200),
            msg_size: get("PONTE_BENCH_MSG_KB", 50, 2, 10_000) * 1000,
            per_conn: get("PONTE_BENCH_PER_CONN", 10, 1, 1000),
            max_per_sender: get("PONTE_BENCH_MAX_MSGS", 20_000, 1, 1_000_000),
            secs: get("PONTE_BENCH_SECS", q(15.0, 2.0), 0.5, 60.0),
            warmup: get("PONTE_BENCH_WARMUP", q(2.0, 0.5), 0.0, 10.0),
            rounds: get("PONTE_BENCH_ROUNDS", if quick { 1 } else { 3 }, 1, 9),
            postfix: get("PONTE_BENCH_POSTFIX", 1, 0, 1) == 1,
        }
    }

    /// Planned seconds: both sides' rounds, a second or two each to wind
    /// down, start-up and clean-up.
    fn planned(&self) -> f64 {
        self.rounds as f64 * 2.0 * (self.warmup + self.secs + 2.0) + 30.0
    }
}

/// One side's measured round.
struct Round {
    /// Messages whose `250` came inside the measured window.
    msgs: u64,
    bytes: u64,
    secs: f64,
    latencies: Vec<Duration>,
    /// Whole transactions (`MAIL FROM` to `250`).
    cycles: Vec<Duration>,
    usage: Usage,
    /// Messages acknowledged in the whole round (warm-up included).
    acked: u64,
    connections: u64,
    /// Messages in the queue when the round started.
    queued_before: u64,
    /// Some sender reached its message count before the window's end.
    count_bound: bool,
}

impl Round {
    fn rate(&self) -> f64 {
        self.msgs as f64 / self.secs
    }
    fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.secs
    }
    fn cpu_per_msg(&self) -> f64 {
        self.usage.server_ms / self.msgs.max(1) as f64
    }
}

/// All rounds of one side.
#[derive(Default)]
struct Side {
    rounds: Vec<Round>,
}

impl Side {
    fn median(&self, f: impl Fn(&Round) -> f64) -> f64 {
        median(self.rounds.iter().map(f).collect())
    }
    fn pooled(&self, f: impl Fn(&Round) -> &[Duration]) -> Vec<Duration> {
        let mut all: Vec<Duration> = self
            .rounds
            .iter()
            .flat_map(|r| f(r).iter().copied())
            .collect();
        all.sort();
        all
    }
    /// Percentile of the end-of-DATA latencies, ms.
    fn pct_ms(&self, p: f64) -> f64 {
        percentile(&self.pooled(|r| &r.latencies), p).as_secs_f64() * 1e3
    }
    /// Percentile of the whole transactions, ms.
    fn cycle_ms(&self, p: f64) -> f64 {
        percentile(&self.pooled(|r| &r.cycles), p).as_secs_f64() * 1e3
    }
    fn msgs(&self) -> u64 {
        self.rounds.iter().map(|r| r.msgs).sum()
    }
    fn acked(&self) -> u64 {
        self.rounds.iter().map(|r| r.acked).sum()
    }
    /// Server CPU over all measured windows per message in them.
    fn cpu_per_msg(&self) -> f64 {
        self.rounds.iter().map(|r| r.usage.server_ms).sum::<f64>() / self.msgs().max(1) as f64
    }
    fn client_per_msg(&self) -> f64 {
        self.rounds.iter().map(|r| r.usage.client_ms).sum::<f64>() / self.msgs().max(1) as f64
    }
    /// Server CPU as a share of one core, over all measured windows.
    fn cpu_share(&self) -> f64 {
        let secs: f64 = self.rounds.iter().map(|r| r.usage.secs).sum();
        100.0 * self.rounds.iter().map(|r| r.usage.server_ms).sum::<f64>() / 1e3 / secs.max(1e-9)
    }
    fn parts_per_msg(&self) -> BTreeMap<String, f64> {
        let mut parts = BTreeMap::new();
        for r in &self.rounds {
            for (k, v) in &r.usage.parts {
                *parts.entry(k.clone()).or_insert(0.0) += v;
            }
        }
        let n = self.msgs().max(1) as f64;
        parts.into_iter().map(|(k, v)| (k, v / n)).collect()
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("spool: a benchmark; run it with `cargo bench --bench spool`");
        return;
    }
    // run() returns (and drops ponte, Postfix and the directory) first.
    let code = match run() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("spool bench failed: {e}");
            1
        }
    };
    std::process::exit(code);
}

/// The measured server of one side.
struct Target<'a> {
    name: &'static str,
    addr: std::net::SocketAddr,
    who: Who,
    queued: Box<dyn Fn() -> u64 + 'a>,
}

fn run() -> Result<(), String> {
    let started = std::time::Instant::now();
    let p = Params::from_env();
    let limit = Duration::from_secs_f64(p.planned() + 120.0);
    watch::watchdog(limit);
    let ticks = procs::clock_ticks();
    let cores = procs::cores();

    let m0 = procs::machine_ticks();
    std::thread::sleep(Duration::from_secs(1));
    let busy_before = procs::busy_pct(m0, procs::machine_ticks());
    let load_before = loadavg();
    eprintln!(
        "spool: machine busy {busy_before:.0}% in the last second (load {load_before}); \
         {} senders, {} KB messages, {} per connection, {} round(s) of {} s (+{} s warm-up) \
         per side; about {:.0} s, watchdog at {} s",
        p.senders,
        p.msg_size / 1000,
        p.per_conn,
        p.rounds,
        p.secs,
        p.warmup,
        p.planned(),
        limit.as_secs()
    );

    let dir = tempfile::Builder::new()
        .prefix("ponte-spool-bench.")
        .tempdir()
        .map_err(|e| format!("tempdir: {e}"))?;
    watch::set_dir(Some(dir.path().to_path_buf()));
    let fs = filesystem(dir.path());
    let body = Arc::new(Body::new(p.msg_size));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;

    let ponte = PonteProc::start(dir.path())?;
    let (postfix, postfix_err) = if p.postfix {
        match Postfix::start(dir.path()) {
            Ok(pf) => (Some(pf), None),
            Err(e) => {
                eprintln!("Postfix left out: {e}");
                (None, Some(e))
            }
        }
    } else {
        (None, Some("left out (PONTE_BENCH_POSTFIX=0)".to_string()))
    };

    let ponte_target = Target {
        name: "ponte",
        addr: ponte.addr,
        who: Who::Process(ponte.pid()),
        queued: Box::new(|| ponte.spooled().0),
    };
    let postfix_target = postfix.as_ref().map(|pf| Target {
        name: "Postfix",
        addr: pf.addr,
        who: Who::Group(pf.master),
        queued: Box::new(|| pf.queued().0),
    });

    let (mut ps, mut fs_side) = (Side::default(), Side::default());
    for r in 0..p.rounds {
        // Alternate who goes first: neither always finds the page cache
        // full of the other's writes.
        let mut order: Vec<(&Target, &mut Side)> = vec![(&ponte_target, &mut ps)];
        if let Some(t) = &postfix_target {
            order.push((t, &mut fs_side));
        }
        if r % 2 == 1 {
            order.reverse();
        }
        for (t, side) in order {
            eprintln!("round {}: {}", r + 1, t.name);
            let round = measure(&rt, &p, t, r, &body)?;
            eprintln!(
                "  {:.0} msgs/s, {:.1} MB/s, server {:.2} ms CPU/msg, machine busy {:.0}%",
                round.rate(),
                round.mb_per_s(),
                round.cpu_per_msg(),
                round.usage.busy_pct
            );
            side.rounds.push(round);
        }
    }
    drop(rt);

    // Every acknowledged message is in the queue, and nothing else.
    let (env, msg) = ponte.spooled();
    let ponte_ok = env == ps.acked() && msg == ps.acked();
    let sample_ok = ponte
        .first_message()
        .is_some_and(|m| m.starts_with(b"Received: ") && m.ends_with(b"--=_ponte_bench_1--\r\n"));
    let ponte_log = ponte.log();
    let ponte_warnings = ponte_log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .count();
    let postfix_check = postfix.as_ref().map(|pf| {
        let (hold, other) = pf.queued();
        (hold, other, pf.log_problems(), pf.version().to_string())
    });
    drop(postfix_target);
    drop(ponte_target);
    drop(postfix);
    drop(ponte);
    let load_after = loadavg();

    let date = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let mut r = String::new();
    let _ = writeln!(
        r,
        "# spool: inbound mail into a durable queue, ponte vs Postfix\n"
    );
    let _ = writeln!(
        r,
        "`cargo bench --bench spool`{}, {date}. Machine: `nproc` = {cores}, Linux {kernel}, \
         temporary directory (spool and queue) on {fs}. **Machine busy before the run: \
         {busy_before:.0}%** of all cores in the second before; load average {load_before} \
         before, {load_after} after (other builds and tests share these 2 cores: figures \
         from a busy machine are low and noisy).\n",
        if p.quick {
            " with `PONTE_BENCH_QUICK=1` (a smoke test, not a measurement)"
        } else {
            ""
        }
    );
    let have_pf = !fs_side.rounds.is_empty();
    let ratio = |a: f64, b: f64| {
        if have_pf && b > 0.0 {
            format!("{:.2}", a / b)
        } else {
            "–".into()
        }
    };
    let pfv = |v: f64, prec: usize| {
        if have_pf {
            format!("{v:.prec$}")
        } else {
            "–".into()
        }
    };
    r.push_str("| metric | ponte spool | Postfix hold queue | ponte/Postfix |\n");
    r.push_str("|---|---:|---:|---:|\n");
    let mut row = |name: &str, a: f64, b: f64, prec: usize| {
        let _ = writeln!(
            r,
            "| {name} | {a:.prec$} | {} | {} |",
            pfv(b, prec),
            ratio(a, b)
        );
    };
    row(
        "accepted messages/s (median of rounds)",
        ps.median(Round::rate),
        fs_side.median(Round::rate),
        0,
    );
    row(
        "MB/s (DATA as sent, median of rounds)",
        ps.median(Round::mb_per_s),
        fs_side.median(Round::mb_per_s),
        1,
    );
    row(
        "end of DATA → 250, p50 (ms)",
        ps.pct_ms(50.0),
        fs_side.pct_ms(50.0),
        2,
    );
    row(
        "end of DATA → 250, p99 (ms)",
        ps.pct_ms(99.0),
        fs_side.pct_ms(99.0),
        2,
    );
    row(
        "whole transaction (`MAIL` → 250), p50 (ms)",
        ps.cycle_ms(50.0),
        fs_side.cycle_ms(50.0),
        2,
    );
    row(
        "server CPU per message (ms)",
        ps.cpu_per_msg(),
        fs_side.cpu_per_msg(),
        3,
    );
    row(
        "server CPU, % of one core",
        ps.cpu_share(),
        fs_side.cpu_share(),
        0,
    );
    row(
        "senders' CPU per message (ms, the bench process)",
        ps.client_per_msg(),
        fs_side.client_per_msg(),
        3,
    );

    let _ = writeln!(
        r,
        "\n{} concurrent senders, each: connect, `EHLO`, up to {} messages (`MAIL FROM` with \
         `SIZE` and `BODY=8BITMIME`, one `RCPT TO` among {} mailboxes of `{}`, `DATA`), `QUIT`, \
         again, until the round's time is up (at most {} messages per sender and round). \
         Messages of {} bytes on average as sent: a realistic header block (trace, DKIM-Signature, \
         encoded-word Subject, unique Message-ID), a multipart body with an 8-bit UTF-8 text \
         part with lines that need dot-stuffing, and a base64 attachment. No pipelining, no \
         TLS, loopback. Each round: {} s warm-up, then {} s measured, on a load that runs \
         through both; {} round(s) per side, alternating ponte and Postfix (who goes first \
         alternates too). Rates count the `250`s that arrived in the measured window; \
         latency is from the write of the final `.` CRLF to the `250`, a whole transaction \
         from the write of `MAIL FROM` to that `250` (so with a fixed number of senders \
         the rate is about senders / (transaction time + the share of connect, `EHLO` \
         and `QUIT`)), all measured windows pooled; MB = 10^6 bytes.\n",
        p.senders,
        p.per_conn,
        smtp::MAILBOXES,
        smtp::DOMAIN,
        p.max_per_sender,
        avg_size(&[&ps, &fs_side]),
        p.warmup,
        p.secs,
        p.rounds
    );
    let _ = writeln!(
        r,
        "- **ponte**: the release binary as a separate process (`RUST_LOG=warn`), one plain \
         inbound SMTP listener (`protocol = \"smtp\"`, `tls = \"none\"`), `[domain.\"{}\"] \
         state = \"blackout\"`: each message is stored with `Spool::store` — data to `tmp/`, \
         fsync, rename into `msg/`, fsync `msg/`; envelope to `tmp/`, fsync, rename into \
         `env/`, fsync `env/` — on a blocking thread, and the `250` comes after. So 2 file \
         fsyncs and 2 directory fsyncs per message; it also prepends a `Received:` header \
         (mail for blackout mailboxes only does not wake the delivery worker: nothing is \
         deliverable before the flip). CPU: utime + stime of its process (all threads) from \
         `/proc/<pid>/stat` over the measured windows.",
        smtp::DOMAIN
    );
    match &postfix_check {
        Some((.., version)) => {
            let _ = writeln!(
                r,
                "- **Postfix** {version} (Debian's package), a throwaway instance: its own \
                 `config_directory` with a generated `main.cf` and `master.cf`, queue and data \
                 directories in the same temporary directory, `inet_interfaces = 127.0.0.1`, \
                 smtpd on an ephemeral port, no chroot, `mail_owner = postfix`, \
                 `relay_domains = {}`, `smtpd_recipient_restrictions = check_recipient_access \
                 static:HOLD`, `smtpd_peername_lookup = no`, logging to a file through \
                 `postlogd` (`maillog_file`); started with `postfix -c DIR check` and \
                 `postfix -c DIR start` as root, stopped with `postfix -c DIR stop`. Every \
                 accepted message is written by cleanup into `incoming/`, renamed into \
                 `hold/` and fsynced before smtpd answers `250` (one file fsync, no directory \
                 fsync: seen with strace on this version) and stays there. CPU: every \
                 process in the master's process group (the master calls setsid; smtpd, \
                 cleanup, trivial-rewrite, qmgr, postlogd, anvil…), utime + stime from \
                 `/proc/<pid>/stat` at both ends of the window, plus the cutime + cstime the \
                 master gained from daemons that exited in between (less what they had used \
                 before the window).",
                smtp::DOMAIN
            );
        }
        None => {
            let _ = writeln!(
                r,
                "- **Postfix: not measured.** {}",
                postfix_err.as_deref().unwrap_or("unknown reason")
            );
        }
    }

    let _ = writeln!(r, "\nChecks after the run:\n");
    let _ = writeln!(
        r,
        "- ponte: {} messages acknowledged (warm-up included), spool `env/` holds {env}, \
         `msg/` {msg}: {}; the first spooled message {} the sent one (`Received:` first, \
         the body's last boundary last). ponte logged {ponte_warnings} warnings/errors.",
        ps.acked(),
        if ponte_ok {
            "**match**"
        } else {
            "**MISMATCH**"
        },
        if sample_ok {
            "looks like"
        } else {
            "**does not look like**"
        }
    );
    let mut problems = Vec::new();
    if !ponte_ok {
        problems.push(format!(
            "ponte: acknowledged {} but spool env/ {env} msg/ {msg}",
            ps.acked()
        ));
    }
    if let Some((hold, other, log_problems, _)) = &postfix_check {
        let ok = *hold == fs_side.acked() && *other == 0;
        let _ = writeln!(
            r,
            "- Postfix: {} messages acknowledged, `hold/` holds {hold}, the other queues \
             {other}: {}. Its log has {} warning/error lines{}.",
            fs_side.acked(),
            if ok { "**match**" } else { "**MISMATCH**" },
            log_problems.len(),
            log_problems
                .first()
                .map(|l| format!(", the first: `{l}`"))
                .unwrap_or_default()
        );
        if !ok {
            problems.push(format!(
                "Postfix: acknowledged {} but hold/ {hold}, others {other}",
                fs_side.acked()
            ));
        }
    }

    let _ = writeln!(r, "\nPer round (measured window):\n");
    for (name, side) in [("ponte", &ps), ("Postfix", &fs_side)] {
        for (i, x) in side.rounds.iter().enumerate() {
            let _ = writeln!(
                r,
                "- {name} round {}: {:.0} msgs/s, {:.1} MB/s, p50 {:.2} ms, p99 {:.2} ms, \
                 server CPU {:.3} ms/msg ({:.0}% of a core), {} messages in the queue at the \
                 start, {} connections in the round, machine busy {:.0}% (not the server nor \
                 the senders: {:.0}%){}",
                i + 1,
                x.rate(),
                x.mb_per_s(),
                percentile(&sorted(&x.latencies), 50.0).as_secs_f64() * 1e3,
                percentile(&sorted(&x.latencies), 99.0).as_secs_f64() * 1e3,
                x.cpu_per_msg(),
                100.0 * x.usage.server_ms / 1e3 / x.usage.secs.max(1e-9),
                x.queued_before,
                x.connections,
                x.usage.busy_pct,
                x.usage.other_pct,
                if x.count_bound {
                    " — **a sender hit its message count: the window was cut at the last 250**"
                } else {
                    ""
                }
            );
        }
    }
    let parts = fs_side.parts_per_msg();
    if !parts.is_empty() {
        let list: Vec<String> = parts
            .iter()
            .filter(|(_, v)| **v >= 0.0005)
            .map(|(k, v)| format!("{k} {v:.3}"))
            .collect();
        let _ = writeln!(
            r,
            "\nPostfix CPU by process, ms per message: {}.",
            list.join(", ")
        );
    }
    let _ = writeln!(
        r,
        "\nCLK_TCK {ticks}. Whole run: {:.0} s.",
        started.elapsed().as_secs_f64()
    );

    println!("\n{r}");
    if have_pf {
        println!(
            "ponte/Postfix: msgs/s {}, MB/s {}, p50 {}, p99 {}, CPU/msg {}",
            ratio(ps.median(Round::rate), fs_side.median(Round::rate)),
            ratio(ps.median(Round::mb_per_s), fs_side.median(Round::mb_per_s)),
            ratio(ps.pct_ms(50.0), fs_side.pct_ms(50.0)),
            ratio(ps.pct_ms(99.0), fs_side.pct_ms(99.0)),
            ratio(ps.cpu_per_msg(), fs_side.cpu_per_msg())
        );
    }
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/results/spool.md");
    std::fs::write(&out, &r).map_err(|e| format!("write {}: {e}", out.display()))?;
    eprintln!("wrote {}", out.display());
    watch::set_dir(None);
    drop(dir);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

fn avg_size(sides: &[&Side]) -> u64 {
    let rounds = sides.iter().flat_map(|s| &s.rounds);
    let (b, m) = rounds.fold((0, 0), |(b, m), r| (b + r.bytes, m + r.msgs));
    b / m.max(1)
}

fn sorted(v: &[Duration]) -> Vec<Duration> {
    let mut v = v.to_vec();
    v.sort();
    v
}

/// One round against one side: the senders run from the start of the
/// warm-up to the end of the window; CPU is sampled at both ends of the
/// window.
fn measure(
    rt: &tokio::runtime::Runtime,
    p: &Params,
    t: &Target,
    round: usize,
    body: &Arc<Body>,
) -> Result<Round, String> {
    let queued_before = (t.queued)();
    let ticks = procs::clock_ticks();
    let cores = procs::cores();
    rt.block_on(async {
        let start = Instant::now();
        let from = start + Duration::from_secs_f64(p.warmup);
        let to = from + Duration::from_secs_f64(p.secs);
        let plan = Plan {
            addr: t.addr,
            round,
            senders: p.senders,
            per_conn: p.per_conn,
            max_per_sender: p.max_per_sender,
            stop_at: to,
            deadline: to + Duration::from_secs(30),
        };
        let load = tokio::spawn(smtp::run(plan, body.clone()));
        tokio::time::sleep_until(from).await;
        let a = watch::sample(t.who);
        tokio::time::sleep_until(to).await;
        let b = watch::sample(t.who);
        let outcomes = load.await.map_err(|e| format!("{}: load: {e}", t.name))?;
        if let Some(e) = outcomes.iter().find_map(|o| o.error.clone()) {
            return Err(format!("{}: {e}", t.name));
        }
        let accepted: Vec<&smtp::Accepted> = outcomes.iter().flat_map(|o| &o.accepted).collect();
        let acked = accepted.len() as u64;
        let count_bound = outcomes
            .iter()
            .any(|o| o.accepted.len() as u64 >= p.max_per_sender);
        let in_window: Vec<&&smtp::Accepted> = accepted
            .iter()
            .filter(|x| x.at >= from && x.at <= to)
            .collect();
        // If a sender ran out of messages, the window ends at the last 250.
        let end = if count_bound {
            in_window.iter().map(|x| x.at).max().unwrap_or(to)
        } else {
            to
        };
        let secs = (end - from).as_secs_f64().max(1e-3);
        let usage = watch::between(&a, &b, ticks, cores);
        Ok(Round {
            msgs: in_window.len() as u64,
            bytes: in_window.iter().map(|x| x.bytes).sum(),
            secs,
            latencies: in_window.iter().map(|x| x.latency).collect(),
            cycles: in_window.iter().map(|x| x.cycle).collect(),
            usage,
            acked,
            connections: outcomes.iter().map(|o| o.connections).sum(),
            queued_before,
            count_bound,
        })
    })
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// `df -T`'s type and device of the filesystem holding `dir`.
fn filesystem(dir: &Path) -> String {
    std::process::Command::new("df")
        .arg("--output=fstype,source")
        .arg(dir)
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            let line = text.lines().nth(1)?.to_string();
            let mut f = line.split_whitespace();
            let (fstype, source) = (f.next()?.to_string(), f.next()?.to_string());
            // ext4 has a jbd2 journal entry per device if it has a journal.
            let journal = match fstype.as_str() {
                "ext4" | "ext3" => {
                    let dev = source.rsplit('/').next().unwrap_or_default().to_string();
                    let has = std::fs::read_dir("/proc/fs/jbd2").is_ok_and(|d| {
                        d.filter_map(Result::ok)
                            .any(|e| e.file_name().to_string_lossy().starts_with(&dev))
                    });
                    if has {
                        " with a journal"
                    } else {
                        " **without a journal** (no `/proc/fs/jbd2` entry)"
                    }
                }
                _ => "",
            };
            Some(format!("{fstype}{journal} (`{source}`)"))
        })
        .unwrap_or_else(|| "an unknown filesystem".into())
}
