//! The results: a markdown table (direct | nginx | ponte | ponte/nginx |
//! ponte/direct), the main ratios as text, and a PNG chart of them drawn
//! with gnuplot when it is installed.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::load::{FetchResult, Kind, LoginResult, Side};
use crate::memory::IdleResult;
use crate::params::Params;

/// The login results of one kind and Dovecot configuration, per side.
pub struct LoginSet {
    pub label: String,
    pub many: [Option<LoginResult>; 3],
    /// One client per side (latency without queueing), for some kinds.
    pub single: Option<[Option<LoginResult>; 3]>,
}

/// Idle sessions of one count and kind, per proxy (never direct).
pub struct IdleSet {
    pub kind: Kind,
    /// What was asked for, before the fd-limit cap.
    pub requested: usize,
    pub res: [Option<IdleResult>; 3],
}

pub struct RunInfo {
    pub elapsed: Duration,
    /// Machine CPU busy (%) in the second before anything started.
    pub background: f64,
    /// Size of the FETCHed message.
    pub big: usize,
    pub commit: String,
    pub dovecot: String,
    /// nginx's version, or why it was not measured.
    pub nginx: Result<String, String>,
    pub nginx_workers: usize,
    pub nginx_connections: u64,
    pub nofile: u64,
    /// The auth_http responder alone: requests/s (errors) with 16 clients.
    pub auth_capacity: Option<(f64, u64)>,
    /// The responder's counters over the run: answered, refused, bad,
    /// mean and max service time (µs).
    pub auth_stats: Option<(u64, u64, u64, f64, u64)>,
    pub ponte_log: String,
    pub nginx_log: String,
    /// Notes to print under the table (caps, skipped parts).
    pub notes: Vec<String>,
}

/// Which way is better, for measures that go into the chart.
#[derive(Clone, Copy, PartialEq)]
enum Better {
    Higher,
    Lower,
}

struct Row {
    label: String,
    v: [Option<f64>; 3],
    decimals: usize,
    /// Whether ratios mean anything for this measure.
    ratio: bool,
    chart: Option<Better>,
}

fn row(label: impl Into<String>, v: [Option<f64>; 3], decimals: usize) -> Row {
    Row {
        label: label.into(),
        v,
        decimals,
        ratio: true,
        chart: None,
    }
}

/// A row whose ratios would mean nothing (counts, shares).
fn info(label: impl Into<String>, v: [Option<f64>; 3], decimals: usize) -> Row {
    Row {
        ratio: false,
        ..row(label, v, decimals)
    }
}

fn charted(r: Row, better: Better) -> Row {
    Row {
        chart: Some(better),
        ..r
    }
}

impl Row {
    /// (ponte/nginx, ponte/direct).
    fn ratios(&self) -> (Option<f64>, Option<f64>) {
        let q = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if self.ratio && b > 0.0 && a.is_finite() => Some(a / b),
            _ => None,
        };
        let [d, n, x] = self.v;
        (q(x, n), q(x, d))
    }
}

/// A value per side from the results of each side.
fn each<T>(r: &[Option<T>; 3], f: impl Fn(Side, &T) -> Option<f64>) -> [Option<f64>; 3] {
    Side::ALL.map(|s| r[s.index()].as_ref().and_then(|t| f(s, t)))
}

fn login_rows(set: &LoginSet, rows: &mut Vec<Row>) {
    let label = &set.label;
    let m = &set.many;
    let clients = m.iter().flatten().map(|r| r.clients).next().unwrap_or(0);
    let main = !label.contains("stock");
    let rate = row(
        format!("{label}: logins/s, {clients} clients"),
        each(m, |_, r| Some(r.rate())),
        0,
    );
    rows.push(if main {
        charted(rate, Better::Higher)
    } else {
        rate
    });
    for q in [50.0, 99.0] {
        let r = row(
            format!("{label}: login cycle p{q} (ms)"),
            each(m, |_, r| r.pct_ms(q)),
            2,
        );
        let chart = main && q == 50.0 && set.single.is_some();
        rows.push(if chart { charted(r, Better::Lower) } else { r });
    }
    rows.push(info(
        format!("{label}: errors"),
        each(m, |_, r| Some(r.errors() as f64)),
        0,
    ));
    let cpu = row(
        format!("{label}: proxy CPU per login (ms)"),
        each(m, |s, r| r.proxy_ms(s)),
        3,
    );
    let chart = main && set.single.is_some();
    rows.push(if chart {
        charted(cpu, Better::Lower)
    } else {
        cpu
    });
    rows.push(info(
        format!("{label}: nginx's auth_http responder CPU per login (ms)"),
        each(m, |s, r| {
            (s == Side::Nginx)
                .then(|| r.per_login(r.cpu.auth_ms))
                .flatten()
        }),
        3,
    ));
    rows.push(row(
        format!("{label}: Dovecot CPU per login (ms)"),
        each(m, |_, r| r.per_login(r.cpu.dovecot_ms)),
        3,
    ));
    rows.push(row(
        format!("{label}: load generator CPU per login (ms)"),
        each(m, |_, r| r.per_login(r.cpu.client_ms)),
        3,
    ));
    rows.push(info(
        format!("{label}: machine CPU busy (%)"),
        each(m, |_, r| Some(r.cpu.busy_pct)),
        0,
    ));
    rows.push(info(
        format!("{label}: of which none of the measured processes (%)"),
        each(m, |_, r| Some(r.cpu.other_pct)),
        0,
    ));
    if let Some(one) = &set.single {
        rows.push(row(
            format!("{label}: 1 client, login cycle p50 (ms)"),
            each(one, |_, r| r.pct_ms(50.0)),
            2,
        ));
        rows.push(row(
            format!("{label}: 1 client, proxy CPU per login (ms)"),
            each(one, |s, r| r.proxy_ms(s)),
            3,
        ));
    }
}

fn fetch_rows(p: &Params, f: &[Option<FetchResult>; 3], big: usize, rows: &mut Vec<Row>) {
    let (mib, rounds) = (p.fetch_mib, p.fetch_rounds);
    rows.push(charted(
        row(
            format!("FETCH {mib} MiB BODY.PEEK[]: MB/s (median of {rounds})"),
            each(f, |_, r| Some(r.median_mbps(big))),
            0,
        ),
        Better::Higher,
    ));
    rows.push(charted(
        row(
            format!("FETCH {mib} MiB: MB/s, all {rounds} rounds together"),
            each(f, |_, r| Some(r.overall_mbps(big))),
            0,
        ),
        Better::Higher,
    ));
    rows.push(row(
        format!("FETCH {mib} MiB: slowest round (ms)"),
        each(f, |_, r| Some(r.slowest().as_secs_f64() * 1000.0)),
        1,
    ));
    rows.push(row(
        format!("FETCH {mib} MiB: ms per FETCH (median)"),
        each(f, |_, r| Some(r.median().as_secs_f64() * 1000.0)),
        1,
    ));
    rows.push(row(
        format!("FETCH {mib} MiB: proxy CPU per FETCH (ms)"),
        each(f, |s, r| {
            (s != Side::Direct).then_some(r.proxy_ms_per_round)
        }),
        1,
    ));
}

fn idle_rows(set: &IdleSet, rows: &mut Vec<Row>) {
    let r = &set.res;
    let n = r.iter().flatten().map(|x| x.requested).next().unwrap_or(0);
    let capped = if n < set.requested {
        format!(" (of {} asked)", thousands(set.requested))
    } else {
        String::new()
    };
    let label = format!("idle {} × {}{capped}", set.kind.label(), thousands(n));
    rows.push(charted(
        row(
            format!("{label}: proxy PSS per session (KiB)"),
            each(r, |_, x| x.kib_per_session()),
            1,
        ),
        Better::Lower,
    ));
    rows.push(info(
        format!("{label}: sessions established"),
        each(r, |_, x| Some(x.established as f64)),
        0,
    ));
    let hold = r
        .iter()
        .flatten()
        .map(|x| x.hold.as_secs_f64())
        .next()
        .unwrap_or(0.0);
    rows.push(info(
        format!("{label}: sessions dropped in {hold:.0} s"),
        each(r, |_, x| Some(x.lost() as f64)),
        0,
    ));
    rows.push(info(
        format!("{label}: proxy PSS before (MiB)"),
        each(r, |_, x| Some(x.pss_before_kib as f64 / 1024.0)),
        1,
    ));
    rows.push(info(
        format!("{label}: proxy PSS with the sessions (MiB)"),
        each(r, |_, x| Some(x.pss_after_kib as f64 / 1024.0)),
        1,
    ));
    rows.push(info(
        format!("{label}: time to establish (s)"),
        each(r, |_, x| Some(x.establish_secs)),
        1,
    ));
}

pub fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn all_rows(
    p: &Params,
    logins: &[LoginSet],
    fetches: &[Option<FetchResult>; 3],
    idle: &[IdleSet],
    run: &RunInfo,
) -> Vec<Row> {
    let mut rows = Vec::new();
    for set in logins {
        login_rows(set, &mut rows);
    }
    if fetches.iter().any(Option::is_some) {
        fetch_rows(p, fetches, run.big, &mut rows);
    }
    for set in idle {
        idle_rows(set, &mut rows);
    }
    rows
}

fn fmt(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.decimals$}"),
        _ => "–".to_string(),
    }
}

pub struct Report {
    pub markdown: String,
    /// One line per charted measure: the ratios.
    pub ratios: String,
    /// (label, ponte/nginx, ponte/direct, better) for the chart.
    chart: Vec<(String, Option<f64>, Option<f64>, bool)>,
}

pub fn render(
    p: &Params,
    logins: &[LoginSet],
    fetches: &[Option<FetchResult>; 3],
    idle: &[IdleSet],
    run: &RunInfo,
) -> Report {
    let rows = all_rows(p, logins, fetches, idle, run);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# ponte IMAP end-to-end benchmark: direct, nginx, ponte\n"
    );
    let _ = writeln!(
        s,
        "`cargo bench --bench imap_e2e` (see benches/README.md){}\n",
        if p.quick {
            " — **quick mode (`PONTE_BENCH_QUICK=1`): short windows, not for comparison**"
        } else {
            ""
        }
    );
    header(&mut s, p, run);
    let _ = writeln!(
        s,
        "| measure | direct | nginx | ponte | ponte/nginx | ponte/direct |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|");
    let mut ratios = String::new();
    let mut chart = Vec::new();
    for r in &rows {
        let (rn, rd) = r.ratios();
        let [d, n, x] = r.v;
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            r.label,
            fmt(d, r.decimals),
            fmt(n, r.decimals),
            fmt(x, r.decimals),
            fmt(rn, 2),
            fmt(rd, 2)
        );
        if let Some(better) = r.chart {
            let hint = if better == Better::Higher {
                "higher is better"
            } else {
                "lower is better"
            };
            let _ = writeln!(
                ratios,
                "{}: ponte/nginx {}, ponte/direct {} ({hint})",
                r.label,
                fmt(rn, 2),
                fmt(rd, 2)
            );
            chart.push((r.label.clone(), rn, rd, better == Better::Higher));
        }
    }
    notes(&mut s, logins, idle, run);
    Report {
        markdown: s,
        ratios,
        chart,
    }
}

fn header(s: &mut String, p: &Params, run: &RunInfo) {
    let _ = writeln!(
        s,
        "- when: {} (UTC); run time {:.0} s",
        now_utc(),
        run.elapsed.as_secs_f64()
    );
    let _ = writeln!(
        s,
        "- ponte: commit {}, release build, separate process, `RUST_LOG=warn`",
        run.commit
    );
    let _ = writeln!(
        s,
        "- nginx: {}",
        match &run.nginx {
            Ok(v) => format!(
                "{v}, mail module, `worker_processes {}`{} (master and workers measured), \
                 `worker_connections {}`, `worker_rlimit_nofile {}`, otherwise defaults; \
                 `auth_http` answered by a responder in the bench process (its own thread, \
                 CPU reported apart)",
                run.nginx_workers,
                if run.nginx_workers == crate::procs::cores() {
                    " (= the cores here, as `auto`)"
                } else {
                    ""
                },
                run.nginx_connections,
                run.nofile
            ),
            Err(why) => format!("not measured: {why}"),
        }
    );
    let _ = writeln!(
        s,
        "- Dovecot {}, the test harness's instance{}",
        run.dovecot,
        if p.tuned {
            "; rows marked *stock* use the harness's configuration (a new imap-login and imap \
             process per connection), all others Dovecot's high-performance settings \
             (login processes `service_count = 0`, `process_min_avail = 2`; imap and pop3 \
             `service_count = 1000`); for the idle sessions also imap `client_limit = 1000`"
        } else {
            " with the harness's configuration (a new imap-login and imap process per connection)"
        }
    );
    let _ = writeln!(
        s,
        "- machine: {} CPU(s) ({}), loopback 127.0.0.1, **shared by Dovecot, the proxies and \
         the load generator** (tokio, 2 worker threads); busy before the run: {:.0}%{}; \
         file descriptors per process: {}",
        crate::procs::cores(),
        cpu_model(),
        run.background,
        if run.background > 10.0 {
            " — **the machine was not idle: figures are skewed**"
        } else {
            ""
        },
        run.nofile
    );
    let _ = writeln!(
        s,
        "- logins: {} clients, one user each, looping connect / [TLS] / greeting / \
         [STARTTLS, TLS] / LOGIN / SELECT INBOX / LOGOUT / close (the server closes first); \
         POP3: USER / PASS / STAT / QUIT; {:.1} s warm-up, then {:.1} s measured (1-client \
         rows: {:.1} s); TLS 1.3 full handshake every time (no resumption); both proxies speak \
         plain IMAP/POP3 to Dovecot",
        p.clients,
        p.warmup.as_secs_f64(),
        p.secs.as_secs_f64(),
        p.serial_secs.as_secs_f64()
    );
    let _ = writeln!(
        s,
        "- FETCH: one {} byte message (headers, base64 body in 76-character lines), one \
         session, 1 warm-up + {} rounds; MB = 10^6 bytes",
        run.big, p.fetch_rounds
    );
    let _ = writeln!(
        s,
        "- idle sessions: logged in, SELECT INBOX, IDLE; the proxy restarted before each \
         count, PSS of all its processes (/proc/<pid>/smaps_rollup) {} s after the last \
         session is in IDLE, minus before; held {:.0} s (the largest count) or {:.0} s; \
         dropped = closed during the hold or no answer to DONE\n",
        2,
        p.idle_hold.as_secs_f64(),
        p.idle_hold_small.as_secs_f64()
    );
}

fn notes(s: &mut String, logins: &[LoginSet], idle: &[IdleSet], run: &RunInfo) {
    if !run.notes.is_empty() {
        let _ = writeln!(s);
        for n in &run.notes {
            let _ = writeln!(s, "- {n}");
        }
    }
    let mut errors = String::new();
    for set in logins {
        for (which, arr) in
            std::iter::once(("", &set.many)).chain(set.single.iter().map(|a| (", 1 client", a)))
        {
            for side in Side::ALL {
                if let Some(r) = &arr[side.index()] {
                    for (e, n) in &r.errors {
                        let _ = writeln!(
                            errors,
                            "- {} {}{which}: {n} x `{e}`",
                            set.label,
                            side.name()
                        );
                    }
                }
            }
        }
    }
    for set in idle {
        for side in Side::ALL {
            if let Some(r) = &set.res[side.index()] {
                for (e, n) in &r.errors {
                    let _ = writeln!(
                        errors,
                        "- idle {} × {} {}: {n} x `{e}`",
                        set.kind.label(),
                        thousands(r.requested),
                        side.name()
                    );
                }
            }
        }
    }
    if !errors.is_empty() {
        let _ = writeln!(s, "\nErrors:\n\n{errors}");
    }
    if run.nginx.is_ok() {
        let _ = writeln!(
            s,
            "\nnginx's mail module never sets TCP_NODELAY on client connections. Over TLS its \
             greeting (written right after the TLS 1.3 session tickets) and its close_notify \
             after LOGOUT each wait for the client's delayed ACK, about 40 ms each on Linux \
             (seen with one client: greeting 43 ms after the handshake, close 44 ms after \
             LOGOUT). That, not CPU, is what holds its IMAPS and STARTTLS login rates and \
             latency down here; compare CPU per login for those rows. Plain IMAP and POP3 \
             logins are not affected. FETCH through nginx is bimodal, likely for the same \
             reason: some rounds take ~40 ms longer than the others (the end of the literal \
             waiting for an ACK); the median hides that, the all-rounds row shows it."
        );
    }
    if let Some((rate, err)) = run.auth_capacity {
        let _ = writeln!(
            s,
            "\nnginx's auth_http responder alone answers {rate:.0} requests/s ({err} errors; 16 \
             clients, a new connection per request, as nginx makes them), well above any nginx \
             login rate here, so it is not what limits nginx."
        );
    }
    if let Some((ok, refused, bad, mean, max)) = run.auth_stats {
        let _ = writeln!(
            s,
            "Over the measurements it answered {ok} of nginx's requests ({refused} refused, \
             {bad} unreadable), {mean:.0} µs on average from accept to answer (including \
             the wait for nginx's request), {max} µs at most."
        );
    }
    for (who, log) in [("ponte", &run.ponte_log), ("nginx", &run.nginx_log)] {
        let logged: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
        if let Some(first) = logged.first() {
            let first: String = first.chars().take(200).collect();
            let _ = writeln!(
                s,
                "\n{who} logged {} line(s) at warn or above; the first: `{first}`",
                logged.len()
            );
        }
    }
    let _ = writeln!(
        s,
        "\nCPU per login: CPU time used in the measured window (ponte: utime + stime of its \
         process; nginx: master and workers; Dovecot: its whole process group, reaped children \
         included; the load generator: this process less the auth_http thread) divided by the \
         logins completed in it. With a fixed number of clients the login rate is clients / \
         cycle latency; when the machine is saturated it is 2 cores / CPU per login of \
         everything together. Ratios: ponte's value divided by nginx's or direct's (for \
         latency, CPU and memory lower is better)."
    );
}

/// Draws the charted ratios with gnuplot into `png`. `Err` says why not.
pub fn chart(report: &Report, dir: &Path, png: &Path) -> Result<(), String> {
    let gnuplot = ["/usr/bin/gnuplot", "/usr/local/bin/gnuplot"]
        .iter()
        .find(|p| Path::new(p).exists())
        .ok_or("gnuplot not found (Debian: gnuplot-nox)")?;
    let mut script = String::new();
    let _ = writeln!(
        script,
        "set terminal pngcairo size 1400,900 font 'sans,10'\nset output '{}'\n\
         set datafile separator '\\t'\nset datafile missing 'NaN'\n\
         set style data histograms\nset style histogram clustered gap 1\n\
         set style fill solid 0.85 border -1\nset boxwidth 0.9\nset grid ytics\n\
         set xtics rotate by 25 right scale 0 font ',9'\nset lmargin 8\nset rmargin 4\nset yrange [0:*]\nset key top right\n\
         set multiplot layout 2,1 title 'ponte vs nginx mail proxy and direct Dovecot ({})'",
        png.display(),
        now_utc().get(..10).unwrap_or_default()
    );
    for (higher, title) in [
        (true, "throughput: ratio, higher is better"),
        (
            false,
            "latency, CPU per login, memory per idle session: ratio, lower is better",
        ),
    ] {
        let data = dir.join(if higher { "higher.tsv" } else { "lower.tsv" });
        let mut tsv = String::new();
        for (label, rn, rd, h) in &report.chart {
            if *h == higher {
                let v = |x: &Option<f64>| x.map_or("NaN".into(), |x| format!("{x:.3}"));
                let _ = writeln!(tsv, "{}\t{}\t{}", short(label), v(rn), v(rd));
            }
        }
        if tsv.is_empty() {
            continue;
        }
        std::fs::write(&data, tsv).map_err(|e| format!("write {data:?}: {e}"))?;
        let _ = writeln!(
            script,
            "set title '{title}'\nunset arrow\n\
             set arrow from graph 0, first 1 to graph 1, first 1 nohead dt 2 lw 1.5\n\
             plot '{d}' using 2:xtic(1) title 'ponte / nginx' lc rgb '#3b75af', \
             '' using 3 title 'ponte / direct Dovecot' lc rgb '#ef8636'",
            d = data.display()
        );
    }
    script.push_str("unset multiplot\n");
    let file = dir.join("chart.gp");
    std::fs::write(&file, script).map_err(|e| format!("write {file:?}: {e}"))?;
    let out = Command::new(gnuplot)
        .arg(&file)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run gnuplot: {e}"))?;
    if out.status.success() && png.exists() {
        Ok(())
    } else {
        Err(format!(
            "gnuplot failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A chart label: the measure without its decorations.
fn short(label: &str) -> String {
    let mut s = label.to_string();
    // "idle IMAP × 9,900 (of 10,000 asked): …" → "idle IMAP × 9,900: …"
    if let (Some(a), Some(b)) = (s.find(" (of "), s.find(" asked)")) {
        s.replace_range(a..b + " asked)".len(), "");
    }
    for (from, to) in [
        (": proxy PSS per session (KiB)", ": KiB/session"),
        (" BODY.PEEK[]: MB/s (median of ", ": MB/s (median of "),
        (", 50 clients", ""),
        ("login cycle p50 (ms)", "p50 latency"),
        ("proxy CPU per login (ms)", "CPU/login"),
        ("'", ""),
    ] {
        s = s.replace(from, to);
    }
    s
}

pub fn now_utc() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

pub fn command_line(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_string())
}

pub fn git_commit() -> String {
    let head = command_line("git", &["rev-parse", "--short", "HEAD"]).unwrap_or("unknown".into());
    let dirty = command_line("git", &["status", "--porcelain", "--", "src"]).is_some();
    if dirty {
        format!("{head} + uncommitted changes in src/")
    } else {
        head
    }
}

pub fn dovecot_version() -> String {
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
