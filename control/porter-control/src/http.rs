//! Serving the management API on any runtime: one accepted connection
//! ([`serve_connection`]: hyper's HTTP/1.1 server with a header-read timeout and an idle
//! timeout, both on the driver's [`ApiTimer`]) and the accept loop ([`accept_loop`]: a
//! cap on connections at once, and back-off with a quiet log when accepting fails, as it
//! does when the process is out of file descriptors). The driver accepts TCP connections
//! with its own runtime and wraps each in hyper's `rt::Read` + `rt::Write` (`TokioIo` on
//! tokio, `smol_hyper::rt::FuturesIo` on smol); the whole listener on tokio is
//! [`serve_api_tokio`] (feature `tokio`).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::future::{select, Either};
/// hyper's timer traits, for drivers implementing an [`ApiTimer`] for their runtime.
pub use hyper::rt::{Sleep, Timer};

use crate::api::Api;
#[cfg(feature = "tokio")]
use std::net::SocketAddr;

/// The timer hyper and the accept loop sleep on: the driver's runtime's.
#[derive(Clone)]
pub struct ApiTimer(Arc<dyn Timer + Send + Sync>);

impl ApiTimer {
    /// Wraps a runtime's hyper timer.
    pub fn new(timer: impl Timer + Send + Sync + 'static) -> Self {
        Self(Arc::new(timer))
    }

    /// Resolves after `duration`.
    pub fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        self.0.sleep(duration)
    }
}

impl Timer for ApiTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        self.0.sleep(duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        self.0.sleep_until(deadline)
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn Sleep>>, new_deadline: Instant) {
        self.0.reset(sleep, new_deadline);
    }
}

/// Serves HTTP/1.1 requests on `io` with [`Api::handle`] until the client closes it, its
/// headers take longer than `api.header_timeout`, or nothing moves either way for
/// `api.idle_timeout` (an idle keep-alive connection, or a body that stalls). Connection
/// errors are logged at debug level (clients that go away are not news).
pub async fn serve_connection<I>(api: Arc<Api>, timer: ApiTimer, io: I)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
{
    let settings = api.settings().clone();
    let activity = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let io = Watched {
        inner: io,
        activity: activity.clone(),
        started,
    };
    let service = hyper::service::service_fn(move |req| {
        let api = api.clone();
        async move { Ok::<_, Infallible>(api.handle(req).await) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(timer.clone())
        .header_read_timeout(settings.header_timeout)
        .serve_connection(io, service);
    let idle = settings.idle_timeout;
    let watchdog = async move {
        loop {
            let last = started + Duration::from_millis(activity.load(Ordering::Relaxed));
            let deadline = last + idle;
            if Instant::now() >= deadline {
                return;
            }
            timer.sleep_until(deadline).await;
        }
    };
    match select(connection, Box::pin(watchdog)).await {
        Either::Left((Err(e), _)) => tracing::debug!("API connection: {e}"),
        Either::Left((Ok(()), _)) => {}
        Either::Right(((), _)) => tracing::debug!("API connection idle: closed"),
    }
}

/// An I/O object that notes when bytes last moved, for the idle timeout.
struct Watched<I> {
    inner: I,
    /// Milliseconds since `started` of the last read or write.
    activity: Arc<AtomicU64>,
    started: Instant,
}

impl<I> Watched<I> {
    fn touch(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.activity.store(ms, Ordering::Relaxed);
    }
}

impl<I: hyper::rt::Read + Unpin> hyper::rt::Read for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if poll.is_ready() {
            self.touch();
        }
        poll
    }
}

impl<I: hyper::rt::Write + Unpin> hyper::rt::Write for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// How long the accept loop waits after a failed accept: doubling from 5 ms to 1 s while
/// accepting keeps failing (out of file descriptors, typically), back to nothing after a
/// success. Errors are logged once, then at most once per [`AcceptBackoff::LOG_EVERY`]
/// with the number left out, so a descriptor shortage cannot flood the log.
#[derive(Debug)]
pub struct AcceptBackoff {
    delay: Duration,
    last_log: Option<Instant>,
    suppressed: u64,
}

impl Default for AcceptBackoff {
    fn default() -> Self {
        Self::new()
    }
}

impl AcceptBackoff {
    /// The first wait after a failure.
    pub const MIN: Duration = Duration::from_millis(5);
    /// The longest wait.
    pub const MAX: Duration = Duration::from_secs(1);
    /// At most one log line per this long.
    pub const LOG_EVERY: Duration = Duration::from_secs(10);

    /// No failures yet.
    pub fn new() -> Self {
        Self {
            delay: Duration::ZERO,
            last_log: None,
            suppressed: 0,
        }
    }

    /// An accept succeeded.
    pub fn succeeded(&mut self) {
        self.delay = Duration::ZERO;
    }

    /// An accept failed at `now`: how long to wait before the next, and the log line to
    /// write, if one is due (with the number of failures left out since the last).
    pub fn failed(&mut self, now: Instant, error: &io::Error) -> (Duration, Option<String>) {
        self.delay = (self.delay * 2).clamp(Self::MIN, Self::MAX);
        let due = self
            .last_log
            .is_none_or(|last| now.saturating_duration_since(last) >= Self::LOG_EVERY);
        let line = if due {
            let line = if self.suppressed > 0 {
                format!(
                    "API accept failed: {error} ({} more since the last report; retrying with back-off)",
                    self.suppressed
                )
            } else {
                format!("API accept failed: {error} (retrying with back-off)")
            };
            self.last_log = Some(now);
            self.suppressed = 0;
            Some(line)
        } else {
            self.suppressed += 1;
            None
        };
        (self.delay, line)
    }
}

/// Accepts connections with `accept` and serves each with [`serve_connection`] on a task
/// `spawn` starts, at most `api.max_connections` at once (beyond that, new connections
/// wait in the listen backlog), backing off when accepting fails ([`AcceptBackoff`]).
/// Runs until the process ends.
pub async fn accept_loop<I, A, F, S>(api: Arc<Api>, timer: ApiTimer, mut accept: A, spawn: S)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    A: FnMut() -> F,
    F: Future<Output = io::Result<I>>,
    S: Fn(Pin<Box<dyn Future<Output = ()> + Send>>),
{
    let open = Arc::new(AtomicUsize::new(0));
    let cap = api.settings().max_connections.max(1);
    let mut backoff = AcceptBackoff::new();
    loop {
        // At the cap, wait for a connection to end; the backlog holds the rest.
        while open.load(Ordering::Acquire) >= cap {
            timer.sleep(Duration::from_millis(20)).await;
        }
        match accept().await {
            Ok(io) => {
                backoff.succeeded();
                open.fetch_add(1, Ordering::AcqRel);
                let slot = Slot(open.clone());
                let (api, timer) = (api.clone(), timer.clone());
                spawn(Box::pin(async move {
                    let _slot = slot;
                    serve_connection(api, timer, io).await;
                }));
            }
            Err(e) => {
                let (wait, line) = backoff.failed(Instant::now(), &e);
                if let Some(line) = line {
                    tracing::warn!("{line}");
                }
                timer.sleep(wait).await;
            }
        }
    }
}

/// One open connection, counted until dropped.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Binds `api`'s address and serves it on the current tokio runtime; returns the bound
/// address.
#[cfg(feature = "tokio")]
pub async fn serve_api_tokio(api: Api) -> io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(api.settings().bind).await?;
    let bound = listener.local_addr()?;
    let api = Arc::new(api);
    let timer = ApiTimer::new(hyper_util::rt::TokioTimer::new());
    let listener = Arc::new(listener);
    tokio::spawn(accept_loop(
        api,
        timer,
        move || {
            let listener = listener.clone();
            async move {
                let (stream, _) = listener.accept().await?;
                Ok(hyper_util::rt::TokioIo::new(stream))
            }
        },
        |task| {
            tokio::spawn(task);
        },
    ));
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_errors_back_off_and_log_once_per_period() {
        let mut backoff = AcceptBackoff::new();
        let t0 = Instant::now();
        let emfile = io::Error::from_raw_os_error(24);
        let mut now = t0;
        let mut lines = Vec::new();
        let mut waits = Vec::new();
        // A minute of failures, each retried after the wait it was given.
        while now < t0 + Duration::from_secs(60) {
            let (wait, line) = backoff.failed(now, &emfile);
            waits.push(wait);
            lines.extend(line);
            now += wait;
        }
        assert_eq!(waits[0], AcceptBackoff::MIN);
        assert!(waits.windows(2).all(|w| w[1] >= w[0]), "{waits:?}");
        assert_eq!(*waits.last().unwrap(), AcceptBackoff::MAX);
        // About 60 retries a minute at the cap, not a busy loop.
        assert!(waits.len() < 100, "{} accepts in a minute", waits.len());
        // One line per 10 s, the later ones counting what they left out.
        assert!((6..=7).contains(&lines.len()), "{lines:?}");
        assert!(lines[0].contains("API accept failed"), "{}", lines[0]);
        assert!(
            lines[1].contains("more since the last report"),
            "{}",
            lines[1]
        );
        // A success resets the wait.
        backoff.succeeded();
        assert_eq!(backoff.failed(now, &emfile).0, AcceptBackoff::MIN);
    }
}
