//! Zero-copy relay between two plain TCP sockets: splice(2) through a
//! pipe, socket → pipe → socket, so that the body of a large FETCH literal
//! never crosses into user space. The bridge uses it only for bytes its
//! boundary tracker need not see (the rest of a literal of known length)
//! and only when neither side is TLS.
//!
//! The pipe is made when such a literal starts and dropped when it is
//! done, so an idle session holds no pipe (two descriptors and up to a
//! megabyte of kernel buffer).

use std::io;
use std::os::fd::OwnedFd;
use std::task::{ready, Context, Poll};

use rustix::pipe::{
    fcntl_getpipe_size, fcntl_setpipe_size, pipe_with, splice, PipeFlags, SpliceFlags,
};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// The pipe's capacity asked for: fewer, larger splices per literal than
/// the default 64 KiB, while a slow client's session pins at most this
/// much kernel memory (pipe pages also count against the user's
/// `pipe-user-pages-soft`, past which the kernel shrinks new pipes).
const WANTED_CAPACITY: usize = 256 * 1024;

/// A pipe and how many bytes sit in it.
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    capacity: usize,
    held: usize,
}

impl Pipe {
    pub fn new() -> io::Result<Pipe> {
        let (read, write) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        // Whatever the kernel granted (it may refuse the size, or have
        // shrunk the pipe for a user over its limit): more steps, still
        // right, as long as fills never ask for more than this.
        let _ = fcntl_setpipe_size(&write, WANTED_CAPACITY);
        let capacity = fcntl_getpipe_size(&write)?.max(4096);
        Ok(Pipe {
            read,
            write,
            capacity,
            held: 0,
        })
    }

    /// Whether `e` from [`Pipe::poll_fill`] means splice(2) cannot be used
    /// here at all (a sandbox's seccomp filter, a kernel without it), so
    /// the bytes must be copied instead.
    pub fn unsupported(e: &io::Error) -> bool {
        matches!(
            e.raw_os_error(),
            Some(code) if code == rustix::io::Errno::INVAL.raw_os_error()
                || code == rustix::io::Errno::NOSYS.raw_os_error()
                || code == rustix::io::Errno::PERM.raw_os_error()
        )
    }

    /// Bytes in the pipe, not yet written on.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Moves up to `max` bytes from `from` into the empty pipe; `Ok(0)` at
    /// the end of the stream.
    pub fn poll_fill(
        &mut self,
        cx: &mut Context<'_>,
        from: &TcpStream,
        max: usize,
    ) -> Poll<io::Result<usize>> {
        // Filled only when empty: then EAGAIN can only mean the socket has
        // nothing, never a full pipe, and waiting for the socket is right.
        if self.held != 0 {
            return Poll::Ready(Err(io::Error::other("pipe filled before it was drained")));
        }
        let max = max.min(self.capacity);
        loop {
            ready!(from.poll_read_ready(cx))?;
            let moved = from.try_io(Interest::READABLE, || {
                Ok(splice(
                    from,
                    None,
                    &self.write,
                    None,
                    max,
                    SpliceFlags::MOVE | SpliceFlags::NONBLOCK,
                )?)
            });
            match moved {
                Ok(n) => {
                    self.held = n;
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Writes everything the pipe holds to `to`.
    pub fn poll_drain(&mut self, cx: &mut Context<'_>, to: &TcpStream) -> Poll<io::Result<()>> {
        while self.held > 0 {
            ready!(to.poll_write_ready(cx))?;
            // The pipe is not empty, so EAGAIN means the socket is full.
            let moved = to.try_io(Interest::WRITABLE, || {
                Ok(splice(
                    &self.read,
                    None,
                    to,
                    None,
                    self.held,
                    SpliceFlags::MOVE | SpliceFlags::NONBLOCK,
                )?)
            });
            match moved {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => self.held -= n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    #[tokio::test]
    async fn moves_bytes_between_sockets_in_order_and_sees_the_end() {
        let (mut src_peer, src) = pair().await;
        let (dst, mut dst_peer) = pair().await;
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            src_peer.write_all(&sent).await.unwrap();
            src_peer.shutdown().await.unwrap();
        });
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            dst_peer.read_to_end(&mut got).await.unwrap();
            got
        });
        let mut pipe = Pipe::new().unwrap();
        let mut total = 0;
        loop {
            let n = std::future::poll_fn(|cx| pipe.poll_fill(cx, &src, usize::MAX))
                .await
                .unwrap();
            if n == 0 {
                break;
            }
            total += n;
            std::future::poll_fn(|cx| pipe.poll_drain(cx, &dst))
                .await
                .unwrap();
        }
        writer.await.unwrap();
        drop(dst);
        assert_eq!(total, data.len());
        assert_eq!(reader.await.unwrap(), data);
    }
}
