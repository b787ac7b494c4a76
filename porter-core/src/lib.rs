//! # porter-core
//!
//! The sans-IO core of Porter, a transparent UDP relay for QUIC. It reads the TLS server
//! name and ALPN from a client's Initial packets (QUIC versions 1 and 2), and tracks each
//! connection by its connection IDs so every datagram reaches the backend chosen for it.
//!
//! The crate does no I/O: no sockets, no clock, no threads, no async. Datagrams and the
//! current time come in as arguments; decisions come back as return values.
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
//! The deterministic simulation harness for the relay (virtual clock, emulated network,
//! driver loop, QUIC client and server models) is the separate crate `porter-sim`.

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
pub use ids::{AllocationId, BackendAddr, ClientAddr, SessionId};
pub use relay::{
    AllocationCounters, AllocationFailure, CompleteAllocationError, DropReason, Event, RefusalMode,
    RefuseReason, Relay, RelayConfig, RelayStats, Verdict,
};
pub use routes::{Resolved, Route, RouteError, RouteName, RouteNameError, RouteTable, RouteTarget};
pub use session::{CloseReason, SessionInfo, SessionState, Traffic};
pub use wire::{ConnectionId, Version};
