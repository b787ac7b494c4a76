//! The one `redis-server` launcher of the tests, and a minimal RESP2 client to look at
//! what the relay stored.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::ports::free_tcp_port;
use crate::temp::temp_dir;
use crate::wait::wait_for;

/// A value in the Redis protocol (RESP2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resp {
    /// `+OK`.
    Simple(String),
    /// `-ERR ...`.
    Error(String),
    /// `:1`.
    Int(i64),
    /// `$n` (`None` for `$-1`).
    Bulk(Option<String>),
    /// `*n` (`None` for `*-1`).
    Array(Option<Vec<Self>>),
}

/// A `redis-server` on a free loopback port, in its own directory, without persistence,
/// optionally requiring a password; stopped when dropped.
pub struct RedisServer {
    /// Its port.
    pub port: u16,
    dir: PathBuf,
    password: Option<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts one and waits until it answers PING. Panics with a hint if `redis-server` is
    /// not installed (`scripts/test` installs it).
    pub fn start() -> Self {
        Self::launch(None)
    }

    /// As [`RedisServer::start`], requiring `password` (`requirepass`);
    /// [`RedisServer::command`] authenticates with it.
    pub fn start_with_password(password: &str) -> Self {
        Self::launch(Some(password.to_owned()))
    }

    fn launch(password: Option<String>) -> Self {
        let mut server = Self {
            port: free_tcp_port(),
            dir: temp_dir(),
            password,
            child: None,
        };
        server.restart();
        server
    }

    /// `host:port`, for `redis.address`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stops it (its data is gone: no persistence) and waits until the port is closed.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        let closed = wait_for(Duration::from_secs(10), || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200))
                .is_err()
                .then_some(())
        });
        assert!(closed.is_some(), "redis-server still answers on {addr}");
    }

    /// Starts it (again) on the same port, and waits until it answers PING.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "redis-server is running");
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir);
        if let Some(password) = &self.password {
            command.args(["--requirepass", password]);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run redis-server ({e}); scripts/test installs it (apt-get install redis-server)")
            });
        self.child = Some(child);
        let up = wait_for(Duration::from_secs(10), || {
            (self.command(&["PING"]).ok() == Some(Resp::Simple("PONG".into()))).then_some(())
        });
        assert!(
            up.is_some(),
            "redis-server did not answer on port {}",
            self.port
        );
    }

    /// Runs one command (after `AUTH` when it has a password) and returns the reply.
    pub fn command(&self, args: &[&str]) -> std::io::Result<Resp> {
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        if let Some(password) = &self.password {
            stream.write_all(&request(&["AUTH", password]))?;
        }
        stream.write_all(&request(args))?;
        let mut reader = BufReader::new(stream);
        if self.password.is_some() {
            let auth = read_resp(&mut reader)?;
            if auth != Resp::Simple("OK".into()) {
                return Err(std::io::Error::other(format!("AUTH: {auth:?}")));
            }
        }
        read_resp(&mut reader)
    }

    /// `HGETALL key` as pairs, sorted.
    pub fn hgetall(&self, key: &str) -> Vec<(String, String)> {
        let reply = self.command(&["HGETALL", key]).expect("HGETALL");
        let Resp::Array(Some(items)) = reply else {
            panic!("HGETALL {key}: {reply:?}")
        };
        let mut pairs: Vec<(String, String)> = items
            .chunks(2)
            .map(|kv| match kv {
                [Resp::Bulk(Some(k)), Resp::Bulk(Some(v))] => (k.clone(), v.clone()),
                other => panic!("HGETALL {key}: {other:?}"),
            })
            .collect();
        pairs.sort();
        pairs
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `args` as a RESP2 array of bulk strings.
fn request(args: &[&str]) -> Vec<u8> {
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    req.into_bytes()
}

fn read_resp(reader: &mut impl BufRead) -> std::io::Result<Resp> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let line = line.trim_end_matches("\r\n");
    let bad = || std::io::Error::other(format!("bad RESP line {line:?}"));
    let (kind, rest) = line.split_at_checked(1).ok_or_else(bad)?;
    Ok(match kind {
        "+" => Resp::Simple(rest.to_owned()),
        "-" => Resp::Error(rest.to_owned()),
        ":" => Resp::Int(rest.parse().map_err(|_| bad())?),
        "$" => {
            let n: i64 = rest.parse().map_err(|_| bad())?;
            if n < 0 {
                Resp::Bulk(None)
            } else {
                let mut buf = vec![0u8; n as usize + 2];
                reader.read_exact(&mut buf)?;
                buf.truncate(n as usize);
                Resp::Bulk(Some(String::from_utf8_lossy(&buf).into_owned()))
            }
        }
        "*" => {
            let n: i64 = rest.parse().map_err(|_| bad())?;
            if n < 0 {
                Resp::Array(None)
            } else {
                let mut items = Vec::new();
                for _ in 0..n {
                    items.push(read_resp(reader)?);
                }
                Resp::Array(Some(items))
            }
        }
        _ => return Err(bad()),
    })
}
