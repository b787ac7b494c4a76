//! # porter-control
//!
//! Porter's control plane, shared by both binaries: the management API ([`api`], served
//! over any runtime's connections by [`http`]), the route sync between instances
//! ([`sync`]: the data model and rules; [`redis_sync`]: the Redis transport), the
//! connection-ID directory in Redis ([`directory`]), start-up
//! settings from a configuration ([`setup`]), hot reload of the configuration file
//! ([`reload`]) and the command line ([`cli`]).
//!
//! It reaches the relay only through `porter_host::RelayHandle`, and allocations only
//! through the `porter_host::Allocator` trait: it knows neither the I/O engine's internals
//! nor the Agones client.
//!
//! Runtime features: `tokio` (the API's tokio listener, the Redis transport on tokio) and
//! `smol` (the Redis transport on smol). Without `tokio`, nothing here links tokio's
//! runtime: only its `sync` and `macros` features (a `Notify`, `select!`).

pub mod api;
pub mod cli;
pub mod directory;
pub mod dns;
pub mod http;
pub mod redis_sync;
pub mod reload;
pub mod setup;
pub mod sync;
