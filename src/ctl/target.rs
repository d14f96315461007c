//! Where the admin API is and which token to send: `--url` and
//! `--token-file` if given, else `[admin]` in the configuration file (read
//! only when one of them is missing).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use super::{token, Args, Failure};
use crate::config::{AdminConfig, Config};
use crate::secret::Secret;

/// The API's base URL (no trailing `/`) and the token to send.
#[derive(Debug)]
pub struct Target {
    pub base: String,
    pub token: Secret<String>,
}

pub fn resolve(args: &Args) -> Result<Target, Failure> {
    let admin = match (&args.url, &args.token_file) {
        (Some(_), Some(_)) => None,
        _ => Some(load_admin(&args.config)?),
    };
    let base = match (&args.url, &admin) {
        (Some(url), _) => check_url(url)?,
        (None, Some(a)) => url_of(a.bind),
        (None, None) => return Err(Failure::Usage("no --url".into())),
    };
    let token_file: PathBuf = match (&args.token_file, &admin) {
        (Some(path), _) => path.clone(),
        (None, Some(a)) => a.token_file.clone(),
        (None, None) => return Err(Failure::Usage("no --token-file".into())),
    };
    Ok(Target {
        base,
        token: read_token(&token_file)?,
    })
}

fn load_admin(path: &Path) -> Result<AdminConfig, Failure> {
    let cfg = Config::load(path).map_err(|e| Failure::Usage(format!("{}: {e}", path.display())))?;
    cfg.admin.ok_or_else(|| {
        Failure::Usage(format!(
            "{}: no [admin] section (or give --url and --token-file)",
            path.display()
        ))
    })
}

/// `--url` as given, without a trailing `/`; only plain HTTP.
pub fn check_url(url: &str) -> Result<String, Failure> {
    let url = url.trim().trim_end_matches('/');
    let rest = url
        .get(..7)
        .filter(|scheme| scheme.eq_ignore_ascii_case("http://"))
        .map(|_| &url[7..]);
    match rest {
        Some(host) if !host.is_empty() => Ok(url.to_string()),
        _ => Err(Failure::Usage(format!(
            "bad --url {url:?}: expected http://host:port (the admin API is plain HTTP)"
        ))),
    }
}

/// The URL of a bind address; a wildcard bind is reached on loopback.
pub fn url_of(bind: SocketAddr) -> String {
    let ip = match bind.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, bind.port()))
}

fn read_token(path: &Path) -> Result<Secret<String>, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::Usage(format!("token file {}: {e}", path.display())))?;
    token::parse_token(&text)
        .map_err(|e| Failure::Usage(format!("token file {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_plain_http() {
        assert_eq!(
            check_url("http://127.0.0.1:8025/").unwrap(),
            "http://127.0.0.1:8025"
        );
        assert_eq!(check_url("HTTP://[::1]:8025").unwrap(), "HTTP://[::1]:8025");
        for bad in ["https://127.0.0.1:8025", "127.0.0.1:8025", "http://", ""] {
            assert_eq!(check_url(bad).unwrap_err().code(), 2, "{bad}");
        }
    }

    #[test]
    fn wildcard_binds_are_reached_on_loopback() {
        let url = |s: &str| url_of(s.parse().unwrap());
        assert_eq!(url("127.0.0.1:8025"), "http://127.0.0.1:8025");
        assert_eq!(url("0.0.0.0:8025"), "http://127.0.0.1:8025");
        assert_eq!(url("[::]:8025"), "http://[::1]:8025");
        assert_eq!(url("[::1]:9000"), "http://[::1]:9000");
    }

    #[test]
    fn an_unreadable_token_file_is_a_usage_error() {
        let err = read_token(Path::new("/nonexistent/admin.token")).unwrap_err();
        assert_eq!(err.code(), 2);
        assert!(err.to_string().contains("/nonexistent/admin.token"));
    }
}
