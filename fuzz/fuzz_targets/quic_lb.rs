//! The `quic_lb` target; see `porter_fuzz::quic_lb` for what it feeds and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| porter_fuzz::quic_lb(data));
