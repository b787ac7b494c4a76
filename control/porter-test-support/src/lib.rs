//! Test-only pieces shared by Porter's test suites (control's tests and the end-to-end
//! suite `porter-e2e`); never a dependency of a shipped crate.
//!
//! - [`TestAllocator`]: an Agones allocator, the tonic server generated from control's
//!   `allocation.proto`, over mutual TLS, in front of a simulated fleet ([`TestPki`] makes
//!   the certificates).
//! - [`RedisServer`]: a throw-away `redis-server` (optionally with a password) and a RESP
//!   client to read what was stored.
//! - [`Porter`]: a relay [`Binary`] run with a generated config, waited for until its API
//!   answers; [`http`], [`http_raw`] and [`parse_prometheus`] to talk to that API.
//! - [`host`]: an in-process relay host; [`free_udp_port`], [`free_tcp_port`],
//!   [`temp_dir`], [`wait_for`].
//! - [`netns`]: network namespaces and veth pairs a test builds (as root) and removes.

mod agones;
mod host;
mod metrics;
pub mod netns;
mod ports;
mod redis;
mod relay;
mod samples;
mod temp;
mod wait;

pub use agones::{
    ServerCert, TestAllocator, TestGameServer, TestGameServerState, TestIdentity, TestList,
    TestPki, SERVER_DNS_NAME,
};
pub use host::host;
pub use metrics::{metric, metric_sum, parse_prometheus, Sample};
pub use ports::{free_tcp_port, free_udp_port};
pub use redis::{RedisServer, Resp};
pub use relay::{http, http_raw, Binary, Porter};
pub use samples::ORIGINAL_CONFIG;
pub use temp::temp_dir;
pub use wait::wait_for;
