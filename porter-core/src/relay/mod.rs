//! The relay state machine: datagrams and time in; verdicts, commands and notifications
//! out. The call order is in the crate docs; how connections are followed is in
//! [`client`] (client side) and [`backend`] (what the relay learns from backends).
//!
//! One file per concept: [`config`] (limits), [`output`] (everything the relay hands
//! back), [`client`] and [`backend`] (the two directions of a datagram), [`follow`] (the
//! rules that match a datagram with an unknown CID to a session), [`path`] (client paths,
//! one upstream socket each, and the CIDs of ended sessions), [`quic_lb`] (server-ID
//! routing), [`directory`] (lookups of unknown CIDs in a directory shared between
//! instances), [`refusal`] (refused
//! connections, remembered), [`lifecycle`] (timers and closing), [`admission`]
//! (validation, fair admission of unvalidated sessions, allocation budgets), [`index`]
//! (sessions by address and IP), [`budget`] (token bucket, ID hashing) and [`stats`].

mod admission;
mod backend;
mod budget;
mod client;
mod config;
mod directory;
mod follow;
mod index;
mod lifecycle;
mod output;
mod path;
mod quic_lb;
mod refusal;
mod stats;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::IpAddr;
use std::time::Instant;

pub use self::config::{RefusalMode, RelayConfig, Shard};
pub use self::directory::{
    CompleteLookupError, DirectoryConfig, LookupCounters, LookupId, Settled, ShortClaim,
};
pub use self::output::{
    AllocationFailure, Command, CompleteAllocationError, DropReason, Notification, RefuseReason,
    Verdict,
};
pub use self::quic_lb::{QuicLbCounters, QuicLbMiss, QuicLbRouting, ServerIdBinding};
pub use self::stats::{AllocationCounters, RelayStats};

use self::admission::{AllocationBudget, Unvalidated};
use self::budget::{IdMap, TokenBucket};
use self::index::SessionIndex;
use self::refusal::Refused;
use crate::cid::CidTable;
use crate::ids::{AllocationId, BackendAddr, ClientAddr, PathId, SessionId};
use crate::routes::{Route, RouteError, RouteName, RouteTable, RouteTarget};
use crate::session::{CloseReason, Pending, Session, SessionInfo};
use crate::wire::ConnectionId;

/// The relay: routes, sessions, connection IDs and timers. See the crate docs for the
/// call order.
#[derive(Debug)]
pub struct Relay {
    config: RelayConfig,
    routes: RouteTable,
    sessions: IdMap<SessionId, Session>,
    pending: IdMap<SessionId, Pending>,
    cids: CidTable,
    /// Client paths open, over all sessions.
    path_count: usize,
    /// CIDs of routed sessions that ended, and their expiry order (see [`path`]).
    ended: CidTable,
    ended_order: VecDeque<(Instant, ConnectionId)>,
    /// Sessions by the address of each of their paths (by the handshake address before
    /// routing).
    by_client: SessionIndex<ClientAddr>,
    /// Sessions by client IP, for following a client that changes port and CID at once,
    /// and for the per-IP cap.
    by_ip: SessionIndex<IpAddr>,
    /// Unvalidated sessions by source IP and prefix (see [`admission`]).
    unvalidated: Unvalidated,
    /// Allocation budgets per fleet and per source prefix (see [`admission`]).
    allocation_budget: AllocationBudget,
    /// Original DCIDs of recently refused connections, and their expiry order.
    refused: HashMap<ConnectionId, Refused>,
    refused_order: VecDeque<(Instant, ConnectionId)>,
    allocations: IdMap<AllocationId, SessionId>,
    /// One entry per live session (two for one routed with an idle deadline before its
    /// handshake deadline; plus stale ones for closed sessions, skipped when popped): the
    /// earliest time its deadline can be.
    timers: BinaryHeap<Reverse<(Instant, SessionId)>>,
    /// Expiry of temporary routes; a heap entry is stale unless `route_expiry` still
    /// holds the same instant for the name.
    route_timers: BinaryHeap<Reverse<(Instant, RouteName)>>,
    route_expiry: HashMap<RouteName, Instant>,
    commands: VecDeque<Command>,
    notifications: VecDeque<Notification>,
    next_session: u64,
    next_allocation: u64,
    bucket: TokenBucket,
    /// Answers to replayed Initials of refused connections.
    refusal_bucket: TokenBucket,
    rng: u64,
    accepting: bool,
    scratch: Vec<u8>,
    buffered_total: usize,
    /// The listeners' addresses: routes to them are refused.
    own_addresses: Vec<std::net::SocketAddr>,
    stats: RelayStats,
    /// Server IDs of allocated game servers (see [`quic_lb`]).
    allocated_server_ids: quic_lb::AllocatedServerIds,
    /// Directory lookups in flight (see [`directory`]).
    lookups: directory::Lookups,
    /// Sessions whose connection another shard carries on, since when
    /// ([`Relay::moved_to_shard`]).
    moved: HashMap<SessionId, Instant>,
    /// Sessions adopted from another shard whose backend has not answered yet: the
    /// shard and session they came from ([`Command::ConnectionMoved`]).
    adopted_from: HashMap<SessionId, (u32, SessionId)>,
}

/// One page of [`Relay::sessions_page`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionPage {
    /// The sessions, by ascending ID.
    pub sessions: Vec<SessionInfo>,
    /// Pass as `after` for the next page; `None` on the last page.
    pub next: Option<SessionId>,
}

impl Relay {
    /// A relay with no routes.
    pub fn new(config: RelayConfig) -> Self {
        let first_session = u64::from(config.shard.index) + 1;
        Self {
            bucket: TokenBucket::new(config.new_sessions_per_second, config.new_sessions_burst),
            refusal_bucket: TokenBucket::new(
                config.refusal_replays_per_second,
                config.refusal_replays_per_second,
            ),
            allocation_budget: AllocationBudget::new(
                config.allocations_per_second_per_fleet,
                config.allocations_per_second_per_prefix,
            ),
            rng: config.seed | 1,
            lookups: directory::Lookups::new(&config.directory),
            config,
            routes: RouteTable::new(),
            sessions: IdMap::default(),
            pending: IdMap::default(),
            cids: CidTable::default(),
            path_count: 0,
            ended: CidTable::default(),
            ended_order: VecDeque::new(),
            by_client: SessionIndex::default(),
            by_ip: SessionIndex::default(),
            unvalidated: Unvalidated::default(),

            refused: HashMap::new(),
            refused_order: VecDeque::new(),
            allocations: IdMap::default(),
            timers: BinaryHeap::new(),
            route_timers: BinaryHeap::new(),
            route_expiry: HashMap::new(),
            commands: VecDeque::new(),
            notifications: VecDeque::new(),
            next_session: first_session,
            next_allocation: 1,
            accepting: true,
            scratch: Vec::new(),
            buffered_total: 0,
            own_addresses: Vec::new(),
            stats: RelayStats {
                drops: vec![0; DropReason::ALL.len()],
                refusals: vec![0; RefuseReason::ALL.len()],
                ..RelayStats::default()
            },
            allocated_server_ids: quic_lb::AllocatedServerIds::default(),
            moved: HashMap::new(),
            adopted_from: HashMap::new(),
        }
    }

    /// The QUIC-LB server IDs bound to allocated game servers now (see
    /// [`Relay::complete_allocation_with_server_id`]).
    pub fn allocated_server_ids(&self) -> Vec<crate::quic_lb::ServerId> {
        self.allocated_server_ids.ids().collect()
    }

    /// The configuration.
    pub fn config(&self) -> &RelayConfig {
        &self.config
    }

    // ----- routes -----

    /// Inserts or replaces a route; returns the one it replaced. Sessions already routed
    /// stay where they are.
    pub fn set_route(&mut self, route: Route) -> Result<Option<Route>, RouteError> {
        self.check_targets(&route)?;
        let name = route.name.clone();
        let previous = self.routes.insert(route)?;
        self.route_expiry.remove(&name);
        Ok(previous)
    }

    /// As [`Self::set_route`], for a route that is removed at `until` (a
    /// [`Notification::RouteExpired`] follows). Setting the name again without an expiry
    /// makes it permanent.
    pub fn set_route_until(
        &mut self,
        route: Route,
        until: Instant,
    ) -> Result<Option<Route>, RouteError> {
        self.check_targets(&route)?;
        let name = route.name.clone();
        let previous = self.routes.insert(route)?;
        self.route_expiry.insert(name.clone(), until);
        self.route_timers.push(Reverse((until, name)));
        Ok(previous)
    }

    /// Tells the relay the addresses its listeners are bound to, so that a route to one of
    /// them is refused ([`RouteError::TargetIsRelay`]): a datagram sent there would come
    /// back to the relay as a new client datagram and loop. Routes already installed are
    /// not re-checked; set the addresses before the routes.
    pub fn set_own_addresses(&mut self, addrs: Vec<std::net::SocketAddr>) {
        self.own_addresses = addrs;
    }

    /// Refuses a simple route with a target that is one of the relay's own listen
    /// addresses: the same address, the same port on an unspecified (`0.0.0.0`, `::`)
    /// address, or on loopback when the relay listens on loopback or on every address.
    /// (A listener on every address is also reached through the host's other addresses,
    /// which the relay cannot list; those are not caught.)
    fn check_targets(&self, route: &Route) -> Result<(), RouteError> {
        let RouteTarget::Simple(backends) = &route.target else {
            return Ok(());
        };
        for target in backends {
            let t = target.0;
            let own = self.own_addresses.iter().any(|own| {
                let (ti, oi) = (t.ip(), own.ip());
                let same_family = ti.is_ipv4() == oi.is_ipv4();
                // `::` may be dual-stack: it takes IPv4 loopback too.
                let any = oi.is_unspecified() && (same_family || oi.is_ipv6());
                t.port() == own.port()
                    && (ti == oi
                        || ti.is_unspecified()
                        || (ti.is_loopback() && ((oi.is_loopback() && same_family) || any)))
            });
            if own {
                return Err(RouteError::TargetIsRelay {
                    name: route.name.clone(),
                    target: *target,
                });
            }
        }
        Ok(())
    }

    /// When a temporary route expires; `None` for permanent and unknown routes.
    pub fn route_expiry(&self, name: &RouteName) -> Option<Instant> {
        self.route_expiry.get(name).copied()
    }

    /// Removes a route; returns it if it existed.
    pub fn remove_route(&mut self, name: &RouteName) -> Option<Route> {
        self.route_expiry.remove(name);
        self.routes.remove(name)
    }

    /// The route with exactly this name.
    pub fn route(&self, name: &RouteName) -> Option<&Route> {
        self.routes.get(name)
    }

    /// The route a connection with this (normalised) server name would take.
    pub fn route_for(&self, sni: Option<&str>) -> Option<&Route> {
        self.routes.lookup(sni)
    }

    /// Every route, sorted by name.
    pub fn routes(&self) -> Vec<Route> {
        self.routes.routes()
    }

    // ----- backend health -----

    /// Marks a backend healthy or not (the health checker's verdict): an unhealthy one
    /// gets no new connections on any simple route; sessions already on it stay. A route
    /// whose backends are all unhealthy refuses new connections
    /// ([`RefuseReason::NoHealthyBackend`]). Every backend starts healthy. Returns
    /// whether this changed anything.
    pub fn set_backend_health(&mut self, backend: BackendAddr, healthy: bool) -> bool {
        self.routes.set_backend_health(backend, healthy)
    }

    /// Whether `backend` is healthy (not marked unhealthy).
    pub fn backend_healthy(&self, backend: BackendAddr) -> bool {
        self.routes.backend_healthy(backend)
    }

    /// Routed sessions on `backend` now.
    pub fn sessions_on(&self, backend: BackendAddr) -> u32 {
        self.routes.sessions_on(backend)
    }

    // ----- sessions and stats -----

    /// A snapshot of one session.
    pub fn session(&self, id: SessionId, now: Instant) -> Option<SessionInfo> {
        self.sessions.get(&id).map(|s| s.info(now))
    }

    /// Snapshots of every session, sorted by ID.
    pub fn sessions(&self, now: Instant) -> Vec<SessionInfo> {
        let mut all: Vec<SessionInfo> = self.sessions.values().map(|s| s.info(now)).collect();
        all.sort_by_key(|s| s.id);
        all
    }

    /// At most `limit` sessions with an ID above `after` (all when `None`), by ascending
    /// ID. Costs one pass over the session table and a partial sort of at most `limit`
    /// IDs: only the page is copied, never the whole table.
    pub fn sessions_page(
        &self,
        now: Instant,
        after: Option<SessionId>,
        limit: usize,
    ) -> SessionPage {
        let after = after.map_or(0, |s| s.0);
        let mut ids: Vec<SessionId> = Vec::new();
        if limit > 0 {
            // A bounded max-heap keeps the `limit + 1` smallest IDs above `after`: the
            // extra one tells whether another page follows.
            let mut heap: BinaryHeap<SessionId> = BinaryHeap::with_capacity(limit + 1);
            for &id in self.sessions.keys().filter(|id| id.0 > after) {
                if heap.len() <= limit {
                    heap.push(id);
                } else if heap.peek().is_some_and(|&top| id < top) {
                    heap.pop();
                    heap.push(id);
                }
            }
            ids = heap.into_sorted_vec();
        }
        let next = if ids.len() > limit {
            ids.truncate(limit);
            ids.last().copied()
        } else {
            None
        };
        SessionPage {
            sessions: ids
                .iter()
                .filter_map(|id| self.sessions.get(id))
                .map(|s| s.info(now))
                .collect(),
            next,
        }
    }

    /// Number of sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Gauges and counters.
    pub fn stats(&self) -> RelayStats {
        RelayStats {
            sessions: self.sessions.len(),
            // Sessions waiting for an allocation keep their `Pending` entry: counted there.
            pending_sessions: self.pending.len(),
            allocations_in_flight: self.allocations.len(),
            buffered_bytes: self.buffered_total,
            reassembly_bytes: self.pending.values().map(|p| p.reassembly).sum(),
            connection_ids: self.cids.len(),
            paths: self.path_count,
            remembered_ended_cids: self.ended.len(),
            routes: self.routes.len(),
            remembered_refusals: self.refused.len(),
            quic_lb: QuicLbCounters {
                allocated_server_ids: self.allocated_server_ids.len(),
                ..self.stats.quic_lb
            },
            unvalidated_sessions: self.unvalidated.len(),
            lookups: self.lookup_counters(),
            ..self.stats.clone()
        }
    }

    /// Stops (`false`) or resumes (`true`) accepting new connections; existing sessions
    /// keep flowing. Used to drain before shutdown.
    pub fn set_accepting(&mut self, accepting: bool) {
        self.accepting = accepting;
    }

    /// Closes a session at once (a [`Command::CloseUpstream`] for each of its paths, and
    /// its [`Notification::SessionClosed`] follow); `false` if there is no such
    /// session.
    pub fn close_session(&mut self, now: Instant, id: SessionId) -> bool {
        let exists = self.sessions.contains_key(&id);
        if exists {
            self.close(id, CloseReason::Closed, now);
        }
        exists
    }

    /// Closes at once every session routed to `backend` (each gets its
    /// [`Command::CloseUpstream`] and [`Notification::SessionClosed`], reason `closed`);
    /// returns how many. For an embedder that removed `backend` from every route and
    /// does not want its sessions to drain.
    pub fn close_sessions_to(&mut self, now: Instant, backend: BackendAddr) -> usize {
        let ids: Vec<SessionId> = self
            .sessions
            .values()
            .filter(|s| s.backend == Some(backend))
            .map(|s| s.id)
            .collect();
        for &id in &ids {
            self.close(id, CloseReason::Closed, now);
        }
        ids.len()
    }

    // ----- inputs -----

    /// Handles a datagram a client sent to the relay's listener.
    pub fn handle_client_datagram(
        &mut self,
        now: Instant,
        from: ClientAddr,
        datagram: &[u8],
    ) -> Verdict {
        let verdict = self.client_datagram(now, from, datagram);
        match &verdict {
            Verdict::ToBackend { .. } => self.stats.to_backend.add(datagram.len()),
            Verdict::Drop(reason) => self.count_drop(*reason),
            _ => {}
        }
        verdict
    }

    /// Drops a datagram that arrived at a listener from one of the relay's own upstream
    /// sockets (a backend target that leads back to the relay, such as another address
    /// of its own host): relaying it would loop. Only the I/O layer knows its sockets'
    /// addresses, so it tells; the drop is counted as [`DropReason::OwnSocket`].
    pub fn drop_own_datagram(&mut self) -> Verdict {
        self.count_drop(DropReason::OwnSocket);
        Verdict::Drop(DropReason::OwnSocket)
    }

    /// Handles a datagram that arrived on the upstream socket of `path` (opened by the
    /// [`Command::OpenUpstream`] that named it).
    pub fn handle_backend_datagram(
        &mut self,
        now: Instant,
        path: PathId,
        datagram: &[u8],
    ) -> Verdict {
        let verdict = self.backend_datagram(now, path, datagram);
        match &verdict {
            Verdict::ToClient { .. } => self.stats.to_client.add(datagram.len()),
            Verdict::Drop(reason) => self.count_drop(*reason),
            _ => {}
        }
        verdict
    }

    /// Passes the allocator's answer for a [`Command::Allocate`].
    pub fn complete_allocation(
        &mut self,
        now: Instant,
        id: AllocationId,
        result: Result<BackendAddr, AllocationFailure>,
    ) -> Result<(), CompleteAllocationError> {
        let session = self
            .allocations
            .remove(&id)
            .ok_or(CompleteAllocationError::NotPending(id))?;
        match result {
            Ok(backend) => {
                self.stats.allocations.succeeded += 1;
                if self.sockets_exhausted() {
                    self.refuse_async(now, session, RefuseReason::SocketLimit);
                } else {
                    self.establish(now, session, backend);
                }
            }
            Err(_) => {
                self.stats.allocations.failed += 1;
                self.refuse_async(now, session, RefuseReason::AllocationFailed);
            }
        }
        Ok(())
    }

    // ----- outputs -----

    /// The next command for the I/O layer, if any. Drain until `None` after every input.
    pub fn poll_command(&mut self) -> Option<Command> {
        self.commands.pop_front()
    }

    /// The next notification, if any. Drain until `None` after every input (they queue
    /// up otherwise, one per session opened and closed).
    pub fn poll_notification(&mut self) -> Option<Notification> {
        self.notifications.pop_front()
    }

    /// Whether every upstream socket the relay may open ([`RelayConfig::max_paths`]) is
    /// in use.
    fn sockets_exhausted(&self) -> bool {
        self.path_count >= self.config.max_paths
    }

    /// A new session's ID: every `shard.count`-th number from the shard's own (see
    /// [`Shard`]), unique over the host's shards.
    fn take_session_id(&mut self) -> SessionId {
        let id = SessionId(self.next_session);
        self.next_session += u64::from(self.config.shard.count.max(1));
        id
    }

    fn count_drop(&mut self, reason: DropReason) {
        if let Some(i) = DropReason::ALL.iter().position(|r| *r == reason) {
            self.stats.drops[i] += 1;
        }
    }

    /// xorshift64*: plenty for unused header bits and refusal CIDs, and seedable.
    fn random(&mut self) -> u64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[cfg(test)]
mod tests {
    use super::follow::tests::{add, ROUTED};
    use super::*;

    #[test]
    fn sessions_come_a_page_at_a_time_in_id_order() {
        let mut relay = Relay::new(RelayConfig::default());
        // Inserted out of order: the table's order is not the page order.
        for id in [7, 3, 9, 1, 5, 2] {
            add(&mut relay, id, "198.51.100.1:1000", ROUTED, Some(8));
        }
        let now = Instant::now();
        let ids = |page: &SessionPage| page.sessions.iter().map(|s| s.id.0).collect::<Vec<_>>();
        let first = relay.sessions_page(now, None, 4);
        assert_eq!(ids(&first), [1, 2, 3, 5]);
        assert_eq!(first.next, Some(SessionId(5)));
        let second = relay.sessions_page(now, first.next, 4);
        assert_eq!(ids(&second), [7, 9]);
        assert_eq!(second.next, None);
        let exact = relay.sessions_page(now, None, 6);
        assert_eq!(exact.next, None, "a full last page has no next");
        assert!(relay.sessions_page(now, None, 0).sessions.is_empty());
        assert_eq!(
            ids(&relay.sessions_page(now, Some(SessionId(9)), 4)),
            [] as [u64; 0]
        );
        let all: Vec<u64> = relay.sessions(now).iter().map(|s| s.id.0).collect();
        assert_eq!(all, [1, 2, 3, 5, 7, 9]);
    }

    #[test]
    fn closing_the_sessions_to_a_backend_closes_those_alone() {
        let mut relay = Relay::new(RelayConfig::default());
        for id in [1, 2] {
            add(&mut relay, id, "198.51.100.1:1000", ROUTED, Some(8));
        }
        add(&mut relay, 3, "198.51.100.2:1000", ROUTED, Some(8));
        let other = BackendAddr("192.0.2.10:443".parse().unwrap());
        relay.sessions.get_mut(&SessionId(3)).unwrap().backend = Some(other);
        let backend = BackendAddr("192.0.2.9:443".parse().unwrap());
        let now = Instant::now();

        assert_eq!(relay.close_sessions_to(now, backend), 2);
        let left: Vec<u64> = relay.sessions(now).iter().map(|s| s.id.0).collect();
        assert_eq!(left, [3]);
        let mut closed = Vec::new();
        while let Some(note) = relay.poll_notification() {
            if let Notification::SessionClosed { reason, info } = note {
                closed.push((info.id.0, reason.as_str()));
            }
        }
        closed.sort_unstable();
        assert_eq!(closed, [(1, "closed"), (2, "closed")]);
        assert_eq!(relay.close_sessions_to(now, backend), 0);
    }

    #[test]
    fn a_route_to_the_relays_own_listen_address_is_refused() {
        let route = |target: &str| Route {
            name: RouteName::parse("loop.test").unwrap(),
            target: RouteTarget::Simple(vec![BackendAddr(target.parse().unwrap())]),
            balance: Default::default(),
        };
        let mut relay = Relay::new(RelayConfig::default());
        relay.set_own_addresses(vec![
            "127.0.0.1:4433".parse().unwrap(),
            "0.0.0.0:7777".parse().unwrap(),
        ]);
        for own in [
            "127.0.0.1:4433",
            "0.0.0.0:4433",
            "127.0.0.2:4433",
            "127.0.0.1:7777",
            "0.0.0.0:7777",
            "192.0.2.9:7777",
            "[::1]:4433",
        ] {
            let refused = relay.set_route(route(own));
            let until = relay.set_route_until(route(own), Instant::now());
            if own == "192.0.2.9:7777" || own == "[::1]:4433" {
                // Another address of a host listening on every address (not knowable
                // here), and IPv6 loopback when only IPv4 loopback is bound.
                assert!(refused.is_ok() && until.is_ok(), "{own}");
                relay.remove_route(&RouteName::parse("loop.test").unwrap());
                continue;
            }
            assert!(
                matches!(refused, Err(RouteError::TargetIsRelay { .. })),
                "{own}: {refused:?}"
            );
            assert!(
                matches!(until, Err(RouteError::TargetIsRelay { .. })),
                "{own}"
            );
        }
        assert!(relay.routes().is_empty());
        for other in ["127.0.0.1:4434", "10.0.0.5:4433"] {
            assert!(relay.set_route(route(other)).is_ok(), "{other}");
        }
    }
}
