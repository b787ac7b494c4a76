//! An emulated datagram network: every datagram is delayed (latency plus jitter), and may
//! be lost, duplicated or held back so that later ones overtake it. All of it is drawn
//! from a seeded generator, so a run replays exactly.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::rng::SimRng;

/// How a path treats the datagrams sent over it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkConditions {
    /// One-way delay every datagram takes.
    pub latency: Duration,
    /// An extra delay drawn uniformly from `0..=jitter` per datagram (so datagrams sent
    /// close together may swap places).
    pub jitter: Duration,
    /// Probability that a datagram is lost.
    pub loss: f64,
    /// Probability that a datagram is delivered twice (the copy takes its own delay).
    pub duplicate: f64,
    /// Probability that a datagram is held back by [`Self::reorder_delay`] more, so that
    /// datagrams sent after it arrive first.
    pub reorder: f64,
    /// The extra delay of a reordered datagram.
    pub reorder_delay: Duration,
}

impl LinkConditions {
    /// A perfect path with this one-way latency: no jitter, loss, duplication or
    /// reordering.
    pub fn ideal(latency: Duration) -> Self {
        Self {
            latency,
            jitter: Duration::ZERO,
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_delay: Duration::ZERO,
        }
    }

    /// A lossy, jittery path: 20 ms ± 10 ms, 3 % loss, 2 % duplication, 5 % of datagrams
    /// held back by 30 ms.
    pub fn lossy() -> Self {
        Self {
            latency: Duration::from_millis(20),
            jitter: Duration::from_millis(10),
            loss: 0.03,
            duplicate: 0.02,
            reorder: 0.05,
            reorder_delay: Duration::from_millis(30),
        }
    }
}

impl Default for LinkConditions {
    /// [`LinkConditions::ideal`] with 10 ms of latency.
    fn default() -> Self {
        Self::ideal(Duration::from_millis(10))
    }
}

/// A datagram in flight or delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Datagram {
    /// The sender's address.
    pub from: SocketAddr,
    /// The receiver's address.
    pub to: SocketAddr,
    /// The UDP payload.
    pub bytes: Bytes,
    /// When it was sent.
    pub sent: Instant,
}

/// What the network did, since it was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetworkStats {
    /// Datagrams handed to [`Network::send`].
    pub sent: u64,
    /// Datagrams handed out by [`Network::pop_due`] (copies included).
    pub delivered: u64,
    /// Datagrams lost.
    pub lost: u64,
    /// Extra copies made.
    pub duplicated: u64,
    /// Datagrams held back to be overtaken.
    pub reordered: u64,
}

#[derive(Debug)]
struct Queued {
    at: Instant,
    seq: u64,
    datagram: Datagram,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Queued {}

impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Queued {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// The network: datagrams go in with [`Self::send`] and come out, when their time has
/// come, from [`Self::pop_due`]. Datagrams due at the same instant come out in the order
/// they were sent.
#[derive(Debug)]
pub struct Network {
    rng: SimRng,
    default: LinkConditions,
    /// Conditions of the paths towards particular addresses.
    towards: HashMap<SocketAddr, LinkConditions>,
    queue: BinaryHeap<Reverse<Queued>>,
    seq: u64,
    stats: NetworkStats,
}

impl Network {
    /// A network whose paths all have `conditions`, with randomness from `seed`.
    pub fn new(seed: u64, conditions: LinkConditions) -> Self {
        Self {
            rng: SimRng::new(seed),
            default: conditions,
            towards: HashMap::new(),
            queue: BinaryHeap::new(),
            seq: 0,
            stats: NetworkStats::default(),
        }
    }

    /// Changes the conditions of every path without its own (see
    /// [`Self::set_conditions_towards`]). Datagrams already in flight keep their fate.
    pub fn set_conditions(&mut self, conditions: LinkConditions) {
        self.default = conditions;
    }

    /// The conditions of paths without their own.
    pub fn conditions(&self) -> LinkConditions {
        self.default
    }

    /// Gives the paths towards `to` their own conditions.
    pub fn set_conditions_towards(&mut self, to: SocketAddr, conditions: LinkConditions) {
        self.towards.insert(to, conditions);
    }

    /// Sends a datagram at `now`: it is lost, or queued (maybe twice) for delivery.
    pub fn send(&mut self, now: Instant, from: SocketAddr, to: SocketAddr, bytes: Bytes) {
        self.stats.sent += 1;
        let conditions = self.towards.get(&to).copied().unwrap_or(self.default);
        if self.rng.chance(conditions.loss) {
            self.stats.lost += 1;
            return;
        }
        let copies = if self.rng.chance(conditions.duplicate) {
            self.stats.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut delay = conditions.latency + self.jitter(conditions.jitter);
            if self.rng.chance(conditions.reorder) {
                self.stats.reordered += 1;
                delay += conditions.reorder_delay;
            }
            self.seq += 1;
            self.queue.push(Reverse(Queued {
                at: now + delay,
                seq: self.seq,
                datagram: Datagram {
                    from,
                    to,
                    bytes: bytes.clone(),
                    sent: now,
                },
            }));
        }
    }

    fn jitter(&mut self, max: Duration) -> Duration {
        let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(self.rng.below(nanos.saturating_add(1)))
    }

    /// When the next datagram is due, if any is in flight.
    pub fn next_delivery(&self) -> Option<Instant> {
        self.queue.peek().map(|Reverse(q)| q.at)
    }

    /// The next datagram due at or before `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<Datagram> {
        if self.next_delivery()? > now {
            return None;
        }
        let Reverse(q) = self.queue.pop()?;
        self.stats.delivered += 1;
        Some(q.datagram)
    }

    /// Datagrams in flight.
    pub fn in_flight(&self) -> usize {
        self.queue.len()
    }

    /// What the network did so far.
    pub fn stats(&self) -> NetworkStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    #[test]
    fn ideal_paths_deliver_in_order_after_the_latency() {
        let t0 = Instant::now();
        let mut net = Network::new(1, LinkConditions::ideal(Duration::from_millis(5)));
        for i in 0..10u8 {
            net.send(t0, addr(1), addr(2), Bytes::from(vec![i]));
        }
        assert_eq!(net.pop_due(t0), None);
        assert_eq!(net.next_delivery(), Some(t0 + Duration::from_millis(5)));
        let got: Vec<u8> = std::iter::from_fn(|| net.pop_due(t0 + Duration::from_millis(5)))
            .map(|d| d.bytes[0])
            .collect();
        assert_eq!(got, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn impairments_happen_at_about_their_rates() {
        let t0 = Instant::now();
        let conditions = LinkConditions {
            loss: 0.1,
            duplicate: 0.1,
            reorder: 0.2,
            reorder_delay: Duration::from_millis(50),
            ..LinkConditions::ideal(Duration::from_millis(5))
        };
        let mut net = Network::new(2, conditions);
        for i in 0..10_000u32 {
            let at = t0 + Duration::from_micros(u64::from(i) * 100);
            net.send(at, addr(1), addr(2), Bytes::from(i.to_be_bytes().to_vec()));
        }
        let s = net.stats();
        assert!((800..1200).contains(&s.lost), "{s:?}");
        assert!((700..1100).contains(&s.duplicated), "{s:?}");
        let end = t0 + Duration::from_secs(10);
        let order: Vec<u32> = std::iter::from_fn(|| net.pop_due(end))
            .map(|d| u32::from_be_bytes(d.bytes[..].try_into().unwrap()))
            .collect();
        assert_eq!(order.len() as u64, s.sent - s.lost + s.duplicated);
        assert!(order.windows(2).any(|w| w[0] > w[1]), "some overtaking");
    }
}
