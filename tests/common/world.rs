//! A whole migration on loopback: a legacy and a new Dovecot with their own
//! users, passwords and stores, and ponte in front with the old hostnames'
//! certificates. Later protocols extend `World::config` with their
//! listeners and backend endpoints.
//!
//! Users (address → passwords legacy / new, route):
//! - alice@pec.example: both backends, different passwords; domain default (legacy)
//! - bob@pec.example: both backends; `migrated` by the seed file
//! - dave@pec.example: legacy only; domain default (legacy)
//! - carol@comune.example: new only; domain `migrated`
//!
//! Each user's INBOX on each backend holds one message whose subject names
//! the backend, which proves where a session landed.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;

use super::certs::TestCa;
use super::dovecot::{Dovecot, DovecotOptions};
use super::net::LineConn;
use super::ponte::Ponte;
use super::smtp_sink::SmtpSink;

pub struct User {
    pub address: &'static str,
    pub legacy_password: Option<&'static str>,
    pub new_password: Option<&'static str>,
}

pub const ALICE: User = User {
    address: "alice@pec.example",
    legacy_password: Some("alice-legacy-pw"),
    new_password: Some("alice-new-pw"),
};
pub const BOB: User = User {
    address: "bob@pec.example",
    legacy_password: Some("bob-legacy-pw"),
    new_password: Some("bob \"new\" pw"),
};
pub const DAVE: User = User {
    address: "dave@pec.example",
    legacy_password: Some("dave-legacy-pw"),
    new_password: None,
};
pub const CAROL: User = User {
    address: "carol@comune.example",
    legacy_password: None,
    new_password: Some("carol-new-pw"),
};
pub const USERS: [&User; 4] = [&ALICE, &BOB, &DAVE, &CAROL];

/// The subject line seeded in `user`'s INBOX on `backend`.
pub fn marker(backend: &str, user: &str) -> String {
    format!("{backend} store of {user}")
}

/// The admin API token (name `ops`) in the world's token file.
pub const ADMIN_TOKEN: &str = "test-token-0123456789abcdef";

/// Listener names in the order `config` writes them.
pub const LISTENERS: [&str; 11] = [
    "admin",
    "imap",
    "imap-starttls",
    "imaps",
    "tempmail",
    "pop3",
    "pop3s",
    "pop3-tempmail",
    "submission",
    "submissions",
    "inbound",
];

pub struct World {
    pub dir: tempfile::TempDir,
    pub ca: TestCa,
    /// PEM file clients trust to verify ponte's certificates.
    pub ca_file: PathBuf,
    pub legacy: Dovecot,
    pub new: Dovecot,
    /// Where each backend's submission service relays what it accepts.
    pub legacy_sink: SmtpSink,
    pub new_sink: SmtpSink,
    pub ponte: Option<Ponte>,
    /// Extra `[limits]` keys for the generated configuration.
    pub extra: String,
}

impl World {
    /// Starts both backends and ponte.
    pub fn start() -> World {
        Self::start_with("")
    }

    /// Same, with extra `[limits]` keys (e.g. `preauth_timeout = "1s"`).
    pub fn start_with(extra: &str) -> World {
        let mut world = Self::backends_only(extra);
        world.ponte = Some(Ponte::start(&world.config()));
        world
    }

    /// Both backends and the files ponte needs, without starting ponte
    /// (tests that run the `ponte` binary themselves).
    pub fn backends_only(extra: &str) -> World {
        let dir = tempfile::Builder::new()
            .prefix("ponte-world-")
            .tempdir()
            .expect("tempdir");
        let ca = TestCa::new("ponte test CA");
        let ca_file = ca.write_to(dir.path(), "ca");
        let backend_cert = ca.issue(&["127.0.0.1", "localhost"]);
        let tls = backend_cert.write_to(dir.path(), "backend");
        let legacy_sink = SmtpSink::start("legacy");
        let new_sink = SmtpSink::start("new");
        let legacy = start_backend("legacy", &tls, &legacy_sink, |u| u.legacy_password);
        let new = start_backend("new", &tls, &new_sink, |u| u.new_password);
        for (name, d) in [("legacy", &legacy), ("new", &new)] {
            for u in USERS {
                let has = if name == "legacy" {
                    u.legacy_password
                } else {
                    u.new_password
                };
                if has.is_some() {
                    let subject = marker(name, u.address);
                    let msg = format!("From: seed@example\r\nTo: {}\r\nSubject: {subject}\r\nMessage-ID: <{name}.{}>\r\n\r\nbody of {subject}\r\n", u.address, u.address);
                    d.deliver(u.address, "INBOX", msg.as_bytes());
                }
            }
        }
        for (stem, names) in [
            ("pec", &["mbox.pec.example", "tempmail.pec.example"][..]),
            ("comune", &["imap.comune.example"][..]),
        ] {
            ca.issue(names).write_to(dir.path(), stem);
        }
        std::fs::write(
            dir.path().join("admin.token"),
            format!("ops:{ADMIN_TOKEN}\n"),
        )
        .expect("token");
        std::fs::write(
            dir.path().join("check.secret"),
            format!("{}\n", super::dovecot::CHECK_PASSWORD),
        )
        .expect("check secret");
        std::fs::write(
            dir.path().join("mailboxes.csv"),
            "address,state\nbob@pec.example,migrated\n",
        )
        .expect("seed");
        World {
            dir,
            ca,
            ca_file,
            legacy,
            new,
            legacy_sink,
            new_sink,
            ponte: None,
            extra: extra.to_string(),
        }
    }

    /// The generated configuration: live IMAP listeners (plain, STARTTLS,
    /// implicit TLS), a plain tempmail (read-only) one, the same for POP3,
    /// submission (587-style STARTTLS, 465-style implicit TLS) and inbound
    /// SMTP (STARTTLS offered; each backend's LMTP behind it). Legacy
    /// is reached over IMAPS/POP3S (plain submission), new over plain
    /// ports upgraded with STARTTLS.
    pub fn config(&self) -> String {
        let d = self.dir.path().display();
        let mut c = String::new();
        let _ = write!(
            c,
            r#"
[state]
path = "{d}/state"
seed = "{d}/mailboxes.csv"

[spool]
path = "{d}/spool"

[admin]
bind = "127.0.0.1:0"
token_file = "{d}/admin.token"

[limits]
shutdown_grace = "2s"
auth_failure_delay = "10ms"
{extra_limits}

[[tls.certificate]]
names = ["mbox.pec.example", "tempmail.pec.example"]
cert = "{d}/pec.crt"
key = "{d}/pec.key"

[[tls.certificate]]
names = ["imap.comune.example"]
cert = "{d}/comune.crt"
key = "{d}/comune.key"

[[listener]]
name = "imap"
protocol = "imap"
bind = "127.0.0.1:0"
default_domain = "pec.example"

[[listener]]
name = "imap-starttls"
protocol = "imap"
bind = "127.0.0.1:0"
tls = "starttls"

[[listener]]
name = "imaps"
protocol = "imap"
bind = "127.0.0.1:0"
tls = "implicit"

[[listener]]
name = "tempmail"
protocol = "imap"
bind = "127.0.0.1:0"
view = "tempmail"
default_domain = "pec.example"

[[listener]]
name = "pop3"
protocol = "pop3"
bind = "127.0.0.1:0"
default_domain = "pec.example"

[[listener]]
name = "pop3s"
protocol = "pop3"
bind = "127.0.0.1:0"
tls = "implicit"

[[listener]]
name = "pop3-tempmail"
protocol = "pop3"
bind = "127.0.0.1:0"
view = "tempmail"
default_domain = "pec.example"

[[listener]]
name = "submission"
protocol = "submission"
bind = "127.0.0.1:0"
tls = "starttls"

[[listener]]
name = "submissions"
protocol = "submission"
bind = "127.0.0.1:0"
tls = "implicit"

[[listener]]
name = "inbound"
protocol = "smtp"
bind = "127.0.0.1:0"
tls = "starttls"

[backend.legacy]
imap = "imaps://{legacy_imaps}"
pop3 = "pop3s://{legacy_pop3s}"
submission = "smtp://{legacy_submission}"
inbound = "lmtp://{legacy_lmtp}"
ca = "{d}/ca.crt"
check_user = "{check_user}"
check_password_file = "{d}/check.secret"

[backend.new]
imap = "imap://{new_imap}"
pop3 = "pop3://{new_pop3}"
submission = "smtp://{new_submission}"
inbound = "lmtp://{new_lmtp}"
starttls = true
ca = "{d}/ca.crt"
check_user = "{check_user}"
check_password_file = "{d}/check.secret"

[domain."pec.example"]
state = "legacy"

[domain."comune.example"]
state = "migrated"
"#,
            extra_limits = self.extra,
            check_user = super::dovecot::CHECK_USER,
            legacy_imaps = self.legacy.imaps_addr().expect("legacy imaps"),
            new_imap = self.new.imap_addr(),
            legacy_pop3s = self.legacy.pop3s_addr().expect("legacy pop3s"),
            legacy_submission = self.legacy.submission_addr(),
            new_pop3 = self.new.pop3_addr(),
            new_submission = self.new.submission_addr(),
            legacy_lmtp = self.legacy.lmtp_addr(),
            new_lmtp = self.new.lmtp_addr(),
        );
        c
    }

    /// The configuration of one node of a fleet sharing this world's
    /// backends: the state in PostgreSQL at `url`, its own spool and
    /// embedded-store directory (unused), named `node`.
    pub fn fleet_config(&self, url: &str, node: &str) -> String {
        let d = self.dir.path().display();
        self.config()
            .replacen(
                &format!("path = \"{d}/state\""),
                &format!("path = \"{d}/state-{node}\"\nurl = \"{url}\"\nnode = \"{node}\""),
                1,
            )
            .replacen(
                &format!("path = \"{d}/spool\""),
                &format!("path = \"{d}/spool-{node}\""),
                1,
            )
    }

    /// The configuration with fixed free ports instead of port 0, written
    /// to `ponte.toml` in the world's directory, for a `ponte` process.
    /// Returns the file and the listeners' addresses.
    pub fn config_file(&self) -> (PathBuf, BTreeMap<String, SocketAddr>) {
        let mut text = self.config();
        let mut addrs = BTreeMap::new();
        for name in LISTENERS {
            let addr = super::net::loopback(super::net::free_port());
            text = text.replacen("bind = \"127.0.0.1:0\"", &format!("bind = \"{addr}\""), 1);
            addrs.insert(name.to_string(), addr);
        }
        let path = self.dir.path().join("ponte.toml");
        std::fs::write(&path, text).expect("write ponte.toml");
        (path, addrs)
    }

    /// A plain IMAP session through ponte, logged in as `user` (tag `a`).
    pub fn login(&self, user: &User, password: Option<&str>) -> LineConn<TcpStream> {
        let mut c = LineConn::tcp(self.addr("imap"));
        c.read_line();
        let password = password.expect("the user has a password on that backend");
        let r = c.imap(
            "a",
            &format!(
                "LOGIN {} \"{}\"",
                user.address,
                password.replace('"', "\\\"")
            ),
        );
        assert!(r.is_ok(), "login {}: {}", user.address, r.status);
        c
    }

    pub fn ponte(&self) -> &Ponte {
        self.ponte.as_ref().expect("ponte running")
    }

    pub fn addr(&self, listener: &str) -> SocketAddr {
        self.ponte().addr(listener)
    }

    /// Stops ponte and starts it again on the same store (new ports).
    pub fn restart(&mut self) {
        self.stop();
        self.ponte = Some(Ponte::start(&self.config()));
    }

    /// Starts ponte with `toml` (a variant of [`World::config`]).
    pub fn start_config(&mut self, toml: &str) {
        self.stop();
        self.ponte = Some(Ponte::start(toml));
    }

    /// Stops ponte (the backends keep running); `restart` starts it again.
    pub fn stop(&mut self) {
        if let Some(p) = self.ponte.take() {
            p.stop();
        }
    }
}

fn start_backend(
    name: &str,
    tls: &(PathBuf, PathBuf),
    sink: &SmtpSink,
    password: impl Fn(&User) -> Option<&'static str>,
) -> Dovecot {
    let users: Vec<(&str, &str)> = USERS
        .iter()
        .filter_map(|u| Some((u.address, password(u)?)))
        .collect();
    let mut opts = DovecotOptions::new(name, &users);
    opts.tls = Some(tls.clone());
    opts.relay = Some(sink.addr());
    Dovecot::start(opts)
}
