//! Client-bound datagrams batched across clients.
//!
//! GSO already sends a run of equal-sized datagrams for one client in one system call.
//! What it cannot batch is the common case at scale: many clients, each owed one
//! datagram, each read from its own upstream socket by its own task. Those tasks queue
//! their single datagrams here, and one flusher task per listener sends whatever has
//! gathered with `sendmmsg(2)`: one system call for up to [`MAX_BATCH`] clients.
//!
//! The flusher is woken by the first datagram queued, then yields once to the executor,
//! so that every other reader that is ready runs (and queues) before the batch leaves.
//! Under light load that costs one scheduler round; under load it is what makes batches.
//! Order per client is kept: one path's datagrams are always handled by one reader, one
//! flush runs at a time per listener (a flush asked for while another runs is left to
//! it), and a reader that would send a GSO run directly while datagrams are queued on
//! that listener first flushes them, or queues the run's datagrams behind them when
//! another flush is under way (see the engine).

use std::io::{self, IoSlice};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use rustix::net::addr::SocketAddrArg;
use rustix::net::{MMsgHdr, SendAncillaryBuffer, SendFlags, SocketAddrAny};

use crate::notify::{lock, Notify};
use crate::socket::Socket;
use crate::AsyncUdp;

/// Most datagrams in one `sendmmsg`.
pub(crate) const MAX_BATCH: usize = 64;

/// Most bytes queued per listener before the queuing task sends them itself.
const MAX_QUEUED_BYTES: usize = 256 * 1024;

/// Bytes queued per listener from which a reader waits for the queue to drain before
/// adding more (backpressure: it stops reading its upstream socket meanwhile).
const BACKLOG_BYTES: usize = 4 * MAX_QUEUED_BYTES;

/// Bytes queued per listener beyond which new datagrams are dropped (counted): a last
/// bound, for when readers outrun the flusher even so.
const MAX_BACKLOG_BYTES: usize = 4 * BACKLOG_BYTES;

/// The queue of one listener and the counters of what left it.
#[derive(Debug, Default)]
pub(crate) struct ClientSends {
    queue: Mutex<Queue>,
    wake: Notify,
    /// A flush is under way (at most one at a time, so batches leave in order).
    flushing: AtomicBool,
    /// `sendmmsg` calls made.
    calls: AtomicU64,
    /// Datagrams they sent.
    datagrams: AtomicU64,
    /// Datagrams dropped because the queue was over [`MAX_BACKLOG_BYTES`].
    dropped: AtomicU64,
}

/// Datagrams waiting: their bytes back to back, and per datagram its client and range.
#[derive(Debug, Default)]
pub(crate) struct Queue {
    bytes: Vec<u8>,
    items: Vec<(SocketAddr, Range<usize>)>,
}

/// What the batched client sends counted: `sendmmsg` calls and the datagrams they
/// carried.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchedSends {
    /// `sendmmsg` calls.
    pub calls: u64,
    /// Datagrams sent by them.
    pub datagrams: u64,
    /// Datagrams dropped because the listener's queue was full (its socket did not take
    /// them as fast as they came).
    pub dropped: u64,
}

impl ClientSends {
    /// Queues `datagram` for `to` and wakes the flusher. Returns `true` when the queue is
    /// full: the caller should flush it now rather than wait for the flusher (and, if it
    /// [`Self::is_backlogged`], wait until it drains). Past `MAX_BACKLOG_BYTES` the
    /// datagram is dropped and counted.
    pub(crate) fn push(&self, to: SocketAddr, datagram: &[u8]) -> bool {
        let full = {
            let mut q = lock(&self.queue);
            if q.bytes.len() >= MAX_BACKLOG_BYTES {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return true;
            }
            let start = q.bytes.len();
            q.bytes.extend_from_slice(datagram);
            let end = q.bytes.len();
            q.items.push((to, start..end));
            q.items.len() >= MAX_BATCH || q.bytes.len() >= MAX_QUEUED_BYTES
        };
        self.wake.notify_one();
        full
    }

    /// Whether anything is queued.
    pub(crate) fn is_empty(&self) -> bool {
        lock(&self.queue).items.is_empty()
    }

    /// Whether the queue holds so much that a reader should wait before adding to it.
    pub(crate) fn is_backlogged(&self) -> bool {
        lock(&self.queue).bytes.len() >= BACKLOG_BYTES
    }

    /// Waits until something was queued.
    pub(crate) async fn queued(&self) {
        self.wake.notified().await;
    }

    /// Sends what is queued on `listener` until the queue is empty, using `spare` (which
    /// must be empty) as the other buffer. Returns `false`, sending nothing, when
    /// another flush is under way: that one takes what was queued (the flusher task is
    /// woken by every push, so nothing is left behind).
    pub(crate) async fn flush<U: AsyncUdp>(&self, listener: &Socket<U>, spare: &mut Queue) -> bool {
        if self.flushing.swap(true, Ordering::Acquire) {
            return false;
        }
        loop {
            {
                let mut q = lock(&self.queue);
                std::mem::swap(&mut *q, spare);
            }
            if spare.items.is_empty() {
                break;
            }
            self.send_all(listener, spare).await;
        }
        self.flushing.store(false, Ordering::Release);
        true
    }

    /// Sends every datagram of `spare` and empties it.
    async fn send_all<U: AsyncUdp>(&self, listener: &Socket<U>, spare: &mut Queue) {
        let v6 = listener.local_addr().is_ok_and(|a| a.is_ipv6());
        let mut sent = 0;
        while sent < spare.items.len() {
            let batch = &spare.items[sent..spare.items.len().min(sent + MAX_BATCH)];
            let result = listener
                .io()
                .write_with(|fd| send_batch(fd, batch, &spare.bytes, v6))
                .await;
            self.calls.fetch_add(1, Ordering::Relaxed);
            match result {
                Ok(n) => {
                    self.datagrams.fetch_add(n as u64, Ordering::Relaxed);
                    sent += n.max(1);
                }
                Err(e) => {
                    // The first datagram of the batch failed (the kernel reports an
                    // error only for the first one): skip it, send the rest.
                    tracing::debug!(client = %batch[0].0, "send to client failed: {e}");
                    sent += 1;
                }
            }
        }
        spare.bytes.clear();
        spare.items.clear();
    }

    /// What was counted so far.
    pub(crate) fn counts(&self) -> BatchedSends {
        BatchedSends {
            calls: self.calls.load(Ordering::Relaxed),
            datagrams: self.datagrams.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
        }
    }
}

/// One `sendmmsg` of `batch` (ranges of `bytes`); returns how many left.
fn send_batch(
    fd: BorrowedFd<'_>,
    batch: &[(SocketAddr, Range<usize>)],
    bytes: &[u8],
    v6: bool,
) -> io::Result<usize> {
    let addrs: Vec<SocketAddrAny> = batch
        .iter()
        .map(|(to, _)| destination(*to, v6).as_any())
        .collect();
    let iovs: Vec<[IoSlice<'_>; 1]> = batch
        .iter()
        .map(|(_, range)| [IoSlice::new(&bytes[range.clone()])])
        .collect();
    let mut controls: Vec<SendAncillaryBuffer<'_, '_, '_>> = batch
        .iter()
        .map(|_| SendAncillaryBuffer::default())
        .collect();
    let mut msgs: Vec<MMsgHdr<'_>> = addrs
        .iter()
        .zip(&iovs)
        .zip(controls.iter_mut())
        .map(|((addr, iov), control)| MMsgHdr::new_with_addr(addr, iov, control))
        .collect();
    Ok(rustix::net::sendmmsg(fd, &mut msgs, SendFlags::empty())?)
}

/// An IPv6 (dual-stack) listener reaches IPv4 clients at their IPv4-mapped address.
fn destination(to: SocketAddr, v6_listener: bool) -> SocketAddr {
    match to.ip() {
        IpAddr::V4(ip) if v6_listener => {
            SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), to.port())
        }
        _ => to,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_clients_of_a_dual_stack_listener_are_mapped() {
        let v4: SocketAddr = "192.0.2.7:4433".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::7]:4433".parse().unwrap();
        assert_eq!(destination(v4, false), v4);
        assert_eq!(
            destination(v4, true),
            "[::ffff:192.0.2.7]:4433".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(destination(v6, true), v6);
    }

    #[test]
    fn one_sendmmsg_carries_datagrams_for_several_clients_in_order() {
        use std::net::UdpSocket;
        use std::os::fd::AsFd;
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        let clients: Vec<UdpSocket> = (0..3)
            .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let mut bytes = Vec::new();
        let mut batch = Vec::new();
        for (i, c) in clients.iter().enumerate() {
            for k in 0..2u8 {
                let start = bytes.len();
                bytes.extend_from_slice(&[i as u8, k, 0xaa]);
                batch.push((c.local_addr().unwrap(), start..bytes.len()));
            }
        }
        assert_eq!(
            send_batch(sender.as_fd(), &batch, &bytes, false).unwrap(),
            6
        );
        for (i, c) in clients.iter().enumerate() {
            c.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            let mut buf = [0u8; 16];
            for k in 0..2u8 {
                let (n, from) = c.recv_from(&mut buf).unwrap();
                assert_eq!(from, sender.local_addr().unwrap());
                assert_eq!(&buf[..n], &[i as u8, k, 0xaa]);
            }
        }
    }

    #[test]
    fn a_full_queue_asks_the_caller_to_flush() {
        let sends = ClientSends::default();
        let to: SocketAddr = "127.0.0.1:9".parse().unwrap();
        for i in 1..MAX_BATCH {
            assert!(!sends.push(to, &[0; 100]), "datagram {i} fits");
        }
        assert!(sends.push(to, &[0; 100]), "the batch is full");
        assert!(!sends.is_empty());
    }

    #[test]
    fn a_queue_far_past_its_backlog_drops_and_counts() {
        let sends = ClientSends::default();
        let to: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let datagram = [0u8; 1200];
        let fits = MAX_BACKLOG_BYTES.div_ceil(datagram.len());
        for _ in 0..fits + 5 {
            let _ = sends.push(to, &datagram);
        }
        assert!(
            sends.is_backlogged(),
            "readers wait long before anything is dropped"
        );
        assert_eq!(sends.counts().dropped, 5);
        assert_eq!(lock(&sends.queue).items.len(), fits);
    }
}
