//! Known-answer tests: the client Initial packets published in RFC 9001 Appendix A.2
//! (QUIC v1) and RFC 9369 Appendix A.2 (QUIC v2) decrypt to the published plaintext, and
//! the assembler reads the ClientHello they carry.

mod common;

use common::{hex, hex_file};
use porter_core::initial::{Keys, Side};
use porter_core::wire::{parse_packet, LongType, Packet, Version};
use porter_core::{client_hello_from_datagram, AssemblerConfig, Progress};

const DCID: &str = "8394c8f03e515708";

/// The published plaintext: one CRYPTO frame, then PADDING up to a 1162-byte payload.
fn published_plaintext() -> Vec<u8> {
    let mut plain = hex_file("rfc9001-a2-crypto-frame.hex");
    assert_eq!(plain.len(), 245);
    plain.resize(1162, 0);
    plain
}

fn decrypts_to_published_plaintext(file: &str, version: Version) {
    let packet = hex_file(file);
    assert_eq!(packet.len(), 1200);
    let (Packet::Long(long), used) = parse_packet(&packet).expect("parses") else {
        panic!("not a long header");
    };
    assert_eq!(used, 1200);
    assert_eq!(long.version, version);
    assert_eq!(long.ty, LongType::Initial);
    assert_eq!(long.dcid, hex(DCID));
    assert!(long.scid.is_empty());
    let keys = Keys::initial(version, long.dcid, Side::Client);
    let mut scratch = Vec::new();
    let decrypted = keys.decrypt(&long, None, &mut scratch).expect("decrypts");
    assert_eq!(decrypted.packet_number, 2);
    assert_eq!(decrypted.payload, published_plaintext());

    // The wrong side's keys must not open it.
    let server = Keys::initial(version, long.dcid, Side::Server);
    assert!(server.decrypt(&long, None, &mut scratch).is_err());
}

#[test]
fn rfc9001_a2_client_initial_v1() {
    decrypts_to_published_plaintext("rfc9001-a2-client-initial.hex", Version::V1);
}

#[test]
fn rfc9369_a2_client_initial_v2() {
    decrypts_to_published_plaintext("rfc9369-a2-client-initial.hex", Version::V2);
}

#[test]
fn rfc_vectors_yield_example_com() {
    for file in [
        "rfc9001-a2-client-initial.hex",
        "rfc9369-a2-client-initial.hex",
    ] {
        let packet = hex_file(file);
        let Ok(Progress::Complete(info)) =
            client_hello_from_datagram(&packet, AssemblerConfig::default())
        else {
            panic!("{file}: ClientHello not complete");
        };
        assert_eq!(info.sni.as_deref(), Some("example.com"));
        assert_eq!(info.alpn, vec![b"alpn".to_vec()]);
        assert!(info.quic_transport_parameters);
        assert!(!info.ech);
    }
}

#[test]
fn one_flipped_bit_fails_authentication() {
    let mut packet = hex_file("rfc9001-a2-client-initial.hex");
    packet[600] ^= 0x01;
    let err = client_hello_from_datagram(&packet, AssemblerConfig::default()).unwrap_err();
    assert!(!err.is_fatal(), "{err}");
    assert!(
        matches!(err, porter_core::InitialError::Decrypt(_)),
        "{err}"
    );
}
