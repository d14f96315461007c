//! The live data path after login: bytes both ways, unchanged, until one
//! side closes, the session sits idle too long, an admin kicks it (route
//! change) or the server shuts down. Protocol-agnostic: the caller writes
//! its protocol's goodbye when the bridge returns.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

/// Why the bridge stopped.
#[derive(Debug)]
pub enum End {
    /// One side closed and the other finished.
    Closed,
    /// No byte either way for the idle timeout.
    Idle,
    /// The session was told to go (route change).
    Kicked,
    /// Server shutdown, after the grace period.
    Shutdown,
    Error(io::Error),
}

/// Bytes each way and why it ended.
#[derive(Debug)]
pub struct Spliced {
    pub up: u64,
    pub down: u64,
    pub end: End,
}

/// What may stop a bridge from outside.
pub struct Stops<'a> {
    pub kick: &'a CancellationToken,
    pub shutdown: &'a CancellationToken,
    pub idle: Duration,
}

// Big enough for large FETCH responses to move in few syscalls.
const BUF_SIZE: usize = 64 * 1024;

/// Copies both ways until the end; see [`End`].
pub async fn splice<C, B>(client: &mut C, backend: &mut B, stops: Stops<'_>) -> Spliced
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
    let end = {
        let mut c = Counted {
            inner: client,
            n: &up,
        };
        let mut b = Counted {
            inner: backend,
            n: &down,
        };
        let copy = tokio::io::copy_bidirectional_with_sizes(&mut c, &mut b, BUF_SIZE, BUF_SIZE);
        tokio::select! {
            r = copy => match r {
                Ok(_) => End::Closed,
                Err(e) => End::Error(e),
            },
            _ = stops.kick.cancelled() => End::Kicked,
            _ = stops.shutdown.cancelled() => End::Shutdown,
            _ = watch_idle(&up, &down, stops.idle) => End::Idle,
        }
    };
    Spliced {
        up: up.load(Ordering::Relaxed),
        down: down.load(Ordering::Relaxed),
        end,
    }
}

/// Returns once a whole `idle` period passes with no byte either way.
async fn watch_idle(up: &AtomicU64, down: &AtomicU64, idle: Duration) {
    let mut last = (u64::MAX, u64::MAX);
    loop {
        let now = (up.load(Ordering::Relaxed), down.load(Ordering::Relaxed));
        if now == last {
            return;
        }
        last = now;
        tokio::time::sleep(idle).await;
    }
}

/// Counts the bytes read from `inner`.
struct Counted<'a, S> {
    inner: &'a mut S,
    n: &'a AtomicU64,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut *self.inner).poll_read(cx, buf);
        let read = (buf.filled().len() - before) as u64;
        self.n.fetch_add(read, Ordering::Relaxed);
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn idle_session_ends_after_the_timeout_only() {
        let (mut client, mut proxy_c) = tokio::io::duplex(1024);
        let (mut proxy_b, mut backend) = tokio::io::duplex(1024);
        let kick = CancellationToken::new();
        let shutdown = CancellationToken::new();
        let bridge = tokio::spawn(async move {
            let stops = Stops {
                kick: &kick,
                shutdown: &shutdown,
                idle: Duration::from_secs(1800),
            };
            splice(&mut proxy_c, &mut proxy_b, stops).await
        });
        // Activity every 20 minutes keeps it open past 30 minutes.
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(1200)).await;
            client.write_all(b"a NOOP\r\n").await.unwrap();
            let mut buf = [0u8; 8];
            backend.read_exact(&mut buf).await.unwrap();
        }
        assert!(!bridge.is_finished());
        let done = bridge.await.unwrap();
        assert!(matches!(done.end, End::Idle));
        assert_eq!(done.up, 24);
    }
}
