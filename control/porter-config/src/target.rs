//! Backend addresses written as `host:port`: checked for syntax when the file is read,
//! resolved to socket addresses at start-up.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::str::FromStr;

use crate::error::InvalidValue;
use crate::names::check_dns_name;

/// A `host:port` address: a DNS name, an IPv4 literal, or an IPv6 literal in brackets
/// (`[::1]:443`), with a port from 1 to 65535.
///
/// Only the syntax is checked when the configuration is read; [`Target::resolve`] turns
/// it into socket addresses (a DNS lookup for names) when the relay starts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    host: Host,
    port: u16,
}

/// The host part of a [`Target`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// An IP literal: no lookup needed.
    Ip(IpAddr),
    /// A DNS name, in lower case.
    Name(String),
}

impl Target {
    /// Parses `host:port`.
    ///
    /// # Errors
    /// [`InvalidValue`] quoting the text and saying what is wrong (`"10.0.0.5" is not
    /// host:port: the port is missing ...`).
    pub fn parse(text: &str) -> Result<Self, InvalidValue> {
        Self::parse_inner(text, None)
    }

    /// Parses `host:port`, or a bare `host` which then gets `default_port`.
    ///
    /// # Errors
    /// As [`Target::parse`].
    pub fn parse_with_default_port(text: &str, default_port: u16) -> Result<Self, InvalidValue> {
        Self::parse_inner(text, Some(default_port))
    }

    fn parse_inner(text: &str, default_port: Option<u16>) -> Result<Self, InvalidValue> {
        Self::parse_reason(text, default_port)
            .map_err(|why| InvalidValue::new(format!("{text:?} is not host:port: {why}")))
    }

    /// Parses `host:port`; the error says only what is wrong, for callers that phrase the
    /// message themselves (the route text form).
    pub(crate) fn parse_reason(text: &str, default_port: Option<u16>) -> Result<Self, String> {
        let fail = |why: &str| why.to_owned();
        if text.is_empty() {
            return Err(fail("it is empty"));
        }
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (inside, after) = rest
                .split_once(']')
                .ok_or_else(|| fail("`[` without a closing `]`"))?;
            let ip: Ipv6Addr = inside
                .parse()
                .map_err(|_| fail(&format!("{inside:?} in brackets is not an IPv6 address")))?;
            let port = match (after.strip_prefix(':'), default_port) {
                (Some(port), _) => Some(port),
                (None, Some(_)) if after.is_empty() => None,
                _ => return Err(fail("expected `:port` after `]`, e.g. [::1]:443")),
            };
            (Host::Ip(IpAddr::V6(ip)), port)
        } else {
            let (host, port) = match (text.rsplit_once(':'), default_port) {
                (Some((host, port)), _) => (host, Some(port)),
                (None, Some(_)) => (text, None),
                (None, None) => {
                    return Err(fail(
                        "the port is missing (write it as host:port, e.g. 10.0.0.5:7777)",
                    ))
                }
            };
            if host.contains(':') {
                if text.parse::<Ipv6Addr>().is_ok() || host.parse::<Ipv6Addr>().is_ok() {
                    return Err(fail("write IPv6 addresses in brackets, e.g. [::1]:7777"));
                }
                return Err(fail("the host contains `:`"));
            }
            (parse_host(host).map_err(|why| fail(&why))?, port)
        };
        let port = match port {
            Some(port) => parse_port(port).map_err(|why| fail(&why))?,
            None => default_port.unwrap_or_default(),
        };
        Ok(Self { host, port })
    }

    /// The host.
    #[must_use]
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// The port (1–65535).
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The socket address, if the host is an IP literal.
    #[must_use]
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match self.host {
            Host::Ip(ip) => Some(SocketAddr::new(ip, self.port)),
            Host::Name(_) => None,
        }
    }

    /// Resolves the target with the system resolver (`std::net::ToSocketAddrs`; blocking for
    /// DNS names, immediate for IP literals).
    ///
    /// # Errors
    /// The resolver's error, or `NotFound` if the name has no address.
    pub fn resolve(&self) -> io::Result<Vec<SocketAddr>> {
        match &self.host {
            Host::Ip(ip) => Ok(vec![SocketAddr::new(*ip, self.port)]),
            Host::Name(name) => {
                let addrs: Vec<SocketAddr> =
                    (name.as_str(), self.port).to_socket_addrs()?.collect();
                if addrs.is_empty() {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("{self} resolves to no address"),
                    ));
                }
                Ok(addrs)
            }
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Self::Ip(IpAddr::V4(ip)) => write!(f, "{ip}"),
            Self::Name(name) => f.write_str(name),
        }
    }
}

/// `host:port`, with IPv6 in brackets and names in lower case.
impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl FromStr for Target {
    type Err = InvalidValue;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl From<SocketAddr> for Target {
    fn from(addr: SocketAddr) -> Self {
        Self {
            host: Host::Ip(addr.ip()),
            port: addr.port(),
        }
    }
}

fn parse_host(host: &str) -> Result<Host, String> {
    if host.is_empty() {
        return Err("the host is empty".to_owned());
    }
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return host
            .parse::<Ipv4Addr>()
            .map(|ip| Host::Ip(IpAddr::V4(ip)))
            .map_err(|_| format!("{host:?} is not a valid IPv4 address"));
    }
    let lower = host.to_ascii_lowercase();
    let name = lower.strip_suffix('.').unwrap_or(&lower);
    check_dns_name(name).map_err(|why| format!("the host {host:?} is not a valid name: {why}"))?;
    Ok(Host::Name(name.to_owned()))
}

fn parse_port(port: &str) -> Result<u16, String> {
    match port.parse::<u32>() {
        Ok(p @ 1..=65535) => Ok(u16::try_from(p).expect("range checked above")),
        _ if port.is_empty() => Err("the port is empty".to_owned()),
        _ => Err(format!("{port:?} is not a port (1-65535)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_literals() {
        let t = Target::parse("10.0.0.5:7777").unwrap();
        assert_eq!(t.socket_addr(), Some("10.0.0.5:7777".parse().unwrap()));
        let t = Target::parse("[::1]:443").unwrap();
        assert_eq!(t.to_string(), "[::1]:443");
        let t = Target::parse("Game-1.NS.svc.cluster.local:7777").unwrap();
        assert_eq!(t.host(), &Host::Name("game-1.ns.svc.cluster.local".into()));
        assert_eq!(t.to_string(), "game-1.ns.svc.cluster.local:7777");
        let t = Target::parse_with_default_port("allocator.example", 443).unwrap();
        assert_eq!(t.port(), 443);
        let t = Target::parse_with_default_port("[::1]", 443).unwrap();
        assert_eq!(t.to_string(), "[::1]:443");
    }

    #[test]
    fn rejects_bad_targets() {
        for (bad, why) in [
            ("10.0.0.5", "port is missing"),
            ("", "empty"),
            (":80", "host is empty"),
            ("10.0.0.5:", "port is empty"),
            ("10.0.0.5:0", "not a port"),
            ("10.0.0.5:65536", "not a port"),
            ("10.0.0.5:http", "not a port"),
            ("10.0.0.256:80", "IPv4"),
            ("::1:80", "brackets"),
            ("[::1]", "`:port`"),
            ("[::1:80", "closing"),
            ("[10.0.0.1]:80", "IPv6"),
            ("bad_host!:80", "not a valid name"),
        ] {
            let err = Target::parse(bad).expect_err(bad);
            assert!(err.message().contains(why), "{bad:?}: {err}");
            assert!(err.message().contains("is not host:port"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn resolves_literals_without_dns_and_localhost_with_it() {
        let t = Target::parse("127.0.0.1:4434").unwrap();
        assert_eq!(
            t.resolve().unwrap(),
            vec!["127.0.0.1:4434".parse().unwrap()]
        );
        let t = Target::parse("localhost:4434").unwrap();
        let addrs = t.resolve().unwrap();
        assert!(
            addrs
                .iter()
                .all(|a| a.ip().is_loopback() && a.port() == 4434),
            "{addrs:?}"
        );
    }
}
