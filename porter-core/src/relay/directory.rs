//! Connection-ID directory lookups: a short-header datagram whose DCID no rule here can
//! route (not a known CID, not a QUIC-LB server ID, not followable by address) may belong
//! to a connection another relay instance opened, whose client's NAT rebound so that the
//! L4 balancer in front now sends it here. With lookups on
//! ([`DirectoryConfig::enabled`]), the relay holds the datagram (bounded in count and
//! bytes), asks the I/O layer to look its DCID up in the shared directory
//! ([`Command::LookupConnection`]) and, when [`Relay::complete_lookup`] names the
//! connection's CID and backend, adopts the connection as a server-ID CID is adopted
//! (see [`super::quic_lb`]): one path to that backend, carrying every held datagram, the
//! session unconfirmed until its backend answers. A second datagram from the same client
//! address while its lookup is pending joins it.
//!
//! Publishing is the other half: with lookups on, every routed session announces its
//! CIDs ([`Notification::ConnectionIdsLearned`]): the original DCID and what it has at
//! routing, then each CID learned later; [`Notification::SessionClosed`] ends them. The
//! host side writes them to the directory.
//!
//! Only a NAT rebinding (same CID, new address) can be carried so: a client that
//! migrates on purpose switches to a CID it got in an encrypted NEW_CONNECTION_ID frame,
//! which no relay ever sees, so no directory can hold it (QUIC-LB CIDs route that case).
//!
//! Lookups are bounded (`max_pending_lookups`), rate-limited (a token bucket) and expire
//! after `lookup_timeout`; what is dropped is counted under its reason.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;
use thiserror::Error;

use super::budget::{IdMap, TokenBucket};
use super::output::{Command, DropReason, Notification, Verdict};
use super::Relay;
use crate::ids::{BackendAddr, ClientAddr, SessionId};
use crate::session::SessionState;
use crate::wire::ConnectionId;

/// The longest CID (RFC 9000 §17.2): a lookup carries at most this many DCID bytes.
const MAX_CID_LEN: usize = 20;

/// Identifies one directory lookup handed to the I/O layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LookupId(pub u64);

impl fmt::Display for LookupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "l{}", self.0)
    }
}

/// Directory lookups of unknown connection IDs, and their bounds. Off by default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectoryConfig {
    /// Ask the directory about short-header datagrams no other rule routes, and announce
    /// every routed session's CIDs. Default off.
    pub enabled: bool,
    /// Most lookups waiting for an answer at once. Default 1024.
    pub max_pending_lookups: usize,
    /// Most datagrams held for one lookup. Default 8.
    pub max_datagrams_per_lookup: usize,
    /// Most bytes held for one lookup. Default 16 KiB.
    pub max_bytes_per_lookup: usize,
    /// A lookup not answered within this is dropped. Default 250 ms.
    pub lookup_timeout: Duration,
    /// Lookups started per second, sustained and in a burst (token bucket); 0 for no
    /// limit. Default 1000.
    pub lookups_per_second: u32,
}

impl Default for DirectoryConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            max_pending_lookups: 1024,
            max_datagrams_per_lookup: 8,
            max_bytes_per_lookup: 16 * 1024,
            lookup_timeout: Duration::from_millis(250),
            lookups_per_second: 1000,
        }
    }
}

/// Counters of directory lookups.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LookupCounters {
    /// Lookups asked ([`Command::LookupConnection`] emitted).
    pub asked: u64,
    /// Answered with a connection whose CID the held datagram carries.
    pub found: u64,
    /// Answered with nothing (or with a CID the datagram does not carry).
    pub not_found: u64,
    /// Not answered within `lookup_timeout`.
    pub timed_out: u64,
    /// Not asked: beyond the lookup rate.
    pub rate_limited: u64,
    /// Of `found`, those another data-plane shard of this host held (a client whose new
    /// 4-tuple the kernel hashed to another shard).
    pub from_shards: u64,
    /// Lookups waiting for an answer now (a gauge).
    pub pending: usize,
}

/// What one relay (a shard of a sharded host) can say about a short-header datagram
/// another shard could not route ([`Relay::claim_short`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShortClaim {
    /// One of this relay's routed sessions has this CID, which the DCID starts with.
    Known {
        /// The session.
        session: SessionId,
        /// The CID.
        cid: ConnectionId,
        /// The session's backend.
        backend: BackendAddr,
    },
    /// The DCID's server ID (QUIC-LB) is one this relay bound to an allocated game
    /// server: routable to it, though no session here has the CID.
    ServerId {
        /// The CID (as long as its QUIC-LB configuration says).
        cid: ConnectionId,
        /// The game server.
        backend: BackendAddr,
    },
    /// The DCID is unknown here, but this relay holds the one routed session of the
    /// client's IP that it could belong to (a client that moved to a new port and a new
    /// CID at once); `cid` is the DCID's first bytes at that session's server CID length.
    /// Followed only if no other shard holds such a session too.
    SoleOfIp {
        /// The session.
        session: SessionId,
        /// The DCID's first bytes, as long as the session's server CIDs.
        cid: ConnectionId,
        /// The session's backend.
        backend: BackendAddr,
    },
    /// Nothing here.
    None,
}

/// What a sharded host does with a lookup once every shard answered
/// [`Relay::claim_short`] ([`ShortClaim::settle`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settled {
    /// The shard that asked holds the connection: [`Relay::complete_lookup_here`].
    Here,
    /// Shard `owner` holds it: adopt it with [`Relay::complete_lookup_moved`] and this
    /// CID and backend (the asking shard opens its own path to the backend), then tell
    /// the owner ([`Relay::moved_to_shard`]).
    Elsewhere {
        /// The shard that holds the connection.
        owner: usize,
        /// Its session there (`None` for a server ID bound there: no one session is
        /// the connection's).
        session: Option<SessionId>,
        /// The CID the DCID starts with.
        cid: ConnectionId,
        /// The connection's backend.
        backend: BackendAddr,
    },
    /// No shard can say (or several sessions could be meant): ask the directory shared
    /// between instances, if there is one, else answer "not found".
    Unknown,
}

impl ShortClaim {
    /// Decides a lookup from shard `own` given every shard's claim (indexed by shard): a
    /// known CID wins; else exactly one session of the client's IP over all shards is
    /// followed; several are a guess, never made.
    pub fn settle(own: usize, claims: &[Self]) -> Settled {
        let decide = |owner: usize, session: Option<SessionId>, cid: ConnectionId, backend| {
            if owner == own {
                Settled::Here
            } else {
                Settled::Elsewhere {
                    owner,
                    session,
                    cid,
                    backend,
                }
            }
        };
        for (i, claim) in claims.iter().enumerate() {
            match *claim {
                Self::Known {
                    session,
                    cid,
                    backend,
                } => return decide(i, Some(session), cid, backend),
                Self::ServerId { cid, backend } => return decide(i, None, cid, backend),
                _ => {}
            }
        }
        let mut sole = claims.iter().enumerate().filter_map(|(i, c)| match *c {
            Self::SoleOfIp {
                session,
                cid,
                backend,
            } => Some((i, session, cid, backend)),
            _ => None,
        });
        match (sole.next(), sole.next()) {
            (Some((i, session, cid, backend)), None) => decide(i, Some(session), cid, backend),
            _ => Settled::Unknown,
        }
    }
}

/// Where a found connection comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Moved {
    /// The directory shared between instances.
    No,
    /// Another shard's session: that shard, and the session.
    Yes(u32, SessionId),
    /// Another shard's server-ID binding.
    ByServerId,
}

/// Misuse of [`Relay::complete_lookup`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum CompleteLookupError {
    /// The relay is not waiting for this lookup: it was answered already or timed out
    /// (late answers are normal; the answer is discarded).
    #[error("lookup {0} is not pending (answered already, or timed out)")]
    NotPending(LookupId),
}

#[derive(Debug)]
struct PendingLookup {
    client: ClientAddr,
    /// The session ID the connection gets if the lookup finds it (the held datagrams'
    /// [`Verdict::Held`] named it).
    session: SessionId,
    dcid: Bytes,
    datagrams: Vec<Bytes>,
    bytes: usize,
}

/// The relay's lookups in flight.
#[derive(Debug)]
pub(super) struct Lookups {
    pending: IdMap<LookupId, PendingLookup>,
    by_client: HashMap<ClientAddr, LookupId>,
    /// Deadlines in start order (one timeout for all: also deadline order); entries of
    /// answered lookups are stale and skipped.
    order: VecDeque<(Instant, LookupId)>,
    bucket: TokenBucket,
    next: u64,
}

impl Lookups {
    pub(super) fn new(config: &DirectoryConfig) -> Self {
        Self {
            pending: IdMap::default(),
            by_client: HashMap::new(),
            order: VecDeque::new(),
            bucket: TokenBucket::new(config.lookups_per_second, config.lookups_per_second),
            next: 1,
        }
    }

    fn remove(&mut self, id: LookupId) -> Option<PendingLookup> {
        let lookup = self.pending.remove(&id)?;
        if self.by_client.get(&lookup.client) == Some(&id) {
            self.by_client.remove(&lookup.client);
        }
        Some(lookup)
    }

    /// The earliest deadline of a lookup still pending (stale entries may make it early:
    /// a spurious wake-up is harmless).
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.order.front().map(|(at, _)| *at)
    }

    pub(super) fn len(&self) -> usize {
        self.pending.len()
    }
}

impl Relay {
    /// Holds a short-header datagram no rule routes and asks the directory about its
    /// DCID; `None` when lookups are off (the caller drops it as unknown).
    pub(super) fn look_up(
        &mut self,
        now: Instant,
        from: ClientAddr,
        datagram: &[u8],
    ) -> Option<Verdict> {
        let config = &self.config.directory;
        // Sharded, the host asks its other shards first, in process, whether or not a
        // directory shared between instances is configured.
        if !config.enabled && !self.config.shard.is_sharded() {
            return None;
        }
        let (max_datagrams, max_bytes) = (
            config.max_datagrams_per_lookup.max(1),
            config.max_bytes_per_lookup,
        );
        if let Some(&id) = self.lookups.by_client.get(&from) {
            let lookup = self
                .lookups
                .pending
                .get_mut(&id)
                .expect("the client index names pending lookups only");
            if lookup.datagrams.len() >= max_datagrams || lookup.bytes + datagram.len() > max_bytes
            {
                return Some(Verdict::Drop(DropReason::LookupLimit));
            }
            lookup.datagrams.push(Bytes::copy_from_slice(datagram));
            lookup.bytes += datagram.len();
            return Some(Verdict::Held {
                session: lookup.session,
            });
        }
        if self.lookups.len() >= config.max_pending_lookups || datagram.len() > max_bytes {
            return Some(Verdict::Drop(DropReason::LookupLimit));
        }
        // The rate protects the shared directory (a Redis round trip each). Asking the
        // other shards costs a microsecond or two and is answered at once, so a sharded
        // relay leaves the rate to the host, for the lookups the shards cannot settle
        // ([`Relay::take_directory_token`]): a flood of unknown CIDs cannot spend the
        // tokens that a client's move between shards needs.
        if config.enabled && !self.config.shard.is_sharded() && !self.lookups.bucket.take(now) {
            self.stats.lookups.rate_limited += 1;
            return Some(Verdict::Drop(DropReason::LookupRateLimited));
        }
        let timeout = config.lookup_timeout;
        let dcid = Bytes::copy_from_slice(datagram.get(1..).unwrap_or_default());
        let dcid = dcid.slice(..dcid.len().min(MAX_CID_LEN));
        let id = LookupId(self.lookups.next);
        self.lookups.next += 1;
        let session = self.take_session_id();
        self.lookups.pending.insert(
            id,
            PendingLookup {
                client: from,
                session,
                dcid: dcid.clone(),
                datagrams: vec![Bytes::copy_from_slice(datagram)],
                bytes: datagram.len(),
            },
        );
        self.lookups.by_client.insert(from, id);
        self.lookups.order.push_back((now + timeout, id));
        self.stats.lookups.asked += 1;
        self.commands.push_back(Command::LookupConnection {
            id,
            client: from,
            dcid,
        });
        Some(Verdict::Held { session })
    }

    /// Passes the directory's answer for a [`Command::LookupConnection`]: the CID it
    /// matched and the connection's backend, or `None` when it knows no such connection
    /// (or cannot be reached). Found, and carried by the held datagram, the connection is
    /// adopted: [`Notification::SessionOpened`] and a [`Command::OpenUpstream`] with every
    /// datagram held for the lookup follow. Otherwise they are dropped and counted.
    pub fn complete_lookup(
        &mut self,
        now: Instant,
        id: LookupId,
        answer: Option<(ConnectionId, BackendAddr)>,
    ) -> Result<(), CompleteLookupError> {
        self.complete_lookup_with(now, id, answer, Moved::No)
    }

    /// Sharded: whether a lookup the shards could not settle may go on to the directory
    /// shared between instances, at the lookup rate (`lookups_per_second`). `false`: over
    /// the rate; answer it with [`Self::complete_lookup_over_rate`].
    pub fn take_directory_token(&mut self, now: Instant) -> bool {
        self.lookups.bucket.take(now)
    }

    /// Ends a lookup that may not go on to the shared directory (over the lookup rate):
    /// its held datagrams are dropped as [`DropReason::LookupRateLimited`] and it is
    /// counted in [`LookupCounters::rate_limited`].
    pub fn complete_lookup_over_rate(&mut self, id: LookupId) -> Result<(), CompleteLookupError> {
        let lookup = self
            .lookups
            .remove(id)
            .ok_or(CompleteLookupError::NotPending(id))?;
        self.stats.lookups.rate_limited += 1;
        self.drop_held(lookup.datagrams.len(), DropReason::LookupRateLimited);
        Ok(())
    }

    /// As [`Self::complete_lookup`] with a connection another shard of this host holds
    /// ([`Settled::Elsewhere`]): adopted the same way, but counted as a path opened
    /// (the host's sessions did not grow; a client moved) and in
    /// [`LookupCounters::from_shards`]. `from` is where it was: shard `from.0`'s session
    /// `from.1`, which is told ([`Command::ConnectionMoved`]) once the backend answers
    /// here; `from.1` is `None` when that shard routed the CID by a server ID it had
    /// bound to an allocated game server ([`ShortClaim::ServerId`]): the ID is then bound
    /// here too while the adopted session lives.
    pub fn complete_lookup_moved(
        &mut self,
        now: Instant,
        id: LookupId,
        cid: ConnectionId,
        backend: BackendAddr,
        from: (u32, Option<SessionId>),
    ) -> Result<(), CompleteLookupError> {
        let moved = match from.1 {
            Some(session) => Moved::Yes(from.0, session),
            None => Moved::ByServerId,
        };
        self.complete_lookup_with(now, id, Some((cid, backend)), moved)
    }

    /// Another shard of this host adopted the connection of session `id` (its client
    /// moved to a 4-tuple that shard receives): the session here keeps its path for
    /// `path_idle_timeout` like any old path, unless its client sends here again, then
    /// ends ([`crate::CloseReason::Moved`]) without its CIDs being remembered as ended.
    /// `false` if there is no such routed session here.
    pub fn moved_to_shard(&mut self, now: Instant, id: SessionId) -> bool {
        if !self
            .sessions
            .get(&id)
            .is_some_and(|s| s.state == SessionState::Established)
        {
            return false;
        }
        self.moved.insert(id, now);
        self.timers
            .push(std::cmp::Reverse((now + self.config.path_idle_timeout, id)));
        true
    }

    fn complete_lookup_with(
        &mut self,
        now: Instant,
        id: LookupId,
        answer: Option<(ConnectionId, BackendAddr)>,
        moved: Moved,
    ) -> Result<(), CompleteLookupError> {
        let lookup = self
            .lookups
            .remove(id)
            .ok_or(CompleteLookupError::NotPending(id))?;
        let found = answer.filter(|(cid, _)| {
            !cid.is_empty()
                && lookup.dcid.starts_with(cid.as_bytes())
                // Known here meanwhile (another lookup, or the connection came back):
                // its next datagram finds it without a second session.
                && self.cids.get(cid).is_none()
        });
        let Some((cid, backend)) = found else {
            self.stats.lookups.not_found += 1;
            self.drop_held(lookup.datagrams.len(), DropReason::LookupFailed);
            return Ok(());
        };
        self.stats.lookups.found += 1;
        if moved != Moved::No {
            self.stats.lookups.from_shards += 1;
        }
        let count = lookup.datagrams.len();
        let verdict = self.adopt(
            now,
            lookup.client,
            cid,
            backend,
            lookup.datagrams,
            Some(lookup.session),
            moved != Moved::No,
        );
        match verdict {
            Verdict::Drop(reason) => self.drop_held(count, reason),
            Verdict::Held { session } => match moved {
                Moved::ByServerId => self.moved_server_id(cid, backend, session),
                Moved::Yes(shard, owner) => {
                    self.adopted_from.insert(session, (shard, owner));
                }
                Moved::No => {}
            },
            _ => {}
        }
        Ok(())
    }

    /// What this relay knows of a short-header datagram from `from` whose bytes after
    /// the first octet start with `dcid` (at most 20 are used): asked by a sharded host
    /// for a [`Command::LookupConnection`] of another shard. Reads only. A CID of a
    /// session that ended is [`ShortClaim::None`].
    pub fn claim_short(&self, from: ClientAddr, dcid: &[u8]) -> ShortClaim {
        let dcid = &dcid[..dcid.len().min(MAX_CID_LEN)];
        let mut probe = [0x40u8; 1 + MAX_CID_LEN];
        probe[1..=dcid.len()].copy_from_slice(dcid);
        let probe = &probe[..=dcid.len()];
        let routed = |id: SessionId| {
            self.sessions
                .get(&id)
                .filter(|s| s.state == SessionState::Established)
                .and_then(|s| s.backend)
        };
        if let Some((session, cid)) = self.cids.lookup_short(probe) {
            return match routed(session) {
                Some(backend) => ShortClaim::Known {
                    session,
                    cid,
                    backend,
                },
                None => ShortClaim::None,
            };
        }
        if self.of_ended_session(probe) {
            return ShortClaim::None;
        }
        // A server ID this shard bound to an allocated game server (the configured ones
        // every shard routes alike).
        if let Some((cid, backend)) = self.allocated_server_id_of(dcid) {
            return ShortClaim::ServerId { cid, backend };
        }
        let Some(id) = self.sole_session_of_ip(from, dcid.len()) else {
            return ShortClaim::None;
        };
        let len = self
            .sessions
            .get(&id)
            .and_then(|s| s.server_cid_len)
            .map_or(0, usize::from);
        match (dcid.get(..len).and_then(ConnectionId::new), routed(id)) {
            (Some(cid), Some(backend)) => ShortClaim::SoleOfIp {
                session: id,
                cid,
                backend,
            },
            _ => ShortClaim::None,
        }
    }

    /// Answers a lookup with "this relay's own": the sharded host asked every shard
    /// ([`Relay::claim_short`]) and this one alone holds the connection (a CID it learned
    /// meanwhile, or the one session of the client's IP that can be meant). The held
    /// datagrams go through the short-header rules again, following the IP here as an
    /// unsharded relay would: the first opens a new path of that session
    /// ([`Command::OpenUpstream`]), and the others leave on it. What cannot be routed
    /// so is dropped and counted.
    pub fn complete_lookup_here(
        &mut self,
        now: Instant,
        id: LookupId,
    ) -> Result<(), CompleteLookupError> {
        let lookup = self
            .lookups
            .remove(id)
            .ok_or(CompleteLookupError::NotPending(id))?;
        let mut routed = false;
        for datagram in lookup.datagrams {
            let before = self.commands.len();
            match self.short_with(now, lookup.client, &datagram, true) {
                Verdict::Drop(reason) => self.count_drop(reason),
                // Opened a path: the datagram went into its OpenUpstream.
                Verdict::Held { .. } => routed |= self.commands.len() > before,
                Verdict::ToBackend { path, .. } => {
                    // Leaves with the path's OpenUpstream (the first datagram's), if it
                    // has not been handed out yet.
                    let open = self.commands.iter_mut().rev().find_map(|c| match c {
                        Command::OpenUpstream {
                            path: p, datagrams, ..
                        } if *p == path => Some(datagrams),
                        _ => None,
                    });
                    match open {
                        Some(datagrams) => {
                            datagrams.push(datagram);
                            routed = true;
                        }
                        None => self.count_drop(DropReason::LookupFailed),
                    }
                }
                Verdict::Answered | Verdict::ToClient { .. } => {}
            }
        }
        if routed {
            self.stats.lookups.found += 1;
        } else {
            self.stats.lookups.not_found += 1;
        }
        Ok(())
    }

    /// Drops the lookups whose time is up, with their datagrams.
    pub(super) fn expire_lookups(&mut self, now: Instant) {
        while let Some(&(at, id)) = self.lookups.order.front() {
            if at > now {
                break;
            }
            self.lookups.order.pop_front();
            if let Some(lookup) = self.lookups.remove(id) {
                self.stats.lookups.timed_out += 1;
                self.drop_held(lookup.datagrams.len(), DropReason::LookupTimeout);
            }
        }
    }

    fn drop_held(&mut self, datagrams: usize, reason: DropReason) {
        for _ in 0..datagrams {
            self.count_drop(reason);
        }
    }

    /// Announces CIDs of a routed session, with lookups on.
    pub(super) fn announce_cids(&mut self, id: SessionId, cids: Vec<ConnectionId>) {
        if !self.config.directory.enabled || cids.is_empty() {
            return;
        }
        let Some(session) = self.sessions.get(&id) else {
            return;
        };
        let (SessionState::Established, Some(backend)) = (session.state, session.backend) else {
            return;
        };
        self.notifications
            .push_back(Notification::ConnectionIdsLearned {
                session: id,
                backend,
                cids,
            });
    }

    /// Lookup counters, the gauge filled in.
    pub(super) fn lookup_counters(&self) -> LookupCounters {
        LookupCounters {
            pending: self.lookups.len(),
            ..self.stats.lookups
        }
    }
}
