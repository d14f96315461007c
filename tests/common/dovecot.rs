//! Real Dovecot instances for tests: each runs in the foreground as a child
//! process in its own process group, with its own tempdir (config, sockets,
//! state, log, mail), listens on fresh loopback ports, and is killed on Drop.
//!
//! Layout of an instance's tempdir:
//! `dovecot.conf`, `users` (passwd-file), `run/` (base_dir), `state/`,
//! `dovecot.log`, `stderr.log`, `home/<user>/{Maildir,index,control}`.
//! Index and control files live outside `Maildir` so that the Maildir holds
//! only messages and folders, which makes [`Dovecot::store_digest`] stable
//! across sessions that merely read.
#![allow(dead_code)] // each test binary uses a different subset

use std::fmt::Write as _;
use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::{chown, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once, OnceLock};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::net::{connect, free_ports, loopback, LineConn, IO_TIMEOUT};

/// System user that owns the mail and runs the mail processes. Dovecot
/// refuses to run them as root; the `dovecot` user is created by the
/// dovecot-core package, so no manual setup is needed.
const MAIL_USER: &str = "dovecot";
/// How long a starting instance may take to greet.
const READY_WITHIN: Duration = Duration::from_secs(10);
/// Port races with parallel tests are retried this many times in all.
const START_ATTEMPTS: usize = 5;
/// How long the master may take to exit on SIGTERM. It usually needs a few
/// ms, but about one stop in three it waits for its children in a 1 s sleep
/// loop (sometimes for anvil/log, up to several seconds); nothing in the
/// tempdir needs a clean shutdown, so SIGKILL after this grace.
const STOP_GRACE: Duration = Duration::from_millis(100);
/// Set this variable to keep instance tempdirs after the test, for debugging.
const KEEP_ENV: &str = "PONTE_KEEP_DOVECOT";

/// The master user every instance has, for ponte's delivery check
/// (`backend.<name>.check_user`).
pub const CHECK_USER: &str = "ponte-check";
pub const CHECK_PASSWORD: &str = "check-Pa55";

/// What to run.
#[derive(Clone, Debug, Default)]
pub struct DovecotOptions {
    /// Shows up in the hostname (`<name>.test`), the greeting and the tempdir name.
    pub name: String,
    /// (full address, password); the address is the login name.
    pub users: Vec<(String, String)>,
    /// (certificate chain, key) in PEM; enables STARTTLS, IMAPS and POP3S.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Where the submission service relays; `None`: a port nothing listens on.
    pub relay: Option<SocketAddr>,
    /// An OAuth 2.0 token introspection URL: XOAUTH2 and OAUTHBEARER logins
    /// are checked there (oauth2 passdb, `introspection_mode = post`).
    pub oauth_introspection: Option<String>,
}

impl DovecotOptions {
    /// Options with `name` and `users`, no TLS, no relay.
    pub fn new(name: &str, users: &[(&str, &str)]) -> DovecotOptions {
        let users = users
            .iter()
            .map(|(u, p)| (u.to_string(), p.to_string()))
            .collect();
        DovecotOptions {
            name: name.to_string(),
            users,
            ..Default::default()
        }
    }
}

/// The loopback ports of one instance.
#[derive(Clone, Copy, Debug)]
struct Ports {
    imap: u16,
    imaps: Option<u16>,
    pop3: u16,
    pop3s: Option<u16>,
    lmtp: u16,
    submission: u16,
    relay: SocketAddr,
}

/// A running Dovecot; dropping it stops the whole process group.
pub struct Dovecot {
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    child: Child,
    ports: Ports,
    name: String,
    greeting: String,
    stopped: bool,
}

impl Dovecot {
    /// Starts an instance and waits for its IMAP greeting. Panics with the
    /// instance's log if it does not come up.
    pub fn start(opts: DovecotOptions) -> Dovecot {
        check_options(&opts);
        let mut failures = String::new();
        for attempt in 1..=START_ATTEMPTS {
            match Dovecot::try_start(&opts) {
                Ok(dovecot) => return dovecot,
                // Another process took one of our ports between free_ports()
                // and Dovecot's bind(): try again with fresh ports.
                Err(log) if log.contains("Address already in use") && attempt < START_ATTEMPTS => {
                    let _ = writeln!(failures, "attempt {attempt}: a port was taken");
                }
                Err(log) => panic!("dovecot {:?} failed to start:\n{failures}{log}", opts.name),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// One attempt; on failure the (already stopped) instance's log.
    fn try_start(opts: &DovecotOptions) -> Result<Dovecot, String> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("ponte-dovecot-{}-", safe_name(&opts.name)))
            .tempdir()
            .expect("create tempdir");
        let root = dir.path().to_path_buf();
        let ports = pick_ports(opts);
        // The directory name is unique, so the greeting tells our instance
        // apart from any other process that might answer on a raced port.
        let greeting = format!("Dovecot {} {} ready.", safe_name(&opts.name), dir_id(&root));
        prepare_dir(&root, opts, &ports, &greeting);
        let child = spawn(&root);
        let mut dovecot = Dovecot {
            dir: Some(dir),
            root,
            child,
            ports,
            name: opts.name.clone(),
            greeting,
            stopped: false,
        };
        match dovecot.wait_ready() {
            Ok(()) => Ok(dovecot),
            Err(why) => {
                dovecot.stop();
                Err(format!("{why}\n--- log ---\n{}", dovecot.log()))
            }
        }
    }

    /// Polls until the IMAP port greets with our own greeting, failing early
    /// if the master process exits.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_WITHIN;
        let addr = self.imap_addr();
        let mut last = String::from("never connected");
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("dovecot exited during startup: {status}"));
            }
            match connect(addr)
                .map(LineConn::new)
                .map(|mut c| c.try_read_line())
            {
                Ok(Ok(line)) if line.ends_with(&self.greeting) => return Ok(()),
                Ok(Ok(line)) => last = format!("foreign greeting {line:?}"),
                Ok(Err(e)) | Err(e) => last = e.to_string(),
            }
            sleep(Duration::from_millis(5));
        }
        Err(format!(
            "no greeting on {addr} within {READY_WITHIN:?} ({last})"
        ))
    }

    /// The name given in the options.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The instance's tempdir (config, log, homes).
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// The text after `* OK [CAPABILITY …] ` / `+OK ` in greetings; unique per instance.
    pub fn greeting(&self) -> &str {
        &self.greeting
    }

    /// Plain IMAP; offers STARTTLS when TLS is configured.
    pub fn imap_addr(&self) -> SocketAddr {
        loopback(self.ports.imap)
    }

    /// Implicit-TLS IMAP, if TLS is configured.
    pub fn imaps_addr(&self) -> Option<SocketAddr> {
        self.ports.imaps.map(loopback)
    }

    /// Plain POP3; offers STLS when TLS is configured.
    pub fn pop3_addr(&self) -> SocketAddr {
        loopback(self.ports.pop3)
    }

    /// Implicit-TLS POP3, if TLS is configured.
    pub fn pop3s_addr(&self) -> Option<SocketAddr> {
        self.ports.pop3s.map(loopback)
    }

    /// LMTP over TCP; recipients are the users' full addresses.
    pub fn lmtp_addr(&self) -> SocketAddr {
        loopback(self.ports.lmtp)
    }

    /// Dovecot's submission service (plain; STARTTLS when TLS is configured).
    pub fn submission_addr(&self) -> SocketAddr {
        loopback(self.ports.submission)
    }

    /// Where submission relays to (see [`DovecotOptions::relay`]).
    pub fn relay_addr(&self) -> SocketAddr {
        self.ports.relay
    }

    /// Root of `user`'s Maildir (INBOX; other folders are `.Name` below it).
    pub fn maildir(&self, user: &str) -> PathBuf {
        self.root
            .join("home")
            .join(user.to_lowercase())
            .join("Maildir")
    }

    /// Drops `raw` into `folder` (`INBOX`, or e.g. `Archive`, `Archive/2023`)
    /// as an unseen message; returns its path.
    pub fn deliver(&self, user: &str, folder: &str, raw: &[u8]) -> PathBuf {
        self.deliver_flagged(user, folder, raw, "")
    }

    /// Like [`Dovecot::deliver`] with Maildir flags (`S` seen, `F` flagged,
    /// `R` answered, `T` deleted, `D` draft). The message goes straight to
    /// `cur/` (written in `tmp/`, then renamed, as Maildir requires) so no
    /// later session renames it from `new/`, which would change the digest.
    pub fn deliver_flagged(&self, user: &str, folder: &str, raw: &[u8], flags: &str) -> PathBuf {
        let mailbox = folder_dir(&self.maildir(user), folder);
        for sub in ["cur", "new", "tmp"] {
            make_owned_dirs(&self.root.join("home"), &mailbox.join(sub));
        }
        let name = unique_name();
        let tmp = mailbox.join("tmp").join(&name);
        fs::write(&tmp, raw).unwrap_or_else(|e| panic!("write {tmp:?}: {e}"));
        own(&tmp, 0o600);
        let mut flags: Vec<char> = flags.chars().collect();
        flags.sort_unstable();
        let dest = mailbox
            .join("cur")
            .join(format!("{name}:2,{}", String::from_iter(flags)));
        fs::rename(&tmp, &dest).unwrap_or_else(|e| panic!("rename to {dest:?}: {e}"));
        dest
    }

    /// The Dovecot log (and anything it printed to stderr before logging started).
    pub fn log(&self) -> String {
        let log = fs::read_to_string(self.root.join("dovecot.log")).unwrap_or_default();
        let stderr = fs::read_to_string(self.root.join("stderr.log")).unwrap_or_default();
        if stderr.is_empty() {
            log
        } else {
            format!("{log}--- stderr ---\n{stderr}")
        }
    }

    /// Waits until the log contains `needle` and returns the log. Dovecot
    /// logs through a separate process, so a line can appear a moment after
    /// the client saw the reply. Panics with the log after [`IO_TIMEOUT`].
    pub fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{needle:?} not in the log of dovecot {:?}:\n{log}",
                    self.name
                );
            }
            sleep(Duration::from_millis(10));
        }
    }

    /// Runs `doveadm` against this instance (e.g. `["mailbox", "status",
    /// "-u", user, "messages", "INBOX"]`); panics with its output on failure.
    pub fn doveadm(&self, args: &[&str]) -> String {
        let conf = self.root.join("dovecot.conf");
        let out = Command::new(binary("doveadm"))
            .arg("-c")
            .arg(&conf)
            .args(args)
            .output()
            .expect("run doveadm");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "doveadm {args:?}: {}\n{text}{err}",
            out.status
        );
        text
    }

    /// One line per folder and message file in `user`'s Maildir (path, size,
    /// SHA-256), sorted. Flags are part of the file names, so flag changes,
    /// expunges, appends and folder changes all show up; Dovecot's own index,
    /// uidlist and marker files are left out because reading rewrites them.
    pub fn store_manifest(&self, user: &str) -> String {
        let maildir = self.maildir(user);
        let mut lines = Vec::new();
        if maildir.exists() {
            manifest_walk(&maildir, &maildir, &mut lines);
        }
        lines.sort();
        lines.concat()
    }

    /// SHA-256 (hex) of [`Dovecot::store_manifest`]: equal digests mean the
    /// same folders holding byte-identical messages with the same flags.
    pub fn store_digest(&self, user: &str) -> String {
        sha256_hex(self.store_manifest(user).as_bytes())
    }

    /// Stops the instance: SIGTERM to the whole process group, then SIGKILL
    /// to whatever is left after [`STOP_GRACE`].
    fn stop(&mut self) {
        if std::mem::replace(&mut self.stopped, true) {
            return;
        }
        let pgid = self.child.id() as libc::pid_t;
        signal_group(pgid, libc::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            sleep(Duration::from_millis(2));
        }
        signal_group(pgid, libc::SIGKILL);
        let _ = self.child.wait();
        reap_group(pgid);
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        self.stop();
        if std::env::var_os(KEEP_ENV).is_some() {
            if let Some(dir) = self.dir.take() {
                eprintln!("keeping dovecot {:?} in {:?}", self.name, dir.keep());
            }
        }
    }
}

fn check_options(opts: &DovecotOptions) {
    for (user, pass) in &opts.users {
        // passwd-file is colon-separated and line-based.
        let bad = |s: &str| s.is_empty() || s.contains([':', '\n', '\r']);
        assert!(
            !bad(user) && !bad(pass),
            "unusable user/password {user:?}/{pass:?}"
        );
        assert!(!user.contains('/'), "user {user:?} would escape home/");
    }
}

fn pick_ports(opts: &DovecotOptions) -> Ports {
    let p = free_ports(7);
    let tls = opts.tls.is_some();
    Ports {
        imap: p[0],
        imaps: tls.then_some(p[1]),
        pop3: p[2],
        pop3s: tls.then_some(p[3]),
        lmtp: p[4],
        submission: p[5],
        relay: opts.relay.unwrap_or(loopback(p[6])),
    }
}

/// Writes config and users, creates the directories with the owners Dovecot
/// expects: root-owned base_dir/state, a home tree owned by the mail user.
fn prepare_dir(root: &Path, opts: &DovecotOptions, ports: &Ports, greeting: &str) {
    // tempfile makes the dir 0700; mail processes (MAIL_USER) must traverse it.
    fs::set_permissions(root, fs::Permissions::from_mode(0o755)).expect("chmod tempdir");
    check_traversable(root);
    for sub in ["run", "state", "home"] {
        fs::create_dir(root.join(sub)).expect("create instance dir");
    }
    own(&root.join("home"), 0o755);
    let users: String = opts
        .users
        .iter()
        .map(|(u, p)| format!("{}:{{PLAIN}}{p}::::::\n", u.to_lowercase()))
        .collect();
    fs::write(root.join("users"), users).expect("write users");
    if let Some(url) = &opts.oauth_introspection {
        fs::write(
            root.join("oauth2.conf"),
            format!(
                "introspection_mode = post\nintrospection_url = {url}\n\
                 username_attribute = username\nactive_attribute = active\nactive_value = true\n"
            ),
        )
        .expect("write oauth2.conf");
    }
    fs::write(
        root.join("masters"),
        format!("{CHECK_USER}:{{PLAIN}}{CHECK_PASSWORD}::::::\n"),
    )
    .expect("write masters");
    fs::write(
        root.join("dovecot.conf"),
        render_config(root, opts, ports, greeting),
    )
    .expect("write config");
}

/// Mail processes run as [`MAIL_USER`] and fail with an obscure "Permission
/// denied" if any ancestor of the tempdir (e.g. a private `$TMPDIR`) is closed.
fn check_traversable(root: &Path) {
    for dir in root.ancestors().skip(1) {
        let mode = fs::metadata(dir)
            .map(|m| m.permissions().mode())
            .unwrap_or(0);
        assert!(
            mode & 0o001 != 0,
            "{dir:?} is not traversable by the {MAIL_USER} user; point TMPDIR at a directory like /tmp"
        );
    }
}

fn render_config(root: &Path, opts: &DovecotOptions, ports: &Ports, greeting: &str) -> String {
    let d = root.display();
    let name = safe_name(&opts.name);
    let ssl = match &opts.tls {
        Some((cert, key)) => format!(
            "ssl = yes\nssl_cert = <{}\nssl_key = <{}",
            cert.display(),
            key.display()
        ),
        None => "ssl = no".to_string(),
    };
    format!(
        r#"# Generated by tests/common/dovecot.rs; self-contained: no /etc/dovecot includes.
protocols = imap pop3 lmtp submission
instance_name = ponte-test-{name}-{id}
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
listen = 127.0.0.1
hostname = {name}.test
login_greeting = {greeting}
{ssl}
# Tests speak plaintext on loopback; a proxy forwards the client IP (IMAP ID,
# XCLIENT), which Dovecot accepts only from trusted networks.
disable_plaintext_auth = no
auth_mechanisms = plain login{oauth_mechs}
login_trusted_networks = 127.0.0.0/8 ::1
auth_verbose = yes
# Wrong-password tests should not sleep 2 s each (see also the passdbs).
auth_failure_delay = 0
# No `* OK Still here` during IDLE: Dovecot phases it per client IP on the
# wall clock, so it lands at a random moment in a test and would be read
# where a test waits for a tagged reply or a BYE (0 turns it off).
imap_idle_notify_interval = 0
# Behind a proxy every session comes from one IP; the default limit is 10.
mail_max_userip_connections = 1000
default_internal_user = dovecot
default_login_user = dovenull
first_valid_uid = 1
mail_location = maildir:~/Maildir:INDEX=~/index:CONTROL=~/control
submission_relay_host = {relay_ip}
submission_relay_port = {relay_port}
# Answer failed logins at once: a first passdb that always "succeeds" only to
# set nodelay, then counts as failed (continue-fail), leaving the verdict to
# passwd-file. Without it 2.3.19 holds every failure for up to 500 ms even
# with auth_failure_delay = 0, and passwd-file returns no extra fields
# (so no nodelay) on a password mismatch.
passdb {{
  driver = static
  args = nopassword=y nodelay=yes
  result_success = continue-fail
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%Lu {d}/users
}}
# ponte's delivery check logs in as this master user, acting as a mailbox
# (SASL PLAIN authorization identity); pass = yes: the mailbox must exist.
passdb {{
  driver = passwd-file
  master = yes
  pass = yes
  args = scheme=PLAIN {d}/masters
}}
{oauth}
userdb {{
  driver = passwd-file
  args = username_format=%Lu {d}/users
  default_fields = uid={MAIL_USER} gid={MAIL_USER} home={d}/home/%Lu
}}
# No per-IP auth penalty (2, 4, 8… s after a failure, even from trusted
# networks in 2.3.19): wrong-password tests would slow every later login.
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
service imap-login {{
  inet_listener imap {{
    port = {imap}
  }}
  inet_listener imaps {{
    port = {imaps}
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {pop3}
  }}
  inet_listener pop3s {{
    port = {pop3s}
  }}
}}
service submission-login {{
  inet_listener submission {{
    port = {submission}
  }}
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {lmtp}
  }}
}}
"#,
        id = dir_id(root),
        oauth = if opts.oauth_introspection.is_some() {
            format!("passdb {{\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n  args = {d}/oauth2.conf\n}}")
        } else {
            String::new()
        },
        oauth_mechs = if opts.oauth_introspection.is_some() {
            " xoauth2 oauthbearer"
        } else {
            ""
        },
        relay_ip = ports.relay.ip(),
        relay_port = ports.relay.port(),
        imap = ports.imap,
        // Port 0 disables a listener.
        imaps = ports.imaps.unwrap_or(0),
        pop3 = ports.pop3,
        pop3s = ports.pop3s.unwrap_or(0),
        submission = ports.submission,
        lmtp = ports.lmtp,
    )
}

/// `dovecot -F` in a new process group (so Drop can signal all of its
/// children at once), output captured next to the log.
fn spawn(root: &Path) -> Child {
    become_subreaper();
    let stderr = fs::File::create(root.join("stderr.log")).expect("create stderr.log");
    let stdout = stderr.try_clone().expect("dup stderr.log");
    Command::new(binary("dovecot"))
        .arg("-F")
        .arg("-c")
        .arg(root.join("dovecot.conf"))
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn dovecot (is dovecot-core installed?): {e}"))
}

/// Debian installs the daemons in /usr/sbin, which a non-login PATH may lack.
fn binary(name: &str) -> PathBuf {
    let sbin = Path::new("/usr/sbin").join(name);
    let bin = Path::new("/usr/bin").join(name);
    [sbin, bin]
        .into_iter()
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Makes this test process the reaper of orphaned descendants, so that the
/// children of a killed master come to us (see [`reap_group`]) instead of
/// piling up as zombies under a container's PID 1 that may never reap them.
fn become_subreaper() {
    static ONCE: Once = Once::new();
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) only sets a process attribute.
    ONCE.call_once(|| unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    });
}

/// Reaps the (killed) members of our Dovecot's process group that were
/// reparented to us; gives up after a second rather than hang a Drop.
fn reap_group(pgid: libc::pid_t) {
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        // SAFETY: waitpid with a null status pointer is allowed; -pgid only
        // matches processes of the group we created.
        let pid = unsafe { libc::waitpid(-pgid, std::ptr::null_mut(), libc::WNOHANG) };
        match pid {
            0 => sleep(Duration::from_millis(1)),
            p if p > 0 => {}
            _ if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) => {}
            _ => return, // ECHILD: none left
        }
    }
}

fn signal_group(pgid: libc::pid_t, signal: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions; a negative pid
    // addresses the process group we created with process_group(0).
    unsafe {
        libc::kill(-pgid, signal);
    }
}

/// Keeps only characters that are safe in a hostname, greeting and path.
fn safe_name(name: &str) -> String {
    let s: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    if s.is_empty() {
        "dovecot".to_string()
    } else {
        s
    }
}

/// The random part of the tempdir name.
fn dir_id(root: &Path) -> String {
    let name = root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.rsplit('-').next().unwrap_or_default().to_string()
}

/// Maildir++: INBOX is the root, `a/b` is `.a.b`.
fn folder_dir(maildir: &Path, folder: &str) -> PathBuf {
    if folder.eq_ignore_ascii_case("INBOX") {
        maildir.to_path_buf()
    } else {
        maildir.join(format!(".{}", folder.replace('/', ".")))
    }
}

/// uid and gid of [`MAIL_USER`], from /etc/passwd (thread-safe, unlike getpwnam).
fn mail_owner() -> (u32, u32) {
    static OWNER: OnceLock<(u32, u32)> = OnceLock::new();
    *OWNER.get_or_init(|| {
        let passwd = fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
        passwd
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.len() > 3 && f[0] == MAIL_USER)
            .map(|f| (f[2].parse().expect("uid"), f[3].parse().expect("gid")))
            .unwrap_or_else(|| panic!("no user {MAIL_USER:?}: install dovecot-core"))
    })
}

/// Gives `path` to the mail user with `mode`.
fn own(path: &Path, mode: u32) {
    let (uid, gid) = mail_owner();
    chown(path, Some(uid), Some(gid)).unwrap_or_else(|e| panic!("chown {path:?}: {e}"));
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {path:?}: {e}"));
}

/// `mkdir -p` below `base`, each new directory owned by the mail user.
fn make_owned_dirs(base: &Path, dir: &Path) {
    let rel = dir.strip_prefix(base).expect("dir below base");
    let mut path = base.to_path_buf();
    for part in rel.components() {
        path.push(part);
        if !path.exists() {
            fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {path:?}: {e}"));
            own(&path, 0o700);
        }
    }
}

/// A Maildir base name (`<secs>.M<usecs>P<pid>Q<n>.<host>`) whose timestamp
/// strictly increases, because Dovecot assigns UIDs to new files in
/// timestamp order: messages delivered in a row keep that order.
fn unique_name() -> String {
    static LAST_MICROS: Mutex<u128> = Mutex::new(0);
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_micros();
    let micros = {
        let mut last = LAST_MICROS.lock().unwrap_or_else(|e| e.into_inner());
        *last = now.max(*last + 1);
        *last
    };
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    format!(
        "{}.M{}P{}Q{seq}.ponte-test",
        micros / 1_000_000,
        micros % 1_000_000,
        std::process::id()
    )
}

fn manifest_walk(maildir: &Path, dir: &Path, lines: &mut Vec<String>) {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("read_dir {dir:?}: {e}"));
    for entry in entries {
        let entry = entry.expect("dir entry");
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let rel = path
            .strip_prefix(maildir)
            .expect("below maildir")
            .display()
            .to_string();
        let kind = entry.file_type().expect("file type");
        if kind.is_dir() {
            if name.starts_with('.') {
                lines.push(format!("D {rel}\n"));
            }
            manifest_walk(maildir, &path, lines);
        } else if name != "maildirfolder" && !name.starts_with("dovecot") {
            let data = fs::read(&path).unwrap_or_else(|e| panic!("read {path:?}: {e}"));
            lines.push(format!("F {rel} {} {}\n", data.len(), sha256_hex(&data)));
        }
    }
}

fn sha256_hex(data: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}
