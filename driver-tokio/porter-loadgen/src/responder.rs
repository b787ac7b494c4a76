//! The mock backend: answers client Initials with a server first flight, counts the rest.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use porter_core::wire::{LongType, Version};
use porter_sim::{server_first_flight, SimRng};

/// Socket buffer asked for (the kernel caps it at `net.core.rmem_max`).
const BUFFER_BYTES: usize = 8 << 20;

/// The Source CID the responder gives the connection whose original DCID is `dcid`: the
/// client computes it too, so it needs no state from the answer.
pub fn server_cid_for(dcid: &[u8]) -> [u8; 8] {
    let mut cid = [0x5a; 8];
    for (c, d) in cid.iter_mut().zip(dcid) {
        *c ^= d;
    }
    cid
}

#[derive(Debug, Default)]
struct Counters {
    initials: AtomicU64,
    short_datagrams: AtomicU64,
    short_bytes: AtomicU64,
}

/// A mock QUIC backend on a loopback port; stops when dropped.
#[derive(Debug)]
pub struct Responder {
    addr: SocketAddr,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Responder {
    /// Starts one on 127.0.0.1.
    pub fn start() -> io::Result<Self> {
        let socket = bind_loopback()?;
        socket.set_read_timeout(Some(Duration::from_millis(50)))?;
        let addr = socket.local_addr()?;
        let counters = Arc::new(Counters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (counters.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("responder".into())
            .spawn(move || serve(&socket, &c, &s))?;
        Ok(Self {
            addr,
            counters,
            stop,
            thread: Some(thread),
        })
    }

    /// Where the relay should send.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Client Initials answered.
    pub fn initials(&self) -> u64 {
        self.counters.initials.load(Ordering::Relaxed)
    }

    /// Short-header datagrams received.
    pub fn short_datagrams(&self) -> u64 {
        self.counters.short_datagrams.load(Ordering::Relaxed)
    }

    /// Bytes of short-header datagrams received.
    pub fn short_bytes(&self) -> u64 {
        self.counters.short_bytes.load(Ordering::Relaxed)
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A UDP socket on 127.0.0.1 with large buffers.
pub(crate) fn bind_loopback() -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: a smaller buffer only means more loss under a flood.
    let _ = socket.set_recv_buffer_size(BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(BUFFER_BYTES);
    let addr: SocketAddr = ([127, 0, 0, 1], 0).into();
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

fn serve(socket: &UdpSocket, counters: &Counters, stop: &AtomicBool) {
    let mut rng = SimRng::new(0x5eed);
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        // A timeout: look at `stop` again.
        let Ok((n, from)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let datagram = &buf[..n];
        match initial_cids(datagram) {
            Some((version, dcid, scid)) => {
                let reply = server_first_flight(
                    version,
                    dcid,
                    scid,
                    &server_cid_for(dcid),
                    0,
                    1200,
                    &mut rng,
                );
                let _ = socket.send_to(&reply, from);
                counters.initials.fetch_add(1, Ordering::Relaxed);
            }
            None if n > 0 && datagram[0] & 0x80 == 0 => {
                counters.short_datagrams.fetch_add(1, Ordering::Relaxed);
                counters.short_bytes.fetch_add(n as u64, Ordering::Relaxed);
            }
            None => {}
        }
    }
}

/// The version, DCID and SCID of a client Initial.
fn initial_cids(d: &[u8]) -> Option<(Version, &[u8], &[u8])> {
    let first = *d.first()?;
    if first & 0x80 == 0 {
        return None;
    }
    let version = Version::from_wire(u32::from_be_bytes(d.get(1..5)?.try_into().ok()?))?;
    if first & 0x30 != version.type_bits(LongType::Initial) {
        return None;
    }
    let dcid_len = usize::from(*d.get(5)?);
    let dcid = d.get(6..6 + dcid_len)?;
    let scid_len = usize::from(*d.get(6 + dcid_len)?);
    let scid = d.get(7 + dcid_len..7 + dcid_len + scid_len)?;
    Some((version, dcid, scid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_cid_is_a_function_of_the_dcid() {
        let a = server_cid_for(&[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(a, server_cid_for(&[1, 2, 3, 4, 5, 6, 7, 8]));
        assert_ne!(a, server_cid_for(&[1, 2, 3, 4, 5, 6, 7, 9]));
    }
}
