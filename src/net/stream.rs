//! One stream type for every connection, plain or TLS, client or backend
//! side, so that protocol code never cares which it has. An enum rather
//! than a `Box<dyn …>`: no vtable, and STARTTLS can take the TCP stream out.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client;

use super::tls_server::TlsServer;

pub enum Stream {
    Plain(TcpStream),
    /// A client connection we terminate TLS for.
    Server(Box<TlsServer>),
    /// A backend connection we opened with TLS.
    Client(Box<client::TlsStream<TcpStream>>),
}

impl Stream {
    pub fn is_tls(&self) -> bool {
        !matches!(self, Stream::Plain(_))
    }

    /// The server name the client asked for (SNI), if any.
    pub fn sni(&self) -> Option<&str> {
        match self {
            Stream::Server(s) => s.sni(),
            _ => None,
        }
    }

    /// The TCP stream, for a STARTTLS upgrade. `None` if TLS is already on.
    pub fn into_plain(self) -> Option<TcpStream> {
        match self {
            Stream::Plain(s) => Some(s),
            _ => None,
        }
    }
}

/// The plain TCP socket under a stream, if no TLS is layered on it: the
/// bridge can then move large literals with splice(2).
pub trait PlainSocket {
    fn plain_socket(&self) -> Option<&TcpStream> {
        None
    }
}

impl PlainSocket for Stream {
    fn plain_socket(&self) -> Option<&TcpStream> {
        match self {
            Stream::Plain(s) => Some(s),
            _ => None,
        }
    }
}

/// In-memory streams (tests) always take the copying path.
impl PlainSocket for tokio::io::DuplexStream {}

macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Stream::Plain($s) => {
                let $s = Pin::new($s);
                $e
            }
            Stream::Server($s) => {
                let $s = Pin::new($s.as_mut());
                $e
            }
            Stream::Client($s) => {
                let $s = Pin::new($s.as_mut());
                $e
            }
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each!(self, s => s.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => s.poll_shutdown(cx))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        each!(self, s => s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Server(_) => false,
            Stream::Client(s) => s.is_write_vectored(),
        }
    }
}
