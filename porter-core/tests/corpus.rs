//! Real client Initials (Chromium 156, aioquic 1.7 v1 and v2; see tests/data/README.md)
//! yield the SNI and ALPN their captures were made with.

mod common;

use common::{capture, CORPUS};
use porter_core::{AssemblerConfig, InitialAssembler, InitialError, Progress};

fn assemble<'a>(datagrams: impl IntoIterator<Item = &'a [u8]>) -> (Progress, usize) {
    let mut attempt = InitialAssembler::new(AssemblerConfig::default());
    let mut fed = 0;
    for d in datagrams {
        fed += 1;
        match attempt.handle_datagram(d) {
            Ok(Progress::Complete(info)) => return (Progress::Complete(info), fed),
            Ok(Progress::NeedMore) => {}
            Err(e) => panic!("datagram {fed}: {e}"),
        }
    }
    (Progress::NeedMore, fed)
}

fn expect_complete(progress: Progress, sni: &str, alpn: &str) {
    let Progress::Complete(info) = progress else {
        panic!("ClientHello for {sni} not complete");
    };
    assert_eq!(info.sni.as_deref(), Some(sni));
    assert_eq!(info.alpn, vec![alpn.as_bytes().to_vec()]);
    assert!(info.quic_transport_parameters);
}

#[test]
fn every_capture_yields_its_sni_and_alpn() {
    for &(file, sni, alpn) in CORPUS {
        let datagrams = capture(file);
        let (progress, used) = assemble(datagrams.iter().map(|d| &d.bytes[..]));
        expect_complete(progress, sni, alpn);
        let expected = if file.starts_with("chromium") { 2 } else { 1 };
        assert_eq!(used, expected, "{file}: datagrams needed");
    }
}

#[test]
fn chromium_first_datagram_alone_needs_more() {
    for &(file, _, _) in CORPUS.iter().filter(|c| c.0.starts_with("chromium")) {
        let datagrams = capture(file);
        let mut attempt = InitialAssembler::new(AssemblerConfig::default());
        assert_eq!(
            attempt.handle_datagram(&datagrams[0].bytes),
            Ok(Progress::NeedMore),
            "{file}"
        );
        assert!(attempt.buffered() > 0);
    }
}

#[test]
fn reverse_order_works() {
    for &(file, sni, alpn) in CORPUS {
        let datagrams = capture(file);
        let (progress, _) = assemble(datagrams.iter().rev().map(|d| &d.bytes[..]));
        expect_complete(progress, sni, alpn);
        if datagrams.len() >= 2 && file.starts_with("chromium") {
            // The original two-datagram flight, second datagram first.
            let (progress, used) = assemble([&datagrams[1].bytes[..], &datagrams[0].bytes[..]]);
            assert_eq!(used, 2);
            expect_complete(progress, sni, alpn);
        }
    }
}

#[test]
fn retransmissions_do_not_confuse_the_assembler() {
    for &(file, sni, alpn) in CORPUS {
        let datagrams = capture(file);
        // Every datagram twice, interleaved with the first one again.
        let mut attempt = InitialAssembler::new(AssemblerConfig::default());
        let mut done = None;
        for d in datagrams.iter().chain(datagrams.iter()) {
            for bytes in [&d.bytes, &datagrams[0].bytes] {
                match attempt.handle_datagram(bytes) {
                    Ok(Progress::Complete(info)) => {
                        done.get_or_insert(info);
                    }
                    Ok(Progress::NeedMore) => {}
                    Err(e) => panic!("{file}: {e}"),
                }
            }
        }
        expect_complete(Progress::Complete(done.expect("complete")), sni, alpn);
    }
}

#[test]
fn datagram_limit_fails_an_attempt_that_never_completes() {
    let datagrams = capture("chromium-156-h3.json");
    let config = AssemblerConfig {
        max_datagrams: 3,
        ..AssemblerConfig::default()
    };
    let mut attempt = InitialAssembler::new(config);
    assert_eq!(
        attempt.handle_datagram(&datagrams[0].bytes),
        Ok(Progress::NeedMore)
    );
    assert_eq!(
        attempt.handle_datagram(&datagrams[0].bytes),
        Ok(Progress::NeedMore)
    );
    let err = attempt.handle_datagram(&datagrams[0].bytes).unwrap_err();
    assert_eq!(err, InitialError::TooManyDatagrams { limit: 3 });
    assert!(err.is_fatal());
    // A failed attempt stays failed.
    assert_eq!(attempt.handle_datagram(&datagrams[1].bytes), Err(err));
}

#[test]
fn client_hello_size_limit() {
    let datagrams = capture("chromium-156-h3.json");
    let config = AssemblerConfig {
        max_client_hello_len: 1500,
        ..AssemblerConfig::default()
    };
    let mut attempt = InitialAssembler::new(config);
    let err = attempt.handle_datagram(&datagrams[0].bytes).unwrap_err();
    assert!(err.is_fatal(), "{err}");
    assert!(attempt.buffered() <= 1500);
}
