//! # porter-core
//!
//! The sans-IO core of Porter, a transparent UDP relay for QUIC. It reads the TLS server
//! name and ALPN from a client's Initial packets (QUIC versions 1 and 2), picks a route,
//! and tracks each connection by its connection IDs so every datagram reaches the backend
//! chosen for it.
//!
//! The crate does no I/O: no sockets, no clock, no threads, no async. Datagrams and the
//! current time come in as arguments; decisions come back as return values and queued
//! outputs. The same inputs give the same outputs.
//!
//! ## The relay and its call order
//!
//! [`Relay`] is the one type an embedder needs. Its inputs are the `handle_*` methods
//! and the route and session calls; its outputs are of three kinds:
//!
//! - a [`Verdict`], returned by each `handle_*_datagram` call, about that datagram:
//!   forward it ([`Verdict::ToBackend`], [`Verdict::ToClient`]), the relay keeps it
//!   ([`Verdict::Held`]) or answered it ([`Verdict::Answered`]), or drop it;
//! - [`Command`]s, side effects for the I/O layer, drained with [`Relay::poll_command`]:
//!   [`Command::OpenUpstream`] (open the upstream socket of a client path and send the
//!   datagrams held for it), [`Command::Transmit`] (send bytes the relay made to a
//!   client), [`Command::Allocate`] / [`Command::CancelAllocation`],
//!   [`Command::CloseUpstream`] (close a path's socket), [`Command::LookupConnection`]
//!   (ask the other shards, then the connection-ID directory shared between instances,
//!   with lookups on), [`Command::ConnectionMoved`] (sharded: tell the shard a connection
//!   came from that its backend answers here);
//! - [`Notification`]s, for logs, metrics and the control plane, drained with
//!   [`Relay::poll_notification`]: a session opened or closed, a connection refused, a
//!   path opened (a client that moved) or closed, a temporary route that expired, the
//!   connection IDs a routed session has (with directory lookups on,
//!   [`Notification::ConnectionIdsLearned`]).
//!
//! The rule: **after every input, act on the verdict, then drain the commands (in order)
//! and the notifications until `None`, then re-arm the timer at [`Relay::poll_timeout`]**.
//! When the timer fires, call [`Relay::handle_timeout`] (an early call is harmless) and
//! drain again. A backend's datagrams come back through
//! [`Relay::handle_backend_datagram`] with the [`PathId`] whose upstream socket received
//! them; an allocator's answer through [`Relay::complete_allocation`]; the directory's
//! answer to a lookup through [`Relay::complete_lookup`].
//!
//! A session has one client path per client address, each with its own upstream socket
//! (like a NAT): a client that moves gets a new path, so the backend sees the move as a
//! new 4-tuple and validates it; a path's backend datagrams go to that path's address
//! only, and a path the client left ends on its own timer.
//!
//! The loop below drives a relay with a real capture: the first flight of an aioquic 1.7
//! client asking for `game2.example.com` (one Initial, then three retransmissions).
//!
//! ```
//! use std::time::{Duration, Instant};
//!
//! use porter_core::{
//!     BackendAddr, ClientAddr, Command, Notification, Relay, RelayConfig, Route, RouteTarget,
//!     Verdict,
//! };
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let backend = BackendAddr("10.0.0.5:7777".parse()?);
//! let mut relay = Relay::new(RelayConfig::default());
//! relay.set_route(Route {
//!     name: "game2.example.com".parse()?,
//!     target: RouteTarget::Simple(vec![backend]),
//!     balance: Default::default(),
//! })?;
//!
//! let capture: Vec<serde_json::Value> =
//!     serde_json::from_str(include_str!("../tests/data/aioquic-1.7-v1.json"))?;
//! let mut upstream = Vec::new(); // what would go out on upstream sockets
//! let now = Instant::now();
//! for datagram in &capture {
//!     let from = ClientAddr(datagram["from"].as_str().unwrap_or_default().parse()?);
//!     let bytes = hex::decode(datagram["hex"].as_str().unwrap_or_default())?;
//!
//!     // 1. The verdict: what to do with this datagram.
//!     match relay.handle_client_datagram(now, from, &bytes) {
//!         Verdict::ToBackend { session, backend, .. } => upstream.push((session, backend, bytes)),
//!         Verdict::ToClient { .. } => unreachable!("only backend datagrams go to clients"),
//!         Verdict::Held { .. } | Verdict::Answered | Verdict::Drop(_) => {}
//!     }
//!     // 2. The commands, in order.
//!     while let Some(command) = relay.poll_command() {
//!         match command {
//!             Command::OpenUpstream { session, backend, datagrams, .. } => {
//!                 // Open the upstream socket of the command's `path` to `backend`, then
//!                 // send these on it.
//!                 upstream.extend(datagrams.into_iter().map(|d| (session, backend, d.to_vec())));
//!             }
//!             Command::Transmit { to, datagram } => { /* send to `to` from the listener */ }
//!             Command::Allocate { id, .. } => { /* ask Agones, then complete_allocation */ }
//!             Command::CancelAllocation { id } => { /* stop asking */ }
//!             Command::CloseUpstream { path: _, .. } => { /* close that path's socket */ }
//!             Command::LookupConnection { id, dcid, .. } => { /* ask the directory, then complete_lookup */ }
//!             Command::ConnectionMoved { shard, session } => { /* sharded: tell that shard */ }
//!         }
//!     }
//!     // 3. The notifications.
//!     while let Some(notification) = relay.poll_notification() {
//!         if let Notification::SessionOpened { sni, .. } = notification {
//!             assert_eq!(sni.as_deref(), Some("game2.example.com"));
//!         }
//!     }
//! }
//! // Every datagram of the capture went to the backend, unchanged and in order.
//! assert_eq!(upstream.len(), capture.len());
//! assert!(upstream.iter().all(|(_, to, _)| *to == backend));
//!
//! // 4. The timer. No backend answered, so the client never used a connection ID a
//! //    backend issued: the session is unvalidated and ends at `handshake_timeout` (a
//! //    validated one idles out after `idle_timeout`). A wake-up before that finds
//! //    nothing to do, which is harmless.
//! let mut closed = None;
//! while let Some(deadline) = relay.poll_timeout() {
//!     relay.handle_timeout(deadline);
//!     while let Some(command) = relay.poll_command() {
//!         assert!(matches!(command, Command::CloseUpstream { .. }));
//!     }
//!     while let Some(notification) = relay.poll_notification() {
//!         if let Notification::SessionClosed { reason, .. } = notification {
//!             closed = Some((deadline - now, reason.as_str()));
//!         }
//!     }
//! }
//! assert_eq!(closed, Some((Duration::from_secs(5), "handshake_timeout")));
//! assert_eq!(relay.session_count(), 0);
//! # Ok(())
//! # }
//! ```
//!
//! Routes ([`Relay::set_route`], [`Relay::set_route_until`], [`Relay::remove_route`]) and
//! sessions ([`Relay::sessions_page`], [`Relay::close_session`]) are changed and read
//! through the same value; a host that shares the relay between threads puts it behind
//! one lock and drains after every call, so no change is left without its outputs.
//!
//! ## Reading the ClientHello
//!
//! [`InitialAssembler`] takes the datagrams of one connection attempt and answers
//! [`Progress::NeedMore`] until the ClientHello is complete, then
//! [`Progress::Complete`] with a [`ClientHelloInfo`]. Errors are typed
//! ([`InitialError`]); [`InitialError::is_fatal`] tells a datagram that merely did not
//! contribute from an attempt that cannot succeed. No input makes it panic.
//!
//! ```
//! use porter_core::{AssemblerConfig, InitialAssembler, Progress};
//!
//! let mut attempt = InitialAssembler::new(AssemblerConfig::default());
//! // Not a QUIC Initial: a typed, non-fatal error, and the attempt goes on.
//! let err = attempt.handle_datagram(&[0u8; 1200]).unwrap_err();
//! assert!(!err.is_fatal());
//! ```
//!
//! The building blocks are public for embedders: [`wire`] (headers, varints, coalesced
//! packets), [`initial`] (Initial keys and packet protection), [`frame`],
//! [`crypto_stream`] and [`client_hello`].
//!
//! A deterministic simulation harness for testing an embedding (virtual clock, emulated
//! network, QUIC client and server models) is the separate crate `porter-sim`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod assembler;
mod cid;
pub mod client_hello;
pub mod crypto_stream;
pub mod frame;
mod ids;
pub mod initial;
mod relay;
mod routes;
mod session;
pub mod wire;

pub use assembler::{
    client_hello_from_datagram, AssemblerConfig, InitialAssembler, InitialError, Progress,
};
pub use client_hello::{ClientHelloError, ClientHelloInfo};
pub use ids::{AllocationId, BackendAddr, ClientAddr, PathId, SessionId};
/// The QUIC-LB connection-ID codec the relay decodes server IDs with (the crate
/// `porter-quic-lb`), for building [`QuicLbRouting`].
pub use porter_quic_lb as quic_lb;
pub use relay::{
    AllocationCounters, AllocationFailure, Command, CompleteAllocationError, CompleteLookupError,
    DirectoryConfig, DropReason, LookupCounters, LookupId, Notification, QuicLbCounters,
    QuicLbMiss, QuicLbRouting, RefusalMode, RefuseReason, Relay, RelayConfig, RelayStats,
    ServerIdBinding, SessionPage, Settled, Shard, ShortClaim, Verdict,
};
pub use routes::{
    Balance, Policy, Resolved, Route, RouteError, RouteName, RouteNameError, RouteTable,
    RouteTarget,
};
pub use session::{CloseReason, PathInfo, SessionInfo, SessionState, Traffic};
pub use wire::{ConnectionId, Version};
