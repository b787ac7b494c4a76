//! The TLS 1.3 ClientHello (RFC 8446 §4.1.2) as carried in QUIC's CRYPTO stream, read
//! only as far as routing needs: the server name (RFC 6066 §3), the ALPN list (RFC 7301),
//! and whether encrypted_client_hello and quic_transport_parameters (RFC 9001 §8.2) are
//! present. Every length is checked against its enclosing one; nothing is copied except
//! the SNI and ALPN values returned.

use thiserror::Error;

use crate::wire::Reader;

const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
const EXT_QUIC_TRANSPORT_PARAMETERS: u16 = 0x39;
/// Draft-era codepoint some older stacks still send.
const EXT_QUIC_TRANSPORT_PARAMETERS_DRAFT: u16 = 0xffa5;
const EXT_ENCRYPTED_CLIENT_HELLO: u16 = 0xfe0d;
const SNI_HOST_NAME: u8 = 0;

/// What a ClientHello says about where the connection wants to go.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientHelloInfo {
    /// The server name, normalised: lower case, no trailing dot, a valid DNS name.
    /// `None` when the ClientHello carries no server_name extension.
    pub sni: Option<String>,
    /// The ALPN protocol names in the client's order; empty when there is no ALPN
    /// extension.
    pub alpn: Vec<Vec<u8>>,
    /// Whether an encrypted_client_hello extension is present (the SNI seen is then the
    /// outer, public name).
    pub ech: bool,
    /// Whether the QUIC transport parameters extension is present (RFC 9001 requires it).
    pub quic_transport_parameters: bool,
}

impl ClientHelloInfo {
    /// The ALPN names as text, lossily converted (for logs and events).
    pub fn alpn_strings(&self) -> Vec<String> {
        self.alpn
            .iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect()
    }
}

/// Why bytes are not a usable ClientHello.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ClientHelloError {
    /// The first handshake message is not a ClientHello.
    #[error("handshake message type {0} is not a ClientHello")]
    NotClientHello(u8),
    /// A length field runs past its enclosing structure.
    #[error("ClientHello truncated or a length field is inconsistent")]
    Malformed,
    /// The ClientHello is longer than the configured limit.
    #[error("ClientHello of {len} bytes exceeds the {limit}-byte limit")]
    TooLarge {
        /// Its declared length, header included.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The server_name extension is malformed.
    #[error("malformed server_name extension")]
    BadServerNameExtension,
    /// The host name is not a valid DNS name.
    #[error("server name is not a valid DNS host name")]
    InvalidServerName,
    /// The ALPN extension is malformed (empty list or empty protocol name).
    #[error("malformed ALPN extension")]
    BadAlpn,
    /// An extension that routing reads appears twice (RFC 8446 §4.2 forbids it).
    #[error("duplicate extension {0:#06x}")]
    DuplicateExtension(u16),
}

/// The total length (4-byte header included) of the handshake message that starts
/// `prefix`, once at least its 4-byte header is there.
pub fn handshake_message_len(prefix: &[u8]) -> Option<Result<usize, ClientHelloError>> {
    let header = prefix.get(..4)?;
    if header[0] != HANDSHAKE_CLIENT_HELLO {
        return Some(Err(ClientHelloError::NotClientHello(header[0])));
    }
    let body = u32::from_be_bytes([0, header[1], header[2], header[3]]) as usize;
    Some(Ok(4 + body))
}

/// Parses a complete ClientHello handshake message (4-byte header included). Bytes after
/// the message are ignored.
pub fn parse_client_hello(msg: &[u8]) -> Result<ClientHelloInfo, ClientHelloError> {
    use ClientHelloError::Malformed;

    let len = match handshake_message_len(msg) {
        Some(len) => len?,
        None => return Err(Malformed),
    };
    let mut r = Reader::new(msg.get(4..len).ok_or(Malformed)?);
    let _legacy_version = r.u16().ok_or(Malformed)?;
    r.skip(32).ok_or(Malformed)?; // random
    let session_id_len = r.u8().ok_or(Malformed)?;
    if session_id_len > 32 {
        return Err(Malformed);
    }
    r.skip(usize::from(session_id_len)).ok_or(Malformed)?;
    let suites_len = r.u16().ok_or(Malformed)?;
    if suites_len < 2 || suites_len % 2 != 0 {
        return Err(Malformed);
    }
    r.skip(usize::from(suites_len)).ok_or(Malformed)?;
    let compression_len = r.u8().ok_or(Malformed)?;
    if compression_len < 1 {
        return Err(Malformed);
    }
    r.skip(usize::from(compression_len)).ok_or(Malformed)?;

    let mut info = ClientHelloInfo::default();
    if r.is_empty() {
        // A ClientHello without extensions is legal TLS (though not QUIC); nothing to read.
        return Ok(info);
    }
    let ext_len = r.u16().ok_or(Malformed)?;
    let mut exts = r.sub(usize::from(ext_len)).ok_or(Malformed)?;
    if !r.is_empty() {
        return Err(Malformed);
    }
    let (mut seen_sni, mut seen_alpn) = (false, false);
    while !exts.is_empty() {
        let ty = exts.u16().ok_or(Malformed)?;
        let len = exts.u16().ok_or(Malformed)?;
        let body = exts.sub(usize::from(len)).ok_or(Malformed)?;
        let seen = match ty {
            EXT_SERVER_NAME => {
                let seen = std::mem::replace(&mut seen_sni, true);
                if !seen {
                    info.sni = parse_server_name(body)?;
                }
                seen
            }
            EXT_ALPN => {
                let seen = std::mem::replace(&mut seen_alpn, true);
                if !seen {
                    info.alpn = parse_alpn(body)?;
                }
                seen
            }
            EXT_ENCRYPTED_CLIENT_HELLO => std::mem::replace(&mut info.ech, true),
            EXT_QUIC_TRANSPORT_PARAMETERS | EXT_QUIC_TRANSPORT_PARAMETERS_DRAFT => {
                std::mem::replace(&mut info.quic_transport_parameters, true)
            }
            _ => false,
        };
        if seen {
            return Err(ClientHelloError::DuplicateExtension(ty));
        }
    }
    Ok(info)
}

fn parse_server_name(mut body: Reader<'_>) -> Result<Option<String>, ClientHelloError> {
    use ClientHelloError::BadServerNameExtension as Bad;
    let list_len = body.u16().ok_or(Bad)?;
    let mut list = body.sub(usize::from(list_len)).ok_or(Bad)?;
    if list_len == 0 || !body.is_empty() {
        return Err(Bad);
    }
    let mut host = None;
    while !list.is_empty() {
        let name_type = list.u8().ok_or(Bad)?;
        let len = list.u16().ok_or(Bad)?;
        let name = list.bytes(usize::from(len)).ok_or(Bad)?;
        if name_type == SNI_HOST_NAME {
            if host.is_some() {
                return Err(Bad);
            }
            host = Some(normalize_host_name(name).ok_or(ClientHelloError::InvalidServerName)?);
        }
    }
    Ok(host)
}

fn parse_alpn(mut body: Reader<'_>) -> Result<Vec<Vec<u8>>, ClientHelloError> {
    use ClientHelloError::BadAlpn as Bad;
    let list_len = body.u16().ok_or(Bad)?;
    let mut list = body.sub(usize::from(list_len)).ok_or(Bad)?;
    if list_len == 0 || !body.is_empty() {
        return Err(Bad);
    }
    let mut out = Vec::new();
    while !list.is_empty() {
        let len = list.u8().ok_or(Bad)?;
        if len == 0 {
            return Err(Bad);
        }
        out.push(list.bytes(usize::from(len)).ok_or(Bad)?.to_vec());
    }
    Ok(out)
}

/// Normalises a host name for routing: ASCII lower case, one trailing dot removed. Returns
/// `None` unless the result is a valid DNS host name: 1 to 253 bytes, labels of 1 to 63
/// letters, digits, hyphens or underscores, no label starting or ending with a hyphen,
/// and a last label that is not all digits (that would be an IPv4 literal, which SNI may
/// not carry, RFC 6066 §3).
pub fn normalize_host_name(name: &[u8]) -> Option<String> {
    let name = name.strip_suffix(b".").unwrap_or(name);
    if name.is_empty() || name.len() > 253 {
        return None;
    }
    let mut last_label_numeric = false;
    for label in name.split(|&b| b == b'.') {
        let ok_len = (1..=63).contains(&label.len());
        let ok_chars = label
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok_len || !ok_chars || label[0] == b'-' || label[label.len() - 1] == b'-' {
            return None;
        }
        last_label_numeric = label.iter().all(u8::is_ascii_digit);
    }
    if last_label_numeric {
        return None;
    }
    // Validated as ASCII above, so this cannot fail.
    let mut out = String::from_utf8(name.to_vec()).ok()?;
    out.make_ascii_lowercase();
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a ClientHello around the given extensions.
    pub(crate) fn client_hello(extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[7; 32]);
        body.push(0); // session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]);
        body.extend_from_slice(&[1, 0]);
        let mut exts = Vec::new();
        for (ty, data) in extensions {
            exts.extend_from_slice(&ty.to_be_bytes());
            exts.extend_from_slice(&(data.len() as u16).to_be_bytes());
            exts.extend_from_slice(data);
        }
        body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        body.extend_from_slice(&exts);
        let mut msg = vec![1];
        msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        msg.extend_from_slice(&body);
        msg
    }

    fn sni_ext(name: &[u8]) -> Vec<u8> {
        let mut e = ((name.len() + 3) as u16).to_be_bytes().to_vec();
        e.push(0);
        e.extend_from_slice(&(name.len() as u16).to_be_bytes());
        e.extend_from_slice(name);
        e
    }

    #[test]
    fn reads_sni_alpn_and_flags() {
        let alpn = vec![0, 6, 2, b'h', b'3', 2, b'h', b'2'];
        let msg = client_hello(&[
            (0, sni_ext(b"Game1.Example.COM.")),
            (16, alpn),
            (0x39, vec![1, 2]),
            (0xfe0d, vec![]),
        ]);
        let info = parse_client_hello(&msg).unwrap();
        assert_eq!(info.sni.as_deref(), Some("game1.example.com"));
        assert_eq!(info.alpn, vec![b"h3".to_vec(), b"h2".to_vec()]);
        assert!(info.ech && info.quic_transport_parameters);
    }

    #[test]
    fn rejects_bad_names_and_duplicates() {
        for bad in [
            &b""[..],
            b".",
            b"a..b",
            b"-a.com",
            b"a-.com",
            b"1.2.3.4",
            b"a b.com",
            b"caf\xc3\xa9.com",
        ] {
            let msg = client_hello(&[(0, sni_ext(bad))]);
            assert_eq!(
                parse_client_hello(&msg),
                Err(ClientHelloError::InvalidServerName),
                "{bad:?}"
            );
        }
        let long_label = [b'a'; 64];
        assert!(normalize_host_name(&long_label).is_none());
        assert!(normalize_host_name(&long_label[..63]).is_some());
        let msg = client_hello(&[(0, sni_ext(b"a.com")), (0, sni_ext(b"b.com"))]);
        assert_eq!(
            parse_client_hello(&msg),
            Err(ClientHelloError::DuplicateExtension(0))
        );
        let msg = client_hello(&[(16, vec![0, 1, 0])]);
        assert_eq!(parse_client_hello(&msg), Err(ClientHelloError::BadAlpn));
    }

    const NO_EXTENSIONS_LEN: usize = 4 + 2 + 32 + 1 + 4 + 2;

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let msg = client_hello(&[(0, sni_ext(b"a.example")), (16, vec![0, 3, 2, b'h', b'3'])]);
        for cut in 0..msg.len() {
            let mut m = msg[..cut].to_vec();
            if m.len() >= 4 {
                let body = (m.len() - 4) as u32;
                m[1..4].copy_from_slice(&body.to_be_bytes()[1..]);
            }
            // Cut right after the compression methods it is a valid extension-less hello.
            if cut == NO_EXTENSIONS_LEN {
                assert_eq!(parse_client_hello(&m), Ok(ClientHelloInfo::default()));
            } else {
                assert!(parse_client_hello(&m).is_err(), "cut at {cut}");
            }
        }
        assert!(parse_client_hello(&msg).is_ok());
    }
}
