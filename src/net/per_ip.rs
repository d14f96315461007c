//! Connections per client address: one host (or one botnet node) must not
//! take every connection slot. Offices behind one NAT share an address, so
//! the default is generous; the cap is `limits.max_connections_per_ip`.

use std::net::IpAddr;
use std::sync::Arc;

use dashmap::DashMap;

pub struct PerIp {
    counts: DashMap<IpAddr, u32>,
    max: u32,
}

/// Holds one of an address's slots; dropping it gives the slot back.
pub struct IpSlot {
    owner: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    pub fn new(max: u32) -> Arc<PerIp> {
        Arc::new(PerIp {
            counts: DashMap::new(),
            max,
        })
    }

    /// A slot for `ip`, or `None` when it already holds `max`.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        let mut n = self.counts.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            owner: self.clone(),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        // Remove the entry at zero so the map does not grow with every
        // address ever seen.
        self.owner.counts.remove_if_mut(&self.ip, |_, n| {
            *n = n.saturating_sub(1);
            *n == 0
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_each_address_and_forgets_idle_ones() {
        let p = PerIp::new(2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let s1 = p.acquire(a).unwrap();
        let _s2 = p.acquire(a).unwrap();
        assert!(p.acquire(a).is_none());
        assert!(p.acquire(b).is_some());
        drop(s1);
        assert!(p.acquire(a).is_some());
        drop(_s2);
        assert!(p.counts.is_empty());
    }
}
