//! YAML → `serde_json::Value` with a location for every node.
//!
//! One pass over yaml-rust2's event stream builds both the value tree that serde deserializes and an
//! index from each node's path (`routes[0].upstream.provider`, the same spelling serde_path_to_error
//! uses) to the line and column where it starts. That is what lets *validation* errors — not only syntax
//! errors — point at `file:line:col`.
//!
//! Scalars follow the YAML 1.2 core schema: plain `null`/`~`/empty, `true`/`false`, integers and floats
//! are typed; anything quoted stays a string.

use serde_json::{Map, Number, Value};
use std::collections::HashMap;
use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

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

/// A YAML syntax or structure error with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

/// Parses one YAML document into a JSON value and its location index.
pub fn parse(text: &str) -> Result<(Value, LocationIndex), SyntaxError> {
    let mut b = Builder {
        parser: Parser::new_from_str(text),
        index: LocationIndex::default(),
        anchors: HashMap::new(),
    };
    loop {
        let (ev, mark) = b.next()?;
        match ev {
            Event::StreamStart | Event::DocumentStart => continue,
            Event::StreamEnd => return Ok((Value::Null, b.index)),
            ev => {
                let v = b.node(ev, mark, String::new())?;
                return Ok((v, b.index));
            }
        }
    }
}

struct Builder<'a> {
    parser: Parser<std::str::Chars<'a>>,
    index: LocationIndex,
    anchors: HashMap<usize, Value>,
}

impl Builder<'_> {
    fn next(&mut self) -> Result<(Event, Marker), SyntaxError> {
        self.parser.next_token().map_err(|e| SyntaxError {
            pos: Pos::from_marker(e.marker()),
            message: format!("invalid YAML: {}", e.info()),
        })
    }

    fn node(&mut self, ev: Event, mark: Marker, path: String) -> Result<Value, SyntaxError> {
        self.index
            .nodes
            .insert(path.clone(), Pos::from_marker(&mark));
        let (value, anchor) = match ev {
            Event::Scalar(s, style, anchor, _) => (scalar(s, style), anchor),
            Event::Alias(id) => match self.anchors.get(&id) {
                Some(v) => (v.clone(), 0),
                None => {
                    return Err(SyntaxError {
                        pos: Pos::from_marker(&mark),
                        message: "unknown YAML alias".into(),
                    })
                }
            },
            Event::SequenceStart(anchor, _) => (self.sequence(&path)?, anchor),
            Event::MappingStart(anchor, _) => (self.mapping(&path, &mark)?, anchor),
            other => {
                return Err(SyntaxError {
                    pos: Pos::from_marker(&mark),
                    message: format!("unexpected YAML event {other:?}"),
                })
            }
        };
        if anchor > 0 {
            self.anchors.insert(anchor, value.clone());
        }
        Ok(value)
    }

    fn sequence(&mut self, path: &str) -> Result<Value, SyntaxError> {
        let mut items = Vec::new();
        loop {
            let (ev, mark) = self.next()?;
            if ev == Event::SequenceEnd {
                return Ok(Value::Array(items));
            }
            let child = format!("{path}[{}]", items.len());
            items.push(self.node(ev, mark, child)?);
        }
    }

    fn mapping(&mut self, path: &str, start: &Marker) -> Result<Value, SyntaxError> {
        let mut map = Map::new();
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
                Event::MappingEnd => return Ok(Value::Object(map)),
                Event::Scalar(s, ..) => s,
                _ => {
                    return Err(SyntaxError {
                        pos: Pos::from_marker(&mark),
                        message: "mapping keys must be plain strings".into(),
                    })
                }
            };
            if map.contains_key(&key) {
                return Err(SyntaxError {
                    pos: Pos::from_marker(&mark),
                    message: format!("duplicate key `{key}`"),
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
            let v = self.node(ev, vmark, child)?;
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
        assert!(err.message.starts_with("invalid YAML"), "{}", err.message);
        assert!(err.pos.line >= 2);
    }

    #[test]
    fn rejects_duplicate_keys() {
        let err = parse("a: 1\na: 2\n").unwrap_err();
        assert_eq!(
            err,
            SyntaxError {
                pos: Pos { line: 2, col: 1 },
                message: "duplicate key `a`".into()
            }
        );
    }

    #[test]
    fn resolves_aliases() {
        let (v, _) = parse("x: &p {a: 1}\ny: *p\n").unwrap();
        assert_eq!(v["y"], serde_json::json!({"a": 1}));
    }
}
