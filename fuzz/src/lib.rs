//! # porter-fuzz
//!
//! The logic of Porter's fuzz targets. The cargo-fuzz binaries (`fuzz_targets/*.rs`) are
//! thin shells: each calls one function here. The same functions replay the committed
//! corpus (`fuzz/corpus/<target>/`) and regressions (`fuzz/regressions/<target>/`) in the
//! workspace's ordinary test suite (`tests/corpus_replay.rs`), so an input the fuzzer once
//! found keeps being checked by `cargo test` without cargo-fuzz. The packet and
//! ClientHello builders come from `porter-sim`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
//!
//! Every target takes arbitrary bytes, never panics on its own account, and panics (with
//! a message saying which invariant broke) when porter-core misbehaves:
//!
//! - [`datagram`]: the wire parsers: [`porter_core::wire::Packets`], [`porter_core::wire::parse_packet`],
//!   short-header DCID extraction, varints, packet-number recovery, header-protection
//!   removal and the Initial frame parser. Packets must lie inside the datagram, follow
//!   one another without gap or overlap, and re-parse to themselves.
//! - [`initial`]: Initial decryption, CRYPTO reassembly and ClientHello parsing through
//!   an [`porter_core::InitialAssembler`] with small limits. Structure-aware: the input
//!   describes frames, packets and datagrams, which are encrypted with the Initial keys
//!   of the chosen DCID, so the fuzzer works past the AEAD. Checks the bounds, the
//!   stickiness of outcomes, and that an attempt whose CRYPTO stream is complete
//!   completes with exactly what the ClientHello says.
//! - [`client_hello`]: [`porter_core::client_hello::parse_client_hello`] on raw bytes, on bytes
//!   behind a valid handshake header, and on ClientHellos built from a description whose
//!   parse is known in advance. A returned SNI must be normalised.
//! - [`relay`]: the [`porter_core::Relay`] state machine driven by a sequence of operations,
//!   with its bounds, timers, verdicts, commands and notifications checked against a
//!   model after every step.
//! - [`quic_lb`]: the QUIC-LB decoder the relay routes unknown CIDs with, on arbitrary
//!   CIDs, and the round trip of its encoding in all three modes.
//!
//! Inputs whose first byte is even are "raw": the rest is a list of datagrams, each a
//! 2-byte big-endian length and its bytes (see [`join_datagrams`]). Real captures are
//! committed to the corpus in this form. Odd first bytes select the structured
//! (`arbitrary`-decoded) form, which the fuzzer discovers by itself.

mod client_hello;
mod datagram;
mod initial;
mod quic_lb;
mod relay;

pub use client_hello::client_hello;
pub use datagram::datagram;
pub use initial::initial;
pub use quic_lb::quic_lb;
pub use relay::relay;

/// A fuzz target: takes any bytes, panics when porter-core breaks an invariant.
pub type Target = fn(&[u8]);

/// Every target, by the name of its cargo-fuzz binary and corpus directory.
pub const TARGETS: &[(&str, Target)] = &[
    ("datagram", datagram),
    ("initial", initial),
    ("client_hello", client_hello),
    ("relay", relay),
    ("quic_lb", quic_lb),
];

/// First byte of a raw-mode input (any even byte selects raw mode).
pub const RAW: u8 = 0;
/// First byte of a structured-mode input (any odd byte selects it).
pub const STRUCTURED: u8 = 1;

/// Splits the body of a raw-mode input into datagrams: each is a 2-byte big-endian
/// length followed by that many bytes; a last one shorter than its length takes what is
/// left.
pub fn split_datagrams(mut body: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while body.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([body[0], body[1]]));
        let rest = &body[2..];
        let take = len.min(rest.len());
        out.push(&rest[..take]);
        body = &rest[take..];
    }
    out
}

/// The inverse of [`split_datagrams`], with the raw-mode byte in front: a corpus seed
/// made of real datagrams. Datagrams longer than 65 535 bytes are cut.
pub fn join_datagrams<'a>(datagrams: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = vec![RAW];
    for d in datagrams {
        let d = &d[..d.len().min(usize::from(u16::MAX))];
        out.extend_from_slice(&(d.len() as u16).to_be_bytes());
        out.extend_from_slice(d);
    }
    out
}

/// The raw-mode datagrams of `data`, or `None` for a structured input (or an empty one).
fn raw_datagrams(data: &[u8]) -> Option<Vec<&[u8]>> {
    match data.split_first() {
        Some((mode, body)) if mode % 2 == 0 => Some(split_datagrams(body)),
        _ => None,
    }
}

/// The structured-mode body of `data`.
fn structured(data: &[u8]) -> Option<&[u8]> {
    match data.split_first() {
        Some((mode, body)) if mode % 2 == 1 => Some(body),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagram_framing_round_trips() {
        let a = [1u8, 2, 3];
        let b = [0u8; 300];
        let joined = join_datagrams([&a[..], &[][..], &b[..]]);
        assert_eq!(joined[0], RAW);
        assert_eq!(
            raw_datagrams(&joined).unwrap(),
            vec![&a[..], &[][..], &b[..]]
        );
        // A truncated last datagram keeps what is there; a lone length byte is ignored.
        assert_eq!(split_datagrams(&[0, 5, 9, 9, 7]), vec![&[9, 9, 7][..]]);
        assert!(split_datagrams(&[0, 1, 4, 0]) == vec![&[4][..]]);
        assert_eq!(structured(&[STRUCTURED, 7]), Some(&[7][..]));
        assert_eq!(raw_datagrams(&[STRUCTURED]), None);
    }

    #[test]
    fn every_target_survives_trivial_inputs() {
        for (_, target) in TARGETS {
            for input in [&[][..], &[RAW], &[STRUCTURED], &[RAW, 0, 0], &[3; 64]] {
                target(input);
            }
        }
    }
}
