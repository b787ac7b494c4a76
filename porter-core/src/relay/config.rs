//! The relay's limits, timeouts and refusal mode.

use std::time::Duration;

use super::directory::DirectoryConfig;
use super::quic_lb::QuicLbRouting;
use crate::assembler::AssemblerConfig;

/// What to do with connections that cannot be routed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusalMode {
    /// Answer with an Initial carrying CONNECTION_CLOSE (CONNECTION_REFUSED), protected
    /// with the server Initial keys, so the client fails at once.
    Close,
    /// Drop silently; the client times out.
    Drop,
}

/// The relay's limits and timeouts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayConfig {
    /// A routed session with no datagram either way for this long is closed. Default
    /// 120 s.
    pub idle_timeout: Duration,
    /// A session still waiting for its ClientHello or its allocation after this long is
    /// closed (an allocation still pending is refused). Default 5 s.
    pub handshake_timeout: Duration,
    /// Most sessions at once. Default 100 000.
    pub max_sessions: usize,
    /// Most connection IDs mapped to one session; beyond it the oldest is forgotten.
    /// Default 8.
    pub max_cids_per_session: usize,
    /// Most client paths (client addresses, each with its own upstream socket) one
    /// session has at once; a datagram that would open another is dropped. Default 4.
    pub max_paths_per_session: usize,
    /// Most client paths at once over all sessions: each holds an upstream socket (a file
    /// descriptor and an ephemeral port), so the host sets this no higher than its
    /// descriptor limit less a reserve and its ephemeral port range. A connection that
    /// would need one more is refused ([`super::RefuseReason::SocketLimit`]); a datagram
    /// that would open another path of a routed session is dropped
    /// ([`super::DropReason::SocketLimit`]). Default 100 000.
    pub max_paths: usize,
    /// A path other than the session's most recently used one ends after this long
    /// without a datagram from its client (the session lives on). Default 5 s.
    pub path_idle_timeout: Duration,
    /// Most bytes held for one connection before its route is known. Default 64 KiB.
    pub max_buffered_per_session: usize,
    /// Most bytes held for all such connections together. Default 64 MiB.
    pub max_buffered_total: usize,
    /// Most allocations in flight. Default 1024.
    pub max_pending_allocations: usize,
    /// New sessions per second, sustained (token bucket); 0 for no limit. Default 10 000.
    pub new_sessions_per_second: u32,
    /// Token bucket size: new sessions allowed in a burst. Default 10 000.
    pub new_sessions_burst: u32,
    /// What to do with connections that cannot be routed. Default [`RefusalMode::Close`].
    pub refusal: RefusalMode,
    /// Answers to replayed Initials of refused connections per second (a token bucket
    /// whose burst is the same number); 0 for no limit. Only full-size datagrams from the
    /// refused address are answered at all. Default 100.
    pub refusal_replays_per_second: u32,
    /// Most unvalidated sessions at once: sessions whose client has not yet sent a
    /// datagram with a CID the backend issued (see the admission rules in the crate
    /// docs of the relay). From half of it on, new sessions are admitted fairly per
    /// source prefix and IP; at it, only from a prefix that holds none. Default 10 000.
    pub max_unvalidated_sessions: usize,
    /// Most sessions with a path from one client address (IP and port); a new session
    /// or path beyond it is dropped. A session counts until its idle timeout (the relay
    /// cannot see a connection close). Default 1024.
    pub max_sessions_per_address: usize,
    /// Most sessions with a path from one client IP; a new session or path beyond it is
    /// dropped. Default 4096.
    pub max_sessions_per_ip: usize,
    /// Most Agones allocation requests for one fleet in any one second; a connection
    /// beyond it is refused ([`super::RefuseReason::AllocationBudget`]). 0 for no limit.
    /// Default 100.
    pub allocations_per_second_per_fleet: u32,
    /// Most Agones allocation requests for clients of one source prefix (IPv4 /24, IPv6
    /// /64), over all fleets, in any one second; 0 for no limit. Default 10.
    pub allocations_per_second_per_prefix: u32,
    /// ClientHello limits.
    pub assembler: AssemblerConfig,
    /// Server-ID routing (QUIC-LB): the backends' CID configurations and the backend of
    /// each server ID. Default: none.
    pub quic_lb: QuicLbRouting,
    /// Lookups of unknown CIDs in the directory shared between instances. Default: off.
    pub directory: DirectoryConfig,
    /// Seed for the little randomness the relay needs (unused header bits, the Source
    /// CID of refusals). Drivers pass a random seed; tests a fixed one.
    pub seed: u64,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(120),
            handshake_timeout: Duration::from_secs(5),
            max_sessions: 100_000,
            max_cids_per_session: 8,
            max_paths_per_session: 4,
            max_paths: 100_000,
            path_idle_timeout: Duration::from_secs(5),
            max_buffered_per_session: 64 * 1024,
            max_buffered_total: 64 * 1024 * 1024,
            max_pending_allocations: 1024,
            new_sessions_per_second: 10_000,
            new_sessions_burst: 10_000,
            refusal: RefusalMode::Close,
            refusal_replays_per_second: 100,
            max_unvalidated_sessions: 10_000,
            max_sessions_per_address: 1024,
            max_sessions_per_ip: 4096,
            allocations_per_second_per_fleet: 100,
            allocations_per_second_per_prefix: 10,
            assembler: AssemblerConfig::default(),
            quic_lb: QuicLbRouting::default(),
            directory: DirectoryConfig::default(),
            seed: 0x5eed_0f5e_ed00,
        }
    }
}
