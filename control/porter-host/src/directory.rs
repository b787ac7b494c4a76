//! The connection-ID directory shared between relay instances, as the engine sees it: a
//! [`Directory`] trait object (the control plane's Redis directory implements it) that
//! answers the core's [`porter_core::Command::LookupConnection`]. The engine runs each
//! lookup's future on its runtime and passes the answer to
//! [`porter_core::Relay::complete_lookup`] under the host lock. Publishing goes the other
//! way, through the relay's notifications ([`crate::RelayHandle::subscribe`]:
//! `ConnectionIdsLearned` and `SessionClosed`).

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use porter_core::{BackendAddr, ConnectionId};

/// The answer of a [`Directory`] lookup: the CID it holds that the DCID bytes start
/// with, and that connection's backend; `None` when it knows none (or cannot be
/// reached: the relay then drops the datagram, as without a directory).
pub type LookupFuture = Pin<Box<dyn Future<Output = Option<(ConnectionId, BackendAddr)>> + Send>>;

/// Where the engine looks up connection IDs it does not know.
pub trait Directory: Send + Sync + 'static {
    /// Looks up the connection whose CID `dcid` (the bytes after a short header's first
    /// octet, at most 20) starts with. The future must be runnable on the driver's
    /// runtime and should give up on its own after a short while (the core stops
    /// waiting after its `lookup_timeout` anyway; a late answer is discarded).
    fn lookup(&self, dcid: Bytes) -> LookupFuture;
}
