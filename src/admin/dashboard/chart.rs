//! Inline SVG charts drawn on the server (no chart library, no script):
//! sessions open as a line, logins per interval as bars (ok above the
//! axis, failed in a second colour stacked on them).

use std::fmt::Write as _;

use super::history::Sample;
use super::html::{esc, number};

const W: f64 = 600.0;
const H: f64 = 140.0;
/// Room on the left for the scale's labels.
const LEFT: f64 = 44.0;
const TOP: f64 = 8.0;
const BOTTOM: f64 = 20.0;

/// Both charts, or a note while there are fewer than two samples.
pub fn charts(samples: &[Sample], interval_secs: u64) -> String {
    if samples.len() < 2 {
        return format!(
            "<p class=\"muted\">Not enough data yet: one sample every {}.</p>",
            esc(&super::html::duration(interval_secs as i64))
        );
    }
    let span = samples[samples.len() - 1].at - samples[0].at;
    let caption = format!(
        "last {}, one point every {}",
        super::html::duration(span),
        super::html::duration(interval_secs as i64)
    );
    let mut out = String::new();
    out.push_str(&sessions_chart(samples, &caption));
    out.push_str(&logins_chart(samples, &caption));
    out
}

/// The y of `v` on a scale of 0..=`max`.
fn y(v: u64, max: u64) -> f64 {
    TOP + (H - TOP - BOTTOM) * (1.0 - v as f64 / max.max(1) as f64)
}

/// The x of sample `i` of `n`.
fn x(i: usize, n: usize) -> f64 {
    LEFT + (W - LEFT - 4.0) * i as f64 / (n.max(2) - 1) as f64
}

fn frame(out: &mut String, title: &str, desc: &str, max: u64, caption: &str) {
    let _ = write!(
        out,
        "<figure class=\"chart\"><svg viewBox=\"0 0 {W} {H}\" role=\"img\" aria-labelledby=\"t-{id} d-{id}\">\
         <title id=\"t-{id}\">{t}</title><desc id=\"d-{id}\">{d}</desc>\
         <line x1=\"{LEFT}\" y1=\"{base}\" x2=\"{W}\" y2=\"{base}\" class=\"axis\"/>\
         <line x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{W}\" y2=\"{TOP}\" class=\"grid\"/>\
         <text x=\"{lx}\" y=\"{ty}\" class=\"scale\">{max}</text>\
         <text x=\"{lx}\" y=\"{base}\" class=\"scale\">0</text>",
        id = title.split_whitespace().next().unwrap_or("c").to_ascii_lowercase(),
        t = esc(title),
        d = esc(desc),
        base = H - BOTTOM,
        lx = LEFT - 6.0,
        ty = TOP + 4.0,
        max = number(max),
    );
    let _ = write!(
        out,
        "<text x=\"{LEFT}\" y=\"{}\" class=\"caption\">{}</text>",
        H - 4.0,
        esc(caption)
    );
}

fn sessions_chart(samples: &[Sample], caption: &str) -> String {
    let max = samples.iter().map(|s| s.sessions).max().unwrap_or(0).max(1);
    let last = samples.last().map_or(0, |s| s.sessions);
    let mut out = String::new();
    frame(
        &mut out,
        "Sessions open",
        &format!(
            "{} now, at most {} in the period",
            number(last),
            number(max)
        ),
        max,
        caption,
    );
    let n = samples.len();
    let points: Vec<String> = samples
        .iter()
        .enumerate()
        .map(|(i, s)| format!("{:.1},{:.1}", x(i, n), y(s.sessions, max)))
        .collect();
    let _ = write!(
        out,
        "<polyline class=\"line\" points=\"{}\"/></svg><figcaption>Sessions open: {} now</figcaption></figure>",
        points.join(" "),
        number(last)
    );
    out
}

fn logins_chart(samples: &[Sample], caption: &str) -> String {
    let max = samples
        .iter()
        .map(|s| s.logins_ok + s.logins_failed)
        .max()
        .unwrap_or(0)
        .max(1);
    let (ok, failed) = samples
        .iter()
        .fold((0, 0), |(o, f), s| (o + s.logins_ok, f + s.logins_failed));
    let mut out = String::new();
    frame(
        &mut out,
        "Logins per interval",
        &format!(
            "{} ok and {} failed in the period",
            number(ok),
            number(failed)
        ),
        max,
        caption,
    );
    let n = samples.len();
    let width = ((W - LEFT - 4.0) / n as f64 * 0.8).max(0.5);
    for (i, s) in samples.iter().enumerate() {
        let left = x(i, n) - width / 2.0;
        let top_ok = y(s.logins_ok, max);
        let top_all = y(s.logins_ok + s.logins_failed, max);
        let base = H - BOTTOM;
        if s.logins_ok > 0 {
            let _ = write!(
                out,
                "<rect class=\"ok\" x=\"{left:.1}\" y=\"{top_ok:.1}\" width=\"{width:.1}\" height=\"{:.1}\"/>",
                base - top_ok
            );
        }
        if s.logins_failed > 0 {
            let _ = write!(
                out,
                "<rect class=\"failed\" x=\"{left:.1}\" y=\"{top_all:.1}\" width=\"{width:.1}\" height=\"{:.1}\"/>",
                top_ok - top_all
            );
        }
    }
    let _ = write!(
        out,
        "</svg><figcaption>Logins: <span class=\"key-ok\">{} ok</span>, <span class=\"key-failed\">{} failed</span></figcaption></figure>",
        number(ok),
        number(failed)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_a_line_and_bars_from_samples() {
        let s = |at, sessions, ok, failed| Sample {
            at,
            sessions,
            logins_ok: ok,
            logins_failed: failed,
        };
        assert!(charts(&[s(0, 1, 1, 0)], 60).contains("Not enough data"));
        let svg = charts(&[s(0, 1, 2, 0), s(60, 3, 1, 1), s(120, 2, 0, 0)], 60);
        assert!(svg.contains("<polyline"));
        assert_eq!(svg.matches("class=\"ok\"").count(), 2);
        assert_eq!(svg.matches("class=\"failed\"").count(), 1);
        assert!(svg.contains("Sessions open: 2 now"));
    }
}
