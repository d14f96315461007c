//! The configuration contract: tables of valid and invalid files. Every
//! invalid one must fail naming the key and the reason.

use ponte::Config;

const BASE: &str = r#"
[state]
path = "var/state"

[[listener]]
name = "imap"
protocol = "imap"
bind = "127.0.0.1:1143"
default_domain = "pec.example"

[backend.legacy]
imap = "imaps://legacy.example:993"

[backend.new]
imap = "imap://127.0.0.1:1143"

[domain."pec.example"]
state = "legacy"
tempmail_until = "2026-06-28T09:00:00+02:00"
notice = "Moving."
"#;

fn with(replace: &str, by: &str) -> String {
    assert!(
        BASE.contains(replace),
        "fixture does not contain {replace:?}"
    );
    BASE.replacen(replace, by, 1)
}

#[test]
fn valid_files_load() {
    let cases = [
        ("base", BASE.to_string()),
        (
            "starttls backend",
            with(
                "imap = \"imaps://legacy.example:993\"",
                "imap = \"imap://legacy.example\"\nstarttls = true",
            ),
        ),
        (
            "ipv6 backend",
            with(
                "imap = \"imaps://legacy.example:993\"",
                "imap = \"imaps://[2001:db8::1]:993\"",
            ),
        ),
        (
            "limits",
            format!("{BASE}\n[limits]\nidle_timeout = \"45m\"\npreauth_timeout = \"30s\"\n"),
        ),
        (
            "outbound",
            format!("{BASE}\n[outbound]\nhostname = \"mx.pec.example\"\nrelay = \"smtp://relay.example:2525\"\nnameservers = [\"127.0.0.1:53\", \"[::1]:53\"]\n"),
        ),
        (
            "fleet",
            with(
                "path = \"var/state\"",
                "url = \"postgres://ponte@db.example:5432/ponte?sslmode=disable\"\nnode = \"mx1\"",
            ),
        ),
        (
            "fleet over a unix socket",
            with(
                "path = \"var/state\"",
                "url = \"postgres://ponte@%2Frun%2Fpostgresql/ponte\"",
            ),
        ),
        (
            "admin",
            format!(
                "{BASE}\n[admin]\nbind = \"127.0.0.1:8025\"\ntoken_file = \"conf/admin.token\"\n"
            ),
        ),
    ];
    for (name, text) in cases {
        let cfg = Config::from_toml(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(cfg.listener.len(), 1, "{name}");
    }
    let cfg = Config::from_toml(BASE).unwrap();
    let d = &cfg.domain["pec.example"];
    assert_eq!(d.legacy, "legacy");
    assert_eq!(d.tempmail_until.unwrap().unix_timestamp(), 1_782_630_000);
    assert_eq!(
        cfg.limits.idle_timeout.as_secs(),
        31 * 60,
        "default idle timeout"
    );
}

#[test]
fn invalid_files_name_the_key_and_the_reason() {
    let cases = [
        (with("bind = \"127.0.0.1:1143\"", "bind = \"nowhere\""), "listener", "socket address"),
        (with("state = \"legacy\"", "state = \"gone\""), "domain.pec.example.state", "gone"),
        (with("name = \"imap\"", "name = \"imap\"\ncolour = \"red\""), "colour", "unknown field"),
        (with("protocol = \"imap\"", "protocol = \"gopher\""), "protocol", "gopher"),
        (with("[domain.\"pec.example\"]", "[domain.\"pec.example\"]\nlegacy = \"old\""), "domain.pec.example.legacy", "no [backend.old]"),
        (with("imap = \"imap://127.0.0.1:1143\"", "imap = \"imap://new.example:143\""), "backend.new.imap", "clear text"),
        (with("imap = \"imap://127.0.0.1:1143\"", "imap = \"ftp://new.example\""), "backend.new.imap", "scheme"),
        (with("default_domain = \"pec.example\"", "default_domain = \"other.example\""), "listener[0].default_domain", "not a configured"),
        (with("bind = \"127.0.0.1:1143\"", "bind = \"127.0.0.1:1143\"\ntls = \"implicit\""), "listener[0].tls", "certificate"),
        (format!("{BASE}\n[limits]\nidle_timeout = \"5s\"\n"), "limits.idle_timeout", "at least"),
        (format!("{BASE}\n[limits]\nidle_timeout = \"soon\"\n"), "limits.idle_timeout", "duration"),
        (with("tempmail_until = \"2026-06-28T09:00:00+02:00\"", "tempmail_until = \"next june\""), "tempmail_until", ""),
        (format!("{BASE}\n[[listener]]\nname = \"imap\"\nprotocol = \"imap\"\nbind = \"127.0.0.1:1\"\n"), "listener[1].name", "duplicate"),
        (with("[state]\npath = \"var/state\"", ""), "state", "missing"),
        (with("imap = \"imap://127.0.0.1:1143\"", "imap = \"imap://127.0.0.1:1143\"\ncheck_user = \"ponte\""), "backend.new.check_user", "go together"),
        (format!("{BASE}\n[outbound]\nrelay = \"lmtp://relay.example\"\n"), "outbound.relay", "smtp://"),
        (format!("{BASE}\n[outbound]\nnameservers = [\"dns.example\"]\n"), "outbound.nameservers", ""),
        (with("path = \"var/state\"", "url = \"mysql://db.example/ponte\""), "state.url", "postgres://"),
        (with("path = \"var/state\"", "url = \"postgres://db.example/ponte?sslmode=require\""), "state.url", "sslmode=require"),
        (with("path = \"var/state\"", "url = \"postgres://db.example:notaport/ponte\""), "state.url", ""),
        (with("path = \"var/state\"", "path = \"var/state\"\nnode = \" \""), "state.node", "empty"),
    ];
    for (text, key, reason) in cases {
        let err = Config::from_toml(&text).expect_err(key).to_string();
        assert!(
            err.contains(key) && err.contains(reason),
            "expected {key:?} and {reason:?} in: {err}"
        );
    }
}

#[test]
fn the_example_configuration_is_valid() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/ponte.toml");
    let cfg = Config::load(&path).unwrap_or_else(|e| panic!("conf/ponte.toml: {e}"));
    assert!(cfg.listener.iter().any(|l| l.name == "tempmail-imaps"));
    assert!(cfg.admin.is_some());
}
