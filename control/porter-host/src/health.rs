//! Active health checks of the backends of simple routes: a QUIC Version Negotiation probe
//! (RFC 9000 §6, §17.2.1). The probe is a 1200-byte datagram with a long header of the
//! reserved version `0x1a2a3a4a` (of the form `0x?a?a?a?a`, RFC 9000 §15, never a real
//! version); any RFC 9000 server answers it with a Version Negotiation packet, keeping no
//! state and running no TLS. An answer whose Destination CID is the probe's Source CID (a
//! fresh random value each round) counts as healthy; no answer within the timeout as a
//! failure. `rise` answers in a row make an unhealthy backend healthy, `fall` failures in
//! a row make a healthy one unhealthy; the verdicts go to the core
//! ([`porter_core::Relay::set_backend_health`]) through the [`RelayHandle`], so routing
//! skips unhealthy backends.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use porter_core::{BackendAddr, RouteTarget};
use quinn_udp::RecvMeta;

use crate::engine::Engine;
use crate::notify::{race, First};
use crate::socket::{canonical, Socket};
use crate::{RelayHandle, Runtime};

/// The reserved version the probe carries.
pub const PROBE_VERSION: u32 = 0x1a2a_3a4a;

/// The smallest datagram a server answers with Version Negotiation (RFC 9000 §14.1).
const PROBE_LEN: usize = 1200;

/// How the checks run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthSettings {
    /// Time between two rounds of probes.
    pub interval: Duration,
    /// How long a round waits for answers.
    pub timeout: Duration,
    /// Answered probes in a row that make an unhealthy backend healthy.
    pub rise: u32,
    /// Unanswered probes in a row that make a healthy backend unhealthy.
    pub fall: u32,
}

#[derive(Debug, Clone, Copy)]
struct State {
    healthy: bool,
    /// Answers (when unhealthy) or failures (when healthy) in a row.
    streak: u32,
}

/// The probe for `token` (the Source CID the answer must echo as its Destination CID).
pub(crate) fn probe(token: [u8; 8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(PROBE_LEN);
    p.push(0xc0);
    p.extend_from_slice(&PROBE_VERSION.to_be_bytes());
    p.push(8);
    p.extend_from_slice(&token.map(|b| b ^ 0x5a));
    p.push(8);
    p.extend_from_slice(&token);
    p.resize(PROBE_LEN, 0);
    p
}

/// Whether `datagram` is a Version Negotiation packet answering the probe for `token`.
pub(crate) fn is_answer(datagram: &[u8], token: [u8; 8]) -> bool {
    datagram.len() >= 6 + 8
        && datagram[0] & 0x80 != 0
        && datagram[1..5] == [0, 0, 0, 0]
        && datagram[5] == 8
        && datagram[6..14] == token
}

fn random_token() -> [u8; 8] {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    h.finish().to_le_bytes()
}

/// Every backend of every simple route, once each.
fn simple_backends(handle: &RelayHandle) -> Vec<BackendAddr> {
    let mut all: Vec<BackendAddr> = handle
        .routes()
        .into_iter()
        .filter_map(|r| match r.target {
            RouteTarget::Simple(b) => Some(b),
            RouteTarget::Agones { .. } => None,
        })
        .flatten()
        .collect();
    all.sort_by_key(|b| b.0);
    all.dedup();
    all
}

/// Runs the checks for as long as the engine lives.
pub(crate) async fn run<R: Runtime>(
    engine: Arc<Engine<R>>,
    handle: RelayHandle,
    settings: HealthSettings,
) {
    let rt = engine.runtime();
    let mut states: HashMap<BackendAddr, State> = HashMap::new();
    let mut next = Instant::now();
    loop {
        let targets = simple_backends(&handle);
        // A backend no route lists any more is forgotten, and healthy again if re-added.
        let gone: Vec<BackendAddr> = states
            .keys()
            .filter(|b| !targets.contains(b))
            .copied()
            .collect();
        for b in gone {
            states.remove(&b);
            handle.set_backend_health(b, true);
        }
        let answered = probe_round(rt, &targets, settings.timeout).await;
        for b in &targets {
            let ok = answered.contains(&canonical(b.0));
            let state = states.entry(*b).or_insert(State {
                healthy: true,
                streak: 0,
            });
            if ok == state.healthy {
                state.streak = 0;
                continue;
            }
            state.streak += 1;
            let needed = if state.healthy {
                settings.fall
            } else {
                settings.rise
            };
            if state.streak >= needed {
                state.healthy = ok;
                state.streak = 0;
                handle.set_backend_health(*b, ok);
                if ok {
                    tracing::info!(backend = %b, "backend healthy: back in rotation");
                } else {
                    tracing::warn!(backend = %b, "backend unhealthy: no new connections");
                }
            }
        }
        next += settings.interval;
        let now = Instant::now();
        if next < now {
            next = now;
        }
        rt.sleep_until(next).await;
    }
}

/// Probes every target once (IPv4 and IPv6 from sockets of their own); returns the
/// addresses that answered within `timeout`.
async fn probe_round<R: Runtime>(
    rt: &R,
    targets: &[BackendAddr],
    timeout: Duration,
) -> HashSet<SocketAddr> {
    let mut answered = HashSet::new();
    for v4 in [true, false] {
        let group: Vec<SocketAddr> = targets
            .iter()
            .map(|b| b.0)
            .filter(|a| a.is_ipv4() == v4)
            .collect();
        if group.is_empty() {
            continue;
        }
        let bind: SocketAddr = if v4 {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = match StdUdpSocket::bind(bind).and_then(|s| Socket::new(rt, s)) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "health check: cannot open a probe socket");
                continue;
            }
        };
        let token = random_token();
        let datagram = probe(token);
        for to in &group {
            if let Err(e) = socket.send(*to, &datagram, None).await {
                tracing::debug!(backend = %to, error = %e, "health probe not sent");
            }
        }
        let deadline = Instant::now() + timeout;
        let receive = async {
            let mut bufs = vec![vec![0u8; 1500]];
            let mut metas = [RecvMeta::default()];
            loop {
                match socket.recv(&mut bufs, &mut metas).await {
                    Ok(n) => {
                        for (buf, meta) in bufs.iter().zip(&metas).take(n) {
                            let len = meta.len.min(buf.len());
                            if is_answer(&buf[..len], token) {
                                answered.insert(canonical(meta.addr));
                            }
                        }
                    }
                    // An error (an ICMP report, say) ends this group's wait early.
                    Err(_) => return,
                }
            }
        };
        if race(receive, rt.sleep_until(deadline)).await == First::A {
            rt.sleep_until(deadline).await;
        }
    }
    answered
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_is_a_full_size_long_header_of_a_reserved_version() {
        let token = [1, 2, 3, 4, 5, 6, 7, 8];
        let p = probe(token);
        assert_eq!(p.len(), 1200);
        assert_eq!(p[0] & 0xc0, 0xc0);
        assert_eq!(
            u32::from_be_bytes([p[1], p[2], p[3], p[4]]) & 0x0f0f_0f0f,
            0x0a0a_0a0a
        );
        assert_eq!(&p[15..23], &token);
        // The answer echoes the probe's SCID as its DCID.
        let mut vn = vec![0x80, 0, 0, 0, 0, 8];
        vn.extend_from_slice(&token);
        vn.push(8);
        vn.extend_from_slice(&p[6..14]);
        vn.extend_from_slice(&1u32.to_be_bytes());
        assert!(is_answer(&vn, token));
        assert!(!is_answer(&vn, [0; 8]), "another round's token");
        assert!(!is_answer(&vn[..10], token), "truncated");
        vn[4] = 1;
        assert!(!is_answer(&vn, token), "not version negotiation");
    }
}
