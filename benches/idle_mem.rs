//! Where an idle session's bytes go: ponte runs in this process (through
//! its public API, on a 2-worker runtime like the binary's on this machine)
//! under a counting global allocator; a child process (this binary again)
//! opens N sessions through it to the harness's Dovecot, each logged in,
//! `SELECT INBOX`, `IDLE`, and holds them. Then this process reports, per
//! session: live heap bytes (asked and as glibc rounds them), live
//! allocations by size, the allocation sites of what stays (with
//! `IDLE_MEM_TRACE=1`: a backtrace per allocation, so use a small N), the
//! process's PSS growth and glibc's arena statistics.
//!
//! ```text
//! cargo bench --bench idle_mem                         # IMAPS, 1000 sessions
//! IDLE_MEM_KIND=imap IDLE_MEM_N=2000 cargo bench --bench idle_mem
//! IDLE_MEM_TRACE=1 IDLE_MEM_N=200 cargo bench --bench idle_mem
//! MALLOC_ARENA_MAX=2 cargo bench --bench idle_mem      # glibc knobs pass through
//! ```
//!
//! The counting allocator lives only in this binary, never in ponte's.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "imap_e2e/load.rs"]
#[allow(dead_code)]
mod load;
#[path = "imap_e2e/procs.rs"]
#[allow(dead_code)]
mod procs;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::certs::TestCa;
use common::dovecot::{Dovecot, DovecotOptions};
use common::ponte::Ponte;
use load::{Kind, Target};

pub const DOMAIN: &str = "bench.example";
pub const FETCH_USER: &str = "fetch@bench.example";
pub const FETCH_PASS: &str = "fetch-pass";
const USERS: usize = 20;

// ---- counting allocator -------------------------------------------------

/// Exact sizes below this are counted one by one; larger ones in the last slot.
const HIST: usize = 70 * 1024;

struct Counting;

static LIVE: AtomicI64 = AtomicI64::new(0);
static LIVE_USABLE: AtomicI64 = AtomicI64::new(0);
static LIVE_COUNT: AtomicI64 = AtomicI64::new(0);
static BY_SIZE: [AtomicI64; HIST + 1] = [const { AtomicI64::new(0) }; HIST + 1];
static TRACING: AtomicBool = AtomicBool::new(false);
static TRACES: Mutex<Option<HashMap<usize, (usize, std::backtrace::Backtrace)>>> = Mutex::new(None);

thread_local! {
    static IN_HOOK: Cell<bool> = const { Cell::new(false) };
}

fn on_alloc(p: *mut u8, size: usize) {
    if p.is_null() {
        return;
    }
    // SAFETY: `p` was just returned by glibc's malloc family.
    let usable = unsafe { libc::malloc_usable_size(p.cast()) };
    LIVE.fetch_add(size as i64, Ordering::Relaxed);
    LIVE_USABLE.fetch_add(usable as i64, Ordering::Relaxed);
    LIVE_COUNT.fetch_add(1, Ordering::Relaxed);
    BY_SIZE[size.min(HIST)].fetch_add(1, Ordering::Relaxed);
    if TRACING.load(Ordering::Relaxed) {
        with_guard(|| {
            let bt = std::backtrace::Backtrace::force_capture();
            if let Ok(mut t) = TRACES.lock() {
                t.get_or_insert_with(HashMap::new)
                    .insert(p as usize, (size, bt));
            }
        });
    }
}

fn on_free(p: *mut u8, size: usize) {
    // SAFETY: `p` is still allocated (called before the free).
    let usable = unsafe { libc::malloc_usable_size(p.cast()) };
    LIVE.fetch_sub(size as i64, Ordering::Relaxed);
    LIVE_USABLE.fetch_sub(usable as i64, Ordering::Relaxed);
    LIVE_COUNT.fetch_sub(1, Ordering::Relaxed);
    BY_SIZE[size.min(HIST)].fetch_sub(1, Ordering::Relaxed);
    if TRACING.load(Ordering::Relaxed) {
        with_guard(|| {
            if let Ok(mut t) = TRACES.lock() {
                if let Some(m) = t.as_mut() {
                    m.remove(&(p as usize));
                }
            }
        });
    }
}

/// Runs `f` unless this thread is already inside the hook (the backtrace
/// and the map allocate too).
fn with_guard(f: impl FnOnce()) {
    let _ = IN_HOOK.try_with(|g| {
        if !g.replace(true) {
            f();
            g.set(false);
        }
    });
}

// SAFETY: delegates to the system allocator (glibc malloc, as ponte's
// binary uses) and only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = System.alloc(l);
        on_alloc(p, l.size());
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(l);
        on_alloc(p, l.size());
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        on_free(p, l.size());
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        on_free(p, l.size());
        let q = System.realloc(p, l, new);
        if q.is_null() {
            on_alloc(p, l.size());
        } else {
            on_alloc(q, new);
        }
        q
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

struct Snapshot {
    live: i64,
    usable: i64,
    count: i64,
    by_size: Vec<i64>,
    pss_kib: u64,
    arena: libc::mallinfo2,
}

fn snapshot() -> Snapshot {
    Snapshot {
        live: LIVE.load(Ordering::Relaxed),
        usable: LIVE_USABLE.load(Ordering::Relaxed),
        count: LIVE_COUNT.load(Ordering::Relaxed),
        by_size: BY_SIZE.iter().map(|a| a.load(Ordering::Relaxed)).collect(),
        pss_kib: procs::pss_kib(&[std::process::id()]),
        // SAFETY: plain glibc call.
        arena: unsafe { libc::mallinfo2() },
    }
}

// ---- the load: a child process ------------------------------------------

/// Child: opens `n` sessions, says `ready` on stdout, holds them until
/// stdin closes or says anything.
fn client_main() {
    procs::raise_nofile();
    let addr = std::env::var("IDLE_MEM_ADDR").unwrap().parse().unwrap();
    let kind = kind_from_env();
    let n: usize = std::env::var("IDLE_MEM_N").unwrap().parse().unwrap();
    let ca = std::fs::read_to_string(std::env::var("IDLE_MEM_CA").unwrap()).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let t = Target::new(addr, kind, &load::client_tls(&ca));
        let up = Arc::new(tokio::sync::Semaphore::new(100));
        let mut tasks = Vec::new();
        for i in 0..n {
            let (t, up) = (t.clone(), up.clone());
            tasks.push(tokio::spawn(async move {
                let _p = up.acquire().await;
                let user = format!("user{}@{DOMAIN}", i % USERS);
                let pass = format!("pass{}", i % USERS);
                let mut c = t.open_greeted(1024).await?;
                c.command("a", &format!("LOGIN {user} {pass}")).await?;
                c.command("b", "SELECT INBOX").await?;
                c.send_line("i IDLE").await?;
                c.until_prefix(b"+", "IDLE").await?;
                Ok::<_, String>(c)
            }));
        }
        let mut conns = Vec::new();
        let mut errors = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(c) => conns.push(c),
                Err(e) => {
                    errors += 1;
                    if errors < 5 {
                        eprintln!("client: {e}");
                    }
                }
            }
        }
        println!("ready {} {errors}", conns.len());
        let _ = std::io::stdout().flush();
        tokio::task::spawn_blocking(|| {
            let mut s = String::new();
            let _ = std::io::stdin().lock().read_line(&mut s);
        })
        .await
        .unwrap();
        drop(conns);
    });
}

fn kind_from_env() -> Kind {
    match std::env::var("IDLE_MEM_KIND").as_deref() {
        Ok("imap") => Kind::Imap,
        _ => Kind::Imaps,
    }
}

// ---- the measurement ----------------------------------------------------

fn main() {
    if std::env::var("IDLE_MEM_ROLE").as_deref() == Ok("client") {
        return client_main();
    }
    if !std::env::args().any(|a| a == "--bench") {
        println!("idle_mem: a measurement; run it with `cargo bench --bench idle_mem`");
        return;
    }
    procs::raise_nofile();
    let kind = kind_from_env();
    let n: usize = std::env::var("IDLE_MEM_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let trace = std::env::var("IDLE_MEM_TRACE").as_deref() == Ok("1");
    print_sizes();

    let dir = tempfile::Builder::new()
        .prefix("ponte-idle-mem-")
        .tempdir()
        .unwrap();
    let ca = TestCa::new("ponte idle-mem CA");
    let ca_file = ca.write_to(dir.path(), "ca");
    let (cert, key) = ca
        .issue(&["localhost", "127.0.0.1"])
        .write_to(dir.path(), "server");
    let users: Vec<(String, String)> = (0..USERS)
        .map(|i| (format!("user{i}@{DOMAIN}"), format!("pass{i}")))
        .collect();
    let mut opts = DovecotOptions::new(
        "idlemem",
        &users
            .iter()
            .map(|(u, p)| (u.as_str(), p.as_str()))
            .collect::<Vec<_>>(),
    );
    opts.tls = Some((cert.clone(), key.clone()));
    let dovecot = Dovecot::start(opts);
    for (user, _) in &users {
        dovecot.deliver(user, "INBOX", b"Subject: hi\r\n\r\nhello\r\n");
    }
    let conf = dovecot.dir().join("dovecot.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str(
        "\nmail_max_userip_connections = 1000000\n\
         service imap-login {\n  service_count = 0\n  process_min_avail = 2\n}\n\
         service imap {\n  service_count = 1000\n  client_limit = 1000\n  process_limit = 1000\n  vsz_limit = 4G\n}\n",
    );
    std::fs::write(&conf, text).unwrap();
    dovecot.doveadm(&["reload"]);
    std::thread::sleep(Duration::from_millis(500));
    common::net::wait_greeting(dovecot.imap_addr(), "* OK", Duration::from_secs(10)).unwrap();

    let d = dir.path().display();
    let toml = format!(
        r#"
[state]
path = "{d}/state"
[spool]
path = "{d}/spool"
[limits]
shutdown_grace = "1s"
max_connections = 100000
max_connections_per_ip = 100000
[[tls.certificate]]
names = ["localhost"]
cert = "{cert}"
key = "{key}"
[[listener]]
name = "imap"
protocol = "imap"
bind = "127.0.0.1:0"
tls = "none"
[[listener]]
name = "imaps"
protocol = "imap"
bind = "127.0.0.1:0"
tls = "implicit"
[backend.legacy]
imap = "imap://{b}"
[backend.new]
imap = "imap://{b}"
[domain."{DOMAIN}"]
state = "legacy"
"#,
        cert = cert.display(),
        key = key.display(),
        b = dovecot.imap_addr(),
    );
    let ponte = Ponte::start(&toml);
    let addr = ponte.addr(if kind == Kind::Imaps { "imaps" } else { "imap" });

    // One warm-up session, closed, as the e2e bench does before "before".
    run_clients(addr, kind, 1, &ca_file, |_| ());
    std::thread::sleep(Duration::from_millis(300));
    let before = snapshot();
    if trace {
        TRACING.store(true, Ordering::Relaxed);
    }
    let t0 = Instant::now();
    run_clients(addr, kind, n, &ca_file, |ok| {
        TRACING.store(false, Ordering::Relaxed);
        println!(
            "{ok} sessions idle after {:.1} s",
            t0.elapsed().as_secs_f64()
        );
        std::thread::sleep(Duration::from_secs(2));
        let after = snapshot();
        report(&before, &after, ok);
        if trace {
            report_sites(ok);
        }
    });
    ponte.stop();
}

/// Runs the child with `n` sessions; calls `measure` with the number
/// established while they are held.
fn run_clients(
    addr: std::net::SocketAddr,
    kind: Kind,
    n: usize,
    ca: &std::path::Path,
    measure: impl FnOnce(usize),
) {
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .env("IDLE_MEM_ROLE", "client")
        .env("IDLE_MEM_ADDR", addr.to_string())
        .env(
            "IDLE_MEM_KIND",
            if kind == Kind::Imaps { "imaps" } else { "imap" },
        )
        .env("IDLE_MEM_N", n.to_string())
        .env("IDLE_MEM_CA", ca)
        .env_remove("MALLOC_ARENA_MAX")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let ok: usize = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("client said {line:?}"));
    measure(ok);
    drop(child.stdin.take());
    let _ = child.wait();
}

fn report(b: &Snapshot, a: &Snapshot, n: usize) {
    let per = |x: i64, y: i64| (x - y) as f64 / n as f64;
    println!("per session ({n} sessions):");
    println!(
        "  heap asked:       {:8.0} B in {:.1} allocations",
        per(a.live, b.live),
        per(a.count, b.count)
    );
    println!(
        "  heap usable:      {:8.0} B (glibc chunk payloads; +8 B header each)",
        per(a.usable, b.usable)
    );
    println!(
        "  process PSS:      {:8.0} B",
        (a.pss_kib as f64 - b.pss_kib as f64) * 1024.0 / n as f64
    );
    println!(
        "  glibc arena+mmap: {:8.0} B (of which free in arenas {:.0} B)",
        per(
            (a.arena.arena + a.arena.hblkhd) as i64,
            (b.arena.arena + b.arena.hblkhd) as i64
        ),
        per(a.arena.fordblks as i64, b.arena.fordblks as i64)
    );
    println!("  live allocations by size (count per session ≥ 0.05):");
    let mut rows: Vec<(usize, f64)> = (0..=HIST)
        .map(|s| (s, per(a.by_size[s], b.by_size[s])))
        .filter(|(_, c)| c.abs() >= 0.05)
        .collect();
    rows.sort_by(|x, y| {
        let bx = x.0 as f64 * x.1;
        let by = y.0 as f64 * y.1;
        by.partial_cmp(&bx).unwrap()
    });
    for (s, c) in rows {
        let label = if s == HIST {
            format!(">={s}")
        } else {
            s.to_string()
        };
        println!(
            "    {label:>8} B x {c:5.2}  = {:7.0} B",
            s.min(HIST) as f64 * c
        );
    }
}

/// Groups the allocations still live (made while the sessions were set
/// up) by their first frames outside the allocator and std's collections.
fn report_sites(n: usize) {
    let taken = TRACES.lock().unwrap().take().unwrap_or_default();
    let mut groups: HashMap<String, (usize, usize)> = HashMap::new();
    for (_, (size, bt)) in taken {
        let text = bt.to_string();
        let frames: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.starts_with("at "))
            .filter_map(|l| l.split_once(": ").map(|(_, f)| f))
            .filter(|f| {
                !(f.starts_with("std::")
                    || f.starts_with("alloc::")
                    || f.starts_with("core::")
                    || f.starts_with("idle_mem::")
                    || f.starts_with("<idle_mem::")
                    || f.starts_with("__rust")
                    || f.contains("as core::clone::Clone")
                    || f.starts_with("<alloc::")
                    || f.starts_with("hashbrown::"))
            })
            .take(4)
            .collect();
        let key = format!("{size:>6} B  {}", frames.join("  <  "));
        let e = groups.entry(key).or_default();
        e.0 += 1;
        e.1 += size;
    }
    let mut rows: Vec<_> = groups.into_iter().collect();
    rows.sort_by_key(|(_, (_, bytes))| std::cmp::Reverse(*bytes));
    println!("allocation sites still live (per session; count ≥ 0.05):");
    for (key, (count, bytes)) in rows {
        let c = count as f64 / n as f64;
        if c >= 0.05 {
            println!(
                "  {:7.0} B  x{c:5.2}  {}",
                bytes as f64 / n as f64,
                key.chars().take(400).collect::<String>()
            );
        }
    }
}

fn print_sizes() {
    use std::mem::size_of;
    use tokio::net::TcpStream;
    println!("type sizes:");
    println!(
        "  rustls::ServerConnection           {:5} B",
        size_of::<tokio_rustls::rustls::ServerConnection>()
    );
    println!(
        "  tokio_rustls::server::TlsStream    {:5} B",
        size_of::<tokio_rustls::server::TlsStream<TcpStream>>()
    );
    println!(
        "  tokio::net::TcpStream              {:5} B",
        size_of::<TcpStream>()
    );
    println!(
        "  ponte::net::stream::Stream         {:5} B",
        size_of::<ponte::net::stream::Stream>()
    );
    println!(
        "  ponte::registry::Entry             {:5} B",
        size_of::<ponte::registry::Entry>()
    );
}
