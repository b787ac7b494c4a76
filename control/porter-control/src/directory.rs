//! The connection-ID directory in Redis (`redis.directory`): every instance publishes
//! the CIDs of its routed sessions with their backend, and looks up there a CID it does
//! not know, so that a connection whose client's NAT rebound (and whose datagrams the L4
//! balancer in front now sends to another instance) stays on its backend. The core
//! decides when to look up and holds the datagram (`porter_core::Relay`'s directory
//! lookups); this is the store.
//!
//! - Keys `porter:cid:<hex>` hold `<backend> <instance>` with a TTL of the relay's idle
//!   timeout: written when the core announces a CID
//!   (`Notification::ConnectionIdsLearned`), refreshed every third of the TTL while the
//!   session lives (never per datagram; in pipelines of their own, beside the queue),
//!   deleted when it ends (`SessionClosed`), if the entry is still this instance's (after
//!   a move, the other instance's session of the same connection wrote it last).
//! - Writes queue up (bounded: beyond [`MAX_QUEUED`] they are dropped and counted) and
//!   leave as one pipeline per batch: one flush at most every [`FLUSH_DELAY`], each of
//!   up to [`BATCH`] commands, so the round trips per second are bounded whatever the
//!   rate of new sessions (BENCHMARKS.md has the measured figure). A write after a quiet
//!   spell of at least [`FLUSH_DELAY`] leaves at once: only under load does a new
//!   connection's first write wait, for at most [`FLUSH_DELAY`].
//! - A lookup is one `MGET` of the keys of every CID length (1 to 20 bytes) the held
//!   datagram's DCID bytes can start with (short headers carry no length), longest first,
//!   within [`LOOKUP_TIMEOUT`]. With the link down it answers "not found" at once,
//!   counted: the relay then behaves as without a directory.
//!
//! The link is one multiplexed connection, re-established with backoff; on each
//! (re)connection every live session's CIDs are written again (Redis may have lost them).
//! Lock order: the directory's state lock is a leaf, taken by the relay's notification
//! subscriber after the host lock is released.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use porter_core::{BackendAddr, ConnectionId, Notification, SessionId};
use porter_host::{Directory, LookupFuture, RelayHandle};
use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;

use crate::redis_sync::{RedisSetupError, Timer};
use porter_config::RedisConfig;

/// The prefix of the directory's keys.
pub const KEY_PREFIX: &str = "porter:cid:";
/// Most writes waiting for Redis; beyond, new ones are dropped (and counted).
pub const MAX_QUEUED: usize = 256 * 1024;
/// Most commands in one pipeline.
pub const BATCH: usize = 8192;
/// How long writes gather before a flush: bounds the pipelines per second.
pub const FLUSH_DELAY: Duration = Duration::from_millis(10);
/// How long a lookup may wait for Redis.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_millis(200);
/// Deletes KEYS[1] if it still holds ARGV[1] (this instance's entry).
const DELETE_OWN: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";
/// The longest CID (RFC 9000 §17.2).
const MAX_CID_LEN: usize = 20;
/// How long to wait for a connection or a pipeline's answer.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// How often an idle link is checked.
const PING_INTERVAL: Duration = Duration::from_secs(1);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The directory's key for `cid`.
pub fn key(cid: &[u8]) -> String {
    let mut key = String::with_capacity(KEY_PREFIX.len() + 2 * cid.len());
    key.push_str(KEY_PREFIX);
    for b in cid {
        let _ = write!(key, "{b:02x}");
    }
    key
}

/// Counters of the directory's link, writes and lookups.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirectoryCounters {
    /// CIDs written (first writes and refreshes).
    pub writes: u64,
    /// CIDs deleted.
    pub deletes: u64,
    /// Writes and deletes dropped: the queue was full (Redis slow or down).
    pub dropped: u64,
    /// Pipelines sent (round trips to Redis for writes).
    pub flushes: u64,
    /// Lookups sent to Redis.
    pub lookups: u64,
    /// Lookups Redis answered with a connection.
    pub lookups_found: u64,
    /// Lookups answered "not found" at once because the link was down.
    pub lookups_down: u64,
    /// Lookups that failed or timed out on the way.
    pub lookups_failed: u64,
    /// Times the link went down.
    pub disconnects: u64,
}

/// What `/readyz` and `/metrics` show of the directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectoryStatus {
    /// Whether the link to Redis is up.
    pub up: bool,
    /// Why it is not, when it is not.
    pub reason: Option<String>,
    /// Writes waiting.
    pub queued: usize,
    /// Sessions whose CIDs are published.
    pub sessions: usize,
    /// The counters.
    pub counters: DirectoryCounters,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Set(ConnectionId, BackendAddr),
    Del(ConnectionId, BackendAddr),
}

struct State {
    up: bool,
    reason: Option<String>,
    queue: VecDeque<Op>,
    sessions: HashMap<SessionId, (BackendAddr, Vec<ConnectionId>)>,
    counters: DirectoryCounters,
}

struct Inner {
    instance: String,
    ttl: Duration,
    state: Mutex<State>,
    changed: tokio::sync::Notify,
    conn: Mutex<Option<MultiplexedConnection>>,
    timer: Arc<dyn Timer>,
}

/// The Redis connection-ID directory: a [`Directory`] for the engine, fed by the relay's
/// notifications. Cheap to clone (one shared state).
#[derive(Clone)]
pub struct RedisDirectory {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl RedisDirectory {
    /// A directory for instance `instance` whose keys live `ttl` (the relay's idle
    /// timeout), sleeping with `timer`; not connected yet (see [`Self::run`]).
    pub fn new(instance: impl Into<String>, ttl: Duration, timer: impl Timer) -> Self {
        Self {
            inner: Arc::new(Inner {
                instance: instance.into(),
                ttl: ttl.max(Duration::from_secs(1)),
                state: Mutex::new(State {
                    up: false,
                    reason: Some("not connected yet".into()),
                    queue: VecDeque::new(),
                    sessions: HashMap::new(),
                    counters: DirectoryCounters::default(),
                }),
                changed: tokio::sync::Notify::new(),
                conn: Mutex::new(None),
                timer: Arc::new(timer),
            }),
        }
    }

    /// Publishes the CIDs of `relay`'s sessions from now on (subscribes to its
    /// notifications).
    pub fn follow(&self, relay: &RelayHandle) {
        let directory = self.clone();
        relay.subscribe(Arc::new(move |note| directory.note(note)));
    }

    /// Takes one relay notification: CIDs learned are queued for writing, those of a
    /// session that ended for deleting.
    pub fn note(&self, note: &Notification) {
        let mut st = lock(&self.inner.state);
        match note {
            Notification::ConnectionIdsLearned {
                session,
                backend,
                cids,
            } => {
                let entry = st
                    .sessions
                    .entry(*session)
                    .or_insert_with(|| (*backend, Vec::new()));
                entry.1.extend_from_slice(cids);
                for &cid in cids {
                    push(&mut st, Op::Set(cid, *backend));
                }
            }
            Notification::SessionClosed { info, reason } => {
                let Some((backend, cids)) = st.sessions.remove(&info.id) else {
                    return;
                };
                // Another shard of this instance carries the connection on (and wrote
                // its CIDs when it adopted them): the entries stay.
                if *reason == porter_core::CloseReason::Moved {
                    return;
                }
                for cid in cids {
                    push(&mut st, Op::Del(cid, backend));
                }
            }
            _ => return,
        }
        drop(st);
        self.inner.changed.notify_one();
    }

    /// The link, the queue and the counters.
    pub fn status(&self) -> DirectoryStatus {
        let st = lock(&self.inner.state);
        DirectoryStatus {
            up: st.up,
            reason: st.reason.clone(),
            queued: st.queue.len(),
            sessions: st.sessions.len(),
            counters: st.counters,
        }
    }

    /// Keeps the directory connected to Redis through `client`, forever: spawn it on the
    /// runtime the redis crate runs on (as [`crate::redis_sync::run`]).
    pub async fn run(self, client: redis::Client) {
        let mut backoff = BACKOFF_MIN;
        loop {
            let error = self.session(&client).await;
            let was_up = {
                let mut st = lock(&self.inner.state);
                let was_up = st.up;
                if was_up {
                    st.counters.disconnects += 1;
                }
                st.up = false;
                st.reason = Some(error.clone());
                was_up
            };
            *lock(&self.inner.conn) = None;
            if was_up {
                backoff = BACKOFF_MIN;
                tracing::warn!(
                    "connection-ID directory down: {error}; unknown connection IDs are dropped as without it"
                );
            } else {
                tracing::debug!("cannot reach the connection-ID directory: {error}");
            }
            self.inner.timer.sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// One connection's life; returns why it ended.
    async fn session(&self, client: &redis::Client) -> String {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(IO_TIMEOUT))
            .set_response_timeout(Some(IO_TIMEOUT));
        let mut conn = tokio::select! {
            c = client.get_multiplexed_async_connection_with_config(&config) => match c {
                Ok(c) => c,
                Err(e) => return format!("connect: {e}"),
            },
            () = self.inner.timer.sleep(IO_TIMEOUT) => return "connect: no answer".into(),
        };
        // Whatever Redis lost while the link was down (or a restart) is written again.
        if let Err(e) = self.refresh(&mut conn).await {
            return e;
        }
        {
            let mut st = lock(&self.inner.state);
            st.up = true;
            st.reason = None;
        }
        *lock(&self.inner.conn) = Some(conn.clone());
        tracing::info!(instance = %self.inner.instance, "connection-ID directory up");
        let refresh = self.inner.ttl / 3;
        let mut next_refresh = Instant::now() + refresh;
        // When the last pipeline of writes left: the next waits out what is left of
        // FLUSH_DELAY since then, and no more, so a write after a quiet spell (a new
        // connection's first CIDs) leaves at once.
        let mut last_flush: Option<Instant> = None;
        loop {
            match self.flush(&mut conn).await {
                Ok(true) => last_flush = Some(Instant::now()),
                Ok(false) => {}
                Err(e) => return e,
            }
            let now = Instant::now();
            if now >= next_refresh {
                next_refresh = now + refresh;
                if let Err(e) = self.refresh(&mut conn).await {
                    return e;
                }
                continue;
            }
            let wait = (next_refresh - now).min(PING_INTERVAL);
            let idle = tokio::select! {
                () = self.inner.changed.notified() => false,
                () = self.inner.timer.sleep(wait) => true,
            };
            if idle {
                // Nothing to write for a while: make sure the link still answers, so
                // that lookups stop waiting on a dead one.
                let ping_cmd = redis::cmd("PING");
                let ping = tokio::select! {
                    r = ping_cmd.query_async::<String>(&mut conn) => r.map_err(|e| format!("ping: {e}")),
                    () = self.inner.timer.sleep(IO_TIMEOUT) => Err("ping: no answer".into()),
                };
                if let Err(e) = ping {
                    return e;
                }
                continue;
            }
            // Let writes gather: one pipeline per FLUSH_DELAY at most.
            let left =
                last_flush.and_then(|at| (at + FLUSH_DELAY).checked_duration_since(Instant::now()));
            if let Some(left) = left {
                self.inner.timer.sleep(left).await;
            }
        }
    }

    /// Writes the queue, a pipeline of at most [`BATCH`] commands at a time; whether
    /// there was anything to write.
    async fn flush(&self, conn: &mut MultiplexedConnection) -> Result<bool, String> {
        let mut wrote = false;
        loop {
            let ops: Vec<Op> = {
                let mut st = lock(&self.inner.state);
                let n = st.queue.len().min(BATCH);
                st.queue.drain(..n).collect()
            };
            if ops.is_empty() {
                return Ok(wrote);
            }
            self.send(conn, &ops).await?;
            wrote = true;
        }
    }

    /// Writes every live session's CIDs again (their TTL starts over), in pipelines of
    /// [`BATCH`], beside the queue: a refresh never crowds out new writes.
    async fn refresh(&self, conn: &mut MultiplexedConnection) -> Result<(), String> {
        let live: Vec<Op> = lock(&self.inner.state)
            .sessions
            .values()
            .flat_map(|(backend, cids)| cids.iter().map(|&cid| Op::Set(cid, *backend)))
            .collect();
        for ops in live.chunks(BATCH) {
            self.send(conn, ops).await?;
        }
        Ok(())
    }

    /// One pipeline.
    async fn send(&self, conn: &mut MultiplexedConnection, ops: &[Op]) -> Result<(), String> {
        let ttl_ms = u64::try_from(self.inner.ttl.as_millis()).unwrap_or(u64::MAX);
        let mut pipe = redis::pipe();
        let (mut writes, mut deletes) = (0, 0);
        for op in ops {
            match op {
                Op::Set(cid, backend) => {
                    writes += 1;
                    pipe.cmd("SET")
                        .arg(key(cid.as_bytes()))
                        .arg(format!("{backend} {}", self.inner.instance))
                        .arg("PX")
                        .arg(ttl_ms)
                        .ignore();
                }
                Op::Del(cid, backend) => {
                    deletes += 1;
                    // Only this instance's entry: after a move, another instance's
                    // session of the same connection owns the key.
                    pipe.cmd("EVAL")
                        .arg(DELETE_OWN)
                        .arg(1)
                        .arg(key(cid.as_bytes()))
                        .arg(format!("{backend} {}", self.inner.instance))
                        .ignore();
                }
            }
        }
        let sent = tokio::select! {
            r = pipe.query_async::<()>(conn) => r.map_err(|e| format!("write: {e}")),
            () = self.inner.timer.sleep(IO_TIMEOUT) => Err("write: no answer".into()),
        };
        let mut st = lock(&self.inner.state);
        st.counters.flushes += 1;
        if let Err(e) = sent {
            st.counters.dropped += ops.len() as u64;
            return Err(e);
        }
        st.counters.writes += writes;
        st.counters.deletes += deletes;
        Ok(())
    }

    async fn find(&self, dcid: Bytes) -> Option<(ConnectionId, BackendAddr)> {
        let conn = lock(&self.inner.conn).clone();
        let Some(mut conn) = conn.filter(|_| lock(&self.inner.state).up) else {
            lock(&self.inner.state).counters.lookups_down += 1;
            return None;
        };
        lock(&self.inner.state).counters.lookups += 1;
        // Longest first: a longer CID that matches is the more specific answer.
        let lens: Vec<usize> = (1..=dcid.len().min(MAX_CID_LEN)).rev().collect();
        if lens.is_empty() {
            return None;
        }
        let keys: Vec<String> = lens.iter().map(|&l| key(&dcid[..l])).collect();
        let mut mget = redis::cmd("MGET");
        mget.arg(&keys);
        let answer = tokio::select! {
            r = mget.query_async::<Vec<Option<String>>>(&mut conn) => r.ok(),
            () = self.inner.timer.sleep(LOOKUP_TIMEOUT) => None,
        };
        let Some(values) = answer else {
            lock(&self.inner.state).counters.lookups_failed += 1;
            return None;
        };
        let found = lens.iter().zip(values).find_map(|(&len, value)| {
            let value = value?;
            let backend = value.split(' ').next()?.parse().ok()?;
            Some((ConnectionId::new(&dcid[..len])?, BackendAddr(backend)))
        });
        if found.is_some() {
            lock(&self.inner.state).counters.lookups_found += 1;
        }
        found
    }
}

fn push(st: &mut State, op: Op) {
    if st.queue.len() >= MAX_QUEUED {
        st.counters.dropped += 1;
        return;
    }
    st.queue.push_back(op);
}

impl Directory for RedisDirectory {
    fn lookup(&self, dcid: Bytes) -> LookupFuture {
        let directory = self.clone();
        Box::pin(async move { directory.find(dcid).await })
    }
}

/// A directory for `config`'s server, publishing `relay`'s CIDs with a TTL of `ttl` (the
/// relay's idle timeout) as instance `instance`, and the task that keeps it connected
/// (spawn it on the redis crate's runtime). Logs where it publishes.
pub fn task<T: Timer>(
    config: &RedisConfig,
    relay: &RelayHandle,
    instance: &str,
    ttl: Duration,
    timer: T,
) -> Result<
    (
        RedisDirectory,
        impl std::future::Future<Output = ()> + Send + 'static,
    ),
    RedisSetupError,
> {
    let client = crate::redis_sync::client(config)?;
    let directory = RedisDirectory::new(instance, ttl, timer);
    directory.follow(relay);
    tracing::info!(
        address = %config.address,
        db = config.db,
        instance,
        ttl_ms = ttl.as_millis() as u64,
        "connection-ID directory through Redis"
    );
    Ok((directory.clone(), directory.run(client)))
}

/// [`task`] on the current tokio runtime (until it stops).
#[cfg(feature = "tokio")]
pub fn start_tokio(
    config: &RedisConfig,
    relay: &RelayHandle,
    instance: &str,
    ttl: Duration,
) -> Result<RedisDirectory, RedisSetupError> {
    let (directory, run) = task(config, relay, instance, ttl, crate::redis_sync::TokioTimer)?;
    tokio::spawn(run);
    Ok(directory)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_the_prefix_and_the_cid_in_hex() {
        assert_eq!(key(&[0x00, 0xab, 0x10]), "porter:cid:00ab10");
        assert_eq!(key(&[]), "porter:cid:");
    }
}
