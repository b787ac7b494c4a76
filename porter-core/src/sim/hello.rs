//! A small TLS 1.3 ClientHello writer (RFC 8446 §4.1.2) with the extensions a QUIC client
//! sends: server_name (RFC 6066 §3), ALPN (RFC 7301), quic_transport_parameters
//! (RFC 9001 §8.2, RFC 9000 §18) and the usual key-exchange ones. Key shares are random
//! bytes of the right sizes: nothing here negotiates, it only has to look and parse like
//! what real clients send, including the ~1.2 KB post-quantum key share that makes
//! Chromium's ClientHello span two Initial packets.

use super::rng::SimRng;
use crate::wire::write_varint;

const EXT_SERVER_NAME: u16 = 0;
const EXT_SUPPORTED_GROUPS: u16 = 10;
const EXT_SIGNATURE_ALGORITHMS: u16 = 13;
const EXT_ALPN: u16 = 16;
const EXT_SUPPORTED_VERSIONS: u16 = 43;
const EXT_PSK_KEY_EXCHANGE_MODES: u16 = 45;
const EXT_KEY_SHARE: u16 = 51;
const EXT_QUIC_TRANSPORT_PARAMETERS: u16 = 57;
/// RFC 7685 padding, standing in for the rest of a browser's extensions.
const EXT_PADDING: u16 = 21;
const GROUP_X25519: u16 = 0x001d;
const GROUP_SECP256R1: u16 = 0x0017;
/// X25519MLKEM768 (draft-ietf-tls-ecdhe-mlkem): a 1184-byte ML-KEM key then 32 bytes.
const GROUP_X25519_MLKEM768: u16 = 0x11ec;

/// What to put in a ClientHello.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientHelloSpec {
    /// The server name; `None` leaves the server_name extension out.
    pub sni: Option<String>,
    /// The ALPN list; empty leaves the extension out.
    pub alpn: Vec<Vec<u8>>,
    /// The client's Source Connection ID, carried in the initial_source_connection_id
    /// transport parameter.
    pub initial_scid: Vec<u8>,
    /// Adds an X25519MLKEM768 key share (1216 bytes), as Chromium and Firefox do, and a
    /// padding extension standing in for a browser's other extensions: the ClientHello
    /// is then about 1.9 KB, like Chromium's, and needs two Initial packets.
    pub post_quantum: bool,
}

impl ClientHelloSpec {
    /// Writes the ClientHello handshake message (its 4-byte header included), with
    /// random bytes for the random, session ID and key shares.
    pub fn build(&self, rng: &mut SimRng) -> Vec<u8> {
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&rng.bytes(32));
        body.push(32);
        body.extend_from_slice(&rng.bytes(32)); // legacy session ID (middlebox compat)
        push_u16_list(&mut body, &[0x1301, 0x1302, 0x1303]);
        body.extend_from_slice(&[1, 0]); // compression: null only

        let mut exts = Vec::new();
        if let Some(name) = &self.sni {
            let mut e = Vec::new();
            push_u16(&mut e, name.len() as u16 + 3);
            e.push(0); // host_name
            push_u16(&mut e, name.len() as u16);
            e.extend_from_slice(name.as_bytes());
            push_ext(&mut exts, EXT_SERVER_NAME, &e);
        }
        let mut groups = vec![GROUP_X25519, GROUP_SECP256R1];
        if self.post_quantum {
            groups.insert(0, GROUP_X25519_MLKEM768);
        }
        let mut e = Vec::new();
        push_u16_list(&mut e, &groups);
        push_ext(&mut exts, EXT_SUPPORTED_GROUPS, &e);
        let mut e = Vec::new();
        push_u16_list(&mut e, &[0x0403, 0x0804, 0x0401]);
        push_ext(&mut exts, EXT_SIGNATURE_ALGORITHMS, &e);
        push_ext(&mut exts, EXT_SUPPORTED_VERSIONS, &[2, 0x03, 0x04]);
        push_ext(&mut exts, EXT_PSK_KEY_EXCHANGE_MODES, &[1, 1]);
        let mut shares = Vec::new();
        if self.post_quantum {
            push_u16(&mut shares, GROUP_X25519_MLKEM768);
            push_u16(&mut shares, 1216);
            shares.extend_from_slice(&rng.bytes(1216));
        }
        push_u16(&mut shares, GROUP_X25519);
        push_u16(&mut shares, 32);
        shares.extend_from_slice(&rng.bytes(32));
        let mut e = Vec::new();
        push_u16(&mut e, shares.len() as u16);
        e.extend_from_slice(&shares);
        push_ext(&mut exts, EXT_KEY_SHARE, &e);
        if !self.alpn.is_empty() {
            let mut list = Vec::new();
            for proto in &self.alpn {
                list.push(proto.len() as u8);
                list.extend_from_slice(proto);
            }
            let mut e = Vec::new();
            push_u16(&mut e, list.len() as u16);
            e.extend_from_slice(&list);
            push_ext(&mut exts, EXT_ALPN, &e);
        }
        push_ext(
            &mut exts,
            EXT_QUIC_TRANSPORT_PARAMETERS,
            &transport_parameters(&self.initial_scid),
        );
        if self.post_quantum {
            push_ext(&mut exts, EXT_PADDING, &[0; 450]);
        }

        push_u16(&mut body, exts.len() as u16);
        body.extend_from_slice(&exts);
        let mut msg = vec![1]; // client_hello
        msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        msg.extend_from_slice(&body);
        msg
    }
}

/// A plausible client transport-parameter set (RFC 9000 §18.2).
fn transport_parameters(initial_scid: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let int_param = |id: u64, value: u64, out: &mut Vec<u8>| {
        let mut v = Vec::new();
        write_varint(value, &mut v);
        write_varint(id, out);
        write_varint(v.len() as u64, out);
        out.extend_from_slice(&v);
    };
    int_param(0x01, 30_000, &mut out); // max_idle_timeout
    int_param(0x03, 1472, &mut out); // max_udp_payload_size
    int_param(0x04, 1 << 20, &mut out); // initial_max_data
    int_param(0x05, 1 << 18, &mut out); // initial_max_stream_data_bidi_local
    int_param(0x08, 100, &mut out); // initial_max_streams_bidi
    write_varint(0x0f, &mut out); // initial_source_connection_id
    write_varint(initial_scid.len() as u64, &mut out);
    out.extend_from_slice(initial_scid);
    out
}

fn push_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn push_u16_list(out: &mut Vec<u8>, values: &[u16]) {
    push_u16(out, (values.len() * 2) as u16);
    for &v in values {
        push_u16(out, v);
    }
}

fn push_ext(out: &mut Vec<u8>, ty: u16, body: &[u8]) {
    push_u16(out, ty);
    push_u16(out, body.len() as u16);
    out.extend_from_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client_hello::parse_client_hello;

    #[test]
    fn porter_reads_what_the_builder_writes() {
        let mut rng = SimRng::new(3);
        for post_quantum in [false, true] {
            let spec = ClientHelloSpec {
                sni: Some("Game.Example.com".into()),
                alpn: vec![b"h3".to_vec(), b"echo".to_vec()],
                initial_scid: vec![1, 2, 3, 4, 5, 6, 7, 8],
                post_quantum,
            };
            let msg = spec.build(&mut rng);
            assert_eq!(msg.len() > 1800, post_quantum, "{}", msg.len());
            let info = parse_client_hello(&msg).unwrap();
            assert_eq!(info.sni.as_deref(), Some("game.example.com"));
            assert_eq!(info.alpn, spec.alpn);
            assert!(info.quic_transport_parameters && !info.ech);
        }
        let bare = ClientHelloSpec::default().build(&mut rng);
        let info = parse_client_hello(&bare).unwrap();
        assert_eq!((info.sni, info.alpn.len()), (None, 0));
    }
}
