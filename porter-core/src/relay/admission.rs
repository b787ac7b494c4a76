//! Admission at the edge: what a sender whose address may be forged can make the relay
//! spend. Initial keys are public, so a valid Initial proves nothing about its sender.
//!
//! - **Validation.** A session is validated once its client sends a datagram whose
//!   Destination CID is one the backend issued (a Source CID of the backend's long
//!   headers, RFC 9000 §7.2): a sender off the path to the forged address never sees it.
//!   Until then the session lives at most `handshake_timeout` from its first datagram,
//!   and the backend's datagrams do not extend it (a backend answers any Initial). A
//!   session adopted by its CID's server ID (see [`super::quic_lb`]) is validated when
//!   its backend first answers: the backend answers only packets it can decrypt. A
//!   backend that issues zero-length CIDs leaves nothing to check: its sessions are
//!   validated by the client's first datagram after the backend's first answer.
//! - **Fair admission of unvalidated sessions** (`max_unvalidated_sessions`): below half
//!   the cap, every new session is admitted; from half the cap on, only one whose source
//!   prefix (IPv4 /24, IPv6 /64) and source IP each hold no more than the average of
//!   those holding unvalidated sessions; at the cap, only one whose prefix is *light*:
//!   it holds none, or less than half that average (so never past twice the cap).
//!   These checks come before decryption and before the global new-session token
//!   bucket, so a flood turned away here costs no AES and spends no tokens; and a
//!   prefix that is not light may not take the last tenth of the bucket's burst, which
//!   is left to light ones. So a light source prefix gets in whatever the others send
//!   (within `max_sessions`).
//! - **Allocation budgets** for Agones routes: at most so many allocation requests per
//!   fleet, and per source prefix, in any one second, beside the cap on allocations in
//!   flight. A prefix's budget is taken first, so a flood from one prefix spends its
//!   own budget, not the fleet's.
//!
//! All of it is O(1) per datagram (amortised): counters in hash maps keyed by IP and
//! prefix, and allocation windows swept of idle ones when their map doubles.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::output::DropReason;
use super::Relay;
use crate::ids::{ClientAddr, SessionId};

impl Relay {
    /// Whether a new session from `from` may be admitted: the per-address and per-IP
    /// caps, then fair admission of unvalidated sessions. Checked before the global
    /// token bucket, so what is turned away here spends no token.
    pub(super) fn admit_session(&self, from: ClientAddr) -> Result<(), DropReason> {
        if self.by_client.sessions(&from) >= self.config.max_sessions_per_address.max(1) {
            return Err(DropReason::AddressSessionLimit);
        }
        if self.by_ip.sessions(&from.0.ip()) >= self.config.max_sessions_per_ip.max(1) {
            return Err(DropReason::IpSessionLimit);
        }
        self.unvalidated
            .admit(from.0.ip(), self.config.max_unvalidated_sessions)
    }

    /// Whether session `id` may have a path from `client` too: the per-address and
    /// per-IP caps (a session already listed under the IP does not count again).
    pub(super) fn admit_path(&self, id: SessionId, client: ClientAddr) -> Result<(), DropReason> {
        if self.by_client.sessions(&client) >= self.config.max_sessions_per_address.max(1) {
            return Err(DropReason::AddressSessionLimit);
        }
        let ip = client.0.ip();
        if !self.by_ip.contains(&ip, id)
            && self.by_ip.sessions(&ip) >= self.config.max_sessions_per_ip.max(1)
        {
            return Err(DropReason::IpSessionLimit);
        }
        Ok(())
    }

    /// Takes a new-session token for a session from `from`. A source prefix that is not
    /// light (see [`Unvalidated::light`]) leaves the last tenth of the bucket's burst to
    /// those that are: a flood that keeps the bucket near empty still leaves them a way
    /// in.
    pub(super) fn take_session_token(&mut self, now: Instant, from: ClientAddr) -> bool {
        let keep = if self.unvalidated.light(from.0.ip()) {
            0
        } else {
            self.config.new_sessions_burst / 10
        };
        self.bucket.take_keeping(now, keep)
    }

    /// Counts a new session as unvalidated.
    pub(super) fn count_unvalidated(&mut self, from: ClientAddr) {
        self.unvalidated.add(from.0.ip());
    }

    /// Marks a session validated: it lives to its idle timeout from now on.
    pub(super) fn validate(&mut self, id: SessionId) {
        let Some(session) = self.sessions.get_mut(&id) else {
            return;
        };
        if session.validated {
            return;
        }
        session.validated = true;
        session.issued = Vec::new();
        let source = session.source;
        self.unvalidated.remove(source);
        self.stats.sessions_validated += 1;
    }
}

/// A source prefix: the /24 of an IPv4 address, the /64 of an IPv6 one (an IPv4-mapped
/// IPv6 address counts as its IPv4 address).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Prefix {
    V4([u8; 3]),
    V6([u8; 8]),
}

impl Prefix {
    pub(crate) fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => {
                let o = v4.octets();
                Self::V4([o[0], o[1], o[2]])
            }
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::of(IpAddr::V4(v4)),
                None => {
                    let o = v6.octets();
                    let mut p = [0; 8];
                    p.copy_from_slice(&o[..8]);
                    Self::V6(p)
                }
            },
        }
    }
}

/// Unvalidated sessions by source IP and prefix.
#[derive(Debug, Default)]
pub(crate) struct Unvalidated {
    total: usize,
    by_ip: HashMap<IpAddr, u32>,
    by_prefix: HashMap<Prefix, u32>,
}

impl Unvalidated {
    /// Whether a new unvalidated session from `ip` may be admitted under `cap` (see the
    /// module docs).
    pub(crate) fn admit(&self, ip: IpAddr, cap: usize) -> Result<(), DropReason> {
        let cap = cap.max(1);
        if self.total < cap.div_ceil(2) {
            return Ok(());
        }
        let prefix = self.by_prefix.get(&Prefix::of(ip)).copied().unwrap_or(0) as usize;
        if self.total >= cap {
            // Only a light prefix, and never past twice the cap (the light ones hold
            // less than half of it between them).
            return if self.total < cap.saturating_mul(2) && self.light(ip) {
                Ok(())
            } else {
                Err(DropReason::UnvalidatedLimit)
            };
        }
        // At most the average holding: `held * holders <= total`, counting the source
        // among the holders.
        let over =
            |held: usize, holders: usize| held * (holders + usize::from(held == 0)) > self.total;
        let ip_held = self.by_ip.get(&ip).copied().unwrap_or(0) as usize;
        if over(prefix, self.by_prefix.len()) || over(ip_held, self.by_ip.len()) {
            return Err(DropReason::UnvalidatedLimit);
        }
        Ok(())
    }

    /// Whether `ip`'s prefix is light: it holds no unvalidated session, or less than
    /// half the average of the prefixes that hold some (counting itself). A flood's
    /// prefixes, holding their share, are not; a busy network's few handshakes are.
    pub(crate) fn light(&self, ip: IpAddr) -> bool {
        let held = self.by_prefix.get(&Prefix::of(ip)).copied().unwrap_or(0) as usize;
        held == 0 || 2 * held * self.by_prefix.len() < self.total
    }

    pub(crate) fn add(&mut self, ip: IpAddr) {
        self.total += 1;
        *self.by_ip.entry(ip).or_insert(0) += 1;
        *self.by_prefix.entry(Prefix::of(ip)).or_insert(0) += 1;
    }

    pub(crate) fn remove(&mut self, ip: IpAddr) {
        self.total = self.total.saturating_sub(1);
        decrement(&mut self.by_ip, ip);
        decrement(&mut self.by_prefix, Prefix::of(ip));
    }

    /// Unvalidated sessions now.
    pub(crate) fn len(&self) -> usize {
        self.total
    }
}

fn decrement<K: std::hash::Hash + Eq>(map: &mut HashMap<K, u32>, key: K) {
    if let Some(n) = map.get_mut(&key) {
        *n -= 1;
        if *n == 0 {
            map.remove(&key);
        }
    }
}

/// At most `limit` events in any one second: the instants of the last `limit`, oldest
/// first. Exact (a token bucket would allow its burst plus its rate within a second),
/// and O(1) amortised per event.
#[derive(Debug)]
pub(crate) struct Window {
    times: VecDeque<Instant>,
}

const WINDOW: Duration = Duration::from_secs(1);

impl Window {
    fn new() -> Self {
        Self {
            times: VecDeque::new(),
        }
    }

    fn take(&mut self, now: Instant, limit: u32) -> bool {
        while self.times.front().is_some_and(|&t| t + WINDOW <= now) {
            self.times.pop_front();
        }
        if self.times.len() >= limit as usize {
            return false;
        }
        self.times.push_back(now);
        true
    }

    /// Whether nothing in it counts any more at `now` (it may be forgotten).
    fn is_idle(&self, now: Instant) -> bool {
        self.times.back().is_none_or(|&t| t + WINDOW <= now)
    }
}

/// The allocation budgets of Agones routes: at most so many allocation requests per
/// fleet, and per source prefix, in any one second.
#[derive(Debug)]
pub(crate) struct AllocationBudget {
    per_fleet: u32,
    per_prefix: u32,
    fleets: HashMap<Arc<str>, Window>,
    prefixes: HashMap<Prefix, Window>,
    /// The prefix map is swept of idle windows when it reaches this size; then the size
    /// is doubled from what is left.
    sweep_at: usize,
}

/// The smallest size at which the prefix windows are swept.
const MIN_SWEEP: usize = 1024;

impl AllocationBudget {
    pub(crate) fn new(per_fleet: u32, per_prefix: u32) -> Self {
        Self {
            per_fleet,
            per_prefix,
            fleets: HashMap::new(),
            prefixes: HashMap::new(),
            sweep_at: MIN_SWEEP,
        }
    }

    /// Takes one allocation from `ip`'s prefix budget, then from `fleet`'s; `false` if
    /// either is spent. The prefix comes first: a flood from one prefix spends its own
    /// budget, not the fleet's.
    pub(crate) fn take(&mut self, now: Instant, fleet: &Arc<str>, ip: IpAddr) -> bool {
        if self.per_prefix > 0 {
            if self.prefixes.len() >= self.sweep_at {
                self.prefixes.retain(|_, w| !w.is_idle(now));
                self.sweep_at = (self.prefixes.len() * 2).max(MIN_SWEEP);
            }
            let window = self
                .prefixes
                .entry(Prefix::of(ip))
                .or_insert_with(Window::new);
            if !window.take(now, self.per_prefix) {
                return false;
            }
        }
        if self.per_fleet > 0 {
            if !self.fleets.contains_key(fleet) {
                self.fleets.insert(fleet.clone(), Window::new());
            }
            let window = self.fleets.get_mut(fleet).expect("inserted above");
            if !window.take(now, self.per_fleet) {
                return false;
            }
        }
        true
    }

    /// Prefix windows kept now.
    #[cfg(test)]
    pub(crate) fn prefixes(&self) -> usize {
        self.prefixes.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn prefixes_are_the_v4_slash_24_and_the_v6_slash_64() {
        assert_eq!(Prefix::of(ip("192.0.2.1")), Prefix::of(ip("192.0.2.254")));
        assert_ne!(Prefix::of(ip("192.0.2.1")), Prefix::of(ip("192.0.3.1")));
        assert_eq!(
            Prefix::of(ip("2001:db8:0:1::1")),
            Prefix::of(ip("2001:db8:0:1:ffff::2"))
        );
        assert_ne!(
            Prefix::of(ip("2001:db8:0:1::1")),
            Prefix::of(ip("2001:db8:0:2::1"))
        );
        assert_eq!(
            Prefix::of(ip("::ffff:192.0.2.7")),
            Prefix::of(ip("192.0.2.1"))
        );
    }

    #[test]
    fn past_half_the_cap_a_source_holds_at_most_the_average_and_at_the_cap_only_newcomers_enter() {
        let mut u = Unvalidated::default();
        // Cap 10: the first 5 from one prefix go in freely.
        for i in 1..=5 {
            let a = ip(&format!("198.51.100.{i}"));
            assert_eq!(u.admit(a, 10), Ok(()));
            u.add(a);
        }
        // From half the cap: that prefix holds 5 of 5, the average of its one holder;
        // another prefix (holding none) is always below the average.
        assert_eq!(u.admit(ip("198.51.100.1"), 10), Ok(()));
        assert_eq!(u.admit(ip("203.0.113.1"), 10), Ok(()));
        u.add(ip("203.0.113.1"));
        // Now 6 held by two prefixes (average 3): the first holds 5, over it.
        assert_eq!(
            u.admit(ip("198.51.100.9"), 10),
            Err(DropReason::UnvalidatedLimit)
        );
        // The second prefix may grow to the average, and so may an IP.
        assert_eq!(u.admit(ip("203.0.113.2"), 10), Ok(()));
        for i in 2..=4 {
            u.add(ip(&format!("192.0.2.{i}")));
        }
        assert_eq!(u.len(), 9);
        u.add(ip("192.0.2.5"));
        // At the cap: only a light prefix, one holding none or under half the average
        // (10 / 3 prefixes: under 1.67).
        assert_eq!(u.len(), 10);
        assert_eq!(
            u.admit(ip("192.0.2.9"), 10),
            Err(DropReason::UnvalidatedLimit)
        );
        assert_eq!(
            u.admit(ip("198.51.100.9"), 10),
            Err(DropReason::UnvalidatedLimit)
        );
        assert_eq!(u.admit(ip("203.0.113.9"), 10), Ok(()));
        assert_eq!(u.admit(ip("2001:db8::1"), 10), Ok(()));
        // Never past twice the cap.
        for i in 0..10 {
            u.add(ip(&format!("10.0.{i}.1")));
        }
        assert_eq!(
            u.admit(ip("2001:db8::1"), 10),
            Err(DropReason::UnvalidatedLimit)
        );
        for i in 0..10 {
            u.remove(ip(&format!("10.0.{i}.1")));
        }
        // Removal gives the room back, and nothing is left counted.
        for i in 1..=5 {
            u.remove(ip(&format!("198.51.100.{i}")));
        }
        for i in 2..=5 {
            u.remove(ip(&format!("192.0.2.{i}")));
        }
        u.remove(ip("203.0.113.1"));
        assert_eq!((u.len(), u.by_ip.len(), u.by_prefix.len()), (0, 0, 0));
    }

    #[test]
    fn allocation_budgets_are_per_prefix_then_per_fleet_within_any_second() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let fleet: Arc<str> = Arc::from("games");
        let other: Arc<str> = Arc::from("other");
        let mut b = AllocationBudget::new(5, 2);
        // One prefix: its 2, then nothing, whatever the fleet has left.
        assert!(b.take(ms(0), &fleet, ip("198.51.100.1")));
        assert!(b.take(ms(10), &fleet, ip("198.51.100.2")));
        assert!(!b.take(ms(20), &fleet, ip("198.51.100.3")));
        // Other prefixes: the fleet's 5 in all (2 spent already).
        let granted = (0..10)
            .filter(|i| b.take(ms(100 + i), &fleet, ip(&format!("203.0.{i}.1"))))
            .count();
        assert_eq!(granted, 3);
        // Another fleet has a budget of its own.
        assert!(b.take(ms(200), &other, ip("192.0.2.1")));
        // A second after the prefix's first, one of its 2 is back (not both); the fleet
        // too has one back.
        assert!(!b.take(ms(999), &fleet, ip("198.51.100.1")));
        assert!(b.take(ms(1000), &fleet, ip("198.51.100.1")));
        assert!(!b.take(ms(1001), &fleet, ip("198.51.100.1")));
        // Thousands of prefixes, once each: the map is swept of idle windows.
        let mut b = AllocationBudget::new(0, 1);
        for i in 0..20_000u32 {
            let t = t0 + Duration::from_millis(u64::from(i) * 10);
            let [_, x, y, z] = i.to_be_bytes();
            assert!(b.take(t, &fleet, IpAddr::from([x, y, z, 1])));
        }
        assert!(b.prefixes() <= 2 * MIN_SWEEP, "{}", b.prefixes());
    }
}
