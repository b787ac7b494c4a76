//! A relay binary under load: started with a generated configuration, read through its
//! API and `/proc`.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port on 127.0.0.1 that was free a moment ago (bound, then released).
pub fn free_port(udp: bool) -> io::Result<u16> {
    if udp {
        std::net::UdpSocket::bind("127.0.0.1:0")?
            .local_addr()
            .map(|a| a.port())
    } else {
        std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()
            .map(|a| a.port())
    }
}

/// A running relay binary; killed when dropped.
#[derive(Debug)]
pub struct RelayProcess {
    child: Child,
    /// Its UDP listener.
    pub udp: SocketAddr,
    /// Its API.
    pub api: SocketAddr,
    /// Its stderr and stdout.
    pub log: PathBuf,
}

impl RelayProcess {
    /// Starts `binary` listening on free loopback ports, with `body` (routes, relay
    /// limits) appended to the configuration and logging at `warn` (so that per-session
    /// log lines do not weigh on the measurement). Waits until the API answers.
    pub fn start(binary: &Path, body: &str) -> io::Result<Self> {
        let (udp_port, api_port) = (free_port(true)?, free_port(false)?);
        let dir =
            std::env::temp_dir().join(format!("porter-loadgen-{}-{udp_port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("config.yaml");
        std::fs::write(
            &config,
            format!(
                "udp: {{port: {udp_port}, bind: 127.0.0.1}}\napi: {{port: {api_port}}}\n\
                 log: {{level: warn}}\n{body}"
            ),
        )?;
        let log = dir.join("relay.log");
        let out = std::fs::File::create(&log)?;
        let child = Command::new(binary)
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?;
        let mut relay = Self {
            child,
            udp: ([127, 0, 0, 1], udp_port).into(),
            api: ([127, 0, 0, 1], api_port).into(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = relay.child.try_wait()? {
                let log = std::fs::read_to_string(&relay.log).unwrap_or_default();
                return Err(io::Error::other(format!("relay exited ({status}): {log}")));
            }
            if relay.get("/healthz").is_ok_and(|(s, _)| s == 200) {
                return Ok(relay);
            }
            if Instant::now() >= deadline {
                return Err(io::Error::other("relay API never answered"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its resident set size in KiB (`VmRSS` in `/proc/PID/status`).
    pub fn rss_kib(&self) -> io::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| io::Error::other("no VmRSS line"))
    }

    /// A GET on its API: status and body.
    pub fn get(&self, path: &str) -> io::Result<(u16, String)> {
        let mut stream = TcpStream::connect_timeout(&self.api, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.api
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Ok((status, body))
    }

    /// A number field of `GET /stats` (top level), by a plain text search.
    pub fn stat(&self, field: &str) -> Option<u64> {
        let (_, body) = self.get("/stats").ok()?;
        let key = format!("\"{field}\":");
        let rest = &body[body.find(&key)? + key.len()..];
        let end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        rest[..end].parse().ok()
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
