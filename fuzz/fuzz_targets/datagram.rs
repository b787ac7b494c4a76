//! The `datagram` target; see `porter_core::fuzzing::datagram` for what it feeds and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| porter_core::fuzzing::datagram(data));
