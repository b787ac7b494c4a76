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
    /// Adds another shard's stats to these (see [`super::Shard`]): counters and gauges
    /// add up; `routes`, which every shard holds alike, is the larger of the two.
    pub fn merge(&mut self, other: &Self) {
        let Self {
            sessions,
            pending_sessions,
            allocations_in_flight,
            buffered_bytes,
            reassembly_bytes,
            connection_ids,
            paths,
            remembered_ended_cids,
            routes,
            remembered_refusals,
            unvalidated_sessions,
            sessions_validated,
            sessions_opened,
            sessions_closed,
            paths_opened,
            refused,
            upstream_failures,
            to_backend,
            to_client,
            allocations,
            quic_lb,
            lookups,
            drops,
            refusals,
        } = other;
        self.sessions += sessions;
        self.pending_sessions += pending_sessions;
        self.allocations_in_flight += allocations_in_flight;
        self.buffered_bytes += buffered_bytes;
        self.reassembly_bytes += reassembly_bytes;
        self.connection_ids += connection_ids;
        self.paths += paths;
        self.remembered_ended_cids += remembered_ended_cids;
        self.routes = self.routes.max(*routes);
        self.remembered_refusals += remembered_refusals;
        self.unvalidated_sessions += unvalidated_sessions;
        self.sessions_validated += sessions_validated;
        self.sessions_opened += sessions_opened;
        self.sessions_closed += sessions_closed;
        self.paths_opened += paths_opened;
        self.refused += refused;
        self.upstream_failures += upstream_failures;
        for (mine, theirs) in [
            (&mut self.to_backend, to_backend),
            (&mut self.to_client, to_client),
        ] {
            mine.datagrams += theirs.datagrams;
            mine.bytes += theirs.bytes;
        }
        let AllocationCounters {
            requested,
            succeeded,
            failed,
            timed_out,
            rejected,
            over_budget,
        } = allocations;
        let a = &mut self.allocations;
        a.requested += requested;
        a.succeeded += succeeded;
        a.failed += failed;
        a.timed_out += timed_out;
        a.rejected += rejected;
        a.over_budget += over_budget;
        let QuicLbCounters {
            routed,
            unroutable,
            unknown_config,
            malformed,
            unknown_server,
            allocated_server_ids,
            invalid_server_ids,
            server_id_conflicts,
        } = quic_lb;
        let q = &mut self.quic_lb;
        q.routed += routed;
        q.unroutable += unroutable;
        q.unknown_config += unknown_config;
        q.malformed += malformed;
        q.unknown_server += unknown_server;
        q.allocated_server_ids += allocated_server_ids;
        q.invalid_server_ids += invalid_server_ids;
        q.server_id_conflicts += server_id_conflicts;
        let LookupCounters {
            asked,
            found,
            not_found,
            timed_out,
            rate_limited,
            from_shards,
            pending,
        } = lookups;
        let l = &mut self.lookups;
        l.asked += asked;
        l.found += found;
        l.not_found += not_found;
        l.timed_out += timed_out;
        l.rate_limited += rate_limited;
        l.from_shards += from_shards;
        l.pending += pending;
        for (mine, theirs) in [(&mut self.drops, drops), (&mut self.refusals, refusals)] {
            if mine.len() < theirs.len() {
                mine.resize(theirs.len(), 0);
            }
            for (m, t) in mine.iter_mut().zip(theirs) {
                *m += t;
            }
        }
    }

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
