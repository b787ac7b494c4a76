//! An independent oracle for reading the ClientHello out of client Initials.
//!
//! rustls (ring provider) writes real QUIC ClientHellos for random server names and ALPN
//! lists, and rustls' own Initial keys protect the packets (see `rustls_client`), so
//! neither the TLS encoding nor the packet protection comes from porter. The CRYPTO stream
//! is cut into random frames, partly sent twice, shuffled over one to four or more
//! packets with PING and PADDING between frames, packets coalesced or not, datagrams
//! padded to 1200 bytes inside or after the packets, and the datagrams are fed to
//! porter's `InitialAssembler` in random order. After every datagram the assembler must
//! say `NeedMore` exactly while the CRYPTO data fed so far leaves a hole, and then give
//! exactly the server name (lower case, no trailing dot) and ALPN list that were sent.

mod rustls_client;

use proptest::prelude::*;
use rustls_client::{build_flight, client_hello, covers, Dice, FlightSpec, QuicVersion};

use porter_core::{AssemblerConfig, ClientHelloInfo, InitialAssembler, Progress};

/// A DNS label of 1 to 63 letters, digits, underscores or inner hyphens, in mixed case.
fn label(max_inner: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9_]".prop_map(String::from),
        proptest::string::string_regex(&format!(
            "[a-zA-Z0-9_][a-zA-Z0-9_-]{{0,{max_inner}}}[a-zA-Z0-9_]"
        ))
        .expect("valid regex"),
    ]
}

/// A random valid host name, sometimes with a trailing dot. The last label starts with a
/// letter so the name cannot read as an IPv4 address or a number.
fn server_name() -> impl Strategy<Value = String> {
    let labels = prop::collection::vec(prop_oneof![4 => label(14), 1 => label(61)], 0..5);
    let last = "[a-zA-Z]([a-zA-Z0-9-]{0,12}[a-zA-Z0-9])?";
    (labels, last, any::<bool>())
        .prop_map(|(mut labels, last, dot)| {
            labels.push(last);
            let mut name = labels.join(".");
            if dot {
                name.push('.');
            }
            name
        })
        .prop_filter("at most 253 bytes", |name| name.len() <= 253)
}

/// One to eight ALPN protocol names of arbitrary bytes: mostly short, and a quarter of
/// the time long names (128 bytes up to the 255-byte maximum) that push the ClientHello past one
/// packet.
fn alpn_list() -> impl Strategy<Value = Vec<Vec<u8>>> {
    let short = prop::collection::vec(prop::collection::vec(any::<u8>(), 1..=16), 1..=8);
    let long = prop::collection::vec(prop::collection::vec(any::<u8>(), 128..=255), 4..=8);
    prop_oneof![3 => short, 1 => long]
}

fn version() -> impl Strategy<Value = QuicVersion> {
    prop_oneof![Just(QuicVersion::V1), Just(QuicVersion::V2)]
}

fn flight_spec() -> impl Strategy<Value = FlightSpec> {
    (
        version(),
        prop::collection::vec(any::<u8>(), 0..=20),
        prop::collection::vec(any::<u8>(), 0..=20),
        prop_oneof![
            3 => Just(Vec::new()),
            1 => prop::collection::vec(any::<u8>(), 1..=64),
        ],
    )
        .prop_map(|(version, dcid, scid, token)| FlightSpec {
            version,
            dcid,
            scid,
            token,
        })
}

/// What porter must report for a ClientHello rustls built for `name` and `alpn`.
fn expected(name: &str, alpn: &[Vec<u8>]) -> ClientHelloInfo {
    ClientHelloInfo {
        sni: Some(name.trim_end_matches('.').to_ascii_lowercase()),
        alpn: alpn.to_vec(),
        ech: false,
        quic_transport_parameters: true,
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn assembler_reads_what_rustls_wrote(
        spec in flight_spec(),
        name in server_name(),
        alpn in alpn_list(),
        transport_params in prop::collection::vec(any::<u8>(), 0..=96),
        dice in prop::collection::vec(any::<u32>(), 0..400),
    ) {
        let hello = client_hello(spec.version, &name, &alpn, &transport_params);
        let mut dice = Dice::new(dice);
        let mut datagrams = build_flight(&mut dice, &spec, &hello);
        dice.shuffle(&mut datagrams);
        let want = expected(&name, &alpn);

        let mut attempt = InitialAssembler::new(AssemblerConfig::default());
        let mut fed = Vec::new();
        let mut completed_at = None;
        for (i, d) in datagrams.iter().enumerate() {
            fed.extend(d.crypto());
            let progress = attempt.handle_datagram(&d.bytes);
            if covers(fed.iter().cloned(), hello.len() as u64) {
                prop_assert_eq!(progress, Ok(Progress::Complete(want.clone())), "datagram {}", i);
                completed_at.get_or_insert(i + 1);
            } else {
                prop_assert_eq!(progress, Ok(Progress::NeedMore), "datagram {}", i);
                prop_assert!(attempt.buffered() <= hello.len());
            }
        }
        // Once complete, the answer stays; datagrams after completion are not counted.
        prop_assert_eq!(attempt.handle_datagram(&datagrams[0].bytes), Ok(Progress::Complete(want)));
        prop_assert_eq!(Some(attempt.datagrams()), completed_at);
    }
}

/// The oracle's generators reach the shapes they claim to: ClientHellos over several
/// packets and several datagrams, coalesced packets, both versions, names with a trailing
/// dot. Without this the property above could pass while testing only easy cases.
#[test]
fn generators_reach_multi_packet_flights() {
    let long_alpn: Vec<Vec<u8>> = (0..8u8).map(|i| vec![b'a' + i; 255]).collect();
    for version in QuicVersion::ALL {
        let hello = client_hello(
            version,
            "Big.Example.",
            &long_alpn,
            &[0x01, 0x02, 0x40, 0x64],
        );
        assert!(hello.len() > 2 * 1000, "{} bytes", hello.len());
        let spec = FlightSpec {
            version,
            dcid: vec![0x5a; 8],
            scid: Vec::new(),
            token: Vec::new(),
        };
        // All-zero dice: the simplest flight, one packet per datagram for this size.
        let flight = build_flight(&mut Dice::new(Vec::new()), &spec, &hello);
        assert!(flight.len() >= 2, "{} datagrams", flight.len());
        // Over a few pseudo-random dice, every shape shows up.
        let (mut coalesced, mut padded_after, mut one_datagram) = (false, false, false);
        for seed in 1..=40u32 {
            let values = (0..400u32)
                .map(|i| (seed * 7919 + i).wrapping_mul(2_654_435_761))
                .collect();
            let flight = build_flight(&mut Dice::new(values), &spec, &hello);
            coalesced |= flight.iter().any(|d| d.packets.len() > 1);
            padded_after |= flight
                .iter()
                .any(|d| d.packets.last().unwrap().span.end < d.bytes.len());
            one_datagram |= flight.len() == 1;
        }
        assert!(coalesced && padded_after && one_datagram);
        let mut attempt = InitialAssembler::new(AssemblerConfig::default());
        let want = expected("Big.Example.", &long_alpn);
        let mut last = Ok(Progress::NeedMore);
        for d in flight.iter().rev() {
            last = attempt.handle_datagram(&d.bytes);
        }
        assert_eq!(last, Ok(Progress::Complete(want)));
        assert_eq!(
            last.unwrap(),
            Progress::Complete(ClientHelloInfo {
                sni: Some("big.example".into()),
                alpn: long_alpn.clone(),
                ech: false,
                quic_transport_parameters: true,
            })
        );
    }
}
