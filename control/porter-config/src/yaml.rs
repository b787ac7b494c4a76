//! Positions on serde_yaml: the one place that knows how. [`parse`] turns YAML text into a
//! document tree ([`Node`]) in which every scalar carries its line and column ([`Span`]);
//! nothing else in the crate touches serde_yaml or its error texts.
//!
//! How:
//! serde_yaml 0.9 exposes positions only inside its errors: an error raised by a visitor
//! gets the position of the event being visited (`fix_mark`). So the visitor here stores
//! each scalar it is shown in a slot and then *fails* with a marker message; the seed
//! takes the value back out of the slot and the position out of the error, and carries
//! on. A scalar is a single event that serde_yaml has already consumed when the visitor
//! runs, so failing there leaves the event stream where it would be after success.
//! Sequences and mappings are never failed on purpose (serde_yaml would then skip their
//! end event), so the stream stays in step. Only real errors (syntax, tags, recursion
//! limit) end the walk.
//!
//! serde_yaml does not print a position at line 1, column 1, so the text is parsed with
//! one newline in front of it and every line number is moved back by one.
//!
//! With every scalar located, the checks in `check.rs` are plain Rust over this tree: they
//! report every problem at once, each with its key path and position, which serde's derive
//! (stopping at the first error) cannot.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// A place in the YAML text: 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Span {
    pub(crate) line: usize,
    pub(crate) column: usize,
}

/// A YAML value, with the position of its scalar or of its first entry.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub(crate) value: Value,
    /// Where a scalar is; for a sequence or mapping, where its first entry is (none when
    /// it is empty).
    pub(crate) span: Option<Span>,
}

/// The value of a [`Node`]. Keys of a mapping are nodes too (YAML allows any key).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    Bool(bool),
    /// Every integer serde_yaml reads fits, except `u128` values above `i128::MAX`, which are
    /// clamped (no setting takes numbers that large anyway).
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl Value {
    /// A short description for messages: `the string "abc"`, `a mapping`.
    pub(crate) fn describe(&self) -> String {
        match self {
            Self::Null => "nothing (null)".to_owned(),
            Self::Bool(b) => format!("the boolean {b}"),
            Self::Int(i) => format!("the number {i}"),
            Self::Float(x) => format!("the number {x}"),
            Self::Str(s) => format!("the string {s:?}"),
            Self::Seq(_) => "a list".to_owned(),
            Self::Map(_) => "a mapping".to_owned(),
        }
    }
}

/// A problem that stops the reading of the file: not YAML, several documents, tags.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub(crate) struct Fatal {
    pub(crate) message: String,
    pub(crate) span: Option<Span>,
}

/// Parses one YAML document. An empty file (or one of only comments) is `Null`.
pub(crate) fn parse(text: &str) -> Result<Node, Fatal> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let shifted = format!("\n{text}");
    let mut documents = serde_yaml::Deserializer::from_str(&shifted);
    let Some(first) = documents.next() else {
        return Ok(Node {
            value: Value::Null,
            span: None,
        });
    };
    let node = NodeSeed.deserialize(first).map_err(|e| fatal(&e))?;
    if documents.next().is_some() {
        return Err(Fatal {
            message: "the file holds more than one YAML document (`---`); Porter reads exactly one"
                .to_owned(),
            span: None,
        });
    }
    Ok(node)
}

/// Turns a serde_yaml error that ends the walk into a [`Fatal`] with un-shifted positions.
fn fatal(error: &serde_yaml::Error) -> Fatal {
    let span = error.location().map(|l| Span {
        line: l.line().saturating_sub(1).max(1),
        column: l.column(),
    });
    let text = error.to_string();
    // The position of the problem itself becomes the span; positions of context
    // ("while parsing a block mapping at line 3 column 1") stay in the text.
    let text = if span.is_some() {
        strip_first_position(&text)
    } else {
        text
    };
    let mut message = unshift_lines(&text);
    if message.contains("unknown anchor") || message.contains("alias") {
        message.push_str(
            " (a value starting with `*` must be quoted: fqdn: \"*.example.com\", fqdn: \"*\")",
        );
    }
    Fatal { message, span }
}

/// Removes the first ` at line N column M` from a serde_yaml message.
fn strip_first_position(text: &str) -> String {
    const AT: &str = " at line ";
    let Some(at) = text.find(AT) else {
        return text.to_owned();
    };
    let rest = &text[at + AT.len()..];
    let line_digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let Some(after_column) = rest[line_digits..].strip_prefix(" column ") else {
        return text.to_owned();
    };
    let column_digits = after_column.bytes().take_while(u8::is_ascii_digit).count();
    if line_digits == 0 || column_digits == 0 {
        return text.to_owned();
    }
    format!("{}{}", &text[..at], &after_column[column_digits..])
}

/// Rewrites every `line N` in a serde_yaml message to `line N-1` (see the module docs).
fn unshift_lines(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("line ") {
        let (before, after) = rest.split_at(at + "line ".len());
        out.push_str(before);
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        match after[..digits].parse::<usize>() {
            Ok(n) => out.push_str(&n.saturating_sub(1).max(1).to_string()),
            Err(_) => out.push_str(&after[..digits]),
        }
        rest = &after[digits..];
    }
    out.push_str(rest);
    out
}

/// The message the visitor fails with after storing a scalar; never shown to anyone.
const SPAN_MARK: &str = "\u{1f}porter-config-span\u{1f}";

/// Reads the position serde_yaml appended to a [`SPAN_MARK`] error:
/// `path: <mark> at line L column C`.
fn span_from_mark_error(text: &str) -> Option<Span> {
    let (_, after) = text.split_once(SPAN_MARK)?;
    let rest = after.strip_prefix(" at line ")?;
    let (line, rest) = rest.split_once(" column ")?;
    let line: usize = line.parse().ok()?;
    let column: usize = rest.trim_end().parse().ok()?;
    Some(Span {
        line: line.checked_sub(1)?.max(1),
        column,
    })
}

/// Reads any YAML value into a [`Node`].
struct NodeSeed;

impl<'de> DeserializeSeed<'de> for NodeSeed {
    type Value = Node;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Node, D::Error> {
        let mut scalar = None;
        match deserializer.deserialize_any(NodeVisitor {
            scalar: &mut scalar,
        }) {
            Ok(node) => Ok(node),
            Err(error) => match scalar {
                // The visitor stored a scalar and failed on purpose to learn its position.
                Some(value) => Ok(Node {
                    value,
                    span: span_from_mark_error(&error.to_string()),
                }),
                None => Err(error),
            },
        }
    }
}

struct NodeVisitor<'a> {
    scalar: &'a mut Option<Value>,
}

impl NodeVisitor<'_> {
    fn scalar<E: de::Error>(self, value: Value) -> Result<Node, E> {
        *self.scalar = Some(value);
        Err(E::custom(SPAN_MARK))
    }
}

impl<'de> Visitor<'de> for NodeVisitor<'_> {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node, E> {
        self.scalar(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
        self.scalar(Value::Int(v.into()))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Node, E> {
        self.scalar(Value::Int(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
        self.scalar(Value::Int(v.into()))
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Node, E> {
        self.scalar(Value::Int(i128::try_from(v).unwrap_or(i128::MAX)))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
        self.scalar(Value::Float(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
        self.scalar(Value::Str(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Node, E> {
        self.scalar(Value::Str(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        self.scalar(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Node, E> {
        self.scalar(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Node, D::Error> {
        NodeSeed.deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(NodeSeed)? {
            items.push(item);
        }
        Ok(Node {
            span: items.first().and_then(|n| n.span),
            value: Value::Seq(items),
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key_seed(NodeSeed)? {
            let value = map.next_value_seed(NodeSeed)?;
            entries.push((key, value));
        }
        Ok(Node {
            span: entries.first().and_then(|(k, _)| k.span),
            value: Value::Map(entries),
        })
    }

    fn visit_enum<A: de::EnumAccess<'de>>(self, _data: A) -> Result<Node, A::Error> {
        // serde_yaml shows a value with a `!tag` as an enum; not part of Porter's format.
        Err(de::Error::custom(
            "YAML tags (`!name value`) are not supported in Porter's configuration",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(line: usize, column: usize) -> Option<Span> {
        Some(Span { line, column })
    }

    fn map(node: &Node) -> &[(Node, Node)] {
        match &node.value {
            Value::Map(entries) => entries,
            other => panic!("expected a mapping, got {other:?}"),
        }
    }

    #[test]
    fn scalars_carry_their_positions() {
        let node = parse("a: 1\nb:\n  c: hello\n  d: [x, 2.5, true, ~]\n").unwrap();
        let top = map(&node);
        assert_eq!(top[0].0.value, Value::Str("a".into()));
        assert_eq!(top[0].0.span, span(1, 1));
        assert_eq!(top[0].1.value, Value::Int(1));
        assert_eq!(top[0].1.span, span(1, 4));
        let b = map(&top[1].1);
        assert_eq!(b[0].1.value, Value::Str("hello".into()));
        assert_eq!(b[0].1.span, span(3, 6));
        let Value::Seq(items) = &b[1].1.value else {
            panic!("expected a list")
        };
        assert_eq!(items[0].span, span(4, 7));
        assert_eq!(items[1].value, Value::Float(2.5));
        assert_eq!(items[2].value, Value::Bool(true));
        assert_eq!(items[3].value, Value::Null);
        assert_eq!(items[3].span, span(4, 21));
    }

    #[test]
    fn flow_mappings_and_aliases() {
        let node = parse("x: &p {port: 7}\ny: *p\n").unwrap();
        let top = map(&node);
        let y = map(&top[1].1);
        assert_eq!(y[0].1.value, Value::Int(7));
        assert_eq!(y[0].1.span, span(1, 14));
    }

    #[test]
    fn empty_and_comment_only_files_are_null() {
        assert_eq!(parse("").unwrap().value, Value::Null);
        assert_eq!(parse("# nothing\n\n").unwrap().value, Value::Null);
    }

    #[test]
    fn syntax_errors_are_fatal_with_position() {
        let err = parse("a: 1\nb: [1, 2\n").unwrap_err();
        assert!(err.span.is_some(), "{err:?}");
        assert!(!err.message.contains("line 0"), "{err:?}");
        let err = parse("a: 1\n---\nb: 2\n").unwrap_err();
        assert!(
            err.message.contains("more than one YAML document"),
            "{err:?}"
        );
        let err = parse("a: !secret x\n").unwrap_err();
        assert!(err.message.contains("tags"), "{err:?}");
        assert_eq!(err.span, span(1, 4));
        let err = parse("fqdn: *.example.com\n").unwrap_err();
        assert!(err.message.contains("must be quoted"), "{err:?}");
    }

    #[test]
    fn position_parser_matches_serde_yaml_format() {
        assert_eq!(
            span_from_mark_error(&format!("a.b: {SPAN_MARK} at line 3 column 7")),
            span(2, 7)
        );
        assert_eq!(span_from_mark_error(SPAN_MARK), None);
        assert_eq!(
            unshift_lines("x at line 5 column 2, y at line 3 column 1"),
            "x at line 4 column 2, y at line 2 column 1"
        );
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let text = format!("{}1{}", "[".repeat(500), "]".repeat(500));
        assert!(parse(&text).is_err());
    }
}
