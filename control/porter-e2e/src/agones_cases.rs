//! End-to-end cases for `agones` routes: the relay binary asks a test allocator (the
//! project's own proto, mutual TLS) for game servers that are real quinn servers.

use std::time::{Duration, Instant};

use porter_test_support::*;
use tonic::Code;

use crate::peers::*;

const NAMESPACE: &str = "games";
const FLEET: &str = "arena";

/// Writes the client's PEM files and returns the `agones:` config section.
fn agones_section(pki: &TestPki, allocator: &TestAllocator, extra: &str) -> String {
    let dir = temp_dir();
    let (cert, key, ca) = (
        dir.join("client.crt"),
        dir.join("client.key"),
        dir.join("ca.crt"),
    );
    std::fs::write(&cert, &pki.client.cert_pem).unwrap();
    std::fs::write(&key, &pki.client.key_pem).unwrap();
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    format!(
        "agones: {{enabled: true, namespace: {NAMESPACE}, allocator_host: \"{}\", \
         allocator_client_cert: \"{}\", allocator_client_key: \"{}\", allocator_ca_cert: \"{}\", \
         tls_server_name: {SERVER_DNS_NAME}{extra}}}\n",
        allocator.addr(),
        cert.display(),
        key.display(),
        ca.display(),
    )
}

fn agones_route(fqdn: &str) -> String {
    format!("routes:\n  - {{fqdn: \"{fqdn}\", type: agones, target: {FLEET}}}\n")
}

fn assert_refused(result: Result<quinn::Connection, quinn::ConnectionError>) {
    match result {
        Err(quinn::ConnectionError::ConnectionClosed(close)) => {
            assert_eq!(
                close.error_code,
                quinn::TransportErrorCode::CONNECTION_REFUSED
            );
        }
        Err(other) => panic!("expected CONNECTION_REFUSED, got {other}"),
        Ok(_) => panic!("expected CONNECTION_REFUSED, got a connection"),
    }
}

/// Players fill one game server before the next is used; a full fleet refuses fast.
pub async fn players_fill_servers_in_order_then_fleet_is_full(bin: Binary) {
    let pki = Pki::new();
    let gs1 = EchoServer::start("GS1", pki.server_config(&["play.test"]), false);
    let gs2 = EchoServer::start("GS2", pki.server_config(&["play.test"]), false);
    let apki = TestPki::generate();
    let allocator = TestAllocator::start(
        &apki,
        ServerCert::WithDnsName,
        NAMESPACE,
        vec![
            TestGameServer::ready("gs-1", NAMESPACE, FLEET, gs1.addr, 2),
            TestGameServer::ready("gs-2", NAMESPACE, FLEET, gs2.addr, 2),
        ],
    )
    .await
    .expect("test allocator");
    let config = format!(
        "{}{}",
        agones_section(&apki, &allocator, ", max_retries: 1"),
        agones_route("play.test")
    );
    let porter = Porter::start(bin, &config);
    let client = client_endpoint(pki.client_config(None));

    let mut answered = Vec::new();
    let mut conns = Vec::new();
    for i in 0..4 {
        let conn = connect(&client, porter.udp, "play.test")
            .await
            .unwrap_or_else(|e| panic!("player {i}: {e}; log:\n{}", porter.log()));
        let reply = echo(&conn, format!("p{i}").as_bytes()).await;
        answered.push(reply.split(':').next().unwrap().to_owned());
        conns.push(conn);
    }
    assert_eq!(answered[0], answered[1], "{answered:?}");
    assert_eq!(answered[2], answered[3], "{answered:?}");
    assert_ne!(answered[0], answered[2], "{answered:?}");

    // Both servers are full now.
    let started = Instant::now();
    assert_refused(connect(&client, porter.udp, "play.test").await);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // The allocator saw the request Porter is meant to send, and reserved each slot.
    let requests = allocator.requests();
    assert!(requests.len() >= 5, "{}", requests.len());
    let first = &requests[0];
    assert_eq!(first.namespace, NAMESPACE);
    assert_eq!(first.game_server_selectors.len(), 2);
    let players: usize = allocator
        .game_servers()
        .iter()
        .map(|gs| gs.players().len())
        .sum();
    assert_eq!(players, 4);
    let stats = porter.stats();
    assert_eq!(stats["allocations"]["succeeded"], 4, "{stats}");
    assert_eq!(stats["allocations"]["failed"], 1, "{stats}");
}

/// A slow or failing allocator: the connection is refused at its handshake deadline,
/// nothing is left pending, and connections work again once the allocator recovers.
pub async fn slow_or_down_allocator_then_recovery(bin: Binary) {
    let pki = Pki::new();
    let gs = EchoServer::start("GS", pki.server_config(&["play.test"]), false);
    let apki = TestPki::generate();
    let allocator = TestAllocator::start(
        &apki,
        ServerCert::WithDnsName,
        NAMESPACE,
        vec![TestGameServer::ready(
            "gs-1", NAMESPACE, FLEET, gs.addr, 100,
        )],
    )
    .await
    .expect("test allocator");
    let config = format!(
        "relay: {{handshake_timeout: 1s}}\n{}{}",
        agones_section(&apki, &allocator, ", request_timeout: 5s, max_retries: 0"),
        agones_route("play.test")
    );
    let porter = Porter::start(bin, &config);
    let client = client_endpoint(pki.client_config(None));

    // Slow: no answer before the handshake deadline.
    allocator.set_delay(Duration::from_secs(3));
    let started = Instant::now();
    assert_refused(connect(&client, porter.udp, "play.test").await);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "refused after {took:?}"
    );
    let clean = wait_for(Duration::from_secs(5), || {
        let s = porter.stats();
        (s["pending_sessions"] == 0 && s["buffered_bytes"] == 0 && s["sessions"] == 0).then_some(s)
    });
    assert!(clean.is_some(), "left pending: {}", porter.stats());
    assert_eq!(porter.stats()["allocations"]["timed_out"], 1);

    // Down: the allocator answers Unavailable (once; the client is set to one attempt).
    allocator.set_delay(Duration::ZERO);
    allocator.fail_next(1, Code::Unavailable);
    assert_refused(connect(&client, porter.udp, "play.test").await);
    assert_eq!(porter.stats()["allocations"]["failed"], 1);

    // Back: connections work again.
    let conn = connect(&client, porter.udp, "play.test")
        .await
        .unwrap_or_else(|e| panic!("after recovery: {e}; log:\n{}", porter.log()));
    assert_eq!(echo(&conn, b"back").await, "GS:back");
    let s = porter.stats();
    assert_eq!(s["pending_sessions"], 0, "{s}");
    assert_eq!(s["buffered_bytes"], 0, "{s}");
}

/// `POST /allocate` allocates a game server, routes `<name>.<domain>` to it for the
/// configured time, and the route carries QUIC until it expires.
pub async fn allocate_endpoint_adds_a_temporary_route(bin: Binary) {
    let pki = Pki::new();
    let gs = EchoServer::start("GS", pki.server_config(&["gs-7.play.test"]), false);
    let apki = TestPki::generate();
    let allocator = TestAllocator::start(
        &apki,
        ServerCert::WithDnsName,
        NAMESPACE,
        vec![TestGameServer::ready("gs-7", NAMESPACE, FLEET, gs.addr, 10)],
    )
    .await
    .expect("test allocator");
    let config = format!(
        "{}routes: []\n",
        agones_section(&apki, &allocator, ", allocate_route_ttl: 2s")
    );
    let porter = Porter::start(bin, &config);

    let (status, body) = http(
        porter.api,
        "POST",
        "/allocate",
        Some(&format!(
            "{{\"fleet\": \"{FLEET}\", \"domain\": \"Play.Test\"}}"
        )),
        None,
    )
    .unwrap();
    assert_eq!(status, 200, "{body}\nlog:\n{}", porter.log());
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["fqdn"], "gs-7.play.test", "{answer}");
    assert_eq!(answer["name"], "gs-7", "{answer}");
    assert_eq!(answer["target"], gs.addr.to_string(), "{answer}");
    assert_eq!(allocator.game_server("gs-7").unwrap().players().len(), 1);

    let client = client_endpoint(pki.client_config(None));
    let conn = connect(&client, porter.udp, "gs-7.play.test")
        .await
        .unwrap_or_else(|e| panic!("{e}; log:\n{}", porter.log()));
    assert_eq!(echo(&conn, b"match").await, "GS:match");
    conn.close(0u32.into(), b"done");

    // After its time the route is gone, and new connections are refused.
    let gone = wait_for(Duration::from_secs(10), || {
        let (status, _) = porter.get("/routes/gs-7.play.test").ok()?;
        (status == 404).then_some(())
    });
    assert!(gone.is_some(), "route still there; log:\n{}", porter.log());
    // The log line is written beside the removal; the reader of the relay's log may be a
    // moment behind the API.
    assert!(
        porter.wait_log("temporary route expired", Duration::from_secs(5)),
        "log:\n{}",
        porter.log()
    );
    assert_refused(connect(&client, porter.udp, "gs-7.play.test").await);

    // Bad requests are explained.
    let (status, body) = http(
        porter.api,
        "POST",
        "/allocate",
        Some("{\"fleet\": \"\"}"),
        None,
    )
    .unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("error"), "{body}");
}

/// Server IDs of game servers: the allocated game server's label
/// (`agones.server_id_label`) names its QUIC-LB server ID, and the game server is a quinn
/// server issuing CIDs with it (`QuicLbGenerator`). A player connects through the agones
/// route, then moves mid-transfer to another IP and a new CID, as in
/// `quic_lb_keeps_a_client_that_changes_address_and_cid_on_its_backend`: the relay routes
/// it to its game server by the ID from the allocation, and the transfer completes there.
/// A second game server whose label is not hex is used all the same, without the ID.
pub async fn a_game_servers_server_id_label_keeps_a_moving_player_on_it(bin: Binary) {
    use porter_quic_lb::{Config, ServerId};

    const LABEL: &str = "porter.dev/server-id";
    let pki = Pki::new();
    let lb = Config::new(1, 2, 6, None).unwrap();
    let gs = EchoServer::start_quic_lb(
        "GS1",
        pki.server_config(&["play.test"]),
        lb.clone(),
        ServerId::new(&[0x0a, 0x01]).unwrap(),
    );
    let other = EchoServer::start("GS2", pki.server_config(&["play.test"]), false);
    let apki = TestPki::generate();
    let mut first = TestGameServer::ready("gs-1", NAMESPACE, FLEET, gs.addr, 1);
    first.labels.insert(LABEL.to_owned(), "0a01".to_owned());
    let mut second = TestGameServer::ready("gs-2", NAMESPACE, FLEET, other.addr, 1);
    second.labels.insert(LABEL.to_owned(), "not-hex".to_owned());
    let allocator = TestAllocator::start(
        &apki,
        ServerCert::WithDnsName,
        NAMESPACE,
        vec![first, second],
    )
    .await
    .expect("test allocator");
    let config = format!(
        "{}quic_lb:\n  - {{config_id: 1, server_id_len: 2, nonce_len: 6, servers: {{}}}}\n{}",
        agones_section(&apki, &allocator, &format!(", server_id_label: {LABEL}")),
        agones_route("play.test")
    );
    let porter = Porter::start(bin, &config);
    let mover = client_endpoint(pki.client_config(None));
    let conn = connect(&mover, porter.udp, "play.test")
        .await
        .unwrap_or_else(|e| panic!("{e}; log:\n{}", porter.log()));
    assert_eq!(
        echo(&conn, b"hi").await,
        "GS1:hi",
        "gs-1 is allocated first"
    );
    let stats = porter.stats();
    assert_eq!(stats["quic_lb"]["allocated_server_ids"], 1, "{stats}");

    crate::cases::move_to_another_ip_mid_transfer(&mover, &conn, "GS1", &porter, "agones").await;

    // gs-1 is full; gs-2's label is no server ID: counted, and gs-2 serves anyway.
    let player = client_endpoint(pki.client_config(None));
    let to_other = connect(&player, porter.udp, "play.test")
        .await
        .unwrap_or_else(|e| panic!("{e}; log:\n{}", porter.log()));
    assert_eq!(echo(&to_other, b"hi").await, "GS2:hi");
    let stats = porter.stats();
    assert_eq!(stats["quic_lb"]["invalid_server_ids"], 1, "{stats}");
    assert_eq!(stats["quic_lb"]["allocated_server_ids"], 1, "{stats}");
    assert!(
        porter.log().contains("is not hex of a configured length"),
        "{}",
        porter.log()
    );
    conn.close(0u32.into(), b"done");
    to_other.close(0u32.into(), b"done");
}

/// Issue 14, acceptance 4 with the real binary and the mTLS test allocator: the first
/// flights of 1 000 real connections, replayed within one second from 1 000 loopback
/// sources each in a /24 of its own, make at most `allocations_per_second_per_fleet`
/// allocation requests; 100 from one IP in the next second at most
/// `allocations_per_second_per_prefix`. The others are refused (CONNECTION_CLOSE), and
/// counted as `over_budget` (a few may be lost in the kernel on a busy machine: at
/// least 90% must be counted).
pub async fn allocation_budgets_bound_a_flood_of_initials(bin: Binary) {
    const PER_FLEET: usize = 20;
    const PER_PREFIX: usize = 3;
    let pki = Pki::new();
    let gs = EchoServer::start("GS", pki.server_config(&["play.test"]), false);
    let apki = TestPki::generate();
    let allocator = TestAllocator::start(
        &apki,
        ServerCert::WithDnsName,
        NAMESPACE,
        vec![TestGameServer::ready(
            "gs-1", NAMESPACE, FLEET, gs.addr, 10_000,
        )],
    )
    .await
    .expect("test allocator");
    let config = format!(
        "relay: {{allocations_per_second_per_fleet: {PER_FLEET}, \
         allocations_per_second_per_prefix: {PER_PREFIX}}}\n{}{}",
        agones_section(&apki, &allocator, ""),
        agones_route("play.test")
    );
    let porter = Porter::start(bin, &config);
    let flights = std::sync::Arc::new(
        captured_first_flights(pki.client_config(None), "play.test", 1_100, true).await,
    );

    // Sent 20 flights every 10 ms (a burst of 1 000 at once would overflow the relay's
    // receive buffer in the kernel), from blocking sockets off the runtime.
    let relay = porter.udp;
    let send_all = move |flights: std::sync::Arc<Vec<Vec<Vec<u8>>>>,
                         range: std::ops::Range<usize>,
                         from: fn(usize) -> std::net::SocketAddr| {
        tokio::task::spawn_blocking(move || {
            for (n, i) in range.enumerate() {
                let socket = std::net::UdpSocket::bind(from(i)).unwrap();
                for d in &flights[i] {
                    socket.send_to(d, relay).unwrap();
                }
                if n % 20 == 19 {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        })
    };
    let started = Instant::now();
    send_all(flights.clone(), 0..1_000, |i| {
        let (a, b) = ((20 + i / 256) as u8, (i % 256) as u8);
        ([127, a, b, 1], 7000).into()
    })
    .await
    .unwrap();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "the 1 000 took {took:?}");
    // Settled: nearly all handled (a busy machine may lose a few in the kernel's receive
    // buffer), nothing pending.
    let settled = |at_least: u64| {
        wait_for(Duration::from_secs(10), || {
            let s = porter.stats();
            let a = &s["allocations"];
            let done = a["requested"].as_u64()? + a["over_budget"].as_u64()?;
            (done >= at_least && s["pending_sessions"] == 0).then_some(s)
        })
        .unwrap_or_else(|| porter.stats())
    };
    let stats = settled(900);
    assert_eq!(stats["allocations"]["requested"], PER_FLEET, "{stats}");
    assert!(
        stats["allocations"]["over_budget"].as_u64() >= Some(900 - PER_FLEET as u64),
        "{stats}"
    );
    assert!(
        allocator
            .wait_for_requests(PER_FLEET, Duration::from_secs(10))
            .await
    );
    assert_eq!(allocator.requests().len(), PER_FLEET);

    // A second later (the fleet's window has moved on), 100 from one IP.
    tokio::time::sleep_until((started + Duration::from_millis(1_100)).into()).await;
    send_all(flights.clone(), 1_000..1_100, |i| {
        ([127, 30, 0, 1], 8000 + i as u16).into()
    })
    .await
    .unwrap();
    let before = stats["allocations"]["requested"].as_u64().unwrap_or(0)
        + stats["allocations"]["over_budget"].as_u64().unwrap_or(0);
    let stats = settled(before + 90);
    assert_eq!(
        stats["allocations"]["requested"],
        PER_FLEET + PER_PREFIX,
        "{stats}"
    );
    assert!(
        allocator
            .wait_for_requests(PER_FLEET + PER_PREFIX, Duration::from_secs(10))
            .await
    );
    assert_eq!(allocator.requests().len(), PER_FLEET + PER_PREFIX);
}
