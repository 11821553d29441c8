//! A borrowed read of a plain chat request, for its estimate.
//!
//! The general estimate parses the body into a `serde_json::Value` (a map per object, a string per
//! key and text) and walks it. A chat request's estimate needs only the messages' roles, texts and
//! names, the completion caps, `n` and the stream flags; this reads those in one pass, borrowing
//! the texts from the body (allocating only for the message list and texts with escapes), and
//! counts with the same rules. It reads what the general path reads the way it reads it: any JSON
//! the `Value` parse refuses it refuses (every member is parsed, none skipped unchecked), a
//! repeated member's last value counts, a member of another type counts as the general path counts
//! it. Tool definitions and tool calls it leaves to the general path (`None`, as soon as it meets
//! them): their count comes from re-serialized JSON there. `tests/estimate_chat.rs` compares the two on real request shapes
//! and thousands of mutations of them.

use std::borrow::Cow;
use std::fmt;

use leaky_tokenize::{Tokenizer, Vendor, NON_TEXT_PART, PER_MESSAGE, PER_NAME, REPLY_PRIMING};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::estimate::RequestCost;

/// What the estimate reads of a chat request, and its `model` for routing.
#[derive(Default)]
struct Chat<'a> {
    /// A string `model` (`None`: absent or `null`, as the gateway's model peek reads it).
    model: Option<Cow<'a, str>>,
    messages: Vec<Message<'a>>,
    max_tokens: Scalar,
    max_completion_tokens: Scalar,
    n: Scalar,
    stream: Scalar,
    include_usage: Scalar,
}

/// One message: a string `role` and `name` count, `content` by [`Content`].
#[derive(Default)]
struct Message<'a> {
    role: Option<Cow<'a, str>>,
    content: Content<'a>,
    name: Option<Cow<'a, str>>,
}

/// A member read as `Value::as_u64` / `Value::as_bool` read it: any other value reads as neither.
#[derive(Clone, Copy, Default)]
enum Scalar {
    #[default]
    Other,
    Uint(u64),
    Bool(bool),
}

/// A message's `content` as the prompt rules count it: a text, parts, or nothing (any other value).
#[derive(Default)]
enum Content<'a> {
    #[default]
    None,
    Text(Cow<'a, str>),
    Parts(Vec<Part<'a>>),
}

/// One part of an array content: a string or an object's string `text` counts as text, any other
/// object as a non-text part, anything else as nothing.
enum Part<'a> {
    Text(Cow<'a, str>),
    NonText,
    Nothing,
}

/// A member name: the one of these names it is (without allocating, escapes decoded), or `None`.
struct Name(&'static [&'static str]);

impl<'de> DeserializeSeed<'de> for Name {
    type Value = Option<&'static str>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Name {
    type Value = Option<&'static str>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a member name")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(self.0.iter().copied().find(|n| *n == v))
    }
}

/// Any JSON value, parsed as strictly as `Value` parses it (numbers in range, strings valid UTF-8
/// with valid escapes, the nesting limit) and forgotten; allocates nothing.
struct Skip;

/// A string, or any other value (parsed as strictly and forgotten).
struct Text<'a>(Option<Cow<'a, str>>);

impl<'a> Text<'a> {
    fn some(t: Cow<'a, str>) -> Self {
        Text(Some(t))
    }
}

/// Visitor methods for the values a reader forgets (each read with [`Skip`]), giving `$out`.
macro_rules! forget {
    ($out:expr; $($skip:ident),*) => {
        $(forget!(@one $skip, $out);)*
    };
    (@one scalars, $out:expr) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($out)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok($out)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok($out)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok($out)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($out)
        }
    };
    (@one strings, $out:expr) => {
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok($out)
        }
    };
    (@one seqs, $out:expr) => {
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<Skip>()?.is_some() {}
            Ok($out)
        }
    };
    (@one maps, $out:expr) => {
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            while map.next_entry::<Skip, Skip>()?.is_some() {}
            Ok($out)
        }
    };
}

/// Visitor methods taking a string as `$wrap(Cow)`: borrowed from the body when it has no escapes.
macro_rules! text {
    ($wrap:path) => {
        fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
            Ok($wrap(Cow::Borrowed(v)))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok($wrap(Cow::Owned(v.to_owned())))
        }
    };
}

/// A visitor of any JSON value; `expecting` is never shown (every value is accepted).
macro_rules! any_value {
    () => {
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("any JSON value")
        }
    };
}

impl<'de> Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Skip;
            any_value!();
            forget!(Skip; scalars, strings, seqs, maps);
        }
        d.deserialize_any(V)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            any_value!();
            text!(Text::some);
            forget!(Text(None); scalars, seqs, maps);
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Scalar;
            any_value!();
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar::Uint(v))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar::Bool(v))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Scalar, E> {
                Ok(Scalar::Other)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Scalar, E> {
                Ok(Scalar::Other)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Scalar, E> {
                Ok(Scalar::Other)
            }
            forget!(Scalar::Other; strings, seqs, maps);
        }
        d.deserialize_any(V)
    }
}

impl Scalar {
    fn uint(self) -> Option<u64> {
        match self {
            Scalar::Uint(v) => Some(v),
            _ => None,
        }
    }

    fn is_true(self) -> bool {
        matches!(self, Scalar::Bool(true))
    }
}

/// `stream_options`: its `include_usage` if it is an object, else nothing.
struct StreamOptions(Scalar);

impl<'de> Deserialize<'de> for StreamOptions {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StreamOptions;
            any_value!();
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StreamOptions, A::Error> {
                let mut include = Scalar::Other;
                while let Some(key) = map.next_key_seed(Name(&["include_usage"]))? {
                    match key {
                        Some(_) => include = map.next_value()?,
                        None => map.next_value::<Skip>().map(drop)?,
                    }
                }
                Ok(StreamOptions(include))
            }
            forget!(StreamOptions(Scalar::Other); scalars, strings, seqs);
        }
        d.deserialize_any(V)
    }
}

/// `tools` / `tool_calls`: only `null` is read; any other value ends the read (an error), so a
/// request with tools goes to the general path without being parsed to its end first.
struct Null;

impl<'de> Deserialize<'de> for Null {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Null;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("null (tools are counted by the general path)")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Null, E> {
                Ok(Null)
            }
        }
        d.deserialize_any(V)
    }
}

/// The top-level `model`: a string, or `null` for none; any other value ends the read (an error),
/// so the gateway's model peek decides, with its own error.
struct Model<'a>(Option<Cow<'a, str>>);

impl<'de: 'a, 'a> Deserialize<'de> for Model<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Model<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or null")
            }
            text!(Model::some);
            fn visit_unit<E: de::Error>(self) -> Result<Model<'de>, E> {
                Ok(Model(None))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'a> Model<'a> {
    fn some(t: Cow<'a, str>) -> Self {
        Model(Some(t))
    }
}

/// `messages`: an array of messages, anything else none.
struct Messages<'a>(Vec<Message<'a>>);

impl<'de: 'a, 'a> Deserialize<'de> for Messages<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Messages<'de>;
            any_value!();
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Messages<'de>, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(4));
                while let Some(m) = seq.next_element()? {
                    out.push(m);
                }
                Ok(Messages(out))
            }
            forget!(Messages(Vec::new()); scalars, strings, maps);
        }
        d.deserialize_any(V)
    }
}

/// A message; a value that is not an object is a message with nothing in it (as `Value::get`
/// finds nothing in it).
impl<'de: 'a, 'a> Deserialize<'de> for Message<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Message<'de>;
            any_value!();
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Message<'de>, A::Error> {
                let mut m = Message::default();
                const NAMES: &[&str] = &["role", "content", "name", "tool_calls"];
                while let Some(key) = map.next_key_seed(Name(NAMES))? {
                    match key {
                        Some("role") => m.role = map.next_value::<Text<'de>>()?.0,
                        Some("content") => m.content = map.next_value()?,
                        Some("name") => m.name = map.next_value::<Text<'de>>()?.0,
                        Some(_) => map.next_value::<Null>().map(drop)?,
                        None => map.next_value::<Skip>().map(drop)?,
                    }
                }
                Ok(m)
            }
            forget!(Message::default(); scalars, strings, seqs);
        }
        d.deserialize_any(V)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Content<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Content<'de>;
            any_value!();
            text!(Content::Text);
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Content<'de>, A::Error> {
                let mut parts = Vec::new();
                while let Some(p) = seq.next_element()? {
                    parts.push(p);
                }
                Ok(Content::Parts(parts))
            }
            forget!(Content::None; scalars, maps);
        }
        d.deserialize_any(V)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Part<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Part<'de>;
            any_value!();
            text!(Part::Text);
            /// An object: its `text` member if that is a string (the last one, as a parsed
            /// object keeps), else a non-text part.
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Part<'de>, A::Error> {
                let mut text = None;
                while let Some(key) = map.next_key_seed(Name(&["text"]))? {
                    match key {
                        Some(_) => text = map.next_value::<Text<'de>>()?.0,
                        None => map.next_value::<Skip>().map(drop)?,
                    }
                }
                Ok(text.map_or(Part::NonText, Part::Text))
            }
            forget!(Part::Nothing; scalars, seqs);
        }
        d.deserialize_any(V)
    }
}

/// The request: an object (anything else is left to the general path).
impl<'de: 'a, 'a> Deserialize<'de> for Chat<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Chat<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Chat<'de>, A::Error> {
                let mut c = Chat::default();
                let mut model_seen = false;
                const NAMES: &[&str] = &[
                    "model",
                    "messages",
                    "tools",
                    "max_tokens",
                    "max_completion_tokens",
                    "n",
                    "stream",
                    "stream_options",
                ];
                while let Some(key) = map.next_key_seed(Name(NAMES))? {
                    match key {
                        // A repeated `model` is an error to the model peek: leave it to that.
                        Some("model") if std::mem::replace(&mut model_seen, true) => {
                            return Err(de::Error::custom("duplicate field `model`"));
                        }
                        Some("model") => c.model = map.next_value::<Model<'de>>()?.0,
                        Some("messages") => c.messages = map.next_value::<Messages<'de>>()?.0,
                        Some("tools") => map.next_value::<Null>().map(drop)?,
                        Some("max_tokens") => c.max_tokens = map.next_value()?,
                        Some("max_completion_tokens") => {
                            c.max_completion_tokens = map.next_value()?;
                        }
                        Some("n") => c.n = map.next_value()?,
                        Some("stream") => c.stream = map.next_value()?,
                        Some(_) => c.include_usage = map.next_value::<StreamOptions>()?.0,
                        None => map.next_value::<Skip>().map(drop)?,
                    }
                }
                Ok(c)
            }
        }
        d.deserialize_map(V)
    }
}

impl Content<'_> {
    fn tokens(&self, tk: Tokenizer) -> u64 {
        match self {
            Content::None => 0,
            Content::Text(t) => tk.text(t),
            Content::Parts(parts) => parts
                .iter()
                .map(|p| match p {
                    Part::Text(t) => tk.text(t),
                    Part::NonText => NON_TEXT_PART,
                    Part::Nothing => 0,
                })
                .sum(),
        }
    }
}

/// The estimate of a chat request on `vendor`'s chat surface, exactly as the general path gives
/// it; `None` when the body is not a JSON object, carries tools or tool calls, or has a `model`
/// that is neither a string nor `null`, or more than one (the general path decides then).
pub(crate) fn estimate(vendor: Vendor, model: &str, body: &[u8]) -> Option<RequestCost> {
    ChatRead::parse(body).map(|read| read.estimate(vendor, model))
}

/// A plain chat request read once, for both its `model` (the gateway routes by it before it knows
/// the provider, and so the tokenizer) and then its estimate: one parse of the body instead of a
/// model peek and then the estimate's own.
pub struct ChatRead<'a> {
    chat: Chat<'a>,
}

impl<'a> ChatRead<'a> {
    /// `None` when the body is not a plain chat request this reader takes (see [`estimate`]); the
    /// caller then reads the model and the estimate the general way, as if this had not run.
    pub fn parse(body: &'a [u8]) -> Option<Self> {
        let chat: Chat<'_> = super::extract::from_json(body).ok()?;
        Some(ChatRead { chat })
    }

    /// The top-level `model` when it is a string (`None` when absent or `null`), as the
    /// gateway's model peek reads it.
    pub fn model(&self) -> Option<&str> {
        self.chat.model.as_deref()
    }

    /// The estimate on `vendor`'s chat surface for `model`: what [`crate::estimate`] gives for
    /// the same body.
    pub fn estimate(&self, vendor: Vendor, model: &str) -> RequestCost {
        let chat = &self.chat;
        let tk = vendor.tokenizer(model);
        let mut prompt = REPLY_PRIMING;
        for m in &chat.messages {
            prompt += PER_MESSAGE + m.content.tokens(tk);
            // The BPE recipe counts the role; the approximation does not.
            if let Some(role) = m.role.as_deref().filter(|_| tk.is_bpe()) {
                prompt += tk.text(role);
            }
            if let Some(name) = &m.name {
                prompt += PER_NAME + tk.text(name);
            }
        }
        let choices = chat.n.uint().unwrap_or(1).max(1);
        let cap = (chat.max_completion_tokens.uint()).or_else(|| chat.max_tokens.uint());
        RequestCost {
            prompt_tokens: prompt,
            max_completion: cap.map(|c| c.saturating_mul(choices)),
            choices,
            stream: chat.stream.is_true(),
            wants_usage: chat.include_usage.is_true(),
            incremental: false,
        }
    }
}

/// The body's top-level `model` as the gateway's model peek reads it, the reference [`ChatRead`]
/// matches: a string or `null`/absent; an error for any other value, a repeated `model`, or a
/// body that is not a JSON object (or array: serde reads a struct from either).
pub fn peek_model(body: &[u8]) -> serde_json::Result<Option<Cow<'_, str>>> {
    #[derive(Deserialize)]
    struct Peek<'a> {
        #[serde(borrow, default)]
        model: Option<Cow<'a, str>>,
    }
    super::extract::from_json::<Peek<'_>>(body).map(|p| p.model)
}
