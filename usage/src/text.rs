//! Generated text: a borrowed-when-possible text field, and the accumulator of what a
//! response generated so far.

use std::borrow::Cow;
use std::fmt;

use leaky_tokenize::Tokenizer;
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// A text field: a JSON string (borrowed when it has no escapes), or an array of parts whose
/// `text` members (or strings) are concatenated. Anything else is empty.
#[derive(Debug, Default)]
pub(super) struct Text<'a>(pub Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TextVisitor(std::marker::PhantomData))
    }
}

#[derive(serde::Deserialize)]
struct Part<'a> {
    #[serde(borrow, default)]
    text: Option<Text<'a>>,
}

struct TextVisitor<'a>(std::marker::PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for TextVisitor<'a> {
    type Value = Text<'a>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string or an array of text parts")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Text(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Text(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Text(Cow::Owned(v)))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Text::default())
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(Text::default())
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Text::default())
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Text::default())
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Text::default())
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Text::default())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = String::new();
        while let Some(p) = seq.next_element::<PartOrString<'a>>()? {
            out.push_str(&p.0);
        }
        Ok(Text(Cow::Owned(out)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Text::default())
    }
}

/// An element of a parts array: a string, or an object's `text`.
struct PartOrString<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for PartOrString<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = PartOrString<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a text part")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(PartOrString(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(PartOrString(Cow::Owned(v.to_owned())))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                let p = Part::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(PartOrString(p.text.map(|t| t.0).unwrap_or_default()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(PartOrString(Cow::Borrowed("")))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(PartOrString(Cow::Borrowed("")))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(PartOrString(Cow::Borrowed("")))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(PartOrString(Cow::Borrowed("")))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(PartOrString(Cow::Borrowed("")))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(PartOrString(Cow::Borrowed("")))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// Where a piece of generated text goes: one slot per choice and kind (content, reasoning,
/// each tool call's name and arguments), counted separately the way providers count them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Slot {
    pub choice: u32,
    pub kind: u32,
}

impl Slot {
    pub const CONTENT: u32 = 0;
    pub const REASONING: u32 = 1;
    /// The name of tool call `k`.
    pub fn tool_name(k: u32) -> u32 {
        2 + 2 * k.min(1 << 20)
    }
    /// The arguments of tool call `k`.
    pub fn tool_args(k: u32) -> u32 {
        3 + 2 * k.min(1 << 20)
    }
}

/// Text kept beyond this is counted with the approximation as it arrives, not stored.
const MAX_BYTES: usize = 8 << 20;
/// Distinct slots kept; more are counted with the approximation.
const MAX_SLOTS: usize = 256;

/// The text a response generated so far.
#[derive(Debug, Default)]
pub(super) struct Generated {
    slots: Vec<(Slot, String)>,
    bytes: usize,
    overflow_tokens: u64,
}

impl Generated {
    fn slot(&mut self, at: Slot) -> Option<&mut String> {
        let i = match self.slots.iter().position(|(s, _)| *s == at) {
            Some(i) => i,
            None if self.slots.len() < MAX_SLOTS => {
                self.slots.push((at, String::new()));
                self.slots.len() - 1
            }
            None => return None,
        };
        self.slots.get_mut(i).map(|(_, s)| s)
    }

    /// Appends a delta.
    pub fn append(&mut self, at: Slot, s: &str) {
        if s.is_empty() {
            return;
        }
        if self.bytes + s.len() > MAX_BYTES {
            self.overflow_tokens += leaky_tokenize::text(s);
            return;
        }
        match self.slot(at) {
            Some(buf) => {
                buf.push_str(s);
                self.bytes += s.len();
            }
            None => self.overflow_tokens += leaky_tokenize::text(s),
        }
    }

    /// Replaces the text of a slot (cumulative streams: the latest event has it all).
    pub fn replace(&mut self, at: Slot, s: &str) {
        let old = self
            .slots
            .iter()
            .find(|(x, _)| *x == at)
            .map_or(0, |(_, b)| b.len());
        if self.bytes - old + s.len() > MAX_BYTES {
            return self.append(at, s);
        }
        if let Some(buf) = self.slot(at) {
            buf.clear();
            buf.push_str(s);
            self.bytes = self.bytes - old + s.len();
        }
    }

    /// A cumulative event (the text so far): replaces the slot when it extends what the slot
    /// holds, else (the stream is in fact incremental) appends.
    pub fn cumulative(&mut self, at: Slot, s: &str) {
        let extends = self
            .slots
            .iter()
            .find(|(x, _)| *x == at)
            .is_none_or(|(_, b)| s.starts_with(b.as_str()));
        if extends {
            self.replace(at, s)
        } else {
            self.append(at, s)
        }
    }

    /// Tokens of everything generated, each slot counted on its own.
    pub fn count(&self, tk: Tokenizer) -> u64 {
        self.slots.iter().map(|(_, s)| tk.text(s)).sum::<u64>() + self.overflow_tokens
    }

    /// The content text of a choice (tests).
    #[cfg(test)]
    pub fn content(&self, choice: u32) -> &str {
        let at = Slot {
            choice,
            kind: Slot::CONTENT,
        };
        self.slots
            .iter()
            .find(|(s, _)| *s == at)
            .map_or("", |(_, b)| b.as_str())
    }
}
