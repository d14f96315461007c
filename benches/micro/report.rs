//! The report: criterion's median estimate of every benchmark turned into
//! the figure that matters for it (MiB/s, commands/s, ns per lookup),
//! with the machine and how busy it was, written to
//! `benches/results/micro.md`.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// What one iteration of a benchmark processes.
#[derive(Clone, Copy)]
pub enum Per {
    /// This many bytes: reported as MiB/s (criterion's `Throughput::Bytes`).
    Bytes(u64),
    /// This many items of the named kind: reported as items/s and ns each.
    Items(u64, &'static str),
    /// One operation of the named kind: reported as ns each.
    Op(&'static str),
}

/// A benchmark as criterion names it (`group/id`) and what it is.
pub struct Entry {
    pub group: &'static str,
    pub id: &'static str,
    pub what: String,
    pub per: Per,
}

/// The whole machine's busy and total clock ticks (`cpu` line of
/// /proc/stat; idle and iowait count as not busy) and this process's
/// own CPU ticks, at one moment.
#[derive(Clone, Copy)]
pub struct Ticks {
    busy: u64,
    total: u64,
    own: u64,
}

impl Ticks {
    pub fn now() -> Ticks {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let cpu: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .take(8) // user nice system idle iowait irq softirq steal
            .filter_map(|x| x.parse().ok())
            .collect();
        let total: u64 = cpu.iter().sum();
        let idle = cpu.get(3).unwrap_or(&0) + cpu.get(4).unwrap_or(&0);
        // utime and stime: fields 14 and 15, counted after the `(comm)`.
        let own = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| {
                let f: Vec<u64> = s[s.rfind(')')? + 1..]
                    .split_whitespace()
                    .skip(11)
                    .take(2)
                    .filter_map(|x| x.parse().ok())
                    .collect();
                Some(f.iter().sum())
            })
            .unwrap_or(0);
        Ticks {
            busy: total.saturating_sub(idle),
            total,
            own,
        }
    }
}

/// The machine before the run.
pub struct Machine {
    pub cores: usize,
    pub cpu: String,
    pub load_before: String,
    pub started: SystemTime,
    pub ticks: Ticks,
}

impl Machine {
    pub fn now() -> Machine {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown CPU".into());
        Machine {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu,
            load_before: loadavg(),
            started: SystemTime::now(),
            ticks: Ticks::now(),
        }
    }
}

/// `/proc/loadavg`'s first three fields.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Where criterion keeps its results, found as criterion finds it
/// (`CRITERION_HOME`, else `$CARGO_TARGET_DIR/criterion`, else the
/// package's `target/criterion`).
fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(target).join("criterion");
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/criterion")
}

/// Median ns per iteration and its 95% confidence interval, if this run
/// measured the benchmark (an older file, from a filtered or `--test`
/// run, does not count).
fn estimate(e: &Entry, since: SystemTime) -> Option<(f64, f64, f64)> {
    let file = criterion_dir()
        .join(e.group)
        .join(e.id)
        .join("new/estimates.json");
    let modified = std::fs::metadata(&file).ok()?.modified().ok()?;
    if modified < since {
        return None;
    }
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).ok()?).ok()?;
    let median = &json["median"];
    let ci = &median["confidence_interval"];
    Some((
        median["point_estimate"].as_f64()?,
        ci["lower_bound"].as_f64()?,
        ci["upper_bound"].as_f64()?,
    ))
}

/// `x` rounded to `digits` decimals, with thousands separated by commas.
fn num(x: f64, digits: usize) -> String {
    let text = format!("{x:.digits$}");
    let (int, frac) = text.split_once('.').unwrap_or((&text, ""));
    let mut out = String::new();
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if !frac.is_empty() {
        out.push('.');
        out.push_str(frac);
    }
    out
}

/// The figure, its 95% range and unit for `ns` per iteration.
fn figure(per: Per, ns: f64, lo: f64, hi: f64) -> (String, String, String) {
    let mib = |b: u64, t: f64| b as f64 / (t * 1e-9) / f64::from(1 << 20);
    let rate = |n: u64, t: f64| n as f64 / (t * 1e-9);
    match per {
        Per::Bytes(b) => (
            num(mib(b, ns), 0),
            format!("{}–{}", num(mib(b, hi), 0), num(mib(b, lo), 0)),
            "MiB/s".into(),
        ),
        Per::Items(n, kind) => (
            num(rate(n, ns), 0),
            format!("{}–{}", num(rate(n, hi), 0), num(rate(n, lo), 0)),
            format!("{kind}/s ({} ns each)", num(ns / n as f64, 0)),
        ),
        Per::Op(kind) => {
            let (scale, unit) = match ns {
                t if t >= 1e7 => (1e6, "ms"),
                t if t >= 1e4 => (1e3, "µs"),
                _ => (1.0, "ns"),
            };
            (
                num(ns / scale, 0),
                format!("{}–{}", num(lo / scale, 0), num(hi / scale, 0)),
                format!("{unit} per {kind}"),
            )
        }
    }
}

/// Prints the table and writes it with `notes` to `benches/results/micro.md`,
/// if every benchmark was measured in this run (a filtered run only prints).
pub fn write(entries: &[Entry], machine: &Machine, notes: &[String]) {
    let end = Ticks::now();
    let total = end.total.saturating_sub(machine.ticks.total).max(1) as f64;
    let busy = end.busy.saturating_sub(machine.ticks.busy) as f64;
    let own = end.own.saturating_sub(machine.ticks.own) as f64;
    let others = (busy - own).max(0.0) / total * machine.cores as f64;
    let secs = machine.started.elapsed().map_or(0.0, |d| d.as_secs_f64());

    let mut rows = Vec::new();
    let mut missing = Vec::new();
    for e in entries {
        match estimate(e, machine.started) {
            Some((ns, lo, hi)) => {
                let (fig, range, unit) = figure(e.per, ns, lo, hi);
                rows.push(format!(
                    "| `{}/{}` | {} | **{fig}** | {range} | {unit} |",
                    e.group, e.id, e.what
                ));
            }
            None => missing.push(format!("{}/{}", e.group, e.id)),
        }
    }
    let mut md = String::new();
    md.push_str("# micro: criterion micro-benchmarks of ponte's hot paths\n\n");
    md.push_str(&format!(
        "`cargo bench --bench micro`, {} ({}), {} cores, single-threaded \
         benchmarks. Load average before the run {}, after {}. Other processes \
         used **{others:.2} cores** on average during the run (/proc/stat busy \
         time less the bench's own CPU). Whole run {secs:.0} s.\n\n",
        time::OffsetDateTime::from(machine.started)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        machine.cpu,
        machine.cores,
        machine.load_before,
        loadavg(),
    ));
    md.push_str("| bench | what one iteration does | figure | 95% CI | unit |\n");
    md.push_str("|---|---|---:|---:|---|\n");
    for r in &rows {
        md.push_str(r);
        md.push('\n');
    }
    md.push_str(
        "\nFigure: from criterion's median time per iteration (the CI is the \
         median's 95% bootstrap interval). MiB = 2^20 bytes, as criterion prints \
         for `Throughput::Bytes`.\n\n",
    );
    for n in notes {
        md.push_str(&format!("- {n}\n"));
    }
    if rows.is_empty() {
        println!(
            "micro: nothing measured in this run (--test, --list or a filter that matched none)"
        );
        return;
    }
    println!("\n{md}");
    if !missing.is_empty() {
        println!(
            "micro: not measured in this run ({}): benches/results/micro.md left as it was",
            missing.join(", ")
        );
        return;
    }
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/results/micro.md");
    match std::fs::write(&out, md) {
        Ok(()) => println!("micro: wrote {}", out.display()),
        Err(e) => eprintln!("micro: cannot write {}: {e}", out.display()),
    }
}
