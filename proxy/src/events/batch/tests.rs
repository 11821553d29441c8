#![allow(clippy::unwrap_used)]

use super::*;

fn event(i: usize) -> Event {
    Event {
        key: format!("org-{i}"),
        traceparent: i
            .is_multiple_of(2)
            .then(|| format!("00-{i:032x}-{i:016x}-01")),
        payload: format!("{{\"n\":{i}}}"),
    }
}

fn push(b: &mut Batch, e: &Event) -> bool {
    b.push(&e.key, e.traceparent.as_deref(), |buf| {
        buf.extend_from_slice(e.payload.as_bytes());
        true
    })
}

#[test]
fn events_come_back_in_order_with_their_parts() {
    let mut b = Batch::default();
    let events: Vec<Event> = (0..5).map(event).collect();
    for e in &events {
        assert!(push(&mut b, e));
    }
    assert_eq!(b.len(), 5);
    let back: Vec<Event> = b.iter().map(|e| e.to_event().unwrap()).collect();
    assert_eq!(back, events);
    assert_eq!(b.get(1), Some(events[1].borrowed()));
    assert_eq!(b.get(5), None);
}

/// An empty `traceparent` is kept as sent, distinct from none.
#[test]
fn an_empty_traceparent_is_not_none() {
    let mut b = Batch::default();
    b.push("k", Some(""), |_| true);
    b.push("k", None, |_| true);
    assert_eq!(b.get(0).unwrap().traceparent, Some(&b""[..]));
    assert_eq!(b.get(1).unwrap().traceparent, None);
}

/// A payload that fails to encode leaves nothing behind: the next event is intact.
#[test]
fn a_failed_push_leaves_no_trace() {
    let mut b = Batch::default();
    assert!(push(&mut b, &event(0)));
    assert!(!b.push("half", Some("tp"), |buf| {
        buf.extend_from_slice(b"{\"trunc");
        false
    }));
    assert!(push(&mut b, &event(1)));
    let back: Vec<Event> = b.iter().map(|e| e.to_event().unwrap()).collect();
    assert_eq!(back, vec![event(0), event(1)]);
}

#[test]
fn append_keeps_both_batches_in_order() {
    let (mut a, mut b) = (Batch::default(), Batch::default());
    (0..3).for_each(|i| assert!(push(&mut a, &event(i))));
    (3..7).for_each(|i| assert!(push(&mut b, &event(i))));
    a.append(&b);
    let back: Vec<Event> = a.iter().map(|e| e.to_event().unwrap()).collect();
    assert_eq!(back, (0..7).map(event).collect::<Vec<_>>());
}

/// A returned batch comes back empty with its capacity; a huge one and one past the pool's size
/// are freed.
#[test]
fn the_pool_reuses_buffers_within_bounds() {
    let pool = Pool::default();
    let mut b = pool.take();
    (0..100).for_each(|i| assert!(push(&mut b, &event(i))));
    let cap = b.buf.capacity();
    pool.give(b);
    let again = pool.take();
    assert!(again.is_empty());
    assert_eq!(again.buf.capacity(), cap);

    let mut huge = Batch::default();
    huge.buf.reserve(KEEP_AT_MOST + 1);
    pool.give(huge);
    assert_eq!(pool.take().buf.capacity(), 0);

    (0..POOL + 1).for_each(|_| pool.give(Batch::default()));
    assert_eq!(pool.0.len(), POOL);
}
