//! End-to-end tests of the `porter` binary with real QUIC peers. The cases are shared
//! with the other drivers' binaries (see `cases.rs`).

/// The binary under test.
const BINARY: &str = env!("CARGO_BIN_EXE_porter");

mod agones_cases;
mod cases;
mod control_cases;
mod support;
