//! The relay's I/O loop, written once for every async runtime.
//!
//! A driver (the `porter` binary on tokio, `porter-smol` on smol) implements two small
//! traits for its runtime: [`AsyncUdp`] (wait until a UDP socket is ready, then run a
//! non-blocking operation on it) and [`Runtime`] (spawn and abort tasks, sleep, register
//! a socket). Everything else lives here and is shared:
//!
//! - [`Socket`]: a UDP socket with quinn-udp's batched I/O state (receive with GRO, send
//!   with GSO), and the "backend unreachable, reported once per session" rule;
//! - [`bind_listener`]: the dual-stack listener bind (socket2), with the start-up error
//!   messages both binaries print;
//! - [`Engine`]: one task per listener and per session's upstream socket, the timer task
//!   the core asks for, and the execution of the [`RelayHost`](crate::host::RelayHost)'s
//!   [`Action`](crate::host::Action)s in order, coalescing runs of same-sized datagrams
//!   for one destination into one GSO send;
//! - [`start`] and [`drain`]: start-up from [`Settings`](crate::setup::Settings) and the
//!   shutdown drain after the first SIGINT/SIGTERM.
//!
//! The [`Allocator`] trait is how the engine asks for Agones game servers
//! ([`crate::agones::AgonesAllocator`] implements it).

mod batch;
mod engine;
pub(crate) mod notify;
mod socket;

use std::future::Future;
use std::io;
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

pub use engine::{drain, start, Engine, StartError};
pub use quinn_udp::UdpSockRef;
pub use socket::{bind_listener, canonical, BindError, Socket};

/// A UDP socket registered with a runtime's reactor.
///
/// Both methods wait until the socket is ready, run `op` on it (a non-blocking quinn-udp
/// call), and when `op` fails with [`io::ErrorKind::WouldBlock`] clear the readiness and
/// wait again; any other result is returned.
pub trait AsyncUdp: Send + Sync + 'static {
    /// Runs `op` once the socket is readable, until it does not block.
    fn read_with<T: Send>(
        &self,
        op: impl FnMut(UdpSockRef<'_>) -> io::Result<T> + Send,
    ) -> impl Future<Output = io::Result<T>> + Send;

    /// Runs `op` once the socket is writable, until it does not block.
    fn write_with<T: Send>(
        &self,
        op: impl FnMut(UdpSockRef<'_>) -> io::Result<T> + Send,
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
}

/// The answer of an [`Allocator`]: the game server's address, or why there is none.
pub type AllocationFuture = Pin<Box<dyn Future<Output = Result<SocketAddr, String>> + Send>>;

/// How allocation requests (`agones` routes) are served.
pub trait Allocator: Send + Sync + 'static {
    /// Allocates a game server from `fleet` for the connection named by `tag`, giving up
    /// at `deadline`. The future must be runnable on the driver's runtime.
    fn allocate(&self, fleet: Arc<str>, tag: String, deadline: Instant) -> AllocationFuture;
}
