//! The usage member of a whole JSON answer, found from its end.
//!
//! Providers write the usage last or nearly last (`usage` after `choices`, `usageMetadata` after
//! `candidates`). Parsing the answer from the start to reach it costs about 16 instructions a
//! byte, the text included, even with every other member skipped unread. [`last_usage`] looks
//! for the key from the end instead, reads the usage object, and checks that the rest of the
//! answer only closes the outermost object. In a valid document that proves the key is a member
//! of the outermost object: a key nested deeper is followed by more than one closing bracket.
//! The members before it are not read, so they are not validated either.
//!
//! `None` whenever that proof fails (no such key, a mention inside a string, a nested key, a
//! body cut short, a usage that is not an object of counts): the caller then parses the whole
//! answer as before.

use super::extract::RawUsage;

/// Candidates tried from the end before giving up (a key mentioned in trailing strings).
const TRIES: usize = 8;

/// The usage object of `doc`'s outermost object under `key` (with its quotes: `"usage"`).
pub(super) fn last_usage(doc: &[u8], key: &[u8]) -> Option<RawUsage> {
    if doc.trim_ascii_start().first() != Some(&b'{') {
        return None;
    }
    // The key's first letter, found from the end with `memrchr` (SIMD); `memmem`'s reverse
    // search has no SIMD path and cost more than the rest of the read.
    let letter = *key.get(1)?;
    let mut tries = 0;
    for at in memchr::memrchr_iter(letter, doc) {
        let Some(at) = at.checked_sub(1).filter(|&q| doc[q..].starts_with(key)) else {
            continue;
        };
        tries += 1;
        if tries > TRIES {
            return None;
        }
        if escaped(doc, at) {
            continue;
        }
        let after = doc[at + key.len()..].trim_ascii_start();
        let Some(value) = after.strip_prefix(b":") else {
            continue;
        };
        let Some((usage, len)) = usage_object(value) else {
            continue;
        };
        if closes_outermost(&value[len..]) {
            return Some(usage);
        }
    }
    None
}

/// The usage object that starts `value` and its length: read by [`flat_counts`], or by serde when
/// that is unsure.
fn usage_object(value: &[u8]) -> Option<(RawUsage, usize)> {
    if let Some(read) = flat_counts(value) {
        return Some(read);
    }
    let mut values = serde_json::Deserializer::from_slice(value).into_iter::<RawUsage>();
    let usage = values.next()?.ok()?;
    Some((usage, values.byte_offset()))
}

/// A usage object as providers write it: members whose names have no escape, counts as plain
/// integers (or `null`) and detail objects. `None` for anything else, serde then decides:
/// another value for a count, an escape in a name, a count given twice.
fn flat_counts(value: &[u8]) -> Option<(RawUsage, usize)> {
    let mut usage = RawUsage::default();
    let mut seen = 0u16;
    let mut at = skip_ws(value, 0);
    (value.get(at) == Some(&b'{')).then_some(())?;
    at = skip_ws(value, at + 1);
    if value.get(at) == Some(&b'}') {
        return Some((usage, at + 1));
    }
    loop {
        (value.get(at) == Some(&b'"')).then_some(())?;
        let end = string_end(value, at + 1)?;
        let name = &value[at + 1..end];
        (!name.contains(&b'\\')).then_some(())?;
        at = skip_ws(value, end + 1);
        (value.get(at) == Some(&b':')).then_some(())?;
        at = skip_ws(value, at + 1);
        at = match RawUsage::field(name) {
            Some(f) => {
                (seen & 1 << f == 0).then_some(())?;
                seen |= 1 << f;
                let (n, next) = count(value, at)?;
                usage.put(f, n);
                next
            }
            None => skip_value(value, at)?,
        };
        at = skip_ws(value, at);
        match value.get(at)? {
            b',' => at = skip_ws(value, at + 1),
            b'}' => return Some((usage, at + 1)),
            _ => return None,
        }
    }
}

/// A count at `at`: digits without a leading zero that fit a `u64`, or `null`; and where it ends.
fn count(s: &[u8], at: usize) -> Option<(Option<u64>, usize)> {
    if s[at..].starts_with(b"null") {
        return Some((None, at + 4)).filter(|_| ends_token(s, at + 4));
    }
    let digits = s[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    let text = &s[at..at + digits];
    let leading_zero = digits > 1 && text[0] == b'0';
    if digits == 0 || leading_zero || !ends_token(s, at + digits) {
        return None;
    }
    let n = std::str::from_utf8(text).ok()?.parse::<u64>().ok()?;
    Some((Some(n), at + digits))
}

/// Whether a number or literal ending at `at` ends there (not `12.5`, `1e3`, `nullx`).
fn ends_token(s: &[u8], at: usize) -> bool {
    matches!(s.get(at), Some(b',' | b'}' | b' ' | b'\n' | b'\r' | b'\t'))
}

/// Past a member's value that is not a count: an object or array (balanced, strings skipped) or
/// a string; `None` for a scalar (left to serde, which checks it).
fn skip_value(s: &[u8], at: usize) -> Option<usize> {
    match s.get(at)? {
        b'"' => Some(string_end(s, at + 1)? + 1),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = at;
            loop {
                match s.get(i)? {
                    b'"' => i = string_end(s, i + 1)?,
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        }
        _ => None,
    }
}

fn skip_ws(s: &[u8], mut at: usize) -> usize {
    while s.get(at).is_some_and(u8::is_ascii_whitespace) {
        at += 1;
    }
    at
}

/// Whether the quote at `at` is escaped (an odd run of backslashes before it: inside a string).
fn escaped(doc: &[u8], at: usize) -> bool {
    let run = doc[..at].iter().rev().take_while(|&&b| b == b'\\').count();
    run % 2 == 1
}

/// Whether `rest`, which starts between two members, holds only further members (`, "k": v`)
/// and then the `}` that ends the document, with nothing but whitespace after it.
fn closes_outermost(rest: &[u8]) -> bool {
    let mut depth = 0usize;
    let mut at = 0;
    while let Some(&b) = rest.get(at) {
        match b {
            b'"' => match string_end(rest, at + 1) {
                Some(end) => at = end,
                None => return false,
            },
            b'{' | b'[' => depth += 1,
            b'}' | b']' if depth > 0 => depth -= 1,
            b'}' => return rest[at + 1..].trim_ascii().is_empty(),
            b']' => return false,
            _ => {}
        }
        at += 1;
    }
    false
}

/// The index of the quote that closes the string whose contents start at `from`.
fn string_end(s: &[u8], mut from: usize) -> Option<usize> {
    loop {
        let i = from + memchr::memchr2(b'"', b'\\', s.get(from..)?)?;
        if s[i] == b'"' {
            return Some(i);
        }
        from = i + 2;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn usage(doc: &str) -> Option<(u64, u64)> {
        last_usage(doc.as_bytes(), b"\"usage\"").and_then(|u| u.pair())
    }

    #[test]
    fn a_top_level_usage_is_read_wherever_the_members_after_it_end() {
        let u = r#""usage":{"prompt_tokens":5,"completion_tokens":3,"total_tokens":8}"#;
        let body = r#""choices":[{"message":{"content":"Hi"}}]"#;
        assert_eq!(usage(&format!("{{{body},{u}}}")), Some((5, 3)));
        assert_eq!(usage(&format!(" {{ {body} , {u} }} \n")), Some((5, 3)));
        let after = r#""system_fingerprint":"fp_}]\"x","tags":[{"a":[1,2]},"}"],"n":null"#;
        assert_eq!(usage(&format!("{{{u},{after}}}")), Some((5, 3)));
        assert_eq!(usage(&format!("{{{u}}}")), Some((5, 3)));
        // A mention in a later string (escaped, or not followed by a colon) is passed over.
        let mention = r#""note":"the \"usage\": {} member","k":"usage""#;
        assert_eq!(usage(&format!("{{{u},{mention}}}")), Some((5, 3)));
        // A backslash that is itself escaped leaves the quote a real delimiter.
        let back = r#""path":"C:\\","usage":{"prompt_tokens":2,"completion_tokens":1}"#;
        assert_eq!(usage(&format!("{{{back}}}")), Some((2, 1)));
    }

    #[test]
    fn anything_else_is_left_to_the_whole_parse() {
        let u = r#""usage":{"prompt_tokens":5,"completion_tokens":3}"#;
        // Nested: what follows closes more than the outermost object.
        assert_eq!(usage(&format!(r#"{{"a":{{{u}}}}}"#)), None);
        assert_eq!(usage(&format!(r#"{{"a":[{{{u}}}],"b":1}}"#)), None);
        // Cut short, or followed by more than whitespace.
        assert_eq!(usage(&format!("{{{u}")), None);
        assert_eq!(usage(&format!("{{{u},\"k\":\"v")), None);
        assert_eq!(usage(&format!("{{{u}}} x")), None);
        assert_eq!(usage(&format!("{{{u}]")), None);
        // Not an object of counts, not a document that is an object, no usage at all.
        assert_eq!(usage(r#"{"usage":null}"#), None);
        assert_eq!(usage(r#"{"usage":{"prompt_tokens":"5"}}"#), None);
        assert_eq!(usage(&format!("[{{{u}}}]")), None);
        assert_eq!(usage(r#"{"choices":[]}"#), None);
        // Only inside a string: one that ends right after the word, and a key that contains it.
        assert_eq!(usage(r#"{"text":"say \"usage"}"#), None);
        assert_eq!(
            usage(r#"{"a\"usage":{"prompt_tokens":1,"completion_tokens":1}}"#),
            None
        );
    }

    #[test]
    fn the_key_is_matched_whole() {
        let doc =
            br#"{"candidates":[],"usageMetadata":{"promptTokenCount":3,"totalTokenCount":5}}"#;
        let gem = last_usage(doc, b"\"usageMetadata\"").and_then(|u| u.pair());
        assert_eq!(gem, Some((3, 2)));
        assert!(last_usage(doc, b"\"usage\"").is_none());
    }
}
