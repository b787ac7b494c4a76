//! `porter-smol`: Porter's QUIC-aware UDP relay on smol (async-executor and async-io),
//! for the smallest footprint. Same command line, configuration and behaviour as
//! `porter`: `porter-smol --config FILE` runs the relay; `porter-smol check --config
//! FILE` validates a configuration.
//!
//! Runs without a tokio runtime (the route sync's Redis client runs on smol too). The executor runs on the main thread, plus
//! `SMOL_THREADS - 1` more threads when that variable is set. Only with `agones.enabled`
//! does a small tokio runtime start (one extra thread) for the allocator client (tonic).

mod api;
mod runtime;

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use async_executor::Executor;
use async_signal::{Signal, Signals};
use control::agones::AgonesAllocator;
use control::api::Api;
use control::cli::Cli;
use control::io::Allocator;
use control::setup::Settings;
use control::sync::RouteSync;
use futures_lite::StreamExt as _;

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
    control::cli::finish("porter-smol", result)
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
    let mut signals =
        Signals::new([Signal::Term, Signal::Int]).context("cannot listen for SIGINT/SIGTERM")?;
    let agones = match settings.agones.clone() {
        Some(config) => {
            Some(AgonesAllocator::with_own_runtime(config).context("agones allocator client")?)
        }
        None => None,
    };
    let allocator = agones.clone().map(|a| a as Arc<dyn Allocator>);
    let driver = control::io::start(rt.clone(), &settings, allocator)?;
    let sync = match &settings.redis {
        Some(redis) => {
            // The redis crate is built with tokio support too (for `porter`): choose smol.
            let _ = redis::aio::prefer_smol();
            let sync = RouteSync::new(driver.handle(), redis.channel.clone());
            rt.spawn_detached(control::redis_sync::task(redis, sync.clone(), SmolTimer)?);
            Some(sync)
        }
        None => None,
    };
    if let Some(api) = &settings.api {
        let agones = agones.map(|a| (a, settings.allocate_route_ttl));
        let bound = api::serve(&rt, Api::for_engine(api, &driver, sync.as_ref(), agones))
            .with_context(|| format!("cannot start the API on {}", api.bind))?;
        tracing::info!(listen = %bound, "API listening");
    }

    signals.next().await;
    let second = async {
        signals.next().await;
    };
    control::io::drain(&driver, settings.drain_period, second).await;
    Ok(())
}
