//! The server side of TLS (implicit TLS and STARTTLS) on rustls'
//! unbuffered API, as an `AsyncRead + AsyncWrite` stream.
//!
//! Why not tokio-rustls: its buffered connection keeps a 4 KiB receive
//! buffer for every connection for its whole life, a third of what an idle
//! IMAPS session costs. Here the buffers belong to the stream and are
//! released whenever they are empty, so an idle session holds none: TLS
//! bytes received (only a partial record between reads), plaintext the
//! reader has not taken, and TLS bytes not yet sent.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};

use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig, UnbufferedServerConnection};
use rustls::sign::CertifiedKey;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, InsufficientSizeError};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::rustls;

/// What one socket read asks for: a full TLS record and its header.
const READ_SIZE: usize = 16 * 1024 + 256;

thread_local! {
    /// Where socket reads land, one per worker thread. Not the bridge's
    /// scratch buffer: the bridge holds that one while it reads from this
    /// stream.
    static SCRATCH: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0u8; READ_SIZE].into_boxed_slice());
}

/// The largest piece of plaintext encrypted per write call, so that what
/// waits to be sent stays bounded.
const WRITE_CHUNK: usize = 64 * 1024;

pub struct TlsServer {
    tcp: TcpStream,
    conn: UnbufferedServerConnection,
    /// TLS bytes received, not yet processed (a partial record).
    incoming: Vec<u8>,
    /// Plaintext decrypted and not yet read, from `plain_at` on.
    plaintext: Vec<u8>,
    plain_at: usize,
    /// TLS bytes to send, in order, from `out_at` on.
    outgoing: Vec<u8>,
    out_at: usize,
    /// The peer sent close_notify, or its TCP stream ended.
    peer_done: bool,
    /// Shutting down: our close_notify is wanted, and whether it is queued.
    closing: bool,
    close_queued: bool,
    /// The server name the client asked for.
    sni: Option<String>,
}

/// Notes the client's server name on its way to the real resolver: the
/// unbuffered connection does not tell it afterwards.
#[derive(Debug)]
struct NoteSni {
    inner: Arc<dyn ResolvesServerCert>,
    seen: Arc<OnceLock<String>>,
}

impl ResolvesServerCert for NoteSni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = hello.server_name() {
            let _ = self.seen.set(name.to_string());
        }
        self.inner.resolve(hello)
    }
}

/// Where processing stopped.
enum Step {
    /// More TLS bytes are needed (mid-handshake, or a partial record).
    NeedData,
    /// Nothing more to process; application data may be sent.
    Ready,
    /// Both sides closed.
    Closed,
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Appends what `fill` writes to `out`, growing it as `fill` asks.
fn append<E>(
    out: &mut Vec<u8>,
    guess: usize,
    mut fill: impl FnMut(&mut [u8]) -> Result<usize, E>,
    too_small: impl Fn(&E) -> Option<usize>,
) -> Result<(), E> {
    let start = out.len();
    out.resize(start + guess, 0);
    loop {
        match fill(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(e) => match too_small(&e) {
                Some(need) => out.resize(start + need, 0),
                None => {
                    out.truncate(start);
                    return Err(e);
                }
            },
        }
    }
}

fn encode_too_small(e: &EncodeError) -> Option<usize> {
    match e {
        EncodeError::InsufficientSize(InsufficientSizeError { required_size }) => {
            Some(*required_size)
        }
        _ => None,
    }
}

fn encrypt_too_small(e: &EncryptError) -> Option<usize> {
    match e {
        EncryptError::InsufficientSize(InsufficientSizeError { required_size }) => {
            Some(*required_size)
        }
        _ => None,
    }
}

impl TlsServer {
    /// Runs the handshake on `tcp` to its end (the client's Finished read
    /// and the session tickets sent).
    pub async fn accept(config: Arc<ServerConfig>, tcp: TcpStream) -> io::Result<TlsServer> {
        // A configuration of its own (Arcs and a few small vectors, freed
        // with the handshake's state) whose resolver notes the name.
        let seen = Arc::new(OnceLock::new());
        let mut own = (*config).clone();
        own.cert_resolver = Arc::new(NoteSni {
            inner: config.cert_resolver.clone(),
            seen: seen.clone(),
        });
        let conn = UnbufferedServerConnection::new(Arc::new(own)).map_err(tls_error)?;
        let mut tls = TlsServer {
            tcp,
            conn,
            incoming: Vec::new(),
            plaintext: Vec::new(),
            plain_at: 0,
            outgoing: Vec::new(),
            out_at: 0,
            peer_done: false,
            closing: false,
            close_queued: false,
            sni: None,
        };
        loop {
            let step = match tls.process(None) {
                Ok(step) => step,
                Err(e) => {
                    // The alert, if the peer takes it at once.
                    let send = std::future::poll_fn(|cx| tls.poll_send(cx));
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), send).await;
                    return Err(e);
                }
            };
            std::future::poll_fn(|cx| tls.poll_send(cx)).await?;
            if !tls.conn.is_handshaking() {
                tls.sni = seen.get().cloned();
                return Ok(tls);
            }
            match step {
                Step::Closed => return Err(io::ErrorKind::UnexpectedEof.into()),
                Step::NeedData | Step::Ready => {
                    if std::future::poll_fn(|cx| tls.poll_receive(cx)).await? == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                }
            }
        }
    }

    /// The server name the client asked for (SNI), if any.
    pub fn sni(&self) -> Option<&str> {
        self.sni.as_deref()
    }

    /// Processes the received TLS bytes as far as they go: plaintext is
    /// kept for the reader, handshake and alert records queued to send.
    /// With `send`, encrypts all of it into `outgoing` when processing
    /// stops at [`Step::Ready`] (application data may be sent).
    fn process(&mut self, mut send: Option<&[u8]>) -> io::Result<Step> {
        loop {
            let status = self.conn.process_tls_records(&mut self.incoming);
            let mut discard = status.discard;
            let state = match status.state {
                Ok(state) => state,
                Err(e) => {
                    self.incoming.drain(..discard.min(self.incoming.len()));
                    self.queue_alert();
                    return Err(tls_error(e));
                }
            };
            let step = match state {
                ConnectionState::ReadTraffic(mut records) => {
                    while let Some(record) = records.next_record() {
                        let record = record.map_err(tls_error)?;
                        discard += record.discard;
                        self.plaintext.extend_from_slice(record.payload);
                    }
                    None
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    append(
                        &mut self.outgoing,
                        1024,
                        |b| encode.encode(b),
                        encode_too_small,
                    )
                    .map_err(|e| io::Error::other(e.to_string()))?;
                    None
                }
                // Queued in `outgoing`, which goes out before anything
                // written later: as good as sent for the state machine.
                ConnectionState::TransmitTlsData(transmit) => {
                    transmit.done();
                    None
                }
                ConnectionState::PeerClosed => {
                    self.peer_done = true;
                    None
                }
                ConnectionState::Closed => Some(Step::Closed),
                ConnectionState::BlockedHandshake => Some(Step::NeedData),
                ConnectionState::WriteTraffic(mut write) => {
                    if let Some(data) = send.take() {
                        let guess = data.len() + 64 * (data.len() / 16384 + 1);
                        append(
                            &mut self.outgoing,
                            guess,
                            |b| write.encrypt(data, b),
                            encrypt_too_small,
                        )
                        .map_err(|e| io::Error::other(e.to_string()))?;
                    }
                    if self.closing && !self.close_queued {
                        append(
                            &mut self.outgoing,
                            64,
                            |b| write.queue_close_notify(b),
                            encrypt_too_small,
                        )
                        .map_err(|e| io::Error::other(e.to_string()))?;
                        self.close_queued = true;
                    }
                    Some(Step::Ready)
                }
                // Early data is never enabled in the server configuration.
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "unexpected TLS early data",
                    ))
                }
            };
            if discard > 0 {
                self.incoming.drain(..discard);
            }
            if let Some(step) = step {
                return Ok(step);
            }
        }
    }

    /// Sends what is queued (the alert of a TLS error) if the socket takes
    /// it now, and gives back `e`.
    fn failed(&mut self, cx: &mut Context<'_>, e: io::Error) -> io::Error {
        let _ = self.poll_send(cx);
        e
    }

    /// After a TLS error: queues the alert rustls prepared (protocol
    /// version, handshake failure, bad record MAC…), so the peer learns
    /// why instead of seeing the connection just end. Best effort.
    fn queue_alert(&mut self) {
        for _ in 0..4 {
            let status = self.conn.process_tls_records(&mut []);
            match status.state {
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    if append(
                        &mut self.outgoing,
                        64,
                        |b| encode.encode(b),
                        encode_too_small,
                    )
                    .is_err()
                    {
                        return;
                    }
                }
                Ok(ConnectionState::TransmitTlsData(t)) => t.done(),
                _ => return,
            }
        }
    }

    /// Reads once from the socket into `incoming`; the bytes read, 0 at
    /// the end of the TCP stream. The read lands in the thread's scratch
    /// buffer and only what came is kept, so waiting holds nothing (the
    /// socket's readiness stays set after a successful read, and a buffer
    /// reserved for the next read would be held through the wait).
    fn poll_receive(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.incoming.is_empty() && self.incoming.capacity() > 0 {
            self.incoming = Vec::new();
        }
        loop {
            ready!(self.tcp.poll_read_ready(cx))?;
            let got = SCRATCH.with_borrow_mut(|buf| {
                let n = self.tcp.try_read(buf)?;
                self.incoming.extend_from_slice(&buf[..n]);
                Ok::<_, io::Error>(n)
            });
            match got {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Writes all queued TLS bytes to the socket, then releases the queue.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_at < self.outgoing.len() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.outgoing[self.out_at..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_at += n;
        }
        if self.out_at > 0 || self.outgoing.capacity() > 0 {
            self.outgoing = Vec::new();
            self.out_at = 0;
        }
        Poll::Ready(Ok(()))
    }

    /// Hands out held plaintext; true if there was some.
    fn take_plaintext(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        let held = &self.plaintext[self.plain_at..];
        if held.is_empty() {
            return false;
        }
        let n = held.len().min(buf.remaining());
        buf.put_slice(&held[..n]);
        self.plain_at += n;
        if self.plain_at == self.plaintext.len() {
            self.plaintext = Vec::new();
            self.plain_at = 0;
        }
        true
    }
}

impl AsyncRead for TlsServer {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.take_plaintext(buf) {
                return Poll::Ready(Ok(()));
            }
            if this.peer_done {
                return Poll::Ready(Ok(()));
            }
            let step = this.process(None).map_err(|e| this.failed(cx, e))?;
            // An alert or other TLS bytes rustls queued: on their way,
            // without making the reader wait for the socket to take them.
            if let Poll::Ready(Err(e)) = this.poll_send(cx) {
                return Poll::Ready(Err(e));
            }
            if !this.plaintext.is_empty() || this.peer_done {
                continue;
            }
            if let Step::Closed = step {
                return Poll::Ready(Ok(()));
            }
            if ready!(this.poll_receive(cx))? == 0 {
                if !this.incoming.is_empty() {
                    // Cut inside a record: data lost, not a clean end.
                    return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                }
                // The TCP stream ended without close_notify: the end of the
                // data for a mail protocol, whose own commands delimit it.
                this.peer_done = true;
            }
        }
    }
}

impl AsyncWrite for TlsServer {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // Backpressure: what the socket has not taken goes first.
        ready!(this.poll_send(cx))?;
        if this.closing {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let chunk = &buf[..buf.len().min(WRITE_CHUNK)];
        match this.process(Some(chunk)).map_err(|e| this.failed(cx, e))? {
            Step::Ready => {}
            Step::NeedData | Step::Closed => {
                return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()))
            }
        }
        if let Poll::Ready(Err(e)) = this.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(chunk.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.closing {
            this.closing = true;
            this.process(None)?;
        }
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn configs() -> (Arc<ServerConfig>, Arc<rustls::ClientConfig>) {
        let made = rcgen::generate_simple_self_signed(vec!["imap.example".into()]).unwrap();
        let cert = CertificateDer::from(made.cert.der().to_vec());
        let key = PrivateKeyDer::try_from(made.key_pair.serialize_der()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), Arc::new(client))
    }

    /// A tokio-rustls client against a `TlsServer`, connected.
    async fn connected() -> (tokio_rustls::client::TlsStream<TcpStream>, TlsServer) {
        let (server_cfg, client_cfg) = configs();
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = ServerName::try_from("imap.example").unwrap();
            tokio_rustls::TlsConnector::from(client_cfg)
                .connect(name, tcp)
                .await
                .unwrap()
        });
        let (tcp, _) = l.accept().await.unwrap();
        let server = TlsServer::accept(server_cfg, tcp).await.unwrap();
        (client.await.unwrap(), server)
    }

    #[tokio::test]
    async fn handshake_names_the_server_and_an_idle_session_holds_no_buffer() {
        let (mut client, mut server) = connected().await;
        assert_eq!(server.sni(), Some("imap.example"));
        server.write_all(b"* OK ready\r\n").await.unwrap();
        server.flush().await.unwrap();
        let mut line = [0u8; 12];
        client.read_exact(&mut line).await.unwrap();
        assert_eq!(&line, b"* OK ready\r\n");
        client.write_all(b"a NOOP\r\n").await.unwrap();
        let mut got = [0u8; 8];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"a NOOP\r\n");
        // Waiting for the next command (as an idle session does).
        let wait = tokio::time::timeout(Duration::from_millis(50), server.read(&mut got)).await;
        assert!(wait.is_err());
        let held =
            server.incoming.capacity() + server.plaintext.capacity() + server.outgoing.capacity();
        assert_eq!(held, 0, "an idle session holds buffers");
    }

    #[tokio::test]
    async fn large_transfers_both_ways_with_backpressure_and_close_notify() {
        let (client, server) = connected().await;
        let up: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let down: Vec<u8> = (0..5_000_000u32).map(|i| (i * 13 % 253) as u8).collect();
        let (up2, down2) = (up.clone(), down.clone());
        let (mut cr, mut cw) = tokio::io::split(client);
        let (mut sr, mut sw) = tokio::io::split(server);
        let client_side = tokio::spawn(async move {
            let writer = async {
                for piece in up2.chunks(100_000) {
                    cw.write_all(piece).await.unwrap();
                }
                cw.shutdown().await.unwrap();
            };
            let reader = async {
                let mut got = Vec::new();
                cr.read_to_end(&mut got).await.unwrap();
                got
            };
            tokio::join!(writer, reader).1
        });
        let server_side = tokio::spawn(async move {
            let writer = async {
                sw.write_all(&down2).await.unwrap();
                sw.shutdown().await.unwrap();
            };
            let reader = async {
                let mut got = Vec::new();
                sr.read_to_end(&mut got).await.unwrap();
                got
            };
            tokio::join!(writer, reader).1
        });
        assert!(client_side.await.unwrap() == down);
        assert!(server_side.await.unwrap() == up);
    }

    #[tokio::test]
    async fn a_client_key_update_is_followed() {
        let (mut client, mut server) = connected().await;
        for round in 0..3u8 {
            client.get_mut().1.refresh_traffic_keys().unwrap();
            client.write_all(&[b'a' + round; 1000]).await.unwrap();
            client.flush().await.unwrap();
            let mut got = [0u8; 1000];
            server.read_exact(&mut got).await.unwrap();
            assert!(got.iter().all(|&b| b == b'a' + round));
            server.write_all(b"ok\r\n").await.unwrap();
            let mut ok = [0u8; 4];
            client.read_exact(&mut ok).await.unwrap();
            assert_eq!(&ok, b"ok\r\n");
        }
    }

    #[tokio::test]
    async fn garbage_instead_of_a_handshake_is_an_error() {
        let (server_cfg, _) = configs();
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let peer = tokio::spawn(async move {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            tcp.write_all(b"a LOGIN user pass\r\n").await.unwrap();
            let mut rest = Vec::new();
            let _ = tcp.read_to_end(&mut rest).await;
            rest
        });
        let (tcp, _) = l.accept().await.unwrap();
        assert!(TlsServer::accept(server_cfg, tcp).await.is_err());
        // The peer is told why: a TLS alert record (content type 21).
        let answer = peer.await.unwrap();
        assert_eq!(answer.first(), Some(&21), "{answer:?}");
    }
}
