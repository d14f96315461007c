//! The live data path after login: bytes both ways, unchanged, until one
//! side closes, the session sits idle too long, an admin kicks it (route
//! change) or the server shuts down. Protocol-agnostic: the caller writes
//! its protocol's goodbye when the bridge returns.
//!
//! Memory: reads land in one scratch buffer per worker thread and are
//! written on at once, so an idle session holds no read buffer. Only bytes
//! a slow destination cannot take yet are copied into the direction's own
//! buffer, which is released as soon as it drains. Between two plain
//! sockets, the body of a large literal moves by splice(2) and never
//! enters user space at all ([`super::zerocopy`]).

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::stream::PlainSocket;
use super::zerocopy::Pipe;

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
    /// The session's time is up (a tempmail view past its deadline).
    Expired,
    Error(io::Error),
}

/// Bytes each way and why it ended.
#[derive(Debug)]
pub struct Spliced {
    pub up: u64,
    pub down: u64,
    pub end: End,
    /// The client's stream stands between two backend messages, so the
    /// caller may write a goodbye of its own.
    pub at_boundary: bool,
}

/// Where the backend-to-client stream may take a message of the proxy's
/// own; the protocol knows (e.g. not inside an IMAP literal).
pub trait Boundary: Send {
    /// Sees every byte going to the client, in order.
    fn observe(&mut self, bytes: &[u8]);
    fn at_boundary(&self) -> bool;
    /// False for a protocol with no line of its own to send (POP3): a
    /// stopped bridge then closes at once instead of draining.
    fn reachable(&self) -> bool {
        true
    }
    /// How many of the next bytes need not be seen (the rest of a literal
    /// whose length is known): the bridge may move them without reading
    /// them into memory, and then reports them with [`Boundary::skipped`].
    fn opaque_ahead(&self) -> u64 {
        0
    }
    /// `n` of the opaque bytes went by unseen.
    fn skipped(&mut self, _n: u64) {}
}

/// How long a stopped bridge may go on relaying to reach a boundary.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// What may stop a bridge from outside.
pub struct Stops<'a> {
    pub kick: &'a CancellationToken,
    pub shutdown: &'a CancellationToken,
    pub idle: Duration,
    /// When the session must end whatever it is doing, if ever.
    pub until: Option<Instant>,
}

impl Stops<'_> {
    /// Resolves at `until` (never if there is none).
    pub async fn expired(&self) {
        match self.until {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    }

    /// Resolves when the session is told to stop from outside (kick,
    /// shutdown, deadline), with the reason.
    pub async fn stopped(&self) -> End {
        tokio::select! {
            _ = self.kick.cancelled() => End::Kicked,
            _ = self.shutdown.cancelled() => End::Shutdown,
            _ = self.expired() => End::Expired,
        }
    }
}

/// Copies both ways until the end; see [`End`]. On a stop from outside,
/// it relays the backend's current message to its end (up to a limit)
/// before returning, so that the caller can say goodbye cleanly.
pub async fn splice<C, B>(
    client: &mut C,
    backend: &mut B,
    stops: Stops<'_>,
    boundary: &mut dyn Boundary,
) -> Spliced
where
    C: AsyncRead + AsyncWrite + PlainSocket + Unpin,
    B: AsyncRead + AsyncWrite + PlainSocket + Unpin,
{
    let clock = Clock::new();
    let mut up = Direction::default();
    let mut down = Direction::default();
    let end = {
        let copy = std::future::poll_fn(|cx| {
            let u = up.poll_copy(cx, &mut *client, &mut *backend, &clock, None);
            let d = down.poll_copy(
                cx,
                &mut *backend,
                &mut *client,
                &clock,
                Some(&mut *boundary),
            );
            match (u, d) {
                (Poll::Ready(Err(e)), _) | (_, Poll::Ready(Err(e))) => Poll::Ready(Err(e)),
                // The backend is done (e.g. after LOGOUT): nothing more can
                // reach the client, whatever the client still sends.
                (_, Poll::Ready(Ok(()))) => Poll::Ready(Ok(())),
                _ => Poll::Pending,
            }
        });
        tokio::select! {
            r = copy => match r {
                Ok(()) => End::Closed,
                Err(e) => End::Error(e),
            },
            _ = stops.kick.cancelled() => End::Kicked,
                        _ = stops.shutdown.cancelled() => End::Shutdown,
            _ = stops.expired() => End::Expired,
            _ = clock.idle_for(stops.idle) => End::Idle,
        }
    };
    let at_boundary = match end {
        End::Kicked | End::Shutdown | End::Idle | End::Expired if boundary.reachable() => {
            let drain = std::future::poll_fn(|cx| {
                down.poll_drain(cx, &mut *backend, &mut *client, &mut *boundary)
            });
            matches!(tokio::time::timeout(DRAIN_LIMIT, drain).await, Ok(Ok(())))
        }
        _ => false,
    };
    Spliced {
        up: up.bytes,
        down: down.bytes,
        end,
        at_boundary,
    }
}

// Large enough that a big FETCH moves in few syscalls (and whole TLS
// records): a backend that outruns its client leaves far more than 64 KiB
// queued on loopback, and each read then takes 256 KiB at once. One per
// worker thread, so its size does not grow with the sessions.
const SCRATCH_SIZE: usize = 256 * 1024;

// Below this, a literal is copied like any other bytes: a pipe's two
// syscalls to make and close are not worth it.
const SPLICE_MIN: u64 = 64 * 1024;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; SCRATCH_SIZE].into_boxed_slice());
}

#[derive(Default)]
enum Phase {
    #[default]
    Copying,
    ShuttingDown,
    Done,
}

/// One direction of the copy.
#[derive(Default)]
struct Direction {
    phase: Phase,
    /// Bytes read but not yet taken by the writer (backpressure only).
    pending: Vec<u8>,
    written: usize,
    needs_flush: bool,
    bytes: u64,
    /// Only while a large literal moves between two plain sockets.
    pipe: Option<Pipe>,
    /// splice(2) failed as unsupported here: copy from now on.
    no_splice: bool,
}

impl Direction {
    fn poll_copy<'b, R, W>(
        &mut self,
        cx: &mut Context<'_>,
        r: &mut R,
        w: &mut W,
        clock: &Clock,
        mut boundary: Option<&mut (dyn Boundary + 'b)>,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + PlainSocket + Unpin,
        W: AsyncWrite + PlainSocket + Unpin,
    {
        loop {
            match self.phase {
                Phase::Copying => {
                    // Read nothing more while the writer is backed up.
                    ready!(self.poll_pending(cx, w))?;
                    match self.poll_move(cx, r, w, boundary.as_deref_mut()) {
                        Poll::Ready(Ok(0)) => self.phase = Phase::ShuttingDown,
                        Poll::Ready(Ok(n)) => {
                            self.bytes += n as u64;
                            self.needs_flush = true;
                            clock.touch();
                        }
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => {
                            if self.needs_flush {
                                ready!(Pin::new(&mut *w).poll_flush(cx))?;
                                self.needs_flush = false;
                            }
                            return Poll::Pending;
                        }
                    }
                }
                Phase::ShuttingDown => {
                    ready!(self.poll_pending(cx, w))?;
                    ready!(Pin::new(&mut *w).poll_shutdown(cx))?;
                    self.phase = Phase::Done;
                }
                Phase::Done => return Poll::Ready(Ok(())),
            }
        }
    }

    /// Relays until the stream stands at a boundary, all of it written and
    /// flushed. An end of stream before that is an error: no boundary.
    fn poll_drain<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        r: &mut R,
        w: &mut W,
        boundary: &mut dyn Boundary,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + PlainSocket + Unpin,
        W: AsyncWrite + PlainSocket + Unpin,
    {
        if !matches!(self.phase, Phase::Copying) {
            return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
        }
        loop {
            ready!(self.poll_pending(cx, w))?;
            if boundary.at_boundary() {
                return Pin::new(&mut *w).poll_flush(cx);
            }
            match ready!(self.poll_move(cx, r, w, Some(&mut *boundary)))? {
                0 => return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into())),
                n => self.bytes += n as u64,
            }
        }
    }

    /// Writes what an earlier round could not; releases the buffer once empty.
    fn poll_pending<W: AsyncWrite + PlainSocket + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        w: &mut W,
    ) -> Poll<io::Result<()>> {
        // A pipe exists only between two plain sockets.
        if let (Some(pipe), Some(to)) = (self.pipe.as_mut(), w.plain_socket()) {
            ready!(pipe.poll_drain(cx, to))?;
        }
        while self.written < self.pending.len() {
            let n = ready!(Pin::new(&mut *w).poll_write(cx, &self.pending[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        if !self.pending.is_empty() {
            self.pending = Vec::new();
            self.written = 0;
        }
        Poll::Ready(Ok(()))
    }

    /// Moves the next bytes on: by splice(2) when they are the body of a
    /// large literal and both sides are plain sockets, else through the
    /// scratch buffer. Returns the bytes read (0 at end of stream).
    fn poll_move<'b, R, W>(
        &mut self,
        cx: &mut Context<'_>,
        r: &mut R,
        w: &mut W,
        boundary: Option<&mut (dyn Boundary + 'b)>,
    ) -> Poll<io::Result<usize>>
    where
        R: AsyncRead + PlainSocket + Unpin,
        W: AsyncWrite + PlainSocket + Unpin,
    {
        let opaque = boundary.as_ref().map_or(0, |b| b.opaque_ahead());
        if let (true, false, Some(from), Some(to)) = (
            opaque >= SPLICE_MIN,
            self.no_splice,
            r.plain_socket(),
            w.plain_socket(),
        ) {
            if self.pipe.is_none() {
                // Out of descriptors, say: copying still works.
                self.pipe = Pipe::new().ok();
            }
            if let Some(pipe) = self.pipe.as_mut() {
                let n = match ready!(pipe.poll_fill(cx, from, opaque as usize)) {
                    Ok(n) => n,
                    // Nothing has moved yet: copying takes over.
                    Err(e) if Pipe::unsupported(&e) => {
                        self.no_splice = true;
                        self.pipe = None;
                        return self.poll_read_through(cx, r, w, boundary);
                    }
                    Err(e) => return Poll::Ready(Err(e)),
                };
                if let Some(b) = boundary {
                    b.skipped(n as u64);
                }
                // On at once, like the copy path; what the socket does not
                // take now goes before the next read (`poll_pending`).
                if let Poll::Ready(Err(e)) = pipe.poll_drain(cx, to) {
                    return Poll::Ready(Err(e));
                }
                return Poll::Ready(Ok(n));
            }
        }
        if self.pipe.as_ref().is_some_and(|p| p.held() == 0) {
            self.pipe = None;
        }
        self.poll_read_through(cx, r, w, boundary)
    }

    /// Reads once into the thread's scratch buffer and writes it on at
    /// once; what the writer does not take is kept in `pending`. Returns
    /// the bytes read (0 at end of stream).
    fn poll_read_through<'b, R, W>(
        &mut self,
        cx: &mut Context<'_>,
        r: &mut R,
        w: &mut W,
        boundary: Option<&mut (dyn Boundary + 'b)>,
    ) -> Poll<io::Result<usize>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        SCRATCH.with_borrow_mut(|buf| {
            let mut rb = ReadBuf::new(buf);
            ready!(Pin::new(&mut *r).poll_read(cx, &mut rb))?;
            let n = rb.filled().len();
            if let Some(b) = boundary {
                b.observe(&buf[..n]);
            }
            let mut off = 0;
            while off < n {
                match Pin::new(&mut *w).poll_write(cx, &buf[off..n]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(k)) => off += k,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        self.pending.extend_from_slice(&buf[off..n]);
                        break;
                    }
                }
            }
            Poll::Ready(Ok(n))
        })
    }
}

/// When bytes last moved, for the idle timeout: a timestamp per chunk is
/// cheaper than re-arming a timer per chunk.
struct Clock {
    start: Instant,
    last_ms: AtomicU64,
}

impl Clock {
    fn new() -> Clock {
        Clock {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Resolves once `idle` passes with no byte either way.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let last = self.last_ms.load(Ordering::Relaxed);
            tokio::time::sleep_until(self.start + Duration::from_millis(last) + idle).await;
            if self.last_ms.load(Ordering::Relaxed) == last {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::imap::boundary::ResponseBoundary;
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
                until: None,
            };
            splice(
                &mut proxy_c,
                &mut proxy_b,
                stops,
                &mut ResponseBoundary::default(),
            )
            .await
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

    #[tokio::test]
    async fn moves_large_transfers_both_ways_under_backpressure() {
        // Small pipes force partial writes and the pending path.
        let (client, mut proxy_c) = tokio::io::duplex(512);
        let (mut proxy_b, backend) = tokio::io::duplex(700);
        let kick = CancellationToken::new();
        let shutdown = CancellationToken::new();
        let bridge = tokio::spawn(async move {
            let stops = Stops {
                kick: &kick,
                shutdown: &shutdown,
                idle: Duration::from_secs(60),
                until: None,
            };
            splice(
                &mut proxy_c,
                &mut proxy_b,
                stops,
                &mut ResponseBoundary::default(),
            )
            .await
        });
        let up: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let down: Vec<u8> = (0..500_000u32).map(|i| (i * 13 % 253) as u8).collect();
        let (up2, down2) = (up.clone(), down.clone());
        let client_side = tokio::spawn(async move {
            let (mut r, mut w) = tokio::io::split(client);
            let writer = async move {
                w.write_all(&up2).await.unwrap();
                w.shutdown().await.unwrap();
            };
            let reader = async move {
                let mut got = Vec::new();
                r.read_to_end(&mut got).await.unwrap();
                got
            };
            tokio::join!(writer, reader).1
        });
        let backend_side = tokio::spawn(async move {
            let (mut r, mut w) = tokio::io::split(backend);
            let (read_all, all_read) = tokio::sync::oneshot::channel();
            // The backend closes only after it has read everything: once
            // it closes, the bridge ends.
            let writer = async move {
                w.write_all(&down2).await.unwrap();
                let _ = all_read.await;
                w.shutdown().await.unwrap();
            };
            let reader = async move {
                let mut got = Vec::new();
                r.read_to_end(&mut got).await.unwrap();
                let _ = read_all.send(());
                got
            };
            tokio::join!(writer, reader).1
        });
        assert_eq!(client_side.await.unwrap(), down);
        assert_eq!(backend_side.await.unwrap(), up);
        let done = bridge.await.unwrap();
        assert!(matches!(done.end, End::Closed), "{:?}", done.end);
        assert_eq!((done.up, done.down), (up.len() as u64, down.len() as u64));
    }

    /// Two plain TCP sockets: the literal's body moves by splice(2), and
    /// the boundary tracker still knows where it ends.
    #[tokio::test]
    async fn a_large_literal_between_plain_sockets_is_spliced_and_a_kick_waits_for_its_end() {
        use crate::net::stream::Stream;
        use tokio::net::{TcpListener, TcpStream};
        async fn pair() -> (TcpStream, TcpStream) {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
            let (b, _) = l.accept().await.unwrap();
            (a, b)
        }
        let (mut client, proxy_c) = pair().await;
        let (proxy_b, mut backend) = pair().await;
        let kick = CancellationToken::new();
        let k = kick.clone();
        let shutdown = CancellationToken::new();
        let bridge = tokio::spawn(async move {
            let (mut c, mut b) = (Stream::Plain(proxy_c), Stream::Plain(proxy_b));
            let stops = Stops {
                kick: &k,
                shutdown: &shutdown,
                idle: Duration::from_secs(60),
                until: None,
            };
            let done = splice(&mut c, &mut b, stops, &mut ResponseBoundary::default()).await;
            if done.at_boundary {
                c.write_all(b"* BYE moved\r\n").await.unwrap();
            }
            done
        });
        let body: Vec<u8> = (0..5_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut sent = format!("* 1 FETCH (BODY[] {{{}}}\r\n", body.len()).into_bytes();
        sent.extend_from_slice(&body);
        sent.extend_from_slice(b")\r\n");
        let (half, rest) = sent.split_at(2_000_000);
        let rest = rest.to_vec();
        backend.write_all(half).await.unwrap();
        let mut got = vec![0u8; 1_000_000];
        client.read_exact(&mut got).await.unwrap();
        kick.cancel();
        // The client reads on: the drain to the literal's end needs room.
        let reader = tokio::spawn(async move {
            client.read_to_end(&mut got).await.unwrap();
            got
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        backend.write_all(&rest).await.unwrap();
        let done = bridge.await.unwrap();
        assert!(
            matches!(done.end, End::Kicked) && done.at_boundary,
            "{done:?}"
        );
        assert_eq!(done.down, sent.len() as u64);
        drop(backend);
        let got = reader.await.unwrap();
        let mut want = sent.clone();
        want.extend_from_slice(b"* BYE moved\r\n");
        assert!(
            got == want,
            "stream differs ({} vs {} bytes)",
            got.len(),
            want.len()
        );
    }

    #[tokio::test]
    async fn a_kick_waits_for_the_end_of_the_current_literal() {
        let (mut client, mut proxy_c) = tokio::io::duplex(64 * 1024);
        let (mut proxy_b, mut backend) = tokio::io::duplex(64 * 1024);
        let kick = CancellationToken::new();
        let k = kick.clone();
        let shutdown = CancellationToken::new();
        let bridge = tokio::spawn(async move {
            let stops = Stops {
                kick: &k,
                shutdown: &shutdown,
                idle: Duration::from_secs(60),
                until: None,
            };
            let done = splice(
                &mut proxy_c,
                &mut proxy_b,
                stops,
                &mut ResponseBoundary::default(),
            )
            .await;
            // What the IMAP session does next: its goodbye, if safe.
            if done.at_boundary {
                proxy_c.write_all(b"* BYE moved\r\n").await.unwrap();
            }
            done
        });
        backend
            .write_all(b"* 1 FETCH (BODY[] {10}\r\n01234")
            .await
            .unwrap();
        let mut buf = vec![0u8; 29];
        client.read_exact(&mut buf).await.unwrap();
        kick.cancel();
        tokio::time::sleep(Duration::from_millis(50)).await;
        backend.write_all(b"56789)\r\n").await.unwrap();
        let done = bridge.await.unwrap();
        assert!(matches!(done.end, End::Kicked) && done.at_boundary);
        drop(backend);
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"56789)\r\n* BYE moved\r\n");
    }
}
