//! A small TLS 1.3 ClientHello writer (RFC 8446 §4.1.2) with the extensions a QUIC client
//! sends: server_name (RFC 6066 §3), ALPN (RFC 7301), quic_transport_parameters
//! (RFC 9001 §8.2, RFC 9000 §18) and the usual key-exchange ones. Key shares are random
//! bytes of the right sizes: nothing here negotiates, it only has to look and parse like
//! what real clients send, including the ~1.2 KB post-quantum key share that makes
//! Chromium's ClientHello span two Initial packets.
//!
//! Two front ends share the encoding: [`ClientHelloSpec`] writes what a real client
//! sends (random where a client is random), [`DescribedHello`] writes a ClientHello from
//! an `arbitrary`-decodable description together with what
//! `porter_core::client_hello::parse_client_hello` must make of it (the fuzz targets' and
//! the relay model's ClientHellos).

use arbitrary::Arbitrary;
use porter_core::client_hello::{normalize_host_name, ClientHelloError, ClientHelloInfo};
use porter_core::wire::write_varint;

use super::rng::SimRng;

const EXT_SERVER_NAME: u16 = 0;
const EXT_SUPPORTED_GROUPS: u16 = 10;
const EXT_SIGNATURE_ALGORITHMS: u16 = 13;
const EXT_ALPN: u16 = 16;
const EXT_SUPPORTED_VERSIONS: u16 = 43;
const EXT_PSK_KEY_EXCHANGE_MODES: u16 = 45;
const EXT_KEY_SHARE: u16 = 51;
const EXT_QUIC_TRANSPORT_PARAMETERS: u16 = 57;
/// The codepoint of drafts 27 to 33 of QUIC-TLS, which porter also reads.
const EXT_QUIC_TRANSPORT_PARAMETERS_DRAFT: u16 = 0xffa5;
const EXT_ENCRYPTED_CLIENT_HELLO: u16 = 0xfe0d;
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
            push_ext(
                &mut exts,
                EXT_SERVER_NAME,
                &server_name_body(name.as_bytes()),
            );
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
            push_ext(&mut exts, EXT_ALPN, &alpn_body(&self.alpn));
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
        client_hello_message(&body)
    }
}

/// The server_name extension's body naming `name` (RFC 6066 §3: one host_name entry).
fn server_name_body(name: &[u8]) -> Vec<u8> {
    let mut e = Vec::with_capacity(name.len() + 5);
    push_u16(&mut e, name.len() as u16 + 3);
    e.push(0); // host_name
    push_u16(&mut e, name.len() as u16);
    e.extend_from_slice(name);
    e
}

/// The ALPN extension's body offering `protocols` (RFC 7301 §3.1), each cut to 255 bytes.
fn alpn_body<P: AsRef<[u8]>>(protocols: &[P]) -> Vec<u8> {
    let mut list = Vec::new();
    for proto in protocols {
        let proto = proto.as_ref();
        let proto = &proto[..proto.len().min(255)];
        list.push(proto.len() as u8);
        list.extend_from_slice(proto);
    }
    let mut e = Vec::with_capacity(list.len() + 2);
    push_u16(&mut e, list.len() as u16);
    e.extend_from_slice(&list);
    e
}

/// The ClientHello handshake message (type 1, 24-bit length) around `body`.
fn client_hello_message(body: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(4 + body.len());
    msg.push(1); // client_hello
    msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    msg.extend_from_slice(body);
    msg
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

/// Server names a [`DescribedHello`] picks from ([`DescribedSni::Pool`]), so that a
/// relay's routes match some of them (exactly, by wildcard, after normalisation) and miss
/// others.
pub const SNI_POOL: [&str; 8] = [
    "game1.example.com",
    "Game1.Example.COM.",
    "a.eu.example.com",
    "b.example.com",
    "other.test",
    "v2.example.com",
    "unrouted.invalid",
    "x_y.example.com",
];

/// ALPN protocol names to pick from.
const ALPN_POOL: [&[u8]; 3] = [b"h3", b"hq-interop", b"echo"];

/// Extension types the parser reads; extra extensions are moved off them so the
/// expected parse stays exact.
const ROUTED_EXTENSIONS: [u16; 5] = [0, 16, 0x39, 0xffa5, 0xfe0d];

/// The server name of a [`DescribedHello`].
#[derive(Arbitrary, Clone, Debug)]
pub enum DescribedSni {
    /// No server_name extension.
    Absent,
    /// One of [`SNI_POOL`] (modulo its length).
    Pool(u8),
    /// Any bytes (mostly invalid names), cut to 300.
    Raw(Vec<u8>),
}

/// One ALPN protocol name of a [`DescribedHello`].
#[derive(Arbitrary, Clone, Debug)]
pub enum DescribedAlpn {
    /// One of a small pool (`h3`, `hq-interop`, `echo`).
    Pool(u8),
    /// Any bytes, cut to 255 (an empty one is invalid).
    Raw(Vec<u8>),
}

/// A ClientHello, described: [`Self::build`] writes it and says what the parser must
/// make of it. Decodable with `arbitrary`, for structure-aware fuzzing.
#[derive(Arbitrary, Clone, Debug)]
pub struct DescribedHello {
    /// The server name.
    pub sni: DescribedSni,
    /// The ALPN list (the first 16); empty leaves the extension out.
    pub alpn: Vec<DescribedAlpn>,
    /// The legacy session ID's length (modulo 33).
    pub session_id_len: u8,
    /// The number of cipher suites (modulo 16, at least 1).
    pub cipher_suites: u8,
    /// Modulo 3: 0, no transport parameters; 1, RFC 9001's codepoint; 2, the draft one.
    pub transport_parameters: u8,
    /// Adds an encrypted_client_hello extension.
    pub ech: bool,
    /// Further extensions (the first 8, bodies cut to 512 bytes), moved off the types the
    /// parser reads.
    pub extra: Vec<(u16, Vec<u8>)>,
    /// Bytes of a padding extension (modulo 4096), to make the ClientHello span several
    /// packets.
    pub padding: u16,
}

impl DescribedHello {
    /// A plain ClientHello for one of [`SNI_POOL`] (or none), offering h3; `padding` bytes
    /// of padding extension make it as large as a post-quantum one.
    pub fn named(name: Option<u8>, padding: u16) -> Self {
        Self {
            sni: name.map_or(DescribedSni::Absent, DescribedSni::Pool),
            alpn: vec![DescribedAlpn::Pool(0)],
            session_id_len: 0,
            cipher_suites: 3,
            transport_parameters: 1,
            ech: false,
            extra: Vec::new(),
            padding,
        }
    }

    /// The encoded handshake message and what `parse_client_hello` must make of it.
    pub fn build(&self) -> (Vec<u8>, Result<ClientHelloInfo, ClientHelloError>) {
        let mut info = ClientHelloInfo::default();
        let mut error = None;
        let mut exts: Vec<(u16, Vec<u8>)> = Vec::new();

        let name: Option<Vec<u8>> = match &self.sni {
            DescribedSni::Absent => None,
            DescribedSni::Pool(i) => Some(
                SNI_POOL[usize::from(*i) % SNI_POOL.len()]
                    .as_bytes()
                    .to_vec(),
            ),
            DescribedSni::Raw(bytes) => Some(bytes[..bytes.len().min(300)].to_vec()),
        };
        if let Some(name) = name {
            match normalize_host_name(&name) {
                Some(n) => info.sni = Some(n),
                None => error = error.or(Some(ClientHelloError::InvalidServerName)),
            }
            exts.push((EXT_SERVER_NAME, server_name_body(&name)));
        }

        if !self.alpn.is_empty() {
            let mut names: Vec<&[u8]> = Vec::new();
            for spec in self.alpn.iter().take(16) {
                let name: &[u8] = match spec {
                    DescribedAlpn::Pool(i) => ALPN_POOL[usize::from(*i) % ALPN_POOL.len()],
                    DescribedAlpn::Raw(bytes) => &bytes[..bytes.len().min(255)],
                };
                if name.is_empty() {
                    error = error.or(Some(ClientHelloError::BadAlpn));
                }
                info.alpn.push(name.to_vec());
                names.push(name);
            }
            exts.push((EXT_ALPN, alpn_body(&names)));
        }

        match self.transport_parameters % 3 {
            1 => exts.push((
                EXT_QUIC_TRANSPORT_PARAMETERS,
                vec![0x04, 0x04, 0x80, 0, 0x40, 0],
            )),
            2 => exts.push((
                EXT_QUIC_TRANSPORT_PARAMETERS_DRAFT,
                vec![0x01, 0x02, 0x40, 0x10],
            )),
            _ => {}
        }
        info.quic_transport_parameters = !self.transport_parameters.is_multiple_of(3);
        if self.ech {
            exts.push((EXT_ENCRYPTED_CLIENT_HELLO, vec![0; 8]));
            info.ech = true;
        }
        for (ty, body) in self.extra.iter().take(8) {
            let ty = if ROUTED_EXTENSIONS.contains(ty) {
                ty ^ 0x8000
            } else {
                *ty
            };
            exts.push((ty, body[..body.len().min(512)].to_vec()));
        }
        if self.padding > 0 {
            exts.push((EXT_PADDING, vec![0; usize::from(self.padding % 4096)]));
        }

        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[0x5a; 32]);
        let session_id_len = self.session_id_len % 33;
        body.push(session_id_len);
        body.extend(std::iter::repeat_n(0x11, usize::from(session_id_len)));
        let suites = u16::from(self.cipher_suites % 16).max(1);
        push_u16(&mut body, suites * 2);
        for i in 0..suites {
            push_u16(&mut body, 0x1301 + i);
        }
        body.extend_from_slice(&[1, 0]);
        let mut ext_bytes = Vec::new();
        for (ty, ext) in &exts {
            push_ext(&mut ext_bytes, *ty, ext);
        }
        // Every part is capped above, so the extensions fit their 16-bit length.
        push_u16(&mut body, ext_bytes.len() as u16);
        body.extend_from_slice(&ext_bytes);
        (client_hello_message(&body), error.map_or(Ok(info), Err))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use porter_core::client_hello::parse_client_hello;

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

    #[test]
    fn built_hellos_parse_as_described() {
        let mut spec = DescribedHello::named(Some(1), 3000);
        spec.alpn.push(DescribedAlpn::Raw(b"x".to_vec()));
        spec.extra.push((16, vec![1, 2, 3]));
        spec.ech = true;
        let (msg, expected) = spec.build();
        assert!(msg.len() > 3000);
        let info = expected.clone().unwrap();
        assert_eq!(info.sni.as_deref(), Some("game1.example.com"));
        assert_eq!(parse_client_hello(&msg), expected);

        spec.alpn.push(DescribedAlpn::Raw(Vec::new()));
        let (msg, expected) = spec.build();
        assert_eq!(expected, Err(ClientHelloError::BadAlpn));
        assert_eq!(parse_client_hello(&msg), expected);
    }
}
