//! The read-only session's data path: client commands go through the
//! [`Filter`] (framed, parsed, judged, re-encoded), backend responses
//! stream to the client unchanged and unbuffered. Lines the filter answers
//! itself (`NO [NOPERM]`, `+` for a literal, CAPABILITY) are held until
//! the backend's response stream stands between two responses, so they
//! never land inside a backend response.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::boundary::ResponseBoundary;
use super::framer::{Frame, Framer};
use super::readonly::{Filter, LiteralVerdict, Verdict};
use crate::net::bridge::{Boundary, End, Spliced, Stops};
use crate::net::stream::Stream;
use imap_codec::imap_types::core::LiteralMode;

/// Largest client command the view accepts (literals included): reading
/// needs no large commands; a refused APPEND's literal is dropped as it
/// arrives, never held.
pub const MAX_COMMAND: u32 = 64 * 1024;

/// How long a stopped session may go on relaying to reach a boundary.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// Most bytes of our own replies queued for the client.
const MAX_PENDING: usize = 64 * 1024;

struct View<'a> {
    client: &'a mut Stream,
    backend: &'a mut Stream,
    filter: Filter,
    framer: Framer,
    boundary: ResponseBoundary,
    /// Our own lines for the client, waiting for a response boundary.
    pending: Vec<u8>,
    up: u64,
    down: u64,
    last: Instant,
}

/// Runs the read-only session until it ends; `client_rest` is what the
/// client pipelined behind its login (it is filtered too).
pub async fn run(
    client: &mut Stream,
    backend: &mut Stream,
    client_rest: Vec<u8>,
    filter: Filter,
    stops: Stops<'_>,
) -> Spliced {
    let mut v = View {
        client,
        backend,
        filter,
        framer: Framer::streaming(MAX_COMMAND),
        boundary: ResponseBoundary::default(),
        pending: Vec::new(),
        up: 0,
        down: 0,
        last: Instant::now(),
    };
    v.framer.push(&client_rest);
    let end = match v.serve(&stops).await {
        Ok(end) => end,
        Err(e) => End::Error(e),
    };
    let at_boundary = match end {
        End::Kicked | End::Shutdown | End::Idle | End::Expired => v.drain().await,
        _ => false,
    };
    Spliced {
        up: v.up,
        down: v.down,
        end,
        at_boundary,
    }
}

impl View<'_> {
    async fn serve(&mut self, stops: &Stops<'_>) -> std::io::Result<End> {
        let mut cbuf = vec![0u8; 16 * 1024];
        let mut bbuf = vec![0u8; 64 * 1024];
        // Every write races the stops: a peer that stops reading must not
        // keep the session (and the legacy box) open past a kick, a
        // deadline or the shutdown.
        tokio::select! {
            r = self.judge_buffered() => r?,
            end = stops.stopped() => return Ok(end),
        }
        loop {
            tokio::select! {
                r = self.flush_pending() => r?,
                end = stops.stopped() => return Ok(end),
            }
            tokio::select! {
                // Our own replies wait for a response boundary: while too
                // many are queued, the client is not read (bounded memory).
                r = self.client.read(&mut cbuf), if self.pending.len() < MAX_PENDING => {
                    let n = r?;
                    if n == 0 {
                        return Ok(End::Closed);
                    }
                    self.up += n as u64;
                    self.last = Instant::now();
                    self.framer.push(&cbuf[..n]);
                    tokio::select! {
                        r = self.judge_buffered() => r?,
                        end = stops.stopped() => return Ok(end),
                    }
                }
                r = self.backend.read(&mut bbuf) => {
                    let n = r?;
                    if n == 0 {
                        return Ok(End::Closed);
                    }
                    tokio::select! {
                        r = self.relay(&bbuf[..n]) => r?,
                        end = stops.stopped() => return Ok(end),
                    }
                }
                end = stops.stopped() => return Ok(end),
                _ = tokio::time::sleep_until(self.last + stops.idle) => {
                    if self.last.elapsed() >= stops.idle {
                        return Ok(End::Idle);
                    }
                }
            }
        }
    }

    /// Backend bytes to the client, as they come.
    async fn relay(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.down += bytes.len() as u64;
        self.last = Instant::now();
        self.boundary.observe(bytes);
        self.client.write_all(bytes).await?;
        self.client.flush().await
    }

    /// Judges every complete command buffered so far.
    async fn judge_buffered(&mut self) -> std::io::Result<()> {
        while let Some(frame) = self.framer.next_frame() {
            match frame {
                Frame::Literal { mode, length } => self.on_literal(mode, length),
                Frame::Message => match self.filter.judge(&self.framer) {
                    Verdict::Forward(bytes) => {
                        self.backend.write_all(&bytes).await?;
                        self.backend.flush().await?;
                    }
                    Verdict::Reply(bytes) => self.pending.extend_from_slice(&bytes),
                    Verdict::Drop => {}
                },
            }
        }
        Ok(())
    }

    fn on_literal(&mut self, mode: LiteralMode, length: u32) {
        match self
            .filter
            .on_literal(self.framer.message(), mode, length, MAX_COMMAND)
        {
            LiteralVerdict::Accept if mode == LiteralMode::Sync => self
                .pending
                .extend_from_slice(b"+ Ready for literal data\r\n"),
            LiteralVerdict::Accept => {}
            LiteralVerdict::Refuse(reply) => {
                self.pending.extend_from_slice(&reply);
                // Not invited, so not sent: the next line is a new command.
                if mode == LiteralMode::Sync {
                    self.framer.skip_message();
                }
            }
        }
    }

    /// Our own lines, once the client stands between two responses.
    async fn flush_pending(&mut self) -> std::io::Result<()> {
        if self.pending.is_empty() || !self.boundary.at_boundary() {
            return Ok(());
        }
        self.client.write_all(&self.pending).await?;
        self.client.flush().await?;
        self.pending.clear();
        Ok(())
    }

    /// After a stop: relays the backend's response in flight to its end
    /// (bounded), so that a goodbye can follow. True if it got there.
    async fn drain(&mut self) -> bool {
        // Bounded as a whole: writes to a client that does not read included.
        tokio::time::timeout(DRAIN_LIMIT, self.drain_to_boundary())
            .await
            .unwrap_or(false)
    }

    async fn drain_to_boundary(&mut self) -> bool {
        let deadline = Instant::now() + DRAIN_LIMIT;
        let mut buf = vec![0u8; 64 * 1024];
        while !self.boundary.at_boundary() {
            match tokio::time::timeout_at(deadline, self.backend.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => {
                    if self.relay(&buf[..n]).await.is_err() {
                        return false;
                    }
                }
                _ => return false,
            }
        }
        true
    }
}
