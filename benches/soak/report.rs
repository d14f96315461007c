//! The soak's report: figures, the time series, sessions and errors, the
//! checks; Markdown for stdout and benches/results/soak.md.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use crate::client::{Proto, Stats};
use crate::sample::{pss_slope_kib_per_min, Sample};
use crate::{Params, Run, FD_SLACK, MAX_GROWTH_PCT};

pub struct Report {
    pub markdown: String,
    /// Checks that failed; empty: the soak passed.
    pub failures: Vec<String>,
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn thousands(n: u64) -> String {
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

fn clock(t: f64) -> String {
    let t = t.round() as u64;
    format!("{}:{:02}", t / 60, t % 60)
}

/// Sessions per second, ponte's CPU (% of one core) and the machine's
/// busy share between two samples.
fn rates(a: &Sample, b: &Sample, ticks: f64) -> (f64, f64, f64) {
    let dt = (b.t - a.t).max(1e-9);
    let rate = b.ended.saturating_sub(a.ended) as f64 / dt;
    let cpu = 100.0 * b.cpu_ticks.saturating_sub(a.cpu_ticks) as f64 / ticks / dt;
    let busy = crate::procs::busy_pct(a.machine, b.machine);
    (rate, cpu, busy)
}

/// One line per sample while the soak runs.
pub fn progress(prev: Option<&Sample>, s: &Sample, ticks: f64) -> String {
    let (rate, cpu, busy) = prev.map_or((0.0, 0.0, 0.0), |p| rates(p, s, ticks));
    format!(
        "[{:>5}] {rate:6.1} sessions/s, {:4} in flight; ponte RSS {} MiB PSS {} MiB, {} fds, \
         {} threads, CPU {cpu:.0}% of a core; machine {busy:.0}% busy",
        clock(s.t),
        s.active,
        mib(s.rss_kib),
        mib(s.pss_kib),
        s.fds,
        s.threads,
    )
}

pub fn render(p: &Params, r: &Run) -> Report {
    let mut md = String::new();
    let mut failures = Vec::new();
    let s = &r.samples;
    let (before, end, after) = (&s[r.before], &s[r.end], &s[r.after]);
    let warm_idx = s[..=r.end]
        .iter()
        .position(|x| x.t >= p.warm_secs as f64 - 1.0)
        .unwrap_or(r.end);
    let warm = &s[warm_idx];
    let st: &Stats = &r.stats;
    let ok: u64 = [Proto::Imap, Proto::Imaps, Proto::Pop3]
        .iter()
        .map(|&x| st.ok(x))
        .sum();
    let refused = st.refused.load(Ordering::Relaxed);
    let failed = st.failed.load(Ordering::Relaxed);
    let total = ok + refused + failed;

    let _ = writeln!(
        md,
        "# Soak: {} concurrent client sessions for {}{}\n",
        thousands(p.clients as u64),
        if p.secs == 60 {
            "1 minute".to_string()
        } else if p.secs % 60 == 0 {
            format!("{} minutes", p.secs / 60)
        } else {
            format!("{} s", p.secs)
        },
        if p.quick { " (quick mode)" } else { "" }
    );
    let _ = writeln!(
        md,
        "`cargo bench --bench soak` (see benches/README.md). Commit {}, {}; {} cores ({}), \
         kernel {}; machine {:.0}% busy in the second before the run; {} fds per process; \
         run took {:.0} s.\n",
        git_commit(),
        dovecot_version(),
        crate::procs::cores(),
        cpu_model(),
        kernel(),
        r.busy_before,
        r.nofile,
        r.elapsed.as_secs_f64(),
    );
    let _ = writeln!(
        md,
        "Release `ponte` (separate process, `RUST_LOG=warn`): plain IMAP, IMAPS and POP3 \
         listeners, backend a real Dovecot with {} users of {} messages each, domain in \
         `legacy`. {} clients, each from its own source address (127.1.x.y), loop: connect, \
         [TLS 1.3 for IMAPS], LOGIN (1% with a wrong password), SELECT INBOX, FETCH 1–3 \
         whole messages, IDLE 1–5 s, DONE, LOGOUT, close, pause 0–1 s; one client in 50 \
         speaks POP3 (USER, PASS, STAT, RETR, QUIT, pause 1–5 s). Clients start within the first 10 s; \
         samples every 10 s; the last sample 10 s after the last session ended.\n",
        p.users,
        crate::client::MESSAGES,
        thousands(p.clients as u64),
    );

    // Figures.
    let load_secs = end.t - before.t;
    // The leak check compares floors: the lowest PSS in the minute after
    // the warm-up with the lowest in the load's last minute. A leak raises
    // the floor; a busy spell on the machine (sessions pile up, then drain)
    // raises only peaks, which allocators hand back later.
    let floor = |from: usize, to: usize| {
        s[from..=to.max(from)]
            .iter()
            .map(|x| x.pss_kib)
            .min()
            .unwrap_or(0)
    };
    let window = 6; // samples are 10 s apart: one minute
    let warm_floor = floor(warm_idx, (warm_idx + window - 1).min(r.end));
    let end_floor = floor(r.end.saturating_sub(window - 1).max(warm_idx), r.end);
    let growth_kib = end_floor as f64 - warm_floor as f64;
    let growth_pct = 100.0 * growth_kib / warm_floor.max(1) as f64;
    let minutes = ((end.t - warm.t) / 60.0).max(1e-9);
    let rss_growth_pct =
        100.0 * (end.rss_kib as f64 - warm.rss_kib as f64) / warm.rss_kib.max(1) as f64;
    let slope = pss_slope_kib_per_min(&s[warm_idx..=r.end]);
    let sessions_in_window = end.ended.saturating_sub(warm.ended);
    let leak_1k_pct = 100.0 * sessions_in_window as f64 / warm.pss_kib.max(1) as f64;
    let _ = writeln!(md, "## Figures\n");
    let _ = writeln!(md, "| figure | value |\n|---|---|");
    let _ = writeln!(
        md,
        "| ponte PSS / RSS before the load | {} / {} MiB |",
        mib(before.pss_kib),
        mib(before.rss_kib)
    );
    let _ = writeln!(
        md,
        "| PSS / RSS at {} (end of warm-up) | {} / {} MiB |",
        clock(warm.t),
        mib(warm.pss_kib),
        mib(warm.rss_kib)
    );
    let _ = writeln!(
        md,
        "| PSS / RSS at {} (end of the load) | {} / {} MiB |",
        clock(end.t),
        mib(end.pss_kib),
        mib(end.rss_kib)
    );
    let _ = writeln!(
        md,
        "| PSS floor growth (lowest of a minute) {} → {} | {growth_pct:+.1}% ({:+.0} KiB, {:+.0} KiB/min); RSS {rss_growth_pct:+.1}% |",
        clock(warm.t),
        clock(end.t),
        growth_kib,
        growth_kib / minutes
    );
    let _ = writeln!(
        md,
        "| PSS trend {} → {} (least squares over {} samples) | {slope:+.0} KiB/min |",
        clock(warm.t),
        clock(end.t),
        r.end - warm_idx + 1
    );
    let _ = writeln!(
        md,
        "| PSS / RSS {} s after the load | {} / {} MiB |",
        (after.t - end.t).round(),
        mib(after.pss_kib),
        mib(after.rss_kib)
    );
    let _ = writeln!(
        md,
        "| open fds before / end of load / after | {} / {} / {} |",
        before.fds, end.fds, after.fds
    );
    let _ = writeln!(
        md,
        "| threads before / end of load / after | {} / {} / {} |",
        before.threads, end.threads, after.threads
    );
    let _ = writeln!(
        md,
        "| sessions | {} ({} IMAP, {} IMAPS, {} POP3 completed; {} wrong passwords refused; {} failed) |",
        thousands(total),
        thousands(st.ok(Proto::Imap)),
        thousands(st.ok(Proto::Imaps)),
        thousands(st.ok(Proto::Pop3)),
        thousands(refused),
        thousands(failed),
    );
    let _ = writeln!(
        md,
        "| sessions/s, whole load | {:.1} |",
        end.ended.saturating_sub(before.ended) as f64 / load_secs.max(1e-9)
    );
    let _ = writeln!(
        md,
        "| slowest completed session, IDLE wait excluded | {:.2} s |",
        st.max_work_us.load(Ordering::Relaxed) as f64 / 1e6
    );
    let _ = writeln!(
        md,
        "| the last sessions ended | {:.1} s after the end of the load{} |",
        r.drain_secs,
        if r.overran > 0 {
            format!(", {} clients overran and were aborted", r.overran)
        } else {
            String::new()
        }
    );

    // Time series.
    let _ = writeln!(md, "\n## Time series\n");
    let step = if p.secs >= 300 { 6 } else { 1 };
    let _ = writeln!(
        md,
        "Every {}; sessions/s, ponte CPU and machine busy are over the {} before the row.\n",
        if step == 6 { "minute" } else { "10 s" },
        if step == 6 { "minute" } else { "10 s" },
    );
    let _ = writeln!(
        md,
        "| t | sessions/s | in flight | ponte RSS MiB | ponte PSS MiB | fds | threads | ponte CPU % of a core | machine busy % |\n\
         |---|---|---|---|---|---|---|---|---|"
    );
    let mut rows: Vec<usize> = (r.before..=r.end)
        .filter(|&i| i == r.before || (i - r.before) % step == 0)
        .collect();
    if rows.last() != Some(&r.end) {
        rows.push(r.end);
    }
    rows.push(r.after);
    let mut prev: Option<&Sample> = None;
    for &i in &rows {
        let x = &s[i];
        let label = if i == r.before {
            "before".to_string()
        } else if i == r.after {
            format!("after (+{:.0} s)", x.t - end.t)
        } else {
            clock(x.t)
        };
        let (rate, cpu, busy) = match prev {
            Some(a) => {
                let (r0, c, b) = rates(a, x, r.ticks);
                (format!("{r0:.1}"), format!("{c:.0}"), format!("{b:.0}"))
            }
            None => ("–".into(), "–".into(), "–".into()),
        };
        let _ = writeln!(
            md,
            "| {label} | {rate} | {} | {} | {} | {} | {} | {cpu} | {busy} |",
            x.active,
            mib(x.rss_kib),
            mib(x.pss_kib),
            x.fds,
            x.threads
        );
        prev = Some(x);
    }

    // Errors.
    let refusals = Stats::snapshot(&st.refusals);
    let errors = Stats::snapshot(&st.errors);
    let _ = writeln!(md, "\n## Errors by kind\n");
    let _ = writeln!(md, "| kind | count | verdict |\n|---|---|---|");
    for (k, n) in &refusals {
        let _ = writeln!(
            md,
            "| wrong password refused: {k} | {} | expected |",
            thousands(*n)
        );
    }
    for (k, n) in &errors {
        let _ = writeln!(
            md,
            "| {} | {} | **failure** |",
            k.replace('|', "/"),
            thousands(*n)
        );
    }
    if refusals.is_empty() && errors.is_empty() {
        let _ = writeln!(md, "| none | 0 | |");
    }

    // Checks.
    if after.fds > before.fds + FD_SLACK {
        failures.push(format!(
            "ponte holds {} fds 10 s after the load, {} before it (more than {FD_SLACK} extra: a leak)",
            after.fds, before.fds
        ));
    }
    if growth_pct > MAX_GROWTH_PCT {
        failures.push(format!(
            "ponte's PSS floor grew {growth_pct:.1}% from the minute after {} to the minute before {} (limit {MAX_GROWTH_PCT}%)",
            clock(warm.t),
            clock(end.t)
        ));
    }
    if failed > 0 {
        failures.push(format!(
            "{failed} client sessions failed (other than a refused wrong password)"
        ));
    }
    if r.overran > 0 {
        failures.push(format!("{} clients overran their deadline", r.overran));
    }
    if !r.ponte_alive {
        failures.push("ponte died".into());
    }
    if ok == 0 {
        failures.push("no session completed".into());
    }
    let _ = writeln!(md, "\n## Checks\n");
    let mark = |bad: bool| if bad { "**FAIL**" } else { "pass" };
    let _ = writeln!(md, "| check | limit | result |\n|---|---|---|");
    let _ = writeln!(
        md,
        "| fds 10 s after the load | ≤ before + {FD_SLACK} ({}) | {} ({}) |",
        before.fds + FD_SLACK,
        after.fds,
        mark(after.fds > before.fds + FD_SLACK)
    );
    let _ = writeln!(
        md,
        "| PSS floor growth {} → {} | ≤ {MAX_GROWTH_PCT}% | {growth_pct:+.1}% ({}) |",
        clock(warm.t),
        clock(end.t),
        mark(growth_pct > MAX_GROWTH_PCT)
    );
    let _ = writeln!(
        md,
        "| client sessions failed | 0 | {} ({}) |",
        failed,
        mark(failed > 0)
    );
    let _ = writeln!(
        md,
        "| ponte alive to the end, clients within their deadline | yes | {} ({}) |",
        if r.ponte_alive && r.overran == 0 {
            "yes"
        } else {
            "no"
        },
        mark(!r.ponte_alive || r.overran > 0)
    );
    let _ = writeln!(
        md,
        "\nWhy {MAX_GROWTH_PCT}%: from the end of the warm-up on, the number of sessions in \
         flight is steady, so ponte's memory should be flat apart from allocator noise \
         (a few %). A leak of 1 KiB per session would add {} KiB here ({} sessions ended \
         between {} and {}), {leak_1k_pct:.0}% of the PSS at {}: the limit catches a leak \
         of about {:.2} KiB per session or more, and a slower one shows in the trend line.",
        thousands(sessions_in_window),
        thousands(sessions_in_window),
        clock(warm.t),
        clock(end.t),
        clock(warm.t),
        MAX_GROWTH_PCT / leak_1k_pct.max(1e-9),
    );
    let _ = writeln!(
        md,
        "\n**{}**",
        if failures.is_empty() {
            "PASS".to_string()
        } else {
            format!("FAIL: {}", failures.join("; "))
        }
    );

    // ponte's own complaints.
    let warn: Vec<&str> = r
        .ponte_log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    let _ = writeln!(
        md,
        "\nponte's log (`RUST_LOG=warn`): {} warning or error lines{}",
        warn.len(),
        if warn.is_empty() {
            ".".to_string()
        } else {
            let mut t = String::from("; the first:\n\n```\n");
            for l in warn.iter().take(10) {
                let mut l = l.to_string();
                l.truncate(300);
                t.push_str(&l);
                t.push('\n');
            }
            t.push_str("```");
            t
        }
    );
    Report {
        markdown: md,
        failures,
    }
}

fn command_line(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

fn git_commit() -> String {
    let dir = env!("CARGO_MANIFEST_DIR");
    let head = command_line("git", &["-C", dir, "rev-parse", "--short", "HEAD"]);
    let dirty = command_line(
        "git",
        &["-C", dir, "status", "--porcelain", "--untracked-files=no"],
    );
    if dirty == "unknown" {
        head
    } else {
        format!("{head} (with uncommitted changes)")
    }
}

fn dovecot_version() -> String {
    let v = command_line("dovecot", &["--version"]);
    let v = if v == "unknown" {
        command_line("/usr/sbin/dovecot", &["--version"])
    } else {
        v
    };
    format!("Dovecot {v}")
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                Some(
                    l.strip_prefix("model name")?
                        .split(':')
                        .nth(1)?
                        .trim()
                        .to_string(),
                )
            })
        })
        .unwrap_or_else(|| "unknown CPU".into())
}
