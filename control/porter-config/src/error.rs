//! What went wrong in a configuration file: every problem, each with where it is.

use std::fmt;

use crate::yaml::Span;

/// One problem found in a configuration file.
///
/// Displays as `line:column: key.path: message`, leaving out what is unknown (a missing
/// file has neither a key path nor a line).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Problem {
    path: String,
    span: Option<Span>,
    message: String,
}

impl Problem {
    pub(crate) fn new(
        path: impl Into<String>,
        span: Option<Span>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            path: path.into(),
            span,
            message: message.into(),
        }
    }

    /// The key path, such as `routes[1].target`; empty when the problem is about the whole
    /// file (unreadable, not YAML).
    #[must_use]
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The 1-based line of the offending key or value, when known.
    #[must_use]
    pub fn line(&self) -> Option<usize> {
        self.span.map(|s| s.line)
    }

    /// The 1-based column of the offending key or value, when known.
    #[must_use]
    pub fn column(&self) -> Option<usize> {
        self.span.map(|s| s.column)
    }

    /// What is wrong, without the location.
    #[must_use]
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(span) = self.span {
            write!(f, "{}:{}: ", span.line, span.column)?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in one configuration file (never empty).
///
/// Displays one problem per line, each prefixed with the file's name:
/// `porter.yaml:7:45: routes[1].target: "10.0.0.5" is not host:port ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    origin: String,
    problems: Vec<Problem>,
}

impl ConfigErrors {
    /// Wraps problems found in `origin`; sorts them by position in the file, those without a
    /// position last, keeping the order in which they were found otherwise.
    pub(crate) fn new(origin: &str, mut problems: Vec<Problem>) -> Self {
        debug_assert!(!problems.is_empty(), "ConfigErrors without a problem");
        problems.sort_by_key(|p| {
            p.span
                .map_or((usize::MAX, usize::MAX), |s| (s.line, s.column))
        });
        Self {
            origin: origin.to_owned(),
            problems,
        }
    }

    /// The name of the file (or other source) the problems were found in.
    #[must_use]
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The problems, in file order.
    #[must_use]
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    /// How many problems there are (at least one).
    #[must_use]
    pub fn len(&self) -> usize {
        self.problems.len()
    }

    /// Always false: there is at least one problem. Present for API symmetry with `len`.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.problems.is_empty()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            if problem.span.is_some() {
                write!(f, "{}:{problem}", self.origin)?;
            } else {
                write!(f, "{}: {problem}", self.origin)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A single value that does not parse: a route name, a target, a duration, a byte size.
///
/// Returned by the parsers that the control plane shares with the configuration file
/// (for instance when a route arrives through the REST API).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(String);

impl InvalidValue {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }

    /// What is wrong with the value.
    #[must_use]
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl From<InvalidValue> for String {
    fn from(value: InvalidValue) -> Self {
        value.0
    }
}
