//! The relay's counters and gauges, as [`crate::Relay::stats`] reports them.

use crate::relay::directory::LookupCounters;
use crate::relay::output::{DropReason, RefuseReason};
use crate::relay::quic_lb::QuicLbCounters;
use crate::session::Traffic;

/// Counters of allocations by outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocationCounters {
    /// Requests emitted.
    pub requested: u64,
    /// Answered with a backend.
    pub succeeded: u64,
    /// Answered with an error.
    pub failed: u64,
    /// Not answered in time.
    pub timed_out: u64,
    /// Refused before asking, because too many were in flight.
    pub rejected: u64,
    /// Refused before asking, because the fleet or the source prefix had spent its
    /// allocation budget.
    pub over_budget: u64,
}

/// A snapshot of the relay's gauges and counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Sessions now (all states).
    pub sessions: usize,
    /// Sessions still waiting for their ClientHello or allocation.
    pub pending_sessions: usize,
    /// Allocations in flight.
    pub allocations_in_flight: usize,
    /// Bytes held for connections not yet routed: their datagrams and their ClientHello
    /// reassembly memory (`reassembly_bytes`).
    pub buffered_bytes: usize,
    /// The part of `buffered_bytes` that is ClientHello reassembly memory.
    pub reassembly_bytes: usize,
    /// Connection IDs mapped.
    pub connection_ids: usize,
    /// Client paths open (one upstream socket each), over all sessions.
    pub paths: usize,
    /// Connection IDs of ended sessions remembered, so that a late datagram of an ended
    /// connection is dropped, never adopted (at most 65 536, each for one idle timeout).
    pub remembered_ended_cids: usize,
    /// Routes installed.
    pub routes: usize,
    /// Refused connections remembered, so their retransmitted Initials get the same
    /// answer (at most 16 384, each for one handshake timeout).
    pub remembered_refusals: usize,
    /// Sessions whose client has not yet used a CID the backend issued (all states).
    pub unvalidated_sessions: usize,
    /// Sessions validated since start: their client used a CID the backend issued.
    pub sessions_validated: u64,
    /// Sessions routed since start.
    pub sessions_opened: u64,
    /// Sessions closed since start.
    pub sessions_closed: u64,
    /// Paths opened since start beyond each session's first: clients that moved (or
    /// datagrams that claimed to be theirs).
    pub paths_opened: u64,
    /// Connections refused since start.
    pub refused: u64,
    /// Upstream sockets the I/O layer could not open since start
    /// ([`crate::Relay::upstream_failed`]).
    pub upstream_failures: u64,
    /// Client to backend, since start.
    pub to_backend: Traffic,
    /// Backend to client, since start.
    pub to_client: Traffic,
    /// Allocations by outcome.
    pub allocations: AllocationCounters,
    /// Server-ID (QUIC-LB) routing outcomes.
    pub quic_lb: QuicLbCounters,
    /// Directory lookups of unknown CIDs, by outcome.
    pub lookups: LookupCounters,
    /// Drops by reason, indexed like [`DropReason::ALL`].
    pub drops: Vec<u64>,
    /// Refusals by reason, indexed like [`RefuseReason::ALL`] (their sum is `refused`).
    pub refusals: Vec<u64>,
}

impl RelayStats {
    /// Drops counted under `reason`.
    pub fn drops(&self, reason: DropReason) -> u64 {
        let i = DropReason::ALL.iter().position(|r| *r == reason);
        i.and_then(|i| self.drops.get(i)).copied().unwrap_or(0)
    }

    /// Refusals counted under `reason`.
    pub fn refusals(&self, reason: RefuseReason) -> u64 {
        let i = RefuseReason::ALL.iter().position(|r| *r == reason);
        i.and_then(|i| self.refusals.get(i)).copied().unwrap_or(0)
    }
}
