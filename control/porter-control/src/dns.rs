//! Host names in routes from the API and Redis, resolved off the executor with a timeout.
//!
//! `RouteSpec::resolve` uses the system's blocking resolver; on an async executor a slow
//! DNS server would stall every task of its thread. [`Resolver::resolve`] does each lookup
//! of a name on a thread of its own and waits for it without blocking (a oneshot channel:
//! no runtime's timer is needed, so it works on tokio and smol alike). A lookup that takes
//! longer than the timeout ([`DNS_TIMEOUT`]) is an error (`TimedOut`); its thread is left to
//! finish on its own and its answer is dropped. IP literals need no thread.

use std::io;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use porter_config::{Host, ResolveError, RouteKind, RouteSpec, Target};
use porter_core::Route;

/// How long a lookup of a route's host name may take (API and Redis routes).
pub const DNS_TIMEOUT: Duration = Duration::from_secs(5);

/// A blocking lookup of `(name, port)`: the system resolver in production, anything in
/// tests.
pub type Lookup = Arc<dyn Fn(&str, u16) -> io::Result<Vec<SocketAddr>> + Send + Sync>;

/// Resolves routes' host names on helper threads, with a timeout.
#[derive(Clone)]
pub struct Resolver {
    lookup: Lookup,
    timeout: Duration,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Default for Resolver {
    fn default() -> Self {
        Self::system(DNS_TIMEOUT)
    }
}

impl Resolver {
    /// The system resolver (`std::net::ToSocketAddrs`), with `timeout`.
    #[must_use]
    pub fn system(timeout: Duration) -> Self {
        Self::with_lookup(
            Arc::new(|name, port| {
                std::net::ToSocketAddrs::to_socket_addrs(&(name, port)).map(Iterator::collect)
            }),
            timeout,
        )
    }

    /// Any blocking lookup, with `timeout`.
    #[must_use]
    pub fn with_lookup(lookup: Lookup, timeout: Duration) -> Self {
        Self { lookup, timeout }
    }

    /// One target's addresses: at once for an IP literal, else from a lookup on its own
    /// thread, waited for without blocking the caller's executor.
    ///
    /// # Errors
    /// The lookup's error; `NotFound` for no address; `TimedOut` after the timeout;
    /// `Other` if no thread could be started.
    pub async fn resolve_target(&self, target: &Target) -> io::Result<Vec<SocketAddr>> {
        let name = match target.host() {
            Host::Ip(ip) => return Ok(vec![SocketAddr::new(*ip, target.port())]),
            Host::Name(name) => name.clone(),
        };
        let port = target.port();
        let (answer, answered) = tokio::sync::oneshot::channel();
        let lookup = self.lookup.clone();
        let timeout = self.timeout;
        let shown = target.to_string();
        // The waiter thread starts the lookup thread and waits for it at most `timeout`.
        std::thread::Builder::new()
            .name("porter-dns".into())
            .spawn(move || {
                let (tx, rx) = mpsc::sync_channel(1);
                let started = std::thread::Builder::new()
                    .name("porter-dns-lookup".into())
                    .spawn(move || {
                        let _ = tx.send(lookup(&name, port));
                    });
                let result = match started {
                    Err(e) => Err(e),
                    Ok(_) => match rx.recv_timeout(timeout) {
                        Ok(result) => result,
                        Err(mpsc::RecvTimeoutError::Timeout) => Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("DNS lookup of {shown} took longer than {timeout:?}"),
                        )),
                        Err(mpsc::RecvTimeoutError::Disconnected) => Err(io::Error::other(
                            format!("DNS lookup of {shown} failed (its thread ended)"),
                        )),
                    },
                };
                let _ = answer.send(result);
            })?;
        let addrs = answered
            .await
            .map_err(|_| io::Error::other("DNS lookup thread ended without an answer"))??;
        if addrs.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{target} resolves to no address"),
            ));
        }
        Ok(addrs)
    }

    /// The core's route, each host name resolved (to its first address) as
    /// [`RouteSpec::resolve`] does, but off the executor and with the timeout.
    ///
    /// # Errors
    /// Every target that does not resolve (or not in time).
    pub async fn resolve(&self, spec: &RouteSpec) -> Result<Route, Vec<ResolveError>> {
        let RouteKind::Simple { targets, balance } = &spec.kind else {
            return spec.resolve(); // no names to look up
        };
        let mut answers = Vec::with_capacity(targets.len());
        for t in targets {
            answers.push(self.resolve_target(t).await);
        }
        let mut literal = Vec::with_capacity(targets.len());
        let mut failures = Vec::new();
        for (index, (t, answer)) in targets.iter().zip(answers).enumerate() {
            match answer {
                Ok(addrs) => literal.push(Target::from(addrs[0])),
                Err(source) => failures.push(ResolveError {
                    index,
                    target: t.to_string(),
                    source,
                }),
            }
        }
        if !failures.is_empty() {
            return Err(failures);
        }
        // Every target is now an IP literal: resolving it needs no lookup.
        RouteSpec {
            name: spec.name.clone(),
            kind: RouteKind::Simple {
                targets: literal,
                balance: balance.clone(),
            },
        }
        .resolve()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    fn spec(target: &str) -> RouteSpec {
        let text: porter_config::RouteText = serde_json::from_value(serde_json::json!({
            "fqdn": "game.test", "type": "simple", "target": target
        }))
        .unwrap();
        RouteSpec::from_text(&text).unwrap()
    }

    #[test]
    fn a_slow_lookup_times_out_promptly_while_other_tasks_keep_running() {
        let slow: Lookup = Arc::new(|_, _| {
            std::thread::sleep(Duration::from_secs(3));
            Ok(vec!["192.0.2.1:1".parse().unwrap()])
        });
        let resolver = Resolver::with_lookup(slow, Duration::from_millis(200));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let ticks = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let result = rt.block_on(async {
            let counter = ticks.clone();
            let ticker = tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            });
            let result = resolver.resolve(&spec("slow.example:4433")).await;
            ticker.abort();
            result
        });
        let elapsed = started.elapsed();
        let failures = result.unwrap_err();
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].source.kind(), io::ErrorKind::TimedOut);
        assert!(
            failures[0].to_string().contains("took longer than 200ms"),
            "{}",
            failures[0]
        );
        assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
        // The executor was free while waiting: the other task ran about every 10 ms.
        assert!(
            ticks.load(Ordering::Relaxed) >= 5,
            "{}",
            ticks.load(Ordering::Relaxed)
        );
    }

    #[test]
    fn names_resolve_through_the_lookup_and_literals_without_it() {
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        let lookup: Lookup = Arc::new(move |name, port| {
            seen.fetch_add(1, Ordering::Relaxed);
            assert_eq!(name, "a.example");
            Ok(vec![SocketAddr::new("192.0.2.7".parse().unwrap(), port)])
        });
        let resolver = Resolver::with_lookup(lookup, Duration::from_secs(5));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let route = rt
            .block_on(resolver.resolve(&spec("a.example:4433,192.0.2.8:1")))
            .unwrap();
        let porter_core::RouteTarget::Simple(backends) = &route.target else {
            panic!("{route:?}");
        };
        let addrs: Vec<String> = backends.iter().map(|b| b.0.to_string()).collect();
        assert_eq!(addrs, ["192.0.2.7:4433", "192.0.2.8:1"]);
        assert_eq!(calls.load(Ordering::Relaxed), 1);
        let empty: Lookup = Arc::new(|_, _| Ok(Vec::new()));
        let failures = rt
            .block_on(Resolver::with_lookup(empty, DNS_TIMEOUT).resolve(&spec("b.example:1")))
            .unwrap_err();
        assert_eq!(failures[0].source.kind(), io::ErrorKind::NotFound);
    }
}
