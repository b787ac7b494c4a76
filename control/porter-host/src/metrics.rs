//! What the host counts from the relay's notifications, for metrics an operator can
//! graph: per-route counters and gauges, and histograms with fixed buckets.
//!
//! Everything here is fed from notifications the host already drains under its lock
//! ([`crate::RelayHost`]), never from the core's per-datagram path. Per-route traffic is
//! counted when a session ends (its final totals, from `SessionClosed`), so a long session
//! shows up in its route's datagram and byte counters only once it closes; the relay-wide
//! `porter_datagrams_total`/`porter_bytes_total` count as datagrams pass.
//!
//! Route labels come from the configured route names only: a session is attributed to
//! the route [`porter_core::Relay::route_for`] finds for its SNI; a refusal whose SNI
//! matches no route counts under [`NO_ROUTE_LABEL`], never under the SNI itself.

use std::collections::HashMap;
use std::time::Duration;

use porter_core::{Relay, RouteName, SessionId, Traffic};

use crate::AllocationErrorKind;

/// The route label of refusals whose server name matched no route.
pub const NO_ROUTE_LABEL: &str = "none";

/// A histogram with fixed bucket bounds (upper bounds, inclusive, as Prometheus' `le`),
/// plus an implicit `+Inf` bucket; the sum and count of every observation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Histogram {
    bounds: &'static [Duration],
    /// Observations per bucket (not cumulative): one per bound, then `+Inf`.
    counts: Vec<u64>,
    sum: Duration,
    count: u64,
}

impl Histogram {
    /// An empty histogram with these upper bounds (ascending).
    pub fn new(bounds: &'static [Duration]) -> Self {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]), "ascending bounds");
        Self {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: Duration::ZERO,
            count: 0,
        }
    }

    /// Adds another histogram's observations (another shard's) to this one; both must
    /// have the same bounds (they always do: the bounds are constants).
    pub fn merge(&mut self, other: &Self) {
        debug_assert_eq!(self.bounds, other.bounds);
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.sum += other.sum;
        self.count += other.count;
    }

    /// Records one observation.
    pub fn observe(&mut self, value: Duration) {
        let i = self.bounds.partition_point(|b| *b < value);
        if let Some(n) = self.counts.get_mut(i) {
            *n += 1;
        }
        self.sum = self.sum.saturating_add(value);
        self.count += 1;
    }

    /// The buckets, cumulative as Prometheus wants them: each upper bound (`None` for
    /// `+Inf`) with the observations at or below it.
    pub fn buckets(&self) -> Vec<(Option<Duration>, u64)> {
        let mut total = 0;
        self.counts
            .iter()
            .enumerate()
            .map(|(i, n)| {
                total += n;
                (self.bounds.get(i).copied(), total)
            })
            .collect()
    }

    /// The sum of every observation.
    pub fn sum(&self) -> Duration {
        self.sum
    }

    /// How many observations.
    pub fn count(&self) -> u64 {
        self.count
    }
}

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

const fn s(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Buckets of the time a connection waited for its route (ClientHello and allocation).
pub const ROUTING_WAIT_BUCKETS: &[Duration] = &[
    ms(1),
    ms(5),
    ms(10),
    ms(25),
    ms(50),
    ms(100),
    ms(250),
    ms(500),
    s(1),
    s(2),
    s(5),
    s(10),
];

/// Buckets of the lifetime of a routed session.
pub const SESSION_DURATION_BUCKETS: &[Duration] = &[
    s(1),
    s(10),
    s(30),
    s(60),
    s(300),
    s(900),
    s(1800),
    s(3600),
    s(7200),
    s(14_400),
    s(43_200),
    s(86_400),
];

/// Buckets of an allocation's time from its request to the allocator's answer.
pub const ALLOCATION_BUCKETS: &[Duration] = &[
    ms(5),
    ms(10),
    ms(25),
    ms(50),
    ms(100),
    ms(250),
    ms(500),
    s(1),
    s(2),
    s(5),
    s(10),
    s(30),
];

/// One route's counters, as [`crate::HostStats`] shows them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteStats {
    /// The route's name (its text form).
    pub route: String,
    /// Sessions routed through it and still open.
    pub sessions: u64,
    /// Sessions routed through it since start.
    pub sessions_opened: u64,
    /// Connections refused that matched it (allocation failed, no healthy backend, ...).
    pub refusals: u64,
    /// Client to backend, of its sessions that ended.
    pub to_backend: Traffic,
    /// Backend to client, of its sessions that ended.
    pub to_client: Traffic,
}

/// The histograms, as [`crate::HostStats`] shows them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Histograms {
    /// How long each routed session waited for its route (`SessionOpened.waited`).
    pub routing_wait: Histogram,
    /// How long each routed session lived.
    pub session_duration: Histogram,
    /// Each allocation's time from its request to the answer, by outcome (`success`,
    /// then every [`AllocationErrorKind`]'s label).
    pub allocation: Vec<(&'static str, Histogram)>,
}

impl Histograms {
    /// Adds another shard's histograms to these.
    pub fn merge(&mut self, other: &Self) {
        self.routing_wait.merge(&other.routing_wait);
        self.session_duration.merge(&other.session_duration);
        for (label, theirs) in &other.allocation {
            match self.allocation.iter_mut().find(|(l, _)| l == label) {
                Some((_, mine)) => mine.merge(theirs),
                None => self.allocation.push((label, theirs.clone())),
            }
        }
    }
}

impl RouteStats {
    /// Adds another shard's counters of the same route to these.
    pub fn merge(&mut self, other: &Self) {
        self.sessions += other.sessions;
        self.sessions_opened += other.sessions_opened;
        self.refusals += other.refusals;
        add(&mut self.to_backend, other.to_backend);
        add(&mut self.to_client, other.to_client);
    }
}

/// One slot of [`Accounting`]'s per-route counters.
#[derive(Debug)]
struct Slot {
    name: RouteName,
    stats: RouteStats,
}

/// The host's accounting: per-route counters, the histograms.
#[derive(Debug)]
pub(crate) struct Accounting {
    /// Per-route counters; `None` slots are free for reuse.
    slots: Vec<Option<Slot>>,
    by_name: HashMap<RouteName, usize>,
    /// Routed sessions still open, and their route's slot.
    sessions: HashMap<SessionId, usize>,
    /// Refusals whose server name matched no route.
    refused_without_route: u64,
    histograms: Histograms,
}

impl Accounting {
    pub(crate) fn new() -> Self {
        let mut allocation = vec![("success", Histogram::new(ALLOCATION_BUCKETS))];
        allocation.extend(
            AllocationErrorKind::ALL
                .iter()
                .map(|k| (k.as_str(), Histogram::new(ALLOCATION_BUCKETS))),
        );
        Self {
            slots: Vec::new(),
            by_name: HashMap::new(),
            sessions: HashMap::new(),
            refused_without_route: 0,
            histograms: Histograms {
                routing_wait: Histogram::new(ROUTING_WAIT_BUCKETS),
                session_duration: Histogram::new(SESSION_DURATION_BUCKETS),
                allocation,
            },
        }
    }

    /// The slot of `relay`'s route for `sni`, made if needed; `None` if no route matches.
    fn slot_for(&mut self, relay: &Relay, sni: Option<&str>) -> Option<usize> {
        let name = &relay.route_for(sni)?.name;
        if let Some(i) = self.by_name.get(name) {
            return Some(*i);
        }
        let slot = Slot {
            name: name.clone(),
            stats: RouteStats {
                route: name.to_string(),
                ..RouteStats::default()
            },
        };
        let i = match self.slots.iter().position(Option::is_none) {
            Some(i) => {
                self.slots[i] = Some(slot);
                i
            }
            None => {
                self.slots.push(Some(slot));
                self.slots.len() - 1
            }
        };
        self.by_name.insert(name.clone(), i);
        Some(i)
    }

    fn stats_mut(&mut self, i: usize) -> Option<&mut RouteStats> {
        self.slots
            .get_mut(i)
            .and_then(Option::as_mut)
            .map(|s| &mut s.stats)
    }

    /// A session was routed.
    pub(crate) fn session_opened(
        &mut self,
        relay: &Relay,
        session: SessionId,
        sni: Option<&str>,
        waited: Duration,
    ) {
        self.histograms.routing_wait.observe(waited);
        let Some(i) = self.slot_for(relay, sni) else {
            return;
        };
        if let Some(stats) = self.stats_mut(i) {
            stats.sessions += 1;
            stats.sessions_opened += 1;
        }
        self.sessions.insert(session, i);
    }

    /// A session ended; `routed` if it had a backend.
    pub(crate) fn session_closed(
        &mut self,
        session: SessionId,
        routed: bool,
        age: Duration,
        to_backend: Traffic,
        to_client: Traffic,
    ) {
        if routed {
            self.histograms.session_duration.observe(age);
        }
        let Some(i) = self.sessions.remove(&session) else {
            return;
        };
        if let Some(stats) = self.stats_mut(i) {
            stats.sessions = stats.sessions.saturating_sub(1);
            add(&mut stats.to_backend, to_backend);
            add(&mut stats.to_client, to_client);
        }
    }

    /// A connection was refused.
    pub(crate) fn refused(&mut self, relay: &Relay, sni: Option<&str>) {
        match self.slot_for(relay, sni).and_then(|i| self.stats_mut(i)) {
            Some(stats) => stats.refusals += 1,
            None => self.refused_without_route += 1,
        }
    }

    /// An allocation was answered after `took`: `None` for success, or the kind of
    /// failure.
    pub(crate) fn allocation_answered(
        &mut self,
        took: Duration,
        failure: Option<AllocationErrorKind>,
    ) {
        let label = failure.map_or("success", AllocationErrorKind::as_str);
        if let Some((_, h)) = self
            .histograms
            .allocation
            .iter_mut()
            .find(|(l, _)| *l == label)
        {
            h.observe(took);
        }
    }

    /// Drops the counters of routes that no longer exist and have no open session, then
    /// returns every current route's counters (zeros included) and those of removed
    /// routes whose sessions are still open, sorted by route name; then the refusals
    /// that matched no route, and the histograms.
    pub(crate) fn snapshot(&mut self, relay: &Relay) -> (Vec<RouteStats>, u64, Histograms) {
        for i in 0..self.slots.len() {
            let gone = self.slots[i]
                .as_ref()
                .is_some_and(|s| s.stats.sessions == 0 && relay.route(&s.name).is_none());
            if gone {
                if let Some(slot) = self.slots[i].take() {
                    self.by_name.remove(&slot.name);
                }
            }
        }
        let mut routes: Vec<(RouteName, RouteStats)> = self
            .slots
            .iter()
            .flatten()
            .map(|s| (s.name.clone(), s.stats.clone()))
            .collect();
        for route in relay.routes() {
            if !self.by_name.contains_key(&route.name) {
                let stats = RouteStats {
                    route: route.name.to_string(),
                    ..RouteStats::default()
                };
                routes.push((route.name, stats));
            }
        }
        routes.sort_by(|a, b| a.0.cmp(&b.0));
        (
            routes.into_iter().map(|(_, s)| s).collect(),
            self.refused_without_route,
            self.histograms.clone(),
        )
    }
}

fn add(total: &mut Traffic, more: Traffic) {
    total.datagrams = total.datagrams.saturating_add(more.datagrams);
    total.bytes = total.bytes.saturating_add(more.bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: &[Duration] = &[ms(10), ms(100), s(1)];

    #[test]
    fn histogram_buckets_are_cumulative_and_inclusive() {
        let mut h = Histogram::new(BOUNDS);
        for v in [ms(0), ms(10), ms(11), ms(100), ms(999), s(5)] {
            h.observe(v);
        }
        assert_eq!(
            h.buckets(),
            vec![
                (Some(ms(10)), 2),
                (Some(ms(100)), 4),
                (Some(s(1)), 5),
                (None, 6)
            ]
        );
        assert_eq!(h.count(), 6);
        assert_eq!(h.sum(), ms(10 + 11 + 100 + 999 + 5000));
    }

    #[test]
    fn empty_histogram_has_every_bucket_at_zero() {
        let h = Histogram::new(BOUNDS);
        assert_eq!(h.buckets().len(), BOUNDS.len() + 1);
        assert!(h.buckets().iter().all(|(_, n)| *n == 0));
        assert_eq!((h.count(), h.sum()), (0, Duration::ZERO));
    }

    #[test]
    fn allocation_outcomes_are_success_and_every_kind() {
        let mut a = Accounting::new();
        a.allocation_answered(ms(20), None);
        a.allocation_answered(ms(20), Some(AllocationErrorKind::Timeout));
        let labels: Vec<&str> = a.histograms.allocation.iter().map(|(l, _)| *l).collect();
        assert_eq!(labels.len(), AllocationErrorKind::ALL.len() + 1);
        assert_eq!(labels[0], "success");
        for (label, h) in &a.histograms.allocation {
            let expected = u64::from(*label == "success" || *label == "timeout");
            assert_eq!(h.count(), expected, "{label}");
        }
    }
}
