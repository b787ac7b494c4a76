//! What the relay hands back: a [`Verdict`] for each datagram, [`Command`]s for the I/O
//! layer, and [`Notification`]s of what happened.
//!
//! The split follows one rule: a verdict is about the datagram just handled (forward it,
//! hold it, drop it), a command is a side effect the I/O layer must perform (open or
//! close an upstream socket, send bytes the relay made, start or cancel an allocation),
//! and a notification is for logs, metrics and the control plane only: ignoring one never
//! breaks forwarding.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use thiserror::Error;

use super::directory::LookupId;
use crate::ids::{AllocationId, BackendAddr, ClientAddr, PathId, SessionId};
use crate::routes::RouteName;
use crate::session::{CloseReason, SessionInfo};
use crate::wire::{ConnectionId, Version};

/// What to do with one datagram.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub enum Verdict {
    /// Send the client's datagram, unchanged, to `backend` through the upstream socket of
    /// `path` (the path of the address it came from).
    ToBackend {
        /// The session.
        session: SessionId,
        /// The client path, whose upstream socket carries it.
        path: PathId,
        /// Its backend.
        backend: BackendAddr,
    },
    /// Send the backend's datagram, unchanged, to `client` from the listener socket.
    ToClient {
        /// The session.
        session: SessionId,
        /// The address of the path whose upstream socket received it: a path's backend
        /// datagrams go to that path's client only.
        client: ClientAddr,
    },
    /// The relay keeps a copy of the datagram; it leaves in a [`Command::OpenUpstream`]:
    /// the session's first, once the route is known, or that of the new path the
    /// datagram opened (a client that moved to another address).
    Held {
        /// The session.
        session: SessionId,
    },
    /// The datagram was answered (Version Negotiation, or a refusal); the answer is a
    /// [`Command::Transmit`] among the commands to drain. The datagram itself is
    /// consumed.
    Answered,
    /// Discard the datagram; counted under the reason.
    Drop(DropReason),
}

/// A side effect the I/O layer performs, drained with [`crate::Relay::poll_command`] in
/// the order given.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub enum Command {
    /// A client path opened: the session was routed (its first path), or a datagram of
    /// a routed session came from a new client address. Open an upstream socket for
    /// `path` to `backend` (its replies come back through
    /// [`crate::Relay::handle_backend_datagram`] with this path), then send `datagrams`
    /// on it, in this order: what the relay held for it.
    OpenUpstream {
        /// The session.
        session: SessionId,
        /// The path: the key of the upstream socket in later verdicts and commands.
        path: PathId,
        /// The path's client address.
        client: ClientAddr,
        /// Where the upstream socket sends.
        backend: BackendAddr,
        /// The held datagrams, in arrival order.
        datagrams: Vec<Bytes>,
    },
    /// Send `datagram` to `to` from the listener socket: a datagram the relay made
    /// (Version Negotiation, or a refusal).
    Transmit {
        /// Where to.
        to: ClientAddr,
        /// What.
        datagram: Bytes,
    },
    /// Ask the allocator for a game server in `fleet`, then pass the answer to
    /// [`crate::Relay::complete_allocation`] with `id`.
    Allocate {
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
    /// The relay no longer waits for this allocation (its connection timed out or was
    /// closed): cancel it if it still runs. A late answer is harmless.
    CancelAllocation {
        /// The request.
        id: AllocationId,
    },
    /// A path ended (its client left it, or the session ended): close its upstream
    /// socket. Comes once for each [`Command::OpenUpstream`], always after it.
    CloseUpstream {
        /// The session.
        session: SessionId,
        /// The path whose socket to close.
        path: PathId,
    },
    /// A connection this shard adopted from shard `shard` (its client moved to a 4-tuple
    /// this shard receives) has its backend's first answer here: tell that shard, with
    /// [`crate::Relay::moved_to_shard`] for its session `session`, to let its old path
    /// idle out. Only sharded hosts see it.
    ConnectionMoved {
        /// The shard the connection came from.
        shard: u32,
        /// Its session there.
        session: SessionId,
    },
    /// Ask the connection-ID directory which connection `dcid` belongs to, then pass the
    /// answer to [`crate::Relay::complete_lookup`] with `id` (the relay holds the
    /// datagram meanwhile, and gives up on its own timer).
    LookupConnection {
        /// The lookup; pass it back with the answer.
        id: LookupId,
        /// Where the held datagram came from (a sharded host asks its other shards
        /// about this client's IP: [`crate::Relay::claim_short`]).
        client: ClientAddr,
        /// The bytes after a short header's first octet, at most 20: a short header
        /// carries no CID length, so the directory matches the CIDs it holds (each with
        /// its length) against their start.
        dcid: Bytes,
    },
}

/// Something that happened, for logs, metrics and the control plane, drained with
/// [`crate::Relay::poll_notification`]. Forwarding never depends on them.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub enum Notification {
    /// A session was routed to `backend` (its [`Command::OpenUpstream`] is queued).
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
        /// Time from the connection's first datagram until it was routed (ClientHello
        /// reassembly and allocation).
        waited: Duration,
    },
    /// A connection was refused.
    Refused {
        /// The session it would have been.
        session: SessionId,
        /// The client.
        client: ClientAddr,
        /// The server name asked for.
        sni: Option<Arc<str>>,
        /// Why.
        reason: RefuseReason,
    },
    /// A routed session's client sent from a new address: a new path (and upstream
    /// socket) carries it, so the backend sees the move as a new 4-tuple and validates
    /// it. Not sent for a session's first path (see [`Notification::SessionOpened`]).
    PathOpened {
        /// The session.
        session: SessionId,
        /// The new path.
        path: PathId,
        /// Its client address.
        client: ClientAddr,
    },
    /// A path other than the session's current one ended on its timer (or its socket
    /// failed); the session lives on. Paths that end with their session are not
    /// announced (see [`Notification::SessionClosed`]).
    PathClosed {
        /// The session.
        session: SessionId,
        /// The path.
        path: PathId,
        /// Its client address.
        client: ClientAddr,
    },
    /// A route installed with [`crate::Relay::set_route_until`] reached its expiry and was
    /// removed. Sessions it routed stay where they are.
    RouteExpired {
        /// The route's name.
        name: RouteName,
    },
    /// A session ended. Sent for every session, including ones that never got a backend.
    SessionClosed {
        /// Why.
        reason: CloseReason,
        /// The session as it was at the end.
        info: SessionInfo,
    },
    /// With directory lookups on: a routed session has these connection IDs (at routing,
    /// its original DCID and what it has; later each CID learned), for the connection-ID
    /// directory shared between instances. They end with the session
    /// ([`Notification::SessionClosed`]); a CID the session forgets (beyond
    /// `max_cids_per_session`) is not announced again.
    ConnectionIdsLearned {
        /// The session.
        session: SessionId,
        /// Its backend.
        backend: BackendAddr,
        /// The CIDs new to the session.
        cids: Vec<ConnectionId>,
    },
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
    /// Every backend of the (simple) route is marked unhealthy.
    NoHealthyBackend,
    /// Every upstream socket the relay may open is in use
    /// ([`crate::RelayConfig::max_paths`]).
    SocketLimit,
    /// The I/O layer could not open the session's upstream socket
    /// ([`crate::Relay::upstream_failed`]): out of file descriptors or ports, typically.
    SocketFailed,
    /// The Agones route's fleet, or the client's source prefix, has spent its allocation
    /// budget for this second (`allocations_per_second_per_fleet`,
    /// `allocations_per_second_per_prefix`).
    AllocationBudget,
}

impl RefuseReason {
    /// Every reason, in counter order ([`crate::RelayStats::refusals`]).
    pub const ALL: &'static [Self] = &[
        Self::NoRoute,
        Self::AllocationFailed,
        Self::AllocationTimeout,
        Self::AllocationLimit,
        Self::NoHealthyBackend,
        Self::SocketLimit,
        Self::SocketFailed,
    ];

    /// A short stable name, for logs and metrics labels.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::NoRoute => "no_route",
            Self::AllocationFailed => "allocation_failed",
            Self::AllocationTimeout => "allocation_timeout",
            Self::AllocationLimit => "allocation_limit",
            Self::NoHealthyBackend => "no_healthy_backend",
            Self::SocketLimit => "socket_limit",
            Self::SocketFailed => "socket_failed",
            Self::AllocationBudget => "allocation_budget",
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
    /// No healthy backend on the route, with refusals configured to drop.
    NoHealthyBackend => "no_healthy_backend",
    /// A backend datagram on a path that no longer exists (its session ended, or its
    /// client left it), or that never did.
    UnknownSession => "unknown_session",
    /// A retransmitted Initial of a connection refused moments ago (answered with the
    /// refusal again when refusals are answered, so it is not counted then).
    RecentlyRefused => "recently_refused",
    /// A datagram of a routed session from a new address, beyond
    /// `max_paths_per_session`.
    PathLimit => "path_limit",
    /// A short-header datagram whose DCID belonged to a session that ended recently: a
    /// late datagram of that connection, which no other session may adopt.
    EndedConnection => "ended_connection",
    /// A datagram that needed one more upstream socket (a new connection with refusals
    /// configured to drop, or a new path of a routed session) while every one the relay
    /// may open is in use (`max_paths`).
    SocketLimit => "socket_limit",
    /// A connection whose upstream socket could not be opened, with refusals configured
    /// to drop.
    SocketFailed => "socket_failed",
    /// A datagram at the listener from one of the relay's own upstream sockets (a
    /// backend target that leads back to the relay): forwarding it would loop.
    OwnSocket => "own_socket",
    /// A new connection while unvalidated sessions are at half `max_unvalidated_sessions`
    /// or more, from a source prefix or IP that already holds more than its share.
    UnvalidatedLimit => "unvalidated_limit",
    /// A new connection or path from a client address that has
    /// `max_sessions_per_address` sessions already.
    AddressSessionLimit => "address_session_limit",
    /// A new connection or path from a client IP that has `max_sessions_per_ip` sessions
    /// already.
    IpSessionLimit => "ip_session_limit",
    /// A datagram for a directory lookup beyond the bounds: too many lookups pending, or
    /// too many datagrams or bytes held for one.
    LookupLimit => "lookup_limit",
    /// A datagram that would have started a directory lookup beyond the lookup rate.
    LookupRateLimited => "lookup_rate_limited",
    /// A datagram held for a directory lookup that found no connection it carries, or one
    /// known here meanwhile. (One found but not adopted is counted under `draining`,
    /// `session_limit`, `socket_limit` or `rate_limited`.)
    LookupFailed => "lookup_failed",
    /// A datagram held for a directory lookup that got no answer in time.
    LookupTimeout => "lookup_timeout",
}

/// How an allocation failed, as reported by the driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllocationFailure {
    /// A human-readable reason, for logs.
    pub reason: String,
}

/// Misuse of [`crate::Relay::complete_allocation`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum CompleteAllocationError {
    /// The relay is not waiting for this allocation: it was already completed, or it
    /// was cancelled ([`Command::CancelAllocation`]). Late answers are normal after a
    /// timeout; the result is discarded.
    #[error("allocation {0} is not pending (completed already, or cancelled)")]
    NotPending(AllocationId),
}
