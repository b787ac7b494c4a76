//! Scale: what lets one relay carry many clients at once (the listener's receive buffer,
//! client-bound datagrams of many clients sent together).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use porter_test_support::*;
use tokio::net::UdpSocket;

/// Clients in the batching case, each with its own session and upstream socket.
const CLIENTS: usize = 64;

/// Rounds of one backend datagram per client.
const ROUNDS: usize = 20;

/// Sixty-four sessions, and a backend that answers each of them once per round: every
/// answer arrives on its own upstream socket and is owed to another client, so GSO cannot
/// join them (unless one socket's receive coalesced two rounds). With `udp.batch_sends`
/// (the default) they leave the listener in `sendmmsg` batches of many clients; every
/// client still gets every datagram, in order. With it
/// off, the same traffic arrives and nothing is batched. The listener's receive buffer in
/// effect is exported and at least what the config asks (the tests run as root, so
/// `SO_RCVBUFFORCE` may exceed `net.core.rmem_max`).
pub async fn replies_to_many_clients_leave_in_batches(bin: Binary) {
    for batched in [true, false] {
        let backend = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let setting = if batched { "true" } else { "false" };
        let porter = Porter::start_placed(
            bin,
            "",
            &format!(
                "routes:\n  - {{fqdn: many.test, type: simple, target: \"{}\"}}\n",
                backend.local_addr().unwrap()
            ),
            |dir, text| {
                let text = text.replacen(
                    "log_requests: true}",
                    &format!("log_requests: false, batch_sends: {setting}, receive_buffer: 4MiB}}"),
                    1,
                );
                let path = dir.join("config.yaml");
                std::fs::write(&path, text).expect("write config");
                path
            },
        );

        // One session per client; the backend learns each session's upstream address.
        let mut clients = Vec::new();
        for i in 0..CLIENTS {
            let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let initial = porter_sim::one_datagram_initial("many.test", 7000 + i as u64);
            socket.send_to(&initial, porter.udp).await.unwrap();
            clients.push(socket);
        }
        let mut upstreams: Vec<SocketAddr> = Vec::new();
        let mut buf = vec![0u8; 2048];
        while upstreams.len() < CLIENTS {
            let got = tokio::time::timeout(Duration::from_secs(10), backend.recv_from(&mut buf))
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "{}: only {} sessions reached the backend",
                        bin.name,
                        upstreams.len()
                    )
                })
                .unwrap();
            if !upstreams.contains(&got.1) {
                upstreams.push(got.1);
            }
        }

        // Round after round, one 1200-byte datagram to every session, numbered.
        for round in 0..ROUNDS {
            for (k, upstream) in upstreams.iter().enumerate() {
                let mut datagram = vec![0x40u8; 1200];
                datagram[1..3].copy_from_slice(&(round as u16).to_be_bytes());
                datagram[3..5].copy_from_slice(&(k as u16).to_be_bytes());
                backend.send_to(&datagram, upstream).await.unwrap();
            }
        }

        // Every client gets its session's datagrams, each round once and in order.
        let mut by_session: HashMap<u16, Vec<u16>> = HashMap::new();
        for client in &clients {
            let mut rounds = Vec::new();
            let mut session = None;
            while rounds.len() < ROUNDS {
                let n = tokio::time::timeout(Duration::from_secs(10), client.recv(&mut buf))
                    .await
                    .unwrap_or_else(|_| {
                        panic!(
                            "{} (batch_sends {setting}): a client got {} of {ROUNDS} datagrams; \
                             stats: {}; metrics: {:?}",
                            bin.name,
                            rounds.len(),
                            porter.stats(),
                            porter
                                .metrics()
                                .iter()
                                .filter(|m| m.name.starts_with("porter_listener"))
                                .collect::<Vec<_>>()
                        )
                    })
                    .unwrap();
                assert_eq!(n, 1200);
                let k = u16::from_be_bytes([buf[3], buf[4]]);
                assert_eq!(*session.get_or_insert(k), k, "one client, one session");
                rounds.push(u16::from_be_bytes([buf[1], buf[2]]));
            }
            by_session.insert(session.unwrap(), rounds.clone());
            let expected: Vec<u16> = (0..ROUNDS as u16).collect();
            assert_eq!(rounds, expected, "{}: order kept", bin.name);
        }
        assert_eq!(
            by_session.len(),
            CLIENTS,
            "every session reached its own client"
        );

        let metrics = porter.metrics();
        let calls = metric(&metrics, "porter_listener_batched_sends_total", &[]).unwrap();
        let sent = metric(&metrics, "porter_listener_batched_datagrams_total", &[]).unwrap();
        let buffer = metric(&metrics, "porter_listener_receive_buffer_bytes", &[]).unwrap();
        assert!(
            buffer >= (4 << 20) as f64,
            "receive buffer in effect: {buffer}"
        );
        if batched {
            // Datagrams the upstream socket received coalesced (GRO) leave as one GSO
            // send instead; the rest went through the batches.
            assert!(
                sent >= (CLIENTS * ROUNDS / 2) as f64 && sent <= (CLIENTS * ROUNDS) as f64,
                "{}: {sent} of {} client-bound datagrams left in batches",
                bin.name,
                CLIENTS * ROUNDS
            );
            assert!(
                sent >= 2.0 * calls,
                "{}: {sent} datagrams in {calls} sendmmsg calls: batches of many clients",
                bin.name
            );
        } else {
            assert_eq!(
                (calls, sent),
                (0.0, 0.0),
                "{}: nothing batched when off",
                bin.name
            );
        }
    }
}

/// Issue 15, acceptance 1 (without Redis): an L4 balancer in front of two relay instances
/// that share only their configuration. A quinn backend issues QUIC-LB CIDs; mid-transfer
/// the balancer moves the client's flow to the other instance from a new source port (as
/// after a NAT rebinding, when the 5-tuple hashes elsewhere). The second instance has
/// never seen the connection: it decodes the server ID in the CID, opens a path to the
/// same backend, the backend validates it, and the transfer completes byte for byte.
pub async fn an_l4_balancer_moving_a_connection_to_another_instance_keeps_it_with_quic_lb(
    bin: Binary,
) {
    use crate::cases::simple_route;
    use crate::peers::*;
    use porter_quic_lb::{Config, ServerId};

    let pki = Pki::new();
    let lb = Config::new(1, 2, 6, None).unwrap();
    let backend = EchoServer::start_quic_lb(
        "A",
        pki.server_config(&["a.test"]),
        lb.clone(),
        ServerId::new(&[0, 1]).unwrap(),
    );
    let config = format!(
        "quic_lb:\n  - {{config_id: {}, server_id_len: 2, nonce_len: {}, \
         servers: {{\"0001\": \"{}\"}}}}\nroutes:\n{}",
        lb.id().value(),
        lb.nonce_len(),
        backend.addr,
        simple_route("a.test", backend.addr),
    );
    let (first, second) = (Porter::start(bin, &config), Porter::start(bin, &config));
    let balancer = Nat::start(first.udp).await;
    let client = client_endpoint(pki.client_config(None));
    let conn = connect(&client, balancer.inside, "a.test").await.unwrap();
    let before = echo(&conn, WHO_AM_I).await;

    let after = move_mid_transfer(bin, &conn, &balancer, &first, &second).await;
    assert_ne!(before, after, "the backend sees the second instance's path");
    let stats = second.stats();
    assert!(
        stats["quic_lb"]["routed"].as_u64() >= Some(1),
        "the second instance routed it by server ID: {stats}"
    );
    assert!(
        stats["sessions"].as_u64() >= Some(1),
        "the second instance carries it: {stats}"
    );
}

/// The L4 balancer's move: starts a 2 MiB echo on `conn` (a client of backend "A" behind
/// `balancer`, which forwards to `first`), moves the flow to `second` from a new source
/// port once 256 KiB have left, and checks that the echo completes byte for byte on the
/// same backend. Returns what the backend then says the client's address is.
pub(crate) async fn move_mid_transfer(
    bin: Binary,
    conn: &quinn::Connection,
    balancer: &crate::peers::Nat,
    first: &Porter,
    second: &Porter,
) -> String {
    use crate::peers::{echo, WHO_AM_I};

    let moved = async {
        balancer.rebind_to(second.udp).await;
    };
    crate::cases::echo_across_a_move(conn, "A", moved, || {
        format!(
            "{}: the transfer completes on its backend through the second instance; logs:\n{}\n{}",
            bin.name,
            first.log(),
            second.log()
        )
    })
    .await;
    echo(conn, WHO_AM_I).await
}
