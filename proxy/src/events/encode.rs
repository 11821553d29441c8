//! The usage drain's event encoder: one [`Event`] per record without building an owned envelope.
//!
//! The drain encodes every request's event, so this is per-request CPU (issue #15's goal: the
//! producer within 5% of the gateway's CPU). The envelope is serialized from borrowed fields
//! ([`UsageEventRef`]), the id is formatted on the stack, and the RFC 3339 time reuses the date and
//! clock part formatted once per second; the payload is written into the drain's [`Batch`], whose
//! buffer is reused from drain to drain (no allocation per event).

use super::batch::Batch;
use super::Event;
use leaky_wire::event::{usage_key, UsageEventRef};
use leaky_wire::UsageRecord;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Encodes usage events; one per drain (not shared: it keeps caches).
pub struct Encoder {
    /// The envelopes' CloudEvents `source`.
    source: String,
    /// The second [`Self::prefix`] was formatted for.
    second: Option<i64>,
    /// `YYYY-MM-DDTHH:MM:SS` of that second.
    prefix: String,
    /// The current event's time (reused: cleared, never shrunk).
    time: String,
}

impl Encoder {
    pub fn new(source: String) -> Self {
        Encoder {
            source,
            second: None,
            prefix: String::new(),
            time: String::with_capacity(32),
        }
    }

    /// Appends `r`'s event at the current UTC time with a fresh id (kept across retries and
    /// replays) to `batch`; `false` if it could not be encoded (nothing is appended then).
    pub fn usage(&mut self, r: &UsageRecord, batch: &mut Batch) -> bool {
        let id = uuid::Uuid::new_v4();
        self.encode_into(r, id, OffsetDateTime::now_utc(), batch)
    }

    /// `r`'s event with the given id and time, as its own [`Event`] (the tests fix both).
    pub fn encode(&mut self, r: &UsageRecord, id: uuid::Uuid, at: OffsetDateTime) -> Option<Event> {
        let mut batch = Batch::default();
        if !self.encode_into(r, id, at, &mut batch) {
            return None;
        }
        batch.get(0)?.to_event()
    }

    /// Appends `r`'s event with the given id and time to `batch`: the JSON is written straight
    /// into the batch's (reused) buffer.
    pub fn encode_into(
        &mut self,
        r: &UsageRecord,
        id: uuid::Uuid,
        at: OffsetDateTime,
        batch: &mut Batch,
    ) -> bool {
        if self.format_time(at).is_none() {
            return false;
        }
        let mut id_buf = uuid::Uuid::encode_buffer();
        let id = id.hyphenated().encode_lower(&mut id_buf);
        let event = UsageEventRef::new(r, id, &self.source, &self.time);
        batch.push(usage_key(r), r.traceparent.as_deref(), |buf| {
            serde_json::to_writer(buf, &event).is_ok()
        })
    }

    /// Writes `at` into [`Self::time`] exactly as `time`'s RFC 3339 format does (UTC: `Z`, the
    /// fraction without trailing zeros, none when it is zero); the seconds part is cached.
    fn format_time(&mut self, at: OffsetDateTime) -> Option<()> {
        let second = at.unix_timestamp();
        if self.second != Some(second) {
            let whole = at.replace_nanosecond(0).ok()?.format(&Rfc3339).ok()?;
            self.prefix.clear();
            self.prefix.push_str(whole.strip_suffix('Z')?);
            self.second = Some(second);
        }
        self.time.clear();
        self.time.push_str(&self.prefix);
        let nanos = at.nanosecond();
        if nanos != 0 {
            let mut digits = [b'0'; 9];
            let mut n = nanos;
            for d in digits.iter_mut().rev() {
                *d = b'0' + (n % 10) as u8;
                n /= 10;
            }
            let len = 9 - digits.iter().rev().take_while(|&&d| d == b'0').count();
            self.time.push('.');
            self.time
                .push_str(std::str::from_utf8(&digits[..len]).ok()?);
        }
        self.time.push('Z');
        Some(())
    }
}

#[cfg(test)]
mod tests;
