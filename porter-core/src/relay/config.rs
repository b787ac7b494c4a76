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
    /// Which of the host's data-plane shards this relay is (see [`Shard`]). Default: the
    /// only one.
    pub shard: Shard,
}

/// One relay among the `count` data-plane shards of a host: each owns its own sessions
/// and sockets, and the host hands a datagram that lands on the wrong shard to the one
/// that knows its connection through the lookup of unknown CIDs
/// ([`super::DirectoryConfig`], [`crate::Relay::claim_short`]).
///
/// Sharded (`count > 1`), a relay numbers its sessions `index + 1`, `index + 1 + count`, ...
/// so that IDs are unique over the host and name their shard
/// ([`Shard::of_session`]), and it does not follow an unknown CID from a new port of a
/// known IP on its own: only the host sees every shard's sessions of that IP, so the
/// datagram goes to a lookup ([`crate::Relay::complete_lookup_here`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// This relay's place, `0..count`.
    pub index: u32,
    /// How many shards the host runs (at least 1).
    pub count: u32,
}

impl Default for Shard {
    fn default() -> Self {
        Self { index: 0, count: 1 }
    }
}

impl Shard {
    /// Whether the host runs more than one shard.
    pub fn is_sharded(self) -> bool {
        self.count > 1
    }

    /// The shard (`0..count`) whose relay numbered session `id` (see [`Shard`]).
    pub fn of_session(count: u32, id: crate::SessionId) -> u32 {
        let count = u64::from(count.max(1));
        u32::try_from(id.0.saturating_sub(1) % count).unwrap_or(0)
    }

    /// This shard's part of an instance-wide budget `total`: the shards' parts add up to
    /// `total` (the first ones take the remainder), and none of a non-zero budget is 0
    /// (0 means "no limit" for the rates).
    pub fn part(self, total: usize) -> usize {
        let count = self.count.max(1) as usize;
        let index = (self.index as usize).min(count - 1);
        if total == 0 {
            return 0;
        }
        (total / count + usize::from(index < total % count)).max(1)
    }

    fn part_u32(self, total: u32) -> u32 {
        u32::try_from(self.part(total as usize)).unwrap_or(u32::MAX)
    }
}

impl RelayConfig {
    /// The configuration of shard `index` of `count`: instance-wide budgets divided among
    /// the shards (sessions, paths, held bytes, allocations in flight, the new-session,
    /// refusal-replay, allocation and lookup rates, unvalidated sessions, pending
    /// lookups); per-address, per-IP and per-session caps as they are (they apply per
    /// shard); and a seed of its own. A sharded relay looks unknown CIDs up whatever
    /// [`super::DirectoryConfig::enabled`] says (the other shards are asked first); the
    /// lookup rate applies only when the shared directory may be asked. `count` of 1 gives the configuration back unchanged.
    pub fn for_shard(&self, index: u32, count: u32) -> Self {
        let count = count.max(1);
        let shard = Shard {
            index: index.min(count - 1),
            count,
        };
        let mut c = self.clone();
        c.shard = shard;
        if count == 1 {
            return c;
        }
        c.max_sessions = shard.part(c.max_sessions);
        c.max_paths = shard.part(c.max_paths);
        c.max_buffered_total = shard.part(c.max_buffered_total);
        c.max_pending_allocations = shard.part(c.max_pending_allocations);
        c.new_sessions_per_second = shard.part_u32(c.new_sessions_per_second);
        c.new_sessions_burst = shard.part_u32(c.new_sessions_burst);
        c.refusal_replays_per_second = shard.part_u32(c.refusal_replays_per_second);
        c.max_unvalidated_sessions = shard.part(c.max_unvalidated_sessions);
        c.allocations_per_second_per_fleet = shard.part_u32(c.allocations_per_second_per_fleet);
        c.allocations_per_second_per_prefix = shard.part_u32(c.allocations_per_second_per_prefix);
        c.directory.max_pending_lookups = shard.part(c.directory.max_pending_lookups);
        c.directory.lookups_per_second = shard.part_u32(c.directory.lookups_per_second);
        c.seed = c
            .seed
            .wrapping_add(u64::from(shard.index).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        c
    }
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
            shard: Shard::default(),
        }
    }
}
