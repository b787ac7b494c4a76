//! smol under [`porter_host`]'s relay loop: an `async-executor` for tasks, `async-io`'s
//! reactor for socket readiness and timers.

use std::future::Future;
use std::io;
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::os::fd::{AsFd, BorrowedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_executor::{Executor, Task};
use async_io::{Async, Timer};
use porter_control::redis_sync::Timer as RedisTimer;
use porter_host::{AsyncUdp, Runtime};

/// The driver's executor.
#[derive(Clone, Debug)]
pub(crate) struct Smol {
    executor: Arc<Executor<'static>>,
}

impl Smol {
    /// Tasks go to `executor`; the caller runs it on as many threads as it likes.
    pub(crate) fn new(executor: Arc<Executor<'static>>) -> Self {
        Self { executor }
    }

    /// Spawns a task that runs to its end (nothing holds it).
    pub(crate) fn spawn_detached<F>(&self, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.executor.spawn(future).detach();
    }
}

/// A spawned task: dropping it detaches (the task runs on), as [`Runtime::Task`] asks;
/// [`Runtime::abort`] cancels it.
#[derive(Debug)]
pub(crate) struct SmolTask(Option<Task<()>>);

impl Drop for SmolTask {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.detach();
        }
    }
}

impl Runtime for Smol {
    type Task = SmolTask;
    type Udp = SmolUdp;

    fn register(&self, socket: StdUdpSocket) -> io::Result<SmolUdp> {
        Async::new(socket).map(SmolUdp)
    }

    fn spawn(&self, future: impl Future<Output = ()> + Send + 'static) -> SmolTask {
        SmolTask(Some(self.executor.spawn(future)))
    }

    fn abort(mut task: SmolTask) {
        // Dropping an async-executor task cancels it.
        drop(task.0.take());
    }

    fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()> + Send {
        let timer = Timer::at(deadline);
        async move {
            timer.await;
        }
    }

    /// Shard 0 runs on this executor (the main thread's, beside the control plane);
    /// every other shard gets an executor on a thread of its own, so that `udp.shards`
    /// shards forward on as many threads.
    fn for_shard(&self, index: usize) -> Self {
        if index == 0 {
            return self.clone();
        }
        let executor = Arc::new(Executor::new());
        let runner = executor.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("porter-smol-shard-{index}"))
            .spawn(move || async_io::block_on(runner.run(std::future::pending::<()>())));
        match spawned {
            Ok(_) => Self { executor },
            Err(e) => {
                tracing::warn!(
                    shard = index,
                    "cannot start a shard's executor thread ({e}): it shares the main one"
                );
                self.clone()
            }
        }
    }
}

/// A UDP socket on async-io's reactor.
#[derive(Debug)]
pub(crate) struct SmolUdp(Async<StdUdpSocket>);

impl AsyncUdp for SmolUdp {
    fn read_with<T: Send>(
        &self,
        mut op: impl FnMut(BorrowedFd<'_>) -> io::Result<T> + Send,
    ) -> impl Future<Output = io::Result<T>> + Send {
        self.0.read_with(move |socket| op(socket.as_fd()))
    }

    fn write_with<T: Send>(
        &self,
        mut op: impl FnMut(BorrowedFd<'_>) -> io::Result<T> + Send,
    ) -> impl Future<Output = io::Result<T>> + Send {
        self.0.write_with(move |socket| op(socket.as_fd()))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.get_ref().local_addr()
    }

    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.0.get_ref().peer_addr()
    }
}

/// The route sync's timer on async-io.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct SmolTimer;

impl RedisTimer for SmolTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let timer = Timer::after(duration);
        Box::pin(async move {
            timer.await;
        })
    }
}
