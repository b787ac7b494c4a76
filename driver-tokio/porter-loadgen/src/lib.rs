//! The library half of Porter's load generator (the `porter-loadgen` binary's `compare`
//! command), reusable by bigger harnesses.
//!
//! Everything runs on plain std threads and sockets, on loopback only:
//!
//! - [`Responder`]: a mock QUIC backend. It answers each client Initial the relay
//!   forwards with a real server first flight (Initial + Handshake, from
//!   `porter_sim::server_first_flight`) whose Source CID is
//!   [`server_cid_for`] the client's original DCID, so the relay learns it; it counts the
//!   short-header datagrams that reach it.
//! - [`Sessions`]: opens many sessions through a relay from many source ports, each with
//!   a valid client Initial (a ClientHello for a routed SNI, sealed with the Initial keys
//!   by `porter_sim::client_initial_flight`), waits for the server's answer, then
//!   floods short-header datagrams over the established sessions.
//! - [`RelayProcess`]: runs a relay binary with a generated configuration, waits for its
//!   API, and reads its resident memory (`VmRSS`).

mod relay;
mod responder;
mod sessions;

pub use relay::{free_port, RelayProcess};
pub use responder::{server_cid_for, Responder};
pub use sessions::{SessionSpec, Sessions};
