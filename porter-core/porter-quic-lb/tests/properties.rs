//! Properties over random configurations and inputs: what a server encodes, a load
//! balancer with the same configuration decodes; no byte string panics the decoder.

use porter_quic_lb::{
    Config, ConfigId, Decoder, Key, NotRoutable, ServerId, MAX_PLAINTEXT_LEN, MIN_NONCE_LEN,
    UNROUTABLE_CONFIG_ID,
};
use proptest::prelude::*;

/// Config ID, server ID length, nonce length and optional key of a valid configuration.
fn config_params() -> impl Strategy<Value = (u8, usize, usize, Option<[u8; 16]>)> {
    (
        0u8..7,
        1usize..=MAX_PLAINTEXT_LEN - MIN_NONCE_LEN,
        any::<Option<[u8; 16]>>(),
    )
        .prop_flat_map(|(id, sid_len, key)| {
            (
                Just(id),
                Just(sid_len),
                MIN_NONCE_LEN..=MAX_PLAINTEXT_LEN - sid_len,
                Just(key),
            )
        })
}

fn make(params: &(u8, usize, usize, Option<[u8; 16]>)) -> Config {
    let (id, sid_len, nonce_len, key) = *params;
    Config::new(id, sid_len, nonce_len, key.map(Key::new)).expect("valid by construction")
}

/// Up to seven configurations, at most one per config ID.
fn decoder() -> impl Strategy<Value = Decoder> {
    proptest::collection::vec(config_params(), 0..=7).prop_map(|all| {
        let mut decoder = Decoder::new();
        for params in &all {
            decoder.insert(make(params));
        }
        decoder
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn encode_then_decode_returns_the_server_id(
        params in config_params(),
        seed in proptest::collection::vec(any::<u8>(), MAX_PLAINTEXT_LEN),
        trailing in proptest::collection::vec(any::<u8>(), 0..8),
    ) {
        let config = make(&params);
        let (sid, nonce) = seed.split_at(config.server_id_len());
        let nonce = &nonce[..config.nonce_len()];
        let cid = config.encode(sid, nonce).expect("lengths match");
        prop_assert_eq!(cid.len(), config.cid_len());
        prop_assert_eq!(cid[0] >> 5, config.id().value());
        prop_assert_eq!(usize::from(cid[0] & 0x1f), config.cid_len() - 1);

        let mut decoder = Decoder::new();
        decoder.insert(config.clone());
        let route = decoder.decode(&cid).expect("own CID routes");
        prop_assert_eq!(route.config_id, config.id());
        prop_assert_eq!(route.server_id.as_bytes(), sid);
        prop_assert_eq!(route.cid_len, config.cid_len());

        // As a short header: the DCID is followed by the rest of the packet.
        let mut rest = cid.to_vec();
        rest.extend_from_slice(&trailing);
        prop_assert_eq!(decoder.decode(&rest), Ok(route));

        // Without length self-description the low bits are free and change nothing.
        let random_bits = trailing.first().copied().unwrap_or(0x15);
        let cid = config.encode_with_random_bits(sid, nonce, random_bits).expect("lengths match");
        prop_assert_eq!(cid[0] & 0x1f, random_bits & 0x1f);
        prop_assert_eq!(decoder.decode(&cid).map(|r| r.server_id), Ok(route.server_id));
    }

    /// Encryption hides the server ID: the CID octets after the first are not the
    /// plaintext (true except with negligible probability for the random key).
    #[test]
    fn encrypted_cids_do_not_show_the_plaintext(
        params in config_params().prop_filter("encrypted", |p| p.3.is_some()),
        seed in proptest::collection::vec(any::<u8>(), MAX_PLAINTEXT_LEN),
    ) {
        let config = make(&params);
        let (sid, nonce) = seed.split_at(config.server_id_len());
        let nonce = &nonce[..config.nonce_len()];
        let cid = config.encode(sid, nonce).expect("lengths match");
        let mut plain = sid.to_vec();
        plain.extend_from_slice(nonce);
        prop_assert_ne!(&cid[1..], &plain[..]);
    }

    #[test]
    fn decode_never_panics(decoder in decoder(), bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
        let outcome = decoder.decode(&bytes);
        let _ = decoder.decode_short_header(&bytes);
        match outcome {
            Ok(route) => {
                let config = decoder.get(route.config_id).expect("routed by a known config");
                prop_assert_eq!(route.server_id.len(), config.server_id_len());
                prop_assert!(bytes.len() >= config.cid_len());
            }
            Err(NotRoutable::Empty) => prop_assert!(bytes.is_empty()),
            Err(NotRoutable::Unroutable) => prop_assert_eq!(bytes[0] >> 5, UNROUTABLE_CONFIG_ID),
            Err(NotRoutable::UnknownConfig(id)) => prop_assert!(decoder.get(id).is_none()),
            Err(NotRoutable::TooShort { config_id, needed, got }) => {
                prop_assert_eq!(got, bytes.len());
                prop_assert_eq!(decoder.get(config_id).map(Config::cid_len), Some(needed));
                prop_assert!(got < needed);
            }
            Err(other) => prop_assert!(false, "unexpected outcome {other:?}"),
        }
    }

    #[test]
    fn server_ids_of_other_lengths_are_refused(params in config_params(), len in 0usize..20) {
        let config = make(&params);
        let sid = vec![0u8; len];
        match ServerId::new(&sid) {
            Ok(id) => prop_assert_eq!(config.fits(&id), len == config.server_id_len()),
            Err(_) => prop_assert!(len == 0 || len > 15),
        }
        let nonce = vec![0u8; config.nonce_len()];
        prop_assert_eq!(config.encode(&sid, &nonce).is_ok(), len == config.server_id_len());
    }
}

#[test]
fn config_ids_cover_the_three_bits() {
    for value in 0..7 {
        assert_eq!(ConfigId::new(value).unwrap().value(), value);
    }
    assert!(ConfigId::new(7).is_err());
    assert!(ConfigId::new(255).is_err());
}
