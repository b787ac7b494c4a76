//! The connection-ID directory (issue 15, acceptance 1, Redis half): an L4 balancer (a
//! forwarder, [`Nat::rebind_to`]) in front of two relay instances sharing a real
//! `redis-server` with `redis.directory` on. Mid-transfer it moves a live connection's
//! datagrams from instance A to instance B from a new source port, as after a NAT
//! rebinding: B has never seen the connection, looks its CID up in the directory, opens a
//! path to the same backend, and the transfer completes there. With quinn, and with
//! ngtcp2. With Redis stopped, the directory is reported down and known connections
//! still flow.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use porter_test_support::*;
use tokio::net::UdpSocket;

use crate::cases::{eventually, simple_route};
use crate::ngtcp2_cases::{config_for, download, file_bytes, Ngtcp2Server};
use crate::peers::*;

fn redis_section(redis: &RedisServer) -> String {
    format!(
        "redis: {{enabled: true, address: \"{}\", directory: true}}\n",
        redis.address()
    )
}

/// Two instances with the directory on, each with `routes`; waits until both are in sync
/// with Redis and their directories are up.
fn two_instances(bin: Binary, redis: &RedisServer, routes: &str) -> (Porter, Porter) {
    let config = format!("{}{routes}", redis_section(redis));
    let (a, b) = (Porter::start(bin, &config), Porter::start(bin, &config));
    for p in [&a, &b] {
        assert!(p.wait_ready(Duration::from_secs(15)), "{}", p.log());
        let up = wait_for(Duration::from_secs(15), || {
            (metric(&p.metrics(), "porter_directory_up", &[]) == Some(1.0)).then_some(())
        });
        assert!(up.is_some(), "the directory never came up: {}", p.log());
    }
    (a, b)
}

fn lookups(p: &Porter, outcome: &str) -> f64 {
    metric(
        &p.metrics(),
        "porter_directory_lookups_total",
        &[("outcome", outcome)],
    )
    .unwrap_or(0.0)
}

/// quinn: a 2 MB echo moved from A to B from a new port, mid-transfer, completes byte for
/// byte on the same backend, which sees the connection from a new address (B's path);
/// B's directory lookup found it.
pub async fn an_l4_balancer_moving_a_connection_to_another_instance_keeps_it_with_the_directory(
    bin: Binary,
) {
    let redis = RedisServer::start();
    let pki = Pki::new();
    let backend = EchoServer::start("A", pki.server_config(&["a.test"]), false);
    let routes = format!("routes:\n{}", simple_route("a.test", backend.addr));
    let (first, second) = two_instances(bin, &redis, &routes);
    let balancer = Nat::start(first.udp).await;
    let client = client_endpoint(pki.client_config(None));
    let conn = connect(&client, balancer.inside, "a.test").await.unwrap();
    let before = echo(&conn, WHO_AM_I).await;
    // A published the connection's CIDs (the original DCID, the backend's).
    assert!(
        eventually(Duration::from_secs(5), || {
            metric(
                &first.metrics(),
                "porter_directory_writes_total",
                &[("outcome", "set")],
            ) >= Some(2.0)
        })
        .await,
        "A published the connection's CIDs"
    );

    let after = crate::scale_cases::move_mid_transfer(bin, &conn, &balancer, &first, &second).await;
    assert_ne!(before, after, "the backend sees the second instance's path");
    assert!(
        lookups(&second, "found") >= 1.0,
        "B found the connection in the directory: {}",
        second.stats()
    );
    let stats = second.stats();
    assert!(
        stats["directory_lookups"]["found"].as_u64() >= Some(1)
            && stats["sessions"].as_u64() >= Some(1),
        "the second instance carries it: {stats}"
    );
    assert_eq!(lookups(&first, "asked"), 0.0, "A never needed to ask");
    conn.close(0u32.into(), b"done");
}

/// An L4 balancer for one client flow that moves it by itself, at an exact point: it
/// forwards the client's datagrams to `a` until `after` 1-RTT (short-header) datagrams of
/// the client have gone there, then sends the rest to `b` from a new source port (as
/// after a NAT rebinding, when the flow hashes to another instance). Replies on either
/// outside socket go back to the client. (A download on loopback is over in milliseconds:
/// too fast for [`Nat::rebind_to`] from a polling test.)
struct Balancer {
    inside: SocketAddr,
    /// Client short headers sent to `a`, then to `b`.
    counts: Arc<[AtomicUsize; 2]>,
}

impl Balancer {
    /// `ready` says when `b` may get the flow: the move waits for it (holding the
    /// client's datagrams, as a slow network would), so that the test does not race
    /// `a`'s first directory write.
    async fn start(
        a: SocketAddr,
        b: SocketAddr,
        after: usize,
        ready: impl Fn() -> bool + Send + Sync + 'static,
    ) -> Self {
        let bind = || async { Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap()) };
        let (inside_sock, first, second) = (bind().await, bind().await, bind().await);
        let inside = inside_sock.local_addr().unwrap();
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        for outside in [first.clone(), second.clone()] {
            let (inside_sock, client) = (inside_sock.clone(), client.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                while let Ok((n, _)) = outside.recv_from(&mut buf).await {
                    let to = *client.lock().unwrap();
                    if let Some(c) = to {
                        let _ = inside_sock.send_to(&buf[..n], c).await;
                    }
                }
            });
        }
        let counts: Arc<[AtomicUsize; 2]> = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
        let counted = counts.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = inside_sock.recv_from(&mut buf).await {
                *client.lock().unwrap() = Some(from);
                let moved = counted[0].load(Ordering::Relaxed) >= after;
                if moved && counted[1].load(Ordering::Relaxed) == 0 {
                    let _ = eventually(Duration::from_secs(5), &ready).await;
                }
                if n > 0 && buf[0] & 0x80 == 0 {
                    counted[usize::from(moved)].fetch_add(1, Ordering::Relaxed);
                }
                let (out, to) = if moved { (&second, b) } else { (&first, a) };
                let _ = out.send_to(&buf[..n], to).await;
            }
        });
        Self { inside, counts }
    }

    /// Client short headers that went to `a`, and to `b`.
    fn counts(&self) -> (usize, usize) {
        (
            self.counts[0].load(Ordering::Relaxed),
            self.counts[1].load(Ordering::Relaxed),
        )
    }
}

/// ngtcp2: a gtlsclient download through a balancer that moves the flow from A to B,
/// from a new port, after the client's first 10 1-RTT datagrams (its request and the
/// first ACKs of the download): the file arrives whole, B found the connection in the
/// directory and carried the rest.
pub async fn ngtcp2_download_moved_to_another_instance_keeps_it_with_the_directory(bin: Binary) {
    let redis = RedisServer::start();
    let server = Ngtcp2Server::start(false);
    let (first, second) = two_instances(bin, &redis, &config_for(&server));
    // The move waits until A has written the connection's CIDs (its original DCID and
    // the server's) to the directory.
    let a_api = first.api;
    let published = move || {
        http(a_api, "GET", "/metrics", None, None)
            .ok()
            .and_then(|(_, body)| parse_prometheus(&body).ok())
            .and_then(|m| metric(&m, "porter_directory_writes_total", &[("outcome", "set")]))
            .is_some_and(|n| n >= 2.0)
    };
    let balancer = Balancer::start(first.udp, second.udp, 10, published).await;
    let got = download(balancer.inside, &server, &[]).await;
    let (to_a, to_b) = balancer.counts();
    let got = got.unwrap_or_else(|e| {
        panic!(
            "{}: {e} ({to_a} client 1-RTT datagrams to A, {to_b} to B); logs:\n{}\n{}",
            bin.name,
            first.log(),
            second.log()
        )
    });
    assert!(got == file_bytes(), "the downloaded file differs");
    assert!(
        to_a == 10 && to_b > 0,
        "moved mid-download: {to_a} client 1-RTT datagrams to A, {to_b} to B"
    );
    assert!(
        lookups(&second, "found") >= 1.0,
        "B found the connection in the directory: {}",
        second.stats()
    );
    let b = second.stats();
    assert!(
        b["to_backend"]["datagrams"].as_u64() >= Some(1),
        "B carried the client's datagrams after the move: {b}"
    );
}

/// With Redis stopped, `/readyz` says the directory is down (with the route sync's own
/// reason) and `/metrics` has `porter_directory_up 0`, while the relay still forwards a
/// connection it knows.
pub async fn with_redis_stopped_the_directory_is_down_and_known_connections_flow(bin: Binary) {
    let mut redis = RedisServer::start();
    let pki = Pki::new();
    let backend = EchoServer::start("A", pki.server_config(&["a.test"]), false);
    let routes = format!("routes:\n{}", simple_route("a.test", backend.addr));
    let config = format!("{}{routes}", redis_section(&redis));
    let porter = Porter::start(bin, &config);
    assert!(
        porter.wait_ready(Duration::from_secs(15)),
        "{}",
        porter.log()
    );
    let (status, body) = porter.get("/readyz").unwrap();
    assert_eq!(status, 200);
    assert!(
        eventually(Duration::from_secs(10), || porter
            .get("/readyz")
            .is_ok_and(|(_, b)| b.contains("\"directory\":\"up\"")))
        .await,
        "readyz reports the directory: {body}"
    );
    let client = client_endpoint(pki.client_config(None));
    let conn = connect(&client, porter.udp, "a.test").await.unwrap();
    assert_eq!(echo(&conn, b"before").await, "A:before");

    redis.stop();
    assert!(
        eventually(Duration::from_secs(15), || {
            metric(&porter.metrics(), "porter_directory_up", &[]) == Some(0.0)
        })
        .await,
        "the metrics say the directory is down"
    );
    let readyz = wait_for(Duration::from_secs(15), || {
        porter
            .get("/readyz")
            .ok()
            .filter(|(s, b)| *s == 503 && b.contains("connection-ID directory down"))
    });
    assert!(readyz.is_some(), "readyz: {:?}", porter.get("/readyz"));
    // The known connection flows on.
    assert_eq!(echo(&conn, b"during").await, "A:during");
    conn.close(0u32.into(), b"done");
}
