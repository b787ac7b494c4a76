//! The routing table: which backend (or which Agones fleet) serves a server name.
//!
//! Names are matched case-insensitively. An exact name wins over any wildcard; a wildcard
//! `*.example.com` matches every name with one or more labels below `example.com` (not
//! `example.com` itself), and a longer wildcard suffix wins over a shorter one; the
//! default route, if set, takes everything else, including connections without SNI.
//!
//! A simple route with several backends spreads new connections by its [`Policy`]: round
//! robin (the default), smooth weighted round robin, least sessions, or rendezvous hashing
//! of the client's IP. Backends marked unhealthy ([`RouteTable::set_backend_health`]) get
//! no new connections; a route with none healthy resolves to
//! [`Resolved::NoHealthyBackend`].

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

use thiserror::Error;

use crate::client_hello::normalize_host_name;
use crate::ids::{BackendAddr, ClientAddr};

/// The name a route answers to: one host name (`game.example.com`, normalised: lower
/// case, no trailing dot), a wildcard (`*.example.com`: every name with one or more
/// labels below `example.com`) or the default route (`*`: every name no other route
/// matches, and connections without SNI).
///
/// Opaque: made by [`RouteName::parse`] (or [`RouteName::DEFAULT`]), so a name is always
/// valid and normalised. Its text form ([`fmt::Display`]) parses back to itself. Names
/// order exact names first, then wildcards, then the default route.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteName(Name);

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Name {
    Exact(String),
    /// Stored without the `*.`.
    Wildcard(String),
    Default,
}

/// Why a route name is invalid.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RouteNameError {
    /// Not a valid DNS host name.
    #[error("{0:?} is not a valid DNS name")]
    InvalidName(String),
    /// A `*` anywhere but as the whole first label.
    #[error("{0:?}: a wildcard must be `*` or start with `*.` followed by a DNS name")]
    BadWildcard(String),
}

impl RouteName {
    /// The default route, `*`.
    pub const DEFAULT: Self = Self(Name::Default);

    /// Parses `name`, `*.suffix` or `*`. Host names follow the DNS rules of
    /// [`crate::client_hello::normalize_host_name`] (the same rules that normalise the
    /// SNI a client sends), so a route name and an SNI compare as equals.
    pub fn parse(text: &str) -> Result<Self, RouteNameError> {
        if text == "*" {
            return Ok(Self::DEFAULT);
        }
        if let Some(suffix) = text.strip_prefix("*.") {
            if suffix.contains('*') {
                return Err(RouteNameError::BadWildcard(text.to_owned()));
            }
            return normalize_host_name(suffix.as_bytes())
                .map(|suffix| Self(Name::Wildcard(suffix)))
                .ok_or_else(|| RouteNameError::InvalidName(text.to_owned()));
        }
        if text.contains('*') {
            return Err(RouteNameError::BadWildcard(text.to_owned()));
        }
        normalize_host_name(text.as_bytes())
            .map(|name| Self(Name::Exact(name)))
            .ok_or_else(|| RouteNameError::InvalidName(text.to_owned()))
    }
    /// The host name of an exact route; `None` for wildcards and the default route.
    pub fn exact(&self) -> Option<&str> {
        match &self.0 {
            Name::Exact(name) => Some(name),
            _ => None,
        }
    }

    /// The suffix of a wildcard route (`example.com` for `*.example.com`).
    pub fn wildcard_suffix(&self) -> Option<&str> {
        match &self.0 {
            Name::Wildcard(suffix) => Some(suffix),
            _ => None,
        }
    }

    /// Whether this is the default route, `*`.
    pub fn is_default(&self) -> bool {
        self.0 == Name::Default
    }
}

impl FromStr for RouteName {
    type Err = RouteNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for RouteName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Name::Exact(name) => f.write_str(name),
            Name::Wildcard(suffix) => write!(f, "*.{suffix}"),
            Name::Default => f.write_str("*"),
        }
    }
}

/// Where a route sends connections.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteTarget {
    /// Static backends. With several, new connections take them in turn (round robin,
    /// per route); a connection stays on the backend it was given.
    Simple(Vec<BackendAddr>),
    /// A game server allocated from this Agones fleet for each connection.
    Agones {
        /// The fleet name.
        fleet: Arc<str>,
    },
}

/// How a simple route with several backends picks one for a new connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Policy {
    /// In turn (the default).
    #[default]
    RoundRobin,
    /// In proportion to the weights, interleaved (smooth weighted round robin, as nginx):
    /// weights 3:1 give `a a b a` per four connections.
    Weighted,
    /// The backend with the fewest sessions relative to its weight; ties in turn.
    LeastSessions,
    /// Rendezvous (highest random weight) hashing of the client's IP address, weighted:
    /// the same IP lands on the same backend while the set of healthy backends is
    /// unchanged, and a backend leaving moves only its own share of clients. The hash is
    /// SipHash-2-4 under a fixed key (no per-process randomness, so every instance and
    /// every restart agrees); choosing IPs that pile onto one backend is no easier than
    /// with any public hash of the address.
    ClientIpHash,
}

impl Policy {
    /// Every policy.
    pub const ALL: &'static [Self] = &[
        Self::RoundRobin,
        Self::Weighted,
        Self::LeastSessions,
        Self::ClientIpHash,
    ];

    /// The name used in the configuration, the API and Redis.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RoundRobin => "round_robin",
            Self::Weighted => "weighted",
            Self::LeastSessions => "least_sessions",
            Self::ClientIpHash => "client_ip_hash",
        }
    }

    /// Parses [`Self::as_str`]'s names.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|p| p.as_str() == text)
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a simple route balances: its policy and the backends' weights.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Balance {
    /// The policy.
    pub policy: Policy,
    /// One weight (at least 1) per backend, in the route's order; empty means all 1.
    /// Round robin ignores them.
    pub weights: Vec<u32>,
}

impl Balance {
    /// The weight of the `i`-th backend.
    pub fn weight(&self, i: usize) -> u32 {
        self.weights.get(i).copied().unwrap_or(1)
    }

    /// Whether this is the default (round robin, no weights).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// A route: a name and a target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The name it answers to.
    pub name: RouteName,
    /// Where it sends connections.
    pub target: RouteTarget,
    /// How a simple route picks among its backends; must be the default for an agones
    /// route.
    pub balance: Balance,
}

impl Route {
    /// A simple route, round robin over `backends`.
    pub fn simple(name: RouteName, backends: Vec<BackendAddr>) -> Self {
        Self {
            name,
            target: RouteTarget::Simple(backends),
            balance: Balance::default(),
        }
    }
}

/// Why a route cannot be installed.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RouteError {
    /// A simple route with no backend.
    #[error("route {0} has no backend")]
    NoBackends(RouteName),
    /// An agones route with an empty fleet name.
    #[error("route {0} has an empty fleet name")]
    EmptyFleet(RouteName),
    /// Weights that are not one positive number per backend.
    #[error("route {name} has {weights} weights for {backends} backends (or a weight of 0)")]
    BadWeights {
        /// The route.
        name: RouteName,
        /// Weights given.
        weights: usize,
        /// Backends.
        backends: usize,
    },
    /// A balancing policy or weights on an agones route.
    #[error("route {0} allocates from a fleet: it takes no policy or weights")]
    BalanceOnFleet(RouteName),
    /// A target that is the relay's own listen address: one datagram would loop through
    /// the relay for ever.
    #[error("route {name}: target {target} is this relay's own listen address")]
    TargetIsRelay {
        /// The route.
        name: RouteName,
        /// The target.
        target: BackendAddr,
    },
}

#[derive(Debug)]
struct Entry {
    route: Route,
    /// Round robin position (also breaks least-sessions ties).
    next: usize,
    /// Smooth weighted round robin: each backend's current weight.
    current: Vec<i64>,
}

/// What a name resolves to for one new connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolved {
    /// Send the connection to this backend.
    Backend(BackendAddr),
    /// Allocate a game server from this fleet.
    Fleet(Arc<str>),
    /// The route (named) is simple and none of its backends is healthy.
    NoHealthyBackend(RouteName),
}

/// Routes by name, with exact, wildcard and default lookups.
#[derive(Debug, Default)]
pub struct RouteTable {
    exact: HashMap<String, Entry>,
    wildcard: HashMap<String, Entry>,
    default: Option<Entry>,
    /// Backends marked unhealthy (by address, whichever routes list them).
    unhealthy: HashSet<BackendAddr>,
    /// Routed sessions per backend, for least sessions (no entry for zero).
    load: HashMap<BackendAddr, u32>,
}

impl RouteTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts or replaces a route; returns the one it replaced.
    pub fn insert(&mut self, route: Route) -> Result<Option<Route>, RouteError> {
        match &route.target {
            RouteTarget::Simple(b) if b.is_empty() => {
                return Err(RouteError::NoBackends(route.name));
            }
            RouteTarget::Agones { fleet } if fleet.is_empty() => {
                return Err(RouteError::EmptyFleet(route.name));
            }
            RouteTarget::Agones { .. } if !route.balance.is_default() => {
                return Err(RouteError::BalanceOnFleet(route.name));
            }
            RouteTarget::Simple(b)
                if !route.balance.weights.is_empty()
                    && (route.balance.weights.len() != b.len()
                        || route.balance.weights.contains(&0)) =>
            {
                return Err(RouteError::BadWeights {
                    weights: route.balance.weights.len(),
                    backends: b.len(),
                    name: route.name,
                });
            }
            _ => {}
        }
        let current = match &route.target {
            RouteTarget::Simple(b) => vec![0; b.len()],
            RouteTarget::Agones { .. } => Vec::new(),
        };
        let entry = Entry {
            route,
            next: 0,
            current,
        };
        let old = match &entry.route.name.0 {
            Name::Exact(n) => self.exact.insert(n.clone(), entry),
            Name::Wildcard(s) => self.wildcard.insert(s.clone(), entry),
            Name::Default => self.default.replace(entry),
        };
        Ok(old.map(|e| e.route))
    }

    /// Removes a route; returns it if it existed.
    pub fn remove(&mut self, name: &RouteName) -> Option<Route> {
        let old = match &name.0 {
            Name::Exact(n) => self.exact.remove(n),
            Name::Wildcard(s) => self.wildcard.remove(s),
            Name::Default => self.default.take(),
        };
        old.map(|e| e.route)
    }

    /// The route with exactly this name.
    pub fn get(&self, name: &RouteName) -> Option<&Route> {
        let entry = match &name.0 {
            Name::Exact(n) => self.exact.get(n),
            Name::Wildcard(s) => self.wildcard.get(s),
            Name::Default => self.default.as_ref(),
        };
        entry.map(|e| &e.route)
    }

    /// Every route, sorted by name.
    pub fn routes(&self) -> Vec<Route> {
        let mut all: Vec<Route> = self
            .exact
            .values()
            .chain(self.wildcard.values())
            .chain(self.default.as_ref())
            .map(|e| e.route.clone())
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.exact.len() + self.wildcard.len() + usize::from(self.default.is_some())
    }

    /// Whether there are no routes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The route that serves `sni` (already normalised, as [`crate::ClientHelloInfo`]
    /// gives it), without choosing a backend.
    pub fn lookup(&self, sni: Option<&str>) -> Option<&Route> {
        self.find(sni).map(|e| &e.route)
    }

    /// Resolves `sni` for a new connection from `client`: picks a healthy backend by the
    /// route's policy (advancing its state) or names the fleet.
    pub fn resolve(&mut self, sni: Option<&str>, client: ClientAddr) -> Option<Resolved> {
        let place = self.place(sni)?;
        let (unhealthy, load) = (&self.unhealthy, &self.load);
        let entry = match (place, sni) {
            (Where::Exact, Some(name)) => self.exact.get_mut(name),
            (Where::Wildcard(i), Some(name)) => self.wildcard.get_mut(&name[i..]),
            _ => self.default.as_mut(),
        }?;
        Some(match &entry.route.target {
            RouteTarget::Simple(backends) => {
                let healthy = |i: usize| !unhealthy.contains(&backends[i]);
                let pick = match entry.route.balance.policy {
                    Policy::RoundRobin => round_robin(&mut entry.next, backends.len(), healthy),
                    Policy::Weighted => {
                        smooth_weighted(&mut entry.current, &entry.route.balance, healthy)
                    }
                    Policy::LeastSessions => {
                        let sessions = |i: usize| load.get(&backends[i]).copied().unwrap_or(0);
                        least_sessions(
                            &mut entry.next,
                            backends.len(),
                            &entry.route.balance,
                            healthy,
                            sessions,
                        )
                    }
                    Policy::ClientIpHash => {
                        rendezvous(client.0.ip(), backends, &entry.route.balance, healthy)
                    }
                };
                match pick {
                    Some(i) => Resolved::Backend(backends[i]),
                    None => Resolved::NoHealthyBackend(entry.route.name.clone()),
                }
            }
            RouteTarget::Agones { fleet } => Resolved::Fleet(fleet.clone()),
        })
    }

    /// Marks `backend` healthy or not (for every route that lists it); returns whether
    /// that changed anything. Every backend starts healthy.
    pub fn set_backend_health(&mut self, backend: BackendAddr, healthy: bool) -> bool {
        if healthy {
            self.unhealthy.remove(&backend)
        } else {
            self.unhealthy.insert(backend)
        }
    }

    /// Whether `backend` is healthy (not marked otherwise).
    pub fn backend_healthy(&self, backend: BackendAddr) -> bool {
        !self.unhealthy.contains(&backend)
    }

    /// The backends marked unhealthy.
    pub fn unhealthy_backends(&self) -> impl Iterator<Item = BackendAddr> + '_ {
        self.unhealthy.iter().copied()
    }

    /// A session was routed to `backend` (for least sessions).
    pub fn session_started(&mut self, backend: BackendAddr) {
        *self.load.entry(backend).or_insert(0) += 1;
    }

    /// A session routed to `backend` ended.
    pub fn session_ended(&mut self, backend: BackendAddr) {
        if let Some(n) = self.load.get_mut(&backend) {
            *n -= 1;
            if *n == 0 {
                self.load.remove(&backend);
            }
        }
    }

    /// Routed sessions on `backend` now.
    pub fn sessions_on(&self, backend: BackendAddr) -> u32 {
        self.load.get(&backend).copied().unwrap_or(0)
    }

    fn place(&self, sni: Option<&str>) -> Option<Where> {
        let place = match sni {
            Some(name) if self.exact.contains_key(name) => Where::Exact,
            Some(name) => name
                .match_indices('.')
                .map(|(i, _)| i + 1)
                .find(|&i| self.wildcard.contains_key(&name[i..]))
                .map_or(Where::Default, Where::Wildcard),
            None => Where::Default,
        };
        (!matches!(place, Where::Default) || self.default.is_some()).then_some(place)
    }

    fn find(&self, sni: Option<&str>) -> Option<&Entry> {
        if let Some(name) = sni {
            if let Some(e) = self.exact.get(name) {
                return Some(e);
            }
            // Longest suffix first: the most specific wildcard wins.
            for (i, _) in name.match_indices('.') {
                if let Some(e) = self.wildcard.get(&name[i + 1..]) {
                    return Some(e);
                }
            }
        }
        self.default.as_ref()
    }
}

/// Which map holds a name's route.
enum Where {
    Exact,
    Wildcard(usize),
    Default,
}

/// The first healthy backend from `next` on.
fn round_robin(next: &mut usize, n: usize, healthy: impl Fn(usize) -> bool) -> Option<usize> {
    let start = *next;
    let i = (0..n).map(|k| (start + k) % n).find(|&i| healthy(i))?;
    *next = i + 1;
    Some(i)
}

/// Smooth weighted round robin: every healthy backend gains its weight, the one with the
/// most is picked and loses the healthy total.
fn smooth_weighted(
    current: &mut [i64],
    balance: &Balance,
    healthy: impl Fn(usize) -> bool,
) -> Option<usize> {
    let mut total = 0i64;
    let mut best: Option<usize> = None;
    for i in 0..current.len() {
        if !healthy(i) {
            continue;
        }
        let w = i64::from(balance.weight(i));
        current[i] += w;
        total += w;
        if best.is_none_or(|b| current[i] > current[b]) {
            best = Some(i);
        }
    }
    let best = best?;
    current[best] -= total;
    Some(best)
}

/// The healthy backend with the fewest sessions per unit of weight; ties go in turn.
fn least_sessions(
    next: &mut usize,
    n: usize,
    balance: &Balance,
    healthy: impl Fn(usize) -> bool,
    sessions: impl Fn(usize) -> u32,
) -> Option<usize> {
    let start = *next;
    let mut best: Option<(usize, u64, u64)> = None;
    for i in (0..n).map(|k| (start + k) % n) {
        if !healthy(i) {
            continue;
        }
        let (s, w) = (u64::from(sessions(i)), u64::from(balance.weight(i)));
        // s / w < best_s / best_w, without division.
        if best.is_none_or(|(_, bs, bw)| s * bw < bs * w) {
            best = Some((i, s, w));
        }
    }
    let (i, _, _) = best?;
    *next = i + 1;
    Some(i)
}

/// The fixed SipHash key of [`Policy::ClientIpHash`].
const HASH_KEY: (u64, u64) = (0x706f_7274_6572_2d68, 0x7277_2d6b_6579_2d31);

/// Weighted rendezvous hashing: each healthy backend scores `-w / ln(u)` with `u` in
/// (0, 1) drawn from the hash of (client IP, backend); the highest score wins.
fn rendezvous(
    ip: IpAddr,
    backends: &[BackendAddr],
    balance: &Balance,
    healthy: impl Fn(usize) -> bool,
) -> Option<usize> {
    let ip = match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    let mut best: Option<(usize, f64)> = None;
    for (i, backend) in backends.iter().enumerate() {
        if !healthy(i) {
            continue;
        }
        let mut input = [0u8; 34];
        input[..16].copy_from_slice(&ip);
        let b = match backend.0.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        };
        input[16..32].copy_from_slice(&b);
        input[32..].copy_from_slice(&backend.0.port().to_be_bytes());
        let h = siphash24(HASH_KEY, &input);
        // 53 random bits, strictly inside (0, 1).
        let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let score = f64::from(balance.weight(i)) / -u.ln();
        if best.is_none_or(|(_, s)| score > s) {
            best = Some((i, score));
        }
    }
    best.map(|(i, _)| i)
}

/// SipHash-2-4 (Aumasson and Bernstein), 64-bit output.
fn siphash24(key: (u64, u64), data: &[u8]) -> u64 {
    let mut v = [
        key.0 ^ 0x736f_6d65_7073_6575,
        key.1 ^ 0x646f_7261_6e64_6f6d,
        key.0 ^ 0x6c79_6765_6e65_7261,
        key.1 ^ 0x7465_6462_7974_6573,
    ];
    fn round(v: &mut [u64; 4]) {
        v[0] = v[0].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(13) ^ v[0];
        v[0] = v[0].rotate_left(32);
        v[2] = v[2].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(16) ^ v[2];
        v[0] = v[0].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(21) ^ v[0];
        v[2] = v[2].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(17) ^ v[2];
        v[2] = v[2].rotate_left(32);
    }
    let mut chunks = data.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let m = u64::from_le_bytes(word);
        v[3] ^= m;
        round(&mut v);
        round(&mut v);
        v[0] ^= m;
    }
    let mut last = [0u8; 8];
    let rest = chunks.remainder();
    last[..rest.len()].copy_from_slice(rest);
    last[7] = data.len() as u8;
    let m = u64::from_le_bytes(last);
    v[3] ^= m;
    round(&mut v);
    round(&mut v);
    v[0] ^= m;
    v[2] ^= 0xff;
    for _ in 0..4 {
        round(&mut v);
    }
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(port: u16) -> BackendAddr {
        BackendAddr(([127, 0, 0, 1], port).into())
    }

    fn simple(name: &str, ports: &[u16]) -> Route {
        Route::simple(
            RouteName::parse(name).unwrap(),
            ports.iter().map(|&p| backend(p)).collect(),
        )
    }

    fn client(last: u8) -> ClientAddr {
        ClientAddr(([192, 0, 2, last], 4433).into())
    }

    fn balanced(ports: &[u16], policy: Policy, weights: &[u32]) -> RouteTable {
        let mut route = simple("a.test", ports);
        route.balance = Balance {
            policy,
            weights: weights.to_vec(),
        };
        let mut t = RouteTable::new();
        t.insert(route).unwrap();
        t
    }

    fn pick(t: &mut RouteTable, from: ClientAddr) -> u16 {
        match t.resolve(Some("a.test"), from) {
            Some(Resolved::Backend(b)) => b.0.port(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn names_parse_and_print() {
        assert_eq!(
            RouteName::parse("Game.Example.COM."),
            Ok(RouteName(Name::Exact("game.example.com".into())))
        );
        assert_eq!(
            RouteName::parse("*.Example.com"),
            Ok(RouteName(Name::Wildcard("example.com".into())))
        );
        assert_eq!(RouteName::parse("*"), Ok(RouteName::DEFAULT));
        for bad in ["a.*.com", "*a.com", "**.com", "*.", "", "a..b", "*.*.a.com"] {
            assert!(RouteName::parse(bad).is_err(), "{bad}");
        }
        for text in ["a.example.com", "*.example.com", "*"] {
            assert_eq!(RouteName::parse(text).unwrap().to_string(), text);
        }
    }

    #[test]
    fn most_specific_match_wins() {
        let mut t = RouteTable::new();
        t.insert(simple("*", &[1])).unwrap();
        t.insert(simple("*.example.com", &[2])).unwrap();
        t.insert(simple("*.eu.example.com", &[3])).unwrap();
        t.insert(simple("eu.example.com", &[4])).unwrap();
        let port = |t: &mut RouteTable, sni: Option<&str>| match t.resolve(sni, client(1)) {
            Some(Resolved::Backend(b)) => b.0.port(),
            other => panic!("{other:?}"),
        };
        assert_eq!(port(&mut t, Some("a.example.com")), 2);
        assert_eq!(port(&mut t, Some("a.b.example.com")), 2);
        assert_eq!(port(&mut t, Some("a.eu.example.com")), 3);
        assert_eq!(port(&mut t, Some("x.a.eu.example.com")), 3);
        assert_eq!(port(&mut t, Some("eu.example.com")), 4);
        assert_eq!(port(&mut t, Some("example.com")), 1);
        assert_eq!(port(&mut t, Some("other.org")), 1);
        assert_eq!(port(&mut t, None), 1);
        t.remove(&RouteName::DEFAULT);
        assert_eq!(t.resolve(Some("example.com"), client(1)), None);
        assert_eq!(t.resolve(None, client(1)), None);
    }

    #[test]
    fn round_robin_over_targets() {
        let mut t = RouteTable::new();
        t.insert(simple("a.test", &[1, 2, 3])).unwrap();
        let ports: Vec<u16> = (0..6)
            .map(|_| match t.resolve(Some("a.test"), client(1)) {
                Some(Resolved::Backend(b)) => b.0.port(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(ports, [1, 2, 3, 1, 2, 3]);
        assert_eq!(
            t.insert(simple("a.test", &[])),
            Err(RouteError::NoBackends(RouteName(Name::Exact(
                "a.test".into()
            ))))
        );
        let old = t.insert(simple("a.test", &[9])).unwrap().unwrap();
        assert_eq!(old, simple("a.test", &[1, 2, 3]));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn round_robin_skips_unhealthy_backends_and_refuses_when_none_is_left() {
        let mut t = balanced(&[1, 2, 3], Policy::RoundRobin, &[]);
        assert!(t.set_backend_health(backend(2), false));
        assert!(!t.set_backend_health(backend(2), false), "no change");
        let ports: Vec<u16> = (0..4).map(|_| pick(&mut t, client(1))).collect();
        assert_eq!(ports, [1, 3, 1, 3]);
        t.set_backend_health(backend(1), false);
        t.set_backend_health(backend(3), false);
        assert_eq!(
            t.resolve(Some("a.test"), client(1)),
            Some(Resolved::NoHealthyBackend(
                RouteName::parse("a.test").unwrap()
            ))
        );
        assert!(t.set_backend_health(backend(2), true));
        assert_eq!(pick(&mut t, client(1)), 2);
    }

    #[test]
    fn weighted_interleaves_in_proportion() {
        let mut t = balanced(&[1, 2], Policy::Weighted, &[3, 1]);
        let ports: Vec<u16> = (0..8).map(|_| pick(&mut t, client(1))).collect();
        assert_eq!(ports, [1, 1, 2, 1, 1, 1, 2, 1]);
        let mut t = balanced(&[1, 2, 3], Policy::Weighted, &[5, 1, 1]);
        let ports: Vec<u16> = (0..7).map(|_| pick(&mut t, client(1))).collect();
        assert_eq!(
            ports,
            [1, 1, 2, 1, 3, 1, 1],
            "nginx's example: a a b a c a a"
        );
        // An unhealthy backend's share goes to the others.
        let mut t = balanced(&[1, 2, 3], Policy::Weighted, &[3, 1, 2]);
        t.set_backend_health(backend(3), false);
        let mut counts = [0; 4];
        for _ in 0..40 {
            counts[usize::from(pick(&mut t, client(1)))] += 1;
        }
        assert_eq!(counts, [0, 30, 10, 0]);
    }

    #[test]
    fn weights_must_match_the_backends() {
        let mut t = RouteTable::new();
        for weights in [vec![1], vec![1, 0], vec![1, 2, 3]] {
            let mut route = simple("a.test", &[1, 2]);
            route.balance.weights = weights;
            assert!(matches!(
                t.insert(route),
                Err(RouteError::BadWeights { .. })
            ));
        }
        let mut fleet = Route {
            name: RouteName::parse("f.test").unwrap(),
            target: RouteTarget::Agones {
                fleet: Arc::from("f"),
            },
            balance: Balance::default(),
        };
        fleet.balance.policy = Policy::LeastSessions;
        assert!(matches!(
            t.insert(fleet),
            Err(RouteError::BalanceOnFleet(_))
        ));
    }

    #[test]
    fn least_sessions_fills_the_emptiest_relative_to_weight() {
        let mut t = balanced(&[1, 2, 3], Policy::LeastSessions, &[]);
        for _ in 0..3 {
            t.session_started(backend(1));
        }
        t.session_started(backend(2));
        // 3, 1, 0 sessions: 3 gets one, then 2 and 3 take turns until they reach 3.
        let mut ports = Vec::new();
        for _ in 0..5 {
            let p = pick(&mut t, client(1));
            t.session_started(backend(p));
            ports.push(p);
        }
        assert_eq!(ports, [3, 2, 3, 2, 3]);
        for _ in 0..3 {
            t.session_ended(backend(1));
        }
        assert_eq!(t.sessions_on(backend(1)), 0);
        assert_eq!(pick(&mut t, client(1)), 1);
        let mut t = balanced(&[1, 2], Policy::LeastSessions, &[2, 1]);
        let mut counts = [0; 3];
        for _ in 0..30 {
            let p = pick(&mut t, client(1));
            t.session_started(backend(p));
            counts[usize::from(p)] += 1;
        }
        assert_eq!(counts, [0, 20, 10], "weight 2 carries twice the sessions");
    }

    #[test]
    fn client_ip_hash_is_sticky_and_moves_only_the_lost_backends_clients() {
        let mut t = balanced(&[1, 2, 3, 4], Policy::ClientIpHash, &[]);
        let before: Vec<u16> = (0..=255).map(|i| pick(&mut t, client(i))).collect();
        // Sticky: the same IP (any port) always lands on the same backend.
        for i in 0..=255u8 {
            let other_port = ClientAddr(([192, 0, 2, i], 9).into());
            assert_eq!(pick(&mut t, other_port), before[usize::from(i)]);
        }
        // Spread: every backend gets a fair share of 256 addresses.
        for port in 1..=4 {
            let n = before.iter().filter(|&&p| p == port).count();
            assert!((40..=90).contains(&n), "backend {port}: {n} of 256");
        }
        // A backend that goes away moves its own clients and nobody else's.
        t.set_backend_health(backend(2), false);
        for i in 0..=255u8 {
            let now = pick(&mut t, client(i));
            if before[usize::from(i)] == 2 {
                assert_ne!(now, 2);
            } else {
                assert_eq!(now, before[usize::from(i)], "client {i} moved");
            }
        }
        t.set_backend_health(backend(2), true);
        let after: Vec<u16> = (0..=255).map(|i| pick(&mut t, client(i))).collect();
        assert_eq!(after, before, "back where they were");
        // Weighted: weight 3 of 4 takes about three quarters.
        let mut t = balanced(&[1, 2], Policy::ClientIpHash, &[3, 1]);
        let mut n = 0;
        for a in 0..4u8 {
            for b in 0..=255u8 {
                n += usize::from(pick(&mut t, ClientAddr(([10, a, b, 7], 1).into())) == 1);
            }
        }
        assert!((700..=840).contains(&n), "{n} of 1024");
    }

    #[test]
    fn siphash_known_answer() {
        // The SipHash paper, Appendix A: key 00..0f, message 00..0e.
        let key = (0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908);
        let data: Vec<u8> = (0..15).collect();
        assert_eq!(siphash24(key, &data), 0xa129_ca61_49be_45e5);
    }

    #[test]
    fn policies_have_names() {
        for p in Policy::ALL {
            assert_eq!(Policy::parse(p.as_str()), Some(*p));
        }
        assert_eq!(Policy::parse("random"), None);
    }
}
