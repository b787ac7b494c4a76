//! What the simulated endpoints say to each other inside short-header packets. The relay
//! never looks past a short header's DCID, so the "protected" payload can carry this in
//! the clear: who asks, who answers, and the spare CIDs a real server would issue in
//! encrypted NEW_CONNECTION_ID frames.

use porter_core::wire::ConnectionId;

const MAGIC: &[u8; 4] = b"PSIM";

/// Ping (client to server) or pong (the server's echo).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Ping = 1,
    Pong = 2,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Message {
    pub(crate) kind: Kind,
    /// The client connection's number ([`super::ConnId`]).
    pub(crate) conn: u64,
    pub(crate) seq: u32,
    /// The answering server's name (empty in pings).
    pub(crate) server: String,
    /// Spare CIDs the server issues (pongs only).
    pub(crate) new_cids: Vec<ConnectionId>,
}

impl Message {
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(MAGIC);
        out.push(self.kind as u8);
        out.extend_from_slice(&self.conn.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.push(self.server.len() as u8);
        out.extend_from_slice(self.server.as_bytes());
        out.push(self.new_cids.len() as u8);
        for cid in &self.new_cids {
            out.push(cid.len() as u8);
            out.extend_from_slice(cid.as_bytes());
        }
    }

    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        let rest = bytes.strip_prefix(MAGIC)?;
        let (&kind, rest) = rest.split_first()?;
        let kind = match kind {
            1 => Kind::Ping,
            2 => Kind::Pong,
            _ => return None,
        };
        let conn = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
        let seq = u32::from_be_bytes(rest.get(8..12)?.try_into().ok()?);
        let rest = &rest[12..];
        let (&n, rest) = rest.split_first()?;
        let server = String::from_utf8(rest.get(..usize::from(n))?.to_vec()).ok()?;
        let mut rest = &rest[usize::from(n)..];
        let (&count, r) = rest.split_first()?;
        rest = r;
        let mut new_cids = Vec::new();
        for _ in 0..count {
            let (&len, r) = rest.split_first()?;
            new_cids.push(ConnectionId::new(r.get(..usize::from(len))?)?);
            rest = &r[usize::from(len)..];
        }
        Some(Self {
            kind,
            conn,
            seq,
            server,
            new_cids,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let m = Message {
            kind: Kind::Pong,
            conn: 42,
            seq: 7,
            server: "b1".into(),
            new_cids: vec![ConnectionId::new(&[1, 2, 3]).unwrap()],
        };
        let mut out = Vec::new();
        m.encode(&mut out);
        out.extend_from_slice(&[0xee; 16]);
        assert_eq!(Message::decode(&out), Some(m));
        assert_eq!(Message::decode(&out[..10]), None);
    }
}
