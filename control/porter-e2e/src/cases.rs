//! The end-to-end cases, written once and run against every relay binary: each takes the
//! [`Binary`] under test (the drivers' `tests/e2e.rs` instantiate them with
//! [`suite!`](crate::suite)).
//!
//! Each case runs the real binary with a generated config, with real QUIC peers (quinn)
//! or plain UDP sockets on loopback.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use porter_test_support::*;

use crate::peers::*;

pub(crate) fn simple_route(fqdn: &str, target: SocketAddr) -> String {
    format!("  - {{fqdn: \"{fqdn}\", type: simple, target: \"{target}\"}}\n")
}

/// Acceptance 1: two servers with different certificates behind one relay; exact,
/// wildcard and default routes reach the right one.
pub async fn routes_by_sni_exact_wildcard_and_default(bin: Binary) {
    let pki = Pki::new();
    let a = EchoServer::start("A", pki.server_config(&["a.test", "x.wild.test"]), false);
    let b = EchoServer::start("B", pki.server_config(&["b.test", "other.test"]), false);
    let routes = format!(
        "routes:\n{}{}{}{}",
        simple_route("a.test", a.addr),
        simple_route("b.test", b.addr),
        simple_route("*.wild.test", a.addr),
        simple_route("*", b.addr),
    );
    let porter = Porter::start(bin, &routes);
    let client = client_endpoint(pki.client_config(None));
    for (sni, expect) in [
        ("a.test", "A"),
        ("b.test", "B"),
        ("x.wild.test", "A"),
        ("other.test", "B"),
    ] {
        let conn = connect(&client, porter.udp, sni)
            .await
            .unwrap_or_else(|e| panic!("{sni}: {e}; log:\n{}", porter.log()));
        let reply = echo(&conn, sni.as_bytes()).await;
        assert_eq!(reply, format!("{expect}:{sni}"), "{sni}");
        conn.close(0u32.into(), b"done");
    }
    let stats = porter.stats();
    assert_eq!(stats["sessions_opened"], 4, "{stats}");
}

/// Acceptance 2: a ClientHello that spans two Initial packets (a long ALPN list).
pub async fn client_hello_spanning_two_initials(bin: Binary) {
    let pki = Pki::new();
    let a = EchoServer::start("A", pki.server_config(&["a.test"]), false);
    let porter = Porter::start(bin, &format!("routes:\n{}", simple_route("a.test", a.addr)));
    // 40 protocols of 40 bytes: the ClientHello is well over one packet.
    let mut alpn: Vec<Vec<u8>> = (0..40)
        .map(|i| format!("proto-{i:02}-{}", "x".repeat(31)).into_bytes())
        .collect();
    alpn.push(ALPN.to_vec());
    let client = client_endpoint(pki.client_config(Some(alpn)));
    let conn = connect(&client, porter.udp, "a.test")
        .await
        .unwrap_or_else(|e| panic!("{e}; log:\n{}", porter.log()));
    assert_eq!(echo(&conn, b"big hello").await, "A:big hello");
    // The relay saw the hello arrive in pieces: the first datagram was held.
    assert!(porter.wait_log("session opened", Duration::from_secs(2)));
    let stats = porter.stats();
    assert!(
        stats["to_backend"]["datagrams"].as_u64().unwrap() >= 2,
        "{stats}"
    );
}

/// Acceptance 3: a client that moves to a new socket (Endpoint::rebind) and a client
/// behind a NAT that changes its outside port both stay with their backend.
pub async fn migration_and_nat_rebinding_keep_the_backend(bin: Binary) {
    let pki = Pki::new();
    let a = EchoServer::start("A", pki.server_config(&["a.test"]), false);
    let b = EchoServer::start("B", pki.server_config(&["b.test"]), false);
    let routes = format!(
        "routes:\n{}{}",
        simple_route("a.test", a.addr),
        simple_route("b.test", b.addr)
    );
    let porter = Porter::start(bin, &routes);

    // Rebind: the client's own socket changes.
    let client = client_endpoint(pki.client_config(None));
    let conn = connect(&client, porter.udp, "a.test").await.unwrap();
    assert_eq!(echo(&conn, b"before").await, "A:before");
    let before = client.local_addr().unwrap();
    client
        .rebind(std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
        .unwrap();
    assert_ne!(client.local_addr().unwrap(), before);
    for i in 0..3 {
        assert_eq!(
            echo(&conn, format!("after{i}").as_bytes()).await,
            format!("A:after{i}")
        );
    }

    // NAT rebinding: same client socket, the NAT's outside port changes.
    let nat = Nat::start(porter.udp).await;
    let client = client_endpoint(pki.client_config(None));
    let conn = connect(&client, nat.inside, "b.test").await.unwrap();
    assert_eq!(echo(&conn, b"before").await, "B:before");
    let old = nat.outside();
    let new = nat.rebind().await;
    assert_ne!(old, new);
    for i in 0..3 {
        assert_eq!(
            echo(&conn, format!("nat{i}").as_bytes()).await,
            format!("B:nat{i}")
        );
    }
    assert!(
        porter.wait_log("client path opened", Duration::from_secs(2)),
        "log:\n{}",
        porter.log()
    );
    assert_eq!(porter.stats()["sessions_opened"], 2);
}

/// Waits (polling, up to `within`) until `cond` holds; whether it did.
pub(crate) async fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while !cond() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    true
}

/// A payload of `len` ASCII bytes (the echo answers in UTF-8).
pub(crate) fn payload(len: usize) -> String {
    (0..len)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect()
}

/// Starts an echo of `payload` on `conn` in a task; its answer comes from the handle.
pub(crate) fn transfer(conn: &quinn::Connection, payload: &str) -> tokio::task::JoinHandle<String> {
    let (conn, payload) = (conn.clone(), payload.to_owned());
    tokio::spawn(async move { echo(&conn, payload.as_bytes()).await })
}

/// Issue 13, acceptance 4: each time the client moves (quinn's `rebind`, new port and new
/// CID, mid-transfer), the backend sees the connection from a new remote address (a new
/// path of the relay, with its own upstream socket) and validates it: the transfer
/// completes, and the connection stays on the new path after the relay closed the old
/// one (a path whose validation failed would have fallen back to it).
pub async fn the_backend_sees_each_move_as_a_new_address(bin: Binary) {
    let pki = Pki::new();
    let a = EchoServer::start("A", pki.server_config(&["a.test"]), false);
    let porter = Porter::start(
        bin,
        &format!(
            "relay: {{path_idle_timeout: 1s}}\nroutes:\n{}",
            simple_route("a.test", a.addr)
        ),
    );
    let client = client_endpoint(pki.client_config(None));
    let conn = connect(&client, porter.udp, "a.test").await.unwrap();
    let remote = |reply: String| -> SocketAddr {
        let addr = reply.strip_prefix("A:").expect("backend A answers");
        addr.parse().expect("a socket address")
    };
    let mut seen = vec![remote(echo(&conn, WHO_AM_I).await)];
    let data = payload(2 << 20);
    for round in 1..=2 {
        let sent = conn.stats().udp_tx.bytes;
        let running = transfer(&conn, &data);
        // Mid-transfer: some of it is out, most of it is not.
        assert!(
            eventually(Duration::from_secs(10), || conn.stats().udp_tx.bytes
                > sent + (256 << 10))
            .await,
            "round {round}: the transfer started"
        );
        client
            .rebind(std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
            .unwrap();
        let echoed = running.await.expect("transfer task");
        assert!(
            echoed.len() == data.len() + 2 && echoed[2..] == data,
            "round {round}: transfer intact"
        );
        let now = remote(echo(&conn, WHO_AM_I).await);
        assert!(
            !seen.contains(&now),
            "round {round}: the backend sees the move as a new address ({now}, before {seen:?})"
        );
        seen.push(now);
        assert_eq!(
            porter.stats()["paths_opened"],
            round,
            "one new path per move"
        );
    }
    // The relay closes the paths the client left; the connection is on the last one.
    assert!(
        eventually(Duration::from_secs(10), || porter.stats()["paths"] == 1).await,
        "old paths end on their timer; log:\n{}",
        porter.log()
    );
    assert!(porter.log().contains("client path closed"));
    assert_eq!(echo(&conn, b"still here").await, "A:still here");
    assert_eq!(
        remote(echo(&conn, WHO_AM_I).await),
        seen[2],
        "validated: it stayed"
    );
    assert_eq!(porter.stats()["sessions_opened"], 1);
}

/// Issue 13, acceptance 3: a copy of a live connection's datagram, sent from another
/// address mid-transfer, opens a path of its own; the backend answers on that path only
/// within its anti-amplification limit, so the forging address gets at most 3× the bytes
/// it sent, and the real client's transfer goes on, intact. (Before paths, one such
/// datagram made the relay send tens of kilobytes of the transfer to the forger.)
pub async fn a_forged_datagram_is_not_amplified_and_the_transfer_continues(bin: Binary) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    let pki = Pki::new();
    let a = EchoServer::start("A", pki.server_config(&["a.test"]), false);
    let porter = Porter::start(bin, &format!("routes:\n{}", simple_route("a.test", a.addr)));
    // The NAT lets the test copy what the client sends, as an on-path observer could.
    let nat = Nat::start(porter.udp).await;
    let client = client_endpoint(pki.client_config(None));
    let conn = connect(&client, nat.inside, "a.test").await.unwrap();
    assert_eq!(echo(&conn, b"hello").await, "A:hello");

    // The copy comes from an address the kernel hands to the session's own shard
    // (`udp.shards`), as the client's datagrams: one shard handles both in the order they
    // arrive, so the copy reaches the backend after the original and is a replay there.
    // (From a 4-tuple of another shard it is handled in parallel and may overtake the
    // original; the backend then takes it for a migration of its own, and what it sends
    // on the copy's path is its anti-amplification limit's business, not the relay's.)
    let forger = crate::shard_cases::socket_on_shard(
        &porter,
        crate::shard_cases::shard_of_the_session(&porter),
    )
    .await;
    forger.set_nonblocking(true).unwrap();
    let forger = Arc::new(tokio::net::UdpSocket::from_std(forger).unwrap());
    let received = Arc::new(AtomicUsize::new(0));
    {
        let (forger, received) = (forger.clone(), received.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, _)) = forger.recv_from(&mut buf).await {
                received.fetch_add(n, Ordering::SeqCst);
            }
        });
    }
    let data = payload(4 << 20);
    let rx = conn.stats().udp_rx.bytes;
    let running = transfer(&conn, &data);
    // Forge during the download half of the echo, while the client sends little more
    // than acknowledgements: a relay that followed the forged address would send it the
    // transfer until the client's next datagram.
    let mut sent = 0;
    for step in 1..=3u64 {
        assert!(
            eventually(Duration::from_secs(20), || conn.stats().udp_rx.bytes
                > rx + step * (512 << 10))
            .await,
            "the download is under way"
        );
        let replay = nat
            .last_short_header()
            .expect("the client sent short headers");
        sent += forger.send_to(&replay, porter.udp).await.unwrap();
    }
    let echoed = running.await.expect("transfer task");
    assert!(
        echoed.len() == data.len() + 2 && echoed[2..] == data,
        "the transfer is intact"
    );
    // The forged datagrams reached the relay and opened a path (the same one each time).
    assert!(
        eventually(Duration::from_secs(5), || porter.stats()["paths_opened"]
            == 1)
        .await,
        "{}",
        porter.stats()
    );
    // More traffic on the real path, so the backend has had every chance to answer.
    for i in 0..3 {
        assert_eq!(
            echo(&conn, format!("after{i}").as_bytes()).await,
            format!("A:after{i}")
        );
    }
    let got = received.load(Ordering::SeqCst);
    assert!(
        got <= 3 * sent,
        "{got} bytes reached the forging address for {sent} sent"
    );
    assert_eq!(porter.stats()["sessions_opened"], 1);
}

/// Issue 13, acceptance 1: two quinn backends issue QUIC-LB CIDs (porter-quic-lb's
/// generator); a client of each, both on 127.0.0.1. Mid-transfer, one moves to a socket
/// on 127.0.0.2 and, as quinn does on a move, to a new CID the relay never saw: the relay
/// decodes the server ID in it, its transfer completes on its own backend, which sees the
/// new address, and the other client's transfer is undisturbed. Once in plaintext, once
/// with single-pass AES-128 CIDs.
pub async fn quic_lb_keeps_a_client_that_changes_address_and_cid_on_its_backend(bin: Binary) {
    use porter_quic_lb::{Config, Key, ServerId};

    let key = [
        0x8f, 0x95, 0xf0, 0x92, 0x45, 0x76, 0x5f, 0x80, 0x25, 0x69, 0x34, 0xe5, 0x0c, 0x66, 0x20,
        0x7f,
    ];
    for (mode, lb, key_text) in [
        (
            "plaintext",
            Config::new(1, 2, 6, None).unwrap(),
            String::new(),
        ),
        (
            "single-pass AES",
            Config::new(2, 2, 14, Some(Key::new(key))).unwrap(),
            format!(
                ", key: {}",
                key.iter().map(|b| format!("{b:02x}")).collect::<String>()
            ),
        ),
    ] {
        let pki = Pki::new();
        let sid = |n: u8| ServerId::new(&[0, n]).unwrap();
        let a = EchoServer::start_quic_lb("A", pki.server_config(&["a.test"]), lb.clone(), sid(1));
        let b = EchoServer::start_quic_lb("B", pki.server_config(&["b.test"]), lb.clone(), sid(2));
        let config = format!(
            "quic_lb:\n  - {{config_id: {}, server_id_len: 2, nonce_len: {}{key_text}, \
             servers: {{\"0001\": \"{}\", \"0002\": \"{}\"}}}}\nroutes:\n{}{}",
            lb.id().value(),
            lb.nonce_len(),
            a.addr,
            b.addr,
            simple_route("a.test", a.addr),
            simple_route("b.test", b.addr),
        );
        let porter = Porter::start(bin, &config);
        let (mover, stayer) = (
            client_endpoint(pki.client_config(None)),
            client_endpoint(pki.client_config(None)),
        );
        let to_a = connect(&mover, porter.udp, "a.test").await.unwrap();
        let to_b = connect(&stayer, porter.udp, "b.test").await.unwrap();
        assert_eq!(echo(&to_b, b"hello").await, "B:hello");

        let data = payload(2 << 20);
        let staying = transfer(&to_b, &data);
        move_to_another_ip_mid_transfer(&mover, &to_a, "A", &porter, mode).await;
        let stayed = staying.await.expect("transfer task");
        assert!(
            stayed.starts_with("B:") && stayed[2..] == data,
            "{mode}: the other client undisturbed"
        );
        assert_eq!(echo(&to_b, b"still").await, "B:still");
    }
}

/// While `conn` (of `endpoint`, on 127.0.0.1) echoes 2 MiB through `porter` from the
/// backend named `name`, moves it to a socket on 127.0.0.2 and, as quinn does on a move,
/// to a new CID the relay never saw. Asserts that the transfer completes on that backend,
/// that the backend sees the new address, and that the relay routed the move by the
/// CID's server ID (no other rule follows a new IP with a new CID).
pub(crate) async fn move_to_another_ip_mid_transfer(
    endpoint: &quinn::Endpoint,
    conn: &quinn::Connection,
    name: &str,
    porter: &Porter,
    mode: &str,
) {
    let before = echo(conn, WHO_AM_I).await;
    let routed = porter.stats()["quic_lb"]["routed"].as_u64().unwrap_or(0);
    let moved = async {
        endpoint
            .rebind(std::net::UdpSocket::bind("127.0.0.2:0").unwrap())
            .unwrap();
    };
    echo_across_a_move(conn, name, moved, || {
        format!(
            "{mode}: the moved client's transfer completes on its backend; log:\n{}",
            porter.log()
        )
    })
    .await;
    let after = echo(conn, WHO_AM_I).await;
    assert_ne!(before, after, "{mode}: backend {name} sees the new address");
    assert!(after.starts_with(&format!("{name}:127.0.0.1:")), "{after}");
    let stats = porter.stats();
    assert!(
        stats["quic_lb"]["routed"].as_u64() > Some(routed),
        "{mode}: routed by server ID: {stats}"
    );
}

/// Starts a 2 MiB echo on `conn`, runs `move_it` once 256 KiB of it have left, and
/// asserts that the echo completes within 30 s, byte for byte, from the backend named
/// `name`; `failure` says what went wrong (with the logs) if not.
pub(crate) async fn echo_across_a_move(
    conn: &quinn::Connection,
    name: &str,
    move_it: impl std::future::Future<Output = ()>,
    failure: impl FnOnce() -> String,
) {
    let data = payload(2 << 20);
    let sent = conn.stats().udp_tx.bytes;
    let moving = transfer(conn, &data);
    assert!(
        eventually(Duration::from_secs(10), || conn.stats().udp_tx.bytes
            > sent + (256 << 10))
        .await,
        "the transfer started"
    );
    move_it.await;
    let moved = tokio::time::timeout(Duration::from_secs(30), moving)
        .await
        .expect("the transfer completes in time")
        .expect("transfer task");
    let prefix = format!("{name}:");
    assert!(
        moved.len() == data.len() + prefix.len()
            && moved.starts_with(&prefix)
            && moved[prefix.len()..] == data,
        "{}",
        failure()
    );
}

/// Acceptance 4: a server that always sends Retry works through the relay.
pub async fn retry_server_works(bin: Binary) {
    let pki = Pki::new();
    let a = EchoServer::start("R", pki.server_config(&["retry.test"]), true);
    let porter = Porter::start(
        bin,
        &format!("routes:\n{}", simple_route("retry.test", a.addr)),
    );
    let client = client_endpoint(pki.client_config(None));
    let conn = connect(&client, porter.udp, "retry.test")
        .await
        .unwrap_or_else(|e| panic!("{e}; log:\n{}", porter.log()));
    assert_eq!(echo(&conn, b"after retry").await, "R:after retry");
    assert_eq!(porter.stats()["sessions_opened"], 1);
}

/// Acceptance 5: an unknown SNI fails fast with CONNECTION_REFUSED.
pub async fn unknown_sni_is_refused_fast(bin: Binary) {
    let pki = Pki::new();
    let a = EchoServer::start("A", pki.server_config(&["a.test"]), false);
    let porter = Porter::start(bin, &format!("routes:\n{}", simple_route("a.test", a.addr)));
    let client = client_endpoint(pki.client_config(None));
    let started = Instant::now();
    let err = connect(&client, porter.udp, "nobody.test")
        .await
        .expect_err("no route for nobody.test");
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");
    match err {
        quinn::ConnectionError::ConnectionClosed(close) => {
            assert_eq!(
                close.error_code,
                quinn::TransportErrorCode::CONNECTION_REFUSED
            );
        }
        other => panic!("expected CONNECTION_REFUSED, got {other:?}"),
    }
    assert_eq!(porter.stats()["refused"], 1);
}

/// Acceptance 6: 200 concurrent connections over two backends; once they close and the
/// idle timeout passes, nothing is left.
pub async fn many_connections_then_nothing_left(bin: Binary) {
    let pki = Pki::new();
    let a = EchoServer::start("A", pki.server_config(&["a.test"]), false);
    let b = EchoServer::start("B", pki.server_config(&["b.test"]), false);
    // The idle and handshake timeouts leave room for a test process that falls a few
    // seconds behind with 200 handshakes (a debug build on a busy machine): shorter ones
    // closed sessions whose handshake was still under way (a session whose client has
    // not answered its server within the handshake timeout is unvalidated, and ends).
    let routes = format!(
        "relay: {{idle_timeout: 5s, handshake_timeout: 5s}}\nroutes:\n{}{}",
        simple_route("a.test", a.addr),
        simple_route("b.test", b.addr)
    );
    let porter = Porter::start(bin, &routes);
    // Four client sockets carry 50 connections each: many connections share a 4-tuple.
    let endpoints: Vec<quinn::Endpoint> = (0..4)
        .map(|_| client_endpoint(pki.client_config(None)))
        .collect();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let endpoint = endpoints[i % 4].clone();
        let relay = porter.udp;
        tasks.push(tokio::spawn(async move {
            let (sni, name) = if i % 2 == 0 {
                ("a.test", "A")
            } else {
                ("b.test", "B")
            };
            let conn = connect(&endpoint, relay, sni).await.expect("connect");
            let msg = format!("conn-{i}");
            assert_eq!(echo(&conn, msg.as_bytes()).await, format!("{name}:{msg}"));
            conn.close(0u32.into(), b"done");
        }));
    }
    for t in tasks {
        t.await.expect("connection task");
    }
    let stats = porter.stats();
    assert_eq!(stats["sessions_opened"], 200, "{stats}");
    let drained = wait_for(Duration::from_secs(15), || {
        let s = porter.stats();
        (s["sessions"] == 0 && s["upstream_sockets"] == 0).then_some(s)
    });
    assert!(drained.is_some(), "still holding state: {}", porter.stats());
}

/// Acceptance 7: every capture's datagrams, replayed at the relay, reach the backend for
/// its SNI byte for byte and in order.
pub async fn corpus_replay_reaches_the_right_backend(bin: Binary) {
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/../../porter-core/tests/data");
    let captures = [
        ("chromium-156-h3.json", "game1.example.com"),
        (
            "chromium-156-h3-long-sni.json",
            "very-long-subdomain-name-for-testing.eu-central-1.games.example.com",
        ),
        ("aioquic-1.7-v1.json", "game2.example.com"),
        ("aioquic-1.7-v2.json", "v2.example.com"),
    ];
    let mut sinks = Vec::new();
    let mut routes = String::from("routes:\n");
    for (_, sni) in &captures {
        let sink = UdpSink::start().await;
        routes.push_str(&simple_route(sni, sink.addr));
        sinks.push(sink);
    }
    let porter = Porter::start(bin, &routes);
    for ((file, sni), sink) in captures.iter().zip(&sinks) {
        let text = std::fs::read_to_string(format!("{data}/{file}")).unwrap();
        let list: serde_json::Value = serde_json::from_str(&text).unwrap();
        let datagrams: Vec<Vec<u8>> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|d| hex_decode(d["hex"].as_str().unwrap()))
            .collect();
        let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for d in &datagrams {
            client.send_to(d, porter.udp).await.unwrap();
        }
        let got = wait_for(Duration::from_secs(5), || {
            let r = sink.received();
            (r.len() >= datagrams.len()).then_some(r)
        });
        let got = got.unwrap_or_else(|| {
            panic!(
                "{file}: {} of {} arrived",
                sink.received().len(),
                datagrams.len()
            )
        });
        assert_eq!(got, datagrams, "{file} ({sni}): bytes or order differ");
    }
    // No capture leaked into another's backend.
    for (sink, (file, _)) in sinks.iter().zip(&captures) {
        let text = std::fs::read_to_string(format!("{data}/{file}")).unwrap();
        let n = serde_json::from_str::<serde_json::Value>(&text)
            .unwrap()
            .as_array()
            .unwrap()
            .len();
        assert_eq!(sink.received().len(), n, "{file}");
    }
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Acceptance 8a: a malformed config is reported with the key at fault.
pub async fn malformed_config_names_the_problem(bin: Binary) {
    let config = "udp: {port: 7000, colour: blue}\nroutes:\n  - {fqdn: \"a..test\", type: simple, target: \"127.0.0.1:1\"}\n";
    let mut check = Porter::spawn(bin, config, &["check"]);
    let code = check
        .wait_exit(Duration::from_secs(10))
        .expect("check exits");
    assert_ne!(code, 0);
    let log = check.log();
    assert!(log.contains("colour"), "unknown key not named:\n{log}");
    assert!(log.contains("routes[0]"), "bad route not located:\n{log}");

    let missing = temp_dir().join("no-such-config.yaml");
    let out = std::process::Command::new(bin.path)
        .arg("--config")
        .arg(&missing)
        .output()
        .expect("run relay");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&missing.display().to_string()),
        "missing file not named: {stderr}"
    );

    let mut run = Porter::spawn(bin, config, &[]);
    assert_ne!(run.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(run.log().contains("colour"), "{}", run.log());
}

/// Acceptance 8b: a port in use is a clear start-up error.
pub async fn port_in_use_is_a_clear_error(bin: Binary) {
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let config = format!(
        "udp: {{port: {port}, bind: 127.0.0.1}}\napi: {{port: {}}}\nroutes: []\n",
        free_tcp_port()
    );
    let mut porter = Porter::spawn(bin, &config, &[]);
    let code = porter.wait_exit(Duration::from_secs(10));
    assert!(matches!(code, Some(c) if c != 0), "exit {code:?}");
    let log = porter.log();
    assert!(
        log.contains(&format!("cannot bind UDP 127.0.0.1:{port}")) && log.contains("in use"),
        "{log}"
    );
}

/// Acceptance 8c: an unreachable backend is named in the log.
pub async fn unreachable_backend_is_logged(bin: Binary) {
    let pki = Pki::new();
    let closed: SocketAddr = ([127, 0, 0, 1], free_udp_port()).into();
    let porter = Porter::start(
        bin,
        &format!("routes:\n{}", simple_route("dead.test", closed)),
    );
    let client = client_endpoint(pki.client_config(None));
    let connecting = client.connect(porter.udp, "dead.test").unwrap();
    let logged = porter.wait_log("backend unreachable", Duration::from_secs(5));
    drop(connecting);
    let log = porter.log();
    assert!(logged, "{log}");
    assert!(
        log.contains(&closed.to_string()),
        "backend not named:\n{log}"
    );
}

/// SIGTERM drains and exits 0.
pub async fn sigterm_exits_cleanly(bin: Binary) {
    let mut porter = Porter::start(bin, "relay: {drain_period: 1s}\nroutes: []\n");
    porter.terminate();
    assert_eq!(
        porter.wait_exit(Duration::from_secs(10)),
        Some(0),
        "{}",
        porter.log()
    );
    assert!(porter.log().contains("draining"), "{}", porter.log());
}
