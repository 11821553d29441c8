//! YAML → `serde_json::Value` with a location for every node.
//!
//! One pass over yaml-rust2's event stream builds both the value tree that serde deserializes and an
//! index from each node's path (`routes[0].upstream.provider`, the same spelling serde_path_to_error
//! uses) to the line and column where it starts. That is what lets *validation* errors — not only syntax
//! errors — point at `file:line:col`.
//!
//! Scalars follow the YAML 1.2 core schema: plain `null`/`~`/empty, `true`/`false`, integers and floats
//! are typed; anything quoted stays a string.
//!
//! Config is input the process must survive (pushed, edited, half-written), so the tree is bounded:
//! anchors and aliases may copy at most [`MAX_ALIAS_NODES`] nodes (a 1.5 KB "billion laughs" file otherwise
//! expands without end) and nesting stops at [`MAX_DEPTH`] levels (the builder, serde and `Drop`
//! all recurse). Either limit is an ordinary error at the offending node.

use serde_json::{Map, Number, Value};
use std::collections::HashMap;
use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// Most nodes that anchors and aliases may copy in one file: far beyond any real config's reuse (a
/// filter chain shared by a few routes is tens of nodes), far below what hurts.
pub const MAX_ALIAS_NODES: usize = 100_000;

/// Deepest nesting of sequences and mappings in one file (real configs nest about 6 levels).
pub const MAX_DEPTH: usize = 64;

/// A 1-based line and column in a source file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

impl Pos {
    fn from_marker(m: &Marker) -> Self {
        Pos {
            line: m.line().max(1),
            col: m.col() + 1,
        }
    }
}

/// Where each node of one file starts; keys of mappings are recorded as `path#key`.
#[derive(Debug, Default, Clone)]
pub struct LocationIndex {
    nodes: HashMap<String, Pos>,
}

impl LocationIndex {
    /// Position of the node at `path`, falling back to its nearest recorded ancestor.
    pub fn find(&self, path: &str) -> Option<Pos> {
        let mut p = path;
        loop {
            if let Some(pos) = self.nodes.get(p) {
                return Some(*pos);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }

    /// Position of the exact node at `path`, if it exists in this file.
    pub fn exact(&self, path: &str) -> Option<Pos> {
        self.nodes.get(path).copied()
    }

    /// Position of the key `key` inside the mapping at `path`.
    pub fn key(&self, path: &str, key: &str) -> Option<Pos> {
        self.nodes.get(&format!("{path}#{key}")).copied()
    }
}

/// A YAML syntax or structure error with its position; displays as its message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
pub struct SyntaxError {
    pub pos: Pos,
    pub error: YamlError,
}

/// What is wrong with a YAML file (syntax, or a structure the config reader refuses).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum YamlError {
    /// yaml-rust2's own description.
    #[error("invalid YAML: {0}")]
    Invalid(String),
    #[error("unknown YAML alias")]
    UnknownAlias,
    #[error(
        "YAML anchors and aliases copy more than {} nodes (an alias bomb?)",
        MAX_ALIAS_NODES
    )]
    AliasBomb,
    #[error("YAML nesting is deeper than {} levels", MAX_DEPTH)]
    TooDeep,
    /// An event the builder does not expect where it is (debug rendering of the event).
    #[error("unexpected YAML event {0}")]
    UnexpectedEvent(String),
    #[error("mapping keys must be plain strings")]
    KeyNotString,
    #[error("duplicate key `{0}`")]
    DuplicateKey(String),
}

/// Parses one YAML document into a JSON value and its location index.
pub fn parse(text: &str) -> Result<(Value, LocationIndex), SyntaxError> {
    let mut b = Builder {
        parser: Parser::new_from_str(text),
        index: LocationIndex::default(),
        anchors: HashMap::new(),
        alias_nodes: 0,
        depth: 0,
    };
    loop {
        let (ev, mark) = b.next()?;
        match ev {
            Event::StreamStart | Event::DocumentStart => continue,
            Event::StreamEnd => return Ok((Value::Null, b.index)),
            ev => {
                let (v, _) = b.node(ev, mark, String::new())?;
                return Ok((v, b.index));
            }
        }
    }
}

struct Builder<'a> {
    parser: Parser<std::str::Chars<'a>>,
    index: LocationIndex,
    /// Each anchored node's value and how many nodes it holds (itself included).
    anchors: HashMap<usize, (Value, usize)>,
    /// Nodes added by expanding aliases so far; bounded by `MAX_ALIAS_NODES`.
    alias_nodes: usize,
    /// Sequences and mappings currently open; bounded by `MAX_DEPTH`.
    depth: usize,
}

impl Builder<'_> {
    fn next(&mut self) -> Result<(Event, Marker), SyntaxError> {
        self.parser.next_token().map_err(|e| SyntaxError {
            pos: Pos::from_marker(e.marker()),
            error: YamlError::Invalid(e.info().to_string()),
        })
    }

    /// Builds the node that `ev` starts; returns its value and how many nodes it holds.
    fn node(
        &mut self,
        ev: Event,
        mark: Marker,
        path: String,
    ) -> Result<(Value, usize), SyntaxError> {
        let at = |error: YamlError| SyntaxError {
            pos: Pos::from_marker(&mark),
            error,
        };
        self.index
            .nodes
            .insert(path.clone(), Pos::from_marker(&mark));
        let (value, count, anchor) = match ev {
            Event::Scalar(s, style, anchor, _) => (scalar(s, style), 1, anchor),
            Event::Alias(id) => {
                let Some(&(_, count)) = self.anchors.get(&id) else {
                    return Err(at(YamlError::UnknownAlias));
                };
                // Counted before cloning: the clone is what a bomb multiplies.
                self.copied(count).map_err(at)?;
                let v = self.anchors.get(&id).map(|(v, _)| v.clone());
                (v.unwrap_or_default(), count, 0)
            }
            Event::SequenceStart(..) | Event::MappingStart(..) if self.depth >= MAX_DEPTH => {
                return Err(at(YamlError::TooDeep));
            }
            Event::SequenceStart(anchor, _) => {
                self.depth += 1;
                let (v, n) = self.sequence(&path)?;
                self.depth -= 1;
                (v, n, anchor)
            }
            Event::MappingStart(anchor, _) => {
                self.depth += 1;
                let (v, n) = self.mapping(&path, &mark)?;
                self.depth -= 1;
                (v, n, anchor)
            }
            other => return Err(at(YamlError::UnexpectedEvent(format!("{other:?}")))),
        };
        if anchor > 0 {
            // Keeping the anchored value is a copy too (nested anchors would multiply it).
            self.copied(count).map_err(at)?;
            self.anchors.insert(anchor, (value.clone(), count));
        }
        Ok((value, count))
    }

    /// Charges `nodes` copied for an anchor or an alias against `MAX_ALIAS_NODES`.
    fn copied(&mut self, nodes: usize) -> Result<(), YamlError> {
        self.alias_nodes = self.alias_nodes.saturating_add(nodes);
        if self.alias_nodes > MAX_ALIAS_NODES {
            return Err(YamlError::AliasBomb);
        }
        Ok(())
    }

    fn sequence(&mut self, path: &str) -> Result<(Value, usize), SyntaxError> {
        let mut items = Vec::new();
        let mut count = 1;
        loop {
            let (ev, mark) = self.next()?;
            if ev == Event::SequenceEnd {
                return Ok((Value::Array(items), count));
            }
            let child = format!("{path}[{}]", items.len());
            let (v, n) = self.node(ev, mark, child)?;
            count += n;
            items.push(v);
        }
    }

    fn mapping(&mut self, path: &str, start: &Marker) -> Result<(Value, usize), SyntaxError> {
        let mut map = Map::new();
        let mut count = 1;
        loop {
            let (ev, mark) = self.next()?;
            if map.is_empty() && mark.index() < start.index() {
                // yaml-rust2 marks a *block* mapping's start after its first key (at the `:`); the
                // mapping starts where that key does.
                self.index
                    .nodes
                    .insert(path.to_string(), Pos::from_marker(&mark));
            }
            let key = match ev {
                Event::MappingEnd => return Ok((Value::Object(map), count)),
                Event::Scalar(s, ..) => s,
                _ => {
                    return Err(SyntaxError {
                        pos: Pos::from_marker(&mark),
                        error: YamlError::KeyNotString,
                    })
                }
            };
            if map.contains_key(&key) {
                return Err(SyntaxError {
                    pos: Pos::from_marker(&mark),
                    error: YamlError::DuplicateKey(key),
                });
            }
            self.index
                .nodes
                .insert(format!("{path}#{key}"), Pos::from_marker(&mark));
            let child = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            let (ev, vmark) = self.next()?;
            let (v, n) = self.node(ev, vmark, child)?;
            count += n + 1;
            map.insert(key, v);
        }
    }
}

fn scalar(s: String, style: TScalarStyle) -> Value {
    if style != TScalarStyle::Plain {
        return Value::String(s);
    }
    match s.as_str() {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    if let Ok(i) = s.parse::<i64>() {
        return Value::Number(i.into());
    }
    if let Ok(u) = s.parse::<u64>() {
        return Value::Number(u.into());
    }
    if s.bytes()
        .next()
        .is_some_and(|c| c.is_ascii_digit() || c == b'-' || c == b'.')
    {
        if let Some(n) = s.parse::<f64>().ok().and_then(Number::from_f64) {
            return Value::Number(n);
        }
    }
    Value::String(s)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn types_scalars_by_core_schema() {
        let (v, _) = parse("a: 1\nb: '1'\nc: true\nd: ~\ne: 1.5\nf: hello\ng: -3").unwrap();
        assert_eq!(
            v,
            serde_json::json!({"a":1,"b":"1","c":true,"d":null,"e":1.5,"f":"hello","g":-3})
        );
    }

    #[test]
    fn records_positions_of_nested_nodes_and_keys() {
        let text = "routes:\n  - name: a\n    prefix: /v1\n  - name: b\n";
        let (_, idx) = parse(text).unwrap();
        assert_eq!(idx.exact("routes[1].name"), Some(Pos { line: 4, col: 11 }));
        assert_eq!(
            idx.key("routes[0]", "prefix"),
            Some(Pos { line: 3, col: 5 })
        );
        assert_eq!(
            idx.find("routes[0].prefix.missing"),
            Some(Pos { line: 3, col: 13 })
        );
    }

    #[test]
    fn block_mappings_start_at_their_first_key() {
        let text = "x:\n  y: 1\nl:\n  - a: 1\n    b: 2\nf: {c: 3}\n";
        let (_, idx) = parse(text).unwrap();
        assert_eq!(idx.exact(""), Some(Pos { line: 1, col: 1 }));
        assert_eq!(idx.exact("x"), Some(Pos { line: 2, col: 3 }));
        assert_eq!(idx.exact("l[0]"), Some(Pos { line: 4, col: 5 }));
        assert_eq!(idx.exact("f"), Some(Pos { line: 6, col: 4 }));
    }

    #[test]
    fn reports_syntax_errors_with_position() {
        let err = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(matches!(err.error, YamlError::Invalid(_)), "{err}");
        assert!(err.to_string().starts_with("invalid YAML: "), "{err}");
        assert!(err.pos.line >= 2);
    }

    #[test]
    fn rejects_duplicate_keys() {
        let err = parse("a: 1\na: 2\n").unwrap_err();
        assert_eq!(
            err,
            SyntaxError {
                pos: Pos { line: 2, col: 1 },
                error: YamlError::DuplicateKey("a".into())
            }
        );
        assert_eq!(err.to_string(), "duplicate key `a`");
    }

    #[test]
    fn resolves_aliases() {
        let (v, _) = parse("x: &p {a: 1}\ny: *p\n").unwrap();
        assert_eq!(v["y"], serde_json::json!({"a": 1}));
    }

    /// Nine levels of ten aliases: 10^9 nodes if expanded. Refused after copying at most
    /// `MAX_ALIAS_NODES`, at the alias that crosses the bound.
    #[test]
    fn bounds_what_aliases_copy() {
        let mut text = String::from("l0: &l0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..9 {
            let refs = vec![format!("*l{}", i - 1); 10].join(", ");
            text.push_str(&format!("l{i}: &l{i} [{refs}]\n"));
        }
        let err = parse(&text).unwrap_err();
        assert_eq!(
            err.to_string(),
            "YAML anchors and aliases copy more than 100000 nodes (an alias bomb?)"
        );
        assert_eq!(err.pos.line, 5, "{err:?}");
        // Ordinary reuse is untouched.
        let (v, _) = parse("c: &c [{kind: a}, {kind: b}]\nr1: *c\nr2: *c\n").unwrap();
        assert_eq!(v["r2"][1]["kind"], "b");
    }

    #[test]
    fn bounds_nesting() {
        let deep = |n: usize| format!("a: {}1{}", "[".repeat(n), "]".repeat(n));
        assert!(parse(&deep(MAX_DEPTH - 1)).is_ok());
        let err = parse(&deep(MAX_DEPTH)).unwrap_err();
        assert_eq!(err.to_string(), "YAML nesting is deeper than 64 levels");
        // Block sequences nest two bytes a level: without the bound, recursion would overflow.
        let err = parse(&"- ".repeat(1_000_000)).unwrap_err();
        assert_eq!(err.to_string(), "YAML nesting is deeper than 64 levels");
    }
}
