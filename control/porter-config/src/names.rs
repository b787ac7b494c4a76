//! Route names (exact, `*.suffix` wildcard, `*` default), DNS name rules (RFC 1035 §2.3.4,
//! with `_` allowed as in service names), and Kubernetes object names for fleets
//! (RFC 1123 labels, as Kubernetes validates them).

use crate::error::InvalidValue;

pub use porter_core::RouteName;

/// Parses a route name as written in the configuration or the REST API: `name`,
/// `*.suffix` or `*`, case-insensitive, one trailing dot ignored. The value is the core's
/// [`RouteName`], so the relay applies exactly the rules checked here; this function adds
/// an explanation of which rule a bad name breaks (labels of 1–63 characters from
/// `[a-z0-9-_]` not starting or ending with `-`, at most 253 characters in all, `*` only
/// alone or as the whole first label).
///
/// # Errors
/// [`InvalidValue`] quoting the text and saying which rule it breaks.
pub fn parse_route_name(text: &str) -> Result<RouteName, InvalidValue> {
    let invalid =
        |why: &str| InvalidValue::new(format!("{text:?} is not a valid route name: {why}"));
    let lower = text.to_ascii_lowercase();
    let name = lower.strip_suffix('.').unwrap_or(&lower);
    if name == "*" {
        return Ok(RouteName::DEFAULT);
    }
    if let Some(suffix) = name.strip_prefix("*.") {
        if suffix.contains('*') {
            return Err(invalid(
                "only the first label may be `*`, as in `*.example.com`",
            ));
        }
        check_dns_name(suffix).map_err(|why| invalid(&why))?;
    } else if name.contains('*') {
        return Err(invalid(
            "a wildcard must be the whole first label (`*.example.com`), or the whole name \
             (`*`, the default route)",
        ));
    } else {
        check_dns_name(name).map_err(|why| invalid(&why))?;
    }
    RouteName::parse(text).map_err(|e| invalid(&e.to_string()))
}

/// Checks a lower-case DNS name without trailing dot; the error says what is wrong.
///
/// The rules are the core's ([`porter_core::client_hello::normalize_host_name`], which the
/// relay applies to every SNI): it alone decides. When it refuses a name, [`explain`] finds
/// the rule that is broken, for the message.
pub(crate) fn check_dns_name(name: &str) -> Result<(), String> {
    let accepted = !name.ends_with('.')
        && porter_core::client_hello::normalize_host_name(name.as_bytes()).is_some();
    if accepted {
        Ok(())
    } else {
        Err(explain(name))
    }
}

/// Why the core refuses `name`: the first rule it breaks.
fn explain(name: &str) -> String {
    match first_broken_rule(name) {
        Err(why) => why,
        // Only the rule against a numeric last label is left: `1.2.3.4` would be an IPv4
        // literal, which a server name may not be (RFC 6066 §3).
        Ok(()) => "its last label is all digits (an IP address is not a name)".to_owned(),
    }
}

fn first_broken_rule(name: &str) -> Result<(), String> {
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
///
/// # Errors
/// [`InvalidValue`] saying which rule the name breaks.
pub fn check_kubernetes_name(name: &str, allow_dots: bool) -> Result<(), InvalidValue> {
    let max = if allow_dots { 253 } else { 63 };
    if name.is_empty() {
        return Err(InvalidValue::new("the name is empty"));
    }
    if name.len() > max {
        return Err(InvalidValue::new(format!(
            "{name:?} is longer than {max} characters"
        )));
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
            return Err(InvalidValue::new(format!(
                "{name:?} is not a valid Kubernetes name ({what})"
            )));
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
            parse_route_name("Game.Example.COM.").unwrap(),
            RouteName::parse("game.example.com").unwrap()
        );
        assert_eq!(
            parse_route_name("*.Example.com").unwrap(),
            RouteName::parse("*.example.com").unwrap()
        );
        assert_eq!(parse_route_name("*").unwrap(), RouteName::DEFAULT);
        assert_eq!(
            parse_route_name("_srv.my-host.test").unwrap(),
            RouteName::parse("_srv.my-host.test").unwrap()
        );
        assert_eq!(
            parse_route_name("*.wild.test").unwrap().to_string(),
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
            let err = parse_route_name(bad).expect_err(bad);
            assert!(err.message().contains(why), "{bad:?}: {err}");
        }
        // The core decides; a rule only it has still gets its own explanation.
        let err = parse_route_name("game.123").expect_err("numeric last label");
        assert!(err.message().contains("all digits"), "{err}");
        assert!(check_dns_name("game.example.com").is_ok());
        // `*.` is `*` with a trailing dot: the default route.
        assert_eq!(parse_route_name("*.").unwrap(), RouteName::DEFAULT);
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
