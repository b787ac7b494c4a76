//! Newtypes for the identifiers and address roles the relay deals in, so a client address
//! cannot be passed where a backend address is meant.

use std::fmt;
use std::net::SocketAddr;

/// Identifies one relayed connection (a session) for its whole life. Never reused by a
/// relay instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}", self.0)
    }
}

/// Identifies one client path of a session (the connection as seen from one client
/// address) and with it the upstream socket that carries it. Never reused by a relay
/// instance; unique across sessions: the session's ID in the high 48 bits, the path's
/// number within the session in the low 16, so a backend datagram finds its session
/// without a table of paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PathId(pub u64);

impl PathId {
    /// Bits numbering a session's paths.
    const SEQ_BITS: u32 = 16;

    /// Path number `seq` of `session`.
    pub(crate) fn new(session: SessionId, seq: u16) -> Self {
        Self(session.0 << Self::SEQ_BITS | u64::from(seq))
    }

    /// The session this path belongs to.
    pub fn session(self) -> SessionId {
        SessionId(self.0 >> Self::SEQ_BITS)
    }

    /// Its number among the session's paths (0: the first).
    pub fn seq(self) -> u16 {
        (self.0 & 0xffff) as u16
    }
}

impl fmt::Display for PathId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/p{}", self.session(), self.seq())
    }
}

/// Identifies one allocation request handed to the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AllocationId(pub u64);

impl fmt::Display for AllocationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a{}", self.0)
    }
}

/// A client's address as the relay's listener sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientAddr(pub SocketAddr);

impl fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A backend (QUIC server) address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendAddr(pub SocketAddr);

impl fmt::Display for BackendAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
