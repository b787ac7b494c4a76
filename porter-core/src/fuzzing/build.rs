//! Builders the structured targets share: ClientHellos from a description whose parse is
//! known in advance, and client Initial packets sealed with porter's own packet
//! protection.

use arbitrary::Arbitrary;

use crate::client_hello::{normalize_host_name, ClientHelloError, ClientHelloInfo};
use crate::initial::{seal_long_packet, Keys, LongPacketSpec};
use crate::wire::{write_varint, LongType, MIN_INITIAL_DATAGRAM, VARINT_MAX};

/// Server names the structured targets pick from, so that the relay's routes match some
/// of them (exactly, by wildcard, after normalisation) and miss others.
pub(crate) const NAMES: [&str; 8] = [
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
const ALPNS: [&[u8]; 3] = [b"h3", b"hq-interop", b"echo"];

/// Extension types the parser reads; extra extensions are moved off them so the
/// expected parse stays exact.
const ROUTED_EXTENSIONS: [u16; 5] = [0, 16, 0x39, 0xffa5, 0xfe0d];

/// The server name of a built ClientHello.
#[derive(Arbitrary, Clone, Debug)]
pub(crate) enum SniSpec {
    /// No server_name extension.
    Absent,
    /// One of [`NAMES`].
    Pool(u8),
    /// Any bytes (mostly invalid names).
    Raw(Vec<u8>),
}

/// One ALPN protocol name.
#[derive(Arbitrary, Clone, Debug)]
pub(crate) enum AlpnSpec {
    /// One of [`ALPNS`].
    Pool(u8),
    /// Any bytes, cut to 255 (an empty one is invalid).
    Raw(Vec<u8>),
}

/// A ClientHello, described.
#[derive(Arbitrary, Clone, Debug)]
pub(crate) struct HelloSpec {
    sni: SniSpec,
    alpn: Vec<AlpnSpec>,
    session_id_len: u8,
    cipher_suites: u8,
    /// 0: no transport parameters; 1: RFC 9001's codepoint; 2: the draft one.
    transport_parameters: u8,
    ech: bool,
    extra: Vec<(u16, Vec<u8>)>,
    /// Bytes of a padding extension, to make the ClientHello span several packets.
    padding: u16,
}

impl HelloSpec {
    /// A plain ClientHello for one of [`NAMES`] (or none), offering h3; `padding` bytes of
    /// padding extension make it as large as a post-quantum one.
    pub(crate) fn named(name: Option<u8>, padding: u16) -> Self {
        Self {
            sni: name.map_or(SniSpec::Absent, SniSpec::Pool),
            alpn: vec![AlpnSpec::Pool(0)],
            session_id_len: 0,
            cipher_suites: 3,
            transport_parameters: 1,
            ech: false,
            extra: Vec::new(),
            padding,
        }
    }

    /// The encoded handshake message and what `parse_client_hello` must make of it.
    pub(crate) fn build(&self) -> (Vec<u8>, Result<ClientHelloInfo, ClientHelloError>) {
        let mut info = ClientHelloInfo::default();
        let mut error = None;
        let mut exts: Vec<(u16, Vec<u8>)> = Vec::new();

        let name: Option<Vec<u8>> = match &self.sni {
            SniSpec::Absent => None,
            SniSpec::Pool(i) => Some(NAMES[usize::from(*i) % NAMES.len()].as_bytes().to_vec()),
            SniSpec::Raw(bytes) => Some(bytes[..bytes.len().min(300)].to_vec()),
        };
        if let Some(name) = name {
            match normalize_host_name(&name) {
                Some(n) => info.sni = Some(n),
                None => error = error.or(Some(ClientHelloError::InvalidServerName)),
            }
            let mut body = Vec::new();
            body.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
            body.push(0);
            body.extend_from_slice(&(name.len() as u16).to_be_bytes());
            body.extend_from_slice(&name);
            exts.push((0, body));
        }

        if !self.alpn.is_empty() {
            let mut list = Vec::new();
            for spec in self.alpn.iter().take(16) {
                let name: &[u8] = match spec {
                    AlpnSpec::Pool(i) => ALPNS[usize::from(*i) % ALPNS.len()],
                    AlpnSpec::Raw(bytes) => &bytes[..bytes.len().min(255)],
                };
                if name.is_empty() {
                    error = error.or(Some(ClientHelloError::BadAlpn));
                }
                list.push(name.len() as u8);
                list.extend_from_slice(name);
                info.alpn.push(name.to_vec());
            }
            let mut body = (list.len() as u16).to_be_bytes().to_vec();
            body.extend_from_slice(&list);
            exts.push((16, body));
        }

        match self.transport_parameters % 3 {
            1 => exts.push((0x39, vec![0x04, 0x04, 0x80, 0, 0x40, 0])),
            2 => exts.push((0xffa5, vec![0x01, 0x02, 0x40, 0x10])),
            _ => {}
        }
        info.quic_transport_parameters = !self.transport_parameters.is_multiple_of(3);
        if self.ech {
            exts.push((0xfe0d, vec![0; 8]));
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
            exts.push((21, vec![0; usize::from(self.padding % 4096)]));
        }

        let mut msg = vec![1, 0, 0, 0, 0x03, 0x03];
        msg.extend_from_slice(&[0x5a; 32]);
        let session_id_len = self.session_id_len % 33;
        msg.push(session_id_len);
        msg.extend(std::iter::repeat_n(0x11, usize::from(session_id_len)));
        let suites = u16::from(self.cipher_suites % 16).max(1);
        msg.extend_from_slice(&(suites * 2).to_be_bytes());
        for i in 0..suites {
            msg.extend_from_slice(&(0x1301 + i).to_be_bytes());
        }
        msg.extend_from_slice(&[1, 0]);
        let mut ext_bytes = Vec::new();
        for (ty, body) in &exts {
            ext_bytes.extend_from_slice(&ty.to_be_bytes());
            ext_bytes.extend_from_slice(&(body.len() as u16).to_be_bytes());
            ext_bytes.extend_from_slice(body);
        }
        // Every part is capped above, so the extensions fit their 16-bit length.
        msg.extend_from_slice(&(ext_bytes.len() as u16).to_be_bytes());
        msg.extend_from_slice(&ext_bytes);
        let body_len = (msg.len() - 4) as u32;
        msg[1..4].copy_from_slice(&body_len.to_be_bytes()[1..]);
        (msg, error.map_or(Ok(info), Err))
    }
}

/// An ACK frame, described (possibly invalid: ranges below zero).
#[derive(Arbitrary, Clone, Debug)]
pub(crate) struct AckSpec {
    largest: u32,
    delay: u16,
    first: u16,
    ranges: Vec<(u8, u8)>,
    ecn: bool,
}

impl AckSpec {
    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        out.push(if self.ecn { 0x03 } else { 0x02 });
        write_varint(u64::from(self.largest), out);
        write_varint(u64::from(self.delay), out);
        let ranges = &self.ranges[..self.ranges.len().min(8)];
        write_varint(ranges.len() as u64, out);
        write_varint(u64::from(self.first), out);
        for &(gap, len) in ranges {
            write_varint(u64::from(gap), out);
            write_varint(u64::from(len), out);
        }
        if self.ecn {
            out.extend_from_slice(&[1, 2, 3]);
        }
    }
}

/// Appends a CRYPTO frame whose offset may be anything up to the varint maximum.
pub(crate) fn write_crypto(offset: u64, data: &[u8], out: &mut Vec<u8>) {
    out.push(0x06);
    write_varint(offset.min(VARINT_MAX), out);
    write_varint(data.len() as u64, out);
    out.extend_from_slice(data);
}

/// The header of a client Initial (no token, 1-byte packet number).
pub(crate) fn initial_spec<'a>(
    dcid: &'a [u8],
    scid: &'a [u8],
    packet_number: u64,
) -> LongPacketSpec<'a> {
    LongPacketSpec {
        ty: LongType::Initial,
        dcid,
        scid,
        token: &[],
        packet_number,
        pn_len: 1,
    }
}

/// Seals a packet with `keys`, PADDING frames added inside it so that `out` reaches the
/// 1200 bytes a client Initial datagram needs.
pub(crate) fn seal_padded(
    keys: &Keys,
    spec: &LongPacketSpec<'_>,
    payload: &[u8],
    out: &mut Vec<u8>,
) {
    let start = out.len();
    seal_long_packet(keys, spec, payload, out);
    let short = MIN_INITIAL_DATAGRAM.saturating_sub(out.len());
    if short > 0 {
        out.truncate(start);
        let mut padded = payload.to_vec();
        padded.resize(payload.len() + short, 0);
        seal_long_packet(keys, spec, &padded, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client_hello::parse_client_hello;

    #[test]
    fn built_hellos_parse_as_described() {
        let mut spec = HelloSpec::named(Some(1), 3000);
        spec.alpn.push(AlpnSpec::Raw(b"x".to_vec()));
        spec.extra.push((16, vec![1, 2, 3]));
        spec.ech = true;
        let (msg, expected) = spec.build();
        assert!(msg.len() > 3000);
        let info = expected.clone().unwrap();
        assert_eq!(info.sni.as_deref(), Some("game1.example.com"));
        assert_eq!(parse_client_hello(&msg), expected);

        spec.alpn.push(AlpnSpec::Raw(Vec::new()));
        let (msg, expected) = spec.build();
        assert_eq!(expected, Err(ClientHelloError::BadAlpn));
        assert_eq!(parse_client_hello(&msg), expected);
    }
}
