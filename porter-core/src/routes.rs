//! The routing table: which backend (or which Agones fleet) serves a server name.
//!
//! Names are matched case-insensitively. An exact name wins over any wildcard; a wildcard
//! `*.example.com` matches every name with one or more labels below `example.com` (not
//! `example.com` itself), and a longer wildcard suffix wins over a shorter one; the
//! default route, if set, takes everything else, including connections without SNI.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use thiserror::Error;

use crate::client_hello::normalize_host_name;
use crate::ids::BackendAddr;

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

/// A route: a name and a target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The name it answers to.
    pub name: RouteName,
    /// Where it sends connections.
    pub target: RouteTarget,
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
}

#[derive(Debug)]
struct Entry {
    route: Route,
    next: usize,
}

/// What a name resolves to for one new connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolved {
    /// Send the connection to this backend.
    Backend(BackendAddr),
    /// Allocate a game server from this fleet.
    Fleet(Arc<str>),
}

/// Routes by name, with exact, wildcard and default lookups.
#[derive(Debug, Default)]
pub struct RouteTable {
    exact: HashMap<String, Entry>,
    wildcard: HashMap<String, Entry>,
    default: Option<Entry>,
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
            _ => {}
        }
        let entry = Entry { route, next: 0 };
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

    /// Resolves `sni` for a new connection: picks the backend (advancing the round
    /// robin) or names the fleet.
    pub fn resolve(&mut self, sni: Option<&str>) -> Option<Resolved> {
        let entry = self.find_mut(sni)?;
        Some(match &entry.route.target {
            RouteTarget::Simple(backends) => {
                let backend = backends[entry.next % backends.len()];
                entry.next = entry.next.wrapping_add(1);
                Resolved::Backend(backend)
            }
            RouteTarget::Agones { fleet } => Resolved::Fleet(fleet.clone()),
        })
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

    fn find_mut(&mut self, sni: Option<&str>) -> Option<&mut Entry> {
        // Two-step to satisfy the borrow checker: find which map holds the match.
        enum Where {
            Exact,
            Wildcard(usize),
            Default,
        }
        let place = match sni {
            Some(name) if self.exact.contains_key(name) => Where::Exact,
            Some(name) => name
                .match_indices('.')
                .map(|(i, _)| i + 1)
                .find(|&i| self.wildcard.contains_key(&name[i..]))
                .map_or(Where::Default, Where::Wildcard),
            None => Where::Default,
        };
        match (place, sni) {
            (Where::Exact, Some(name)) => self.exact.get_mut(name),
            (Where::Wildcard(i), Some(name)) => self.wildcard.get_mut(&name[i..]),
            _ => self.default.as_mut(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(port: u16) -> BackendAddr {
        BackendAddr(([127, 0, 0, 1], port).into())
    }

    fn simple(name: &str, ports: &[u16]) -> Route {
        Route {
            name: RouteName::parse(name).unwrap(),
            target: RouteTarget::Simple(ports.iter().map(|&p| backend(p)).collect()),
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
        let port = |t: &mut RouteTable, sni: Option<&str>| match t.resolve(sni) {
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
        assert_eq!(t.resolve(Some("example.com")), None);
        assert_eq!(t.resolve(None), None);
    }

    #[test]
    fn round_robin_over_targets() {
        let mut t = RouteTable::new();
        t.insert(simple("a.test", &[1, 2, 3])).unwrap();
        let ports: Vec<u16> = (0..6)
            .map(|_| match t.resolve(Some("a.test")) {
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
}
