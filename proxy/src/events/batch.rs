//! One drain's events as one unit: what the drain hands to the publisher in a single channel send.
//!
//! Issue #15's goal is the producer within 5% of the gateway's CPU, so the per-event costs between
//! the drain and librdkafka are what this type removes: one channel send and one publisher wake-up
//! per drain instead of per event, and no allocation per event: every event's key, `traceparent`
//! and JSON payload are written back to back into one byte buffer, with a [`Span`] per event. The
//! publisher returns a sent batch to a small free list ([`Pool`]), so the next drain writes into
//! a buffer that already has the capacity (librdkafka copies what it is given, so a buffer can be
//! reused as soon as its batch's deliveries are reported).

use super::Event;
use crossbeam_queue::ArrayQueue;
use std::ops::Range;

/// Free batches kept for reuse: the drain's next one and one more while the publisher sends.
const POOL: usize = 2;
/// A batch whose buffer grew past this (a burst) is freed rather than kept: the steady state of
/// 50 ms drains needs far less (about 700 bytes an event).
const KEEP_AT_MOST: usize = 4 * 1024 * 1024;

/// Where one event's parts are in [`Batch::buf`].
#[derive(Debug, Clone)]
struct Span {
    key: Range<usize>,
    /// `None`: the record carried no `traceparent` (an empty one is kept as sent).
    traceparent: Option<Range<usize>>,
    payload: Range<usize>,
}

/// Encoded events sharing one buffer, in the drain's order.
#[derive(Debug, Default)]
pub struct Batch {
    buf: Vec<u8>,
    spans: Vec<Span>,
}

/// One event of a batch (or of the spool), borrowed: what the producer sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventRef<'a> {
    pub key: &'a [u8],
    pub traceparent: Option<&'a [u8]>,
    pub payload: &'a [u8],
}

impl EventRef<'_> {
    /// The owned event, for the spool (only failed deliveries take this path). `None` if a part is
    /// not UTF-8, which the encoder never writes.
    pub fn to_event(self) -> Option<Event> {
        let text = |b: &[u8]| String::from_utf8(b.to_vec()).ok();
        Some(Event {
            key: text(self.key)?,
            traceparent: match self.traceparent {
                Some(tp) => Some(text(tp)?),
                None => None,
            },
            payload: text(self.payload)?,
        })
    }
}

impl Event {
    /// The event as the producer sends it (spool replays).
    pub fn borrowed(&self) -> EventRef<'_> {
        EventRef {
            key: self.key.as_bytes(),
            traceparent: self.traceparent.as_deref().map(str::as_bytes),
            payload: self.payload.as_bytes(),
        }
    }
}

impl Batch {
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The `i`th event.
    pub fn get(&self, i: usize) -> Option<EventRef<'_>> {
        let s = self.spans.get(i)?;
        Some(EventRef {
            key: self.buf.get(s.key.clone())?,
            traceparent: match &s.traceparent {
                Some(r) => Some(self.buf.get(r.clone())?),
                None => None,
            },
            payload: self.buf.get(s.payload.clone())?,
        })
    }

    pub fn iter(&self) -> impl Iterator<Item = EventRef<'_>> + '_ {
        (0..self.len()).filter_map(|i| self.get(i))
    }

    /// Appends one event: its key and `traceparent` are copied, `payload` writes the JSON into the
    /// buffer. When `payload` fails, everything it wrote is removed and `false` returned.
    pub fn push(
        &mut self,
        key: &str,
        traceparent: Option<&str>,
        payload: impl FnOnce(&mut Vec<u8>) -> bool,
    ) -> bool {
        let start = self.buf.len();
        self.buf.extend_from_slice(key.as_bytes());
        let key = start..self.buf.len();
        let traceparent = traceparent.map(|tp| {
            let at = self.buf.len();
            self.buf.extend_from_slice(tp.as_bytes());
            at..self.buf.len()
        });
        let at = self.buf.len();
        if !payload(&mut self.buf) {
            self.buf.truncate(start);
            return false;
        }
        let payload = at..self.buf.len();
        self.spans.push(Span {
            key,
            traceparent,
            payload,
        });
        true
    }

    /// Appends every event of `other` (the shutdown flush sends what the channel holds as one).
    pub fn append(&mut self, other: &Batch) {
        let shift = self.buf.len();
        let moved = |r: &Range<usize>| r.start + shift..r.end + shift;
        self.buf.extend_from_slice(&other.buf);
        self.spans.extend(other.spans.iter().map(|s| Span {
            key: moved(&s.key),
            traceparent: s.traceparent.as_ref().map(moved),
            payload: moved(&s.payload),
        }));
    }

    fn clear(&mut self) {
        self.buf.clear();
        self.spans.clear();
    }
}

/// Sent batches, emptied, for the next drains (lock-free; shared by the drain and the publisher).
pub struct Pool(ArrayQueue<Batch>);

impl Default for Pool {
    fn default() -> Self {
        Pool(ArrayQueue::new(POOL))
    }
}

impl Pool {
    /// An empty batch, reused when one is free.
    pub fn take(&self) -> Batch {
        self.0.pop().unwrap_or_default()
    }

    /// Keeps `b` for a later [`Pool::take`] unless the pool is full or `b` grew too large.
    pub fn give(&self, mut b: Batch) {
        if b.buf.capacity() <= KEEP_AT_MOST {
            b.clear();
            let _ = self.0.push(b);
        }
    }
}

#[cfg(test)]
mod tests;
