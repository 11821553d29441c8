//! Idempotency keys, per API key: the first request with a key runs, later
//! ones with the same key and the same parameters get its stored response
//! byte-for-byte (`Idempotent-Replayed: true`), with other parameters a 400
//! `idempotency_key_in_use`.
//!
//! Concurrent requests with one key **wait** for the first to finish (a
//! per-key async mutex) and then replay its result, so a burst of retries has
//! exactly one effect and every caller sees the real outcome. 5xx answers
//! without effect are not stored (a retry runs again); apply-then-fail
//! stores the real result (the effect happened) and only the wire sees 500.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::model::Reply;

/// The stored outcome of a key's first request.
#[derive(Clone, Debug)]
pub struct Stored {
    pub fingerprint: String,
    pub reply: Reply,
}

pub type Slot = Arc<tokio::sync::Mutex<Option<Stored>>>;

/// Slots by (API key, idempotency key).
#[derive(Default)]
pub struct Keys {
    slots: Mutex<HashMap<(String, String), Slot>>,
}

impl Keys {
    pub fn slot(&self, api_key: &str, key: &str) -> Slot {
        let mut map = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        map.entry((api_key.to_string(), key.to_string()))
            .or_default()
            .clone()
    }

    pub fn reset(&self) {
        self.slots.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// What "the same request" means: the path and the parameters, compared as
/// JSON values (key order and whitespace do not matter).
pub fn fingerprint(path: &str, body: &[u8]) -> String {
    let params = if body.iter().all(u8::is_ascii_whitespace) {
        "{}".to_string()
    } else {
        match serde_json::from_slice::<Value>(body) {
            Ok(v) => v.to_string(),
            Err(_) => String::from_utf8_lossy(body).into_owned(),
        }
    };
    format!("POST {path} {params}")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_ignore_key_order_and_whitespace() {
        let a = fingerprint("/v1/refunds", br#"{"a":1,"b":"x"}"#);
        let b = fingerprint("/v1/refunds", br#"{ "b": "x", "a": 1 }"#);
        assert_eq!(a, b);
        assert_ne!(a, fingerprint("/v1/refunds", br#"{"a":2,"b":"x"}"#));
        assert_eq!(fingerprint("/p", b""), fingerprint("/p", b"{}"));
    }

    #[test]
    fn slots_are_per_api_key() {
        let k = Keys::default();
        assert!(Arc::ptr_eq(
            &k.slot("sk_test_a", "k1"),
            &k.slot("sk_test_a", "k1")
        ));
        assert!(!Arc::ptr_eq(
            &k.slot("sk_test_a", "k1"),
            &k.slot("sk_test_b", "k1")
        ));
    }
}
