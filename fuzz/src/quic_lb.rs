//! The `quic_lb` target: the QUIC-LB decoder (`porter_core::quic_lb`, the crate
//! porter-quic-lb) as the relay uses it, on arbitrary connection IDs.
//!
//! The first byte picks one configuration: config ID (bits 0-2, 7 folded to 6), server
//! ID length (bits 3-5: 1 to 8) and whether it has a key (bit 6); the nonce length is
//! what makes the mode (bit 7: single-pass when keyed, else the shortest four-pass or
//! plaintext nonce that fits). The rest is:
//! - decoded as a CID (and as a short header) with a decoder holding that configuration
//!   and three fixed ones (plaintext, single-pass, four-pass): never a panic; a route
//!   names a configured config, reads no more than the input and its CID length, and
//!   carries a server ID of that config's length;
//! - cut into a server ID and a nonce that are encoded with the configuration and decoded
//!   again: the server ID must come back (the encoding round-trips in every mode).
//!
//! Relay-level use (an unknown DCID from the network through `Relay`) is covered by the
//! `relay` target's datagrams with the relay's default (empty) routing and by
//! porter-core's unit tests.

use porter_core::quic_lb::{Config, Decoder, Key, ServerId};

/// Feeds `data` to the QUIC-LB decoder and checks the encoding round-trips.
pub fn quic_lb(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let config_id = (pick & 0b111).min(6);
    let server_id_len = usize::from((pick >> 3) & 0b111) + 1;
    let keyed = pick & 0x40 != 0;
    let nonce_len = if keyed && pick & 0x80 != 0 {
        16 - server_id_len
    } else {
        4 + usize::from(pick >> 7)
    };
    let key = keyed.then(|| Key::new([pick; 16]));
    let config = Config::new(config_id, server_id_len, nonce_len, key)
        .expect("lengths chosen within the draft's limits");

    let mut decoder = Decoder::new();
    for fixed in [
        Config::new(0, 3, 4, None),
        Config::new(3, 4, 12, Some(Key::new([0x5a; 16]))),
        Config::new(5, 5, 7, Some(Key::new([0xa5; 16]))),
    ] {
        decoder.insert(fixed.expect("fixed configurations are valid"));
    }
    decoder.insert(config.clone());

    for route in [decoder.decode(rest), decoder.decode_short_header(rest)] {
        let Ok(route) = route else { continue };
        let used = decoder
            .get(route.config_id)
            .expect("a route names a configured config");
        assert_eq!(route.cid_len, used.cid_len(), "the config's CID length");
        assert!(route.cid_len <= rest.len(), "a route reads only the input");
        assert_eq!(route.server_id.len(), used.server_id_len());
    }

    // Round trip: the bytes as a server ID and a nonce.
    let (Some(server_id), Some(nonce)) = (
        rest.get(..server_id_len),
        rest.get(server_id_len..server_id_len + nonce_len),
    ) else {
        return;
    };
    let cid = config
        .encode(server_id, nonce)
        .expect("server ID and nonce of the configured lengths");
    let route = decoder
        .decode(cid.as_bytes())
        .expect("an encoded CID decodes");
    assert_eq!(route.config_id, config.id());
    assert_eq!(
        route.server_id,
        ServerId::new(server_id).expect("length within limits"),
        "the server ID round-trips"
    );
}
