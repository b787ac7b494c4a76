//! The end-to-end suite of `driver-tokio/tests/e2e`, run against `porter-smol`: the same
//! files, included here, with `BINARY` naming this crate's binary.

/// The binary under test.
const BINARY: &str = env!("CARGO_BIN_EXE_porter-smol");

#[path = "../../driver-tokio/tests/e2e/agones_cases.rs"]
mod agones_cases;
#[path = "../../driver-tokio/tests/e2e/cases.rs"]
mod cases;
#[path = "../../driver-tokio/tests/e2e/control_cases.rs"]
mod control_cases;
#[path = "../../driver-tokio/tests/e2e/support.rs"]
mod support;
