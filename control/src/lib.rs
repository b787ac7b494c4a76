//! Porter's control plane: configuration, management API, Redis sync and the Agones
//! allocator client. Talks to the relay only through `porter-core`'s public API.

pub mod agones;
pub mod api;
pub mod cli;
pub mod host;
pub mod http;
pub mod io;
pub mod redis_sync;
pub mod setup;
pub mod sync;

/// The configuration crate, under the name the control plane's users know it by.
pub use porter_config as config;
