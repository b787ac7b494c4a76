//! Transparent mode (`udp.transparent`, issue 16 item 5): backends see each client's own
//! address. The network is real: three network namespaces the case builds as root
//! (clients, the relay, the backends) joined by veth pairs, dual stack, with the policy
//! rules that docs/configuration.md gives for the replies on the relay's backend-facing
//! interface.
//!
//! ```text
//! clients 10.77.1.2, .3   ── 10.77.1.1  relay 10.77.2.1  ── 10.77.2.2  backend A
//!         fd77:1::2       ── fd77:1::1        fd77:2::1  ── fd77:2::2  backend B
//! ```
//! (the backends' default routes go through the relay).

use std::net::SocketAddr;
use std::time::Duration;

use porter_test_support::netns::{veth, NetNs};
use porter_test_support::*;

use crate::peers::*;

/// The three hosts; dropping it deletes the namespaces (and their veths).
struct Network {
    clients: NetNs,
    relay: NetNs,
    backends: NetNs,
}

/// `ip -n <ns> <command>`, the command written as on a shell.
fn ip(ns: &NetNs, command: &str) {
    ns.ip(&command.split_whitespace().collect::<Vec<_>>());
}

fn network() -> Network {
    let net = Network {
        clients: NetNs::new("clients"),
        relay: NetNs::new("relay"),
        backends: NetNs::new("backends"),
    };
    veth(&net.clients, "eth0", &net.relay, "toclients");
    veth(&net.relay, "tobackend", &net.backends, "eth0");
    for address in ["10.77.1.2/24", "10.77.1.3/24", "fd77:1::2/64"] {
        ip(&net.clients, &format!("addr add {address} dev eth0"));
    }
    for address in ["10.77.1.1/24", "fd77:1::1/64"] {
        ip(&net.relay, &format!("addr add {address} dev toclients"));
    }
    for address in ["10.77.2.1/24", "fd77:2::1/64"] {
        ip(&net.relay, &format!("addr add {address} dev tobackend"));
    }
    for address in ["10.77.2.2/24", "fd77:2::2/64"] {
        ip(&net.backends, &format!("addr add {address} dev eth0"));
    }
    ip(&net.backends, "route add default via 10.77.2.1");
    ip(&net.backends, "-6 route add default via fd77:2::1");
    // What arrives from the backends for a client's address is delivered on the relay's
    // host, where the transparent socket bound to that address takes it.
    ip(&net.relay, "rule add iif tobackend lookup 100 pref 100");
    ip(&net.relay, "route add local 0.0.0.0/0 dev lo table 100");
    ip(&net.relay, "-6 rule add iif tobackend lookup 100 pref 100");
    ip(&net.relay, "-6 route add local ::/0 dev lo table 100");
    net
}

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("a socket address")
}

/// Issue 16 item 5: with `udp.transparent`, a backend in another network namespace sees
/// each client's own address (IP and port) as the connection's remote address, and the
/// replies reach the client: the handshake and a 256 KiB echo complete, for two IPv4
/// clients and one IPv6 client. A second connection from a port that already has a
/// session cannot get an upstream socket (same address): that path fails cleanly,
/// logged, and the first connection goes on; so does a path from an IPv4 client to an
/// IPv6 backend.
pub async fn the_backend_sees_each_clients_own_address(bin: Binary) {
    let net = network();
    let pki = Pki::new();
    let a = EchoServer::start_on(
        "A",
        pki.server_config(&["a.test"]),
        net.backends.udp_bind(addr("10.77.2.2:4433")),
    );
    let b = EchoServer::start_on(
        "B",
        pki.server_config(&["b.test"]),
        net.backends.udp_bind(addr("[fd77:2::2]:4433")),
    );
    let (relay_v4, relay_v6) = (addr("10.77.1.1:4433"), addr("[fd77:1::1]:4433"));
    let porter = Porter::start_in_netns(
        bin,
        &net.relay,
        &[relay_v4, relay_v6],
        ", transparent: true",
        &format!(
            "routes:\n  - {{fqdn: a.test, type: simple, target: \"{}\"}}\n  \
             - {{fqdn: b.test, type: simple, target: \"{}\"}}\n",
            a.addr, b.addr
        ),
    );
    assert!(
        porter.log().contains("transparent mode"),
        "{}",
        porter.log()
    );
    let data = "0123456789abcdef".repeat(16 << 10);
    let mut endpoints = Vec::new();
    for (client, relay, sni, name) in [
        ("10.77.1.2:0", relay_v4, "a.test", "A"),
        ("10.77.1.3:0", relay_v4, "a.test", "A"),
        ("[fd77:1::2]:0", relay_v6, "b.test", "B"),
    ] {
        let socket = net.clients.udp_bind(addr(client));
        let endpoint = client_endpoint_on(socket, pki.client_config(None));
        let local = endpoint.local_addr().unwrap();
        let conn = connect(&endpoint, relay, sni).await.unwrap_or_else(|e| {
            panic!(
                "{local}: handshake through the relay: {e}; log:\n{}",
                porter.log()
            )
        });
        assert_eq!(
            echo(&conn, WHO_AM_I).await,
            format!("{name}:{local}"),
            "the backend sees the client's own address"
        );
        let echoed = echo(&conn, data.as_bytes()).await;
        assert!(
            echoed.len() == data.len() + 2 && echoed[2..] == data,
            "{local}: transfer intact"
        );
        endpoints.push((endpoint, conn));
    }
    assert_eq!(porter.stats()["sessions_opened"], 3);

    // A second connection from the first client's port: the relay cannot bind a second
    // socket to that address.
    let (endpoint, conn) = &endpoints[0];
    let again = endpoint.connect(relay_v4, "a.test").unwrap();
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

    // An IPv4 client cannot be relayed from its own address to an IPv6 backend.
    let socket = net.clients.udp_bind(addr("10.77.1.3:0"));
    let endpoint = client_endpoint_on(socket, pki.client_config(None));
    let across = endpoint.connect(relay_v4, "b.test").unwrap();
    assert!(
        porter.wait_log("different IP families", Duration::from_secs(10)),
        "{}",
        porter.log()
    );
    drop(across);
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
