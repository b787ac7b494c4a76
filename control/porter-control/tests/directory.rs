//! The Redis connection-ID directory against a real `redis-server`: the CIDs the relay
//! announces are stored under `porter:cid:<hex>` with the idle timeout as TTL and deleted
//! when their session ends; a lookup of a datagram's DCID bytes finds the longest CID
//! they start with; with Redis stopped, lookups answer "not found" at once and say why;
//! and 20 000 new sessions in one second cost a bounded number of round trips (the
//! figure BENCHMARKS.md records).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use porter_control::directory::{key, RedisDirectory, BATCH, FLUSH_DELAY};
use porter_control::redis_sync::TokioTimer;
use porter_core::wire::Version;
use porter_core::{
    BackendAddr, ClientAddr, CloseReason, ConnectionId, Notification, SessionId, SessionInfo,
    SessionState, Traffic,
};
use porter_host::Directory;
use porter_test_support::{RedisServer, Resp};

const TTL: Duration = Duration::from_secs(120);

async fn wait_until(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn backend(port: u16) -> BackendAddr {
    BackendAddr(SocketAddr::from(([10, 0, 0, 5], port)))
}

fn learned(session: u64, backend: BackendAddr, cids: &[&[u8]]) -> Notification {
    Notification::ConnectionIdsLearned {
        session: SessionId(session),
        backend,
        cids: cids.iter().map(|c| ConnectionId::new(c).unwrap()).collect(),
    }
}

fn closed(session: u64) -> Notification {
    Notification::SessionClosed {
        reason: CloseReason::IdleTimeout,
        info: SessionInfo {
            id: SessionId(session),
            sni: None,
            version: Version::V1,
            client: ClientAddr(([198, 51, 100, 1], 5000).into()),
            backend: Some(backend(1)),
            paths: Vec::new(),
            state: SessionState::Established,
            age: Duration::ZERO,
            idle: Duration::ZERO,
            to_backend: Traffic::default(),
            to_client: Traffic::default(),
            validated: true,
        },
    }
}

fn start(server: &RedisServer, instance: &str) -> RedisDirectory {
    let client = redis::Client::open(format!("redis://{}", server.address())).unwrap();
    let directory = RedisDirectory::new(instance, TTL, TokioTimer);
    tokio::spawn(directory.clone().run(client));
    directory
}

#[tokio::test]
async fn published_cids_are_found_by_the_dcid_bytes_and_deleted_with_their_session() {
    let server = RedisServer::start();
    let a = start(&server, "a");
    let b = start(&server, "b");
    wait_until("both up", Duration::from_secs(10), || {
        a.status().up && b.status().up
    })
    .await;
    a.note(&learned(1, backend(4433), &[&[0xc0, 1, 2, 3, 4, 5, 6, 7]]));
    a.note(&learned(1, backend(4433), &[&[0x5c; 8]]));
    a.note(&learned(2, backend(4434), &[&[0xd0, 1, 2, 3]]));
    wait_until("the writes", Duration::from_secs(10), || {
        a.status().counters.writes == 3
    })
    .await;
    let stored = server.command(&["GET", &key(&[0x5c; 8])]).unwrap();
    assert_eq!(stored, Resp::Bulk(Some("10.0.0.5:4433 a".into())));
    let Resp::Int(ttl_ms) = server.command(&["PTTL", &key(&[0x5c; 8])]).unwrap() else {
        panic!("no TTL")
    };
    assert!(
        ttl_ms > 110_000 && ttl_ms <= 120_000,
        "TTL is the idle timeout: {ttl_ms}"
    );

    // Instance B looks up the bytes after a short header's first octet: 20 of them, of
    // which the CID is the start.
    let mut dcid = vec![0xc0, 1, 2, 3, 4, 5, 6, 7];
    dcid.extend_from_slice(&[0xee; 12]);
    let found = b.lookup(Bytes::from(dcid)).await;
    assert_eq!(
        found,
        Some((
            ConnectionId::new(&[0xc0, 1, 2, 3, 4, 5, 6, 7]).unwrap(),
            backend(4433)
        ))
    );
    // A 4-byte CID, and a datagram too short for the 8-byte one.
    let found = b.lookup(Bytes::from_static(&[0xd0, 1, 2, 3, 9, 9])).await;
    assert_eq!(
        found,
        Some((ConnectionId::new(&[0xd0, 1, 2, 3]).unwrap(), backend(4434)))
    );
    assert_eq!(b.lookup(Bytes::from_static(&[0xee; 20])).await, None);
    let c = b.status().counters;
    assert_eq!((c.lookups, c.lookups_found, c.lookups_down), (3, 2, 0));

    // The session ends: its CIDs go.
    a.note(&closed(1));
    wait_until("the deletes", Duration::from_secs(10), || {
        a.status().counters.deletes == 2
    })
    .await;
    assert_eq!(
        server.command(&["EXISTS", &key(&[0x5c; 8])]).unwrap(),
        Resp::Int(0)
    );
    assert_eq!(a.status().sessions, 1);

    // After a move, B adopted session 2's connection and wrote its CID last: A's session
    // ending leaves B's entry alone.
    b.note(&learned(9, backend(4434), &[&[0xd0, 1, 2, 3]]));
    wait_until("B's write", Duration::from_secs(10), || {
        b.status().counters.writes == 1
    })
    .await;
    a.note(&closed(2));
    wait_until("A's delete", Duration::from_secs(10), || {
        a.status().counters.deletes == 3
    })
    .await;
    assert_eq!(
        server.command(&["GET", &key(&[0xd0, 1, 2, 3])]).unwrap(),
        Resp::Bulk(Some("10.0.0.5:4434 b".into()))
    );
}

#[tokio::test]
async fn with_redis_stopped_lookups_answer_not_found_at_once_and_the_link_says_why() {
    let mut server = RedisServer::start();
    let d = start(&server, "a");
    wait_until("up", Duration::from_secs(10), || d.status().up).await;
    server.stop();
    // The link notices when it next talks to Redis: a write.
    d.note(&learned(1, backend(4433), &[&[7; 8]]));
    wait_until("down", Duration::from_secs(10), || !d.status().up).await;
    let status = d.status();
    assert!(status.reason.is_some(), "{status:?}");
    let asked = Instant::now();
    assert_eq!(d.lookup(Bytes::from_static(&[7; 20])).await, None);
    assert!(
        asked.elapsed() < Duration::from_millis(50),
        "answered at once"
    );
    assert_eq!(d.status().counters.lookups_down, 1);
    // Back up: what the live session has is written again.
    server.restart();
    wait_until("written again", Duration::from_secs(15), || {
        matches!(server.command(&["EXISTS", &key(&[7; 8])]), Ok(Resp::Int(1)))
    })
    .await;
    // The link says it is up once that rewrite is done (a moment after Redis has it).
    wait_until("up again", Duration::from_secs(5), || d.status().up).await;
}

/// 20 000 new sessions in one second, each announcing its original DCID and then its
/// backend's CID (two writes): the pipelines sent stay within one per `FLUSH_DELAY`
/// (plus one per `BATCH` writes), whatever the rate. Prints the figure.
#[tokio::test]
async fn twenty_thousand_sessions_a_second_cost_a_bounded_number_of_round_trips() {
    let server = RedisServer::start();
    let d = start(&server, "a");
    wait_until("up", Duration::from_secs(10), || d.status().up).await;
    const SESSIONS: u64 = 20_000;
    const TICKS: u64 = 100; // every 10 ms
    let per_tick = SESSIONS / TICKS;
    let started = Instant::now();
    let directory = Arc::new(d.clone());
    for tick in 0..TICKS {
        for i in 0..per_tick {
            let n = tick * per_tick + i;
            let mut odcid = [0u8; 8];
            odcid.copy_from_slice(&n.to_be_bytes());
            let mut scid = odcid;
            scid[0] = 0xff;
            directory.note(&learned(n + 1, backend(4433), &[&odcid]));
            directory.note(&learned(n + 1, backend(4433), &[&scid]));
        }
        let next = started + Duration::from_millis(10 * (tick + 1));
        tokio::time::sleep_until(next.into()).await;
    }
    wait_until("every write", Duration::from_secs(30), || {
        d.status().counters.writes == 2 * SESSIONS
    })
    .await;
    let took = started.elapsed();
    let c = d.status().counters;
    assert_eq!(c.dropped, 0);
    let bound =
        took.as_millis() as u64 / FLUSH_DELAY.as_millis() as u64 + 2 * SESSIONS / BATCH as u64 + 2;
    println!(
        "{SESSIONS} sessions ({} writes) in {took:?}: {} round trips, {:.4} per session (bound {bound})",
        2 * SESSIONS,
        c.flushes,
        c.flushes as f64 / SESSIONS as f64
    );
    assert!(c.flushes <= bound, "{} round trips > {bound}", c.flushes);
    let Resp::Int(keys) = server.command(&["DBSIZE"]).unwrap() else {
        panic!("DBSIZE")
    };
    assert_eq!(keys as u64, 2 * SESSIONS);
}

/// What a lookup costs from the relay's side (the figure BENCHMARKS.md records, printed
/// with `--nocapture`): 2 000 lookups one after the other against a local redis-server
/// holding 10 000 CIDs, half of them of connections it holds (found), half of unknown
/// ones (one MGET of every candidate length either way). The test checks only the
/// answers; the times are a measurement, not a bound.
#[tokio::test]
async fn lookup_latency_is_one_round_trip() {
    let server = RedisServer::start();
    let d = start(&server, "a");
    wait_until("up", Duration::from_secs(10), || d.status().up).await;
    const HELD: u64 = 10_000;
    for n in 0..HELD {
        let mut cid = [0x11u8; 8];
        cid[..8].copy_from_slice(&n.to_be_bytes());
        cid[0] = 0x40;
        d.note(&learned(n + 1, backend(4433), &[&cid]));
    }
    wait_until("every write", Duration::from_secs(30), || {
        d.status().counters.writes == HELD
    })
    .await;
    let mut times = Vec::new();
    for n in 0..2_000u64 {
        let mut dcid = vec![0u8; 20];
        dcid[..8].copy_from_slice(&(n % HELD).to_be_bytes());
        dcid[0] = if n % 2 == 0 { 0x40 } else { 0x7f };
        let asked = Instant::now();
        let found = d.lookup(Bytes::from(dcid)).await;
        times.push(asked.elapsed());
        assert_eq!(found.is_some(), n % 2 == 0, "lookup {n}");
    }
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
    println!(
        "2000 lookups (half found) against {HELD} CIDs: p50 {:?}, p99 {:?}, max {:?}",
        at(0.5),
        at(0.99),
        at(1.0)
    );
}
