//! Example bodies of the ledger's admin routes, for the OpenAPI document.

use serde_json::{json, Value};

use crate::apidoc::examples::ORG;

pub fn balance() -> Value {
    json!({
        "org": ORG, "tokens": 880000, "purchased": 1000000, "granted": 50000, "consumed": 120000,
        "refunded": 0, "expired": 50000, "version": 42, "as_of": "2026-03-01T12:00:00Z"
    })
}

pub fn grant_body() -> Value {
    json!({ "tokens": 50000, "reason": "support credit for incident 1234", "expires_at": "2026-06-30T00:00:00Z" })
}

pub fn granted() -> Value {
    json!({
        "id": "5b0d7c1e-2f3a-4b5c-9d6e-7f8a9b0c1d2e", "org": ORG, "version": 43, "kind": "granted",
        "tokens": 50000, "ref": "grant:4f1c2e7a-support-1234", "expires_at": "2026-06-30T00:00:00Z",
        "occurred_at": "2026-03-01T12:00:00Z",
        "data": { "reason": "support credit for incident 1234", "actor": "admin", "repaid": 0 }
    })
}

pub fn page() -> Value {
    json!({
        "items": [
            {
                "id": "6c1e8d2f-3a4b-4c5d-8e6f-8a9b0c1d2e3f", "org": ORG, "version": 42, "kind": "consumed",
                "tokens": 1200, "ref": "req-01J9Z3K4", "occurred_at": "2026-03-01T11:59:58Z",
                "data": { "draws": [{ "block": "5b0d7c1e-2f3a-4b5c-9d6e-7f8a9b0c1d2e", "tokens": 1200 }], "overdraft": 0 }
            }
        ],
        "next": "42"
    })
}
