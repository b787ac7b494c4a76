//! Free loopback ports for tests: bound, read, released.

use std::net::UdpSocket;

/// A free port on 127.0.0.1 for UDP (bound then released).
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("ephemeral UDP port")
        .port()
}

/// A free port on 127.0.0.1 for TCP.
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("ephemeral TCP port")
        .port()
}
