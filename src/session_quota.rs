//! Who holds the persistent-session table, so that one peer cannot fill it and
//! lock everyone else out. Pure.
//!
//! Owns the counts of persistent sessions (Session Expiry > 0) in all, per
//! anonymous client address and per user, and the refusal decision. A session
//! that ends with its connection is never counted: clean clients are bounded by
//! `max_connections`, never refused for lack of persistent-session room. Which
//! session to expire when the table is full is the router's call (it knows who is
//! offline); this only says whether there is room.

use crate::hash::Map;
use std::net::IpAddr;
use std::sync::Arc;

/// Who a persistent session is counted against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The logged-in user; None: anonymous.
    pub user: Option<Arc<str>>,
    /// The address of the connection that created the session (IPv6 by /64, as a
    /// host usually owns its whole /64), for anonymous sessions; None when not
    /// known (a session restored from the store).
    pub addr: Option<IpAddr>,
}

impl Holder {
    pub fn new(user: Option<Arc<str>>, addr: Option<IpAddr>) -> Holder {
        // Authenticated sessions count against their user, not the address (many
        // users may share a NAT or a local bridge).
        let addr = if user.is_some() {
            None
        } else {
            addr.map(prefix)
        };
        Holder { user, addr }
    }

    pub fn anonymous(&self) -> bool {
        self.user.is_none()
    }
}

/// The /64 of an IPv6 address; IPv4 as is.
fn prefix(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
    }
}

/// Why there is no room for one more persistent session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// `max_sessions` persistent sessions exist.
    Table,
    /// This anonymous address holds `max_sessions_per_address`.
    Address,
    /// This user holds `max_sessions_per_user`.
    User,
}

#[derive(Debug, Clone, Copy)]
pub struct QuotaLimits {
    pub max_sessions: usize,
    pub per_address: u32,
    pub per_user: u32,
}

pub struct SessionQuota {
    limits: QuotaLimits,
    total: usize,
    per_addr: Map<IpAddr, u32>,
    per_user: Map<Arc<str>, u32>,
}

impl SessionQuota {
    pub fn new(limits: QuotaLimits) -> SessionQuota {
        SessionQuota {
            limits,
            total: 0,
            per_addr: Map::default(),
            per_user: Map::default(),
        }
    }

    /// New caps (a reload): sessions over them stay, new ones wait for room.
    pub fn set_limits(&mut self, limits: QuotaLimits) {
        self.limits = limits;
    }

    /// Persistent sessions counted.
    pub fn len(&self) -> usize {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// May `h` have one more persistent session? The per-holder caps come first:
    /// a holder at its own cap is refused even if others could be expired.
    pub fn check(&self, h: &Holder) -> Result<(), Full> {
        if let Some(u) = &h.user {
            if self.per_user.get(u).copied().unwrap_or(0) >= self.limits.per_user {
                return Err(Full::User);
            }
        }
        if let Some(a) = &h.addr {
            if self.per_addr.get(a).copied().unwrap_or(0) >= self.limits.per_address {
                return Err(Full::Address);
            }
        }
        if self.total >= self.limits.max_sessions {
            return Err(Full::Table);
        }
        Ok(())
    }

    /// Count a persistent session (restored ones too: they may exceed the caps
    /// after the caps were lowered, which only refuses new ones).
    pub fn add(&mut self, h: &Holder) {
        self.total += 1;
        if let Some(u) = &h.user {
            *self.per_user.entry(u.clone()).or_default() += 1;
        }
        if let Some(a) = h.addr {
            *self.per_addr.entry(a).or_default() += 1;
        }
    }

    /// A counted session ended (or became one that ends with its connection).
    pub fn remove(&mut self, h: &Holder) {
        self.total = self.total.saturating_sub(1);
        if let Some(u) = &h.user {
            if let Some(n) = self.per_user.get_mut(u) {
                *n -= 1;
                if *n == 0 {
                    self.per_user.remove(u);
                }
            }
        }
        if let Some(a) = &h.addr {
            if let Some(n) = self.per_addr.get_mut(a) {
                *n -= 1;
                if *n == 0 {
                    self.per_addr.remove(a);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_address_per_user_and_in_all() {
        let mut q = SessionQuota::new(QuotaLimits {
            max_sessions: 4,
            per_address: 2,
            per_user: 2,
        });
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let anon = Holder::new(None, Some(a));
        let alice = Holder::new(Some(Arc::from("alice")), Some(a));
        assert_eq!(alice.addr, None, "users count per user, not per address");
        q.add(&anon);
        q.add(&anon);
        assert_eq!(q.check(&anon), Err(Full::Address));
        assert_eq!(q.check(&alice), Ok(()));
        q.add(&alice);
        q.add(&alice);
        assert_eq!(q.check(&alice), Err(Full::User));
        let other = Holder::new(None, Some("10.0.0.2".parse().unwrap()));
        assert_eq!(q.check(&other), Err(Full::Table));
        q.remove(&anon);
        assert_eq!(q.check(&other), Ok(()));
        assert_eq!(q.check(&anon), Ok(()));
        assert_eq!(q.len(), 3);
        // IPv6 hosts count by /64.
        let v6a = Holder::new(None, Some("2001:db8::1".parse().unwrap()));
        let v6b = Holder::new(None, Some("2001:db8::ffff:1".parse().unwrap()));
        assert_eq!(v6a, v6b);
    }
}
