//! The dashboard's time series: every `interval`, the sessions open and
//! the logins (ok, failed) since the previous sample, in a ring buffer
//! holding [`SPAN`] (bounded to [`MAX_SAMPLES`] for short intervals).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::control::Control;
use crate::route::now_unix;

/// How far back the charts go.
pub const SPAN: Duration = Duration::from_secs(6 * 3600);
/// Most samples kept, whatever the interval.
pub const MAX_SAMPLES: usize = 4320;

/// One sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Unix seconds.
    pub at: i64,
    pub sessions: u64,
    pub logins_ok: u64,
    pub logins_failed: u64,
}

pub struct History {
    pub interval: Duration,
    capacity: usize,
    inner: Mutex<Inner>,
}

struct Inner {
    samples: VecDeque<Sample>,
    /// Login totals at the previous sample.
    last: (u64, u64),
}

impl History {
    pub fn new(interval: Duration) -> History {
        let per_span = SPAN.as_secs() / interval.as_secs().max(1);
        let capacity = usize::try_from(per_span)
            .unwrap_or(MAX_SAMPLES)
            .clamp(2, MAX_SAMPLES);
        History {
            interval,
            capacity,
            inner: Mutex::new(Inner {
                samples: VecDeque::with_capacity(capacity),
                last: (0, 0),
            }),
        }
    }

    /// Adds a sample from the session count and the login totals since start.
    pub fn record(&self, at: i64, sessions: u64, logins: (u64, u64)) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (ok, failed) = logins;
        let sample = Sample {
            at,
            sessions,
            logins_ok: ok.saturating_sub(inner.last.0),
            logins_failed: failed.saturating_sub(inner.last.1),
        };
        inner.last = logins;
        if inner.samples.len() == self.capacity {
            inner.samples.pop_front();
        }
        inner.samples.push_back(sample);
    }

    /// The samples, oldest first.
    pub fn samples(&self) -> Vec<Sample> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.samples.iter().copied().collect()
    }

    /// Samples until `stop`. The login totals at start are the baseline,
    /// so the first sample counts only its own interval.
    pub async fn run(self: Arc<Self>, control: Arc<Control>, stop: CancellationToken) {
        {
            let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            inner.last = control.ctx().observed.logins();
        }
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {
                    let ctx = control.ctx();
                    self.record(now_unix(), ctx.registry.len() as u64, ctx.observed.logins());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_six_hours_of_interval_counts() {
        let h = History::new(Duration::from_secs(60));
        assert_eq!(h.capacity, 360);
        h.record(60, 3, (10, 2));
        h.record(120, 4, (15, 2));
        let s = h.samples();
        assert_eq!(
            (s[1].sessions, s[1].logins_ok, s[1].logins_failed),
            (4, 5, 0)
        );
        for i in 0..400 {
            h.record(180 + i, 1, (15, 2));
        }
        assert_eq!(h.samples().len(), 360);
        assert_eq!(History::new(Duration::from_secs(1)).capacity, MAX_SAMPLES);
    }
}
