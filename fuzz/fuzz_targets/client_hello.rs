//! The `client_hello` target; see `porter_fuzz::client_hello` for what it feeds and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| porter_fuzz::client_hello(data));
