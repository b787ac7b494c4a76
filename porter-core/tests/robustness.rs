//! Robustness of porter's Initial path against damaged and hostile input.
//!
//! - Damaged datagrams (truncations, bit flips, overwritten or appended bytes) taken from
//!   the real captures and from rustls-built flights (see `rustls_client`) never panic,
//!   never fail the attempt, never change the answer, and leave the attempt able to
//!   complete from the genuine datagrams.
//! - Attacks with valid encryption (anyone can derive Initial keys): CRYPTO data past the
//!   ClientHello limit, thousands of tiny fragments, an oversized declared ClientHello
//!   length, too many datagrams. The buffer never exceeds `max_client_hello_len` and the
//!   attempt fails with the typed reason the limit predicts, at the datagram it predicts.
//! - The parsers on their own: `parse_client_hello`, `wire::Packets` and
//!   `frame::InitialFrames` on arbitrary bytes, and on encodings built here by hand that
//!   they must read back exactly.

mod common;
mod rustls_client;

use std::ops::Range;
use std::sync::OnceLock;

use proptest::prelude::*;

use porter_core::client_hello::{normalize_host_name, parse_client_hello, ClientHelloError};
use porter_core::crypto_stream::{CryptoStreamError, MAX_RANGES};
use porter_core::frame::{FrameError, InitialFrame, InitialFrames};
use porter_core::initial::DecryptError;
use porter_core::wire::{LongType, Packet, Packets, Version, WireError};
use porter_core::{AssemblerConfig, ClientHelloInfo, InitialAssembler, InitialError, Progress};
use rustls_client::{
    build_flight, client_hello, covers, crypto_frame, long_packet_spans, put_varint,
    put_varint_width, Dice, FlightSpec, InitialHeader, QuicVersion, Sealer,
};

// ---------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------

/// A connection attempt's datagrams in sending order, and the answer they must give.
#[derive(Clone, Debug)]
struct Case {
    datagrams: Vec<Vec<u8>>,
    sni: String,
    alpn: Vec<Vec<u8>>,
}

impl Case {
    fn is_answer(&self, info: &ClientHelloInfo) -> bool {
        info.sni.as_deref() == Some(self.sni.as_str()) && info.alpn == self.alpn
    }
}

fn capture_case(index: usize) -> Case {
    static CASES: OnceLock<Vec<Case>> = OnceLock::new();
    let cases = CASES.get_or_init(|| {
        common::CORPUS
            .iter()
            .map(|&(file, sni, alpn)| Case {
                datagrams: common::capture(file).into_iter().map(|d| d.bytes).collect(),
                sni: sni.to_owned(),
                alpn: vec![alpn.as_bytes().to_vec()],
            })
            .collect()
    });
    cases[index % cases.len()].clone()
}

const ORACLE_NAME: &str = "Robust.Example.";

fn oracle_alpn(long: bool) -> Vec<Vec<u8>> {
    let mut alpn = vec![b"h3".to_vec(), b"hq-interop".to_vec()];
    if long {
        alpn.extend((0..6u8).map(|i| vec![b'x' + i % 3; 200]));
    }
    alpn
}

/// A rustls ClientHello for [`ORACLE_NAME`]; with `long` ALPN it is about 1.5 KB.
fn oracle_hello(version: QuicVersion, long: bool) -> Vec<u8> {
    client_hello(
        version,
        ORACLE_NAME,
        &oracle_alpn(long),
        &[0x04, 0x04, 0x80, 0, 0x40, 0],
    )
}

fn oracle_case(spec: &FlightSpec, long: bool, dice: Vec<u32>) -> Case {
    let hello = oracle_hello(spec.version, long);
    let flight = build_flight(&mut Dice::new(dice), spec, &hello);
    Case {
        datagrams: flight.into_iter().map(|d| d.bytes).collect(),
        sni: "robust.example".into(),
        alpn: oracle_alpn(long),
    }
}

fn version() -> impl Strategy<Value = QuicVersion> {
    prop_oneof![Just(QuicVersion::V1), Just(QuicVersion::V2)]
}

fn flight_spec() -> impl Strategy<Value = FlightSpec> {
    (
        version(),
        prop::collection::vec(any::<u8>(), 0..=20),
        prop::collection::vec(any::<u8>(), 0..=20),
    )
        .prop_map(|(version, dcid, scid)| FlightSpec {
            version,
            dcid,
            scid,
            token: Vec::new(),
        })
}

fn dice() -> impl Strategy<Value = Vec<u32>> {
    prop::collection::vec(any::<u32>(), 0..200)
}

fn case() -> impl Strategy<Value = Case> {
    prop_oneof![
        (0..common::CORPUS.len()).prop_map(capture_case),
        (flight_spec(), any::<bool>(), dice())
            .prop_map(|(spec, long, dice)| oracle_case(&spec, long, dice)),
    ]
}

/// Seals `payload` into one client Initial (4-byte packet number, so any number below
/// 2^31 reads back whatever came before) and pads the datagram to 1200 bytes with
/// PADDING frames.
fn sealed(version: QuicVersion, dcid: &[u8], pn: u64, payload: &[u8]) -> Vec<u8> {
    let header = InitialHeader {
        dcid: dcid.to_vec(),
        scid: vec![0xcc; 8],
        token: Vec::new(),
        packet_number: pn,
        pn_len: 4,
        length_width: 0,
    };
    let mut payload = payload.to_vec();
    let missing = 1200usize.saturating_sub(header.sealed_len(payload.len()));
    payload.resize(payload.len() + missing, 0);
    let mut out = Vec::new();
    Sealer::new(version, dcid).seal(&header, &payload, &mut out);
    out
}

/// Packs CRYPTO frames `(offset, data)`, in order, into sealed datagrams of about
/// `capacity` bytes of frames each, with packet numbers from 0.
fn sealed_frames(
    version: QuicVersion,
    dcid: &[u8],
    frames: &[(u64, Vec<u8>)],
    capacity: usize,
) -> Vec<(Vec<u8>, Range<usize>)> {
    let mut out = Vec::new();
    let mut payload = Vec::new();
    let mut first = 0;
    for (i, (offset, data)) in frames.iter().enumerate() {
        let mut frame = Vec::new();
        crypto_frame(*offset, data, &mut frame);
        if !payload.is_empty() && payload.len() + frame.len() > capacity {
            out.push((sealed(version, dcid, out.len() as u64, &payload), first..i));
            payload.clear();
            first = i;
        }
        payload.extend_from_slice(&frame);
    }
    if !payload.is_empty() {
        out.push((
            sealed(version, dcid, out.len() as u64, &payload),
            first..frames.len(),
        ));
    }
    out
}

const DCID: [u8; 8] = [0x83, 0x94, 0xc8, 0xf0, 0x3e, 0x51, 0x57, 0x08];

// ---------------------------------------------------------------------------------------
// Damaged datagrams
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Damage {
    Truncate(usize),
    FlipBit(usize, u8),
    Overwrite(usize, Vec<u8>),
    Append(Vec<u8>),
    Random(Vec<u8>),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        1 => any::<usize>().prop_map(Damage::Truncate),
        3 => (any::<usize>(), 0..8u8).prop_map(|(at, bit)| Damage::FlipBit(at, bit)),
        1 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..24))
            .prop_map(|(at, bytes)| Damage::Overwrite(at, bytes)),
        1 => prop::collection::vec(any::<u8>(), 1..64).prop_map(Damage::Append),
        1 => prop::collection::vec(any::<u8>(), 0..1300).prop_map(Damage::Random),
    ]
}

fn apply(damage: &Damage, datagram: &[u8]) -> Vec<u8> {
    let mut d = datagram.to_vec();
    let len = d.len().max(1);
    match damage {
        Damage::Truncate(at) => d.truncate(at % len),
        Damage::FlipBit(at, bit) => d[at % len] ^= 1 << bit,
        Damage::Overwrite(at, bytes) => {
            for (i, b) in bytes.iter().enumerate() {
                if let Some(slot) = d.get_mut(at % len + i) {
                    *slot = *b;
                }
            }
        }
        Damage::Append(bytes) => d.extend_from_slice(bytes),
        Damage::Random(bytes) => d = bytes.clone(),
    }
    d
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Damaged copies of an attempt's datagrams, fed first and in any order, never fail
    /// the attempt or give another answer; the genuine datagrams then complete it.
    #[test]
    fn damaged_datagrams_never_change_the_answer(
        case in case(),
        damages in prop::collection::vec((any::<usize>(), damage()), 1..8),
        order in dice(),
    ) {
        let config = AssemblerConfig { max_datagrams: 64, ..AssemblerConfig::default() };
        let mut feed: Vec<Vec<u8>> = damages
            .iter()
            .map(|(i, d)| apply(d, &case.datagrams[i % case.datagrams.len()]))
            .collect();
        Dice::new(order).shuffle(&mut feed);
        let mut attempt = InitialAssembler::new(config);
        for d in &feed {
            match attempt.handle_datagram(d) {
                Ok(Progress::NeedMore) => {}
                Ok(Progress::Complete(info)) => prop_assert!(case.is_answer(&info), "{:?}", info),
                Err(e) => prop_assert!(!e.is_fatal(), "{}", e),
            }
            prop_assert!(attempt.buffered() <= config.max_client_hello_len);
        }
        let mut last = Ok(Progress::NeedMore);
        for d in &case.datagrams {
            last = attempt.handle_datagram(d);
            prop_assert!(last.is_ok(), "{:?}", last);
        }
        match last {
            Ok(Progress::Complete(info)) => prop_assert!(case.is_answer(&info), "{:?}", info),
            other => prop_assert!(false, "not complete: {:?}", other),
        }
    }

    /// A bit flipped anywhere in the protected part of one packet (packet number,
    /// ciphertext, tag) loses exactly that packet: the datagram's other packets still
    /// count, a datagram with no other packet is an authentication failure, and the
    /// attempt completes exactly when the undamaged data covers the ClientHello.
    #[test]
    fn a_flipped_protected_bit_loses_exactly_that_packet(
        spec in flight_spec(),
        long in any::<bool>(),
        dice in dice(),
        which in any::<usize>(),
        at in any::<usize>(),
        bit in 0..8u8,
    ) {
        let hello = oracle_hello(spec.version, long);
        let mut dice = Dice::new(dice);
        let mut flight = build_flight(&mut dice, &spec, &hello);
        dice.shuffle(&mut flight);
        let all_packets: Vec<(usize, usize)> = flight
            .iter()
            .enumerate()
            .flat_map(|(d, dg)| (0..dg.packets.len()).map(move |p| (d, p)))
            .collect();
        let (hit_d, hit_p) = all_packets[which % all_packets.len()];
        let hit = &flight[hit_d].packets[hit_p];
        let position = hit.pn_offset + at % (hit.span.end - hit.pn_offset);
        let mut damaged = flight[hit_d].bytes.clone();
        damaged[position] ^= 1 << bit;

        let want = ClientHelloInfo {
            sni: Some("robust.example".into()),
            alpn: oracle_alpn(long),
            ech: false,
            quic_transport_parameters: true,
        };
        let total = hello.len() as u64;
        let mut attempt = InitialAssembler::new(AssemblerConfig::default());
        let mut fed: Vec<Range<u64>> = Vec::new();
        let mut done = false;
        for (d, dg) in flight.iter().enumerate() {
            let (bytes, lost) = if d == hit_d { (&damaged, Some(hit_p)) } else { (&dg.bytes, None) };
            let progress = attempt.handle_datagram(bytes);
            if done {
                prop_assert_eq!(progress, Ok(Progress::Complete(want.clone())));
                continue;
            }
            for (p, packet) in dg.packets.iter().enumerate() {
                if Some(p) != lost {
                    fed.extend(packet.crypto.iter().cloned());
                }
            }
            if lost.is_some() && dg.packets.len() == 1 {
                prop_assert_eq!(
                    progress,
                    Err(InitialError::Decrypt(DecryptError::Authentication))
                );
            } else if covers(fed.iter().cloned(), total) {
                prop_assert_eq!(progress, Ok(Progress::Complete(want.clone())));
                done = true;
            } else {
                prop_assert_eq!(progress, Ok(Progress::NeedMore));
            }
        }
        // The genuine copy of the damaged datagram supplies what was lost.
        let progress = attempt.handle_datagram(&flight[hit_d].bytes);
        prop_assert_eq!(progress, Ok(Progress::Complete(want)));
    }
}

/// Every bit of the header of a first datagram flipped in turn (first byte, version,
/// connection IDs and their lengths, token and Length fields): the datagram is rejected
/// without failing the attempt and without binding it to a wrong connection ID, so the
/// genuine datagram still completes it.
#[test]
fn a_damaged_header_does_not_bind_the_attempt() {
    for index in [2, 3] {
        let case = capture_case(index);
        let genuine = &case.datagrams[0];
        let header_len = 40.min(long_packet_spans(genuine)[0].len());
        for at in 0..header_len {
            for bit in 0..8 {
                let mut damaged = genuine.clone();
                damaged[at] ^= 1 << bit;
                let mut attempt = InitialAssembler::new(AssemblerConfig::default());
                let err = attempt
                    .handle_datagram(&damaged)
                    .expect_err("a damaged header never decrypts");
                assert!(!err.is_fatal(), "byte {at} bit {bit}: {err}");
                assert_eq!(attempt.connection(), None, "byte {at} bit {bit}");
                assert_eq!(attempt.buffered(), 0);
                match attempt.handle_datagram(genuine) {
                    Ok(Progress::Complete(info)) => assert!(case.is_answer(&info)),
                    other => panic!("byte {at} bit {bit}: {other:?}"),
                }
            }
        }
    }
}

/// Every truncation of a one-datagram ClientHello: an empty datagram holds no Initial; a
/// header cut short or a packet shorter than its Length field is a wire error; neither
/// leaves any state. A cut in the datagram padding after the packet changes nothing.
#[test]
fn every_truncation_of_a_one_packet_initial() {
    let mut datagrams: Vec<(Vec<u8>, &str, Vec<u8>)> = Vec::new();
    for index in [2, 3] {
        let case = capture_case(index);
        datagrams.push((
            case.datagrams[0].clone(),
            common::CORPUS[index].1,
            case.alpn[0].clone(),
        ));
    }
    for file in [
        "rfc9001-a2-client-initial.hex",
        "rfc9369-a2-client-initial.hex",
    ] {
        datagrams.push((common::hex_file(file), "example.com", b"alpn".to_vec()));
    }
    for (datagram, sni, alpn) in &datagrams {
        let end = long_packet_spans(datagram)[0].end;
        for cut in 0..=datagram.len() {
            let mut attempt = InitialAssembler::new(AssemblerConfig::default());
            let result = attempt.handle_datagram(&datagram[..cut]);
            if cut == 0 {
                assert_eq!(result, Err(InitialError::NotInitial));
            } else if cut < end {
                assert!(
                    matches!(
                        result,
                        Err(InitialError::Wire(
                            WireError::Truncated | WireError::BadLength
                        ))
                    ),
                    "cut {cut}: {result:?}"
                );
                assert_eq!((attempt.buffered(), attempt.connection()), (0, None));
            } else {
                let Ok(Progress::Complete(info)) = result else {
                    panic!("cut {cut} after the packet's end {end}: {result:?}");
                };
                assert_eq!(info.sni.as_deref(), Some(*sni));
                assert_eq!(&info.alpn, &vec![alpn.clone()]);
            }
        }
    }
}

/// Chromium's second datagram cut anywhere short of its packet's end, after the first:
/// rejected, and the genuine one then completes the attempt.
#[test]
fn every_truncation_of_chromiums_second_datagram() {
    let case = capture_case(0);
    let (first, second) = (&case.datagrams[0], &case.datagrams[1]);
    let end = long_packet_spans(second)[0].end;
    let mut scratch = Vec::new();
    for cut in 0..=second.len() {
        let mut attempt = InitialAssembler::new(AssemblerConfig::default());
        assert_eq!(
            attempt.handle_datagram_with(first, &mut scratch),
            Ok(Progress::NeedMore)
        );
        let buffered = attempt.buffered();
        let result = attempt.handle_datagram_with(&second[..cut], &mut scratch);
        if cut < end {
            assert!(
                matches!(result, Err(ref e) if !e.is_fatal()),
                "cut {cut}: {result:?}"
            );
            assert_eq!(attempt.buffered(), buffered);
            let result = attempt.handle_datagram_with(second, &mut scratch);
            assert!(
                matches!(result, Ok(Progress::Complete(ref info)) if case.is_answer(info)),
                "cut {cut}: {result:?}"
            );
        } else {
            assert!(
                matches!(result, Ok(Progress::Complete(ref info)) if case.is_answer(info)),
                "cut {cut}: {result:?}"
            );
        }
    }
}

/// Bytes that look like the start of a long header, to get past the first checks.
fn initial_looking() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<u8>(),
        prop_oneof![Just(1u32), Just(0x6b33_43cf), any::<u32>()],
        prop::collection::vec(any::<u8>(), 0..=24),
        prop::collection::vec(any::<u8>(), 0..=24),
        prop::collection::vec(any::<u8>(), 0..=8),
        0..2000u64,
        prop::collection::vec(any::<u8>(), 0..1400),
    )
        .prop_map(|(first, version, dcid, scid, token, length, rest)| {
            let mut d = vec![first | 0xc0];
            d.extend_from_slice(&version.to_be_bytes());
            d.push(dcid.len() as u8);
            d.extend_from_slice(&dcid);
            d.push(scid.len() as u8);
            d.extend_from_slice(&scid);
            put_varint(token.len() as u64, &mut d);
            d.extend_from_slice(&token);
            put_varint(length, &mut d);
            d.extend_from_slice(&rest);
            d
        })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Arbitrary bytes are a non-fatal error that leaves the attempt untouched: nothing
    /// buffered, no connection bound, and a genuine Initial afterwards completes it.
    #[test]
    fn random_bytes_leave_no_state(
        junk in prop_oneof![prop::collection::vec(any::<u8>(), 0..1500), initial_looking()],
        index in 2..4usize,
    ) {
        let case = capture_case(index);
        let mut attempt = InitialAssembler::new(AssemblerConfig::default());
        let result = attempt.handle_datagram(&junk);
        prop_assert!(matches!(result, Err(ref e) if !e.is_fatal()), "{:?}", result);
        prop_assert_eq!((attempt.buffered(), attempt.connection()), (0, None));
        match attempt.handle_datagram(&case.datagrams[0]) {
            Ok(Progress::Complete(info)) => prop_assert!(case.is_answer(&info)),
            other => prop_assert!(false, "{:?}", other),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Attacks with valid encryption
// ---------------------------------------------------------------------------------------

/// After a fatal error the attempt holds nothing and answers every later datagram,
/// genuine ones included, with the same error.
fn assert_stays_failed(attempt: &mut InitialAssembler, err: InitialError, version: QuicVersion) {
    assert!(err.is_fatal(), "{err}");
    assert_eq!(attempt.buffered(), 0);
    let genuine = sealed(version, &DCID, 1_000, &{
        let mut p = Vec::new();
        crypto_frame(0, &oracle_hello(version, false), &mut p);
        p
    });
    assert_eq!(attempt.handle_datagram(&genuine), Err(err));
    assert_eq!(attempt.buffered(), 0);
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 128,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// CRYPTO data reaching past `max_client_hello_len` fails the attempt with
    /// `Crypto(TooLarge)`, past 2^62 - 1 with `Frame(OffsetTooLarge)`; data ending
    /// exactly at the limit is accepted and fills the buffer to the limit, no further.
    #[test]
    fn crypto_data_past_the_limit(
        version in version(),
        limit in 128..20_000usize,
        len in 1..=64usize,
        at in prop_oneof![
            0..64u64,
            0..(1u64 << 40),
            ((1u64 << 62) - 200)..(1u64 << 62),
        ],
        data_byte in any::<u8>(),
    ) {
        const VARINT_MAX: u64 = (1 << 62) - 1;
        let config = AssemblerConfig { max_client_hello_len: limit, ..AssemblerConfig::default() };
        let offset = ((limit - len) as u64 + 1 + at).min(VARINT_MAX);
        let data = vec![data_byte; len];
        let mut payload = Vec::new();
        crypto_frame(offset, &data, &mut payload);
        let mut attempt = InitialAssembler::new(config);
        let err = attempt
            .handle_datagram(&sealed(version, &DCID, 0, &payload))
            .expect_err("past the limit");
        let expected = if offset + len as u64 > VARINT_MAX {
            InitialError::Frame(FrameError::OffsetTooLarge)
        } else {
            InitialError::Crypto(CryptoStreamError::TooLarge { limit })
        };
        prop_assert_eq!(err, expected);
        assert_stays_failed(&mut attempt, err, version);

        // The last bytes below the limit are fine.
        let mut attempt = InitialAssembler::new(config);
        let mut payload = Vec::new();
        crypto_frame((limit - len) as u64, &data, &mut payload);
        prop_assert_eq!(
            attempt.handle_datagram(&sealed(version, &DCID, 0, &payload)),
            Ok(Progress::NeedMore)
        );
        prop_assert_eq!(attempt.buffered(), limit);
    }

    /// A ClientHello whose handshake header declares more than the limit fails as soon as
    /// the header is in, with `ClientHello(TooLarge)` carrying the declared length; one
    /// declaring exactly the limit waits for more; a message that is not a ClientHello
    /// fails with `NotClientHello`.
    #[test]
    fn oversized_declared_client_hello(
        version in version(),
        limit in 64..20_000usize,
        over in prop_oneof![1..16usize, 1..(1usize << 24)],
        tail in prop::collection::vec(any::<u8>(), 0..60),
        not_hello in 2..=255u8,
    ) {
        let config = AssemblerConfig { max_client_hello_len: limit, ..AssemblerConfig::default() };
        let body = (limit - 4 + over).min((1 << 24) - 1);
        let mut message = vec![1];
        message.extend_from_slice(&(body as u32).to_be_bytes()[1..]);
        message.extend_from_slice(&tail);
        let mut payload = Vec::new();
        crypto_frame(0, &message, &mut payload);
        let mut attempt = InitialAssembler::new(config);
        let err = attempt.handle_datagram(&sealed(version, &DCID, 0, &payload)).unwrap_err();
        prop_assert_eq!(
            err,
            InitialError::ClientHello(ClientHelloError::TooLarge { len: 4 + body, limit })
        );
        assert_stays_failed(&mut attempt, err, version);

        message[1..4].copy_from_slice(&((limit - 4) as u32).to_be_bytes()[1..]);
        let mut payload = Vec::new();
        crypto_frame(0, &message, &mut payload);
        let mut attempt = InitialAssembler::new(config);
        prop_assert_eq!(
            attempt.handle_datagram(&sealed(version, &DCID, 0, &payload)),
            Ok(Progress::NeedMore)
        );

        message[0] = not_hello;
        let mut payload = Vec::new();
        crypto_frame(0, &message, &mut payload);
        let mut attempt = InitialAssembler::new(config);
        let err = attempt.handle_datagram(&sealed(version, &DCID, 0, &payload)).unwrap_err();
        prop_assert_eq!(err, InitialError::ClientHello(ClientHelloError::NotClientHello(not_hello)));
        assert_stays_failed(&mut attempt, err, version);
    }

    /// The attempt fails with `TooManyDatagrams` on the `max_datagrams`-th datagram that
    /// does not complete it, whether the earlier ones were retransmissions or junk, and
    /// stays failed; the same number of datagrams ending with the completing one succeeds.
    #[test]
    fn datagram_limit(
        version in version(),
        limit in 1..=40usize,
        junk_kinds in prop::collection::vec(any::<bool>(), 40),
    ) {
        let config = AssemblerConfig { max_datagrams: limit, ..AssemblerConfig::default() };
        let hello = oracle_hello(version, false);
        let half = hello.len() / 2;
        let retransmission = |pn: u64| {
            let mut payload = Vec::new();
            crypto_frame(0, &hello[..half], &mut payload);
            sealed(version, &DCID, pn, &payload)
        };
        let rest = {
            let mut payload = Vec::new();
            crypto_frame(half as u64, &hello[half..], &mut payload);
            sealed(version, &DCID, 100, &payload)
        };
        let whole = {
            let mut payload = Vec::new();
            crypto_frame(0, &hello, &mut payload);
            sealed(version, &DCID, 101, &payload)
        };
        let junk = vec![0x42u8; 1200];
        let earlier = |i: usize| if junk_kinds[i] { junk.clone() } else { retransmission(i as u64) };

        let mut attempt = InitialAssembler::new(config);
        for (i, &is_junk) in junk_kinds[..limit - 1].iter().enumerate() {
            let result = attempt.handle_datagram(&earlier(i));
            if is_junk {
                prop_assert_eq!(result, Err(InitialError::NotInitial));
            } else {
                prop_assert_eq!(result, Ok(Progress::NeedMore));
            }
        }
        let last = if junk_kinds[limit - 1] { junk.clone() } else { retransmission(99) };
        let err = attempt.handle_datagram(&last).unwrap_err();
        prop_assert_eq!(err, InitialError::TooManyDatagrams { limit });
        prop_assert!(err.is_fatal());
        prop_assert_eq!(attempt.handle_datagram(&rest), Err(err));
        prop_assert_eq!(attempt.buffered(), 0);

        let mut attempt = InitialAssembler::new(config);
        for i in 0..limit - 1 {
            let _ = attempt.handle_datagram(&earlier(i));
        }
        // Only the whole ClientHello completes an attempt that got no first half.
        let completing = if junk_kinds[..limit - 1].iter().all(|&j| j) { &whole } else { &rest };
        let result = attempt.handle_datagram(completing);
        prop_assert!(matches!(result, Ok(Progress::Complete(_))), "{:?}", result);
    }
}

/// Porter's documented reassembly rule, as a model: a range touching or overlapping
/// received ones merges with them; a disjoint one is refused once [`MAX_RANGES`] are held.
struct RangeModel {
    ranges: Vec<Range<u64>>,
}

impl RangeModel {
    fn insert(&mut self, r: Range<u64>) -> Result<(), CryptoStreamError> {
        if r.is_empty() {
            return Ok(());
        }
        let (touching, apart): (Vec<_>, Vec<_>) = self
            .ranges
            .iter()
            .cloned()
            .partition(|x| x.start <= r.end && r.start <= x.end);
        if touching.is_empty() && self.ranges.len() >= MAX_RANGES {
            return Err(CryptoStreamError::TooFragmented);
        }
        let start = touching.iter().map(|x| x.start).fold(r.start, u64::min);
        let end = touching.iter().map(|x| x.end).fold(r.end, u64::max);
        self.ranges = apart;
        self.ranges.push(start..end);
        Ok(())
    }
}

/// Feeds a ClientHello cut into `pieces` (sent in the given order, several per packet,
/// one packet per datagram) and checks every datagram's result against [`RangeModel`].
fn fragments_follow_the_model(version: QuicVersion, long: bool, pieces: &[Range<usize>]) {
    let hello = oracle_hello(version, long);
    let frames: Vec<(u64, Vec<u8>)> = pieces
        .iter()
        .map(|r| (r.start as u64, hello[r.clone()].to_vec()))
        .collect();
    let datagrams = sealed_frames(version, &DCID, &frames, 1150);
    let config = AssemblerConfig {
        max_datagrams: datagrams.len() + 1,
        ..AssemblerConfig::default()
    };
    let want = ClientHelloInfo {
        sni: Some("robust.example".into()),
        alpn: oracle_alpn(long),
        ech: false,
        quic_transport_parameters: true,
    };
    let mut model = RangeModel { ranges: Vec::new() };
    let mut attempt = InitialAssembler::new(config);
    let mut failed = None;
    let mut complete = false;
    for (i, (datagram, carried)) in datagrams.iter().enumerate() {
        let result = attempt.handle_datagram(datagram);
        assert!(attempt.buffered() <= hello.len());
        if let Some(err) = failed {
            assert_eq!(result, Err(err), "datagram {i}");
            continue;
        }
        if complete {
            assert_eq!(result, Ok(Progress::Complete(want.clone())), "datagram {i}");
            continue;
        }
        let refused = pieces[carried.clone()]
            .iter()
            .map(|r| model.insert(r.start as u64..r.end as u64))
            .find_map(Result::err);
        if let Some(e) = refused {
            let err = InitialError::Crypto(e);
            assert_eq!(result, Err(err), "datagram {i}");
            assert_eq!(attempt.buffered(), 0);
            failed = Some(err);
        } else if covers(model.ranges.iter().cloned(), hello.len() as u64) {
            assert_eq!(result, Ok(Progress::Complete(want.clone())), "datagram {i}");
            complete = true;
        } else {
            assert_eq!(result, Ok(Progress::NeedMore), "datagram {i}");
        }
    }
}

/// About 1,500 one-byte CRYPTO frames in order, and in reverse order: every new byte
/// touches the received range, so the stream never fragments and the ClientHello
/// completes.
#[test]
fn thousands_of_one_byte_fragments_in_order() {
    for version in QuicVersion::ALL {
        let len = oracle_hello(version, true).len();
        assert!(len > 1_400, "{len}");
        let forward: Vec<_> = (0..len).map(|i| i..i + 1).collect();
        let backward: Vec<_> = forward.iter().rev().cloned().collect();
        fragments_follow_the_model(version, true, &forward);
        fragments_follow_the_model(version, true, &backward);
    }
}

/// Every other byte first, as one-byte fragments: the 65th disjoint range is refused
/// with `TooFragmented`, in the datagram that carries it.
#[test]
fn disjoint_one_byte_fragments_hit_the_range_limit() {
    let len = oracle_hello(QuicVersion::V1, true).len();
    let pieces: Vec<_> = (0..len)
        .step_by(2)
        .chain((1..len).step_by(2))
        .map(|i| i..i + 1)
        .collect();
    fragments_follow_the_model(QuicVersion::V1, true, &pieces);
    // And the model agrees it must fail (not merely that porter and the model agree).
    let mut model = RangeModel { ranges: Vec::new() };
    let first_failure = pieces
        .iter()
        .position(|r| model.insert(r.start as u64..r.end as u64).is_err());
    assert_eq!(first_failure, Some(MAX_RANGES));
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 96,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// A ClientHello cut into fragments of random sizes (down to single bytes) sent in a
    /// random order: every datagram's result is what the range model predicts, complete
    /// or `TooFragmented` at the predicted datagram, and the buffer stays bounded.
    #[test]
    fn shuffled_small_fragments_follow_the_model(
        version in version(),
        long in any::<bool>(),
        max_piece in prop_oneof![Just(1usize), Just(3), Just(16), Just(64)],
        dice in prop::collection::vec(any::<u32>(), 0..2000),
    ) {
        let len = oracle_hello(version, long).len();
        let mut dice = Dice::new(dice);
        let mut pieces = Vec::new();
        let mut at = 0;
        while at < len {
            let size = 1 + dice.below(max_piece);
            pieces.push(at..(at + size).min(len));
            at += size;
        }
        dice.shuffle(&mut pieces);
        fragments_follow_the_model(version, long, &pieces);
    }

    /// Random CRYPTO frames (any offset up to twice the limit and sometimes far past it,
    /// any length, genuine ClientHello bytes where they exist) under a random limit: the
    /// buffer never exceeds the limit, the only fatal errors are the typed limit ones,
    /// a failed attempt stays failed and empty, and completion gives the right answer
    /// only once the ClientHello is covered.
    #[test]
    fn random_crypto_frames_stay_bounded(
        version in version(),
        limit in 64..4096usize,
        frames in prop::collection::vec(
            (prop_oneof![4 => 0..8192u64, 1 => any::<u64>()], 0..700usize),
            1..40,
        ),
        capacity in 100..1300usize,
    ) {
        let hello = oracle_hello(version, false);
        let frames: Vec<(u64, Vec<u8>)> = frames
            .into_iter()
            .map(|(offset, len)| {
                let offset = offset % ((1 << 62) - len as u64);
                let data = (offset..offset + len as u64)
                    .map(|i| hello.get(i as usize).copied().unwrap_or(0xaa))
                    .collect();
                (offset, data)
            })
            .collect();
        let datagrams = sealed_frames(version, &DCID, &frames, capacity);
        let config = AssemblerConfig {
            max_client_hello_len: limit,
            max_datagrams: datagrams.len() + 1,
        };
        let mut attempt = InitialAssembler::new(config);
        let mut failed: Option<InitialError> = None;
        let mut done: Option<ClientHelloInfo> = None;
        let mut fed: Vec<Range<u64>> = Vec::new();
        for (datagram, carried) in &datagrams {
            let result = attempt.handle_datagram(datagram);
            prop_assert!(attempt.buffered() <= limit);
            if let Some(err) = failed {
                prop_assert_eq!(result, Err(err));
                continue;
            }
            if let Some(info) = &done {
                prop_assert_eq!(result, Ok(Progress::Complete(info.clone())));
                continue;
            }
            let carried = &frames[carried.clone()];
            fed.extend(carried.iter().map(|(o, d)| *o..*o + d.len() as u64));
            // A frame reaching past the limit always fails the attempt.
            if carried.iter().any(|(o, d)| !d.is_empty() && o + d.len() as u64 > limit as u64) {
                prop_assert!(result.is_err(), "{:?}", result);
            }
            match result {
                Ok(Progress::NeedMore) => {}
                Ok(Progress::Complete(info)) => {
                    prop_assert_eq!(info.sni.as_deref(), Some("robust.example"));
                    prop_assert!(hello.len() <= limit);
                    prop_assert!(covers(fed.iter().cloned(), hello.len() as u64));
                    done = Some(info);
                }
                Err(err) => {
                    let typed = matches!(
                        err,
                        InitialError::Crypto(CryptoStreamError::TooLarge { limit: l }) if l == limit
                    ) || err == InitialError::Crypto(CryptoStreamError::TooFragmented)
                        || matches!(
                            err,
                            InitialError::ClientHello(ClientHelloError::TooLarge { limit: l, .. })
                                if l == limit
                        )
                        || err == InitialError::Frame(FrameError::OffsetTooLarge);
                    prop_assert!(typed, "{}", err);
                    prop_assert_eq!(attempt.buffered(), 0);
                    failed = Some(err);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The parsers on their own
// ---------------------------------------------------------------------------------------

/// What any successful parse must look like.
fn assert_sane(info: &ClientHelloInfo) {
    if let Some(sni) = &info.sni {
        assert_eq!(
            normalize_host_name(sni.as_bytes()).as_deref(),
            Some(&sni[..])
        );
        assert!(!sni.ends_with('.') && sni.len() <= 253);
    }
    assert!(info.alpn.iter().all(|p| (1..=255).contains(&p.len())));
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Arbitrary bytes: shorter than a handshake header is `Malformed`, another message
    /// type is `NotClientHello`, and whatever parses is a sane result.
    #[test]
    fn parse_client_hello_on_arbitrary_bytes(
        bytes in prop::collection::vec(any::<u8>(), 0..600),
        as_hello in any::<bool>(),
    ) {
        let mut bytes = bytes;
        if as_hello && bytes.len() >= 4 {
            bytes[0] = 1;
            let body = (bytes.len() - 4) as u32;
            bytes[1..4].copy_from_slice(&body.to_be_bytes()[1..]);
        }
        let result = parse_client_hello(&bytes);
        match bytes.first() {
            _ if bytes.len() < 4 => prop_assert_eq!(result, Err(ClientHelloError::Malformed)),
            Some(&b) if b != 1 => prop_assert_eq!(result, Err(ClientHelloError::NotClientHello(b))),
            _ => {
                if let Ok(info) = result {
                    assert_sane(&info);
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 128,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// A real ClientHello with bytes overwritten: never a panic, and whatever parses is
    /// sane; untouched, with junk after it, it parses to exactly what was sent.
    #[test]
    fn parse_client_hello_on_damaged_real_hellos(
        version in version(),
        long in any::<bool>(),
        edits in prop::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        junk in prop::collection::vec(any::<u8>(), 0..32),
    ) {
        let hello = oracle_hello(version, long);
        let mut with_junk = hello.clone();
        with_junk.extend_from_slice(&junk);
        let info = parse_client_hello(&with_junk).expect("a genuine ClientHello");
        prop_assert_eq!(info.sni.as_deref(), Some("robust.example"));
        prop_assert_eq!(&info.alpn, &oracle_alpn(long));
        prop_assert!(info.quic_transport_parameters && !info.ech);

        let mut damaged = hello.clone();
        for (at, b) in edits {
            let at = at % damaged.len();
            damaged[at] = b;
        }
        if let Ok(info) = parse_client_hello(&damaged) {
            assert_sane(&info);
        }
    }
}

/// Every strict prefix of a real ClientHello is `Malformed` (the declared length runs
/// past it), or `NotClientHello` never: the first byte is intact.
#[test]
fn every_prefix_of_a_real_hello_is_malformed() {
    for version in QuicVersion::ALL {
        let hello = oracle_hello(version, true);
        for cut in 0..hello.len() {
            assert_eq!(
                parse_client_hello(&hello[..cut]),
                Err(ClientHelloError::Malformed),
                "cut {cut}"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// `Packets` on arbitrary bytes: packets come back to back from the start of the
    /// datagram, an error ends the iteration, connection IDs of versions 1 and 2 are at
    /// most 20 bytes, and the packet number offset lies inside the packet.
    #[test]
    fn packets_on_arbitrary_bytes(
        bytes in prop_oneof![prop::collection::vec(any::<u8>(), 0..400), initial_looking()],
    ) {
        let base = bytes.as_ptr() as usize;
        let mut at = 0;
        let mut it = Packets::new(&bytes);
        let mut count = 0;
        while let Some(item) = it.next() {
            count += 1;
            prop_assert!(count <= bytes.len());
            match item {
                Err(_) => {
                    prop_assert!(it.next().is_none());
                    break;
                }
                Ok(Packet::VersionNegotiation { .. }) => {
                    prop_assert!(it.next().is_none());
                    break;
                }
                Ok(packet) => {
                    let b = packet.bytes();
                    prop_assert_eq!(b.as_ptr() as usize - base, at);
                    prop_assert!(!b.is_empty());
                    at += b.len();
                    if let Packet::Long(p) = packet {
                        prop_assert!(p.dcid.len() <= 20 && p.scid.len() <= 20);
                        prop_assert!(p.pn_offset <= p.bytes.len());
                    }
                }
            }
        }
        prop_assert!(at + it.trailing() <= bytes.len());
    }
}

/// One long-header packet to encode for the `Packets` round trip.
#[derive(Clone, Debug)]
struct LongSpec {
    version: Version,
    ty: LongType,
    low_bits: u8,
    dcid: Vec<u8>,
    scid: Vec<u8>,
    token: Vec<u8>,
    body: Vec<u8>,
    width: usize,
}

fn long_spec() -> impl Strategy<Value = LongSpec> {
    (
        prop_oneof![Just(Version::V1), Just(Version::V2)],
        prop_oneof![
            Just(LongType::Initial),
            Just(LongType::ZeroRtt),
            Just(LongType::Handshake)
        ],
        0..16u8,
        prop::collection::vec(any::<u8>(), 0..=20),
        prop::collection::vec(any::<u8>(), 0..=20),
        prop::collection::vec(any::<u8>(), 0..=30),
        prop::collection::vec(any::<u8>(), 0..300),
        prop_oneof![Just(0usize), Just(1), Just(2), Just(4), Just(8)],
    )
        .prop_map(
            |(version, ty, low_bits, dcid, scid, token, body, width)| LongSpec {
                version,
                ty,
                low_bits,
                dcid,
                scid,
                token: if ty == LongType::Initial {
                    token
                } else {
                    Vec::new()
                },
                body,
                width,
            },
        )
}

impl LongSpec {
    /// Encodes the packet by hand; returns the offset of the packet number.
    fn encode(&self, out: &mut Vec<u8>) -> usize {
        let start = out.len();
        let type_bits = match (self.version, self.ty) {
            (Version::V1, LongType::Initial) => 0,
            (Version::V1, LongType::ZeroRtt) | (Version::V2, LongType::Initial) => 1,
            (Version::V1, LongType::Handshake) | (Version::V2, LongType::ZeroRtt) => 2,
            _ => 3,
        };
        out.push(0xc0 | type_bits << 4 | self.low_bits);
        let wire: u32 = match self.version {
            Version::V1 => 1,
            Version::V2 => 0x6b33_43cf,
        };
        out.extend_from_slice(&wire.to_be_bytes());
        out.push(self.dcid.len() as u8);
        out.extend_from_slice(&self.dcid);
        out.push(self.scid.len() as u8);
        out.extend_from_slice(&self.scid);
        if self.ty == LongType::Initial {
            put_varint(self.token.len() as u64, out);
            out.extend_from_slice(&self.token);
        }
        put_varint_width(self.body.len() as u64, self.width, out);
        let pn_offset = out.len() - start;
        out.extend_from_slice(&self.body);
        pn_offset
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Coalesced long-header packets encoded by hand, then datagram padding or a short
    /// header packet: `Packets` reads back every field of every packet, then the short
    /// packet or the padding length.
    #[test]
    fn packets_read_back_what_was_coalesced(
        specs in prop::collection::vec(long_spec(), 1..5),
        tail in prop_oneof![
            Just(Vec::new()),
            prop::collection::vec(0..0x40u8, 1..100),
            (0x40..0x80u8, prop::collection::vec(any::<u8>(), 0..100))
                .prop_map(|(first, rest)| { let mut v = vec![first]; v.extend(rest); v }),
        ],
    ) {
        let mut datagram = Vec::new();
        let mut expected = Vec::new();
        for spec in &specs {
            let start = datagram.len();
            let pn_offset = spec.encode(&mut datagram);
            expected.push((start..datagram.len(), pn_offset));
        }
        datagram.extend_from_slice(&tail);
        let mut it = Packets::new(&datagram);
        for (spec, (span, pn_offset)) in specs.iter().zip(&expected) {
            let Some(Ok(Packet::Long(p))) = it.next() else {
                return Err(TestCaseError::fail("a long packet"));
            };
            prop_assert_eq!(p.version, spec.version);
            prop_assert_eq!(p.ty, spec.ty);
            prop_assert_eq!(p.dcid, &spec.dcid[..]);
            prop_assert_eq!(p.scid, &spec.scid[..]);
            prop_assert_eq!(p.token, &spec.token[..]);
            prop_assert_eq!(p.pn_offset, *pn_offset);
            prop_assert_eq!(p.bytes, &datagram[span.clone()]);
        }
        let is_short = tail.first().is_some_and(|b| b & 0x40 != 0);
        if is_short {
            let Some(Ok(Packet::Short { bytes })) = it.next() else {
                return Err(TestCaseError::fail("a short packet"));
            };
            prop_assert_eq!(bytes, &tail[..]);
        }
        prop_assert!(it.next().is_none());
        prop_assert_eq!(it.trailing(), if is_short { 0 } else { tail.len() });
    }
}

/// A frame to encode for the `InitialFrames` round trip.
#[derive(Clone, Debug)]
enum FrameSpec {
    Padding(usize),
    Ping,
    Ack {
        largest: u64,
        first: u64,
        ranges: Vec<(u64, u64)>,
        ecn: bool,
    },
    Crypto(u64, Vec<u8>),
    Close(u64, u64, Vec<u8>),
}

fn frame_spec() -> impl Strategy<Value = FrameSpec> {
    prop_oneof![
        (1..40usize).prop_map(FrameSpec::Padding),
        Just(FrameSpec::Ping),
        (
            0..(1u64 << 40),
            any::<u64>(),
            prop::collection::vec((0..100u64, 0..100u64), 0..5),
            any::<bool>()
        )
            .prop_map(|(largest, first, ranges, ecn)| FrameSpec::Ack {
                largest,
                first: first % (largest + 1),
                ranges,
                ecn,
            }),
        (
            prop_oneof![0..20_000u64, 0..(1u64 << 61)],
            prop::collection::vec(any::<u8>(), 0..100)
        )
            .prop_map(|(o, d)| FrameSpec::Crypto(o, d)),
        (
            0..(1u64 << 62),
            0..(1u64 << 62),
            prop::collection::vec(any::<u8>(), 0..30)
        )
            .prop_map(|(c, t, r)| FrameSpec::Close(c, t, r)),
    ]
}

impl FrameSpec {
    /// Encodes the frame with varints of random widths; returns what porter should read.
    fn encode<'a>(&self, widths: &mut Dice, out: &mut Vec<u8>) -> InitialFrame<'a> {
        let mut v = |value: u64, out: &mut Vec<u8>| {
            put_varint_width(value, [0, 1, 2, 4, 8][widths.below(5)], out);
        };
        match self {
            Self::Padding(n) => {
                out.resize(out.len() + n, 0);
                InitialFrame::Padding(*n)
            }
            Self::Ping => {
                out.push(0x01);
                InitialFrame::Ping
            }
            Self::Ack {
                largest,
                first,
                ranges,
                ecn,
            } => {
                // Keep only the ranges that stay at or above packet number 0.
                let mut smallest = largest - first;
                let mut kept = Vec::new();
                for &(gap, len) in ranges {
                    if gap + 2 + len > smallest {
                        break;
                    }
                    smallest -= gap + 2 + len;
                    kept.push((gap, len));
                }
                out.push(if *ecn { 0x03 } else { 0x02 });
                v(*largest, out);
                v(25, out);
                v(kept.len() as u64, out);
                v(*first, out);
                for (gap, len) in kept {
                    v(gap, out);
                    v(len, out);
                }
                if *ecn {
                    for count in [1, 2, 3] {
                        v(count, out);
                    }
                }
                InitialFrame::Ack
            }
            Self::Crypto(offset, data) => {
                out.push(0x06);
                v(*offset, out);
                v(data.len() as u64, out);
                out.extend_from_slice(data);
                InitialFrame::Crypto {
                    offset: *offset,
                    data: &[],
                }
            }
            Self::Close(code, frame_type, reason) => {
                out.push(0x1c);
                v(*code, out);
                v(*frame_type, out);
                v(reason.len() as u64, out);
                out.extend_from_slice(reason);
                InitialFrame::ConnectionClose { error_code: *code }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Frames encoded by hand (varints in random widths), optionally followed by a frame
    /// type Initial packets may not carry: `InitialFrames` reads back each frame (runs of
    /// PADDING merged), CRYPTO data included, then the typed refusal, then nothing.
    #[test]
    fn frames_read_back_what_was_written(
        specs in prop::collection::vec(frame_spec(), 0..12),
        widths in prop::collection::vec(any::<u32>(), 0..80),
        forbidden in prop_oneof![
            Just(None),
            prop_oneof![4..6u64, 7..0x1cu64, 0x1d..0x40u64, 0x40..0x4000u64].prop_map(Some),
        ],
    ) {
        let mut widths = Dice::new(widths);
        let mut payload = Vec::new();
        let mut expected: Vec<(InitialFrame<'_>, Option<Vec<u8>>)> = Vec::new();
        for spec in &specs {
            let frame = spec.encode(&mut widths, &mut payload);
            let data = match spec {
                FrameSpec::Crypto(_, d) => Some(d.clone()),
                _ => None,
            };
            match (expected.last_mut(), frame) {
                (Some((InitialFrame::Padding(n), _)), InitialFrame::Padding(m)) => *n += m,
                (_, frame) => expected.push((frame, data)),
            }
        }
        if let Some(ty) = forbidden {
            put_varint(ty, &mut payload);
        }
        let mut it = InitialFrames::new(&payload);
        for (want, data) in &expected {
            let got = it.next();
            match (want, got) {
                (InitialFrame::Crypto { offset, .. }, Some(Ok(InitialFrame::Crypto { offset: o, data: d }))) => {
                    prop_assert_eq!(*offset, o);
                    prop_assert_eq!(Some(d.to_vec()), data.clone());
                }
                (want, got) => prop_assert_eq!(Some(Ok(*want)), got),
            }
        }
        if let Some(ty) = forbidden {
            prop_assert_eq!(it.next(), Some(Err(FrameError::NotAllowed(ty))));
        }
        prop_assert_eq!(it.next(), None);
    }

    /// `InitialFrames` on arbitrary bytes: at most one item per byte, CRYPTO data inside
    /// the payload, PADDING runs of at least one byte, nothing after an error.
    #[test]
    fn frames_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let range = bytes.as_ptr_range();
        let mut it = InitialFrames::new(&bytes);
        let mut count = 0;
        while let Some(item) = it.next() {
            count += 1;
            prop_assert!(count <= bytes.len());
            match item {
                Ok(InitialFrame::Crypto { data, .. }) => {
                    let d = data.as_ptr_range();
                    prop_assert!(range.start <= d.start && d.end <= range.end);
                }
                Ok(InitialFrame::Padding(n)) => prop_assert!(n >= 1),
                Ok(_) => {}
                Err(_) => {
                    prop_assert!(it.next().is_none());
                    break;
                }
            }
        }
    }
}
