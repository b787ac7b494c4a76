//! `porter-smol`: Porter's QUIC-aware UDP relay on smol (async-executor and async-io),
//! for the smallest footprint. Same command line, configuration and behaviour as
//! `porter`: `porter-smol --config FILE` runs the relay; `porter-smol check --config
//! FILE` validates a configuration.
//!
//! Runs without a tokio runtime (the route sync's Redis client runs on smol too). The
//! first executor runs on the main thread (the control plane and data-plane shard 0),
//! plus `SMOL_THREADS - 1` more threads when that variable is set; every further shard
//! (`udp.shards`) gets an executor on a thread of its own. Only with `agones.enabled`
//! does a small tokio runtime start (one extra thread) for the allocator client (tonic).

mod api;
mod runtime;

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use async_executor::Executor;
use async_signal::{Signal, Signals};
use futures_lite::StreamExt as _;
use porter_control::api::Api;
use porter_control::cli::Cli;
use porter_control::reload::Reloader;
use porter_control::setup::Settings;
use porter_control::sync::RouteSync;
use porter_host::Allocator;

use crate::runtime::{Smol, SmolTimer};

fn main() -> ExitCode {
    let settings = match Cli::parse_as("porter-smol").prepare() {
        Ok(settings) => settings,
        Err(code) => return code,
    };
    let executor = Arc::new(Executor::new());
    for i in 1..executor_threads() {
        let executor = executor.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("porter-smol-{i}"))
            .spawn(move || async_io::block_on(executor.run(std::future::pending::<()>())));
        if let Err(e) = spawned {
            eprintln!("porter-smol: cannot start an executor thread: {e}");
            return ExitCode::FAILURE;
        }
    }
    let rt = Smol::new(executor.clone());
    let result = async_io::block_on(executor.run(run(rt, settings)));
    porter_control::cli::finish("porter-smol", result)
}

/// The Agones allocator client for the `agones` section, on a small tokio runtime of its
/// own (tonic needs tokio).
#[cfg(feature = "agones")]
fn agones_allocator(section: &porter_config::AgonesConfig) -> anyhow::Result<Arc<dyn Allocator>> {
    let config = porter_agones::AgonesClientConfig::from_config(section).context("agones")?;
    let allocator = porter_agones::AgonesAllocator::with_own_runtime(config)
        .context("agones allocator client")?;
    Ok(allocator)
}

/// Built without the `agones` feature: an enabled `agones` section is an error.
#[cfg(not(feature = "agones"))]
fn agones_allocator(_: &porter_config::AgonesConfig) -> anyhow::Result<Arc<dyn Allocator>> {
    anyhow::bail!(
        "agones.enabled is true, but this porter-smol was built without Agones support \
         (cargo feature `agones`)"
    )
}

/// Executor threads: `SMOL_THREADS` (smol's own convention), else 1.
fn executor_threads() -> usize {
    std::env::var("SMOL_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(1)
}

async fn run(rt: Smol, settings: Settings) -> anyhow::Result<()> {
    // Registered first, so that a signal during start-up is not the default (fatal) one.
    let mut signals = Signals::new([Signal::Term, Signal::Int, Signal::Hup])
        .context("cannot listen for SIGINT/SIGTERM/SIGHUP")?;
    let allocator = match &settings.agones {
        Some(section) => Some(agones_allocator(section)?),
        None => None,
    };
    let driver = porter_host::start(rt.clone(), &settings.host_settings(), allocator.clone())?;
    let sync = match &settings.redis {
        Some(redis) => {
            // The redis crate may be built with tokio support too (for `porter`).
            porter_control::redis_sync::prefer_smol();
            let sync = RouteSync::new(driver.handle(), redis.channel.clone());
            rt.spawn_detached(porter_control::redis_sync::task(
                redis,
                sync.clone(),
                SmolTimer,
            )?);
            Some(sync)
        }
        None => None,
    };
    // The connection-ID directory shares the route sync's instance ID.
    let directory = match (&settings.redis, &sync) {
        (Some(redis), Some(sync)) if redis.directory => {
            let (directory, run) = porter_control::directory::task(
                redis,
                &driver.handle(),
                sync.instance(),
                settings.relay.idle_timeout,
                SmolTimer,
            )?;
            rt.spawn_detached(run);
            driver.set_directory(Arc::new(directory.clone()));
            Some(directory)
        }
        _ => None,
    };
    let reloader = Reloader::start(&settings, driver.handle())
        .context("cannot start watching the configuration file")?;
    if let Some(api) = &settings.api {
        let agones = allocator.map(|a| (a, settings.allocate_route_ttl));
        let mut served = Api::for_engine(api, &driver, sync.as_ref(), agones);
        if let Some(reloader) = &reloader {
            served = served.with_reload(reloader.clone());
        }
        if let Some(directory) = &directory {
            served = served.with_directory(directory.clone());
        }
        let bound = api::serve(&rt, served)
            .with_context(|| format!("cannot start the API on {}", api.bind))?;
        tracing::info!(listen = %bound, "API listening");
    }

    // SIGINT or SIGTERM starts the drain, and a second one ends it.
    next_shutdown(&mut signals, reloader.as_ref()).await;
    let second = next_shutdown(&mut signals, reloader.as_ref());
    porter_host::drain(&driver, settings.drain_period, second).await;
    Ok(())
}

/// Waits for SIGINT or SIGTERM; each SIGHUP meanwhile reloads the configuration file
/// (without one, it is logged and ignored).
async fn next_shutdown(signals: &mut Signals, reloader: Option<&Reloader>) {
    while let Some(signal) = signals.next().await {
        match signal {
            Ok(Signal::Hup) => match reloader {
                Some(reloader) => reloader.request(),
                None => {
                    tracing::warn!("SIGHUP: no configuration file to reload (built-in example)");
                }
            },
            _ => return,
        }
    }
}
