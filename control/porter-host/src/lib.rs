//! # porter-host
//!
//! The data plane around [`porter_core::Relay`], written once for every async runtime:
//! the relay behind one lock ([`RelayHost`], [`HostCell`]), the control plane's one door
//! into it ([`RelayHandle`]), and the I/O engine that runs it ([`Engine`]). It knows
//! nothing of the management API, the route sync or Agones: the control plane reaches the
//! relay through a [`RelayHandle`], and allocation requests go to an [`Allocator`] trait
//! object the driver hands in. No tokio: a driver implements two small traits for its
//! runtime, [`AsyncUdp`] (wait until a UDP socket is ready, then run a non-blocking
//! operation on it) and [`Runtime`] (spawn and abort tasks, sleep, register a socket).
//!
//! - [`Socket`]: a UDP socket with quinn-udp's batched I/O state (receive with GRO, send
//!   with GSO), and the "backend unreachable, reported once per session" rule;
//! - [`bind_listener`]: the dual-stack listener bind (socket2), with the start-up error
//!   messages both binaries print;
//! - [`Shards`]: the data-plane shards [`start`] makes (`udp.shards`), one [`Engine`]
//!   each with its own relay and sockets, listeners sharing the port (SO_REUSEPORT); only
//!   a datagram of a connection another shard owns crosses over, through a lookup;
//! - [`Engine`]: one task per listener and per session's upstream socket, the timer task
//!   the core asks for, and the execution of the relay's [`porter_core::Command`]s in
//!   order, coalescing runs of same-sized datagrams for one destination into one GSO send;
//! - [`Directory`]: the connection-ID directory shared between instances, which answers
//!   the core's lookups of connection IDs it does not know;
//! - [`start`] and [`drain`]: start-up from [`HostSettings`] and the shutdown drain after
//!   the first SIGINT/SIGTERM.
//!
//! ## Locks
//!
//! One data-plane lock per shard, the [`HostCell`]'s mutex around the [`RelayHost`]
//! (a shard takes another's only on the miss path, one at a time): every datagram,
//! timer expiry, allocation answer and control-plane change takes it once, briefly, and
//! never across an await. Beside it, small leaf locks that are never held while taking
//! the host lock: the engine's upstream-socket and allocation-task maps, its armed
//! deadline, the subscriber list, and each socket's quinn-udp state.

mod allocator;
mod batch;
mod directory;
mod engine;
mod health;
mod host;
mod limits;
mod logtext;
mod metrics;
mod notify;
mod sends;
mod settings;
mod socket;

use std::future::Future;
use std::io;
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::os::fd::BorrowedFd;
use std::time::Instant;

pub use allocator::{Allocated, AllocationError, AllocationErrorKind, AllocationFuture, Allocator};
pub use directory::{Directory, LookupFuture};
pub use engine::{drain, start, Engine, Shards, StartError, DRAIN_GRACE};
pub use health::{HealthSettings, PROBE_VERSION};
pub use host::{
    HostCell, HostStats, RelayHandle, RelayHost, RouteEditor, Subscriber, ALLOCATION_GRACE,
};
pub use limits::{open_fds, raise_fd_limit, FdLimit, SocketBudget, FDS_OPENED_LATER, FD_RESERVE};
pub use logtext::{escape_network_text, LogLimiter, MAX_LOGGED_BYTES};
pub use metrics::{
    Histogram, Histograms, RouteStats, ALLOCATION_BUCKETS, NO_ROUTE_LABEL, ROUTING_WAIT_BUCKETS,
    SESSION_DURATION_BUCKETS,
};
pub use sends::BatchedSends;
pub use settings::{HostSettings, SetupError};
pub use socket::{bind_listener, canonical, BindError, Socket};

/// A UDP socket registered with a runtime's reactor.
///
/// Both methods wait until the socket is ready, run `op` on its file descriptor (a
/// non-blocking quinn-udp or `sendmmsg` call), and when `op` fails with [`io::ErrorKind::WouldBlock`] clear the readiness and
/// wait again; any other result is returned.
pub trait AsyncUdp: Send + Sync + 'static {
    /// Runs `op` once the socket is readable, until it does not block.
    fn read_with<T: Send>(
        &self,
        op: impl FnMut(BorrowedFd<'_>) -> io::Result<T> + Send,
    ) -> impl Future<Output = io::Result<T>> + Send;

    /// Runs `op` once the socket is writable, until it does not block.
    fn write_with<T: Send>(
        &self,
        op: impl FnMut(BorrowedFd<'_>) -> io::Result<T> + Send,
    ) -> impl Future<Output = io::Result<T>> + Send;

    /// The local address.
    fn local_addr(&self) -> io::Result<SocketAddr>;

    /// The connected peer's address.
    fn peer_addr(&self) -> io::Result<SocketAddr>;
}

/// What the engine needs from an async runtime.
pub trait Runtime: Send + Sync + 'static {
    /// The runtime's UDP socket.
    type Udp: AsyncUdp;

    /// A spawned task. Dropping it must leave the task running (detached); only
    /// [`Runtime::abort`] cancels it.
    type Task: Send + 'static;

    /// Spawns a task.
    fn spawn(&self, future: impl Future<Output = ()> + Send + 'static) -> Self::Task;

    /// Cancels a task at its next await point (a task may abort itself).
    fn abort(task: Self::Task);

    /// Resolves at `deadline`.
    fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()> + Send;

    /// Registers a bound, non-blocking std socket with the runtime's reactor.
    fn register(&self, socket: StdUdpSocket) -> io::Result<Self::Udp>;

    /// The runtime data-plane shard `index` runs on: the same one for a work-stealing
    /// runtime (tokio's), an executor of its own for a runtime without one (smol's, one
    /// thread per shard). Called once per shard at start.
    fn for_shard(&self, index: usize) -> Self
    where
        Self: Sized;
}
