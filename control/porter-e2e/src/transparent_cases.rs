//! Transparent mode (`udp.transparent`, issue 16 item 5): backends see each client's own
//! address. The network is real: three network namespaces the case builds as root
//! (clients, the relay, the backend) joined by veth pairs, with the policy rule that
//! docs/configuration.md gives for the replies on the relay's backend-facing interface.
//!
//! ```text
//! clients 10.77.1.2, .3 ── 10.77.1.1 relay 10.77.2.1 ── 10.77.2.2 backend (default via .2.1)
//! ```

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use porter_test_support::netns::{veth, NetNs};
use porter_test_support::*;

use crate::peers::*;

const RELAY: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(10, 77, 1, 1)), 4433);
const BACKEND: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(10, 77, 2, 2)), 4433);
const CLIENTS: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 77, 1, 2), Ipv4Addr::new(10, 77, 1, 3)];

/// The three hosts; dropping it deletes the namespaces (and their veths).
struct Network {
    clients: NetNs,
    relay: NetNs,
    backend: NetNs,
}

fn network() -> Network {
    let net = Network {
        clients: NetNs::new("clients"),
        relay: NetNs::new("relay"),
        backend: NetNs::new("backend"),
    };
    veth(&net.clients, "eth0", &net.relay, "toclients");
    veth(&net.relay, "tobackend", &net.backend, "eth0");
    for ip in CLIENTS {
        net.clients
            .ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
    }
    net.relay
        .ip(&["addr", "add", "10.77.1.1/24", "dev", "toclients"]);
    net.relay
        .ip(&["addr", "add", "10.77.2.1/24", "dev", "tobackend"]);
    net.backend
        .ip(&["addr", "add", "10.77.2.2/24", "dev", "eth0"]);
    net.backend
        .ip(&["route", "add", "default", "via", "10.77.2.1"]);
    // What arrives from the backend for a client's address is delivered on the relay's
    // host, where the transparent socket bound to that address takes it.
    net.relay.ip(&[
        "rule",
        "add",
        "iif",
        "tobackend",
        "lookup",
        "100",
        "pref",
        "100",
    ]);
    net.relay.ip(&[
        "route",
        "add",
        "local",
        "0.0.0.0/0",
        "dev",
        "lo",
        "table",
        "100",
    ]);
    net
}

/// Issue 16 item 5: with `udp.transparent`, a backend in another network namespace sees
/// each client's own address (IP and port) as the connection's remote address, and the
/// replies reach the client: the handshake and a 256 KiB echo complete, for two client
/// IPs. A second connection from a port that already has a session cannot get an
/// upstream socket (same 4-tuple): that path fails cleanly, logged, and the first
/// connection goes on.
pub async fn the_backend_sees_each_clients_own_address(bin: Binary) {
    let net = network();
    let pki = Pki::new();
    let backend = EchoServer::start_on(
        "A",
        pki.server_config(&["a.test"]),
        net.backend.udp_bind(BACKEND),
    );
    let porter = Porter::start_in_netns(
        bin,
        &net.relay,
        RELAY,
        ", transparent: true",
        &format!(
            "routes:\n  - {{fqdn: a.test, type: simple, target: \"{}\"}}\n",
            backend.addr
        ),
    );
    assert!(
        porter.log().contains("transparent mode"),
        "{}",
        porter.log()
    );
    let data = "0123456789abcdef".repeat(16 << 10);
    let mut endpoints = Vec::new();
    for ip in CLIENTS {
        let socket = net.clients.udp_bind((ip, 0).into());
        let endpoint = client_endpoint_on(socket, pki.client_config(None));
        let local = endpoint.local_addr().unwrap();
        let conn = connect(&endpoint, RELAY, "a.test")
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "{local}: handshake through the relay: {e}; log:\n{}",
                    porter.log()
                )
            });
        assert_eq!(
            echo(&conn, WHO_AM_I).await,
            format!("A:{local}"),
            "the backend sees the client's own address"
        );
        let echoed = echo(&conn, data.as_bytes()).await;
        assert!(
            echoed.len() == data.len() + 2 && echoed[2..] == data,
            "{local}: transfer intact"
        );
        endpoints.push((endpoint, conn));
    }
    assert_eq!(porter.stats()["sessions_opened"], 2);

    // A second connection from the first client's port: the relay cannot bind a second
    // socket to that address.
    let (endpoint, conn) = &endpoints[0];
    let again = endpoint.connect(RELAY, "a.test").unwrap();
    assert!(
        porter.wait_log(
            "another session from this client address and port is open",
            Duration::from_secs(10)
        ),
        "{}",
        porter.log()
    );
    drop(again);
    assert_eq!(echo(conn, b"still here").await, "A:still here");
    assert!(!porter.log().contains("panicked"), "{}", porter.log());
}

/// Transparent mode needs CAP_NET_ADMIN (the kernel also takes CAP_NET_RAW for
/// IP_TRANSPARENT): without either, the relay refuses to start, saying so, instead of
/// failing every session.
pub async fn transparent_mode_without_cap_net_admin_refuses_to_start(bin: Binary) {
    let config = format!(
        "udp: {{port: {}, bind: 127.0.0.1, transparent: true}}\napi: {{port: {}}}\nroutes: []\n",
        free_udp_port(),
        free_tcp_port()
    );
    let without: Vec<String> = [
        "setpriv",
        "--inh-caps=-net_admin,-net_raw",
        "--bounding-set=-net_admin,-net_raw",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let mut porter = Porter::spawn_wrapped(bin, &without, &config, &[]);
    let code = porter.wait_exit(Duration::from_secs(10));
    let log = porter.log();
    assert!(
        matches!(code, Some(c) if c != 0),
        "exit {code:?}; log:\n{log}"
    );
    assert!(
        log.contains("udp.transparent") && log.contains("CAP_NET_ADMIN"),
        "{log}"
    );
}
