//! A fast path for the most frequent document the meter reads: one OpenAI streaming chunk
//! (`chat.completion.chunk`, or a legacy `text_completion` chunk) whose choices carry text and
//! whose `usage` is absent or `null`. The general reader ([`super::extract`]) deserializes it with
//! serde — about 7,000 instructions for a 300-byte chunk, a third of what relaying an event costs
//! — mostly matching and skipping members the meter never uses (`id`, `model`, `created`,
//! `system_fingerprint`, ...). This scanner walks the bytes once, keeps the few members it needs
//! and skips the rest.
//!
//! It answers only when it is sure: whenever the document is anything but plain, strictly valid
//! JSON of that shape — `usage` present, tool calls, text that is not a string, a key with an
//! escape, a duplicate member, non-ASCII outside the text, more than [`MAX_CHOICES`] choices,
//! deep nesting, a number or literal outside the JSON grammar — it returns `None` and the serde
//! reader decides. So what it reads equals what serde reads (a test compares the two on real
//! chunks and on thousands of mutations of them).

use std::borrow::Cow;

/// Choices read without allocating; a chunk with more goes to serde.
const MAX_CHOICES: usize = 4;
/// Nesting skipped before handing the document to serde (its own limit is 128).
const MAX_DEPTH: usize = 64;

/// One choice's text, as serde's `OaChoice` would hold it.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Choice<'a> {
    pub index: Option<u32>,
    pub content: Option<Cow<'a, str>>,
    pub reasoning: Option<Cow<'a, str>>,
    pub text: Option<Cow<'a, str>>,
}

/// A chunk read by the fast path: its choices (`None`: `choices` absent or `null`).
#[derive(Debug, Default, PartialEq)]
pub(super) struct Chunk<'a> {
    pub choices: Option<([Choice<'a>; MAX_CHOICES], usize)>,
}

/// Reads `data` into `out` (a fresh `Chunk`) if it is a plain OpenAI chunk without usage; false:
/// let serde read it (`out` is then unspecified). Filled in place: returned by value, the `Chunk`
/// (four choices, about 330 bytes) was copied three times a chunk.
pub(super) fn openai_chunk<'a>(data: &'a [u8], out: &mut Chunk<'a>) -> bool {
    scan_chunk(data, out).is_some()
}

fn scan_chunk<'a>(data: &'a [u8], out: &mut Chunk<'a>) -> Option<()> {
    let mut s = Scan { b: data, i: 0 };
    let (mut seen_choices, mut seen_usage) = (false, false);
    s.ws();
    s.object(|s, key| {
        match key {
            b"choices" => {
                first(&mut seen_choices)?;
                s.choices(&mut out.choices)?;
            }
            b"usage" => {
                // Only `null`: a chunk that reports usage is rare and read by serde.
                first(&mut seen_usage)?;
                s.literal(b"null")?;
            }
            _ => s.skip(0)?,
        }
        Some(())
    })?;
    s.ws();
    (s.i == data.len()).then_some(())
}

/// The bytes that end a run of plain string content: the quote, the backslash and control
/// characters, and (`STOP_ASCII`) every byte beyond ASCII.
const STOP_UTF8: [bool; 256] = stops(false);
const STOP_ASCII: [bool; 256] = stops(true);

const fn stops(ascii_only: bool) -> [bool; 256] {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        t[c] = c < 0x20 || c == b'"' as usize || c == b'\\' as usize || (ascii_only && c >= 0x80);
        c += 1;
    }
    t
}

/// `None` when a member was `seen` already (serde refuses a duplicate field: let it say so).
fn first(seen: &mut bool) -> Option<()> {
    (!std::mem::replace(seen, true)).then_some(())
}

struct Scan<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Scan<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        self.ws();
        (self.peek()? == c).then(|| self.i += 1)
    }

    fn literal(&mut self, lit: &[u8]) -> Option<()> {
        self.ws();
        let end = self.i + lit.len();
        (self.b.get(self.i..end)? == lit).then(|| self.i = end)
    }

    fn is_null(&mut self) -> bool {
        self.ws();
        self.b.get(self.i..self.i + 4) == Some(b"null") && {
            self.i += 4;
            true
        }
    }

    /// `{ "key": value, ... }`, `member` reading each value (the scan is after the colon).
    fn object(&mut self, mut member: impl FnMut(&mut Self, &[u8]) -> Option<()>) -> Option<()> {
        self.eat(b'{')?;
        self.ws();
        if self.peek()? == b'}' {
            self.i += 1;
            return Some(());
        }
        loop {
            self.ws();
            let key = self.key()?;
            self.eat(b':')?;
            member(self, key)?;
            self.ws();
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// A member name: plain ASCII without escapes (anything else goes to serde).
    fn key(&mut self) -> Option<&'a [u8]> {
        if self.peek()? != b'"' {
            return None;
        }
        let start = self.i + 1;
        let rest = self.b.get(start..)?;
        let len = rest.iter().position(|&c| STOP_ASCII[usize::from(c)])?;
        if rest[len] != b'"' {
            return None;
        }
        self.i = start + len + 1;
        Some(&rest[..len])
    }

    /// A string kept as text: borrowed, or unescaped by serde_json when it has escapes.
    fn text(&mut self) -> Option<Cow<'a, str>> {
        self.ws();
        if self.peek()? != b'"' {
            return None;
        }
        let start = self.i;
        let end = self.string_end(true)?;
        let inner = &self.b[start + 1..end - 1];
        self.i = end;
        if inner.contains(&b'\\') {
            serde_json::from_slice::<String>(&self.b[start..end])
                .ok()
                .map(Cow::Owned)
        } else {
            std::str::from_utf8(inner).ok().map(Cow::Borrowed)
        }
    }

    /// The index just past the string starting at the scan (on its quote). Escapes are checked
    /// the way JSON defines them; control characters refused; non-ASCII only when `utf8` (the
    /// caller validates it).
    fn string_end(&self, utf8: bool) -> Option<usize> {
        let stop = if utf8 { &STOP_UTF8 } else { &STOP_ASCII };
        let mut j = self.i + 1;
        loop {
            j += self
                .b
                .get(j..)?
                .iter()
                .position(|&c| stop[usize::from(c)])?;
            match self.b[j] {
                b'"' => return Some(j + 1),
                b'\\' => {
                    j += match *self.b.get(j + 1)? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => 2,
                        b'u' if self.b.get(j + 2..j + 6)?.iter().all(u8::is_ascii_hexdigit) => 6,
                        _ => return None,
                    }
                }
                _ => return None,
            }
        }
    }

    /// Skips one value of any type, strictly (`depth`: the nesting so far).
    fn skip(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.ws();
        match self.peek()? {
            b'"' => {
                self.i = self.string_end(false)?;
                Some(())
            }
            b'{' => self.object(|s, _| s.skip(depth + 1)),
            b'[' => self.array(|s| s.skip(depth + 1)),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    /// `[ value, ... ]`, `element` reading each.
    fn array(&mut self, mut element: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.eat(b'[')?;
        self.ws();
        if self.peek()? == b']' {
            self.i += 1;
            return Some(());
        }
        loop {
            element(self)?;
            self.ws();
            match self.peek()? {
                b',' => self.i += 1,
                b']' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// A number by JSON's grammar: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    fn number(&mut self) -> Option<()> {
        if self.peek()? == b'-' {
            self.i += 1;
        }
        match self.peek()? {
            b'0' => self.i += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            self.digits_one_or_more()?;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            self.digits_one_or_more()?;
        }
        Some(())
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
    }

    fn digits_one_or_more(&mut self) -> Option<()> {
        let start = self.i;
        self.digits();
        (self.i > start).then_some(())
    }

    /// `choices`: `null` (`out` stays `None`), or an array of at most [`MAX_CHOICES`] choice
    /// objects, read into `out` in place.
    #[allow(clippy::type_complexity)]
    fn choices(&mut self, out: &mut Option<([Choice<'a>; MAX_CHOICES], usize)>) -> Option<()> {
        if self.is_null() {
            return Some(());
        }
        let (slots, n) = out.insert(Default::default());
        self.array(|s| {
            let slot = slots.get_mut(*n)?;
            *slot = s.choice()?;
            *n += 1;
            Some(())
        })
    }

    /// One choice: `index`, `delta` (or `message`) with `content` / `reasoning_content`, `text`.
    fn choice(&mut self) -> Option<Choice<'a>> {
        let mut c = Choice::default();
        let (mut index, mut delta, mut text) = (false, false, false);
        self.object(|s, key| {
            match key {
                b"index" => {
                    first(&mut index)?;
                    c.index = s.index()?;
                }
                b"delta" | b"message" => {
                    first(&mut delta)?;
                    if !s.is_null() {
                        s.delta(&mut c)?;
                    }
                }
                b"text" => {
                    first(&mut text)?;
                    c.text = s.opt_text()?;
                }
                _ => s.skip(1)?,
            }
            Some(())
        })?;
        Some(c)
    }

    /// `index`: `null` or a `u32` written as plain digits.
    fn index(&mut self) -> Option<Option<u32>> {
        if self.is_null() {
            return Some(None);
        }
        self.ws();
        let start = self.i;
        self.digits();
        let digits = &self.b[start..self.i];
        if digits.is_empty() || (digits.len() > 1 && digits[0] == b'0') {
            return None;
        }
        // A fraction or exponent is not a u32 to serde either; let it say so.
        if matches!(self.peek(), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        let mut v: u32 = 0;
        for &d in digits {
            v = v.checked_mul(10)?.checked_add(u32::from(d - b'0'))?;
        }
        Some(Some(v))
    }

    /// A text member: `null` or a string (arrays of parts and other values go to serde).
    fn opt_text(&mut self) -> Option<Option<Cow<'a, str>>> {
        if self.is_null() {
            return Some(None);
        }
        self.text().map(Some)
    }

    /// A delta (or message) object; tool calls go to serde.
    fn delta(&mut self, c: &mut Choice<'a>) -> Option<()> {
        let (mut content, mut reasoning, mut tools) = (false, false, false);
        self.object(|s, key| {
            match key {
                b"content" => {
                    first(&mut content)?;
                    c.content = s.opt_text()?;
                }
                b"reasoning_content" => {
                    first(&mut reasoning)?;
                    c.reasoning = s.opt_text()?;
                }
                b"tool_calls" => {
                    first(&mut tools)?;
                    if !s.is_null() {
                        return None;
                    }
                }
                _ => s.skip(2)?,
            }
            Some(())
        })
    }
}
