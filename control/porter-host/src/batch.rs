//! Planning what to send after a received batch: the host decides per datagram, the
//! engine then performs the plan in order, and runs of contiguous, equal-sized datagrams
//! for one destination become one GSO send.

use std::ops::Range;
use std::time::Instant;

use porter_core::{ClientAddr, Command, PathId, Verdict};

use crate::host::RelayHost;

/// One thing to do after a batch, in order.
#[derive(Debug)]
pub(crate) enum Out {
    /// Execute one of the relay's commands.
    Command(Command),
    /// A command already executed.
    Done,
    /// Forward these bytes of the received data on the path's upstream socket.
    ToBackend(PathId, Range<usize>),
    /// Forward these bytes of the received data to the client.
    ToClient(ClientAddr, Range<usize>),
}

/// Hands a client's received slot (one datagram, or a GRO run of `stride`-sized ones) to
/// the host and appends what to do to `outs`.
pub(crate) fn plan_client(
    host: &mut RelayHost,
    now: Instant,
    from: ClientAddr,
    data: &[u8],
    stride: usize,
    outs: &mut Vec<Out>,
) {
    plan(host, data, stride, outs, |host, segment, range| match host
        .client_datagram(now, from, segment)
    {
        Verdict::ToBackend { path, .. } => Some(Out::ToBackend(path, range)),
        // Answers leave as a `Command::Transmit`, drained below.
        _ => None,
    });
}

/// As [`plan_client`], for a slot received on `path`'s upstream socket.
pub(crate) fn plan_backend(
    host: &mut RelayHost,
    now: Instant,
    path: PathId,
    data: &[u8],
    stride: usize,
    outs: &mut Vec<Out>,
) {
    plan(host, data, stride, outs, |host, segment, range| match host
        .backend_datagram(now, path, segment)
    {
        Verdict::ToClient { client, .. } => Some(Out::ToClient(client, range)),
        _ => None,
    });
}

/// Splits a slot into its datagrams; for each, appends what `decide` says to send, then
/// the relay's commands, so that the plan keeps the order in which things happened.
fn plan(
    host: &mut RelayHost,
    data: &[u8],
    stride: usize,
    outs: &mut Vec<Out>,
    mut decide: impl FnMut(&mut RelayHost, &[u8], Range<usize>) -> Option<Out>,
) {
    let mut commands = Vec::new();
    for (i, segment) in data.chunks(stride).enumerate() {
        let range = i * stride..i * stride + segment.len();
        outs.extend(decide(host, segment, range));
        host.drain(&mut commands);
        outs.extend(commands.drain(..).map(Out::Command));
    }
}

/// Drains the relay's pending commands into `outs` (after a timeout, an allocation's
/// answer, a control-plane change).
pub(crate) fn plan_commands(host: &mut RelayHost, outs: &mut Vec<Out>) {
    let mut commands = Vec::new();
    host.drain(&mut commands);
    outs.extend(commands.into_iter().map(Out::Command));
}

/// Finds the run of outputs from `i` (which `matches`) whose ranges are contiguous and
/// `seg` bytes long, the last one possibly shorter, up to `max` segments: what one GSO
/// send can carry. Returns the run's end offset in the data and the index after it.
pub(crate) fn run(
    outs: &[Out],
    i: usize,
    seg: usize,
    max: usize,
    matches: impl Fn(&Out) -> Option<Range<usize>>,
) -> (usize, usize) {
    let first = matches(&outs[i]).unwrap_or(0..0);
    let (mut end, mut full) = (first.end, first.len() == seg);
    let mut j = i + 1;
    while full && j < outs.len() && j - i < max {
        match matches(&outs[j]) {
            Some(r) if r.start == end && r.len() <= seg => {
                full = r.len() == seg;
                end = r.end;
                j += 1;
            }
            _ => break,
        }
    }
    (end, j)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to_backend(session: PathId) -> impl Fn(&Out) -> Option<Range<usize>> {
        move |o| match o {
            Out::ToBackend(s, r) if *s == session => Some(r.clone()),
            _ => None,
        }
    }

    #[test]
    fn a_run_takes_contiguous_full_segments_and_one_short_tail() {
        let s = PathId(1);
        let outs = vec![
            Out::ToBackend(s, 0..100),
            Out::ToBackend(s, 100..200),
            Out::ToBackend(s, 200..250),
            Out::ToBackend(s, 250..350),
        ];
        assert_eq!(run(&outs, 0, 100, 64, to_backend(s)), (250, 3));
        assert_eq!(run(&outs, 3, 100, 64, to_backend(s)), (350, 4));
    }

    #[test]
    fn a_run_stops_at_another_destination_a_gap_or_the_segment_limit() {
        let (s, t) = (PathId(1), PathId(2));
        let outs = vec![
            Out::ToBackend(s, 0..100),
            Out::ToBackend(t, 100..200),
            Out::ToBackend(s, 200..300),
        ];
        assert_eq!(run(&outs, 0, 100, 64, to_backend(s)), (100, 1));
        let gap = vec![Out::ToBackend(s, 0..100), Out::ToBackend(s, 150..250)];
        assert_eq!(run(&gap, 0, 100, 64, to_backend(s)), (100, 1));
        let long: Vec<Out> = (0..5)
            .map(|k| Out::ToBackend(s, k * 100..(k + 1) * 100))
            .collect();
        assert_eq!(run(&long, 0, 100, 2, to_backend(s)), (200, 2));
        let act = vec![
            Out::ToBackend(s, 0..100),
            Out::Done,
            Out::ToBackend(s, 100..200),
        ];
        assert_eq!(run(&act, 0, 100, 64, to_backend(s)), (100, 1));
    }
}
