//! The text form of a route, one for the configuration file, the REST API and Redis: the
//! original project's JSON `{"fqdn", "type", "target"}` ([`RouteText`]), its validated form
//! ([`RouteSpec`], targets checked for syntax only), and the one step from there to the
//! core's [`porter_core::Route`] ([`RouteSpec::resolve`], host names looked up).
//!
//! A `simple` target is one `host:port`, several separated by commas (as the original
//! project stores them in Redis), or a list; an `agones` target is one fleet name.
//!
//! A simple route may add a balancing policy and weights: as fields (`"policy":
//! "weighted", "weights": [3, 1]`) in JSON and YAML, and, in the one-string form Redis
//! stores, as suffixes after the targets: `10.0.0.1:7777,10.0.0.2:7777;policy=weighted;weights=3,1`.
//! A route without them reads and writes exactly as before.

use std::fmt;
use std::io;
use std::sync::Arc;

use porter_core::{BackendAddr, Balance, Policy, Route, RouteName, RouteTarget};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::names::{check_kubernetes_name, parse_route_name};
use crate::target::Target;
use crate::types::{RouteKind, RouteSpec};

/// A route as JSON and YAML write it: `{"fqdn": ..., "type": ..., "target": ...}`.
/// Nothing is checked until [`RouteSpec::from_text`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteText {
    /// `name`, `*.suffix` or `*`.
    pub fqdn: String,
    /// `simple` or `agones`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `host:port` (several as a list, or separated by commas) for `simple`; the fleet name
    /// for `agones`.
    pub target: TargetText,
    /// `round_robin`, `weighted`, `least_sessions` or `client_ip_hash` (simple routes);
    /// left out: round robin, or weighted when `weights` is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// One weight (at least 1) per target, in order (simple routes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<Vec<u32>>,
}

/// One target or several.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetText {
    /// One `host:port` (or several separated by commas) or a fleet name.
    One(String),
    /// Several `host:port`.
    Many(Vec<String>),
}

/// A route's type, which is also the Redis hash it is stored in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RouteType {
    /// Fixed `host:port` backends.
    Simple,
    /// An Agones fleet.
    Agones,
}

impl RouteType {
    /// `simple` or `agones`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Simple => "simple",
            Self::Agones => "agones",
        }
    }

    /// Parses `simple` or `agones`.
    ///
    /// # Errors
    /// [`RouteTextError::Type`] for anything else.
    pub fn parse(text: &str) -> Result<Self, RouteTextError> {
        match text {
            "simple" => Ok(Self::Simple),
            "agones" => Ok(Self::Agones),
            other => Err(RouteTextError::Type(other.to_owned())),
        }
    }
}

impl fmt::Display for RouteType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a route's text form is not a route. Displays as `field: what is wrong`.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RouteTextError {
    /// The name breaks a rule (the message says which).
    #[error("fqdn: {0}")]
    Name(String),
    /// Not `simple` or `agones`.
    #[error("type: {0:?} is not a route type (expected \"simple\" or \"agones\")")]
    Type(String),
    /// A `simple` target that is not `host:port`.
    #[error("target: {text:?} is not a host:port{}", reason.as_ref().map_or_else(|| " (a simple route takes host:port, several as a list or separated by commas)".to_owned(), |r| format!(": {r}")))]
    Target {
        /// The target as written.
        text: String,
        /// What is wrong, when more is known than that it is not `host:port`.
        reason: Option<String>,
    },
    /// A `simple` route without targets.
    #[error("target: a simple route needs at least one host:port")]
    NoTargets,
    /// An `agones` route without a fleet name, or with a list.
    #[error("target: an agones route needs a fleet name")]
    NoFleet,
    /// A fleet name that is not a Kubernetes name.
    #[error("target: not a fleet name: {0}")]
    Fleet(String),
    /// Not a policy name.
    #[error(
        "policy: {0:?} is not a policy (round_robin, weighted, least_sessions, client_ip_hash)"
    )]
    Policy(String),
    /// Weights that are not one positive number per target, or weights on round robin.
    #[error("weights: {0}")]
    Weights(String),
    /// A policy or weights on an agones route.
    #[error("policy: an agones route takes no policy or weights")]
    BalanceOnFleet,
}

/// A target of a route that does not resolve to an address.
#[derive(Debug, Error)]
#[error("target: {target:?} is not a reachable host:port ({source})")]
pub struct ResolveError {
    /// Its position in the route's list of targets.
    pub index: usize,
    /// The target.
    pub target: String,
    /// The resolver's answer.
    pub source: io::Error,
}

impl RouteSpec {
    /// Validates the text form: the name, the type, the syntax of each target. Nothing is
    /// resolved.
    ///
    /// # Errors
    /// The first field that is wrong.
    pub fn from_text(text: &RouteText) -> Result<Self, RouteTextError> {
        let name = parse_route_name(&text.fqdn).map_err(|e| RouteTextError::Name(e.to_string()))?;
        let mut spec = Self::with_target(name, RouteType::parse(&text.kind)?, &text.target)?;
        if text.policy.is_none() && text.weights.is_none() {
            return Ok(spec);
        }
        let RouteKind::Simple { targets, balance } = &mut spec.kind else {
            return Err(RouteTextError::BalanceOnFleet);
        };
        *balance = balance_of(text.policy.as_deref(), text.weights.clone(), targets.len())?;
        Ok(spec)
    }

    /// Builds one from a Redis hash entry: `field` is the name, `value` the target, in the
    /// hash of `kind`.
    ///
    /// # Errors
    /// As [`RouteSpec::from_text`].
    pub fn from_entry(kind: RouteType, field: &str, value: &str) -> Result<Self, RouteTextError> {
        let name = parse_route_name(field).map_err(|e| RouteTextError::Name(e.to_string()))?;
        Self::with_target(name, kind, &TargetText::One(value.to_owned()))
    }

    /// Checks `target` for a route of `kind` named `name`.
    ///
    /// # Errors
    /// As [`RouteSpec::from_text`].
    pub fn with_target(
        name: RouteName,
        kind: RouteType,
        target: &TargetText,
    ) -> Result<Self, RouteTextError> {
        let kind = match kind {
            RouteType::Simple => {
                // The one-string form may end in `;policy=...;weights=...`.
                let (first, suffixes) = match target {
                    TargetText::One(t) => match t.split_once(';') {
                        Some((first, rest)) => (Some(first), Some(rest)),
                        None => (Some(t.as_str()), None),
                    },
                    TargetText::Many(_) => (None, None),
                };
                let texts: Vec<&str> = match (target, first) {
                    (_, Some(t)) => t.split(',').collect(),
                    (TargetText::Many(list), _) => list.iter().map(String::as_str).collect(),
                    (TargetText::One(_), None) => Vec::new(),
                };
                // The same target twice is allowed here, as the API and Redis always took it
                // (the relay then gives it two turns); the configuration file refuses it.
                let mut targets: Vec<Target> = Vec::with_capacity(texts.len());
                for text in texts {
                    let text = text.trim();
                    if text.is_empty() || text.contains(',') {
                        return Err(RouteTextError::Target {
                            text: text.to_owned(),
                            reason: None,
                        });
                    }
                    let t =
                        Target::parse_reason(text, None).map_err(|why| RouteTextError::Target {
                            text: text.to_owned(),
                            reason: Some(why),
                        })?;
                    targets.push(t);
                }
                if targets.is_empty() {
                    return Err(RouteTextError::NoTargets);
                }
                let balance = match suffixes {
                    None => Balance::default(),
                    Some(rest) => {
                        let (mut policy, mut weights) = (None, None);
                        for part in rest.split(';') {
                            match part.trim().split_once('=') {
                                Some(("policy", p)) => policy = Some(p.trim()),
                                Some(("weights", w)) => {
                                    let parsed: Result<Vec<u32>, _> =
                                        w.split(',').map(|w| w.trim().parse::<u32>()).collect();
                                    weights = Some(parsed.map_err(|_| {
                                        RouteTextError::Weights(format!(
                                            "{w:?} is not a list of whole numbers"
                                        ))
                                    })?);
                                }
                                _ => {
                                    return Err(RouteTextError::Target {
                                        text: part.to_owned(),
                                        reason: Some(
                                            "after `;` a simple target takes only policy=... and weights=..."
                                                .to_owned(),
                                        ),
                                    })
                                }
                            }
                        }
                        balance_of(policy, weights, targets.len())?
                    }
                };
                RouteKind::Simple { targets, balance }
            }
            RouteType::Agones => match target {
                TargetText::One(fleet) if !fleet.trim().is_empty() => {
                    let fleet = fleet.trim();
                    check_kubernetes_name(fleet, true)
                        .map_err(|why| RouteTextError::Fleet(why.to_string()))?;
                    RouteKind::Agones {
                        fleet: fleet.to_owned(),
                    }
                }
                _ => return Err(RouteTextError::NoFleet),
            },
        };
        Ok(Self { name, kind })
    }

    /// `simple` or `agones`.
    #[must_use]
    pub fn route_type(&self) -> RouteType {
        match self.kind {
            RouteKind::Simple { .. } => RouteType::Simple,
            RouteKind::Agones { .. } => RouteType::Agones,
        }
    }

    /// The target as one string: `host:port[,host:port...]`, or the fleet (the value of the
    /// route's Redis hash entry).
    #[must_use]
    pub fn target_text(&self) -> String {
        match &self.kind {
            RouteKind::Simple { targets, balance } => {
                let mut text = targets
                    .iter()
                    .map(Target::to_string)
                    .collect::<Vec<_>>()
                    .join(",");
                text.push_str(&balance_suffix(balance));
                text
            }
            RouteKind::Agones { fleet } => fleet.clone(),
        }
    }

    /// The text form: one target as a string, several as a list.
    #[must_use]
    pub fn to_text(&self) -> RouteText {
        let (target, balance) = match &self.kind {
            RouteKind::Simple { targets, balance } if targets.len() > 1 => (
                TargetText::Many(targets.iter().map(Target::to_string).collect()),
                Some(balance),
            ),
            RouteKind::Simple { targets, balance } => {
                (TargetText::One(targets[0].to_string()), Some(balance))
            }
            RouteKind::Agones { fleet } => (TargetText::One(fleet.clone()), None),
        };
        let (policy, weights) = balance_fields(balance);
        RouteText {
            fqdn: self.name.to_string(),
            kind: self.route_type().as_str().to_owned(),
            target,
            policy,
            weights,
        }
    }

    /// The core's route, each host name resolved now (to its first address).
    ///
    /// # Errors
    /// Every target that does not resolve.
    pub fn resolve(&self) -> Result<Route, Vec<ResolveError>> {
        let target = match &self.kind {
            RouteKind::Simple { targets, .. } => {
                let mut backends = Vec::with_capacity(targets.len());
                let mut failures = Vec::new();
                for (index, t) in targets.iter().enumerate() {
                    match t.resolve() {
                        Ok(addrs) => backends.push(BackendAddr(addrs[0])),
                        Err(source) => failures.push(ResolveError {
                            index,
                            target: t.to_string(),
                            source,
                        }),
                    }
                }
                if !failures.is_empty() {
                    return Err(failures);
                }
                RouteTarget::Simple(backends)
            }
            RouteKind::Agones { fleet } => RouteTarget::Agones {
                fleet: Arc::from(fleet.as_str()),
            },
        };
        let balance = match &self.kind {
            RouteKind::Simple { balance, .. } => balance.clone(),
            RouteKind::Agones { .. } => Balance::default(),
        };
        Ok(Route {
            name: self.name.clone(),
            target,
            balance,
        })
    }
}

impl RouteText {
    /// The text form of a core route (targets as the addresses they resolved to).
    #[must_use]
    pub fn from_route(route: &Route) -> Self {
        let (kind, target) = match &route.target {
            RouteTarget::Simple(backends) => {
                let mut t: Vec<String> = backends.iter().map(|b| b.to_string()).collect();
                let target = if t.len() == 1 {
                    TargetText::One(t.remove(0))
                } else {
                    TargetText::Many(t)
                };
                (RouteType::Simple, target)
            }
            RouteTarget::Agones { fleet } => {
                (RouteType::Agones, TargetText::One(fleet.to_string()))
            }
        };
        let (policy, weights) = balance_fields(Some(&route.balance));
        Self {
            fqdn: route.name.to_string(),
            kind: kind.as_str().to_owned(),
            target,
            policy,
            weights,
        }
    }
}

/// The checked balance of a simple route with `count` targets: the policy named (or,
/// without one, weighted when weights are given), the weights one per target.
fn balance_of(
    policy: Option<&str>,
    weights: Option<Vec<u32>>,
    count: usize,
) -> Result<Balance, RouteTextError> {
    let policy = match policy {
        Some(p) => Policy::parse(p).ok_or_else(|| RouteTextError::Policy(p.to_owned()))?,
        None if weights.is_some() => Policy::Weighted,
        None => Policy::RoundRobin,
    };
    let weights = weights.unwrap_or_default();
    if !weights.is_empty() {
        if policy == Policy::RoundRobin {
            return Err(RouteTextError::Weights(
                "round_robin takes no weights (use policy weighted)".to_owned(),
            ));
        }
        if weights.len() != count || weights.contains(&0) {
            return Err(RouteTextError::Weights(format!(
                "{} weights for {count} targets: one weight of at least 1 per target",
                weights.len()
            )));
        }
    }
    Ok(Balance { policy, weights })
}

/// `;policy=...;weights=...` for a balance other than the default.
fn balance_suffix(balance: &Balance) -> String {
    let mut text = String::new();
    if balance.is_default() {
        return text;
    }
    text.push_str(";policy=");
    text.push_str(balance.policy.as_str());
    if !balance.weights.is_empty() {
        let w: Vec<String> = balance.weights.iter().map(u32::to_string).collect();
        text.push_str(";weights=");
        text.push_str(&w.join(","));
    }
    text
}

/// The JSON fields of a balance: both `None` for the default.
fn balance_fields(balance: Option<&Balance>) -> (Option<String>, Option<Vec<u32>>) {
    match balance {
        Some(b) if !b.is_default() => (
            Some(b.policy.as_str().to_owned()),
            (!b.weights.is_empty()).then(|| b.weights.clone()),
        ),
        _ => (None, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(json: &str) -> RouteText {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn every_accepted_form_parses() {
        for (json, joined) in [
            (
                r#"{"fqdn":"A.Test","type":"simple","target":"127.0.0.1:1"}"#,
                "127.0.0.1:1",
            ),
            (
                r#"{"fqdn":"a.test","type":"simple","target":"127.0.0.1:1, 127.0.0.1:2"}"#,
                "127.0.0.1:1,127.0.0.1:2",
            ),
            (
                r#"{"fqdn":"a.test","type":"simple","target":["127.0.0.1:1","[::1]:2"]}"#,
                "127.0.0.1:1,[::1]:2",
            ),
            (
                r#"{"fqdn":"*","type":"agones","target":" my-fleet "}"#,
                "my-fleet",
            ),
        ] {
            let spec = RouteSpec::from_text(&text(json)).unwrap_or_else(|e| panic!("{json}: {e}"));
            assert_eq!(spec.target_text(), joined, "{json}");
            let again = RouteSpec::from_text(&spec.to_text()).unwrap();
            assert_eq!(again, spec, "{json}: the text form round-trips");
        }
        let spec = RouteSpec::from_entry(RouteType::Simple, "*.W.test", "localhost:9").unwrap();
        assert_eq!(spec.name.to_string(), "*.w.test");
        assert_eq!(spec.route_type(), RouteType::Simple);
    }

    #[test]
    fn each_mistake_names_its_field() {
        for (json, message) in [
            (
                r#"{"fqdn":"a..test","type":"simple","target":"1.2.3.4:1"}"#,
                "fqdn: \"a..test\" is not a valid route name",
            ),
            (
                r#"{"fqdn":"a.test","type":"bogus","target":"1.2.3.4:1"}"#,
                "type: \"bogus\" is not a route type",
            ),
            (
                r#"{"fqdn":"a.test","type":"simple","target":"1.2.3.4"}"#,
                "target: \"1.2.3.4\" is not a host:port: the port is missing",
            ),
            (
                r#"{"fqdn":"a.test","type":"simple","target":"1.2.3.4:1,"}"#,
                "target: \"\" is not a host:port",
            ),
            (
                r#"{"fqdn":"a.test","type":"simple","target":[]}"#,
                "target: a simple route needs at least one host:port",
            ),
            (
                r#"{"fqdn":"a.test","type":"agones","target":""}"#,
                "target: an agones route needs a fleet name",
            ),
            (
                r#"{"fqdn":"a.test","type":"agones","target":["f"]}"#,
                "target: an agones route needs a fleet name",
            ),
            (
                r#"{"fqdn":"a.test","type":"agones","target":"Bad_Fleet"}"#,
                "target: not a fleet name",
            ),
        ] {
            let err = RouteSpec::from_text(&text(json)).expect_err(json);
            assert!(err.to_string().starts_with(message), "{json}: {err}");
        }
        assert!(serde_json::from_str::<RouteText>(
            r#"{"fqdn":"a","type":"simple","target":"x:1","ttl":3}"#
        )
        .is_err());
    }

    #[test]
    fn resolves_to_the_core_route_and_back() {
        let spec =
            RouteSpec::from_entry(RouteType::Simple, "a.test", "127.0.0.1:1,localhost:2").unwrap();
        let route = spec.resolve().unwrap();
        let RouteTarget::Simple(backends) = &route.target else {
            panic!("a simple route")
        };
        assert_eq!(backends[0].to_string(), "127.0.0.1:1");
        assert!(backends[1].0.ip().is_loopback());
        let json = serde_json::to_string(&RouteText::from_route(&route)).unwrap();
        assert!(
            json.starts_with(r#"{"fqdn":"a.test","type":"simple","target":["127.0.0.1:1","#),
            "{json}"
        );
        let fleet = RouteSpec::from_entry(RouteType::Agones, "b.test", "f").unwrap();
        assert_eq!(
            serde_json::to_string(&RouteText::from_route(&fleet.resolve().unwrap())).unwrap(),
            r#"{"fqdn":"b.test","type":"agones","target":"f"}"#
        );
    }

    #[test]
    fn policy_and_weights_round_trip_in_every_form() {
        let json = r#"{"fqdn":"a.test","type":"simple","target":["127.0.0.1:1","127.0.0.1:2"],"policy":"weighted","weights":[3,1]}"#;
        let spec = RouteSpec::from_text(&text(json)).unwrap();
        assert_eq!(
            spec.target_text(),
            "127.0.0.1:1,127.0.0.1:2;policy=weighted;weights=3,1"
        );
        assert_eq!(serde_json::to_string(&spec.to_text()).unwrap(), json);
        let entry =
            RouteSpec::from_entry(RouteType::Simple, "a.test", &spec.target_text()).unwrap();
        assert_eq!(entry, spec, "the Redis entry carries them");
        let route = spec.resolve().unwrap();
        assert_eq!(route.balance.weights, [3, 1]);
        assert_eq!(
            serde_json::to_string(&RouteText::from_route(&route)).unwrap(),
            json
        );
        // Weights alone mean weighted; a policy alone has no weights.
        let w = text(
            r#"{"fqdn":"a.test","type":"simple","target":"127.0.0.1:1,127.0.0.1:2","weights":[1,2]}"#,
        );
        let RouteKind::Simple { balance, .. } = RouteSpec::from_text(&w).unwrap().kind else {
            panic!("simple")
        };
        assert_eq!(balance.policy, Policy::Weighted);
        let h = RouteSpec::from_entry(
            RouteType::Simple,
            "a.test",
            "127.0.0.1:1;policy=client_ip_hash",
        )
        .unwrap();
        assert_eq!(h.to_text().policy.as_deref(), Some("client_ip_hash"));
        assert_eq!(h.to_text().weights, None);
        // Without them, the text is the original project's.
        let plain = RouteSpec::from_entry(RouteType::Simple, "a.test", "127.0.0.1:1").unwrap();
        assert_eq!(
            serde_json::to_string(&plain.to_text()).unwrap(),
            r#"{"fqdn":"a.test","type":"simple","target":"127.0.0.1:1"}"#
        );
        for (bad, message) in [
            (
                r#"{"fqdn":"a.test","type":"simple","target":"127.0.0.1:1","policy":"random"}"#,
                "policy: \"random\" is not a policy",
            ),
            (
                r#"{"fqdn":"a.test","type":"simple","target":"127.0.0.1:1","weights":[1,2]}"#,
                "weights: 2 weights for 1 targets",
            ),
            (
                r#"{"fqdn":"a.test","type":"simple","target":"127.0.0.1:1","weights":[0]}"#,
                "weights: 1 weights for 1 targets",
            ),
            (
                r#"{"fqdn":"a.test","type":"simple","target":"127.0.0.1:1","policy":"round_robin","weights":[2]}"#,
                "weights: round_robin takes no weights",
            ),
            (
                r#"{"fqdn":"a.test","type":"agones","target":"f","policy":"weighted"}"#,
                "policy: an agones route",
            ),
            (
                r#"{"fqdn":"a.test","type":"simple","target":"127.0.0.1:1;bogus=1"}"#,
                "target: \"bogus=1\"",
            ),
        ] {
            let err = RouteSpec::from_text(&text(bad)).expect_err(bad);
            assert!(err.to_string().starts_with(message), "{bad}: {err}");
        }
    }
}
