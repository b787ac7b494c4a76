//! A relay binary run as a child process: a generated config, its log captured, its API
//! polled until it answers; and the small HTTP/1.1 client the tests talk to the API with.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::metrics::{parse_prometheus, Sample};
use crate::ports::{free_tcp_port, free_udp_port};
use crate::temp::temp_dir;
use crate::wait::wait_for;

/// A relay executable under test: its path (`env!("CARGO_BIN_EXE_<name>")`) and its name
/// (`porter`, `porter-smol`), which messages about it use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Binary {
    /// Path to the executable.
    pub path: &'static str,
    /// Its name, for messages.
    pub name: &'static str,
}

/// A running relay binary.
pub struct Porter {
    child: Child,
    readers: Vec<std::thread::JoinHandle<()>>,
    /// Its UDP listener.
    pub udp: SocketAddr,
    /// Its API.
    pub api: SocketAddr,
    log: Arc<Mutex<String>>,
    /// Where its config file is (the path given to `--config`).
    pub config_path: PathBuf,
    /// The start of its config: the `udp` and `api` sections with their ports.
    pub config_head: String,
    /// The bearer token [`Porter::get`] sends, when the API has one.
    pub token: Option<String>,
}

impl Porter {
    /// Starts `binary` with `body` appended to a config that sets `udp` and `api` to free
    /// loopback ports. Waits until the API answers.
    pub fn start(binary: Binary, body: &str) -> Self {
        Self::start_with_api(binary, "", body)
    }

    /// As [`Porter::start`], with `api_extra` (such as `, token: T`) added inside the `api`
    /// section.
    pub fn start_with_api(binary: Binary, api_extra: &str, body: &str) -> Self {
        Self::start_placed(binary, api_extra, body, |dir, text| {
            let path = dir.join("config.yaml");
            std::fs::write(&path, text).expect("write config");
            path
        })
    }

    /// As [`Porter::start_with_api`], with the config file laid out by `place`: it gets a
    /// fresh directory and the config text, writes it there as it likes (a symlink into a
    /// ConfigMap-like `..data` directory, say) and returns the path for `--config`.
    pub fn start_placed(
        binary: Binary,
        api_extra: &str,
        body: &str,
        place: impl FnOnce(&Path, &str) -> PathBuf,
    ) -> Self {
        Self::start_wrapped(binary, &[], api_extra, body, place)
    }

    /// As [`Porter::start_with_api`], run through `wrapper` (a program and its arguments
    /// that execute the rest of the command line, such as `prlimit --nofile=256 --`), so
    /// the relay is the same process: [`Porter::pid`] is its process ID.
    pub fn start_under(binary: Binary, wrapper: &[&str], api_extra: &str, body: &str) -> Self {
        Self::start_wrapped(binary, wrapper, api_extra, body, |dir, text| {
            let path = dir.join("config.yaml");
            std::fs::write(&path, text).expect("write config");
            path
        })
    }

    fn start_wrapped(
        binary: Binary,
        wrapper: &[&str],
        api_extra: &str,
        body: &str,
        place: impl FnOnce(&Path, &str) -> PathBuf,
    ) -> Self {
        let (udp_port, api_port) = (free_udp_port(), free_tcp_port());
        let head = format!(
            "udp: {{port: {udp_port}, bind: 127.0.0.1, log_requests: true}}\n\
             api: {{port: {api_port}{api_extra}}}\n"
        );
        let config_path = place(&temp_dir(), &format!("{head}{body}"));
        let mut porter = Self::spawn_command(binary, wrapper, config_path, &[]);
        porter.udp = ([127, 0, 0, 1], udp_port).into();
        porter.api = ([127, 0, 0, 1], api_port).into();
        porter.config_head = head;
        let ready = wait_for(Duration::from_secs(15), || {
            if let Ok(Some(status)) = porter.child.try_wait() {
                panic!(
                    "{} exited with {status}; log:\n{}",
                    binary.name,
                    porter.log()
                );
            }
            porter.get("/healthz").ok().filter(|(s, _)| *s == 200)
        });
        assert!(
            ready.is_some(),
            "{}'s API never answered; log:\n{}",
            binary.name,
            porter.log()
        );
        porter
    }

    /// Spawns `binary` with `config` written to a file, plus extra arguments, without
    /// waiting for anything.
    pub fn spawn(binary: Binary, config: &str, args: &[&str]) -> Self {
        let config_path = temp_dir().join("config.yaml");
        std::fs::write(&config_path, config).expect("write config");
        Self::spawn_at(binary, config_path, args)
    }

    /// Spawns `binary` with `--config config_path` (an existing file) and extra arguments,
    /// without waiting for anything.
    pub fn spawn_at(binary: Binary, config_path: PathBuf, args: &[&str]) -> Self {
        Self::spawn_command(binary, &[], config_path, args)
    }

    fn spawn_command(
        binary: Binary,
        wrapper: &[&str],
        config_path: PathBuf,
        args: &[&str],
    ) -> Self {
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(binary.path);
                c
            }
            None => Command::new(binary.path),
        };
        let mut child = command
            .args(args)
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} ({e})", binary.name));
        let log = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        for stream in [
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let log = log.clone();
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut l = log.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
            }));
        }
        Self {
            child,
            readers,
            udp: ([127, 0, 0, 1], 0).into(),
            api: ([127, 0, 0, 1], 0).into(),
            log,
            config_path,
            config_head: String::new(),
            token: None,
        }
    }

    /// Everything the process wrote so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log contains `needle`.
    pub fn wait_log(&self, needle: &str, within: Duration) -> bool {
        wait_for(within, || self.log().contains(needle).then_some(())).is_some()
    }

    /// Waits for the process to exit and for its output to be read; returns its exit
    /// code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let status = wait_for(within, || self.child.try_wait().ok().flatten())?;
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        Some(status.code().unwrap_or(-1))
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
    }

    /// Sends SIGHUP.
    pub fn hangup(&self) {
        let _ = Command::new("kill")
            .arg("-HUP")
            .arg(self.child.id().to_string())
            .status();
    }

    /// Whether the process is still running (it was not restarted, nor did it exit).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Its process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A GET on the API: status and body.
    pub fn get(&self, path: &str) -> std::io::Result<(u16, String)> {
        http(self.api, "GET", path, None, self.token.as_deref())
    }

    /// `GET /stats` as JSON.
    pub fn stats(&self) -> serde_json::Value {
        let (status, body) = self.get("/stats").expect("GET /stats");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("stats JSON")
    }
}

impl Drop for Porter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.1 client for the API (one request per connection).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let body = body.unwrap_or("");
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
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

impl Porter {
    /// Waits until `GET /readyz` answers 200.
    pub fn wait_ready(&self, within: Duration) -> bool {
        wait_for(within, || {
            self.get("/readyz").ok().filter(|(s, _)| *s == 200)
        })
        .is_some()
    }

    /// `GET /routes/{fqdn}`: the route as JSON, or `None` on 404.
    pub fn route(&self, fqdn: &str) -> Option<serde_json::Value> {
        let (status, body) = self
            .get(&format!("/routes/{fqdn}"))
            .expect("GET /routes/..");
        match status {
            200 => Some(serde_json::from_str(&body).expect("route JSON")),
            404 => None,
            other => panic!("GET /routes/{fqdn}: {other} {body}"),
        }
    }

    /// `GET /metrics`, checked and parsed.
    pub fn metrics(&self) -> Vec<Sample> {
        let (status, body) = self.get("/metrics").expect("GET /metrics");
        assert_eq!(status, 200, "{body}");
        parse_prometheus(&body).unwrap_or_else(|e| panic!("bad exposition: {e}\n{body}"))
    }
}

/// Sends `head` (request line and headers, without the blank line) and `body` as they are,
/// then reads one response (status, headers up to the blank line, and a body of its
/// `Content-Length`) without waiting for the connection to close.
pub fn http_raw(addr: SocketAddr, head: &str, body: &[u8]) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(head.as_bytes())?;
    stream.write_all(b"\r\n\r\n")?;
    stream.write_all(body)?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let header_end = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::Error::other("closed before the response headers"));
        }
        got.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&got[..header_end]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())
                .flatten()
        })
        .unwrap_or(0);
    while got.len() < header_end + length {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    let end = got.len().min(header_end + length);
    Ok((
        status,
        String::from_utf8_lossy(&got[header_end..end]).into_owned(),
    ))
}
