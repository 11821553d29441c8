#![allow(clippy::unwrap_used)]

use super::*;

fn event(i: usize) -> Event {
    Event {
        key: "acme".into(),
        traceparent: i
            .is_multiple_of(2)
            .then(|| format!("00-{i:032x}-{i:016x}-01")),
        payload: format!("{{\"n\":{i}}}"),
    }
}

/// Drains the spool in peeks of `n`, delivering everything.
fn drain(s: &mut Spool, n: usize) -> Vec<Event> {
    let mut out = Vec::new();
    while !s.is_empty() {
        let batch = s.peek(n).unwrap();
        let positions: Vec<usize> = batch.iter().map(|(i, _)| *i).collect();
        out.extend(batch.into_iter().map(|(_, e)| e));
        s.delivered(&positions).unwrap();
    }
    out
}

#[test]
fn replays_in_order_across_segments_and_deletes_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Spool::open(dir.path(), u64::MAX).unwrap();
    // Enough events to fill more than one segment.
    let big = "x".repeat(4096);
    let events: Vec<Event> = (0..600)
        .map(|i| Event {
            payload: format!("{i}{big}"),
            ..event(i)
        })
        .collect();
    for e in &events {
        assert!(s.append(e).unwrap());
    }
    assert!(
        fs::read_dir(dir.path()).unwrap().count() > 2,
        "several segments (and the lock)"
    );
    assert_eq!(drain(&mut s, 100), events);
    assert_eq!(s.bytes(), 0);
    // Only the owner's lock file is left.
    let left: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, [".lock"]);
}

#[test]
fn a_partly_delivered_batch_keeps_the_rest_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Spool::open(dir.path(), u64::MAX).unwrap();
    for i in 0..5 {
        s.append(&event(i)).unwrap();
    }
    let batch = s.peek(5).unwrap();
    // 0, 2 and 4 went through, 1 and 3 failed.
    s.delivered(&[batch[0].0, batch[2].0, batch[4].0]).unwrap();
    let again: Vec<Event> = s.peek(5).unwrap().into_iter().map(|(_, e)| e).collect();
    assert_eq!(again, [event(1), event(3)]);
    // Appends during replay land behind, in a new segment.
    s.append(&event(5)).unwrap();
    assert_eq!(drain(&mut s, 2), [event(1), event(3), event(5)]);
}

#[test]
fn a_full_spool_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let line = serde_json::to_vec(&event(1)).unwrap().len() as u64 + 1;
    let mut s = Spool::open(dir.path(), line * 2).unwrap();
    assert!(s.append(&event(1)).unwrap());
    assert!(s.append(&event(1)).unwrap());
    assert!(!s.append(&event(1)).unwrap());
    assert_eq!(s.bytes(), line * 2);
}

#[test]
fn a_reopened_spool_picks_up_what_was_left() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = Spool::open(dir.path(), u64::MAX).unwrap();
        for i in 0..3 {
            s.append(&event(i)).unwrap();
        }
    }
    let mut s = Spool::open(dir.path(), u64::MAX).unwrap();
    assert!(!s.is_empty());
    s.append(&event(3)).unwrap();
    assert_eq!(drain(&mut s, 10), (0..4).map(event).collect::<Vec<_>>());
}

#[test]
fn one_process_at_a_time_holds_a_spool() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = Spool::try_open(dir.path(), u64::MAX).unwrap().unwrap();
    first.append(&event(0)).unwrap();
    assert!(Spool::try_open(dir.path(), u64::MAX).unwrap().is_none());
    // The waiting opener gets it once the holder is gone, with what the holder left.
    let path = dir.path().to_path_buf();
    let waiting = std::thread::spawn(move || Spool::open(&path, u64::MAX).unwrap());
    drop(first);
    let mut second = waiting.join().unwrap();
    assert_eq!(drain(&mut second, 10), vec![event(0)]);
}
