//! The `client_hello` target; see `porter_core::fuzzing::client_hello` for what it feeds and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| porter_core::fuzzing::client_hello(data));
