//! The failed-login throttle: per address (IPv6 by /64) failures, the delay they
//! earn, and which addresses logged in before. Pure, time passed in as `now`;
//! bounded in memory.

use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

use crate::hash::Map;

/// Failures below this many cost nothing: people mistype.
const FREE_FAILURES: u32 = 3;

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

/// Slows repeated failed logins from one address: after a few failures each next
/// check waits twice as long, up to a cap. Memory is bounded by `max_entries`.
#[derive(Debug)]
pub struct LoginThrottle {
    base_delay: Duration,
    max_delay: Duration,
    forget_after: Duration,
    max_entries: usize,
    entries: Map<IpAddr, Failures>,
    /// Addresses a login succeeded from, with when (at most `max_entries`, the
    /// oldest forgotten first): their checks go ahead of strangers' when the
    /// login queue is full. Only a valid password adds one, so an attacker
    /// cannot fill it.
    known: Map<IpAddr, Instant>,
}

/// The address a failure counts against. An IPv6 address counts as its /64: one
/// host usually holds a whole /64 and could otherwise try from a fresh address
/// every time. An IPv4-mapped address counts as the IPv4 address.
fn throttle_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        },
    }
}

impl LoginThrottle {
    pub fn base_delay(&self) -> Duration {
        self.base_delay
    }

    pub fn max_delay(&self) -> Duration {
        self.max_delay
    }

    /// New delays (a reload); the failures counted so far stay.
    pub fn set_delays(&mut self, base_delay: Duration, max_delay: Duration) {
        self.base_delay = base_delay;
        self.max_delay = max_delay;
    }

    /// `delay` is `base_delay * 2^(failures - 3)` from the third failure on, at most
    /// `max_delay`; an address is forgotten `forget_after` its last failure; at most
    /// `max_entries` addresses are tracked.
    pub fn new(
        base_delay: Duration,
        max_delay: Duration,
        forget_after: Duration,
        max_entries: usize,
    ) -> LoginThrottle {
        LoginThrottle {
            base_delay,
            max_delay,
            forget_after,
            max_entries,
            entries: Map::default(),
            known: Map::default(),
        }
    }

    fn expired(&self, f: &Failures, now: Instant) -> bool {
        now.saturating_duration_since(f.last) >= self.forget_after
    }

    /// Has a login succeeded from this address before?
    pub fn known(&self, ip: IpAddr) -> bool {
        self.known.contains_key(&throttle_key(ip))
    }

    /// Failures counted against this address (0 when none or forgotten).
    pub fn failures(&self, ip: IpAddr, now: Instant) -> u32 {
        self.entries
            .get(&throttle_key(ip))
            .filter(|f| !self.expired(f, now))
            .map_or(0, |f| f.count)
    }

    /// How long to wait before checking this address's next attempt.
    pub fn delay(&mut self, ip: IpAddr, now: Instant) -> Duration {
        let key = throttle_key(ip);
        let Some(f) = self.entries.get(&key).copied() else {
            return Duration::ZERO;
        };
        if self.expired(&f, now) {
            self.entries.remove(&key);
            return Duration::ZERO;
        }
        if f.count < FREE_FAILURES {
            return Duration::ZERO;
        }
        // None when the doubling overflows: the cap applies long before that.
        1u32.checked_shl(f.count - FREE_FAILURES)
            .and_then(|factor| self.base_delay.checked_mul(factor))
            .map_or(self.max_delay, |d| d.min(self.max_delay))
    }

    /// Count a failed login from `ip`.
    pub fn failed(&mut self, ip: IpAddr, now: Instant) {
        if self.max_entries == 0 {
            return;
        }
        let key = throttle_key(ip);
        if let Some(mut f) = self.entries.get(&key).copied() {
            f.count = if self.expired(&f, now) {
                1
            } else {
                f.count.saturating_add(1)
            };
            f.last = now;
            self.entries.insert(key, f);
            return;
        }
        if self.entries.len() >= self.max_entries {
            self.make_room(now);
        }
        self.entries.insert(
            key,
            Failures {
                count: 1,
                last: now,
            },
        );
    }

    /// A successful login takes back its own attempt (the caller counts every
    /// attempt as failed when it arrives), and nothing more: wiping the record
    /// would let one valid account reset the count between guesses at others.
    pub fn succeeded(&mut self, ip: IpAddr, now: Instant) {
        let key = throttle_key(ip);
        if self.max_entries > 0 {
            if self.known.len() >= self.max_entries && !self.known.contains_key(&key) {
                let oldest = self.known.iter().min_by_key(|(_, t)| **t).map(|(k, _)| *k);
                if let Some(k) = oldest {
                    self.known.remove(&k);
                }
            }
            self.known.insert(key, now);
        }
        if let Some(f) = self.entries.get_mut(&key) {
            f.count = f.count.saturating_sub(1);
            if f.count == 0 {
                self.entries.remove(&key);
            }
        }
    }

    /// Free one slot: drop what has expired, else the address with the fewest
    /// failures, the oldest of those. Fewest first, not oldest first: addresses
    /// that cost nothing to use (password-less CONNECTs from a spread of
    /// addresses, one failure each) would otherwise push out a throttled
    /// address's record and reset its delay for free; now they only push out each
    /// other, and evicting an address with n failures takes new addresses with n
    /// failures each, every one of which paid its delays. O(entries), paid only
    /// when the table is full, i.e. under an attack from many addresses.
    fn make_room(&mut self, now: Instant) {
        let forget_after = self.forget_after;
        self.entries
            .retain(|_, f| now.saturating_duration_since(f.last) < forget_after);
        if self.entries.len() < self.max_entries {
            return;
        }
        let cheapest = self
            .entries
            .iter()
            .min_by_key(|(_, f)| (f.count, f.last))
            .map(|(k, _)| *k);
        if let Some(k) = cheapest {
            self.entries.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const IP: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    const MS: Duration = Duration::from_millis(1);

    fn throttle(max_entries: usize) -> LoginThrottle {
        LoginThrottle::new(100 * MS, 1000 * MS, Duration::from_secs(60), max_entries)
    }

    #[test]
    fn delay_doubles_from_the_third_failure_up_to_the_cap() {
        let t0 = Instant::now();
        let mut t = throttle(10);
        assert_eq!(t.delay(IP, t0), Duration::ZERO);
        let mut seen = Vec::new();
        for _ in 0..8 {
            t.failed(IP, t0);
            seen.push(t.delay(IP, t0).as_millis());
        }
        assert_eq!(seen, [0, 0, 100, 200, 400, 800, 1000, 1000]);
        // Counts far past the doubling range stay at the cap.
        for _ in 0..100 {
            t.failed(IP, t0);
        }
        assert_eq!(t.delay(IP, t0), 1000 * MS);
        // Other addresses are not slowed.
        assert_eq!(t.delay(IpAddr::V4(Ipv4Addr::LOCALHOST), t0), Duration::ZERO);
    }

    /// Only a success makes an address known, and the table stays bounded.
    #[test]
    fn successful_addresses_are_remembered_within_the_bound() {
        let t0 = Instant::now();
        let mut t = throttle(2);
        assert!(!t.known(IP));
        t.failed(IP, t0);
        assert!(!t.known(IP));
        t.succeeded(IP, t0);
        assert!(t.known(IP));
        let other = |i: u8| IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, i));
        t.succeeded(other(1), t0 + Duration::from_secs(1));
        t.succeeded(other(2), t0 + Duration::from_secs(2));
        assert_eq!(t.known.len(), 2);
        assert!(!t.known(IP), "the oldest is forgotten first");
        assert!(t.known(other(2)));
    }

    #[test]
    fn failures_are_forgotten_and_cleared() {
        let t0 = Instant::now();
        let mut t = throttle(10);
        for _ in 0..4 {
            t.failed(IP, t0);
        }
        let later = t0 + Duration::from_secs(59);
        assert_eq!(t.delay(IP, later), 200 * MS);
        assert_eq!(t.delay(IP, t0 + Duration::from_secs(60)), Duration::ZERO);
        assert!(t.entries.is_empty());

        // A failure after the window starts a new count.
        for _ in 0..4 {
            t.failed(IP, t0);
        }
        let t1 = t0 + Duration::from_secs(61);
        t.failed(IP, t1);
        assert_eq!(t.entries.get(&IP).map(|f| f.count), Some(1));
        assert_eq!(t.delay(IP, t1), Duration::ZERO);

        for _ in 0..5 {
            t.failed(IP, t1);
        }
        // 6 failures: 800 ms. A success takes back one attempt only (5: 400 ms),
        // so a valid account cannot reset the count for guesses at others.
        assert_eq!(t.delay(IP, t1), 800 * MS);
        t.succeeded(IP, t0);
        assert_eq!(t.delay(IP, t1), 400 * MS);
        for _ in 0..5 {
            t.succeeded(IP, t0);
        }
        assert!(
            t.entries.is_empty(),
            "the record goes when its count reaches 0"
        );
        t.succeeded(IP, t0);
        assert_eq!(t.delay(IP, t1), Duration::ZERO);
        // An earlier `now` than the last failure does not panic.
        t.failed(IP, t1);
        assert_eq!(t.delay(IP, t0), Duration::ZERO);
    }

    fn v4(n: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, n))
    }

    #[test]
    fn table_is_bounded_dropping_expired_then_oldest() {
        let t0 = Instant::now();
        let mut t = throttle(3);
        t.failed(v4(1), t0);
        t.failed(v4(2), t0 + Duration::from_secs(10));
        t.failed(v4(3), t0 + Duration::from_secs(20));
        // Full; at 65 s only v4(1) has expired: it goes, the others stay.
        let at = t0 + Duration::from_secs(65);
        t.failed(v4(4), at);
        assert_eq!(t.entries.len(), 3);
        assert!(!t.entries.contains_key(&v4(1)));
        // Full, nothing expired: the oldest last failure (v4(2)) goes.
        t.failed(v4(3), at); // refreshes v4(3)
        t.failed(v4(5), at + Duration::from_secs(1));
        assert_eq!(t.entries.len(), 3);
        assert!(!t.entries.contains_key(&v4(2)));
        assert!(t.entries.contains_key(&v4(3)));
        assert!(t.entries.contains_key(&v4(4)));
        assert!(t.entries.contains_key(&v4(5)));

        let mut none = throttle(0);
        for _ in 0..5 {
            none.failed(IP, t0);
        }
        assert_eq!(none.delay(IP, t0), Duration::ZERO);
        assert!(none.entries.is_empty());
    }

    /// Issue 10, item 10: 4,200 password-less CONNECTs from 4,200 addresses
    /// evicted a throttled address's record (the oldest went first), resetting its
    /// delay for free. Fewest failures go first now.
    #[test]
    fn a_spread_of_one_failure_addresses_never_evicts_a_throttled_one() {
        let t0 = Instant::now();
        let mut t = throttle(4096);
        for _ in 0..6 {
            t.failed(IP, t0);
        }
        let throttled = t.delay(IP, t0);
        assert_eq!(throttled, 800 * MS);
        let loopback = |i: u32| IpAddr::V4(Ipv4Addr::from(0x7f00_0001 + i));
        for i in 0..4200 {
            // Every one later than the throttled address's last failure.
            t.failed(loopback(i), t0 + (i + 1) * MS);
        }
        let now = t0 + Duration::from_secs(5);
        assert_eq!(t.entries.len(), 4096, "the table stays bounded");
        assert_eq!(t.failures(IP, now), 6);
        assert_eq!(t.delay(IP, now), throttled);
        // Among equals the oldest goes: the first spread addresses are gone.
        assert_eq!(t.failures(loopback(0), now), 0);
        assert_eq!(t.failures(loopback(4199), now), 1);

        // Only addresses that failed as often can push it out.
        let mut t = throttle(3);
        for _ in 0..4 {
            t.failed(v4(1), t0);
        }
        t.failed(v4(2), t0);
        t.failed(v4(3), t0);
        for _ in 0..4 {
            t.failed(v4(4), t0 + MS);
        }
        assert_eq!(
            t.failures(v4(1), t0 + MS),
            4,
            "v4(2) or v4(3) went, not v4(1)"
        );
        assert_eq!(t.entries.len(), 3);
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let t0 = Instant::now();
        let mut t = throttle(10);
        let a = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 0, 0, 0, 1));
        let same64 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 0xffff, 1, 2, 3));
        let other64 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 3, 0, 0, 0, 1));
        t.failed(a, t0);
        t.failed(same64, t0);
        t.failed(a, t0);
        assert_eq!(t.delay(same64, t0), 100 * MS);
        assert_eq!(t.delay(other64, t0), Duration::ZERO);

        let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped());
        for _ in 0..3 {
            t.failed(mapped, t0);
        }
        assert_eq!(t.delay(IP, t0), 100 * MS);
        t.succeeded(IP, t0);
        assert_eq!(
            t.delay(mapped, t0),
            Duration::ZERO,
            "3 - 1 failures are free"
        );
    }
}
