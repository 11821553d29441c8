//! The JSON log format (`--log-format json`): one object per line with `timestamp`, `level`, `target`
//! and the event's fields flattened, plus the ids that tie the line to a request and its trace —
//! `trace_id`, `span_id`, `request_id` — as top-level keys whenever they are known.
//!
//! An id comes from the event itself when it has a field of that name (the proxy writes them on its
//! request lines explicitly, see `leaky_proxy::log_ids`), else from the innermost enclosing `tracing`
//! span that recorded a field of that name (the control plane's and the analytics role's per-request
//! and per-message spans do). Each id is looked up on its own, innermost first, so a child span that
//! records only `span_id` keeps its parent's `trace_id` and `request_id`.
//!
//! [`IdsLayer`] copies those three fields of a span into its extensions when it is created or
//! recorded into (spans without them cost one scan of their field names); [`JsonLines`] reads them
//! when a line is written. Nothing is done for a line the filter drops.

use serde::ser::{SerializeMap, Serializer as _};
use std::fmt;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// The id fields, in the order a line lists them.
pub const ID_FIELDS: [&str; 3] = ["trace_id", "span_id", "request_id"];

fn id_index(name: &str) -> Option<usize> {
    ID_FIELDS.iter().position(|f| *f == name)
}

/// The ids a span recorded (in [`ID_FIELDS`] order), kept in its extensions.
#[derive(Default, Debug, PartialEq)]
struct SpanIds([Option<Box<str>>; 3]);

impl SpanIds {
    fn is_empty(&self) -> bool {
        self.0.iter().all(Option::is_none)
    }
}

/// Records the id fields of a span (ignores the rest).
struct IdVisitor<'a>(&'a mut SpanIds);

impl IdVisitor<'_> {
    fn set(&mut self, field: &Field, value: String) {
        if let Some(i) = id_index(field.name()) {
            // An id recorded empty is no id.
            self.0 .0[i] = (!value.is_empty()).then(|| value.into_boxed_str());
        }
    }
}

impl Visit for IdVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if id_index(field.name()).is_some() {
            self.set(field, value.to_owned());
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if id_index(field.name()).is_some() {
            self.set(field, value.to_string());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if id_index(field.name()).is_some() {
            // `%id` arrives here as its Display; a `?string` would carry Debug's quotes.
            let s = format!("{value:?}");
            let s = match s.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
                Some(inner) => inner.to_owned(),
                None => s,
            };
            self.set(field, s);
        }
    }
}

/// Keeps each span's `trace_id` / `span_id` / `request_id` where [`JsonLines`] finds them.
pub struct IdsLayer;

impl<S> Layer<S> for IdsLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if !attrs.fields().iter().any(|f| id_index(f.name()).is_some()) {
            return;
        }
        let mut ids = SpanIds::default();
        attrs.record(&mut IdVisitor(&mut ids));
        if let Some(span) = ctx.span(id) {
            // Inserted even when still empty: ids declared `Empty` are recorded later.
            span.extensions_mut().insert(ids);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut ext = span.extensions_mut();
        if let Some(ids) = ext.get_mut::<SpanIds>() {
            values.record(&mut IdVisitor(ids));
            return;
        }
        let mut ids = SpanIds::default();
        values.record(&mut IdVisitor(&mut ids));
        if !ids.is_empty() {
            ext.insert(ids);
        }
    }
}

/// `FormatEvent` of the JSON format; use with [`IdsLayer`] in the same subscriber (see [`init`]).
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        // Events from the `log` crate (Pingora's) carry their real target in `log.target`.
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        let mut ser = serde_json::Serializer::new(FmtWrite(&mut writer));
        let mut map = ser.serialize_map(None).map_err(|_| fmt::Error)?;
        let head = [
            ("timestamp", timestamp.as_str()),
            ("level", meta.level().as_str()),
            ("target", meta.target()),
        ];
        for (k, v) in head {
            map.serialize_entry(k, v).map_err(|_| fmt::Error)?;
        }
        let mut fields = EventFields {
            map: &mut map,
            seen: [false; 3],
            result: Ok(()),
        };
        event.record(&mut fields);
        let EventFields { seen, result, .. } = fields;
        result.map_err(|_| fmt::Error)?;
        if seen.contains(&false) {
            write_span_ids(ctx, seen, &mut map)?;
        }
        map.end().map_err(|_| fmt::Error)?;
        writeln!(writer)
    }
}

/// The ids the event did not carry itself, each from the innermost span that recorded it.
fn write_span_ids<S, N, M>(
    ctx: &FmtContext<'_, S, N>,
    mut seen: [bool; 3],
    map: &mut M,
) -> fmt::Result
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
    M: SerializeMap,
{
    let Some(scope) = ctx.event_scope() else {
        return Ok(());
    };
    for span in scope {
        let ext = span.extensions();
        let Some(ids) = ext.get::<SpanIds>() else {
            continue;
        };
        for (i, id) in ids.0.iter().enumerate() {
            if let (false, Some(v)) = (seen[i], id) {
                map.serialize_entry(ID_FIELDS[i], &**v)
                    .map_err(|_| fmt::Error)?;
                seen[i] = true;
            }
        }
        if !seen.contains(&false) {
            break;
        }
    }
    Ok(())
}

/// Writes an event's fields into the line's map (the message as `message`), noting which ids it had.
struct EventFields<'m, M> {
    map: &'m mut M,
    seen: [bool; 3],
    result: Result<(), ()>,
}

impl<M: SerializeMap> EventFields<'_, M> {
    fn entry<V: serde::Serialize + ?Sized>(&mut self, field: &Field, value: &V) {
        let name = field.name();
        // `log` crate metadata went into `target` above.
        if self.result.is_err() || name.starts_with("log.") {
            return;
        }
        if let Some(i) = id_index(name) {
            self.seen[i] = true;
        }
        let key = name.strip_prefix("r#").unwrap_or(name);
        self.result = self.map.serialize_entry(key, value).map_err(|_| ());
    }
}

impl<M: SerializeMap> Visit for EventFields<'_, M> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.entry(field, value);
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.entry(field, &value);
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.entry(field, &value);
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.entry(field, &value);
    }
    fn record_i128(&mut self, field: &Field, value: i128) {
        self.entry(field, &value);
    }
    fn record_u128(&mut self, field: &Field, value: u128) {
        self.entry(field, &value);
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.entry(field, &value);
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.entry(field, &value.to_string());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.entry(field, &format!("{value:?}"));
    }
}

/// `io::Write` over the formatter's `fmt::Write` (serde_json writes whole UTF-8 strings).
struct FmtWrite<'a, 'w>(&'a mut Writer<'w>);

impl std::io::Write for FmtWrite<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let s = std::str::from_utf8(buf)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        fmt::Write::write_str(self.0, s).map_err(std::io::Error::other)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the JSON format on stderr as the global subscriber (and `log` records through it).
pub fn init(filter: tracing_subscriber::EnvFilter) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let lines = tracing_subscriber::fmt::layer()
        .event_format(JsonLines)
        .with_writer(std::io::stderr);
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(IdsLayer)
        .with(lines)
        .try_init();
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests;
