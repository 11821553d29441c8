#![allow(clippy::unwrap_used)]

use super::*;

/// A record built through the wire format, so new optional fields need no change here.
fn record(n: usize) -> UsageRecord {
    serde_json::from_value(serde_json::json!({
        "schema_version": 1, "request_id": format!("req_{n}"), "principal": "k", "user": "u",
        "org": "acme", "tier": "pro", "route": "v1", "model": "m", "provider": "openai",
        "prompt_tokens": 1, "completion_tokens": 2, "source": "reported", "status": 200,
        "latency_ms": 1.5
    }))
    .unwrap()
}

/// The drain's handle without a producer: the publisher's end of the channel is returned instead.
fn events(waiting: usize) -> (Events, mpsc::Receiver<batch::Batch>) {
    let (tx, rx) = mpsc::channel(CHANNEL);
    let (_, done) = std_mpsc::channel();
    let events = Events {
        tx,
        waiting: Arc::new(AtomicUsize::new(waiting)),
        pool: Arc::default(),
        encoder: Mutex::new(encode::Encoder::new("/test".into())),
        stop: Arc::new(Notify::new()),
        stopped: Mutex::new(Some(done)),
    };
    (events, rx)
}

/// One drain's events reach the publisher as one message, in order; an empty drain sends nothing.
#[test]
fn a_drain_is_one_message() {
    let (ev, mut rx) = events(0);
    {
        let mut s = ev.session();
        (0..3).for_each(|n| s.offer(&record(n)));
    }
    let b = rx.try_recv().unwrap();
    assert!(rx.try_recv().is_err());
    assert_eq!(ev.waiting.load(Ordering::Relaxed), 3);
    let ids: Vec<String> = b
        .iter()
        .map(|e| {
            let v: serde_json::Value = serde_json::from_slice(e.payload).unwrap();
            v["subject"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(ids, ["req_0", "req_1", "req_2"]);
    drop(ev.session());
    assert!(rx.try_recv().is_err());
}

/// Past [`CHANNEL`] events waiting for the publisher, a drain keeps only what fits.
#[test]
fn the_backlog_bound_drops_the_excess() {
    let (ev, mut rx) = events(CHANNEL - 2);
    {
        let mut s = ev.session();
        (0..5).for_each(|n| s.offer(&record(n)));
    }
    assert_eq!(rx.try_recv().unwrap().len(), 2);
    assert_eq!(ev.waiting.load(Ordering::Relaxed), CHANNEL);
    {
        let mut s = ev.session();
        s.offer(&record(9));
    }
    assert!(rx.try_recv().is_err());
}
