//! The relay state machine: datagrams and time in, forwarding verdicts and events out.
//!
//! ## Call order
//!
//! - For each datagram from a client: [`Relay::handle_client_datagram`]; act on the
//!   returned [`Verdict`]; then drain [`Relay::poll_event`] until `None`.
//! - For each datagram a backend sends to a session's upstream socket:
//!   [`Relay::handle_backend_datagram`]; act on the verdict; drain the events.
//! - When an allocation finishes: [`Relay::complete_allocation`]; drain the events.
//! - Keep a timer armed at [`Relay::poll_timeout`]; when it fires, call
//!   [`Relay::handle_timeout`] and drain the events. Calling it early is harmless.
//!
//! Events must be handled in the order they come: [`Event::SessionOpened`] (open the
//! upstream socket) always precedes that session's [`Event::Release`] (send the held
//! datagrams, in order).
//!
//! ## How connections are followed
//!
//! A session starts at a client Initial whose Destination Connection ID (DCID) is unknown.
//! Its datagrams are held until the ClientHello is complete and the route known. The
//! client's original DCID routes until the backend answers; the Source CIDs in every long
//! header the backend sends (Initial, Handshake, Retry; coalesced ones too) are learned
//! and routed from then on. Short headers do not carry a CID length, so each length in
//! use is tried. A short header with an unknown DCID from a client address with exactly
//! one routed session is taken as that session's client switching to a new CID (the new
//! CID is learned; with several sessions on one address it is dropped, since any guess
//! could hand one connection's datagrams to another's backend); a known DCID
//! from a new address moves the session to that address (NAT rebinding or migration).
//! A client that changes port and CID at once (quinn does on `rebind`) is followed when
//! exactly one routed session of that client IP can be meant; otherwise, and whenever
//! the IP changes too, the packet is dropped and counted: only QUIC-LB style CIDs that
//! encode their server could route it.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use thiserror::Error;

use crate::assembler::{AssemblerConfig, InitialAssembler, InitialError, Progress};
use crate::cid::CidTable;
use crate::client_hello::ClientHelloInfo;
use crate::frame::write_connection_close;
use crate::ids::{AllocationId, BackendAddr, ClientAddr, SessionId};
use crate::initial::{seal_long_packet, Keys, LongPacketSpec, Side};
use crate::routes::{Resolved, Route, RouteError, RouteName, RouteTable};
use crate::session::{CloseReason, Pending, Session, SessionInfo, SessionState, Traffic};
use crate::wire::{
    self, ConnectionId, LongPacket, LongType, Packet, Packets, Version, MIN_INITIAL_DATAGRAM,
};

/// QUIC transport error CONNECTION_REFUSED (RFC 9000 §20.1).
const CONNECTION_REFUSED: u64 = 0x02;
/// The shortest original DCID a client may use (RFC 9000 §7.2).
const MIN_ORIGINAL_DCID: usize = 8;
/// How many refused connections are remembered (for one handshake timeout each), so
/// that retransmitted Initials get the refusal again instead of a new session and, for
/// Agones routes, a new allocation.
pub(crate) const MAX_REFUSED_REMEMBERED: usize = 16 * 1024;

/// A connection refused moments ago.
#[derive(Debug, Clone, Copy)]
struct Refused {
    until: Instant,
    version: Version,
    client_scid: ConnectionId,
}

/// What to do with connections that cannot be routed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusalMode {
    /// Answer with an Initial carrying CONNECTION_CLOSE (CONNECTION_REFUSED), protected
    /// with the server Initial keys, so the client fails at once.
    Close,
    /// Drop silently; the client times out.
    Drop,
}

/// The relay's limits and timeouts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayConfig {
    /// A routed session with no datagram either way for this long is closed. Default
    /// 120 s.
    pub idle_timeout: Duration,
    /// A session still waiting for its ClientHello or its allocation after this long is
    /// closed (an allocation still pending is refused). Default 5 s.
    pub handshake_timeout: Duration,
    /// Most sessions at once. Default 100 000.
    pub max_sessions: usize,
    /// Most connection IDs mapped to one session; beyond it the oldest is forgotten.
    /// Default 8.
    pub max_cids_per_session: usize,
    /// Most bytes held for one connection before its route is known. Default 64 KiB.
    pub max_buffered_per_session: usize,
    /// Most bytes held for all such connections together. Default 64 MiB.
    pub max_buffered_total: usize,
    /// Most allocations in flight. Default 1024.
    pub max_pending_allocations: usize,
    /// New sessions per second, sustained (token bucket); 0 for no limit. Default 10 000.
    pub new_sessions_per_second: u32,
    /// Token bucket size: new sessions allowed in a burst. Default 10 000.
    pub new_sessions_burst: u32,
    /// What to do with connections that cannot be routed. Default [`RefusalMode::Close`].
    pub refusal: RefusalMode,
    /// ClientHello limits.
    pub assembler: AssemblerConfig,
    /// Seed for the little randomness the relay needs (unused header bits, the Source
    /// CID of refusals). Drivers pass a random seed; tests a fixed one.
    pub seed: u64,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(120),
            handshake_timeout: Duration::from_secs(5),
            max_sessions: 100_000,
            max_cids_per_session: 8,
            max_buffered_per_session: 64 * 1024,
            max_buffered_total: 64 * 1024 * 1024,
            max_pending_allocations: 1024,
            new_sessions_per_second: 10_000,
            new_sessions_burst: 10_000,
            refusal: RefusalMode::Close,
            assembler: AssemblerConfig::default(),
            seed: 0x5eed_0f5e_ed00,
        }
    }
}

/// What to do with one datagram.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub enum Verdict {
    /// Send the datagram, unchanged, to `backend` through the session's upstream socket.
    Forward {
        /// The session.
        session: SessionId,
        /// Its backend.
        backend: BackendAddr,
    },
    /// Send the backend's datagram, unchanged, to the client from the listener socket.
    ForwardToClient {
        /// The session.
        session: SessionId,
        /// The client's current address.
        client: ClientAddr,
    },
    /// The relay holds the datagram until the route is known; it comes back in an
    /// [`Event::Release`].
    Buffered {
        /// The session.
        session: SessionId,
    },
    /// Send these bytes back to the datagram's sender (Version Negotiation or a
    /// refusal); the datagram itself is consumed.
    Reply(Bytes),
    /// Discard the datagram; counted under the reason.
    Drop(DropReason),
}

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefuseReason {
    /// No route for the server name.
    NoRoute,
    /// The allocator answered with an error.
    AllocationFailed,
    /// The allocator did not answer within the handshake timeout.
    AllocationTimeout,
    /// Too many allocations in flight.
    AllocationLimit,
}

impl RefuseReason {
    /// A short stable name, for logs and metrics labels.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::NoRoute => "no_route",
            Self::AllocationFailed => "allocation_failed",
            Self::AllocationTimeout => "allocation_timeout",
            Self::AllocationLimit => "allocation_limit",
        }
    }
}

macro_rules! drop_reasons {
    ($($(#[doc = $doc:literal])* $name:ident => $label:literal,)*) => {
        /// Why a datagram was dropped. Every drop is counted under its reason.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum DropReason {
            $($(#[doc = $doc])* $name,)*
        }

        impl DropReason {
            /// Every reason, in counter order.
            pub const ALL: &'static [Self] = &[$(Self::$name,)*];

            /// A short stable name, for logs and metrics labels.
            pub fn as_str(&self) -> &'static str {
                match self {
                    $(Self::$name => $label,)*
                }
            }
        }
    };
}

drop_reasons! {
    /// An empty datagram.
    Empty => "empty",
    /// The first packet's header does not parse.
    Malformed => "malformed",
    /// A long header of a version Porter does not know, in a datagram too short to
    /// deserve a Version Negotiation reply.
    UnsupportedVersion => "unsupported_version",
    /// A client Initial in a datagram shorter than 1200 bytes (RFC 9000 §14.1).
    InitialTooSmall => "initial_too_small",
    /// A new connection whose DCID is shorter than 8 bytes (RFC 9000 §7.2).
    ShortOriginalDcid => "short_original_dcid",
    /// A packet for no known connection.
    UnknownConnection => "unknown_connection",
    /// A new connection while the relay is draining.
    Draining => "draining",
    /// A new connection beyond the session limit.
    SessionLimit => "session_limit",
    /// A new connection beyond the new-sessions rate.
    RateLimited => "rate_limited",
    /// A datagram beyond the buffering limits of a connection not yet routed.
    BufferFull => "buffer_full",
    /// A datagram for a connection not yet routed that did not help its ClientHello (did
    /// not decrypt, not an Initial of that connection).
    NotInitial => "not_initial",
    /// A datagram for a connection not yet routed, from another address.
    AddressMismatch => "address_mismatch",
    /// The ClientHello is invalid or exceeds a limit; the connection is abandoned.
    InvalidClientHello => "invalid_client_hello",
    /// No route, with refusals configured to drop.
    NoRoute => "no_route",
    /// Allocation impossible, with refusals configured to drop.
    AllocationRefused => "allocation_refused",
    /// A backend datagram for a session that no longer exists, or that has no backend
    /// yet.
    UnknownSession => "unknown_session",
    /// A retransmitted Initial of a connection refused moments ago (answered with the
    /// refusal again when refusals are answered, so it is not counted then).
    RecentlyRefused => "recently_refused",
}

/// Something the driver must do or know, drained with [`Relay::poll_event`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub enum Event {
    /// A session is routed: open its upstream socket to `backend`.
    SessionOpened {
        /// The session.
        session: SessionId,
        /// The client's address.
        client: ClientAddr,
        /// The backend.
        backend: BackendAddr,
        /// The server name.
        sni: Option<Arc<str>>,
        /// The ALPN list the client offered.
        alpn: Vec<Vec<u8>>,
        /// The QUIC version.
        version: Version,
    },
    /// Datagrams held while the route was unknown: send them to `backend` in this order.
    Release {
        /// The session.
        session: SessionId,
        /// The backend.
        backend: BackendAddr,
        /// The datagrams, in arrival order.
        datagrams: Vec<Bytes>,
    },
    /// Ask the allocator for a game server, then call [`Relay::complete_allocation`].
    AllocationRequested {
        /// The request; pass it back with the answer.
        id: AllocationId,
        /// The session waiting for it.
        session: SessionId,
        /// The fleet to allocate from.
        fleet: Arc<str>,
        /// The server name.
        sni: Option<Arc<str>>,
        /// The ALPN list the client offered.
        alpn: Vec<Vec<u8>>,
        /// The client's address.
        client: ClientAddr,
    },
    /// The relay no longer waits for this allocation (its connection timed out or
    /// closed); the driver may cancel it.
    AllocationCancelled {
        /// The request.
        id: AllocationId,
    },
    /// Send `datagram` to `client` from the listener socket (a refusal decided outside a
    /// datagram's handling, e.g. after a failed allocation).
    Transmit {
        /// Where to.
        to: ClientAddr,
        /// What.
        datagram: Bytes,
    },
    /// A connection was refused.
    ConnectionRefused {
        /// The session it would have been.
        session: SessionId,
        /// The client.
        client: ClientAddr,
        /// The server name asked for.
        sni: Option<Arc<str>>,
        /// Why.
        reason: RefuseReason,
    },
    /// A session's client now uses another address; replies go there.
    ClientAddressChanged {
        /// The session.
        session: SessionId,
        /// The old address.
        from: ClientAddr,
        /// The new address.
        to: ClientAddr,
    },
    /// A session ended: close its upstream socket if it has one. Sent for every session,
    /// including ones that never got a backend.
    SessionClosed {
        /// Why.
        reason: CloseReason,
        /// The session as it was at the end.
        info: SessionInfo,
    },
    /// A route installed with [`Relay::set_route_until`] reached its expiry and was
    /// removed. Sessions it routed stay where they are.
    RouteExpired {
        /// The route's name.
        name: RouteName,
    },
}

/// How an allocation failed, as reported by the driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllocationFailure {
    /// A human-readable reason, for logs.
    pub reason: String,
}

/// Misuse of [`Relay::complete_allocation`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum CompleteAllocationError {
    /// The relay is not waiting for this allocation: it was already completed, or it
    /// was cancelled ([`Event::AllocationCancelled`]). Late answers are normal after a
    /// timeout; the result is discarded.
    #[error("allocation {0} is not pending (completed already, or cancelled)")]
    NotPending(AllocationId),
}

/// Counters of allocations by outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocationCounters {
    /// Requests emitted.
    pub requested: u64,
    /// Answered with a backend.
    pub succeeded: u64,
    /// Answered with an error.
    pub failed: u64,
    /// Not answered in time.
    pub timed_out: u64,
    /// Refused before asking, because too many were in flight.
    pub rejected: u64,
}

/// A snapshot of the relay's gauges and counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Sessions now (all states).
    pub sessions: usize,
    /// Sessions still waiting for their ClientHello or allocation.
    pub pending_sessions: usize,
    /// Allocations in flight.
    pub allocations_in_flight: usize,
    /// Bytes held for connections not yet routed.
    pub buffered_bytes: usize,
    /// Connection IDs mapped.
    pub connection_ids: usize,
    /// Routes installed.
    pub routes: usize,
    /// Refused connections remembered, so their retransmitted Initials get the same
    /// answer (at most 16 384, each for one handshake timeout).
    pub remembered_refusals: usize,
    /// Sessions routed since start.
    pub sessions_opened: u64,
    /// Sessions closed since start.
    pub sessions_closed: u64,
    /// Connections refused since start.
    pub refused: u64,
    /// Client to backend, since start.
    pub to_backend: Traffic,
    /// Backend to client, since start.
    pub to_client: Traffic,
    /// Allocations by outcome.
    pub allocations: AllocationCounters,
    /// Drops by reason, indexed like [`DropReason::ALL`].
    pub drops: Vec<u64>,
}

impl RelayStats {
    /// Drops counted under `reason`.
    pub fn drops(&self, reason: DropReason) -> u64 {
        let i = DropReason::ALL.iter().position(|r| *r == reason);
        i.and_then(|i| self.drops.get(i)).copied().unwrap_or(0)
    }
}

/// Hashes the IDs the relay hands out itself (sessions, allocations). They count up and
/// the network cannot choose them, so they need no keyed (SipHash) hashing: one multiply
/// spreads them over the table, on the path of every forwarded datagram.
#[derive(Clone, Copy, Debug, Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        // Fibonacci hashing: the high bits (hashbrown's control byte) and the low bits
        // (its bucket index) both depend on every bit of `n`.
        self.0 = (self.0 ^ n)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(32);
    }
}

type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

#[derive(Debug)]
struct TokenBucket {
    per_second: f64,
    burst: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl TokenBucket {
    fn new(per_second: u32, burst: u32) -> Self {
        Self {
            per_second: f64::from(per_second),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            last: None,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        if self.per_second == 0.0 {
            return true;
        }
        if let Some(last) = self.last {
            let elapsed = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        }
        self.last = Some(self.last.map_or(now, |l| l.max(now)));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The relay: routes, sessions, connection IDs and timers. See the module docs for the
/// call order.
#[derive(Debug)]
pub struct Relay {
    config: RelayConfig,
    routes: RouteTable,
    sessions: IdMap<SessionId, Session>,
    pending: IdMap<SessionId, Pending>,
    cids: CidTable,
    by_client: HashMap<ClientAddr, Vec<SessionId>>,
    /// Sessions by client IP, for following a client that changes port and CID at once.
    by_ip: HashMap<IpAddr, Vec<SessionId>>,
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
    events: VecDeque<Event>,
    next_session: u64,
    next_allocation: u64,
    bucket: TokenBucket,
    rng: u64,
    accepting: bool,
    scratch: Vec<u8>,
    buffered_total: usize,
    stats: RelayStats,
}

impl Relay {
    /// A relay with no routes.
    pub fn new(config: RelayConfig) -> Self {
        Self {
            bucket: TokenBucket::new(config.new_sessions_per_second, config.new_sessions_burst),
            rng: config.seed | 1,
            config,
            routes: RouteTable::new(),
            sessions: IdMap::default(),
            pending: IdMap::default(),
            cids: CidTable::default(),
            by_client: HashMap::new(),
            by_ip: HashMap::new(),
            refused: HashMap::new(),
            refused_order: VecDeque::new(),
            allocations: IdMap::default(),
            timers: BinaryHeap::new(),
            route_timers: BinaryHeap::new(),
            route_expiry: HashMap::new(),
            events: VecDeque::new(),
            next_session: 1,
            next_allocation: 1,
            accepting: true,
            scratch: Vec::new(),
            buffered_total: 0,
            stats: RelayStats {
                drops: vec![0; DropReason::ALL.len()],
                ..RelayStats::default()
            },
        }
    }

    /// The configuration.
    pub fn config(&self) -> &RelayConfig {
        &self.config
    }

    // ----- routes -----

    /// Inserts or replaces a route; returns the one it replaced. Sessions already routed
    /// stay where they are.
    pub fn set_route(&mut self, route: Route) -> Result<Option<Route>, RouteError> {
        let name = route.name.clone();
        let previous = self.routes.insert(route)?;
        self.route_expiry.remove(&name);
        Ok(previous)
    }

    /// As [`Self::set_route`], for a route that is removed at `until` (an
    /// [`Event::RouteExpired`] follows). Setting the name again without an expiry makes
    /// it permanent.
    pub fn set_route_until(
        &mut self,
        route: Route,
        until: Instant,
    ) -> Result<Option<Route>, RouteError> {
        let name = route.name.clone();
        let previous = self.routes.insert(route)?;
        self.route_expiry.insert(name.clone(), until);
        self.route_timers.push(Reverse((until, name)));
        Ok(previous)
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
            connection_ids: self.cids.len(),
            routes: self.routes.len(),
            remembered_refusals: self.refused.len(),
            ..self.stats.clone()
        }
    }

    /// Stops (`false`) or resumes (`true`) accepting new connections; existing sessions
    /// keep flowing. Used to drain before shutdown.
    pub fn set_accepting(&mut self, accepting: bool) {
        self.accepting = accepting;
    }

    /// Closes a session at once (its [`Event::SessionClosed`] follows); `false` if
    /// there is no such session.
    pub fn close_session(&mut self, now: Instant, id: SessionId) -> bool {
        let exists = self.sessions.contains_key(&id);
        if exists {
            self.close(id, CloseReason::Closed, now);
        }
        exists
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
            Verdict::Forward { .. } => self.stats.to_backend.add(datagram.len()),
            Verdict::Drop(reason) => self.count_drop(*reason),
            _ => {}
        }
        verdict
    }

    /// Handles a datagram that arrived on `session`'s upstream socket.
    pub fn handle_backend_datagram(
        &mut self,
        now: Instant,
        session: SessionId,
        datagram: &[u8],
    ) -> Verdict {
        let verdict = self.backend_datagram(now, session, datagram);
        match &verdict {
            Verdict::ForwardToClient { .. } => self.stats.to_client.add(datagram.len()),
            Verdict::Drop(reason) => self.count_drop(*reason),
            _ => {}
        }
        verdict
    }

    /// Passes the allocator's answer for an [`Event::AllocationRequested`].
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
                self.establish(now, session, backend);
            }
            Err(_) => {
                self.stats.allocations.failed += 1;
                self.refuse_async(now, session, RefuseReason::AllocationFailed);
            }
        }
        Ok(())
    }

    /// The next time [`Self::handle_timeout`] has work to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let session = self.timers.peek().map(|Reverse((at, _))| *at);
        let route = self.route_timers.peek().map(|Reverse((at, _))| *at);
        match (session, route) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Expires what is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(Reverse((at, _))) = self.route_timers.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, name))) = self.route_timers.pop() else {
                break;
            };
            if self.route_expiry.get(&name) == Some(&at) {
                self.route_expiry.remove(&name);
                self.routes.remove(&name);
                self.events.push_back(Event::RouteExpired { name });
            }
        }
        while let Some(&Reverse((at, id))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(session) = self.sessions.get(&id) else {
                continue; // closed earlier; a stale entry
            };
            let deadline = self.deadline(session);
            if deadline > now {
                self.timers.push(Reverse((deadline, id)));
                continue;
            }
            match session.state {
                SessionState::Established => self.close(id, CloseReason::IdleTimeout, now),
                SessionState::AwaitingClientHello => {
                    self.close(id, CloseReason::HandshakeTimeout, now);
                }
                SessionState::Allocating(alloc) => {
                    self.allocations.remove(&alloc);
                    self.stats.allocations.timed_out += 1;
                    self.events
                        .push_back(Event::AllocationCancelled { id: alloc });
                    self.refuse_async(now, id, RefuseReason::AllocationTimeout);
                }
            }
        }
    }

    /// The next event, if any. Drain after every input.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    // ----- client side -----

    fn client_datagram(&mut self, now: Instant, from: ClientAddr, datagram: &[u8]) -> Verdict {
        let Some(&first) = datagram.first() else {
            return Verdict::Drop(DropReason::Empty);
        };
        if !wire::is_long_header(first) {
            return self.client_short(now, from, datagram);
        }
        let Ok((packet, _)) = wire::parse_packet(datagram) else {
            return Verdict::Drop(DropReason::Malformed);
        };
        match packet {
            Packet::Long(long) => self.client_long(now, from, datagram, &long),
            Packet::UnknownVersion { dcid, scid, .. } => {
                if datagram.len() < MIN_INITIAL_DATAGRAM {
                    return Verdict::Drop(DropReason::UnsupportedVersion);
                }
                let mut out = Vec::with_capacity(7 + dcid.len() + scid.len() + 8);
                let versions = Version::ALL.map(Version::to_wire);
                let bits = self.random() as u8;
                wire::version_negotiation(dcid, scid, &versions, bits, &mut out);
                Verdict::Reply(out.into())
            }
            // Clients never send these; servers only.
            Packet::VersionNegotiation { .. } | Packet::Short { .. } => {
                Verdict::Drop(DropReason::Malformed)
            }
        }
    }

    fn client_long(
        &mut self,
        now: Instant,
        from: ClientAddr,
        datagram: &[u8],
        packet: &LongPacket<'_>,
    ) -> Verdict {
        let Some(dcid) = ConnectionId::new(packet.dcid) else {
            return Verdict::Drop(DropReason::Malformed);
        };
        if let Some(id) = self.cids.get(&dcid) {
            return self.client_to_session(now, from, id, datagram, Some(packet.ty));
        }
        if packet.ty != LongType::Initial {
            return Verdict::Drop(DropReason::UnknownConnection);
        }
        if let Some(refused) = self.refused.get(&dcid).copied() {
            if refused.until > now {
                return self.refuse_again(now, &dcid, refused);
            }
        }
        self.new_connection(now, from, datagram, packet, dcid)
    }

    fn client_short(&mut self, now: Instant, from: ClientAddr, datagram: &[u8]) -> Verdict {
        if let Some((id, _)) = self.cids.lookup_short(datagram) {
            return self.client_to_session(now, from, id, datagram, None);
        }
        // Unknown DCID: the client switched to a CID issued in an (encrypted)
        // NEW_CONNECTION_ID frame. From a known address, that is its session, if the
        // address has only one: connections sharing a socket cannot be told apart, and a
        // guess would send one connection's datagrams to another's backend. From a new
        // port of a known IP it is a migration (quinn's rebind switches CID and socket at
        // once); it is followed only when exactly one session of that IP can be meant.
        let id = match self.established_at(from) {
            (1, id) => id,
            (0, _) => self.sole_session_of_ip(from, datagram),
            _ => None,
        };
        let Some(id) = id else {
            return Verdict::Drop(DropReason::UnknownConnection);
        };
        let learn = self.sessions.get(&id).and_then(|s| s.server_cid_len);
        if let Some(len) = learn.filter(|&l| l > 0) {
            if let Some(cid) = datagram
                .get(1..1 + usize::from(len))
                .and_then(ConnectionId::new)
            {
                self.learn_cid(id, cid);
            }
        }
        self.client_to_session(now, from, id, datagram, None)
    }

    /// The one routed session of `from`'s IP that an unknown CID from a new port can
    /// belong to: it uses server CIDs of a known, non-zero length that the datagram can
    /// hold. `None` when there are none or several: guessing could move another client's
    /// session.
    fn sole_session_of_ip(&self, from: ClientAddr, datagram: &[u8]) -> Option<SessionId> {
        let mut found = None;
        for id in self.by_ip.get(&from.0.ip())? {
            let Some(s) = self.sessions.get(id) else {
                continue;
            };
            let cid_len = usize::from(s.server_cid_len.unwrap_or(0));
            if s.state != SessionState::Established || cid_len == 0 || datagram.len() <= cid_len {
                continue;
            }
            if found.replace(s.id).is_some() {
                return None;
            }
        }
        found
    }

    /// How many routed sessions this address has, and one of them.
    fn established_at(&self, from: ClientAddr) -> (usize, Option<SessionId>) {
        let Some(ids) = self.by_client.get(&from) else {
            return (0, None);
        };
        let mut routed = ids.iter().filter(|id| {
            self.sessions
                .get(id)
                .is_some_and(|s| s.state == SessionState::Established)
        });
        let first = routed.next().copied();
        (usize::from(first.is_some()) + routed.count(), first)
    }

    fn client_to_session(
        &mut self,
        now: Instant,
        from: ClientAddr,
        id: SessionId,
        datagram: &[u8],
        long_type: Option<LongType>,
    ) -> Verdict {
        let Some(session) = self.sessions.get_mut(&id) else {
            return Verdict::Drop(DropReason::UnknownConnection);
        };
        match session.state {
            SessionState::Established => {
                let backend = session
                    .backend
                    .expect("established sessions have a backend");
                session.last_activity = now;
                session.to_backend.add(datagram.len());
                if session.client != from {
                    self.move_client(id, from);
                }
                Verdict::Forward {
                    session: id,
                    backend,
                }
            }
            SessionState::AwaitingClientHello | SessionState::Allocating(_) => {
                if session.client != from {
                    // Before routing, a datagram from elsewhere is more likely spoofed
                    // than a NAT rebinding; the client retransmits from its address.
                    return Verdict::Drop(DropReason::AddressMismatch);
                }
                let feed = long_type == Some(LongType::Initial)
                    && session.state == SessionState::AwaitingClientHello;
                self.hold(now, id, datagram, feed)
            }
        }
    }

    fn new_connection(
        &mut self,
        now: Instant,
        from: ClientAddr,
        datagram: &[u8],
        packet: &LongPacket<'_>,
        dcid: ConnectionId,
    ) -> Verdict {
        if datagram.len() < MIN_INITIAL_DATAGRAM {
            return Verdict::Drop(DropReason::InitialTooSmall);
        }
        if dcid.len() < MIN_ORIGINAL_DCID {
            return Verdict::Drop(DropReason::ShortOriginalDcid);
        }
        if !self.accepting {
            return Verdict::Drop(DropReason::Draining);
        }
        if self.sessions.len() >= self.config.max_sessions {
            return Verdict::Drop(DropReason::SessionLimit);
        }
        if datagram.len() > self.config.max_buffered_per_session
            || self.buffered_total + datagram.len() > self.config.max_buffered_total
        {
            return Verdict::Drop(DropReason::BufferFull);
        }
        // Decrypt before spending a session on it: garbage that merely looks like an
        // Initial never gets state.
        let mut assembler = InitialAssembler::new(self.config.assembler);
        let progress = match assembler.handle_datagram_with(datagram, &mut self.scratch) {
            Ok(progress) => progress,
            Err(e) => return Verdict::Drop(initial_drop_reason(&e)),
        };
        if !self.bucket.take(now) {
            return Verdict::Drop(DropReason::RateLimited);
        }
        let Some(client_scid) = ConnectionId::new(packet.scid) else {
            return Verdict::Drop(DropReason::Malformed);
        };
        let id = SessionId(self.next_session);
        self.next_session += 1;
        self.sessions.insert(
            id,
            Session {
                id,
                client: from,
                backend: None,
                state: SessionState::AwaitingClientHello,
                version: packet.version,
                original_dcid: dcid,
                client_scid,
                sni: None,
                // Room for the original DCID and the server's first CID, which is all
                // most sessions ever have (the default growth would reserve four).
                cids: {
                    let mut cids = Vec::with_capacity(2);
                    cids.push(dcid);
                    cids
                },
                server_cid_len: None,
                created: now,
                last_activity: now,
                to_backend: Traffic::default(),
                to_client: Traffic::default(),
            },
        );
        self.cids.insert(dcid, id);
        self.index_client(id, from);
        self.timers
            .push(Reverse((now + self.config.handshake_timeout, id)));
        self.pending.insert(
            id,
            Pending {
                assembler,
                datagrams: Vec::new(),
                bytes: 0,
                alpn: Vec::new(),
            },
        );
        self.buffer(id, datagram);
        match progress {
            Progress::NeedMore => Verdict::Buffered { session: id },
            Progress::Complete(info) => self.route_connection(now, id, info),
        }
    }

    /// Holds a datagram of a session that is not routed yet; feeds Initials to its
    /// ClientHello assembler.
    fn hold(&mut self, now: Instant, id: SessionId, datagram: &[u8], feed: bool) -> Verdict {
        let Some(pending) = self.pending.get_mut(&id) else {
            return Verdict::Drop(DropReason::UnknownConnection);
        };
        if pending.bytes + datagram.len() > self.config.max_buffered_per_session
            || self.buffered_total + datagram.len() > self.config.max_buffered_total
        {
            return Verdict::Drop(DropReason::BufferFull);
        }
        let progress = if feed {
            match pending
                .assembler
                .handle_datagram_with(datagram, &mut self.scratch)
            {
                Ok(progress) => progress,
                Err(e) if e.is_fatal() => {
                    self.close(id, CloseReason::InvalidClientHello, now);
                    return Verdict::Drop(DropReason::InvalidClientHello);
                }
                Err(e) => return Verdict::Drop(initial_drop_reason(&e)),
            }
        } else {
            Progress::NeedMore
        };
        self.buffer(id, datagram);
        match progress {
            Progress::NeedMore => Verdict::Buffered { session: id },
            Progress::Complete(info) => self.route_connection(now, id, info),
        }
    }

    fn buffer(&mut self, id: SessionId, datagram: &[u8]) {
        if let Some(pending) = self.pending.get_mut(&id) {
            pending.datagrams.push(Bytes::copy_from_slice(datagram));
            pending.bytes += datagram.len();
            self.buffered_total += datagram.len();
        }
    }

    /// The ClientHello is complete: choose where the session goes.
    fn route_connection(&mut self, now: Instant, id: SessionId, info: ClientHelloInfo) -> Verdict {
        let sni: Option<Arc<str>> = info.sni.map(Arc::from);
        if let Some(session) = self.sessions.get_mut(&id) {
            session.sni = sni.clone();
        }
        if let Some(pending) = self.pending.get_mut(&id) {
            pending.alpn = info.alpn;
        }
        match self.routes.resolve(sni.as_deref()) {
            Some(Resolved::Backend(backend)) => {
                self.establish(now, id, backend);
                Verdict::Buffered { session: id }
            }
            Some(Resolved::Fleet(fleet)) => {
                if self.allocations.len() >= self.config.max_pending_allocations {
                    self.stats.allocations.rejected += 1;
                    return self.refuse_now(now, id, RefuseReason::AllocationLimit);
                }
                let alloc = AllocationId(self.next_allocation);
                self.next_allocation += 1;
                self.allocations.insert(alloc, id);
                self.stats.allocations.requested += 1;
                let session = self.sessions.get_mut(&id).expect("routing a live session");
                session.state = SessionState::Allocating(alloc);
                let client = session.client;
                let alpn = self
                    .pending
                    .get(&id)
                    .map(|p| p.alpn.clone())
                    .unwrap_or_default();
                self.events.push_back(Event::AllocationRequested {
                    id: alloc,
                    session: id,
                    fleet,
                    sni,
                    alpn,
                    client,
                });
                Verdict::Buffered { session: id }
            }
            None => self.refuse_now(now, id, RefuseReason::NoRoute),
        }
    }

    fn establish(&mut self, now: Instant, id: SessionId, backend: BackendAddr) {
        let Some(session) = self.sessions.get_mut(&id) else {
            return;
        };
        let pending = self.pending.remove(&id);
        session.state = SessionState::Established;
        session.backend = Some(backend);
        session.last_activity = now;
        // The session's timer entry is at its handshake deadline; an idle timeout shorter
        // than what is left of it would fire late without an entry of its own. (Only
        // then: each entry is re-armed when it pops, so an extra one lives as long as
        // the session.)
        let idle_deadline = now + self.config.idle_timeout;
        if idle_deadline < session.created + self.config.handshake_timeout {
            self.timers.push(Reverse((idle_deadline, id)));
        }
        let (datagrams, alpn) = match pending {
            Some(p) => {
                self.buffered_total -= p.bytes;
                (p.datagrams, p.alpn)
            }
            None => (Vec::new(), Vec::new()),
        };
        for d in &datagrams {
            session.to_backend.add(d.len());
            self.stats.to_backend.add(d.len());
        }
        self.stats.sessions_opened += 1;
        self.events.push_back(Event::SessionOpened {
            session: id,
            client: session.client,
            backend,
            sni: session.sni.clone(),
            alpn,
            version: session.version,
        });
        self.events.push_back(Event::Release {
            session: id,
            backend,
            datagrams,
        });
    }

    /// Refuses while handling the client's datagram: the answer is the verdict.
    fn refuse_now(&mut self, now: Instant, id: SessionId, reason: RefuseReason) -> Verdict {
        match self.refuse(now, id, reason) {
            Some((_, packet)) => Verdict::Reply(packet),
            None => Verdict::Drop(match reason {
                RefuseReason::NoRoute => DropReason::NoRoute,
                _ => DropReason::AllocationRefused,
            }),
        }
    }

    /// Refuses outside a datagram's handling: the answer goes out as an event.
    fn refuse_async(&mut self, now: Instant, id: SessionId, reason: RefuseReason) {
        if let Some((to, datagram)) = self.refuse(now, id, reason) {
            self.events.push_back(Event::Transmit { to, datagram });
        } else if let Some(reason) = match reason {
            RefuseReason::NoRoute => None,
            _ => Some(DropReason::AllocationRefused),
        } {
            self.count_drop(reason);
        }
    }

    /// Closes the session as refused; returns the CONNECTION_CLOSE to send, if refusals
    /// are answered.
    fn refuse(
        &mut self,
        now: Instant,
        id: SessionId,
        reason: RefuseReason,
    ) -> Option<(ClientAddr, Bytes)> {
        let session = self.sessions.get(&id)?;
        let (client, sni) = (session.client, session.sni.clone());
        let refused = Refused {
            until: now + self.config.handshake_timeout,
            version: session.version,
            client_scid: session.client_scid,
        };
        let original_dcid = session.original_dcid;
        let packet = match self.config.refusal {
            RefusalMode::Close => {
                let (version, odcid, scid) =
                    (session.version, session.original_dcid, session.client_scid);
                Some(self.refusal_packet(version, &odcid, &scid))
            }
            RefusalMode::Drop => None,
        };
        self.remember_refused(now, original_dcid, refused);
        self.stats.refused += 1;
        self.events.push_back(Event::ConnectionRefused {
            session: id,
            client,
            sni,
            reason,
        });
        self.close(id, CloseReason::Refused(reason), now);
        packet.map(|p| (client, p))
    }

    fn remember_refused(&mut self, now: Instant, dcid: ConnectionId, refused: Refused) {
        while let Some(&(until, old)) = self.refused_order.front() {
            if until > now && self.refused_order.len() < MAX_REFUSED_REMEMBERED {
                break;
            }
            self.refused_order.pop_front();
            if self.refused.get(&old).is_some_and(|r| r.until == until) {
                self.refused.remove(&old);
            }
        }
        self.refused.insert(dcid, refused);
        self.refused_order.push_back((refused.until, dcid));
    }

    /// Answers a retransmitted Initial of a refused connection like the first time.
    fn refuse_again(&mut self, now: Instant, dcid: &ConnectionId, refused: Refused) -> Verdict {
        // Building a refusal costs a key derivation: it draws on the new-session budget.
        if self.config.refusal == RefusalMode::Drop || !self.bucket.take(now) {
            return Verdict::Drop(DropReason::RecentlyRefused);
        }
        Verdict::Reply(self.refusal_packet(refused.version, dcid, &refused.client_scid))
    }

    /// A server Initial carrying CONNECTION_CLOSE with CONNECTION_REFUSED, protected with
    /// the server Initial keys of the client's original DCID (RFC 9000 §10.2.3 allows
    /// closing in Initial packets before the handshake is done).
    fn refusal_packet(
        &mut self,
        version: Version,
        original_dcid: &ConnectionId,
        client_scid: &ConnectionId,
    ) -> Bytes {
        let keys = Keys::initial(version, original_dcid.as_bytes(), Side::Server);
        let scid = self.random().to_be_bytes();
        let mut payload = Vec::with_capacity(8);
        write_connection_close(CONNECTION_REFUSED, 0, &mut payload);
        let mut out = Vec::with_capacity(64);
        let spec = LongPacketSpec {
            ty: LongType::Initial,
            dcid: client_scid.as_bytes(),
            scid: &scid,
            token: &[],
            packet_number: 0,
            pn_len: 1,
        };
        seal_long_packet(&keys, &spec, &payload, &mut out);
        out.into()
    }

    // ----- backend side -----

    fn backend_datagram(&mut self, now: Instant, id: SessionId, datagram: &[u8]) -> Verdict {
        // A session not routed yet has no upstream socket, so nothing can come from its
        // backend: forwarding it would hand the client bytes from nowhere, and learning
        // its CIDs would let them squat the session's table.
        let Some(session) = self
            .sessions
            .get_mut(&id)
            .filter(|s| s.state == SessionState::Established)
        else {
            return Verdict::Drop(DropReason::UnknownSession);
        };
        let Some(&first) = datagram.first() else {
            return Verdict::Drop(DropReason::Empty);
        };
        session.last_activity = now;
        session.to_client.add(datagram.len());
        let client = session.client;
        if wire::is_long_header(first) {
            for packet in Packets::new(datagram) {
                match packet {
                    Ok(Packet::Long(long)) => {
                        if let Some(scid) = ConnectionId::new(long.scid) {
                            if let Some(s) = self.sessions.get_mut(&id) {
                                s.server_cid_len = Some(scid.len() as u8);
                            }
                            self.learn_cid(id, scid);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        }
        Verdict::ForwardToClient {
            session: id,
            client,
        }
    }

    /// Maps a connection ID to a session, forgetting the session's oldest CID when it
    /// has too many. A CID already mapped to another session is left alone.
    fn learn_cid(&mut self, id: SessionId, cid: ConnectionId) {
        if cid.is_empty() || self.cids.get(&cid).is_some() {
            return;
        }
        let Some(session) = self.sessions.get_mut(&id) else {
            return;
        };
        if session.cids.len() >= self.config.max_cids_per_session.max(1) {
            let oldest = session.cids.remove(0);
            self.cids.remove(&oldest);
        }
        session.cids.push(cid);
        self.cids.insert(cid, id);
    }

    fn move_client(&mut self, id: SessionId, to: ClientAddr) {
        let Some(session) = self.sessions.get_mut(&id) else {
            return;
        };
        let from = std::mem::replace(&mut session.client, to);
        self.unindex_client(id, from);
        self.index_client(id, to);
        self.events.push_back(Event::ClientAddressChanged {
            session: id,
            from,
            to,
        });
    }

    fn index_client(&mut self, id: SessionId, client: ClientAddr) {
        // Most addresses carry one session: reserve for one, not the default four.
        self.by_client
            .entry(client)
            .or_insert_with(|| Vec::with_capacity(1))
            .push(id);
        self.by_ip.entry(client.0.ip()).or_default().push(id);
    }

    fn unindex_client(&mut self, id: SessionId, client: ClientAddr) {
        remove_id(&mut self.by_client, client, id);
        remove_id(&mut self.by_ip, client.0.ip(), id);
    }

    // ----- life cycle -----

    fn deadline(&self, session: &Session) -> Instant {
        match session.state {
            SessionState::Established => session.last_activity + self.config.idle_timeout,
            _ => session.created + self.config.handshake_timeout,
        }
    }

    fn close(&mut self, id: SessionId, reason: CloseReason, now: Instant) {
        let Some(session) = self.sessions.remove(&id) else {
            return;
        };
        for cid in &session.cids {
            if self.cids.get(cid) == Some(id) {
                self.cids.remove(cid);
            }
        }
        self.unindex_client(id, session.client);
        if let Some(p) = self.pending.remove(&id) {
            self.buffered_total -= p.bytes;
        }
        if let SessionState::Allocating(alloc) = session.state {
            if self.allocations.remove(&alloc).is_some() {
                self.events
                    .push_back(Event::AllocationCancelled { id: alloc });
            }
        }
        self.stats.sessions_closed += 1;
        self.events.push_back(Event::SessionClosed {
            reason,
            info: session.info(now),
        });
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

fn remove_id<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Vec<SessionId>>, key: K, id: SessionId) {
    if let Some(ids) = map.get_mut(&key) {
        ids.retain(|&s| s != id);
        if ids.is_empty() {
            map.remove(&key);
        }
    }
}

fn initial_drop_reason(e: &InitialError) -> DropReason {
    if e.is_fatal() {
        DropReason::InvalidClientHello
    } else {
        match e {
            InitialError::Wire(_) => DropReason::Malformed,
            InitialError::UnsupportedVersion(_) => DropReason::UnsupportedVersion,
            _ => DropReason::NotInitial,
        }
    }
}
