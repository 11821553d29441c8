//! The field formatter of the text log format: `message name=value …` as tracing-subscriber's default
//! writes it, except that every value (and the message) is escaped, so one event is always one line.
//! Values come from callers (a model name, a path, an upstream error): a CR/LF in one must never start
//! a forged line, and a terminal escape must never reach an operator's terminal. Control characters are
//! written as `\n`, `\r`, `\t` or `\u{..}`. The JSON format needs none of this: serde escapes strings.

use std::fmt::{self, Write};
use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::FormatFields;

/// `FormatFields` for `tracing_subscriber::fmt().fmt_fields(EscapedFields)`.
pub struct EscapedFields;

impl<'writer> FormatFields<'writer> for EscapedFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut v = Visitor {
            out: writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut v);
        v.result
    }
}

struct Visitor<'w> {
    out: Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl Visitor<'_> {
    fn field(&mut self, field: &Field, value: fmt::Arguments<'_>) {
        let name = field.name();
        // `log` crate metadata (target, file, line) already went into the line's prefix.
        if self.result.is_err() || name.starts_with("log.") {
            return;
        }
        let sep = if self.first { "" } else { " " };
        self.first = false;
        let out = &mut self.out;
        self.result = (|| {
            out.write_str(sep)?;
            if name != "message" {
                out.write_str(name.strip_prefix("r#").unwrap_or(name))?;
                out.write_char('=')?;
            }
            Escape(out).write_fmt(value)
        })();
    }
}

impl Visit for Visitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        // Like the default formatter: a plain string field is quoted, the message is not.
        if field.name() == "message" {
            self.field(field, format_args!("{value}"));
        } else {
            self.field(field, format_args!("{value:?}"));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.field(field, format_args!("{value:?}"));
    }
}

/// Writes through to `W`, escaping control characters (and the Unicode line separators).
struct Escape<'a, W: Write>(&'a mut W);

impl<W: Write> Write for Escape<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut rest = s;
        while let Some(at) = rest.find(needs_escape) {
            self.0.write_str(&rest[..at])?;
            let mut chars = rest[at..].chars();
            let Some(ch) = chars.next() else { break };
            match ch {
                '\n' => self.0.write_str("\\n")?,
                '\r' => self.0.write_str("\\r")?,
                '\t' => self.0.write_str("\\t")?,
                ch => write!(self.0, "\\u{{{:x}}}", ch as u32)?,
            }
            rest = chars.as_str();
        }
        self.0.write_str(rest)
    }
}

fn needs_escape(ch: char) -> bool {
    ch.is_control() || matches!(ch, '\u{2028}' | '\u{2029}')
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn text_log(emit: impl FnOnce()) -> String {
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .fmt_fields(EscapedFields)
            .with_writer(move || out.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
        let bytes = buf.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn a_field_with_control_characters_stays_on_its_line() {
        let model = "gpt-4o\r\nFORGED usage: total_tokens=0\u{1b}[2J\u{2028}x";
        let log = text_log(|| {
            tracing::info!(target: "usage", model = %model, org = "a\nb", n = 3, "usage\nFORGED");
        });
        assert_eq!(log.lines().count(), 1, "{log}");
        assert!(!log.contains('\u{1b}'), "{log}");
        assert!(
            log.contains(r#"usage\nFORGED model=gpt-4o\r\nFORGED usage: total_tokens=0\u{1b}[2J\u{2028}x org="a\nb" n=3"#),
            "{log}"
        );
    }

    #[test]
    fn ordinary_fields_look_like_the_default_format() {
        let log =
            text_log(|| tracing::info!(route = %"v1", model = "gpt-4o", status = 200, "request"));
        assert!(
            log.trim_end()
                .ends_with(r#"request route=v1 model="gpt-4o" status=200"#),
            "{log}"
        );
    }
}
