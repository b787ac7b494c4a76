//! Agones allocator client: gRPC (tonic) over mutual TLS (rustls, ring).
//!
//! An `agones` route sends each new QUIC connection to a game server allocated from a
//! fleet. The core emits an allocation request; the driver calls
//! [`AgonesClient::allocate`] and hands the [`Allocation`] (or the error) back to the core.
//!
//! Each allocation asks, in one atomic step, for a game server of the fleet that is
//! already allocated and has a free slot in its player list, else a ready one, and (by
//! default) adds the connection's tag to that list, so that players fill one game server
//! before the next is used. See [`AgonesClient::request`] for the exact request.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use porter_agones::{AgonesClient, AgonesClientConfig};
//! use std::time::Duration;
//!
//! let mut config = AgonesClientConfig::from_pem_files(
//!     "game-servers",
//!     "allocator.example:443",
//!     "/etc/porter/agones/tls.crt",
//!     "/etc/porter/agones/tls.key",
//!     "/etc/porter/agones/ca.crt",
//! )?;
//! config.tls_server_name = Some("203.0.113.7".into());
//! let client = AgonesClient::new(config)?;
//! let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
//! let allocation = client.allocate("arena", "conn-8f2c", deadline).await?;
//! println!("{} at {}:{}", allocation.game_server_name, allocation.address, allocation.port);
//! # Ok(())
//! # }
//! ```
//!
//! The wire types come from `control/porter-agones/proto/allocation.proto`, Porter's wire-compatible
//! subset of Agones' `allocation.proto`, compiled at build time without `protoc`.

mod allocator;
mod client;
mod config;
mod error;
mod tls;

pub use allocator::AgonesAllocator;
pub use client::{AgonesClient, Allocation, FLEET_LABEL, KEEPALIVE_INTERVAL};
pub use config::{
    read_pem_file, AgonesClientConfig, PemFileError, PemRole, DEFAULT_MAX_RETRIES,
    DEFAULT_PLAYER_LIST, DEFAULT_REQUEST_TIMEOUT,
};
pub use error::{AllocateError, ClientConfigError, TlsError};

/// Wire types and gRPC stubs generated from `control/porter-agones/proto/allocation.proto` (package
/// `allocation`): the client Porter uses. `porter-test-support` builds the test
/// allocator's server on these types.
#[allow(
    missing_docs,
    unreachable_pub,
    unused_qualifications,
    clippy::all,
    clippy::pedantic,
    clippy::use_self,
    clippy::semicolon_if_nothing_returned,
    clippy::manual_let_else
)]
pub mod proto {
    tonic::include_proto!("allocation");
}
