//! The payment provider stub over real sockets: the Stripe-shaped contract,
//! idempotency keys, every fault kind and signed webhooks delivered to a
//! real receiver.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode as AxumStatus};
use leaky_stubs::payment::{
    delivery_delay, verify_signature, PaymentConfig, PaymentFaults, SignatureError, WebhookConfig,
};
use leaky_stubs::Latency;
use reqwest::{Client, RequestBuilder, StatusCode};
use serde_json::{json, Value};

const KEY: &str = "sk_test_h7";

fn test_config() -> PaymentConfig {
    PaymentConfig {
        latency: Latency::Off,
        faults: PaymentFaults::default(),
        webhooks: WebhookConfig {
            backoff_base: Duration::from_millis(5),
            max_attempts: 6,
            max_jitter: Duration::ZERO,
            ..WebhookConfig::default()
        },
    }
}

struct Stub {
    base: String,
    http: Client,
}

async fn serve(router: axum::Router) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, router).await.unwrap() });
    format!("http://{addr}")
}

async fn start(cfg: PaymentConfig) -> Stub {
    Stub {
        base: serve(leaky_stubs::payment::router(&cfg)).await,
        http: Client::new(),
    }
}

impl Stub {
    fn post(&self, path: &str, body: &Value) -> RequestBuilder {
        self.http
            .post(format!("{}{path}", self.base))
            .bearer_auth(KEY)
            .json(body)
    }

    fn get(&self, path: &str) -> RequestBuilder {
        self.http
            .get(format!("{}{path}", self.base))
            .bearer_auth(KEY)
    }

    async fn call(&self, req: RequestBuilder) -> (StatusCode, Value) {
        let resp = req.send().await.unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap())
    }

    async fn authorize(&self, amount: i64) -> Value {
        let (s, pi) = self
            .call(self.post("/v1/payment_intents", &intent(amount)))
            .await;
        assert_eq!(s, StatusCode::OK, "{pi}");
        pi
    }

    async fn act(&self, id: &str, action: &str) -> (StatusCode, Value) {
        let path = format!("/v1/payment_intents/{id}/{action}");
        self.call(self.post(&path, &json!({}))).await
    }

    async fn state(&self) -> Value {
        let url = format!("{}/_stub/state", self.base);
        self.http
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn faults(&self, plan: Value) {
        let url = format!("{}/_stub/faults", self.base);
        let resp = self.http.post(url).json(&plan).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }

    async fn endpoint(&self, url: &str) -> String {
        let body = json!({"url": url, "enabled_events": ["*"]});
        let (s, ep) = self.call(self.post("/v1/webhook_endpoints", &body)).await;
        assert_eq!(s, StatusCode::OK, "{ep}");
        let secret = ep["secret"].as_str().unwrap().to_string();
        assert!(
            secret.starts_with("whsec_") && secret.len() == 6 + 32,
            "{secret}"
        );
        assert!(ep["id"].as_str().unwrap().starts_with("we_"));
        secret
    }

    /// Polls the state dump until `done` holds (the deadline only bounds a
    /// failing test; the assertions are on what the dump shows).
    async fn wait_state(&self, done: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..500 {
            let s = self.state().await;
            if done(&s) {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("state never settled: {}", self.state().await);
    }
}

fn intent(amount: i64) -> Value {
    json!({"amount": amount, "currency": "usd", "capture_method": "manual", "confirm": true,
           "metadata": {"purchase": "p1"}})
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

fn deliveries(state: &Value) -> Vec<Value> {
    state["deliveries"].as_array().unwrap().clone()
}

fn all_settled(state: &Value) -> bool {
    deliveries(state).iter().all(|d| d["status"] != "pending")
}

// ---------------------------------------------------------------------------
// Happy paths and unexpected states
// ---------------------------------------------------------------------------

#[tokio::test]
async fn authorize_capture_and_refund() {
    let stub = start(test_config()).await;
    let pi = stub.authorize(1500).await;
    let id = pi["id"].as_str().unwrap();
    assert!(id.starts_with("pi_") && id.len() == 27, "{id}");
    assert_eq!(pi["object"], "payment_intent");
    assert_eq!(pi["status"], "requires_capture");
    assert_eq!(pi["amount_capturable"], 1500);
    assert_eq!(pi["amount_received"], 0);
    assert_eq!(pi["amount_refunded"], 0);
    assert_eq!(pi["metadata"]["purchase"], "p1");
    assert!(pi["created"].as_i64().unwrap() > 1_600_000_000);

    let (s, got) = stub
        .call(stub.get(&format!("/v1/payment_intents/{id}")))
        .await;
    assert_eq!((s, &got), (StatusCode::OK, &pi));

    let (s, captured) = stub.act(id, "capture").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(captured["status"], "succeeded");
    assert_eq!(captured["amount_received"], 1500);
    assert_eq!(captured["amount_capturable"], 0);

    let body = json!({"payment_intent": id, "amount": 500});
    let (s, r1) = stub.call(stub.post("/v1/refunds", &body)).await;
    assert_eq!(s, StatusCode::OK, "{r1}");
    assert!(r1["id"].as_str().unwrap().starts_with("re_"));
    assert_eq!(r1["object"], "refund");
    assert_eq!(
        (r1["amount"].as_i64(), r1["status"].as_str()),
        (Some(500), Some("succeeded"))
    );
    let (_, r2) = stub
        .call(stub.post("/v1/refunds", &json!({"payment_intent": id})))
        .await;
    assert_eq!(r2["amount"], 1000, "the default refunds what is left");

    let (_, list) = stub
        .call(stub.get(&format!("/v1/refunds?payment_intent={id}")))
        .await;
    assert_eq!(list["object"], "list");
    assert_eq!(list["data"], json!([r1, r2]));
    let (_, after) = stub
        .call(stub.get(&format!("/v1/payment_intents/{id}")))
        .await;
    assert_eq!(after["amount_refunded"], 1500);
}

#[tokio::test]
async fn cancel_an_authorization_or_a_declined_intent() {
    let stub = start(test_config()).await;
    let pi = stub.authorize(100).await;
    let (s, canceled) = stub.act(pi["id"].as_str().unwrap(), "cancel").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(canceled["status"], "canceled");
    assert_eq!(canceled["amount_capturable"], 0);

    let declined = stub
        .post("/v1/payment_intents", &intent(100))
        .header("x-stub-fault", "decline");
    let (s, err) = stub.call(declined).await;
    assert_eq!(s, StatusCode::PAYMENT_REQUIRED);
    let id = err["error"]["payment_intent"]["id"].as_str().unwrap();
    // an empty body is accepted too
    let resp = stub
        .http
        .post(format!("{}/v1/payment_intents/{id}/cancel", stub.base))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.json::<Value>().await.unwrap()["status"], "canceled");
}

#[tokio::test]
async fn every_unexpected_state_is_refused_with_the_current_intent() {
    let stub = start(test_config()).await;
    let captured = stub.authorize(100).await;
    let cid = captured["id"].as_str().unwrap();
    stub.act(cid, "capture").await;
    let canceled = stub.authorize(100).await;
    let xid = canceled["id"].as_str().unwrap();
    stub.act(xid, "cancel").await;
    let open = stub.authorize(100).await;
    let oid = open["id"].as_str().unwrap();

    for (id, action, status) in [
        (cid, "capture", "succeeded"),
        (cid, "cancel", "succeeded"),
        (xid, "capture", "canceled"),
        (xid, "cancel", "canceled"),
    ] {
        let (s, err) = stub.act(id, action).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{action} {status}");
        assert_eq!(err["error"]["type"], "invalid_request_error");
        assert_eq!(code(&err), "payment_intent_unexpected_state");
        assert_eq!(err["error"]["payment_intent"]["status"], status);
    }
    for id in [oid, xid] {
        let (s, err) = stub
            .call(stub.post("/v1/refunds", &json!({"payment_intent": id})))
            .await;
        assert_eq!(
            (s, code(&err)),
            (StatusCode::BAD_REQUEST, "payment_intent_unexpected_state")
        );
    }
    let full = json!({"payment_intent": cid});
    assert_eq!(
        stub.call(stub.post("/v1/refunds", &full)).await.0,
        StatusCode::OK
    );
    let (s, err) = stub.call(stub.post("/v1/refunds", &full)).await;
    assert_eq!(
        (s, code(&err)),
        (StatusCode::BAD_REQUEST, "charge_already_refunded")
    );

    let (s, err) = stub.call(stub.get("/v1/payment_intents/pi_nope")).await;
    assert_eq!((s, code(&err)), (StatusCode::NOT_FOUND, "resource_missing"));
    let (s, err) = stub.act("pi_nope", "capture").await;
    assert_eq!((s, code(&err)), (StatusCode::NOT_FOUND, "resource_missing"));
}

#[tokio::test]
async fn bad_keys_and_bad_bodies_are_refused_without_effect() {
    let stub = start(test_config()).await;
    let url = format!("{}/v1/payment_intents", stub.base);
    for auth in [None, Some("Bearer sk_live_x"), Some("Basic sk_test_x")] {
        let mut req = stub.http.post(&url).json(&intent(1));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let (s, err) = stub.call(req).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{auth:?}");
        assert_eq!(err["error"]["type"], "invalid_request_error");
        assert_eq!(code(&err), "api_key_invalid");
    }
    for (body, param) in [
        (json!({"currency": "usd"}), "amount"),
        (json!({"amount": -5, "currency": "usd"}), "amount"),
        (json!({"amount": "5", "currency": "usd"}), "amount"),
        (json!({"amount": 5}), "currency"),
        (
            json!({"amount": 5, "currency": "usd", "metadata": {"n": 1}}),
            "metadata",
        ),
        (
            json!({"amount": 5, "currency": "usd", "surprise": true}),
            "surprise",
        ),
    ] {
        let (s, err) = stub.call(stub.post("/v1/payment_intents", &body)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(err["error"]["param"], param, "{body}");
    }
    let s = stub.state().await;
    assert_eq!(s["payment_intents"], json!([]));
    assert_eq!(s["events"], json!([]));
}

// ---------------------------------------------------------------------------
// Idempotency
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_replay_returns_the_stored_bytes_and_a_changed_body_is_refused() {
    let stub = start(test_config()).await;
    let send = |body: Value, key: &str| {
        stub.post("/v1/payment_intents", &body)
            .header("idempotency-key", key)
            .send()
    };
    let first = send(intent(700), "k1").await.unwrap();
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first_body = first.bytes().await.unwrap();
    // same parameters, other key order
    let reordered = json!({"metadata": {"purchase": "p1"}, "confirm": true, "capture_method": "manual",
                           "currency": "usd", "amount": 700});
    let again = send(reordered, "k1").await.unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.bytes().await.unwrap(), first_body);

    let (s, err) = stub
        .call(
            stub.post("/v1/payment_intents", &intent(701))
                .header("idempotency-key", "k1"),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(err["error"]["type"], "idempotency_error");
    assert_eq!(code(&err), "idempotency_key_in_use");

    // keys are per API key: another account's "k1" is a new request
    let other = stub
        .http
        .post(format!("{}/v1/payment_intents", stub.base))
        .bearer_auth("sk_test_other")
        .header("idempotency-key", "k1")
        .json(&intent(700));
    assert_eq!(other.send().await.unwrap().status(), StatusCode::OK);
    assert_eq!(
        stub.state().await["payment_intents"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // errors other than 5xx are stored too: a declined key stays declined
    let declined = || {
        stub.post("/v1/payment_intents", &intent(5))
            .header("idempotency-key", "k2")
            .header("x-stub-fault", "decline")
    };
    let d1 = declined().send().await.unwrap();
    assert_eq!(d1.status(), StatusCode::PAYMENT_REQUIRED);
    let d1 = d1.bytes().await.unwrap();
    let plain = stub
        .post("/v1/payment_intents", &intent(5))
        .header("idempotency-key", "k2");
    let d2 = plain.send().await.unwrap();
    assert_eq!(
        (d2.status(), d2.headers()["idempotent-replayed"].clone()),
        (StatusCode::PAYMENT_REQUIRED, "true".parse().unwrap())
    );
    assert_eq!(d2.bytes().await.unwrap(), d1);
}

#[tokio::test]
async fn twenty_concurrent_requests_with_one_key_make_one_intent() {
    let stub = Arc::new(start(test_config()).await);
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let stub = stub.clone();
        tasks.push(tokio::spawn(async move {
            let req = stub
                .post("/v1/payment_intents", &intent(999))
                .header("idempotency-key", "burst");
            stub.call(req).await
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        let (s, pi) = t.await.unwrap();
        assert_eq!(s, StatusCode::OK, "{pi}");
        ids.push(pi["id"].as_str().unwrap().to_string());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "every caller sees the one intent");
    let state = stub.state().await;
    assert_eq!(state["payment_intents"].as_array().unwrap().len(), 1);
    assert_eq!(state["events"].as_array().unwrap().len(), 1);
}

// ---------------------------------------------------------------------------
// Faults
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_configured_decline_fails_the_next_authorizations_only() {
    let mut cfg = test_config();
    cfg.faults.decline = 2;
    let stub = start(cfg).await;
    for _ in 0..2 {
        let (s, err) = stub
            .call(stub.post("/v1/payment_intents", &intent(10)))
            .await;
        assert_eq!(s, StatusCode::PAYMENT_REQUIRED);
        assert_eq!(err["error"]["type"], "card_error");
        assert_eq!(code(&err), "card_declined");
        assert_eq!(err["error"]["decline_code"], "insufficient_funds");
        assert_eq!(
            err["error"]["payment_intent"]["status"],
            "requires_payment_method"
        );
    }
    assert_eq!(stub.authorize(10).await["status"], "requires_capture");
    let kinds: Vec<Value> = stub.state().await["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].clone())
        .collect();
    assert_eq!(
        kinds,
        [
            json!("payment_intent.payment_failed"),
            json!("payment_intent.payment_failed"),
            json!("payment_intent.amount_capturable_updated")
        ]
    );
}

#[tokio::test]
async fn a_5xx_fault_has_no_effect_and_the_retry_runs_once() {
    let stub = start(test_config()).await;
    stub.faults(json!({"error_5xx": 1})).await;
    let req = || {
        stub.post("/v1/payment_intents", &intent(10))
            .header("idempotency-key", "r1")
    };
    let (s, err) = stub.call(req()).await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(err["error"]["type"], "api_error");
    assert_eq!(stub.state().await["payment_intents"], json!([]));
    let (s, pi) = stub.call(req()).await;
    assert_eq!(s, StatusCode::OK);
    let (s, again) = stub.call(req()).await;
    assert_eq!((s, again["id"].clone()), (StatusCode::OK, pi["id"].clone()));
    assert_eq!(
        stub.state().await["payment_intents"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // per-request header: same, without arming anything
    let (s, _) = stub
        .call(
            stub.post("/v1/payment_intents", &intent(1))
                .header("x-stub-fault", "error"),
        )
        .await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        stub.state().await["payment_intents"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn a_timeout_applies_the_effect_and_the_retry_gets_the_real_result() {
    let stub = start(test_config()).await;
    let pi = stub.authorize(10).await;
    stub.faults(json!({"timeout": 1, "timeout_ms": 2000})).await;
    let id = pi["id"].as_str().unwrap();
    let gave_up = stub
        .post(&format!("/v1/payment_intents/{id}/capture"), &json!({}))
        .header("idempotency-key", "cap")
        .timeout(Duration::from_millis(100))
        .send()
        .await;
    assert!(gave_up.unwrap_err().is_timeout());
    let state = stub.state().await;
    assert_eq!(
        state["payment_intents"][0]["status"], "succeeded",
        "captured although the client gave up"
    );
    let retry = stub
        .post(&format!("/v1/payment_intents/{id}/capture"), &json!({}))
        .header("idempotency-key", "cap")
        .send()
        .await
        .unwrap();
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(retry.json::<Value>().await.unwrap()["status"], "succeeded");
}

#[tokio::test]
async fn apply_then_fail_captures_yet_answers_500_until_the_keyed_retry() {
    let stub = start(test_config()).await;
    let pi = stub.authorize(10).await;
    let id = pi["id"].as_str().unwrap();
    // only captures are hit: the authorization above and refunds are not
    stub.faults(json!({"apply_then_fail": 1, "ops": ["capture"]}))
        .await;
    let capture = || {
        stub.post(&format!("/v1/payment_intents/{id}/capture"), &json!({}))
            .header("idempotency-key", "atf")
    };
    let (s, err) = stub.call(capture()).await;
    assert_eq!(
        (s, err["error"]["type"].as_str()),
        (StatusCode::INTERNAL_SERVER_ERROR, Some("api_error"))
    );
    assert_eq!(
        stub.state().await["payment_intents"][0]["status"],
        "succeeded"
    );
    let (s, real) = stub.call(capture()).await;
    assert_eq!(
        (s, real["status"].as_str()),
        (StatusCode::OK, Some("succeeded"))
    );
    // without the key, a retry sees the state machine: already captured
    let (s, err) = stub.act(id, "capture").await;
    assert_eq!(
        (s, code(&err)),
        (StatusCode::BAD_REQUEST, "payment_intent_unexpected_state")
    );
    let faults = stub.state().await["faults"].clone();
    assert_eq!(faults["apply_then_fail"], 0);
}

#[tokio::test]
async fn fault_ops_limit_which_operations_are_hit() {
    let stub = start(test_config()).await;
    stub.faults(json!({"error_5xx": 1, "ops": ["refund"]}))
        .await;
    let pi = stub.authorize(10).await;
    let id = pi["id"].as_str().unwrap();
    assert_eq!(stub.act(id, "capture").await.0, StatusCode::OK);
    let refund = json!({"payment_intent": id});
    assert_eq!(
        stub.call(stub.post("/v1/refunds", &refund)).await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(
        stub.call(stub.post("/v1/refunds", &refund)).await.0,
        StatusCode::OK
    );
    let bad = stub
        .http
        .post(format!("{}/_stub/faults", stub.base))
        .json(&json!({"declines": 1}));
    assert_eq!(bad.send().await.unwrap().status(), StatusCode::BAD_REQUEST);
}

// ---------------------------------------------------------------------------
// Webhooks
// ---------------------------------------------------------------------------

/// A webhook receiver: records every delivery, answers 500 to the first
/// `fail_first` ones.
#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<(String, Bytes)>>>,
    fail_first: Arc<AtomicU32>,
}

impl Receiver {
    async fn start(fail_first: u32) -> (Receiver, String) {
        let r = Receiver::default();
        r.fail_first.store(fail_first, Ordering::SeqCst);
        let state = r.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |h: HeaderMap, body: Bytes| {
                let r = state.clone();
                async move {
                    assert_eq!(h["content-type"], "application/json");
                    let sig = h["stripe-signature"].to_str().unwrap().to_string();
                    r.got.lock().unwrap().push((sig, body));
                    let failing = r
                        .fail_first
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok();
                    if failing {
                        AxumStatus::INTERNAL_SERVER_ERROR
                    } else {
                        AxumStatus::OK
                    }
                }
            }),
        );
        let url = format!("{}/hook", serve(app).await);
        (r, url)
    }

    fn events(&self) -> Vec<Value> {
        let got = self.got.lock().unwrap();
        got.iter()
            .map(|(_, b)| serde_json::from_slice(b).unwrap())
            .collect()
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn webhooks_are_signed_and_cover_the_lifecycle() {
    let stub = start(test_config()).await;
    let (rx, url) = Receiver::start(0).await;
    let secret = stub.endpoint(&url).await;
    let pi = stub.authorize(42).await;
    let id = pi["id"].as_str().unwrap();
    stub.act(id, "capture").await;
    stub.call(stub.post("/v1/refunds", &json!({"payment_intent": id})))
        .await;
    let other = stub.authorize(7).await;
    stub.act(other["id"].as_str().unwrap(), "cancel").await;
    stub.wait_state(|s| {
        deliveries(s).len() == 5 && deliveries(s).iter().all(|d| d["status"] == "delivered")
    })
    .await;

    let mut kinds: Vec<String> = rx
        .events()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_string())
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "charge.refunded",
            "payment_intent.amount_capturable_updated",
            "payment_intent.amount_capturable_updated",
            "payment_intent.canceled",
            "payment_intent.succeeded"
        ]
    );
    let tol = Duration::from_secs(300);
    for (sig, body) in rx.got.lock().unwrap().iter() {
        assert_eq!(verify_signature(&secret, sig, body, now(), tol), Ok(()));
        assert_eq!(
            verify_signature("whsec_wrong", sig, body, now(), tol),
            Err(SignatureError::Mismatch)
        );
        let stale = verify_signature(&secret, sig, body, now() + 301, tol);
        assert!(
            matches!(stale, Err(SignatureError::Stale { .. })),
            "{stale:?}"
        );
        let ev: Value = serde_json::from_slice(body).unwrap();
        assert!(ev["id"].as_str().unwrap().starts_with("evt_"));
        assert_eq!(ev["object"], "event");
        let obj = &ev["data"]["object"];
        if ev["type"] == "charge.refunded" {
            assert_eq!(
                (obj["object"].as_str(), obj["amount"].as_i64()),
                (Some("refund"), Some(42))
            );
        } else {
            assert_eq!(obj["object"], "payment_intent");
        }
    }
}

#[tokio::test]
async fn a_failing_receiver_gets_retries_until_it_answers_2xx() {
    let stub = start(test_config()).await;
    let (rx, url) = Receiver::start(3).await;
    let secret = stub.endpoint(&url).await;
    stub.authorize(42).await;
    let s = stub.wait_state(all_settled).await;
    let d = &deliveries(&s)[0];
    assert_eq!(
        (
            d["status"].as_str(),
            d["attempts"].as_u64(),
            d["last_status"].as_u64()
        ),
        (Some("delivered"), Some(4), Some(200))
    );
    let got = rx.got.lock().unwrap().clone();
    assert_eq!(got.len(), 4, "three 500s, then the 2xx");
    assert!(got.iter().all(|(sig, b)| verify_signature(
        &secret,
        sig,
        b,
        now(),
        Duration::from_secs(300)
    )
    .is_ok()));
    assert!(
        got.windows(2).all(|w| w[0].1 == w[1].1),
        "the same event every time"
    );

    // a receiver that never recovers: the delivery gives up after max_attempts
    let (_rx, url) = Receiver::start(u32::MAX).await;
    let stub = start(test_config()).await;
    stub.endpoint(&url).await;
    stub.authorize(1).await;
    let s = stub.wait_state(all_settled).await;
    let d = &deliveries(&s)[0];
    assert_eq!(
        (
            d["status"].as_str(),
            d["attempts"].as_u64(),
            d["last_status"].as_u64()
        ),
        (Some("failed"), Some(6), Some(500))
    );
}

#[tokio::test]
async fn duplicate_and_dropped_webhooks_on_request() {
    let stub = start(test_config()).await;
    let (rx, url) = Receiver::start(0).await;
    stub.endpoint(&url).await;
    stub.faults(json!({"duplicate_webhooks": true})).await;
    stub.authorize(1).await;
    stub.wait_state(|s| deliveries(s).len() == 2 && all_settled(s))
        .await;
    let ev = rx.events();
    assert_eq!(ev.len(), 2);
    assert_eq!(ev[0]["id"], ev[1]["id"], "the same event twice");

    stub.faults(json!({"drop_webhooks": 1})).await;
    stub.authorize(2).await;
    stub.authorize(3).await;
    let s = stub
        .wait_state(|s| deliveries(s).len() == 4 && all_settled(s))
        .await;
    let statuses: Vec<_> = deliveries(&s).iter().map(|d| d["status"].clone()).collect();
    assert_eq!(
        statuses,
        [
            json!("delivered"),
            json!("delivered"),
            json!("dropped"),
            json!("delivered")
        ]
    );
    let amounts: Vec<_> = rx
        .events()
        .iter()
        .map(|e| e["data"]["object"]["amount"].clone())
        .collect();
    assert_eq!(
        amounts,
        [json!(1), json!(1), json!(3)],
        "the amount-2 event never arrived"
    );
}

#[tokio::test]
async fn seeded_delays_deliver_out_of_order() {
    let max = Duration::from_millis(400);
    // a seed whose first delivery waits much longer than its second
    let seed = (0..10_000u64)
        .find(|s| {
            delivery_delay(*s, 0, max) > delivery_delay(*s, 1, max) + Duration::from_millis(250)
        })
        .unwrap();
    let mut cfg = test_config();
    cfg.webhooks.max_jitter = max;
    cfg.webhooks.seed = seed;
    let stub = start(cfg).await;
    let (rx, url) = Receiver::start(0).await;
    stub.endpoint(&url).await;
    let pi = stub.authorize(5).await;
    stub.act(pi["id"].as_str().unwrap(), "capture").await;
    stub.wait_state(|s| deliveries(s).len() == 2 && all_settled(s))
        .await;
    let kinds: Vec<_> = rx.events().iter().map(|e| e["type"].clone()).collect();
    assert_eq!(
        kinds,
        [
            json!("payment_intent.succeeded"),
            json!("payment_intent.amount_capturable_updated")
        ]
    );
}

// ---------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------

#[tokio::test]
async fn reset_clears_everything_and_metrics_count_requests() {
    let mut cfg = test_config();
    cfg.faults.decline = 1;
    let stub = start(cfg).await;
    stub.faults(json!({})).await;
    stub.authorize(1).await;
    let reset = stub
        .http
        .post(format!("{}/_stub/reset", stub.base))
        .send()
        .await
        .unwrap();
    assert_eq!(reset.status(), StatusCode::NO_CONTENT);
    let s = stub.state().await;
    assert_eq!(
        (s["payment_intents"].clone(), s["faults"]["decline"].clone()),
        (json!([]), json!(1)),
        "configured faults are re-armed"
    );

    let health = stub
        .http
        .get(format!("{}/healthz", stub.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let m = stub
        .http
        .get(format!("{}/metrics", stub.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(m.contains(r#"stub_requests_total{provider="payment",endpoint="POST /v1/payment_intents",status="200"} 1"#), "{m}");
}

#[tokio::test]
async fn the_stubs_server_runs_the_payment_stub_when_asked() {
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    let cfg = leaky_stubs::StubsConfig {
        openai: any,
        gemini: any,
        qwen: any,
        latency: Latency::Off,
        payment: Some(any),
        payment_config: test_config(),
        ..leaky_stubs::StubsConfig::default()
    };
    let (bound, fut) = leaky_stubs::bind(cfg).await.unwrap();
    tokio::spawn(fut);
    let stub = Stub {
        base: format!("http://{}", bound.payment.unwrap()),
        http: Client::new(),
    };
    assert_eq!(stub.authorize(3).await["amount"], 3);
    let default = leaky_stubs::StubsConfig::default();
    assert_eq!(
        default.payment, None,
        "off unless asked: tests binding port 0 never collide on 18004"
    );
}
