//! The `client_hello` target: the ClientHello parser alone.

use arbitrary::{Arbitrary, Unstructured};

use porter_core::client_hello::{
    handshake_message_len, normalize_host_name, parse_client_hello, ClientHelloError,
    ClientHelloInfo,
};
use porter_core::RouteName;
use porter_sim::DescribedHello;

/// Parses `data` as a ClientHello. Panics when an invariant breaks.
///
/// The first byte picks the form: `0 mod 3` parses the rest as is; `1 mod 3` puts a
/// valid ClientHello handshake header in front of it; `2 mod 3` decodes it as a
/// description of a ClientHello, builds that, and requires the parse to give exactly what
/// the description says. Besides, the rest always goes through
/// [`normalize_host_name`].
///
/// Whatever parses yields a normalised SNI (ASCII lower case, no trailing dot, a valid
/// DNS name that routes as an exact route of the same name) and non-empty ALPN names;
/// bytes after the declared message length change nothing.
pub fn client_hello(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    check_normalize(rest);
    match mode % 3 {
        0 => {
            let _ = check_parse(rest);
        }
        1 => {
            let mut msg = vec![1];
            let len = rest.len().min(0xff_ffff) as u32;
            msg.extend_from_slice(&len.to_be_bytes()[1..]);
            msg.extend_from_slice(rest);
            let _ = check_parse(&msg);
        }
        _ => {
            let Ok(spec) = DescribedHello::arbitrary(&mut Unstructured::new(rest)) else {
                return;
            };
            let (msg, expected) = spec.build();
            let got = check_parse(&msg);
            assert_eq!(got, expected, "a built ClientHello parses as described");
        }
    }
}

fn check_parse(msg: &[u8]) -> Result<ClientHelloInfo, ClientHelloError> {
    let result = parse_client_hello(msg);
    match handshake_message_len(msg) {
        None => assert_eq!(result, Err(ClientHelloError::Malformed)),
        Some(Err(e)) => {
            assert_eq!(e, ClientHelloError::NotClientHello(msg[0]));
            assert_ne!(msg[0], 1);
            assert_eq!(result, Err(e));
        }
        Some(Ok(len)) => {
            assert_eq!(msg[0], 1);
            if len > msg.len() {
                assert_eq!(
                    result,
                    Err(ClientHelloError::Malformed),
                    "truncated message"
                );
            } else {
                // Bytes past the message do not matter.
                let mut longer = msg[..len].to_vec();
                assert_eq!(parse_client_hello(&longer), result, "message alone");
                longer.extend_from_slice(&[0xff, 0, 1]);
                assert_eq!(parse_client_hello(&longer), result, "with trailing bytes");
            }
        }
    }
    if let Ok(info) = &result {
        if let Some(sni) = &info.sni {
            check_normalised(sni);
            let name = RouteName::parse(sni);
            assert_eq!(
                name.as_ref().map(RouteName::exact),
                Ok(Some(sni.as_str())),
                "a parsed SNI is a valid exact route name"
            );
            assert_eq!(
                name.map(|n| n.to_string()).as_ref(),
                Ok(sni),
                "an exact route name reads as its SNI"
            );
        }
        for name in &info.alpn {
            assert!(!name.is_empty() && name.len() <= 255, "ALPN name length");
        }
    }
    result
}

fn check_normalize(name: &[u8]) {
    if let Some(n) = normalize_host_name(name) {
        check_normalised(&n);
        assert!(
            name.eq_ignore_ascii_case(n.as_bytes())
                || name.eq_ignore_ascii_case(format!("{n}.").as_bytes()),
            "normalising only lowers case and drops one trailing dot"
        );
    }
}

/// A normalised name: 1 to 253 bytes of lower-case letters, digits, `-`, `_` and dots,
/// labels of 1 to 63 bytes not starting or ending with `-`, a last label not all digits,
/// and a fixed point of [`normalize_host_name`].
fn check_normalised(name: &str) {
    assert!(
        (1..=253).contains(&name.len()),
        "name length {}",
        name.len()
    );
    assert!(
        name.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b)),
        "name characters: {name:?}"
    );
    let labels: Vec<&str> = name.split('.').collect();
    for label in &labels {
        assert!((1..=63).contains(&label.len()), "label length in {name:?}");
        assert!(
            !label.starts_with('-') && !label.ends_with('-'),
            "hyphen in {name:?}"
        );
    }
    let last = labels.last().expect("split yields at least one label");
    assert!(
        !last.bytes().all(|b| b.is_ascii_digit()),
        "numeric TLD {name:?}"
    );
    assert_eq!(normalize_host_name(name.as_bytes()).as_deref(), Some(name));
}
