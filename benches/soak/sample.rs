//! What the soak samples every 10 s: ponte's memory (RSS and PSS from
//! /proc/<pid>/smaps_rollup), open file descriptors (/proc/<pid>/fd),
//! threads (/proc/<pid>/status), its CPU and the machine's, and the
//! sessions the clients completed.

use std::sync::atomic::Ordering;

use crate::client::Stats;
use crate::procs;

#[derive(Clone, Debug)]
pub struct Sample {
    /// Seconds since the load started (negative: before it).
    pub t: f64,
    pub rss_kib: u64,
    pub pss_kib: u64,
    pub fds: u64,
    pub threads: u64,
    /// ponte's utime + stime, clock ticks.
    pub cpu_ticks: u64,
    /// The machine's busy and total ticks.
    pub machine: (u64, u64),
    /// Sessions ended so far (all kinds) and in progress.
    pub ended: u64,
    pub active: u64,
}

/// `Rss:` and `Pss:` of /proc/<pid>/smaps_rollup, KiB.
fn rollup(pid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let field = |name: &str| {
        text.lines().find_map(|l| {
            l.strip_prefix(name)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse::<u64>()
                .ok()
        })
    };
    Some((field("Rss:")?, field("Pss:")?))
}

fn threads(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("Threads:")?.trim().parse().ok())
}

fn fds(pid: u32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

/// One sample of `pid`; `None` if the process is gone.
pub fn take(pid: u32, t: f64, stats: &Stats) -> Option<Sample> {
    let (rss_kib, pss_kib) = rollup(pid)?;
    Some(Sample {
        t,
        rss_kib,
        pss_kib,
        fds: fds(pid)?,
        threads: threads(pid)?,
        cpu_ticks: procs::proc_stat(pid)?.2,
        machine: procs::machine_ticks(),
        ended: stats.ended(),
        active: stats.active.load(Ordering::Relaxed),
    })
}

/// Least-squares slope of PSS over time, KiB per minute.
pub fn pss_slope_kib_per_min(samples: &[Sample]) -> f64 {
    let n = samples.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let mt = samples.iter().map(|s| s.t).sum::<f64>() / n;
    let mp = samples.iter().map(|s| s.pss_kib as f64).sum::<f64>() / n;
    let (mut num, mut den) = (0.0, 0.0);
    for s in samples {
        num += (s.t - mt) * (s.pss_kib as f64 - mp);
        den += (s.t - mt) * (s.t - mt);
    }
    if den == 0.0 {
        0.0
    } else {
        num / den * 60.0
    }
}
