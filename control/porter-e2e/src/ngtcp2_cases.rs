//! Interop with ngtcp2 1.11 (Debian's `ngtcp2-client` and `ngtcp2-server` from
//! bookworm-backports, which `scripts/test` installs): `gtlsclient` downloads a 200 kB file
//! from `gtlsserver` through the relay, and the bytes are compared with the original.
//!
//! `gtlsclient` sends the SNI of its HOST argument (and `localhost` when HOST is an
//! address; `--sni` is ignored in 1.11), so every case routes `localhost`, which resolves
//! to 127.0.0.1 on any machine.

use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use porter_test_support::*;

use crate::peers::*;

/// The size of the downloaded file.
const FILE_LEN: usize = 200_000;
/// How long one download may take before it counts as stalled.
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(20);
/// QUIC v2 (RFC 9369), as gtlsclient's `-v` takes it.
const QUIC_V2: &str = "0x6b3343cf";

/// A `gtlsserver` on a loopback port serving `blob`, a 200 kB file of seeded bytes.
pub(crate) struct Ngtcp2Server {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Ngtcp2Server {
    /// Starts one; with `validate_addr` it answers every new connection with a Retry
    /// (`-V`).
    pub(crate) fn start(validate_addr: bool) -> Self {
        let dir = temp_dir();
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .expect("self-signed certificate");
        std::fs::write(dir.join("cert.pem"), cert.cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
        std::fs::create_dir_all(dir.join("htdocs")).unwrap();
        std::fs::create_dir_all(dir.join("download")).unwrap();
        std::fs::write(dir.join("htdocs/blob"), file_bytes()).unwrap();
        let port = free_udp_port();
        let mut args = vec!["-q".to_owned(), "-d".to_owned()];
        args.push(dir.join("htdocs").display().to_string());
        if validate_addr {
            args.push("-V".to_owned());
        }
        args.extend(["127.0.0.1".to_owned(), port.to_string()]);
        args.push(dir.join("key.pem").display().to_string());
        args.push(dir.join("cert.pem").display().to_string());
        let child = Command::new(tool("gtlsserver"))
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("gtlsserver starts (scripts/test installs ngtcp2-server)");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        // Listening once the port is taken.
        let bound = wait_for(Duration::from_secs(5), || {
            StdUdpSocket::bind(addr).is_err().then_some(())
        });
        assert!(bound.is_some(), "gtlsserver did not bind {addr}");
        Self { child, addr, dir }
    }
}

impl Drop for Ngtcp2Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The file's bytes: fixed, so that a failure can be reproduced.
pub(crate) fn file_bytes() -> Vec<u8> {
    let mut x: u32 = 0x2545_f491;
    (0..FILE_LEN)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

/// Where an ngtcp2 tool is: on PATH, else Debian's locations (gtlsserver is in sbin).
fn tool(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin"] {
        let path = Path::new(dir).join(name);
        if path.exists() {
            return path;
        }
    }
    PathBuf::from(name)
}

/// Runs `gtlsclient localhost PORT https://localhost:PORT/blob` with `extra` options
/// against the relay and returns what it downloaded, or why there is nothing.
pub(crate) async fn download(
    relay: SocketAddr,
    server: &Ngtcp2Server,
    extra: &[&str],
) -> Result<Vec<u8>, String> {
    let out = server.dir.join("download");
    let _ = std::fs::remove_file(out.join("blob"));
    let mut args: Vec<String> = vec![
        "-q".into(),
        "--exit-on-all-streams-close".into(),
        format!("--download={}", out.display()),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args.push("localhost".into());
    args.push(relay.port().to_string());
    args.push(format!("https://localhost:{}/blob", relay.port()));
    let log = server.dir.join("gtlsclient.log");
    let status = tokio::task::spawn_blocking(move || {
        let file = std::fs::File::create(&log).expect("client log");
        let mut child = Command::new(tool("gtlsclient"))
            .args(&args)
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("gtlsclient starts (scripts/test installs ngtcp2-client)");
        let deadline = Instant::now() + DOWNLOAD_TIMEOUT + Duration::from_secs(5);
        let status = wait_for(deadline - Instant::now(), || {
            child.try_wait().ok().flatten()
        });
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        status
    })
    .await
    .expect("the client runner");
    match status {
        Some(s) if s.success() => {
            std::fs::read(out.join("blob")).map_err(|e| format!("no file: {e}"))
        }
        Some(s) => Err(format!("gtlsclient exited with {s}")),
        None => Err("gtlsclient stalled".into()),
    }
}

pub(crate) fn config_for(server: &Ngtcp2Server) -> String {
    format!(
        "routes:\n  - {{fqdn: localhost, type: simple, target: \"{}\"}}\n",
        server.addr
    )
}

async fn assert_download(bin: Binary, validate_addr: bool, extra: &[&str]) -> Porter {
    let server = Ngtcp2Server::start(validate_addr);
    let porter = Porter::start(bin, &config_for(&server));
    let got = download(porter.udp, &server, extra)
        .await
        .unwrap_or_else(|e| panic!("{extra:?}: {e}; relay log:\n{}", porter.log()));
    assert!(
        got == file_bytes(),
        "{extra:?}: the downloaded file differs ({} bytes)",
        got.len()
    );
    porter
}

/// QUIC v1, plain.
pub async fn ngtcp2_v1_download(bin: Binary) {
    let porter = assert_download(bin, false, &[]).await;
    assert!(porter.log().contains("version=V1"), "{}", porter.log());
}

/// QUIC v2 (`-v 0x6b3343cf`): the relay decrypts v2 Initials and forwards v2.
pub async fn ngtcp2_v2_download(bin: Binary) {
    let porter = assert_download(bin, false, &["-v", QUIC_V2]).await;
    assert!(porter.log().contains("version=V2"), "{}", porter.log());
}

/// `--change-local-addr`: one millisecond after the handshake the client moves to a new
/// port and a new connection ID and validates the new path; the download completes.
/// (gtlsclient's own `--timeout` option is not used: with it, 1.11 ended 200 kB downloads
/// after 11 kB when the client moved.)
pub async fn ngtcp2_change_local_addr(bin: Binary) {
    assert_download(bin, false, &["--change-local-addr=1ms"]).await;
}

/// `--change-local-addr --nat-rebinding`: one millisecond after the handshake the client
/// moves to a new port keeping its connection ID, and does not validate the new path
/// itself; the relay opens one new path for the known CID from the new address, the
/// backend validates it, and the 200 kB download crosses it.
///
/// The request waits 50 ms (`--delay-stream`) so that the client's first packet after the
/// move is one it must send. Without that, gtlsclient 1.11 stalls in about half the runs
/// with or without a relay (run directly against gtlsserver: 4 of 6 stalled at ~11 kB):
/// `ngtcp2_conn_set_local_addr` makes it ignore what still arrives on the old port ("ignore
/// packet from unknown path"), so when the move happens with nothing ack-eliciting in
/// flight (its log shows "loss detection timer canceled" just before "Changing local
/// address" in every stalled run, an armed timer in every completed one) no PTO fires, the
/// client sends nothing from the new port, the server never learns it and keeps sending to
/// the old one until the idle timeout. A real NAT only rebinds on an outgoing packet, so
/// the deadlock belongs to the simulation, not to rebinding.
pub async fn ngtcp2_nat_rebinding(bin: Binary) {
    let porter = assert_download(
        bin,
        false,
        &[
            "--change-local-addr=1ms",
            "--nat-rebinding",
            "--delay-stream=50ms",
        ],
    )
    .await;
    let stats = porter.stats();
    assert_eq!(
        stats["paths_opened"], 1,
        "the rebinding was followed on one new path: {stats}"
    );
}

/// A `gtlsserver -V` backend answers with Retry; the client's second Initial (with the
/// token, to the server's new CID) goes to the same backend.
pub async fn ngtcp2_retry_server(bin: Binary) {
    assert_download(bin, true, &[]).await;
}

/// ngtcp2 migrates (new port and new CID) while a quinn session from the same IP is live.
/// The relay cannot read the new CID (it came in an encrypted frame) and ngtcp2 does not
/// encode its server in it (no QUIC-LB), so following the move would mean guessing between
/// the two sessions of that IP: the relay must not guess. It drops the moved datagrams
/// (counted as `unknown_connection`, or `lookup_failed` when the other shards were asked),
/// opens no path for them into any session, and the other
/// session keeps working. The migrating download may stall: that is reported, not required.
pub async fn ngtcp2_migration_beside_another_session(bin: Binary) {
    let server = Ngtcp2Server::start(false);
    let pki = Pki::new();
    let other = EchoServer::start("B", pki.server_config(&["b.test"]), false);
    let routes = format!(
        "{}  - {{fqdn: b.test, type: simple, target: \"{}\"}}\n",
        config_for(&server),
        other.addr
    );
    let porter = Porter::start(bin, &routes);
    let client = client_endpoint(pki.client_config(None));
    let conn = connect(&client, porter.udp, "b.test")
        .await
        .unwrap_or_else(|e| panic!("b.test: {e}; log:\n{}", porter.log()));
    assert_eq!(echo(&conn, b"before").await, "B:before");

    let relay = porter.udp;
    let moving = tokio::spawn(async move {
        let moved = download(relay, &server, &["--change-local-addr=1ms"]).await;
        (moved, server)
    });
    // The other session keeps talking while ngtcp2 moves (an echo every half second).
    let mut n = 0;
    while !moving.is_finished() {
        let text = format!("during-{n}");
        assert_eq!(echo(&conn, text.as_bytes()).await, format!("B:{text}"));
        n += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (moved, _server) = moving.await.expect("the download task");
    assert_eq!(
        echo(&conn, b"after").await,
        "B:after",
        "the other session is undisturbed"
    );

    let stats = porter.stats();
    assert_eq!(
        stats["paths_opened"], 0,
        "no path was opened for the move: {stats}"
    );
    match moved {
        Ok(bytes) => assert!(bytes == file_bytes(), "the migrated download differs"),
        Err(why) => {
            // Unsharded, the relay drops them itself; sharded (`udp.shards` > 1), the
            // other shards are asked first and none can say either.
            let dropped = stats["drops"]["unknown_connection"].as_u64().unwrap_or(0)
                + stats["drops"]["lookup_failed"].as_u64().unwrap_or(0);
            assert!(
                dropped > 0,
                "the moved datagrams were dropped, not forwarded: {stats}"
            );
            eprintln!(
                "the migrating download did not complete ({why}), as expected without QUIC-LB"
            );
        }
    }
    conn.close(0u32.into(), b"done");
}
