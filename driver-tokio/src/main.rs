//! `porter`: Porter's QUIC-aware UDP relay on tokio.
//!
//! `porter --config FILE` runs the relay; `porter check --config FILE` validates a
//! configuration and prints every problem with its location.

mod agones;
mod udp;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use control::cli::{Cli, Command};
use control::host::RelayHost;
use control::setup::{LogFormat, Settings};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (config, origin) = match cli.load_config() {
        Ok(loaded) => loaded,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(2);
        }
    };
    if matches!(cli.command, Some(Command::Check)) {
        for warning in &config.warnings {
            println!("warning: {warning}");
        }
        return match Settings::from_config(&config) {
            Ok(_) => {
                println!("{origin}: OK");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{origin}: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    let settings = match Settings::from_config(&config) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("{origin}: {e:#}");
            return ExitCode::from(2);
        }
    };
    init_logging(&settings);
    tracing::info!(config = %origin, "configuration loaded");
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
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
    match runtime.block_on(run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("porter: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(settings: &Settings) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&settings.log_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match settings.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.init(),
    }
}

async fn run(settings: Settings) -> anyhow::Result<()> {
    let mut listeners = Vec::new();
    let has_v4 = settings.listen.iter().any(std::net::SocketAddr::is_ipv4);
    for addr in &settings.listen {
        listeners.push(udp::bind_listener(*addr, has_v4)?);
    }
    let host = RelayHost::new(settings.new_relay()?, settings.log_requests).shared();
    let allocator: Option<Arc<dyn udp::Allocator>> = match &settings.agones {
        Some(config) => Some(agones::AgonesAllocator::new(config.clone())?),
        None => None,
    };
    let driver = udp::Driver::new(host.clone(), listeners.clone(), allocator);
    driver.start();
    for l in &listeners {
        tracing::info!(listen = %l.local_addr()?, "relay listening");
    }
    let sync = match &settings.redis {
        Some(redis) => Some(control::redis_sync::start_tokio(redis, host.clone())?),
        None => None,
    };
    if let Some(api) = &settings.api {
        let gauges = driver.clone();
        let mut service = control::api::Api::new(
            api.clone(),
            host.clone(),
            Arc::new(move || control::api::DriverGauges {
                upstream_sockets: gauges.upstream_count(),
            }),
        );
        if let Some(sync) = &sync {
            service = service.with_sync(sync.clone());
        }
        let bound = control::api::serve_api_tokio(service)
            .await
            .with_context(|| format!("cannot start the API on {}", api.bind))?;
        tracing::info!(listen = %bound, "API listening");
    }

    shutdown_signal().await;
    tracing::info!(
        drain_seconds = settings.drain_period.as_secs_f64(),
        "shutting down: no new sessions, draining existing ones"
    );
    RelayHost::lock(&host).relay_mut().set_accepting(false);
    let deadline = Instant::now() + settings.drain_period;
    loop {
        let sessions = RelayHost::lock(&host).relay().session_count();
        if sessions == 0 || Instant::now() >= deadline {
            tracing::info!(sessions, "exiting");
            return Ok(());
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
            () = shutdown_signal() => {
                tracing::info!("second signal: exiting now");
                return Ok(());
            }
        }
    }
}

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
