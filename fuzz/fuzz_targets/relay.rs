//! The `relay` target; see `porter_fuzz::relay` for what it feeds and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| porter_fuzz::relay(data));
