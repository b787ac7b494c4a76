//! The Redis transport of the route sync ([`crate::sync`] holds the data model and the rules):
//! one command connection and one subscription, re-established with backoff whenever either
//! fails. Each (re)connection subscribes first, then restores routes if Redis lost them,
//! writes the outbox, and loads both hashes, so nothing published during an outage is missed.
//!
//! The runtime is reached only through the redis crate (tokio here, through its `tokio-comp`
//! feature) and the [`Timer`] given to [`run`]; a smol driver supplies its own timer and turns
//! on the redis crate's smol support.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures_util::StreamExt as _;
use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;

use crate::sync::{
    new_epoch, PendingWrite, RedisCommand, RouteHash, RouteSync, SharedRoute, EPOCH_KEY,
};
use porter_config::RedisConfig;
#[cfg(feature = "tokio")]
use porter_host::RelayHandle;

/// How long to wait for a connection or an answer before taking the link as down.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the command connection is checked while idle.
const PING_INTERVAL: Duration = Duration::from_secs(1);
/// First and longest wait between connection attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Sleeping, from whichever runtime drives the transport.
pub trait Timer: Send + Sync + 'static {
    /// Resolves after `duration`.
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

/// [`Timer`] on tokio.
#[cfg(feature = "tokio")]
#[derive(Clone, Copy, Debug, Default)]
pub struct TokioTimer;

#[cfg(feature = "tokio")]
impl Timer for TokioTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(tokio::time::sleep(duration))
    }
}

/// Makes the redis crate run its connections on smol. Needed only when this crate is
/// built with both runtime features (one build of the whole workspace: the redis crate
/// then supports both and defaults to tokio); otherwise smol is its only runtime.
pub fn prefer_smol() {
    #[cfg(all(feature = "smol", feature = "tokio"))]
    {
        let _ = redis::aio::prefer_smol();
    }
}

/// The Redis settings cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("redis.address: {0}")]
pub struct RedisSetupError(redis::RedisError);

/// A client for `config`'s server (nothing is connected yet).
pub fn client(config: &RedisConfig) -> Result<redis::Client, RedisSetupError> {
    redis::Client::open(config.url().expose()).map_err(RedisSetupError)
}

/// Shares the routes of `relay` through Redis, on the current tokio runtime (until it stops);
/// returns the sync, for the API.
#[cfg(feature = "tokio")]
pub fn start_tokio(config: &RedisConfig, relay: RelayHandle) -> Result<RouteSync, RedisSetupError> {
    let sync = RouteSync::new(relay, config.channel.clone());
    tokio::spawn(task(config, sync.clone(), TokioTimer)?);
    Ok(sync)
}

/// The task that keeps `sync` connected to `config`'s server, for any runtime: spawn it
/// on the runtime the redis crate uses there (its `tokio-comp` or `smol-comp` support),
/// with `timer` sleeping on that runtime. Logs where it syncs.
pub fn task<T: Timer>(
    config: &RedisConfig,
    sync: RouteSync,
    timer: T,
) -> Result<impl Future<Output = ()> + Send + 'static, RedisSetupError> {
    let client = client(config)?;
    tracing::info!(
        address = %config.address,
        db = config.db,
        channel = %config.channel,
        instance = sync.instance(),
        "route sync through Redis"
    );
    Ok(run(client, sync, timer))
}

/// Keeps `sync` connected to Redis through `client`, forever.
pub async fn run<T: Timer>(client: redis::Client, sync: RouteSync, timer: T) {
    let mut backoff = BACKOFF_MIN;
    loop {
        sync.link_connecting();
        let mut synced = false;
        let error = session(&client, &sync, &timer, &mut synced).await;
        if synced {
            backoff = BACKOFF_MIN;
            tracing::warn!(
                "lost the link to Redis: {error}; routing goes on with the routes known"
            );
        } else {
            tracing::debug!("cannot sync with Redis: {error}");
        }
        sync.link_down(&error);
        timer.sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Why a session with Redis ended; `what` names the step that failed.
#[derive(Debug, thiserror::Error)]
enum LinkError {
    /// Redis answered the step with an error, or the connection failed.
    #[error("{what}: {error}")]
    Failed {
        what: &'static str,
        error: redis::RedisError,
    },
    /// No answer to the step within [`IO_TIMEOUT`].
    #[error("{what}: no answer within {:?}", IO_TIMEOUT)]
    TimedOut { what: &'static str },
    /// The subscription's stream ended.
    #[error("the subscription was closed")]
    SubscriptionClosed,
}

/// Runs `fut` (the step `what`) with a deadline.
async fn timeout<T>(
    timer: &impl Timer,
    what: &'static str,
    fut: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, LinkError> {
    tokio::select! {
        r = fut => r.map_err(|error| LinkError::Failed { what, error }),
        () = timer.sleep(IO_TIMEOUT) => Err(LinkError::TimedOut { what }),
    }
}

/// One connection's life; returns why it ended.
async fn session(
    client: &redis::Client,
    sync: &RouteSync,
    timer: &impl Timer,
    synced: &mut bool,
) -> LinkError {
    match session_inner(client, sync, timer, synced).await {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

async fn session_inner(
    client: &redis::Client,
    sync: &RouteSync,
    timer: &impl Timer,
    synced: &mut bool,
) -> Result<std::convert::Infallible, LinkError> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(IO_TIMEOUT))
        .set_response_timeout(Some(IO_TIMEOUT));
    let mut conn = timeout(
        timer,
        "connect",
        client.get_multiplexed_async_connection_with_config(&config),
    )
    .await?;
    let mut pubsub = timeout(timer, "connect (subscriber)", client.get_async_pubsub()).await?;
    timeout(timer, "subscribe", pubsub.subscribe(sync.channel())).await?;
    // Subscribed before loading: whatever is published from now on reaches us.
    let (_sink, mut messages) = pubsub.split();

    let candidate = new_epoch();
    let (epoch,): (String,) = timeout(
        timer,
        "epoch",
        redis::pipe()
            .atomic()
            .cmd("SET")
            .arg(EPOCH_KEY)
            .arg(&candidate)
            .arg("NX")
            .ignore()
            .cmd("GET")
            .arg(EPOCH_KEY)
            .query_async(&mut conn),
    )
    .await?;
    for route in sync.begin(&epoch) {
        restore(&mut conn, sync, timer, &route).await?;
    }
    flush(&mut conn, sync, timer).await?;
    let (simple, agones): (HashMap<String, String>, HashMap<String, String>) = timeout(
        timer,
        "load routes",
        redis::pipe()
            .cmd("HGETALL")
            .arg(crate::sync::SIMPLE_KEY)
            .cmd("HGETALL")
            .arg(crate::sync::AGONES_KEY)
            .query_async(&mut conn),
    )
    .await?;
    let simple: Vec<(String, String)> = simple.into_iter().collect();
    let agones: Vec<(String, String)> = agones.into_iter().collect();
    sync.apply_load(&simple, &agones).await;
    *synced = true;

    loop {
        tokio::select! {
            msg = messages.next() => match msg {
                Some(msg) => {
                    sync.apply_message(msg.get_payload_bytes()).await;
                }
                None => return Err(LinkError::SubscriptionClosed),
            },
            () = sync.changed() => flush(&mut conn, sync, timer).await?,
            () = timer.sleep(PING_INTERVAL) => {
                timeout(timer, "ping", redis::cmd("PING").query_async::<String>(&mut conn)).await?;
            }
        }
    }
}

/// Writes every pending change; stops at the first failure (the rest stays queued).
async fn flush(
    conn: &mut MultiplexedConnection,
    sync: &RouteSync,
    timer: &impl Timer,
) -> Result<(), LinkError> {
    for write in sync.pending_writes() {
        timeout(timer, "store a route", store(conn, &write)).await?;
        sync.written(&write);
        tracing::debug!(fqdn = %write.change.name(), "route change stored in Redis");
    }
    Ok(())
}

async fn store(conn: &mut MultiplexedConnection, write: &PendingWrite) -> redis::RedisResult<()> {
    let mut pipe = redis::pipe();
    pipe.atomic();
    for command in &write.commands {
        match command {
            RedisCommand::HSet { key, field, value } => {
                pipe.cmd("HSET").arg(*key).arg(field).arg(value).ignore();
            }
            RedisCommand::HDel { key, field } => {
                pipe.cmd("HDEL").arg(*key).arg(field).ignore();
            }
            RedisCommand::Publish { channel, payload } => {
                pipe.cmd("PUBLISH").arg(channel).arg(payload).ignore();
            }
        }
    }
    pipe.query_async::<()>(conn).await
}

/// Writes `route` back unless its name was written since, and announces it if written.
async fn restore(
    conn: &mut MultiplexedConnection,
    sync: &RouteSync,
    timer: &impl Timer,
    route: &SharedRoute,
) -> Result<(), LinkError> {
    let field = route.name.to_string();
    let written: bool = timeout(
        timer,
        "restore a route",
        redis::cmd("HSETNX")
            .arg(route.kind.key())
            .arg(&field)
            .arg(&route.target)
            .query_async(conn),
    )
    .await?;
    if written {
        timeout(
            timer,
            "announce a restored route",
            redis::cmd("PUBLISH")
                .arg(sync.channel())
                .arg(route.set_message(sync.instance()))
                .query_async::<i64>(conn),
        )
        .await?;
        sync.restored(route);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_errors_name_the_step() {
        let timed_out = LinkError::TimedOut { what: "connect" };
        assert_eq!(timed_out.to_string(), "connect: no answer within 2s");
        let failed = LinkError::Failed {
            what: "subscribe",
            error: std::io::Error::other("connection refused").into(),
        };
        let text = failed.to_string();
        assert!(text.starts_with("subscribe: "), "{text}");
        assert!(text.contains("connection refused"), "{text}");
        assert_eq!(
            LinkError::SubscriptionClosed.to_string(),
            "the subscription was closed"
        );
    }
}
