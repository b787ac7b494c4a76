//! `porter`: Porter's QUIC-aware UDP relay on tokio.
//!
//! `porter --config FILE` runs the relay; `porter check --config FILE` validates a
//! configuration and prints every problem with its location.

mod runtime;

use std::process::ExitCode;

use std::sync::Arc;

use anyhow::Context as _;
use porter_control::api::Api;
use porter_control::cli::Cli;
use porter_control::reload::Reloader;
use porter_control::setup::Settings;
use porter_host::Allocator;

fn main() -> ExitCode {
    let settings = match Cli::parse_as("porter").prepare() {
        Ok(settings) => settings,
        Err(code) => return code,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("porter")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("porter: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    porter_control::cli::finish("porter", runtime.block_on(run(settings)))
}

async fn run(settings: Settings) -> anyhow::Result<()> {
    // Taken over first, so that a SIGHUP during start-up is not the default (fatal) one.
    let hangups = hangup_signals()?;
    let agones = match &settings.agones {
        Some(section) => Some(agones_allocator(section)?),
        None => None,
    };
    let allocator = agones.map(|a| a as Arc<dyn Allocator>);
    let driver = porter_host::start(runtime::Tokio, &settings.host_settings(), allocator.clone())?;
    let sync = match &settings.redis {
        Some(redis) => Some(porter_control::redis_sync::start_tokio(
            redis,
            driver.handle(),
        )?),
        None => None,
    };
    // The connection-ID directory shares the route sync's instance ID.
    let directory = match (&settings.redis, &sync) {
        (Some(redis), Some(sync)) if redis.directory => {
            let directory = porter_control::directory::start_tokio(
                redis,
                &driver.handle(),
                sync.instance(),
                settings.relay.idle_timeout,
            )?;
            driver.set_directory(Arc::new(directory.clone()));
            Some(directory)
        }
        _ => None,
    };
    let reloader = Reloader::start(&settings, driver.handle())
        .context("cannot start watching the configuration file")?;
    tokio::spawn(reload_on_hangup(hangups, reloader.clone()));
    if let Some(api) = &settings.api {
        let agones = allocator.map(|a| (a, settings.allocate_route_ttl));
        let mut served = Api::for_engine(api, &driver, sync.as_ref(), agones);
        if let Some(reloader) = &reloader {
            served = served.with_reload(reloader.clone());
        }
        if let Some(directory) = &directory {
            served = served.with_directory(directory.clone());
        }
        let bound = porter_control::http::serve_api_tokio(served)
            .await
            .with_context(|| format!("cannot start the API on {}", api.bind))?;
        tracing::info!(listen = %bound, "API listening");
    }

    shutdown_signal().await;
    porter_host::drain(&driver, settings.drain_period, shutdown_signal()).await;
    Ok(())
}

/// The Agones allocator client for the `agones` section (inside the runtime: tonic needs
/// it).
fn agones_allocator(
    section: &porter_config::AgonesConfig,
) -> anyhow::Result<Arc<porter_agones::AgonesAllocator>> {
    let config = porter_agones::AgonesClientConfig::from_config(section).context("agones")?;
    porter_agones::AgonesAllocator::new(config).context("agones allocator client")
}

/// SIGHUP, taken over from its default action (exit).
#[cfg(unix)]
fn hangup_signals() -> anyhow::Result<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{signal, SignalKind};
    signal(SignalKind::hangup()).context("cannot listen for SIGHUP")
}

/// Each SIGHUP reloads the configuration file (without one, it is logged and ignored).
#[cfg(unix)]
async fn reload_on_hangup(mut hangups: tokio::signal::unix::Signal, reloader: Option<Reloader>) {
    while hangups.recv().await.is_some() {
        match &reloader {
            Some(reloader) => reloader.request(),
            None => tracing::warn!("SIGHUP: no configuration file to reload (built-in example)"),
        }
    }
}

#[cfg(not(unix))]
fn hangup_signals() -> anyhow::Result<()> {
    Ok(())
}

#[cfg(not(unix))]
async fn reload_on_hangup(_: (), _: Option<Reloader>) {}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
