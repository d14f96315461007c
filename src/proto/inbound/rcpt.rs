//! Where one inbound recipient goes, from its mailbox state on the live
//! view (DESIGN.md, "inbound SMTP" column): legacy or migrated → relayed
//! to that backend; blackout → the spool; excluded → `550 5.1.1`; a
//! domain ponte does not manage → `550 5.7.1` (no open relay).

use crate::config::View;
use crate::route::{RouteError, Router, Target};

/// What happens to an accepted recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Relay to this backend's inbound endpoint.
    Live { backend: String },
    /// Keep in the spool until the mailbox is live again (blackout).
    Spool,
}

pub const RELAY_DENIED: &str = "550 5.7.1 Relaying denied\r\n";
pub const NOT_SERVED: &str = "550 5.1.1 Mailbox unavailable\r\n";
pub const LOOKUP_FAILED: &str = "451 4.3.0 Temporary lookup failure, try again later\r\n";

/// The recipient's disposition, or the reply that refuses it.
pub fn decide(router: &Router, address: &str) -> Result<Disposition, &'static str> {
    match router.resolve_for(address, None, View::Live) {
        Ok(route) => match route.target {
            Target::Live { backend } => Ok(Disposition::Live { backend }),
            Target::ReadOnly { .. } => Ok(Disposition::Spool),
            Target::Refused { .. } => Err(NOT_SERVED),
        },
        Err(RouteError::UnknownDomain) => Err(RELAY_DENIED),
        Err(RouteError::Store(e)) => {
            tracing::warn!(error = %e, "recipient lookup failed");
            Err(LOOKUP_FAILED)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::DomainConfig;
    use crate::route::{Change, MailboxState, RedbStore};

    #[test]
    fn each_state_has_its_disposition() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path()).unwrap();
        let d = DomainConfig {
            state: MailboxState::Legacy,
            legacy: "legacy".into(),
            new: "new".into(),
            tempmail_until: None,
            notice: None,
        };
        let router = Router::new(store, BTreeMap::from([("pec.example".into(), d)])).unwrap();
        let rows = vec![
            ("b@pec.example".into(), MailboxState::Blackout, None),
            ("m@pec.example".into(), MailboxState::Migrated, None),
            ("x@pec.example".into(), MailboxState::Excluded, None),
        ];
        router.store().apply(&Change::Mailboxes(rows), "t").unwrap();
        let live = |b: &str| Ok(Disposition::Live { backend: b.into() });
        assert_eq!(decide(&router, "A@PEC.example"), live("legacy"));
        assert_eq!(decide(&router, "m@pec.example"), live("new"));
        assert_eq!(decide(&router, "b@pec.example"), Ok(Disposition::Spool));
        assert_eq!(decide(&router, "x@pec.example"), Err(NOT_SERVED));
        assert_eq!(decide(&router, "a@elsewhere.example"), Err(RELAY_DENIED));
        assert_eq!(decide(&router, "postmaster"), Err(RELAY_DENIED));
    }
}
