//! Client paths: a routed session has one path per client address, each with its own
//! upstream socket, like a NAT. A datagram of a known connection from a new address opens
//! a new path instead of repointing the session, so the backend sees the move as a new
//! 4-tuple and validates it itself (RFC 9000 §9, §8.2): its anti-amplification limit
//! (§8, §21.5) then bounds what reaches an address that merely forged a CID. A backend's
//! datagrams on a path go to that path's client only; a path is never repointed.
//!
//! Paths per session are bounded (`max_paths_per_session`). A path other than the one
//! the client used last ends after `path_idle_timeout` without a datagram from its
//! client, while the session lives on.
//!
//! Connection IDs of routed sessions that ended are remembered for an idle timeout (at
//! most [`MAX_ENDED_REMEMBERED`]), so that a late datagram of an ended connection is
//! dropped rather than adopted by another session of the same address or IP.

use std::cmp::Reverse;
use std::time::Instant;

use bytes::Bytes;

use super::output::{Command, DropReason, Notification, Verdict};
use super::Relay;
use crate::ids::{ClientAddr, PathId, SessionId};
use crate::session::{CloseReason, Path};
use crate::wire::ConnectionId;

/// How many connection IDs of ended sessions are remembered (each for one idle timeout;
/// the oldest is forgotten first).
pub(crate) const MAX_ENDED_REMEMBERED: usize = 64 * 1024;

impl Relay {
    /// Adds a path for `client` to a routed session and queues its
    /// [`Command::OpenUpstream`] carrying `datagram`. The caller checked that the session
    /// has no path for `client`.
    pub(super) fn open_path(
        &mut self,
        now: Instant,
        id: SessionId,
        client: ClientAddr,
        datagram: &[u8],
    ) -> Verdict {
        let max = self.config.max_paths_per_session.max(1);
        let Some(session) = self.sessions.get_mut(&id) else {
            return Verdict::Drop(DropReason::UnknownConnection);
        };
        if session.paths.len() >= max {
            return Verdict::Drop(DropReason::PathLimit);
        }
        if self.path_count >= self.config.max_paths {
            return Verdict::Drop(DropReason::SocketLimit);
        }
        let backend = session.backend.expect("only routed sessions get new paths");
        let Some(path) = session.new_path_id() else {
            return Verdict::Drop(DropReason::PathLimit);
        };
        session.paths.push(Path {
            id: path,
            client,
            last_client: now,
        });
        session.client = client;
        session.last_activity = now;
        session.to_backend.add(datagram.len());
        self.stats.to_backend.add(datagram.len());
        self.stats.paths_opened += 1;
        self.path_count += 1;
        self.index_client(id, client);
        // The path that was current is now an older one: its timer runs.
        if let Some(at) = self.next_path_deadline(id) {
            self.timers.push(Reverse((at, id)));
        }
        self.commands.push_back(Command::OpenUpstream {
            session: id,
            path,
            client,
            backend,
            datagrams: vec![Bytes::copy_from_slice(datagram)],
        });
        self.notifications.push_back(Notification::PathOpened {
            session: id,
            path,
            client,
        });
        Verdict::Held { session: id }
    }

    /// The I/O layer could not open the upstream socket of `path` (its
    /// [`Command::OpenUpstream`] failed: out of file descriptors or ports, typically).
    /// A session's only path: the session is refused, as
    /// [`super::RefuseReason::SocketFailed`] (a CONNECTION_CLOSE to its client when
    /// refusals are answered, a [`Notification::Refused`], its
    /// [`Notification::SessionClosed`]); another path just ends (its
    /// [`Notification::PathClosed`]) and the session lives on. Counted in
    /// [`super::RelayStats::upstream_failures`]. `false` if there is no such path.
    pub fn upstream_failed(&mut self, now: Instant, path: PathId) -> bool {
        let id = path.session();
        let Some(session) = self.sessions.get(&id) else {
            return false;
        };
        if !session.paths.iter().any(|p| p.id == path) {
            return false;
        }
        self.stats.upstream_failures += 1;
        if session.paths.len() <= 1 {
            self.refuse_async(now, id, super::RefuseReason::SocketFailed);
        } else {
            self.end_path(id, path);
        }
        true
    }

    /// Ends one path of a routed session: the embedder wants it gone. A session's only path ends with the session (as
    /// [`Self::close_session`]). `false` if there is no such path.
    pub fn close_path(&mut self, now: Instant, path: PathId) -> bool {
        let id = path.session();
        let Some(session) = self.sessions.get(&id) else {
            return false;
        };
        if !session.paths.iter().any(|p| p.id == path) {
            return false;
        }
        let only = session.paths.len() <= 1;
        if only {
            self.close(id, CloseReason::Closed, now);
        } else {
            self.end_path(id, path);
        }
        true
    }

    /// Ends the paths of `id` that are due at `now`: every path but the current one
    /// whose client has been silent for the path timeout.
    pub(super) fn expire_paths(&mut self, id: SessionId, now: Instant) {
        let timeout = self.config.path_idle_timeout;
        let Some(session) = self.sessions.get(&id) else {
            return;
        };
        let Some(current) = session.current_path().map(|p| p.id) else {
            return;
        };
        let due: Vec<PathId> = session
            .paths
            .iter()
            .filter(|p| p.id != current && p.last_client + timeout <= now)
            .map(|p| p.id)
            .collect();
        for path in due {
            self.end_path(id, path);
        }
    }

    /// When the next of `id`'s paths is due, if it has more than one.
    pub(super) fn next_path_deadline(&self, id: SessionId) -> Option<Instant> {
        let session = self.sessions.get(&id)?;
        let current = session.current_path()?.id;
        session
            .paths
            .iter()
            .filter(|p| p.id != current)
            .map(|p| p.last_client + self.config.path_idle_timeout)
            .min()
    }

    fn end_path(&mut self, id: SessionId, path: PathId) {
        let Some(session) = self.sessions.get_mut(&id) else {
            return;
        };
        let Some(ended) = session.paths.remove(path) else {
            return;
        };
        if let Some(current) = session.current_path() {
            session.client = current.client;
        }
        self.path_count -= 1;
        self.unindex_client(id, ended.client);
        self.commands
            .push_back(Command::CloseUpstream { session: id, path });
        self.notifications.push_back(Notification::PathClosed {
            session: id,
            path,
            client: ended.client,
        });
    }

    /// Remembers the CIDs of a routed session that ended.
    pub(super) fn remember_ended(&mut self, now: Instant, id: SessionId, cids: &[ConnectionId]) {
        self.forget_ended(now);
        for &cid in cids {
            if self.ended_order.len() >= MAX_ENDED_REMEMBERED {
                if let Some((_, oldest)) = self.ended_order.pop_front() {
                    self.ended.remove(&oldest);
                }
            }
            if self.ended.insert(cid, id) {
                self.ended_order
                    .push_back((now + self.config.idle_timeout, cid));
            }
        }
    }

    /// Forgets ended sessions' CIDs whose time is up.
    pub(super) fn forget_ended(&mut self, now: Instant) {
        while let Some(&(until, cid)) = self.ended_order.front() {
            if until > now {
                break;
            }
            self.ended_order.pop_front();
            self.ended.remove(&cid);
        }
    }

    /// Whether a short-header datagram carries the CID of a session that ended.
    pub(super) fn of_ended_session(&self, datagram: &[u8]) -> bool {
        self.ended.lookup_short(datagram).is_some()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::follow::tests::{add, addr, ROUTED};
    use super::super::RelayConfig;
    use super::*;
    use crate::ids::BackendAddr;

    /// A short-header datagram for the CID of session `id` as `add` makes it.
    fn short(id: u64) -> Vec<u8> {
        let mut d = vec![0x40u8];
        d.extend_from_slice(&id.to_be_bytes());
        d.extend_from_slice(&[7; 40]);
        d
    }

    /// A routed session `id` at `client`, its CID in the table.
    fn routed(relay: &mut Relay, id: u64, client: &str) {
        add(relay, id, client, ROUTED, Some(8));
        let cid = ConnectionId::new(&id.to_be_bytes()).unwrap();
        relay.cids.insert(cid, SessionId(id));
    }

    fn drain(relay: &mut Relay) -> (Vec<Command>, Vec<Notification>) {
        let commands = std::iter::from_fn(|| relay.poll_command()).collect();
        let notes = std::iter::from_fn(|| relay.poll_notification()).collect();
        (commands, notes)
    }

    fn backend() -> BackendAddr {
        BackendAddr("192.0.2.9:443".parse().unwrap())
    }

    #[test]
    fn a_known_connection_from_a_new_address_opens_a_path_and_each_path_keeps_its_client() {
        let mut relay = Relay::new(RelayConfig::default());
        let now = Instant::now();
        routed(&mut relay, 1, "198.51.100.1:1000");
        let moved = addr("203.0.113.5:4000");
        let datagram = short(1);
        assert_eq!(
            relay.handle_client_datagram(now, moved, &datagram),
            Verdict::Held {
                session: SessionId(1)
            }
        );
        let (commands, notes) = drain(&mut relay);
        assert_eq!(
            commands,
            [Command::OpenUpstream {
                session: SessionId(1),
                path: PathId::new(SessionId(1), 1),
                client: moved,
                backend: backend(),
                datagrams: vec![Bytes::from(datagram.clone())],
            }]
        );
        assert_eq!(
            notes,
            [Notification::PathOpened {
                session: SessionId(1),
                path: PathId::new(SessionId(1), 1),
                client: moved,
            }]
        );
        // The new path's datagrams go on its own socket from now on.
        assert_eq!(
            relay.handle_client_datagram(now, moved, &datagram),
            Verdict::ToBackend {
                session: SessionId(1),
                path: PathId::new(SessionId(1), 1),
                backend: backend(),
            }
        );
        // Each path's backend datagrams go to that path's client, and no other.
        let reply = [0x40u8; 30];
        for (path, client) in [(0, "198.51.100.1:1000"), (1, "203.0.113.5:4000")] {
            assert_eq!(
                relay.handle_backend_datagram(now, PathId::new(SessionId(1), path), &reply),
                Verdict::ToClient {
                    session: SessionId(1),
                    client: addr(client),
                }
            );
        }
        let info = relay.session(SessionId(1), now).unwrap();
        assert_eq!((info.paths.len(), info.client), (2, moved));
        assert_eq!(info.paths[1].id, PathId::new(SessionId(1), 1));
        let stats = relay.stats();
        assert_eq!((stats.paths, stats.paths_opened), (2, 1));
    }

    #[test]
    fn paths_per_session_are_bounded() {
        let config = RelayConfig {
            max_paths_per_session: 2,
            ..RelayConfig::default()
        };
        let mut relay = Relay::new(config);
        let now = Instant::now();
        routed(&mut relay, 1, "198.51.100.1:1000");
        let v = relay.handle_client_datagram(now, addr("203.0.113.5:1"), &short(1));
        assert!(matches!(v, Verdict::Held { .. }));
        let v = relay.handle_client_datagram(now, addr("203.0.113.5:2"), &short(1));
        assert_eq!(v, Verdict::Drop(DropReason::PathLimit));
        assert_eq!(relay.stats().drops(DropReason::PathLimit), 1);
        assert_eq!(relay.session(SessionId(1), now).unwrap().paths.len(), 2);
    }

    #[test]
    fn a_new_path_beyond_the_relays_socket_cap_is_dropped_and_a_failed_one_just_ends() {
        let config = RelayConfig {
            max_paths: 2,
            ..RelayConfig::default()
        };
        let mut relay = Relay::new(config);
        let now = Instant::now();
        routed(&mut relay, 1, "198.51.100.1:1000");
        let v = relay.handle_client_datagram(now, addr("203.0.113.5:1"), &short(1));
        assert!(matches!(v, Verdict::Held { .. }));
        drain(&mut relay);
        // Two sockets in use: a third path is not opened, the session keeps its two.
        let v = relay.handle_client_datagram(now, addr("203.0.113.5:2"), &short(1));
        assert_eq!(v, Verdict::Drop(DropReason::SocketLimit));
        assert_eq!(relay.stats().drops(DropReason::SocketLimit), 1);
        assert_eq!(drain(&mut relay), (vec![], vec![]));
        // The second path's socket could not be opened: that path ends, the session
        // lives on its first, and no refusal goes out.
        let second = PathId::new(SessionId(1), 1);
        assert!(relay.upstream_failed(now, second));
        assert_eq!(
            drain(&mut relay),
            (
                vec![Command::CloseUpstream {
                    session: SessionId(1),
                    path: second,
                }],
                vec![Notification::PathClosed {
                    session: SessionId(1),
                    path: second,
                    client: addr("203.0.113.5:1"),
                }]
            )
        );
        let stats = relay.stats();
        assert_eq!(
            (
                stats.sessions,
                stats.paths,
                stats.refused,
                stats.upstream_failures
            ),
            (1, 1, 0, 1)
        );
    }

    #[test]
    fn a_path_the_client_left_ends_on_its_timer_and_the_session_lives_on() {
        let mut relay = Relay::new(RelayConfig::default());
        routed(&mut relay, 1, "198.51.100.1:1000");
        // After the session's first datagram (`add` sets it to the time it runs).
        let t0 = Instant::now();
        let moved = addr("203.0.113.5:4000");
        let _ = relay.handle_client_datagram(t0, moved, &short(1));
        drain(&mut relay);
        let timeout = relay.config().path_idle_timeout;
        // The old path's deadline counts from its client's last datagram.
        assert!(relay.poll_timeout().is_some_and(|at| at <= t0 + timeout));
        // Before the path timeout nothing ends; a spurious wake-up is harmless.
        relay.handle_timeout(t0 + timeout - Duration::from_millis(1));
        assert_eq!(drain(&mut relay), (vec![], vec![]));
        relay.handle_timeout(t0 + timeout);
        let (commands, notes) = drain(&mut relay);
        assert_eq!(
            commands,
            [Command::CloseUpstream {
                session: SessionId(1),
                path: PathId::new(SessionId(1), 0),
            }]
        );
        assert_eq!(
            notes,
            [Notification::PathClosed {
                session: SessionId(1),
                path: PathId::new(SessionId(1), 0),
                client: addr("198.51.100.1:1000"),
            }]
        );
        assert_eq!(relay.session(SessionId(1), t0).unwrap().paths.len(), 1);
        // The old path's socket is gone: what might still arrive on it is dropped.
        let v =
            relay.handle_backend_datagram(t0 + timeout, PathId::new(SessionId(1), 0), &[0x40; 30]);
        assert_eq!(v, Verdict::Drop(DropReason::UnknownSession));
        // The current path never ends on the path timer: only the session's idle timeout
        // ends it, with its last socket.
        let idle = relay.config().idle_timeout;
        relay.handle_timeout(t0 + idle);
        let (commands, _) = drain(&mut relay);
        assert_eq!(
            commands,
            [Command::CloseUpstream {
                session: SessionId(1),
                path: PathId::new(SessionId(1), 1),
            }]
        );
        assert_eq!((relay.session_count(), relay.stats().paths), (0, 0));
    }

    #[test]
    fn an_unknown_cid_from_a_new_port_opens_a_path_and_never_redirects_the_old_one() {
        let mut relay = Relay::new(RelayConfig::default());
        let now = Instant::now();
        routed(&mut relay, 1, "198.51.100.1:1000");
        let mut datagram = vec![0x40u8];
        datagram.extend_from_slice(&[0xee; 8]);
        datagram.extend_from_slice(&[0; 30]);
        let v = relay.handle_client_datagram(now, addr("198.51.100.1:2000"), &datagram);
        assert!(matches!(v, Verdict::Held { .. }));
        // The first path still answers to its own address.
        assert_eq!(
            relay.handle_backend_datagram(now, PathId::new(SessionId(1), 0), &[0x40; 30]),
            Verdict::ToClient {
                session: SessionId(1),
                client: addr("198.51.100.1:1000"),
            }
        );
    }

    #[test]
    fn a_late_datagram_of_an_ended_connection_is_not_adopted_by_another_session_of_its_ip() {
        let mut relay = Relay::new(RelayConfig::default());
        let now = Instant::now();
        routed(&mut relay, 1, "198.51.100.1:1000");
        routed(&mut relay, 2, "198.51.100.1:1001");
        assert!(relay.close_session(now, SessionId(1)));
        drain(&mut relay);
        assert_eq!(relay.stats().remembered_ended_cids, 1);
        // Session 2 is now the sole session of the IP, which would adopt an unknown CID
        // from a new port: the ended connection's CID is known, and dropped.
        for from in ["198.51.100.1:1000", "198.51.100.1:3000"] {
            let v = relay.handle_client_datagram(now, addr(from), &short(1));
            assert_eq!(v, Verdict::Drop(DropReason::EndedConnection));
        }
        assert_eq!(drain(&mut relay), (vec![], vec![]));
        let info = relay.session(SessionId(2), now).unwrap();
        assert_eq!(
            (info.paths.len(), info.client),
            (1, addr("198.51.100.1:1001"))
        );
        assert_eq!(info.to_backend.datagrams, 0);
        // Remembered for an idle timeout, then forgotten.
        relay.handle_timeout(now + relay.config().idle_timeout);
        assert_eq!(relay.stats().remembered_ended_cids, 0);
    }

    #[test]
    fn closing_a_path_keeps_the_session_unless_it_is_the_last() {
        let mut relay = Relay::new(RelayConfig::default());
        let now = Instant::now();
        routed(&mut relay, 1, "198.51.100.1:1000");
        let _ = relay.handle_client_datagram(now, addr("203.0.113.5:4000"), &short(1));
        drain(&mut relay);
        assert!(relay.close_path(now, PathId::new(SessionId(1), 1)));
        assert_eq!(relay.session(SessionId(1), now).unwrap().paths.len(), 1);
        assert!(
            !relay.close_path(now, PathId::new(SessionId(1), 1)),
            "already closed"
        );
        assert!(relay.close_path(now, PathId::new(SessionId(1), 0)));
        assert_eq!(relay.session_count(), 0);
    }

    #[test]
    fn a_path_id_names_its_session_and_numbers_run_out_safely() {
        let path = PathId::new(SessionId(7), 3);
        assert_eq!((path.session(), path.seq()), (SessionId(7), 3));
        assert_eq!(path.to_string(), "s7/p3");
        let mut relay = Relay::new(RelayConfig::default());
        let now = Instant::now();
        routed(&mut relay, 1, "198.51.100.1:1000");
        relay.sessions.get_mut(&SessionId(1)).unwrap().next_path = u16::MAX;
        let v = relay.handle_client_datagram(now, addr("203.0.113.5:1"), &short(1));
        assert_eq!(v, Verdict::Drop(DropReason::PathLimit));
        // A path ID of no session, or of a path the session does not have, is unknown.
        for path in [PathId::new(SessionId(9), 0), PathId::new(SessionId(1), 5)] {
            let v = relay.handle_backend_datagram(now, path, &[0x40; 30]);
            assert_eq!(v, Verdict::Drop(DropReason::UnknownSession));
            assert!(!relay.close_path(now, path));
        }
    }
}
