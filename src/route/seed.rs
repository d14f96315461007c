//! Mailbox lists as administrations send them: CSV rows `address,state`
//! (an optional header row). Every bad row is reported with its line
//! number, and nothing is applied if any row is bad.

use std::collections::BTreeMap;
use std::path::Path;

use super::store::Change;
use super::{MailboxState, StateStore};
use crate::config::DomainConfig;
use crate::error::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("{path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{} bad row(s): {}", .0.len(), .0.join("; "))]
    Rows(Vec<String>),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One parsed row: address, state, optional backend.
pub type Row = (String, MailboxState, Option<String>);

/// Parses the CSV text (`address,state[,backend]`, optional header),
/// checking every row against the managed domains and known backends.
pub fn parse_mailbox_csv(
    text: &str,
    domains: &BTreeMap<String, DomainConfig>,
    known_backend: &dyn Fn(&str) -> bool,
) -> Result<Vec<Row>, SeedError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .comment(Some(b'#'))
        .from_reader(text.as_bytes());
    let mut rows = Vec::new();
    let mut bad = Vec::new();
    // Line numbers counted here: the csv crate's own are short after CRLF
    // line ends (files from Windows, a browser's text area), and its record
    // offset can point before the blank and comment lines it skipped.
    // Counted incrementally: imports are 100k rows.
    let bytes = text.as_bytes();
    let (mut seen_byte, mut seen_line) = (0usize, 1u64);
    let mut line_at = |mut byte: usize| {
        loop {
            while byte < bytes.len() && matches!(bytes[byte], b'\r' | b'\n') {
                byte += 1;
            }
            if bytes.get(byte) != Some(&b'#') {
                break;
            }
            while byte < bytes.len() && bytes[byte] != b'\n' {
                byte += 1;
            }
        }
        let byte = byte.min(bytes.len());
        if byte > seen_byte {
            seen_line += bytes[seen_byte..byte]
                .iter()
                .filter(|&&b| b == b'\n')
                .count() as u64;
            seen_byte = byte;
        }
        seen_line
    };
    for (i, rec) in reader.records().enumerate() {
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                bad.push(format!("row {}: {e}", i + 1));
                continue;
            }
        };
        let line = rec
            .position()
            .map_or(i as u64 + 1, |p| line_at(p.byte() as usize));
        let field = |n| rec.get(n).unwrap_or("");
        if i == 0 && field(0).eq_ignore_ascii_case("address") {
            continue;
        }
        if rec.len() > 3 {
            bad.push(format!(
                "line {line}: {} fields, expected address,state[,backend]",
                rec.len()
            ));
            continue;
        }
        match parse_row(field(0), field(1), field(2), domains, known_backend) {
            Ok(row) => rows.push(row),
            Err(reason) => bad.push(format!("line {line}: {reason}")),
        }
    }
    if bad.is_empty() {
        Ok(rows)
    } else {
        Err(SeedError::Rows(bad))
    }
}

fn parse_row(
    addr: &str,
    state: &str,
    backend: &str,
    domains: &BTreeMap<String, DomainConfig>,
    known_backend: &dyn Fn(&str) -> bool,
) -> Result<Row, String> {
    if addr.trim().len() > super::MAX_ADDRESS {
        return Err(format!(
            "an address is at most {} bytes long (RFC 5321)",
            super::MAX_ADDRESS
        ));
    }
    let address = super::normalize(addr, None)
        .filter(|a| a.contains('@'))
        .ok_or_else(|| format!("{addr:?} is not an address"))?;
    let domain = address.rsplit_once('@').map_or("", |(_, d)| d);
    if !domains.contains_key(domain) {
        return Err(format!("{domain} is not a configured domain"));
    }
    let state = state.parse::<MailboxState>()?;
    let backend = match backend {
        "" => None,
        b if known_backend(b) => Some(b.to_string()),
        b => return Err(format!("unknown backend {b:?}")),
    };
    Ok((address, state, backend))
}

/// Imports the seed file when the store holds no mailbox yet. Returns the
/// number of rows imported.
pub fn import_seed(
    store: &dyn StateStore,
    path: &Path,
    domains: &BTreeMap<String, DomainConfig>,
    known_backend: &dyn Fn(&str) -> bool,
) -> Result<usize, SeedError> {
    if store.mailbox_count()? > 0 {
        return Ok(0);
    }
    let text = std::fs::read_to_string(path).map_err(|e| SeedError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let rows = parse_mailbox_csv(&text, domains, known_backend)?;
    let n = rows.len();
    store.apply(&Change::Mailboxes(rows), "seed")?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domains() -> BTreeMap<String, DomainConfig> {
        let d = DomainConfig {
            state: MailboxState::Legacy,
            legacy: "legacy".into(),
            new: "new".into(),
            tempmail_until: None,
            notice: None,
        };
        BTreeMap::from([("pec.example".to_string(), d)])
    }

    #[test]
    fn parses_rows_with_a_header() {
        let rows = parse_mailbox_csv(
            "address,state,backend\nAlice@pec.example, migrated,new2\nbob@pec.example,legacy\n",
            &domains(),
            &|b| b == "new2",
        )
        .unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            rows[0],
            (
                "alice@pec.example".into(),
                MailboxState::Migrated,
                Some("new2".into())
            )
        );
        assert_eq!(rows[1].2, None);
    }

    #[test]
    fn line_numbers_hold_with_crlf_comments_and_blank_lines() {
        let err = parse_mailbox_csv(
            "address,state\r\n# first wave\r\nok@pec.example,legacy\r\n\r\ny@pec.example,gone\r\nz@pec.example,flying\r\n",
            &domains(),
            &|_| false,
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("2 bad row(s)"), "{err}");
        assert!(err.contains("line 5: unknown state \"gone\""), "{err}");
        assert!(err.contains("line 6: unknown state \"flying\""), "{err}");
    }

    #[test]
    fn reports_every_bad_row_with_its_line() {
        let long = format!("{}@pec.example", "a".repeat(250));
        let err = parse_mailbox_csv(
            &format!("address,state\nok@pec.example,legacy\nx@other.example,legacy\nnot-an-address,legacy\ny@pec.example,gone\nz@pec.example,legacy,nowhere\n{long},legacy\n"),
            &domains(),
            &|_| false,
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("5 bad row(s)"), "{err}");
        assert!(
            err.contains("line 7: an address is at most 254 bytes"),
            "{err}"
        );
        assert!(err.contains("line 6: unknown backend"), "{err}");
        assert!(err.contains("line 3: other.example"), "{err}");
        assert!(err.contains("line 4:"), "{err}");
        assert!(err.contains("line 5: unknown state"), "{err}");
    }
}
