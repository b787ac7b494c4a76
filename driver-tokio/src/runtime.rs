//! tokio under [`porter_host`]'s relay loop: tasks, timers and readiness of UDP sockets.

use std::future::Future;
use std::io;
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Instant;

use porter_host::{AsyncUdp, Runtime};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::task::AbortHandle;

/// The current tokio runtime.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Tokio;

impl Runtime for Tokio {
    type Udp = TokioUdp;
    type Task = AbortHandle;

    fn spawn(&self, future: impl Future<Output = ()> + Send + 'static) -> AbortHandle {
        tokio::spawn(future).abort_handle()
    }

    fn abort(task: AbortHandle) {
        task.abort();
    }

    fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()> + Send {
        tokio::time::sleep_until(deadline.into())
    }

    fn register(&self, socket: StdUdpSocket) -> io::Result<TokioUdp> {
        UdpSocket::from_std(socket).map(TokioUdp)
    }

    /// Every shard on the one multi-threaded runtime: its workers (one per core) take
    /// whichever shard's tasks are ready.
    fn for_shard(&self, _index: usize) -> Self {
        Self
    }
}

/// A tokio UDP socket.
#[derive(Debug)]
pub(crate) struct TokioUdp(UdpSocket);

impl TokioUdp {
    /// Waits for `interest`, runs `op`, and clears the readiness when it would block
    /// (tokio only learns that a socket was drained through `try_io`).
    async fn ready_then<T>(
        &self,
        interest: Interest,
        mut op: impl FnMut(BorrowedFd<'_>) -> io::Result<T>,
    ) -> io::Result<T> {
        loop {
            self.0.ready(interest).await?;
            match self.0.try_io(interest, || op(self.0.as_fd())) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return other,
            }
        }
    }
}

impl AsyncUdp for TokioUdp {
    fn read_with<T: Send>(
        &self,
        op: impl FnMut(BorrowedFd<'_>) -> io::Result<T> + Send,
    ) -> impl Future<Output = io::Result<T>> + Send {
        self.ready_then(Interest::READABLE, op)
    }

    fn write_with<T: Send>(
        &self,
        op: impl FnMut(BorrowedFd<'_>) -> io::Result<T> + Send,
    ) -> impl Future<Output = io::Result<T>> + Send {
        self.ready_then(Interest::WRITABLE, op)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }

    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.0.peer_addr()
    }
}
