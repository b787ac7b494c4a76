//! A session's life: routed ([`Relay::establish`], its first path), its timers
//! (handshake, then idle, and those of its paths: see [`super::path`]) and its end.

use std::cmp::Reverse;
use std::time::Instant;

use super::output::{Command, Notification, RefuseReason};
use super::Relay;
use crate::ids::{BackendAddr, ClientAddr, SessionId};
use crate::session::{CloseReason, Path, Session, SessionState};

impl Relay {
    /// The next time [`Self::handle_timeout`] has work to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let session = self.timers.peek().map(|Reverse((at, _))| *at);
        let route = self.route_timers.peek().map(|Reverse((at, _))| *at);
        [session, route, self.lookups.next_deadline()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Expires what is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.forget_ended(now);
        self.expire_lookups(now);
        while let Some(Reverse((at, _))) = self.route_timers.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, name))) = self.route_timers.pop() else {
                break;
            };
            if self.route_expiry.get(&name) == Some(&at) {
                self.route_expiry.remove(&name);
                self.routes.remove(&name);
                self.notifications
                    .push_back(Notification::RouteExpired { name });
            }
        }
        while let Some(&Reverse((at, id))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            if !self.sessions.contains_key(&id) {
                continue; // closed earlier; a stale entry
            }
            self.expire_paths(id, now);
            let Some(session) = self.sessions.get(&id) else {
                continue;
            };
            let deadline = self.deadline(session);
            if deadline > now {
                self.timers.push(Reverse((deadline, id)));
                continue;
            }
            match session.state {
                // Unvalidated: the handshake timeout ended it, unless a shorter idle
                // timeout came first.
                SessionState::Established
                    if !session.validated
                        && session.created + self.config.handshake_timeout <= now =>
                {
                    self.close(id, CloseReason::HandshakeTimeout, now);
                }
                SessionState::Established if self.moved.contains_key(&id) => {
                    self.close(id, CloseReason::Moved, now);
                }
                SessionState::Established => self.close(id, CloseReason::IdleTimeout, now),
                SessionState::AwaitingClientHello => {
                    self.close(id, CloseReason::HandshakeTimeout, now);
                }
                SessionState::Allocating(alloc) => {
                    self.allocations.remove(&alloc);
                    self.stats.allocations.timed_out += 1;
                    self.commands
                        .push_back(Command::CancelAllocation { id: alloc });
                    self.refuse_async(now, id, RefuseReason::AllocationTimeout);
                }
            }
        }
    }

    pub(super) fn establish(&mut self, now: Instant, id: SessionId, backend: BackendAddr) {
        let Some(session) = self.sessions.get_mut(&id) else {
            return;
        };
        let pending = self.pending.remove(&id);
        let path = session
            .new_path_id()
            .expect("a session's first path has a number");
        session.paths.push(Path {
            id: path,
            client: session.client,
            last_client: now,
        });
        self.path_count += 1;
        session.state = SessionState::Established;
        session.backend = Some(backend);
        session.last_activity = now;
        // The session's timer entry is at its handshake deadline; an idle timeout shorter
        // than what is left of it would fire late without an entry of its own. (Only
        // then: each entry is re-armed when it pops, so an extra one lives as long as
        // the session.)
        let idle_deadline = now + self.config.idle_timeout;
        if idle_deadline < session.created + self.config.handshake_timeout {
            self.timers.push(Reverse((idle_deadline, id)));
        }
        let (datagrams, alpn) = match pending {
            Some(p) => {
                self.buffered_total -= p.bytes;
                (p.datagrams, p.alpn)
            }
            None => (Vec::new(), Vec::new()),
        };
        for d in &datagrams {
            session.to_backend.add(d.len());
            self.stats.to_backend.add(d.len());
        }
        self.stats.sessions_opened += 1;
        self.routes.session_started(backend);
        self.notifications.push_back(Notification::SessionOpened {
            session: id,
            client: session.client,
            backend,
            sni: session.sni.clone(),
            alpn,
            version: session.version,
            waited: now.saturating_duration_since(session.created),
        });
        let cids = session.cids.clone();
        self.commands.push_back(Command::OpenUpstream {
            session: id,
            path,
            client: session.client,
            backend,
            datagrams,
        });
        self.announce_cids(id, cids);
    }

    pub(super) fn index_client(&mut self, id: SessionId, client: ClientAddr) {
        self.by_client.insert(client, id);
        self.by_ip.insert(client.0.ip(), id);
    }

    /// Removes one entry of `id` for `client` (a session has one per path, and two paths
    /// may share an IP).
    pub(super) fn unindex_client(&mut self, id: SessionId, client: ClientAddr) {
        self.by_client.remove(&client, id);
        self.by_ip.remove(&client.0.ip(), id);
    }

    /// The session's next deadline: its own (handshake or idle), or that of a path.
    pub(super) fn deadline(&self, session: &Session) -> Instant {
        let own = self.own_deadline(session);
        // Moved to another shard: its path here is an old one now (see `super::path`).
        match self.moved.get(&session.id) {
            Some(at) => own.min(*at + self.config.path_idle_timeout),
            None => own,
        }
    }

    fn own_deadline(&self, session: &Session) -> Instant {
        match session.state {
            // Not validated (its client never used a CID the backend issued; for one
            // adopted by its CID's server ID, its backend never answered): the handshake
            // timeout bounds it whatever the backend sends, and the idle timeout too,
            // when shorter.
            SessionState::Established if !session.validated => {
                let own = (session.created + self.config.handshake_timeout)
                    .min(session.last_activity + self.config.idle_timeout);
                self.next_path_deadline(session.id)
                    .map_or(own, |path| path.min(own))
            }
            SessionState::Established => {
                let idle = session.last_activity + self.config.idle_timeout;
                self.next_path_deadline(session.id)
                    .map_or(idle, |path| path.min(idle))
            }
            _ => session.created + self.config.handshake_timeout,
        }
    }

    pub(super) fn close(&mut self, id: SessionId, reason: CloseReason, now: Instant) {
        let Some(session) = self.sessions.remove(&id) else {
            return;
        };
        for cid in &session.cids {
            if self.cids.get(cid) == Some(id) {
                self.cids.remove(cid);
            }
        }
        if session.paths.is_empty() {
            self.unindex_client(id, session.client);
        }
        if !session.validated {
            self.unvalidated.remove(session.source);
        }
        for path in &session.paths {
            self.unindex_client(id, path.client);
        }
        self.path_count -= session.paths.len();
        // A connection another shard carries on has not ended.
        let moved = self.moved.remove(&id).is_some();
        self.adopted_from.remove(&id);
        if session.state == SessionState::Established && !moved {
            self.remember_ended(now, id, &session.cids);
        }
        if let Some(p) = self.pending.remove(&id) {
            self.buffered_total -= p.bytes;
        }
        if let SessionState::Allocating(alloc) = session.state {
            if self.allocations.remove(&alloc).is_some() {
                self.commands
                    .push_back(Command::CancelAllocation { id: alloc });
            }
        }
        if let Some(backend) = session.backend {
            self.routes.session_ended(backend);
        }
        self.allocated_server_ids.detach(id);
        for path in &session.paths {
            self.commands.push_back(Command::CloseUpstream {
                session: id,
                path: path.id,
            });
            // For the host, the connection goes on elsewhere: this was one of its paths.
            if moved {
                self.notifications.push_back(Notification::PathClosed {
                    session: id,
                    path: path.id,
                    client: path.client,
                });
            }
        }
        self.stats.sessions_closed += 1;
        self.notifications.push_back(Notification::SessionClosed {
            reason,
            info: session.info(now),
        });
    }
}
