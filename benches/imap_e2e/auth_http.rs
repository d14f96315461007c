//! nginx's `auth_http` responder: for every login nginx makes one HTTP/1.0
//! request (`Auth-User`, `Auth-Pass`, `Auth-Protocol`, …) on a new
//! connection and proxies to the `Auth-Server`:`Auth-Port` of the answer.
//!
//! It routes as ponte does, by the domain's mailbox state (the bench domain
//! is `legacy`; `migrated` goes to the new backend; other states and unknown
//! domains are refused, as nginx cannot serve ponte's read-only view), and
//! leaves the password to the backend, as ponte does. It runs on a
//! current-thread tokio runtime on its own thread, so that its CPU time can
//! be read from /proc/self/task/<tid>/stat and kept apart from the load
//! generator's; [`capacity`] measures how many requests per second it can
//! answer, to show that it is not what limits nginx.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use crate::ponte::Backend;

/// Bound on reading one request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest request accepted (nginx's are a few hundred bytes).
const MAX_REQUEST: usize = 4096;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum State {
    Legacy,
    Migrated,
    /// Blackout or excluded: ponte serves these read-only or not at all.
    Refused,
}

impl State {
    /// A state as ponte's configuration names it (`[domain."…"] state`).
    pub fn parse(name: &str) -> State {
        match name {
            "legacy" => State::Legacy,
            "migrated" => State::Migrated,
            _ => State::Refused,
        }
    }
}

/// Domain → mailbox state, and the two backends.
pub struct Routes {
    pub domains: HashMap<String, State>,
    pub legacy: Backend,
    pub new: Backend,
}

impl Routes {
    /// The backend address for `user` and `protocol` (`imap`, `pop3`).
    fn route(&self, user: &str, protocol: &str) -> Option<SocketAddr> {
        let user = user.trim().to_ascii_lowercase();
        let (_, domain) = user.rsplit_once('@')?;
        let backend = match self.domains.get(domain)? {
            State::Legacy => &self.legacy,
            State::Migrated => &self.new,
            State::Refused => return None,
        };
        match protocol {
            "imap" => Some(backend.imap),
            "pop3" => Some(backend.pop3),
            _ => None,
        }
    }
}

/// Counters of the responder.
#[derive(Default)]
pub struct Stats {
    pub ok: AtomicU64,
    pub refused: AtomicU64,
    /// Unreadable or incomplete requests.
    pub bad: AtomicU64,
    /// Sum and maximum of accept-to-answer times, in microseconds.
    pub busy_us: AtomicU64,
    pub max_us: AtomicU64,
}

impl Stats {
    pub fn answered(&self) -> u64 {
        self.ok.load(Ordering::Relaxed) + self.refused.load(Ordering::Relaxed)
    }

    /// Forgets everything so far (the capacity test).
    pub fn reset(&self) {
        for c in [
            &self.ok,
            &self.refused,
            &self.bad,
            &self.busy_us,
            &self.max_us,
        ] {
            c.store(0, Ordering::Relaxed);
        }
    }

    pub fn mean_us(&self) -> f64 {
        self.busy_us.load(Ordering::Relaxed) as f64 / self.answered().max(1) as f64
    }
}

pub struct AuthHttp {
    pub addr: SocketAddr,
    /// The responder thread's id (for its CPU time).
    pub tid: u32,
    pub stats: Arc<Stats>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl AuthHttp {
    pub fn start(routes: Routes) -> AuthHttp {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind auth_http");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("auth_http addr");
        let stats = Arc::new(Stats::default());
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel();
        let (st, routes) = (stats.clone(), Arc::new(routes));
        let thread = std::thread::Builder::new()
            .name("auth_http".into())
            .spawn(move || {
                // SAFETY: gettid has no preconditions.
                let _ = tid_tx.send(unsafe { libc::gettid() } as u32);
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("auth_http runtime");
                rt.block_on(serve(listener, routes, st, stopped));
            })
            .expect("spawn auth_http");
        let tid = tid_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("auth_http thread id");
        AuthHttp {
            addr,
            tid,
            stats,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for AuthHttp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(
    listener: std::net::TcpListener,
    routes: Arc<Routes>,
    stats: Arc<Stats>,
    mut stop: oneshot::Receiver<()>,
) {
    let listener = TcpListener::from_std(listener).expect("auth_http listener");
    loop {
        tokio::select! {
            _ = &mut stop => return,
            r = listener.accept() => match r {
                Ok((s, _)) => {
                    tokio::spawn(answer(s, routes.clone(), stats.clone()));
                }
                // Out of fds, for instance: don't spin.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
        }
    }
}

async fn answer(mut s: TcpStream, routes: Arc<Routes>, stats: Arc<Stats>) {
    let t0 = Instant::now();
    let mut buf = [0u8; MAX_REQUEST];
    let mut n = 0;
    let read = async {
        while n < buf.len() {
            let k = s.read(&mut buf[n..]).await?;
            if k == 0 {
                break;
            }
            n += k;
            if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                return Ok(true);
            }
        }
        Ok::<_, std::io::Error>(false)
    };
    if !matches!(tokio::time::timeout(READ_TIMEOUT, read).await, Ok(Ok(true))) {
        stats.bad.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let (reply, ok) = respond(&buf[..n], &routes);
    let _ = s.write_all(reply.as_bytes()).await;
    let _ = s.shutdown().await;
    let us = t0.elapsed().as_micros() as u64;
    let counter = if ok { &stats.ok } else { &stats.refused };
    counter.fetch_add(1, Ordering::Relaxed);
    stats.busy_us.fetch_add(us, Ordering::Relaxed);
    stats.max_us.fetch_max(us, Ordering::Relaxed);
}

/// The HTTP answer to one request, and whether it lets the login through.
fn respond(request: &[u8], routes: &Routes) -> (String, bool) {
    let text = String::from_utf8_lossy(request);
    let header = |name: &str| {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    };
    let user = header("Auth-User").map(percent_decode).unwrap_or_default();
    let protocol = header("Auth-Protocol").unwrap_or_default();
    match routes.route(&user, protocol) {
        Some(to) => (
            format!(
                "HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: {}\r\nAuth-Port: {}\r\n\r\n",
                to.ip(),
                to.port()
            ),
            true,
        ),
        None => (
            "HTTP/1.0 200 OK\r\nAuth-Status: Invalid login or password\r\nAuth-Wait: 3\r\n\r\n"
                .to_string(),
            false,
        ),
    }
}

/// nginx escapes `%`, spaces and control characters in `Auth-User`.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Requests per second the responder answers when `clients` connections
/// hammer it for `secs` with nginx-like requests (new connection each),
/// from the load generator's runtime. Errors are counted, not fatal.
pub async fn capacity(addr: SocketAddr, user: &str, clients: usize, secs: Duration) -> (f64, u64) {
    let end = Instant::now() + secs;
    let request = format!(
        "GET /auth HTTP/1.0\r\nHost: localhost\r\nAuth-Method: plain\r\nAuth-User: {user}\r\n\
         Auth-Pass: secret\r\nAuth-Protocol: imap\r\nAuth-Login-Attempt: 1\r\n\
         Client-IP: 127.0.0.1\r\nClient-Host: [UNAVAILABLE]\r\n\r\n"
    );
    let request = Arc::new(request);
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let request = request.clone();
            tokio::spawn(async move {
                let (mut ok, mut err) = (0u64, 0u64);
                // Bounded by time and by count.
                while Instant::now() < end && ok + err < 1_000_000 {
                    let one = async {
                        let mut s = TcpStream::connect(addr).await?;
                        s.write_all(request.as_bytes()).await?;
                        let mut reply = Vec::new();
                        s.read_to_end(&mut reply).await?;
                        Ok::<_, std::io::Error>(reply)
                    };
                    match tokio::time::timeout(READ_TIMEOUT, one).await {
                        Ok(Ok(r)) if r.windows(15).any(|w| w == b"Auth-Status: OK") => ok += 1,
                        _ => err += 1,
                    }
                }
                (ok, err)
            })
        })
        .collect();
    let t0 = Instant::now();
    let (mut ok, mut err) = (0, 0);
    for t in tasks {
        if let Ok((o, e)) = t.await {
            ok += o;
            err += e;
        }
    }
    (ok as f64 / t0.elapsed().as_secs_f64(), err)
}
