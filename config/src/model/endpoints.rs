//! What a route lets a caller reach upstream: its endpoint allow-list. The validated model (`Endpoint`,
//! `PathPattern`), the per-dialect defaults and the allocation-free pattern match.
//! `validate::endpoints` turns the spec (`spec::endpoints`) into it; the proxy compiles it into a
//! per-method matcher once per config version.
//!
//! Patterns are relative to the route prefix and matched against the *normalized* request path (no
//! `//`, no dot segments, unreserved characters decoded), segment by segment:
//! - a literal segment matches itself (`/chat/completions`);
//! - `{name}` matches one non-empty segment (`/models/{id}`);
//! - `{name}:verb` matches a segment `<value>:verb` whose value is non-empty and has no `:`
//!   (`/models/{model}:generateContent`);
//! - a final `**` matches any remaining segments, none included (`/files/**`).

use crate::common::Dialect;
pub use crate::common::EndpointMethod;

/// A validated endpoint of a route (the dialect's defaults included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub method: EndpointMethod,
    pub path: PathPattern,
    /// Empty: any principal (or none).
    pub roles: Vec<String>,
    /// Empty: any tier.
    pub tiers: Vec<String>,
}

/// One segment of a path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    /// Exactly this text.
    Lit(Box<str>),
    /// A non-empty value followed by `suffix` (empty for a plain `{name}`); with a suffix the value has
    /// no `:` (so `m:generateContent:countTokens` is not `{model}:generateContent`).
    Param { suffix: Box<str> },
}

/// A parsed path pattern (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    text: Box<str>,
    segs: Box<[Seg]>,
    /// Ends in `**`.
    tail: bool,
}

/// Why a path pattern is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("`{0}` is not a normalized path pattern: it must start with `/` and have no empty, `.` or `..` segments and no `%`, `\\`, `?`, `#` or spaces")]
    NotNormal(String),
    #[error("`{0}`: a parameter is a whole segment `{{name}}`, or `{{name}}:verb`")]
    BadParam(String),
    #[error("`{0}`: `**` may only be the last segment")]
    TailNotLast(String),
}

impl PathPattern {
    pub fn parse(text: &str) -> Result<PathPattern, PatternError> {
        let not_normal = || PatternError::NotNormal(text.to_string());
        let Some(body) = text.strip_prefix('/') else {
            return Err(not_normal());
        };
        if text
            .bytes()
            .any(|b| matches!(b, b'%' | b'\\' | b'?' | b'#' | b' ') || b.is_ascii_control())
        {
            return Err(not_normal());
        }
        let mut segs = Vec::new();
        let mut tail = false;
        if !body.is_empty() {
            for s in body.split('/') {
                if tail {
                    return Err(PatternError::TailNotLast(text.to_string()));
                }
                match s {
                    "" | "." | ".." => return Err(not_normal()),
                    "**" => tail = true,
                    _ => segs.push(seg(s).ok_or_else(|| PatternError::BadParam(text.to_string()))?),
                }
            }
        }
        Ok(PathPattern {
            text: text.into(),
            segs: segs.into(),
            tail,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `rest` (the normalized path after the route prefix) matches. Allocation-free.
    pub fn matches(&self, rest: &str) -> bool {
        let rest = rest.strip_prefix('/').unwrap_or(rest);
        let mut parts = (!rest.is_empty())
            .then(|| rest.split('/'))
            .into_iter()
            .flatten();
        for seg in self.segs.iter() {
            let Some(part) = parts.next() else {
                return false;
            };
            let ok = match seg {
                Seg::Lit(l) => part == &**l,
                Seg::Param { suffix } if suffix.is_empty() => !part.is_empty(),
                Seg::Param { suffix } => part
                    .strip_suffix(&**suffix)
                    .is_some_and(|v| !v.is_empty() && !v.contains(':')),
            };
            if !ok {
                return false;
            }
        }
        self.tail || parts.next().is_none()
    }
}

/// A literal segment, `{name}` or `{name}suffix`; `None` for a misplaced brace.
fn seg(s: &str) -> Option<Seg> {
    let Some(after) = s.strip_prefix('{') else {
        return (!s.contains(['{', '}', '*'])).then(|| Seg::Lit(s.into()));
    };
    let (name, suffix) = after.split_once('}')?;
    let name_ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let suffix_ok = !suffix.contains(['{', '}', '*']);
    (name_ok && suffix_ok).then(|| Seg::Param {
        suffix: suffix.into(),
    })
}

/// The endpoints a route of `dialect` serves when its config lists none: inference and model listing,
/// relative to the shipped route prefixes (`/v1`, `/openai/v1`, `/qwen/compatible-mode/v1` for the
/// OpenAI dialect, `/gemini/v1beta` and `/gemini/v1` for Google's, `/qwen/api/v1` for DashScope's).
pub fn default_endpoints(dialect: Dialect) -> &'static [(EndpointMethod, &'static str)] {
    use EndpointMethod::{Get, Post};
    match dialect {
        Dialect::Openai => &[
            (Post, "/chat/completions"),
            (Post, "/completions"),
            (Post, "/embeddings"),
            (Post, "/responses"),
            (Get, "/models"),
            (Get, "/models/{id}"),
        ],
        Dialect::Google => &[
            (Post, "/models/{model}:generateContent"),
            (Post, "/models/{model}:streamGenerateContent"),
            (Post, "/models/{model}:countTokens"),
            (Post, "/models/{model}:embedContent"),
            (Post, "/models/{model}:batchEmbedContents"),
            (Get, "/models"),
            (Get, "/models/{model}"),
        ],
        Dialect::Dashscope => &[
            (Post, "/services/aigc/text-generation/generation"),
            (Post, "/services/embeddings/text-embedding/text-embedding"),
        ],
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn m(p: &str, rest: &str) -> bool {
        PathPattern::parse(p).unwrap().matches(rest)
    }

    #[test]
    fn literal_param_verb_and_tail_segments() {
        assert!(m("/chat/completions", "/chat/completions"));
        assert!(!m("/chat/completions", "/chat/completions/"));
        assert!(!m("/chat/completions", "/chat"));
        assert!(!m("/chat", "/chat/completions"));
        assert!(m("/models/{id}", "/models/gpt-4o"));
        assert!(!m("/models/{id}", "/models/"));
        assert!(!m("/models/{id}", "/models/a/b"));
        assert!(m(
            "/models/{m}:generateContent",
            "/models/gemini-2.5-flash:generateContent"
        ));
        assert!(!m(
            "/models/{m}:generateContent",
            "/models/:generateContent"
        ));
        assert!(!m(
            "/models/{m}:countTokens",
            "/models/x:generateContent:countTokens"
        ));
        assert!(!m("/models/{m}:generateContent", "/models/x:countTokens"));
        assert!(m("/files/**", "/files"));
        assert!(m("/files/**", "/files/a/b"));
        assert!(!m("/files/**", "/filesx"));
        assert!(m("/**", ""));
        assert!(m("/**", "/anything/at/all"));
        assert!(m("/", ""));
        assert!(m("/", "/"));
        assert!(!m("/", "/x"));
        // A root route's rest has no leading slash.
        assert!(m("/chat/completions", "chat/completions"));
    }

    #[test]
    fn refuses_patterns_that_cannot_match_a_normalized_path() {
        for p in [
            "chat", "/a//b", "/a/", "/a/../b", "/./a", "/a%2Fb", "/a\\b", "/a?x",
        ] {
            assert!(
                matches!(PathPattern::parse(p), Err(PatternError::NotNormal(_))),
                "{p}"
            );
        }
        for p in ["/x{id}", "/{}", "/{id", "/{a}{b}", "/{a.b}", "/*"] {
            assert!(
                matches!(PathPattern::parse(p), Err(PatternError::BadParam(_))),
                "{p}"
            );
        }
        assert!(matches!(
            PathPattern::parse("/**/x"),
            Err(PatternError::TailNotLast(_))
        ));
    }

    #[test]
    fn every_default_parses() {
        for d in [Dialect::Openai, Dialect::Google, Dialect::Dashscope] {
            for (_, p) in default_endpoints(d) {
                PathPattern::parse(p).unwrap();
            }
        }
    }
}
