//! Shards inside one instance (`udp.shards`): every shard has its own relay and its own
//! listener socket on the shared port (SO_REUSEPORT), and the kernel hashes each client
//! 4-tuple to one of them. A client that moves to a 4-tuple hashed to another shard must
//! stay on its backend: the shard it lands on asks the others, adopts the connection and
//! opens its own path, and the old shard lets its path idle out.
//!
//! The kernel's hash is keyed at random, so the cases find a source port that lands on
//! the other shard by asking: a one-byte long header is dropped as `malformed` by
//! whichever shard receives it, and `/stats`' `shard_stats` shows whose drops grew.

use std::net::UdpSocket as StdUdpSocket;
use std::time::Duration;

use porter_test_support::*;

use crate::cases::{echo_across_a_move, eventually};
use crate::peers::{client_endpoint_on, connect, echo, EchoServer, Nat, Pki, WHO_AM_I};

/// A relay with two shards routing `a.test` to `backend`.
fn two_shards(bin: Binary, backend: std::net::SocketAddr) -> Porter {
    Porter::start_placed(
        bin,
        "",
        &format!("routes:\n  - {{fqdn: a.test, type: simple, target: \"{backend}\"}}\n"),
        |dir, text| {
            let text = text.replacen("log_requests: true}", "log_requests: true, shards: 2}", 1);
            let path = dir.join("config.yaml");
            std::fs::write(&path, text).expect("write config");
            path
        },
    )
}

fn drops_per_shard(porter: &Porter) -> Vec<u64> {
    let stats = porter.stats();
    stats["shard_stats"]
        .as_array()
        .map(|shards| {
            shards
                .iter()
                .map(|s| s["drops"].as_u64().unwrap_or(0))
                .collect()
        })
        .unwrap_or_default()
}

/// The shard that receives what `socket` sends to the relay.
pub(crate) async fn shard_of(porter: &Porter, socket: &StdUdpSocket) -> usize {
    let before = drops_per_shard(porter);
    if before.len() == 1 {
        return 0;
    }
    socket.send_to(&[0xc0], porter.udp).unwrap();
    let mut grew = None;
    assert!(
        eventually(Duration::from_secs(5), || {
            let now = drops_per_shard(porter);
            grew = (0..now.len()).find(|&i| now[i] > before[i]);
            grew.is_some()
        })
        .await,
        "the probe was counted by no shard: {}",
        porter.stats()
    );
    grew.unwrap()
}

/// A socket on 127.0.0.1 whose datagrams the kernel hands to shard `want`.
pub(crate) async fn socket_on_shard(porter: &Porter, want: usize) -> StdUdpSocket {
    for _ in 0..64 {
        let socket = StdUdpSocket::bind("127.0.0.1:0").unwrap();
        if shard_of(porter, &socket).await == want {
            return socket;
        }
    }
    panic!("64 ports and none hashed to shard {want}");
}

/// The shard that holds the relay's one session.
pub(crate) fn shard_of_the_session(porter: &Porter) -> usize {
    let stats = porter.stats();
    let shards = stats["shard_stats"].as_array().map_or(0, Vec::len);
    (0..shards)
        .find(|&i| stats["shard_stats"][i]["sessions"] == 1)
        .unwrap_or_else(|| panic!("one shard has the session: {stats}"))
}

/// After a move from shard `from` to shard `to`: the new shard adopted the connection,
/// the host counts a path opened and no new session, and the old shard's session ends
/// on its path timer.
async fn moved(porter: &Porter, from: usize, to: usize) {
    let stats = porter.stats();
    assert!(
        stats["shard_stats"][to]["moved_in"].as_u64() >= Some(1),
        "shard {to} adopted the connection from shard {from}: {stats}"
    );
    assert_eq!(stats["sessions_opened"], 1, "{stats}");
    assert!(stats["paths_opened"].as_u64() >= Some(1), "{stats}");
    assert!(
        eventually(Duration::from_secs(15), || {
            let s = porter.stats();
            s["shard_stats"][from]["sessions"] == 0 && s["sessions"] == 1
        })
        .await,
        "the old shard's session ends once its path idles out: {}",
        porter.stats()
    );
    assert!(
        porter.log().contains("reason=\"moved\""),
        "{}",
        porter.log()
    );
}

/// A quinn client rebinds to a socket whose 4-tuple the kernel hashes to the other shard
/// (quinn switches CID and port at once: the other shard finds the connection as the one
/// session of the client's IP). A 2 MiB echo across the move completes byte for byte on
/// the same backend, which sees the new address.
pub async fn a_client_that_moves_to_a_port_of_another_shard_keeps_its_backend(bin: Binary) {
    let pki = Pki::new();
    let backend = EchoServer::start("A", pki.server_config(&["a.test"]), false);
    let porter = two_shards(bin, backend.addr);
    let first = StdUdpSocket::bind("127.0.0.1:0").unwrap();
    let home = shard_of(&porter, &first).await;
    let away = socket_on_shard(&porter, 1 - home).await;
    let endpoint = client_endpoint_on(first, pki.client_config(None));
    let conn = connect(&endpoint, porter.udp, "a.test")
        .await
        .unwrap_or_else(|e| panic!("{e}; log:\n{}", porter.log()));
    let before = echo(&conn, WHO_AM_I).await;
    echo_across_a_move(
        &conn,
        "A",
        async {
            endpoint.rebind(away).unwrap();
        },
        || {
            format!(
                "the transfer across shards completes; log:\n{}",
                porter.log()
            )
        },
    )
    .await;
    assert_ne!(
        echo(&conn, WHO_AM_I).await,
        before,
        "the backend sees the new address"
    );
    moved(&porter, home, 1 - home).await;
    assert_eq!(echo(&conn, b"still").await, "A:still");
}

/// A NAT rebinding (same client socket and CID, a new outside port) whose new 4-tuple the
/// kernel hashes to the other shard: found there by its CID.
pub async fn a_nat_rebinding_onto_another_shard_keeps_its_backend(bin: Binary) {
    let pki = Pki::new();
    let backend = EchoServer::start("A", pki.server_config(&["a.test"]), false);
    let porter = two_shards(bin, backend.addr);
    let nat = Nat::start(porter.udp).await;
    let endpoint = client_endpoint_on(
        StdUdpSocket::bind("127.0.0.1:0").unwrap(),
        pki.client_config(None),
    );
    let conn = connect(&endpoint, nat.inside, "a.test")
        .await
        .unwrap_or_else(|e| panic!("{e}; log:\n{}", porter.log()));
    assert_eq!(echo(&conn, b"before").await, "A:before");
    let home = shard_of_the_session(&porter);
    let away = socket_on_shard(&porter, 1 - home).await;
    echo_across_a_move(
        &conn,
        "A",
        async {
            nat.rebind_on(away);
        },
        || {
            format!(
                "the transfer across shards completes; log:\n{}",
                porter.log()
            )
        },
    )
    .await;
    moved(&porter, home, 1 - home).await;
    assert_eq!(echo(&conn, b"still").await, "A:still");
}
