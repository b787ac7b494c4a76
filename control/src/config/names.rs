//! Route names (exact, `*.suffix` wildcard, `*` default), DNS name rules (RFC 1035 §2.3.4,
//! with `_` allowed as in service names), and Kubernetes object names for fleets
//! (RFC 1123 labels, as Kubernetes validates them).

use std::fmt;
use std::str::FromStr;

use super::error::InvalidValue;

/// The name a route answers to, normalised: ASCII lower case, without a trailing dot.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RouteName {
    /// Exactly this name (`game.example.com`).
    Exact(String),
    /// Any name with one or more labels in front of this suffix: `*.example.com` is stored as
    /// `Wildcard("example.com")` and matches `a.example.com` and `a.b.example.com`, not
    /// `example.com`.
    Wildcard(String),
    /// `*`: the route for names no other route matches (and for clients that send no SNI).
    Default,
}

impl RouteName {
    /// Parses and normalises a route name as written in the configuration or the REST API:
    /// case-insensitive, one trailing dot ignored, labels of 1–63 characters from
    /// `[a-z0-9-_]` not starting or ending with `-`, at most 253 characters in all; `*` alone,
    /// or as the whole first label.
    ///
    /// # Errors
    /// [`InvalidValue`] quoting the text and saying which rule it breaks.
    pub fn parse(text: &str) -> Result<Self, InvalidValue> {
        let lower = text.to_ascii_lowercase();
        let name = lower.strip_suffix('.').unwrap_or(&lower);
        if name == "*" {
            return Ok(Self::Default);
        }
        if let Some(suffix) = name.strip_prefix("*.") {
            if suffix.contains('*') {
                return Err(InvalidValue::new(format!(
                    "{text:?} is not a valid route name: only the first label may be `*`, as in `*.example.com`"
                )));
            }
            check_dns_name(suffix).map_err(|why| {
                InvalidValue::new(format!("{text:?} is not a valid route name: {why}"))
            })?;
            return Ok(Self::Wildcard(suffix.to_owned()));
        }
        if name.contains('*') {
            return Err(InvalidValue::new(format!(
                "{text:?} is not a valid route name: a wildcard must be the whole first label \
                 (`*.example.com`), or the whole name (`*`, the default route)"
            )));
        }
        check_dns_name(name).map_err(|why| {
            InvalidValue::new(format!("{text:?} is not a valid route name: {why}"))
        })?;
        Ok(Self::Exact(name.to_owned()))
    }

    /// Whether this route answers to `name`, a server name as a client sent it (compared
    /// without regard to ASCII case or one trailing dot). The default route matches every
    /// name; the relay still prefers exact routes, then the longest wildcard suffix.
    #[must_use]
    pub fn matches(&self, name: &str) -> bool {
        let name = name.strip_suffix('.').unwrap_or(name);
        match self {
            Self::Exact(exact) => name.eq_ignore_ascii_case(exact),
            Self::Wildcard(suffix) => match name.len().checked_sub(suffix.len() + 1) {
                Some(cut) if cut > 0 && name.is_char_boundary(cut) => {
                    let (head, tail) = name.split_at(cut);
                    !head.is_empty()
                        && tail.starts_with('.')
                        && tail[1..].eq_ignore_ascii_case(suffix)
                }
                _ => false,
            },
            Self::Default => true,
        }
    }
}

impl fmt::Display for RouteName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(name) => f.write_str(name),
            Self::Wildcard(suffix) => write!(f, "*.{suffix}"),
            Self::Default => f.write_str("*"),
        }
    }
}

impl FromStr for RouteName {
    type Err = InvalidValue;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Checks a lower-case DNS name without trailing dot; the error says what is wrong.
pub(crate) fn check_dns_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the name is empty".to_owned());
    }
    if !name.is_ascii() {
        return Err(
            "it contains non-ASCII characters (write internationalised names in their xn-- form)"
                .to_owned(),
        );
    }
    if name.len() > 253 {
        return Err(format!(
            "it is {} characters long (at most 253)",
            name.len()
        ));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("it has an empty label (two dots in a row, or a leading dot)".to_owned());
        }
        if label.len() > 63 {
            return Err(format!(
                "the label {label:?} is {} characters long (at most 63)",
                label.len()
            ));
        }
        if let Some(bad) = label
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_'))
        {
            return Err(format!(
                "the label {label:?} contains {bad:?} (letters, digits, `-` and `_` only)"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("the label {label:?} starts or ends with `-`"));
        }
    }
    Ok(())
}

/// Checks a Kubernetes object name (a DNS subdomain as Kubernetes defines it: at most 253
/// characters, dot-separated parts of `[a-z0-9-]` that start and end with a letter or digit).
/// With `allow_dots` (fleets) the limit is 253 characters; without (namespaces: one label) 63.
pub(crate) fn check_kubernetes_name(name: &str, allow_dots: bool) -> Result<(), String> {
    let max = if allow_dots { 253 } else { 63 };
    if name.is_empty() {
        return Err("the name is empty".to_owned());
    }
    if name.len() > max {
        return Err(format!("{name:?} is longer than {max} characters"));
    }
    for part in name.split('.') {
        let ok = !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !part.starts_with('-')
            && !part.ends_with('-');
        if !ok || (!allow_dots && name.contains('.')) {
            let what = if allow_dots {
                "lower-case letters, digits, `-` and `.`, starting and ending with a letter or digit"
            } else {
                "lower-case letters, digits and `-`, starting and ending with a letter or digit"
            };
            return Err(format!("{name:?} is not a valid Kubernetes name ({what})"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_normalises() {
        assert_eq!(
            RouteName::parse("Game.Example.COM.").unwrap(),
            RouteName::Exact("game.example.com".into())
        );
        assert_eq!(
            RouteName::parse("*.Example.com").unwrap(),
            RouteName::Wildcard("example.com".into())
        );
        assert_eq!(RouteName::parse("*").unwrap(), RouteName::Default);
        assert_eq!(
            RouteName::parse("_srv.my-host.test").unwrap(),
            RouteName::Exact("_srv.my-host.test".into())
        );
        assert_eq!(
            RouteName::parse("*.wild.test").unwrap().to_string(),
            "*.wild.test"
        );
    }

    #[test]
    fn rejects_bad_names() {
        let long_label = "a".repeat(64);
        let long_name = vec!["a".repeat(60); 5].join(".");
        for (bad, why) in [
            ("", "empty"),
            ("a..b", "empty label"),
            (".a", "empty label"),
            ("a.b..", "empty label"),
            ("-a.test", "`-`"),
            ("a-.test", "`-`"),
            ("a b.test", "' '"),
            ("a.*.com", "whole first label"),
            ("*example.com", "whole first label"),
            ("**.example.com", "whole first label"),
            ("*.*.com", "only the first label"),
            ("bücher.test", "xn--"),
            (long_label.as_str(), "at most 63"),
            (long_name.as_str(), "at most 253"),
        ] {
            let err = RouteName::parse(bad).expect_err(bad);
            assert!(err.message().contains(why), "{bad:?}: {err}");
        }
        // `*.` is `*` with a trailing dot: the default route.
        assert_eq!(RouteName::parse("*.").unwrap(), RouteName::Default);
    }

    #[test]
    fn wildcard_matches_one_or_more_labels() {
        let w = RouteName::parse("*.example.com").unwrap();
        assert!(w.matches("a.example.com"));
        assert!(w.matches("A.B.Example.Com."));
        assert!(!w.matches("example.com"));
        assert!(!w.matches("aexample.com"));
        assert!(!w.matches(".example.com"));
        assert!(!w.matches("a.example.org"));
        let e = RouteName::parse("a.test").unwrap();
        assert!(e.matches("A.TEST."));
        assert!(!e.matches("b.a.test"));
        assert!(RouteName::Default.matches("anything"));
    }

    #[test]
    fn kubernetes_names() {
        assert!(check_kubernetes_name("my-fleet", true).is_ok());
        assert!(check_kubernetes_name("fleet.v2", true).is_ok());
        assert!(check_kubernetes_name("default", false).is_ok());
        assert!(check_kubernetes_name("a.b", false).is_err());
        assert!(check_kubernetes_name("My-Fleet", true).is_err());
        assert!(check_kubernetes_name("-x", true).is_err());
        assert!(check_kubernetes_name("", true).is_err());
    }
}
