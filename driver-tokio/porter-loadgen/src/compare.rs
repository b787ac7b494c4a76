//! `porter-loadgen compare [OPTIONS] BINARY...`: runs each relay binary side by side
//! under the same load and prints, per binary, its idle RSS, its RSS with many sessions,
//! and its short-header forwarding rate, with the rate as a ratio to the first binary's
//! (the rounds alternate between binaries, so both see the same machine). Built on the
//! library: [`porter_loadgen::RelayProcess`], [`porter_loadgen::Responder`],
//! [`porter_loadgen::Sessions`].

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use porter_loadgen::{RelayProcess, Responder, SessionSpec, Sessions};

const SNI: &str = "load.test";

#[derive(Args)]
pub(crate) struct CompareArgs {
    /// Sessions opened through each relay.
    #[arg(long, default_value_t = 10_000)]
    sessions: usize,
    /// Client source ports carrying them.
    #[arg(long, default_value_t = 100)]
    sockets: usize,
    /// Initials awaiting an answer at once.
    #[arg(long, default_value_t = 500)]
    window: usize,
    /// Seconds per flood.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Datagram size in bytes.
    #[arg(long, default_value_t = 1200)]
    size: usize,
    /// Flood rounds per binary.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// The relay binaries (porter, porter-smol), the first one the reference.
    #[arg(required = true)]
    binaries: Vec<PathBuf>,
}

struct Target {
    name: String,
    relay: RelayProcess,
    responder: Responder,
    sessions: Sessions,
    idle_kib: u64,
    loaded_kib: u64,
    relay_sessions: u64,
    rates: Vec<f64>,
}

pub(crate) fn compare(o: &CompareArgs) -> std::io::Result<()> {
    let mut targets = Vec::new();
    for (i, binary) in o.binaries.iter().enumerate() {
        let responder = Responder::start()?;
        let body = format!(
            "relay: {{max_sessions: {}, new_sessions_per_second: 1000000, idle_timeout: 3600s}}\n\
             routes:\n  - {{fqdn: \"{SNI}\", type: simple, target: \"{}\"}}\n",
            o.sessions * 2 + 100,
            responder.addr()
        );
        let relay = RelayProcess::start(binary, &body)?;
        std::thread::sleep(Duration::from_millis(500));
        let idle_kib = relay.rss_kib()?;
        let sessions = Sessions::open(&SessionSpec {
            relay: relay.udp,
            sni: SNI.into(),
            sessions: o.sessions,
            sockets: o.sockets,
            window: o.window,
            seed: 1 + i as u64,
            timeout: Duration::from_secs(120),
        })?;
        std::thread::sleep(Duration::from_secs(1));
        let loaded_kib = relay.rss_kib()?;
        let relay_sessions = relay.stat("sessions").unwrap_or(0);
        let name = binary.file_name().map_or_else(
            || binary.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        eprintln!(
            "{name}: idle {idle_kib} KiB; {} of {} sessions established ({relay_sessions} in the relay), {loaded_kib} KiB",
            sessions.established(),
            o.sessions
        );
        targets.push(Target {
            name,
            relay,
            responder,
            sessions,
            idle_kib,
            loaded_kib,
            relay_sessions,
            rates: Vec::new(),
        });
    }
    let duration = Duration::from_secs_f64(o.seconds);
    for round in 0..o.rounds {
        for t in &mut targets {
            let before = t.responder.short_datagrams();
            let sent = t.sessions.flood(duration, o.size)?;
            // Let what the relay still holds arrive.
            std::thread::sleep(Duration::from_millis(300));
            let delivered = t.responder.short_datagrams() - before;
            let rate = delivered as f64 / o.seconds;
            eprintln!(
                "round {}: {}: sent {sent}, delivered {delivered} ({rate:.0}/s)",
                round + 1,
                t.name
            );
            t.rates.push(rate);
        }
    }
    let base = median(&targets[0].rates);
    println!(
        "| binary | idle RSS | RSS with {} sessions | sessions in relay | forwarded datagrams/s (median of {}) | ratio to {} |",
        o.sessions, o.rounds, targets[0].name
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    for t in &targets {
        let rate = median(&t.rates);
        println!(
            "| {} | {:.1} MiB | {:.1} MiB | {} | {:.0} | {:.2} |",
            t.name,
            t.idle_kib as f64 / 1024.0,
            t.loaded_kib as f64 / 1024.0,
            t.relay_sessions,
            rate,
            if base > 0.0 { rate / base } else { 0.0 }
        );
        let _ = &t.relay;
    }
    Ok(())
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}
