//! POP3 and SMTP submission throughput on loopback, direct to Dovecot and
//! through the release `ponte` binary (a separate process), in one run:
//! concurrent POP3 clients `RETR`ing every message of a mailbox, one client
//! `RETR`ing a 10 MB message, concurrent SMTP submission sessions sending
//! many ~50 KB messages each, and, for scale, the harness's SMTP sink (where
//! Dovecot's submission relays) driven directly. Prints a markdown table
//! with the ratios ponte/direct and ponte's CPU per message and per MB, and
//! writes it to benches/results/mail_throughput.md; see benches/README.md.
//!
//! `cargo bench --bench mail_throughput`; without `--bench` (e.g. under
//! `cargo test --benches`) it does nothing.

#[path = "../tests/common/mod.rs"]
mod common;

#[path = "mail_throughput/load.rs"]
mod load;
#[path = "mail_throughput/sys.rs"]
mod sys;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::net::{free_ports, loopback};
use common::world::{World, ALICE, DAVE};
use load::{median, message, pop3_big_retr, pop3_session, run_clients, smtp_session, Round};
use sys::{clk_tck, loadavg, process_ticks, MachineCpu, PonteProc};

/// Size of each message in the POP3 mailbox and of each submitted message.
const POP3_MSG_SIZE: usize = 100_000;
const SMTP_MSG_SIZE: usize = 50_000;
/// The single large message.
const BIG_SIZE: usize = 10_000_000;
/// Timed `RETR`s of the large message per side (after one untimed).
const BIG_ROUNDS: usize = 10;
/// The whole run, set-up included; the watchdog aborts past it.
const RUN_LIMIT: Duration = Duration::from_secs(280);

/// Knobs (environment variables, all optional).
struct Params {
    /// Concurrent clients in the POP3 and SMTP scenarios.
    clients: usize,
    /// Measured rounds per side (after one warm-up round per side).
    rounds: usize,
    /// Messages delivered to the POP3 mailbox (each client RETRs them all).
    pop3_msgs: usize,
    /// Messages per SMTP session.
    smtp_msgs: u64,
}

impl Params {
    fn from_env() -> Params {
        let get = |name: &str, default: usize, max: usize| -> usize {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
                .clamp(1, max)
        };
        Params {
            clients: get("PONTE_MAILBENCH_CLIENTS", 8, 64),
            rounds: get("PONTE_MAILBENCH_ROUNDS", 5, 9),
            pop3_msgs: get("PONTE_MAILBENCH_POP3_MSGS", 200, 1000),
            smtp_msgs: get("PONTE_MAILBENCH_SMTP_MSGS", 25, 500) as u64,
        }
    }
}

/// Direct and ponte rounds of one scenario, and what ponte used meanwhile.
struct Compared {
    direct: Vec<Round>,
    ponte: Vec<Round>,
    /// ponte's CPU seconds over its measured rounds.
    ponte_cpu: f64,
    /// Machine busy (% of all cores) over all measured rounds.
    busy: f64,
}

impl Compared {
    fn median_secs(rounds: &[Round]) -> Round {
        let secs: Vec<f64> = rounds.iter().map(|r| r.secs).collect();
        Round {
            secs: median(&secs),
            ..rounds[0]
        }
    }
    fn direct(&self) -> Round {
        Self::median_secs(&self.direct)
    }
    fn ponte(&self) -> Round {
        Self::median_secs(&self.ponte)
    }
    fn ponte_totals(&self) -> (u64, u64) {
        let m = self.ponte.iter().map(|r| r.messages).sum();
        let b = self.ponte.iter().map(|r| r.bytes).sum();
        (m, b)
    }
    /// ponte's CPU in ms per message and per MB, and as % of one core.
    fn cpu(&self) -> String {
        let (m, b) = self.ponte_totals();
        let secs: f64 = self.ponte.iter().map(|r| r.secs).sum();
        format!(
            "{:.3} ms/msg, {:.2} ms/MB ({:.0}% of a core)",
            1e3 * self.ponte_cpu / m as f64,
            1e3 * self.ponte_cpu / (b as f64 / 1e6),
            100.0 * self.ponte_cpu / secs
        )
    }
    fn detail(&self, name: &str, unit: &str, value: impl Fn(&Round) -> f64) -> String {
        let list = |v: &[Round]| {
            v.iter()
                .map(|r| format!("{:.1}", value(r)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "- {name}: direct {} {unit}; ponte {} {unit}; machine busy (this run included) {:.0}%\n",
            list(&self.direct),
            list(&self.ponte),
            self.busy
        )
    }
}

/// Runs one warm-up round per side, then `rounds` rounds alternating direct
/// and ponte, reading ponte's CPU around each of its rounds.
fn compare(
    rounds: usize,
    pid: u32,
    tck: f64,
    mut direct: impl FnMut() -> Result<Round, String>,
    mut ponte: impl FnMut() -> Result<Round, String>,
) -> Result<Compared, String> {
    direct().map_err(|e| format!("direct warm-up: {e}"))?;
    ponte().map_err(|e| format!("ponte warm-up: {e}"))?;
    let machine = MachineCpu::now();
    let mut c = Compared {
        direct: Vec::new(),
        ponte: Vec::new(),
        ponte_cpu: 0.0,
        busy: 0.0,
    };
    for _ in 0..rounds {
        c.direct.push(direct().map_err(|e| format!("direct: {e}"))?);
        let t0 = process_ticks(pid).ok_or("ponte is gone")?;
        c.ponte.push(ponte().map_err(|e| format!("ponte: {e}"))?);
        let t1 = process_ticks(pid).ok_or("ponte is gone")?;
        c.ponte_cpu += (t1 - t0) as f64 / tck;
    }
    c.busy = MachineCpu::now().busy_since(&machine);
    Ok(c)
}

/// ponte's configuration: a plain POP3 and a plain submission listener
/// (`tls = "none"`, so AUTH needs no STARTTLS), both backends over plain
/// ports like the direct clients.
fn config_text(w: &World, admin: SocketAddr, pop3: SocketAddr, submission: SocketAddr) -> String {
    let d = w.dir.path().display();
    format!(
        r#"# Generated by benches/mail_throughput.rs.
[state]
path = "{d}/state"
seed = "{d}/mailboxes.csv"

[spool]
path = "{d}/spool"

[admin]
bind = "{admin}"
token_file = "{d}/admin.token"

[limits]
shutdown_grace = "1s"

[[listener]]
name = "pop3"
protocol = "pop3"
bind = "{pop3}"

[[listener]]
name = "submission"
protocol = "submission"
bind = "{submission}"
tls = "none"

[backend.legacy]
pop3 = "pop3://{legacy_pop3}"
submission = "smtp://{legacy_submission}"

[backend.new]
pop3 = "pop3://{new_pop3}"
submission = "smtp://{new_submission}"

[domain."pec.example"]
state = "legacy"

[domain."comune.example"]
state = "migrated"
"#,
        legacy_pop3 = w.legacy.pop3_addr(),
        legacy_submission = w.legacy.submission_addr(),
        new_pop3 = w.new.pop3_addr(),
        new_submission = w.new.submission_addr(),
    )
}

/// Starts ponte on fresh ports (again if another process took one first);
/// returns it with its POP3 and submission addresses.
fn start_ponte(w: &World) -> Result<(PonteProc, SocketAddr, SocketAddr), String> {
    let mut last = String::new();
    for _ in 0..3 {
        let p = free_ports(3);
        let (admin, pop3, submission) = (loopback(p[0]), loopback(p[1]), loopback(p[2]));
        let path = w.dir.path().join("ponte.toml");
        std::fs::write(&path, config_text(w, admin, pop3, submission))
            .map_err(|e| format!("write ponte.toml: {e}"))?;
        match PonteProc::start(w.dir.path(), &path, pop3) {
            Ok(proc) => return Ok((proc, pop3, submission)),
            Err(e) if e.contains("Address already in use") => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("mail_throughput: a benchmark; run it with `cargo bench --bench mail_throughput`");
        return;
    }
    // run() returns (and drops Dovecot, the sinks and ponte) before exit.
    let code = match run() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("mail_throughput failed: {e}");
            1
        }
    };
    std::process::exit(code);
}

fn run() -> Result<(), String> {
    let started = Instant::now();
    let p = Params::from_env();
    sys::watchdog(RUN_LIMIT);
    let tck = clk_tck();
    let k = p.clients;

    // How busy the machine is before we start.
    let m0 = MachineCpu::now();
    std::thread::sleep(Duration::from_secs(1));
    let busy_before = MachineCpu::now().busy_since(&m0);
    let load_before = loadavg();
    eprintln!(
        "mail_throughput: machine busy {busy_before:.0}% in the last second (load {load_before}); \
         {k} clients, {} rounds per side; at most {} s",
        p.rounds,
        RUN_LIMIT.as_secs()
    );

    let w = World::backends_only("");
    let dave_pass = DAVE.legacy_password.ok_or("dave has no legacy password")?;
    let alice_pass = ALICE
        .legacy_password
        .ok_or("alice has no legacy password")?;
    for i in 0..p.pop3_msgs {
        w.legacy.deliver(
            DAVE.address,
            "INBOX",
            &message(POP3_MSG_SIZE, &format!("pop3-{i}")),
        );
    }
    // Alice's INBOX: the seeded message (1), then the large one (2).
    w.legacy
        .deliver(ALICE.address, "INBOX", &message(BIG_SIZE, "big"));
    let (ponte, ponte_pop3, ponte_submission) = start_ponte(&w)?;
    let pid = ponte.pid();
    let direct_pop3 = w.legacy.pop3_addr();
    let direct_submission = w.legacy.submission_addr();
    let deadline = || Instant::now() + load::ROUND_LIMIT;

    // 1. POP3: k clients, each RETRs the whole mailbox (the seeded message
    // and the delivered ones). QUIT marks them \Seen; nothing is deleted, so
    // every round reads the same messages.
    eprintln!("POP3 RETR, {k} clients");
    let expect = p.pop3_msgs as u64 + 1;
    let pop3_round = |addr: SocketAddr| {
        run_clients(k, |_| {
            pop3_session(addr, DAVE.address, dave_pass, expect, deadline())
        })
    };
    let pop3 = compare(
        p.rounds,
        pid,
        tck,
        || pop3_round(direct_pop3),
        || pop3_round(ponte_pop3),
    )?;
    if pop3.direct[0].bytes != pop3.ponte[0].bytes {
        return Err(format!(
            "POP3 bytes differ: direct {} ponte {}",
            pop3.direct[0].bytes, pop3.ponte[0].bytes
        ));
    }

    // 2. One 10 MB RETR, one client.
    eprintln!("POP3 RETR of one 10 MB message");
    let machine = MachineCpu::now();
    // ponte's CPU over its timed RETRs only: read before and after each.
    let (mut big_ticks, mut last, mut ponte_turn) = (0u64, None::<u64>, false);
    let (big_direct, big_ponte) = pop3_big_retr(
        direct_pop3,
        ponte_pop3,
        (ALICE.address, alice_pass),
        2,
        BIG_ROUNDS,
        deadline(),
        || {
            let now = process_ticks(pid).unwrap_or(0);
            match last.replace(now) {
                Some(before) if ponte_turn => big_ticks += now.saturating_sub(before),
                _ => {}
            }
            ponte_turn = !ponte_turn;
        },
    )?;
    let big_cpu = big_ticks as f64 / tck;
    let big_busy = MachineCpu::now().busy_since(&machine);
    let big_bytes = big_direct[0].1;
    if big_bytes < BIG_SIZE as u64 || big_ponte.iter().any(|r| r.1 != big_bytes) {
        return Err(format!(
            "10 MB RETR: direct {big_direct:?} ponte {big_ponte:?}"
        ));
    }
    let mbps =
        |v: &[(f64, u64)]| -> Vec<f64> { v.iter().map(|(s, b)| *b as f64 / 1e6 / s).collect() };
    let (big_d, big_p) = (mbps(&big_direct), mbps(&big_ponte));
    let big_mb = BIG_ROUNDS as f64 * big_bytes as f64 / 1e6;

    // 3. The SMTP sink alone: what Dovecot's submission relays to.
    let smtp_msg = message(SMTP_MSG_SIZE, "submission");
    let n = p.smtp_msgs;
    eprintln!("SMTP sink alone, {k} clients");
    let sink_addr = w.legacy_sink.addr();
    let sink_round = || {
        run_clients(k, |_| {
            smtp_session(sink_addr, None, DAVE.address, n, &smtp_msg, deadline())
        })
    };
    sink_round().map_err(|e| format!("sink warm-up: {e}"))?;
    let machine = MachineCpu::now();
    let mut sink = Vec::new();
    for _ in 0..p.rounds {
        sink.push(sink_round().map_err(|e| format!("sink: {e}"))?);
    }
    let sink_busy = MachineCpu::now().busy_since(&machine);
    let sink_med = Compared::median_secs(&sink);

    // 4. SMTP submission, AUTH PLAIN over plain TCP on both sides.
    eprintln!("SMTP submission, {k} clients × {n} messages");
    let before = w.legacy_sink.messages().len();
    let auth = Some((DAVE.address, dave_pass));
    let submit_round = |addr: SocketAddr| {
        run_clients(k, |_| {
            smtp_session(addr, auth, DAVE.address, n, &smtp_msg, deadline())
        })
    };
    let smtp = compare(
        p.rounds,
        pid,
        tck,
        || submit_round(direct_submission),
        || submit_round(ponte_submission),
    )?;
    // Every accepted message reached the sink (once): (1 warm-up + rounds)
    // per side.
    let sent = 2 * (p.rounds as u64 + 1) * k as u64 * n;
    let mut arrived = 0;
    sys::poll_until(Duration::from_secs(5), Duration::from_millis(500), || {
        arrived = (w.legacy_sink.messages().len() - before) as u64;
        arrived >= sent
    });
    if arrived != sent {
        return Err(format!(
            "the sink got {arrived} of {sent} submitted messages"
        ));
    }
    let ponte_log = ponte.log();
    drop(ponte);

    // Report.
    let (pd, pp) = (pop3.direct(), pop3.ponte());
    let (sd, sp) = (smtp.direct(), smtp.ponte());
    let (big_dm, big_pm) = (median(&big_d), median(&big_p));
    let row = |s: &mut String, scenario: &str, metric: &str, d: f64, p: f64, cpu: &str| {
        let _ = writeln!(
            s,
            "| {scenario} | {metric} | {d:.1} | {p:.1} | {:.2} | {cpu} |",
            p / d
        );
    };
    let mut t = String::new();
    t.push_str("| scenario | metric | direct | ponte | ponte/direct | ponte CPU |\n");
    t.push_str("|---|---|---:|---:|---:|---|\n");
    let pop3_name = format!("POP3 RETR, {k} clients × {expect} msgs (~100 KB)");
    row(
        &mut t,
        &pop3_name,
        "MB/s",
        pd.mb_per_s(),
        pp.mb_per_s(),
        &pop3.cpu(),
    );
    row(
        &mut t,
        &pop3_name,
        "msgs/s",
        pd.msgs_per_s(),
        pp.msgs_per_s(),
        "",
    );
    row(
        &mut t,
        "POP3 RETR of one 10 MB message, 1 client",
        "MB/s",
        big_dm,
        big_pm,
        &format!("{:.2} ms/MB", 1e3 * big_cpu / big_mb),
    );
    let smtp_name = format!("SMTP submission, {k} clients × {n} msgs (~50 KB)");
    row(
        &mut t,
        &smtp_name,
        "msgs/s",
        sd.msgs_per_s(),
        sp.msgs_per_s(),
        &smtp.cpu(),
    );
    row(&mut t, &smtp_name, "MB/s", sd.mb_per_s(), sp.mb_per_s(), "");
    let _ = writeln!(
        t,
        "| SMTP sink alone (no AUTH, no Dovecot), {k} clients × {n} msgs | msgs/s, MB/s | {:.1}, {:.1} | – | – | – |",
        sink_med.msgs_per_s(),
        sink_med.mb_per_s()
    );

    let mut details = String::new();
    details.push_str(&pop3.detail("POP3 RETR", "MB/s", Round::mb_per_s));
    let list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(
        details,
        "- POP3 10 MB RETR: direct {} MB/s; ponte {} MB/s; machine busy (this run included) {big_busy:.0}%",
        list(&big_d),
        list(&big_p)
    );
    details.push_str(&smtp.detail("SMTP submission", "msgs/s", Round::msgs_per_s));
    let sink_rates: Vec<f64> = sink.iter().map(Round::msgs_per_s).collect();
    let _ = writeln!(
        details,
        "- SMTP sink alone: {} msgs/s; machine busy (this run included) {sink_busy:.0}%",
        list(&sink_rates)
    );
    let bound = sink_med.msgs_per_s() / sd.msgs_per_s().max(sp.msgs_per_s());
    let warnings = ponte_log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .count();

    let date = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut report = String::new();
    let _ = writeln!(
        report,
        "# mail_throughput: POP3 and SMTP submission, direct vs ponte\n"
    );
    let _ = writeln!(
        report,
        "`cargo bench --bench mail_throughput`, {date}, {cores} cores, loopback. \
         **Machine busy before the run: {busy_before:.0}%** of all cores in the second before \
         (load average {load_before}); figures from a busy machine are low and noisy.\n"
    );
    report.push_str(&t);
    let _ = writeln!(
        report,
        "\nMedian of {} measured rounds per side (after one warm-up round per side), \
         direct and ponte alternating. MB = 10^6 bytes (POP3: the message lines as sent, \
         without the `.` line; SMTP: the DATA as sent). Direct: Dovecot's plain POP3 and \
         submission ports. ponte: the release binary as a separate process \
         (`RUST_LOG=warn`), a plain POP3 listener and a plain submission listener \
         (`tls = \"none\"`), plain TCP to the same Dovecot ports: no TLS anywhere, AUTH PLAIN \
         on plain TCP on both sides. ponte CPU: utime + stime from /proc over its measured \
         rounds (CLK_TCK {tck}: the 10 MB row, {} timed RETRs, is ± a tick or two); \
         it includes each session's login ({k} per round), which the SMTP figures per message \
         spread over {n} messages per session and the POP3 ones over {expect}. Each POP3 \
         client logs in as the same user (dave@pec.example); its QUIT marks the messages \
         \\Seen, nothing is deleted, so every round reads the same bytes.\n",
        p.rounds, BIG_ROUNDS
    );
    let _ = writeln!(
        report,
        "The sink alone takes {:.1}× the faster submission rate: {}. \
         Every submitted message reached it ({sent}). ponte logged {warnings} warnings/errors.\n",
        bound,
        if bound > 1.5 {
            "it does not bound the submission figures"
        } else {
            "**it may bound the submission figures**"
        }
    );
    report.push_str("Per round:\n\n");
    report.push_str(&details);
    let _ = writeln!(
        report,
        "\nWhole run: {:.0} s.",
        started.elapsed().as_secs_f64()
    );

    println!("\n{report}");
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/results/mail_throughput.md");
    std::fs::write(&out, &report).map_err(|e| format!("write {}: {e}", out.display()))?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
