//! A relayed connection: where it came from, where it goes, what it has carried.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::assembler::InitialAssembler;
use crate::ids::{AllocationId, BackendAddr, ClientAddr, PathId, SessionId};
use crate::wire::{ConnectionId, Version};

/// Datagrams and bytes carried in one direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Datagrams.
    pub datagrams: u64,
    /// Bytes of UDP payload.
    pub bytes: u64,
}

impl Traffic {
    pub(crate) fn add(&mut self, len: usize) {
        self.datagrams += 1;
        self.bytes += len as u64;
    }
}

/// Where a session is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionState {
    /// Waiting for the rest of the ClientHello.
    AwaitingClientHello,
    /// Waiting for the allocator to name a game server.
    Allocating(AllocationId),
    /// Routed: datagrams flow both ways.
    Established,
}

/// Why a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// No datagram either way for the idle timeout.
    IdleTimeout,
    /// The ClientHello did not complete within the handshake timeout.
    HandshakeTimeout,
    /// The ClientHello was invalid or exceeded a limit.
    InvalidClientHello,
    /// The connection was refused (see [`crate::RefuseReason`]).
    Refused(crate::RefuseReason),
    /// The embedder closed it.
    Closed,
    /// Its ClientHello needed more buffer (held datagrams and reassembly memory) than the
    /// per-connection or total budget left.
    BufferFull,
    /// Its client moved to a 4-tuple another data-plane shard of the host receives, which
    /// carries the connection on ([`crate::Relay::moved_to_shard`]); this shard's old
    /// path idled out. Its CIDs are not remembered as ended: they live on there.
    Moved,
}

impl CloseReason {
    /// A short stable name, for logs and metrics labels.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::IdleTimeout => "idle_timeout",
            Self::HandshakeTimeout => "handshake_timeout",
            Self::InvalidClientHello => "invalid_client_hello",
            Self::Refused(r) => r.as_str(),
            Self::Closed => "closed",
            Self::BufferFull => "buffer_full",
            Self::Moved => "moved",
        }
    }
}

/// A snapshot of one session, for listings and for [`crate::Notification::SessionClosed`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    /// Its ID.
    pub id: SessionId,
    /// The server name the client asked for, once known.
    pub sni: Option<Arc<str>>,
    /// The QUIC version of its Initial.
    pub version: Version,
    /// The client's current address: that of its most recently used path.
    pub client: ClientAddr,
    /// The backend, once routed.
    pub backend: Option<BackendAddr>,
    /// Client paths open (each a client address with its own upstream socket), oldest
    /// first; none until routed.
    pub paths: Vec<PathInfo>,
    /// Its state.
    pub state: SessionState,
    /// Time since its first datagram.
    pub age: Duration,
    /// Time since its last datagram in either direction.
    pub idle: Duration,
    /// Client to backend.
    pub to_backend: Traffic,
    /// Backend to client.
    pub to_client: Traffic,
    /// Whether its client has used a connection ID the backend issued (a sender that
    /// forged its address never sees one); an unvalidated session ends at its
    /// handshake timeout whatever its backend sends.
    pub validated: bool,
}

/// One client path of a session, in [`SessionInfo`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathInfo {
    /// Its ID (the key of its upstream socket).
    pub id: PathId,
    /// The client address it carries.
    pub client: ClientAddr,
    /// Time since its client's last datagram.
    pub idle: Duration,
}

/// What the relay keeps per session. Kept small: the per-handshake state lives in
/// [`Pending`] and is dropped once the session is routed.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) id: SessionId,
    pub(crate) client: ClientAddr,
    pub(crate) backend: Option<BackendAddr>,
    pub(crate) state: SessionState,
    pub(crate) version: Version,
    pub(crate) original_dcid: ConnectionId,
    pub(crate) client_scid: ConnectionId,
    pub(crate) sni: Option<Arc<str>>,
    /// Connection IDs that map to this session, oldest first.
    pub(crate) cids: Vec<ConnectionId>,
    /// Length of the connection IDs the backend issues, once seen.
    pub(crate) server_cid_len: Option<u8>,
    pub(crate) created: Instant,
    pub(crate) last_activity: Instant,
    pub(crate) to_backend: Traffic,
    pub(crate) to_client: Traffic,
    /// Client paths, oldest first; empty until routed, never empty after.
    pub(crate) paths: PathList,
    /// Whether its backend is known to have this connection: always, except for a
    /// session adopted by its CID's server ID until the backend first answers.
    pub(crate) confirmed: bool,
    /// The number of its next path.
    pub(crate) next_path: u16,
    /// Whether its client has sent a datagram with a CID the backend issued (see
    /// `relay::admission`): until then it lives at most the handshake timeout.
    pub(crate) validated: bool,
    /// CIDs the backend issued (Source CIDs of its long headers), kept until the session
    /// is validated by one of them; empty after.
    pub(crate) issued: Vec<ConnectionId>,
    /// The IP its first datagram came from, under which it counts as unvalidated.
    pub(crate) source: std::net::IpAddr,
}

/// A session's paths, oldest first. The first lives inline: most sessions only ever have
/// one, and reaching it costs no extra memory access on the path of every datagram.
#[derive(Debug, Default)]
pub(crate) struct PathList {
    first: Option<Path>,
    more: Vec<Path>,
}

impl PathList {
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Path> {
        self.first.iter().chain(&self.more)
    }

    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = &mut Path> {
        self.first.iter_mut().chain(&mut self.more)
    }

    pub(crate) fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.more.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    pub(crate) fn push(&mut self, path: Path) {
        if self.first.is_none() {
            self.first = Some(path);
        } else {
            self.more.push(path);
        }
    }

    /// Removes the path `id`, keeping the others in order.
    pub(crate) fn remove(&mut self, id: PathId) -> Option<Path> {
        if self.first.is_some_and(|p| p.id == id) {
            let removed = self.first.take();
            if !self.more.is_empty() {
                self.first = Some(self.more.remove(0));
            }
            return removed;
        }
        let i = self.more.iter().position(|p| p.id == id)?;
        Some(self.more.remove(i))
    }
}

impl<'a> IntoIterator for &'a PathList {
    type Item = &'a Path;
    type IntoIter = std::iter::Chain<std::option::Iter<'a, Path>, std::slice::Iter<'a, Path>>;

    fn into_iter(self) -> Self::IntoIter {
        self.first.iter().chain(&self.more)
    }
}

/// One client path: the connection as seen from one client address, carried on its own
/// upstream socket so that the backend sees each client address as its own 4-tuple.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Path {
    pub(crate) id: PathId,
    pub(crate) client: ClientAddr,
    /// The last datagram from this path's client (backend datagrams do not keep a path
    /// alive: a path the client left must end).
    pub(crate) last_client: Instant,
}

impl Session {
    /// Numbers a new path of this session; `None` once 65 536 have been opened.
    pub(crate) fn new_path_id(&mut self) -> Option<PathId> {
        let seq = self.next_path;
        self.next_path = seq.checked_add(1)?;
        Some(PathId::new(self.id, seq))
    }

    /// The path on which the client sent last (the newest on a tie): the one that never
    /// ends on the path timer.
    pub(crate) fn current_path(&self) -> Option<&Path> {
        // `max_by_key` keeps the last of equal maxima: the newest path.
        self.paths.iter().max_by_key(|p| p.last_client)
    }

    /// Whether a client datagram of this routed session with this Destination CID (the
    /// one it was matched by; `None` when it was matched otherwise) validates it: a CID
    /// the backend issued, or anything at all once a backend that issues zero-length
    /// CIDs has answered (nothing is left to check then).
    pub(crate) fn validated_by(&self, dcid: Option<ConnectionId>) -> bool {
        match dcid {
            Some(cid) if self.issued.contains(&cid) => true,
            _ => self.server_cid_len == Some(0),
        }
    }

    pub(crate) fn info(&self, now: Instant) -> SessionInfo {
        SessionInfo {
            id: self.id,
            sni: self.sni.clone(),
            version: self.version,
            client: self.client,
            backend: self.backend,
            paths: self
                .paths
                .iter()
                .map(|p| PathInfo {
                    id: p.id,
                    client: p.client,
                    idle: now.saturating_duration_since(p.last_client),
                })
                .collect(),
            state: self.state,
            age: now.saturating_duration_since(self.created),
            idle: now.saturating_duration_since(self.last_activity),
            to_backend: self.to_backend,
            to_client: self.to_client,
            validated: self.validated,
        }
    }
}

/// Handshake-time state of a session that is not routed yet.
#[derive(Debug)]
pub(crate) struct Pending {
    pub(crate) assembler: InitialAssembler,
    /// Datagrams held until the route is known, in arrival order.
    pub(crate) datagrams: Vec<Bytes>,
    /// Bytes charged to the buffer budgets: the held datagrams and `reassembly`.
    pub(crate) bytes: usize,
    /// The part of `bytes` that is the assembler's reassembly memory.
    pub(crate) reassembly: usize,
    pub(crate) alpn: Vec<Vec<u8>>,
}
