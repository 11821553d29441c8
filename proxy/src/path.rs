//! Request path normalization: the one form of the path that routing, the model-from-path extraction,
//! the endpoint allow-list and the upstream request all use, so none of them can be told a different
//! story than the others (`/v1/models/gpt-4o/../../files` is `/v1/files`, for every one of them).
//!
//! RFC 3986 §6.2.2 normalization: percent-encoded unreserved characters are decoded (other escapes
//! keep their meaning, hex upper-cased), empty segments (`//`) are collapsed, `.` and `..` segments
//! are resolved. What cannot be normalized without changing what the upstream would see is refused:
//! an encoded `/` or `\`, any backslash, NUL and other control characters, dot segments made of
//! encoded dots, a `..` above the root, and malformed escapes. The caller also learns how far a `..`
//! climbed, so a path cannot climb out of its route prefix (`NormalPath::min_depth`).
//!
//! Already-normal paths (every SDK request) are recognised by one pass over the bytes and returned
//! borrowed: no allocation.

use std::borrow::Cow;

/// A normalized path.
#[derive(Debug, PartialEq, Eq)]
pub struct NormalPath<'a> {
    pub path: Cow<'a, str>,
    /// The fewest segments left after a `..` was resolved; `None` when there was none.
    pub min_depth: Option<usize>,
}

/// Why a path cannot be normalized safely (a 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path must start with `/`")]
    NotAbsolute,
    #[error("the path contains an encoded `/` (`%2F`)")]
    EncodedSlash,
    #[error("the path contains a backslash")]
    Backslash,
    #[error("the path contains a NUL or control character")]
    Control,
    #[error("the path contains a dot segment written with `%2E`")]
    EncodedDot,
    #[error("the path contains a malformed percent-encoding")]
    BadEscape,
    #[error("the path climbs above the root with `..`")]
    AboveRoot,
}

/// Normalizes `path` (the request target's path, without the query).
pub fn normalize(path: &str) -> Result<NormalPath<'_>, PathError> {
    if is_normal(path.as_bytes()) {
        return Ok(NormalPath {
            path: Cow::Borrowed(path),
            min_depth: None,
        });
    }
    normalize_slow(path)
}

/// Number of segments in a normalized path (`/` and `` have none; a trailing `/` adds none).
pub fn depth(normal: &str) -> usize {
    normal.split('/').filter(|s| !s.is_empty()).count()
}

/// One pass: starts with `/`, no `%`, `\` or control byte, no empty segment but a trailing one, no
/// `.` or `..` segment.
fn is_normal(p: &[u8]) -> bool {
    if p.first() != Some(&b'/') {
        return false;
    }
    let mut seg_start = 1;
    for (i, &b) in p.iter().enumerate().skip(1) {
        match b {
            b'%' | b'\\' => return false,
            b'/' => {
                if is_dot_or_empty(&p[seg_start..i]) {
                    return false;
                }
                seg_start = i + 1;
            }
            _ if b.is_ascii_control() => return false,
            _ => {}
        }
    }
    let last = &p[seg_start..];
    last != b"." && last != b".."
}

fn is_dot_or_empty(seg: &[u8]) -> bool {
    seg.is_empty() || seg == b"." || seg == b".."
}

fn normalize_slow(path: &str) -> Result<NormalPath<'static>, PathError> {
    let body = path.strip_prefix('/').ok_or(PathError::NotAbsolute)?;
    let mut out = String::with_capacity(path.len());
    let mut seg = String::new();
    let mut depth = 0usize;
    let mut min_depth: Option<usize> = None;
    let mut parts = body.split('/').peekable();
    while let Some(raw) = parts.next() {
        let last = parts.peek().is_none();
        let encoded_dot = decode_segment(raw, &mut seg)?;
        match seg.as_str() {
            "." | ".." if encoded_dot => return Err(PathError::EncodedDot),
            ".." => {
                depth = depth.checked_sub(1).ok_or(PathError::AboveRoot)?;
                out.truncate(out.rfind('/').unwrap_or(0));
                min_depth = Some(min_depth.map_or(depth, |m| m.min(depth)));
            }
            "." | "" => {}
            s => {
                out.push('/');
                out.push_str(s);
                depth += 1;
                continue;
            }
        }
        // A path ending in an empty, `.` or `..` segment names a directory: keep its slash.
        if last {
            out.push('/');
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(NormalPath {
        path: Cow::Owned(out),
        min_depth,
    })
}

/// Decodes `raw` into `out` (cleared first): unreserved escapes become their character, other escapes
/// stay (upper-case hex). Returns whether a `.` came from an escape.
fn decode_segment(raw: &str, out: &mut String) -> Result<bool, PathError> {
    out.clear();
    let b = raw.as_bytes();
    let mut encoded_dot = false;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'\\' => return Err(PathError::Backslash),
            _ if c.is_ascii_control() => return Err(PathError::Control),
            b'%' => {
                let v = match (b.get(i + 1).and_then(hex), b.get(i + 2).and_then(hex)) {
                    (Some(h), Some(l)) => (h << 4) | l,
                    _ => return Err(PathError::BadEscape),
                };
                match v {
                    b'/' => return Err(PathError::EncodedSlash),
                    b'\\' => return Err(PathError::Backslash),
                    _ if v.is_ascii_control() => return Err(PathError::Control),
                    _ if is_unreserved(v) => {
                        encoded_dot |= v == b'.';
                        out.push(char::from(v));
                    }
                    _ => {
                        const HEX: &[u8; 16] = b"0123456789ABCDEF";
                        out.push('%');
                        out.push(char::from(HEX[usize::from(v >> 4)]));
                        out.push(char::from(HEX[usize::from(v & 0xf)]));
                    }
                }
                i += 3;
                continue;
            }
            _ => {}
        }
        // Copy the run up to the next byte that needs a look (keeps multi-byte UTF-8 intact).
        let end = b[i..]
            .iter()
            .position(|&x| x == b'%' || x == b'\\' || x.is_ascii_control())
            .map_or(b.len(), |n| i + n);
        out.push_str(&raw[i..end]);
        i = end;
    }
    Ok(encoded_dot)
}

fn hex(b: &u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn norm(p: &str) -> Result<String, PathError> {
        normalize(p).map(|n| n.path.into_owned())
    }

    #[test]
    fn normal_paths_are_borrowed_unchanged() {
        for p in [
            "/",
            "/v1/chat/completions",
            "/v1/models/",
            "/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent",
            "/qwen/api/v1/services/aigc/text-generation/generation",
            "/a/.b/..c/...",
        ] {
            let n = normalize(p).unwrap();
            assert!(matches!(n.path, Cow::Borrowed(_)), "{p}");
            assert_eq!((n.path.as_ref(), n.min_depth), (p, None));
        }
    }

    #[test]
    fn table_of_tricky_paths() {
        use PathError::*;
        let ok = |p: &str, want: &str| assert_eq!(norm(p), Ok(want.to_string()), "{p}");
        ok("//v1//chat///completions", "/v1/chat/completions");
        ok("/v1/./chat/completions", "/v1/chat/completions");
        ok("/v1/models/gpt-4o/../../files", "/v1/files");
        ok("/openai/v1/../../admin/secret", "/admin/secret");
        ok("/v1/models/gpt-4o/..", "/v1/models/");
        ok("/v1/.", "/v1/");
        ok("/v1/%63hat/completions", "/v1/chat/completions");
        ok("/v1/models/gpt-4%2E1", "/v1/models/gpt-4.1");
        ok("/v1/a%7eb%2D", "/v1/a~b-");
        ok("/v1/a%3ab%20c", "/v1/a%3Ab%20c");
        ok("/v1/%25", "/v1/%25");
        ok("/v1/é", "/v1/é");
        let err = |p: &str, e: PathError| assert_eq!(norm(p), Err(e), "{p}");
        err("v1/chat", NotAbsolute);
        err("*", NotAbsolute);
        err("/v1/a%2Fb", EncodedSlash);
        err("/v1/a%2fb", EncodedSlash);
        err("/v1/a%5Cb", Backslash);
        err("/v1\\..\\admin", Backslash);
        err("/v1/a%00", Control);
        err("/v1/a%0Ab", Control);
        err("/v1/%2e%2e/admin", EncodedDot);
        err("/v1/.%2E/admin", EncodedDot);
        err("/v1/%2E", EncodedDot);
        err("/v1/%zz", BadEscape);
        err("/v1/%4", BadEscape);
        err("/..", AboveRoot);
        err("/v1/../../etc", AboveRoot);
    }

    #[test]
    fn reports_how_far_dot_segments_climbed() {
        let n = normalize("/openai/v1/x/../../v1/chat/completions").unwrap();
        assert_eq!(n.path, "/openai/v1/chat/completions");
        assert_eq!(n.min_depth, Some(1));
        assert_eq!(normalize("/v1/a/../b").unwrap().min_depth, Some(1));
        assert_eq!(normalize("//v1//b").unwrap().min_depth, None);
    }

    #[test]
    fn depth_counts_segments() {
        assert_eq!(depth("/"), 0);
        assert_eq!(depth("/v1"), 1);
        assert_eq!(depth("/openai/v1"), 2);
        assert_eq!(depth("/openai/v1/"), 2);
    }

    proptest! {
        /// Whatever goes in, what comes out is normal: the fast check accepts it, it is a fixed point,
        /// and it carries none of the shapes the fast check rejects.
        #[test]
        fn output_is_a_normal_fixed_point(p in "(/|//|/\\.|/\\.\\.|/%2[eEfF]|%2[eE]|%[0-9a-fA-F]{2}|[a-z.~:]|\\\\)*") {
            if let Ok(n) = normalize(&p) {
                let out = n.path.as_ref();
                // Escapes of reserved characters stay, and send a path down the slow path.
                prop_assert!(out.contains('%') || is_normal(out.as_bytes()), "{p:?} -> {out:?}");
                prop_assert_eq!(norm(out), Ok(out.to_string()));
                prop_assert!(!out.contains("//") && !out.contains("/../") && !out.contains("/./"));
                prop_assert!(!out.contains('\\'));
            }
        }

        /// The fast check never passes a path the full normalization would change.
        #[test]
        fn fast_check_agrees_with_full_normalization(p in "/[a-z./%2eEfF]{0,16}") {
            if is_normal(p.as_bytes()) {
                prop_assert_eq!(normalize_slow(&p).map(|n| n.path.into_owned()), Ok(p.clone()));
            }
        }
    }
}
