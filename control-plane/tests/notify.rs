//! Notifications against real servers: PostgreSQL (one database per test), an axum webhook receiver
//! on a loopback port, a real SMTP server (Python `aiosmtpd`, `tests/py/smtp_sink.py`) and, for the
//! domain-event path, a real Kafka broker. Time-dependent rules (backoff, leases, signatures) run on a
//! [`ManualClock`]; the tests move it, they never sleep to prove timing.
//!
//! The Python: `LEAKY_TEST_PYTHON` when it can import `aiosmtpd` (`scripts/test` installs it there),
//! else a venv this test provisions under `target/`. No Python or no PyPI is a failure, never a skip.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration as StdDuration, Instant};

use crate::common::TestApp;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, Duration, Utc};
use leaky_control_plane::clock::{Clock, ManualClock};
use leaky_control_plane::notify::{self, expiring, triggers, Notification, Policy, Worker};
use leaky_control_plane::{ledger, notify::Mailer};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

const AIOSMTPD: &str = "1.4.6";

// ---------------------------------------------------------------------------------------------
// A webhook receiver: records every request, answers with a settable status after a settable delay.

#[derive(Debug, Clone)]
struct Hit {
    signature: String,
    event_id: String,
    body: Vec<u8>,
}

#[derive(Clone, Default)]
struct Shared {
    hits: Arc<Mutex<Vec<Hit>>>,
    status: Arc<AtomicU16>,
    delay_ms: Arc<AtomicU64>,
}

struct Receiver {
    url: String,
    shared: Shared,
}

impl Receiver {
    fn hits(&self) -> Vec<Hit> {
        self.shared.hits.lock().unwrap().clone()
    }
    fn answer(&self, status: u16) {
        self.shared.status.store(status, Ordering::SeqCst);
    }
}

async fn hook(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    s.hits.lock().unwrap().push(Hit {
        signature: header("leaky-signature"),
        event_id: header("leaky-event-id"),
        body: body.to_vec(),
    });
    let delay = s.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(StdDuration::from_millis(delay)).await;
    }
    StatusCode::from_u16(s.status.load(Ordering::SeqCst)).unwrap()
}

async fn receiver() -> Receiver {
    let shared = Shared::default();
    shared.status.store(200, Ordering::SeqCst);
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .with_state(shared.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Receiver { url, shared }
}

// ---------------------------------------------------------------------------------------------
// A real SMTP server (aiosmtpd) writing each message to a directory.

fn python() -> anyhow::Result<PathBuf> {
    let importable = |py: &Path| {
        Command::new(py)
            .args(["-c", "import aiosmtpd"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if let Some(p) = std::env::var_os("LEAKY_TEST_PYTHON").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if importable(&p) {
            return Ok(p);
        }
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target")
        .join(format!("py-aiosmtpd-{AIOSMTPD}"));
    let python = venv.join("bin/python");
    if !importable(&python) {
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()?
            .success();
        anyhow::ensure!(ok, "python3 -m venv failed");
        let pin = format!("aiosmtpd=={AIOSMTPD}");
        let ok = Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", &pin])
            .status()?
            .success();
        anyhow::ensure!(ok, "pip install {pin} failed");
    }
    Ok(python)
}

struct Smtp {
    dir: tempfile::TempDir,
    port: u16,
    child: Child,
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Smtp {
    fn start() -> Smtp {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/smtp_sink.py");
        let mut child = Command::new(python().unwrap())
            .arg(script)
            .arg(dir.path())
            .arg(port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "smtp sink did not start");
        Smtp { dir, port, child }
    }

    fn mailer(&self) -> Mailer {
        Mailer::new(
            &format!("smtp://127.0.0.1:{}", self.port),
            "Leaky Tokens <notifications@leaky-tokens.local>",
        )
        .unwrap()
    }

    /// The messages received so far: `{from, to, data}`.
    fn mails(&self) -> Vec<Value> {
        let mut mails: Vec<(u64, Value)> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let n = name.strip_suffix(".json")?.parse().ok()?;
                let text = std::fs::read_to_string(e.path()).ok()?;
                Some((n, serde_json::from_str(&text).ok()?))
            })
            .collect();
        mails.sort_by_key(|(n, _)| *n);
        mails.into_iter().map(|(_, m)| m).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers.

fn start() -> DateTime<Utc> {
    // Near the system clock: the ledger dates its own entries with it.
    Utc::now()
}

async fn org_with_admin(app: &TestApp, name: &str) -> Uuid {
    let org = app.org(name).await.unwrap();
    let id: Uuid = org["id"].as_str().unwrap().parse().unwrap();
    let user = json!({"email": format!("admin@{name}.example"), "roles": ["org-admin"]});
    let res = app
        .post(&format!("/v1/orgs/{id}/users"), user)
        .await
        .unwrap();
    assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
    let other = json!({"email": format!("dev@{name}.example"), "roles": ["developer"]});
    let res = app
        .post(&format!("/v1/orgs/{id}/users"), other)
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    id
}

/// Registers `url` for `events`; returns (id, secret).
async fn webhook(app: &TestApp, org: Uuid, url: &str, events: &[&str]) -> (String, String) {
    let res = app
        .post(
            &format!("/v1/orgs/{org}/webhooks"),
            json!({"url": url, "events": events}),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let body: Value = res.json().await.unwrap();
    (
        body["id"].as_str().unwrap().to_owned(),
        body["secret"].as_str().unwrap().to_owned(),
    )
}

async fn notify_now(pool: &PgPool, n: &Notification) -> u64 {
    let mut tx = pool.begin().await.unwrap();
    let added = triggers::enqueue_for(pool, &mut tx, n).await.unwrap();
    tx.commit().await.unwrap();
    added
}

fn purchase_completed(org: Uuid, time: DateTime<Utc>, email: bool) -> Notification {
    Notification {
        event_id: Uuid::new_v4().to_string(),
        org,
        kind: "purchase.completed".into(),
        time,
        data: json!({"tokens": 1_000_000, "amount": 200}),
        email,
    }
}

/// `(channel, status, attempts)` of `event_id`'s deliveries.
async fn deliveries(pool: &PgPool, event_id: &str) -> Vec<(String, String, i32)> {
    sqlx::query_as(
        "SELECT channel, status, attempts FROM notify.deliveries WHERE event_id = $1 ORDER BY channel, target",
    )
    .bind(event_id)
    .fetch_all(pool)
    .await
    .unwrap()
}

fn test_policy() -> Policy {
    Policy {
        max_attempts: 4,
        disable_after: 2,
        ..Policy::default()
    }
}

// ---------------------------------------------------------------------------------------------
// The admin API.

#[tokio::test]
async fn webhook_api_validates_audits_and_shows_the_secret_once() {
    let app = common::app().await.unwrap();
    let org = org_with_admin(&app, "acme").await;
    let path = format!("/v1/orgs/{org}/webhooks");
    let audits = app.audit_count().await.unwrap();

    let plain = json!({"url": "http://hooks.example.com/x", "events": ["*"]});
    let p = common::problem(app.post(&path, plain).await.unwrap(), 422, "validation")
        .await
        .unwrap();
    assert_eq!(common::fields(&p), ["url"]);
    let bad_event = json!({"url": "https://hooks.example.com/x", "events": ["purchase.done"]});
    let p = common::problem(app.post(&path, bad_event).await.unwrap(), 422, "validation")
        .await
        .unwrap();
    assert_eq!(common::fields(&p), ["events[0]"]);
    let unknown = json!({"url": "https://a.example/x", "events": ["*"], "secret": "mine"});
    common::problem(app.post(&path, unknown).await.unwrap(), 422, "validation")
        .await
        .unwrap();
    let nobody = format!("/v1/orgs/{}/webhooks", Uuid::new_v4());
    let body = json!({"url": "https://a.example/x", "events": ["*"]});
    common::problem(app.post(&nobody, body).await.unwrap(), 404, "not-found")
        .await
        .unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM notify.endpoints")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(n, 0, "bad input writes nothing");
    assert_eq!(app.audit_count().await.unwrap(), audits);

    let body = json!({"url": "https://hooks.example.com/leaky", "events": ["purchase.completed"]});
    let res = app.post(&path, body).await.unwrap();
    assert_eq!(res.status(), 201);
    let created: Value = res.json().await.unwrap();
    let secret = created["secret"].as_str().unwrap();
    assert!(
        secret.starts_with("whsec_") && secret.len() == 70,
        "{secret}"
    );
    assert_eq!(created["enabled"], true);
    let id = created["id"].as_str().unwrap();

    let list: Value = app.get(&path).await.unwrap().json().await.unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert!(list["items"][0].get("secret").is_none(), "{list}");
    assert!(!list.to_string().contains(secret));
    let audit: Value = app
        .get(&format!("/v1/audit?object={id}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(audit["items"][0]["action"], "webhook.create");
    assert!(
        !audit.to_string().contains(secret),
        "the audit never holds the secret"
    );

    let del = app
        .req(reqwest::Method::DELETE, &format!("{path}/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 204);
    let again = app
        .req(reqwest::Method::DELETE, &format!("{path}/{id}"))
        .send()
        .await
        .unwrap();
    common::problem(again, 404, "not-found").await.unwrap();
    let bad_id = app
        .req(reqwest::Method::DELETE, &format!("{path}/nope"))
        .send()
        .await
        .unwrap();
    common::problem(bad_id, 422, "validation").await.unwrap();
    assert_eq!(app.audit_count().await.unwrap(), audits + 2);
}

#[tokio::test]
async fn the_org_notify_email_gets_email_notifications_besides_its_admins() {
    let app = common::app().await.unwrap();
    let org = org_with_admin(&app, "acme").await;
    let path = format!("/v1/orgs/{org}/notification-settings");
    let shown: Value = app.get(&path).await.unwrap().json().await.unwrap();
    assert_eq!(shown["notify_email"], Value::Null);
    let audits = app.audit_count().await.unwrap();
    let put = |body: Value| app.req(reqwest::Method::PUT, &path).json(&body).send();
    let bad = put(json!({"notify_email": "not an address"}))
        .await
        .unwrap();
    let p = common::problem(bad, 422, "validation").await.unwrap();
    assert_eq!(common::fields(&p), ["notify_email"]);
    assert_eq!(
        app.audit_count().await.unwrap(),
        audits,
        "bad input writes nothing"
    );
    let res = put(json!({"notify_email": "ops@acme.example"}))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(app.audit_count().await.unwrap(), audits + 1);
    let shown: Value = app.get(&path).await.unwrap().json().await.unwrap();
    assert_eq!(shown["notify_email"], "ops@acme.example");

    let n = purchase_completed(org, Utc::now(), true);
    assert_eq!(notify_now(&app.pool, &n).await, 2);
    let to: Vec<String> = sqlx::query_scalar(
        "SELECT target FROM notify.deliveries WHERE event_id = $1 ORDER BY target",
    )
    .bind(&n.event_id)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(to, ["admin@acme.example", "ops@acme.example"]);
    // The admin's own address as notify email: still one email to it.
    put(json!({"notify_email": "ADMIN@acme.example"}))
        .await
        .unwrap();
    let again = purchase_completed(org, Utc::now(), true);
    assert_eq!(notify_now(&app.pool, &again).await, 1);
    let nobody = format!("/v1/orgs/{}/notification-settings", Uuid::new_v4());
    let res = app
        .req(reqwest::Method::PUT, &nobody)
        .json(&json!({"notify_email": null}))
        .send()
        .await
        .unwrap();
    common::problem(res, 404, "not-found").await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Webhook deliveries.

#[tokio::test]
async fn deliveries_are_signed_and_retried_with_backoff_until_2xx() {
    let app = common::app().await.unwrap();
    let org = org_with_admin(&app, "acme").await;
    let rx = receiver().await;
    let (_, secret) = webhook(&app, org, &rx.url, &["purchase.completed"]).await;
    let clock = Arc::new(ManualClock::new(start()));
    let policy = test_policy();
    let worker = Worker::new(app.pool.clone(), clock.clone(), None, policy.clone());

    let n = purchase_completed(org, clock.now(), false);
    assert_eq!(notify_now(&app.pool, &n).await, 1);
    assert_eq!(
        notify_now(&app.pool, &n).await,
        0,
        "same event id: no second row"
    );
    rx.answer(500);
    assert_eq!(worker.run_once().await.unwrap(), 1);
    assert_eq!(rx.hits().len(), 1);
    assert_eq!(
        worker.run_once().await.unwrap(),
        0,
        "not due before its backoff"
    );

    clock.advance(policy.max_backoff(1));
    assert_eq!(worker.run_once().await.unwrap(), 1);
    assert_eq!(rx.hits().len(), 2);
    // The second wait is longer than the first's longest: not due yet at that distance.
    clock.advance(policy.max_backoff(1));
    assert_eq!(worker.run_once().await.unwrap(), 0);
    assert!(policy.backoff(2, 0.0) > policy.max_backoff(1));
    clock.advance(policy.max_backoff(2));
    rx.answer(204);
    assert_eq!(worker.run_once().await.unwrap(), 1);
    let sent_at = clock.now().timestamp();
    assert_eq!(
        deliveries(&app.pool, &n.event_id).await,
        [("webhook".to_owned(), "delivered".to_owned(), 3)]
    );
    clock.advance(Duration::days(2));
    assert_eq!(
        worker.run_once().await.unwrap(),
        0,
        "delivered: never sent again"
    );

    let hits = rx.hits();
    assert_eq!(hits.len(), 3);
    for hit in &hits {
        assert_eq!(hit.event_id, n.event_id);
        let body: Value = serde_json::from_slice(&hit.body).unwrap();
        assert_eq!(body["id"], n.event_id.as_str());
        assert_eq!(body["type"], "purchase.completed");
        assert_eq!(body["org"], org.to_string());
        assert_eq!(body["data"]["tokens"], 1_000_000);
        assert!(body["time"].is_string());
    }
    // The last one was signed at the clock's "now"; a receiver checks it like this.
    let last = &hits[2];
    let now = sent_at;
    assert_eq!(
        notify::verify(&last.signature, &last.body, &secret, now, 300),
        Ok(())
    );
    let mut tampered = last.body.clone();
    tampered[10] ^= 1;
    assert_eq!(
        notify::verify(&last.signature, &tampered, &secret, now, 300),
        Err(notify::SignatureError::Mismatch)
    );
    assert_eq!(
        notify::verify(&last.signature, &last.body, &secret, now + 301, 300),
        Err(notify::SignatureError::Stale(300))
    );
    assert_eq!(
        notify::verify(&hits[0].signature, &hits[0].body, &secret, now + 3600, 300),
        Err(notify::SignatureError::Stale(300)),
        "a capture of the first attempt replayed an hour later is refused"
    );
}

#[tokio::test]
async fn an_endpoint_failing_m_deliveries_is_disabled_and_its_admins_get_an_email() {
    let app = common::app().await.unwrap();
    let org = org_with_admin(&app, "acme").await;
    let smtp = Smtp::start();
    let rx = receiver().await;
    rx.answer(503);
    let (id, _) = webhook(&app, org, &rx.url, &["*"]).await;
    let clock = Arc::new(ManualClock::new(start()));
    let policy = Policy {
        max_attempts: 2,
        disable_after: 2,
        ..Policy::default()
    };
    let stats = Arc::new(notify::NotifyStats::default());
    let worker = Worker::new(
        app.pool.clone(),
        clock.clone(),
        Some(smtp.mailer()),
        policy.clone(),
    )
    .with_stats(stats.clone());

    let first = purchase_completed(org, clock.now(), false);
    let second = purchase_completed(org, clock.now(), false);
    notify_now(&app.pool, &first).await;
    notify_now(&app.pool, &second).await;
    assert_eq!(worker.run_once().await.unwrap(), 2);
    clock.advance(policy.max_backoff(1));
    assert_eq!(worker.run_once().await.unwrap(), 2);
    for n in [&first, &second] {
        assert_eq!(
            deliveries(&app.pool, &n.event_id).await,
            [("webhook".to_owned(), "failed".to_owned(), 2)]
        );
    }
    assert_eq!(rx.hits().len(), 4);
    assert_eq!(stats.endpoints_disabled(), 1);

    let list: Value = app
        .get(&format!("/v1/orgs/{org}/webhooks"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"][0]["enabled"], false, "{list}");
    assert!(list["items"][0]["disabled_at"].is_string());
    let audit: Value = app
        .get(&format!("/v1/audit?object={id}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["webhook.create", "webhook.disable"]);

    // The disable notice goes out by email to the org-admin only.
    assert_eq!(worker.run_once().await.unwrap(), 1);
    let mails = smtp.mails();
    assert_eq!(mails.len(), 1, "{mails:?}");
    assert_eq!(mails[0]["to"], json!(["admin@acme.example"]));
    let data = mails[0]["data"].as_str().unwrap();
    assert!(data.contains("Subject: Webhook"), "{data}");
    assert!(data.contains("was disabled"), "{data}");
    assert!(data.contains(&rx.url), "{data}");
    assert_eq!(
        stats.deliveries("email", notify::DeliveryResult::Delivered),
        1
    );
    assert_eq!(
        stats.deliveries("webhook", notify::DeliveryResult::Failed),
        2
    );

    // A disabled endpoint gets nothing new.
    let third = purchase_completed(org, clock.now(), false);
    assert_eq!(notify_now(&app.pool, &third).await, 0);
    clock.advance(Duration::days(1));
    assert_eq!(worker.run_once().await.unwrap(), 0);
    assert_eq!(rx.hits().len(), 4);
}

#[tokio::test]
async fn email_without_smtp_is_recorded_as_skipped_never_dropped() {
    let app = common::app().await.unwrap();
    let org = org_with_admin(&app, "acme").await;
    let clock = Arc::new(ManualClock::new(start()));
    let worker = Worker::new(app.pool.clone(), clock.clone(), None, test_policy());
    let n = purchase_completed(org, clock.now(), true);
    assert_eq!(
        notify_now(&app.pool, &n).await,
        1,
        "one email: the org-admin"
    );
    assert_eq!(worker.run_once().await.unwrap(), 1);
    assert_eq!(
        deliveries(&app.pool, &n.event_id).await,
        [("email".to_owned(), "skipped".to_owned(), 1)]
    );
}

#[tokio::test]
async fn two_workers_never_deliver_one_row_twice_at_once() {
    let app = common::app().await.unwrap();
    let org = org_with_admin(&app, "acme").await;
    let rx = receiver().await;
    rx.shared.delay_ms.store(20, Ordering::SeqCst);
    webhook(&app, org, &rx.url, &["purchase.completed"]).await;
    let clock = Arc::new(ManualClock::new(start()));
    let mut ids = Vec::new();
    for _ in 0..60 {
        let n = purchase_completed(org, clock.now(), false);
        notify_now(&app.pool, &n).await;
        ids.push(n.event_id);
    }
    let policy = Policy {
        batch: 7,
        ..test_policy()
    };
    let drain = |w: Worker| async move {
        let mut total = 0;
        loop {
            match w.run_once().await.unwrap() {
                0 => return total,
                n => total += n,
            }
        }
    };
    let a = Worker::new(app.pool.clone(), clock.clone(), None, policy.clone());
    let b = Worker::new(app.pool.clone(), clock.clone(), None, policy);
    let (na, nb) = tokio::join!(drain(a), drain(b));
    assert_eq!(na + nb, 60);
    assert!(na > 0 && nb > 0, "both workers took rows: {na} + {nb}");
    let mut got: Vec<String> = rx.hits().into_iter().map(|h| h.event_id).collect();
    got.sort();
    ids.sort();
    assert_eq!(got, ids, "each row sent exactly once");
}

#[tokio::test]
async fn a_worker_dying_mid_send_loses_nothing_another_resends_after_the_lease() {
    let app = common::app().await.unwrap();
    let org = org_with_admin(&app, "acme").await;
    let rx = receiver().await;
    rx.shared.delay_ms.store(60_000, Ordering::SeqCst);
    webhook(&app, org, &rx.url, &["purchase.completed"]).await;
    let clock = Arc::new(ManualClock::new(start()));
    let policy = test_policy();
    let n = purchase_completed(org, clock.now(), false);
    notify_now(&app.pool, &n).await;

    let dying = Worker::new(app.pool.clone(), clock.clone(), None, policy.clone());
    let task = tokio::spawn(async move { dying.run_once().await });
    until("the first worker's request", || {
        let hits = rx.hits().len();
        async move { hits == 1 }
    })
    .await;
    task.abort();
    let _ = task.await;
    rx.shared.delay_ms.store(0, Ordering::SeqCst);

    let other = Worker::new(app.pool.clone(), clock.clone(), None, policy.clone());
    assert_eq!(
        other.run_once().await.unwrap(),
        0,
        "claimed: skipped until the lease ends"
    );
    clock.advance(policy.lease);
    assert_eq!(other.run_once().await.unwrap(), 1);
    assert_eq!(
        deliveries(&app.pool, &n.event_id).await,
        [("webhook".to_owned(), "delivered".to_owned(), 1)]
    );
    let ids: Vec<String> = rx.hits().into_iter().map(|h| h.event_id).collect();
    assert_eq!(
        ids,
        [n.event_id.clone(), n.event_id],
        "at least once, same event id"
    );
}

#[tokio::test]
async fn the_control_plane_process_sends_email_through_its_smtp_settings() {
    let smtp = Smtp::start();
    let url = common::fresh_db().await.unwrap();
    let pool = leaky_control_plane::db::pool(&url, 4).unwrap();
    leaky_control_plane::db::migrate(&pool).await.unwrap();
    let app = common::serve(url.clone(), pool).await.unwrap();
    let org = org_with_admin(&app, "acme").await;
    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = leaky_control_plane::Config {
        listen,
        database_url: url,
        roles: "admin-api".parse().unwrap(),
        admin_token: common::TOKEN.to_owned(),
        config_base: None,
        outbox: None,
        redis_url: None,
        billing: Default::default(),
        notify: notify::Settings {
            smtp_url: Some(format!("smtp://127.0.0.1:{}", smtp.port)),
            from: "Leaky <leaky@example.com>".into(),
        },
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(leaky_control_plane::run(config, async {
        let _ = stopped.await;
    }));
    let n = purchase_completed(org, Utc::now(), true);
    notify_now(&app.pool, &n).await;
    until("the email", || {
        let got = smtp.mails().len();
        async move { got == 1 }
    })
    .await;
    let mail = &smtp.mails()[0];
    assert_eq!(mail["from"], "leaky@example.com");
    assert_eq!(mail["to"], json!(["admin@acme.example"]));
    assert!(mail["data"]
        .as_str()
        .unwrap()
        .contains("Purchase of 1000000 tokens completed"));
    // The worker counts a delivery once it recorded it, just after the SMTP server took the mail.
    let delivered = r#"leaky_notify_deliveries_total{channel="email",result="delivered"} 1"#;
    until("the delivery counted", || async move {
        let metrics = reqwest::get(format!("http://{listen}/metrics"))
            .await
            .unwrap();
        metrics.text().await.unwrap().contains(delivered)
    })
    .await;
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

// ---------------------------------------------------------------------------------------------
// Expiring credit blocks and keys.

#[tokio::test]
async fn a_credit_block_about_to_expire_is_announced_once() {
    let app = common::app().await.unwrap();
    let org = org_with_admin(&app, "acme").await;
    let now = start();
    let soon = now + Duration::days(5);
    let later = now + Duration::days(30);
    ledger::grant(&app.pool, org, 1_000, "g-soon", Some(soon))
        .await
        .unwrap();
    ledger::grant(&app.pool, org, 2_000, "g-later", Some(later))
        .await
        .unwrap();
    assert_eq!(expiring::notify_expiring(&app.pool, now).await.unwrap(), 1);
    assert_eq!(
        expiring::notify_expiring(&app.pool, now + Duration::days(1))
            .await
            .unwrap(),
        0,
        "the next daily run adds nothing for the same block"
    );
    let rows: Vec<(String, Value)> = sqlx::query_as(
        "SELECT target, body FROM notify.deliveries WHERE type = 'credits.expiring'",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].0, "admin@acme.example");
    assert_eq!(rows[0].1["data"]["remaining"], 1_000);
    assert_eq!(rows[0].1["data"]["ref"], "g-soon");
    // Within 7 days of the later block: its own notice, once.
    let near_later = later - Duration::days(6);
    assert_eq!(
        expiring::notify_expiring(&app.pool, near_later)
            .await
            .unwrap(),
        1
    );
}

#[tokio::test]
async fn an_api_key_about_to_expire_is_announced_once_per_expiry() {
    let app = common::app().await.unwrap();
    let org = org_with_admin(&app, "acme").await;
    let now = start();
    let key = |expires: DateTime<Utc>| json!({"name": "ci", "tier": "pro", "expires_at": expires});
    let path = format!("/v1/orgs/{org}/keys");
    let soon = app.post(&path, key(now + Duration::days(3))).await.unwrap();
    assert_eq!(soon.status(), 201);
    let soon: Value = soon.json().await.unwrap();
    let later = app
        .post(&path, key(now + Duration::days(60)))
        .await
        .unwrap();
    assert_eq!(later.status(), 201);
    assert_eq!(expiring::notify_expiring(&app.pool, now).await.unwrap(), 1);
    assert_eq!(expiring::notify_expiring(&app.pool, now).await.unwrap(), 0);
    let (body,): (Value,) =
        sqlx::query_as("SELECT body FROM notify.deliveries WHERE type = 'key.expiring'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(body["data"]["key"], soon["id"]);
    // Its expiry moved (still within 7 days): a new notice for the new date.
    let id = soon["id"].as_str().unwrap();
    let patch = json!({"expires_at": now + Duration::days(4)});
    let res = app
        .req(reqwest::Method::PATCH, &format!("/v1/keys/{id}"))
        .json(&patch)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    assert_eq!(expiring::notify_expiring(&app.pool, now).await.unwrap(), 1);
}

// ---------------------------------------------------------------------------------------------
// Domain events through Kafka: duplicates and thresholds.

fn envelope(id: &str, kind: &str, data: &Value) -> String {
    json!({
        "specversion": "1.0", "id": id, "source": "/leaky-tokens/control-plane/test", "type": kind,
        "time": Utc::now().to_rfc3339(), "datacontenttype": "application/json", "schemaversion": 1,
        "data": data,
    })
    .to_string()
}

async fn produce(brokers: &str, topic: &str, key: &str, payloads: &[String]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    for payload in payloads {
        let record = FutureRecord::to(topic).key(key).payload(payload);
        producer
            .send(record, StdDuration::from_secs(30))
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
}

/// The ledger's outbox events of `org`, as the relay would publish them.
async fn ledger_events(pool: &PgPool, org: Uuid, after_seq: i64) -> Vec<String> {
    let rows: Vec<(Uuid, String, Value)> = sqlx::query_as(
        "SELECT id, type, payload FROM outbox.events
         WHERE aggregate_type = 'ledger' AND aggregate_id = $1 AND aggregate_seq > $2 ORDER BY aggregate_seq",
    )
    .bind(org.to_string())
    .bind(after_seq)
    .fetch_all(pool)
    .await
    .unwrap();
    rows.iter()
        .map(|(id, kind, data)| envelope(&id.to_string(), kind, data))
        .collect()
}

async fn until<F, Fut>(what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + StdDuration::from_secs(90);
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(StdDuration::from_millis(100)).await;
    }
}

/// The threshold crossings notified: `(level, ledger version)`, one per crossing (whatever the
/// number of channels).
async fn crossings(pool: &PgPool) -> Vec<(i64, i64)> {
    let rows: Vec<(Value,)> = sqlx::query_as(
        "SELECT DISTINCT ON (event_id) body FROM notify.deliveries WHERE type = 'balance.threshold_crossed'
         ORDER BY event_id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mut out: Vec<(i64, i64)> = rows
        .iter()
        .map(|(b,)| {
            let d = &b["data"];
            (
                d["level"].as_i64().unwrap(),
                d["ledger_version"].as_i64().unwrap(),
            )
        })
        .collect();
    out.sort_by_key(|(level, version)| (*version, *level));
    out
}

#[tokio::test]
async fn domain_events_notify_once_and_thresholds_once_per_crossing() {
    let brokers = common::kafka::brokers().unwrap();
    let app = common::app().await.unwrap();
    let org = org_with_admin(&app, "acme").await;
    let rx = receiver().await;
    let events = ["purchase.completed", "balance.threshold_crossed"];
    webhook(&app, org, &rx.url, &events).await;
    let billing = common::kafka::topic(&brokers, "notify-billing", 2)
        .await
        .unwrap();
    let ledger_topic = common::kafka::topic(&brokers, "notify-ledger", 2)
        .await
        .unwrap();
    let group = format!("test-notify-{}", Uuid::new_v4().simple());
    let [cb, cl] = triggers::consumers(
        app.pool.clone(),
        &brokers,
        [&billing, &ledger_topic],
        &group,
    )
    .unwrap();
    let (sb, sl) = (cb.stats(), cl.stats());
    let tasks = [tokio::spawn(cb.run()), tokio::spawn(cl.run())];

    // A purchase event delivered three times (a redelivery and a re-publish): one notification.
    let purchase = Uuid::new_v4().to_string();
    let data = json!({"id": Uuid::new_v4(), "org": org, "tokens": 1_000_000, "amount": 200,
                      "currency": "usd", "status": "completed", "payment_intent": "pi_1", "reason": null});
    let doc = envelope(&purchase, "purchase.completed", &data);
    let key = org.to_string();
    produce(&brokers, &billing, &key, &[doc.clone(), doc.clone(), doc]).await;
    until("the purchase events", || {
        let sb = sb.clone();
        async move { sb.applied() + sb.duplicates() == 3 }
    })
    .await;
    assert_eq!((sb.applied(), sb.duplicates()), (1, 2));
    let rows = deliveries(&app.pool, &purchase).await;
    let channels: Vec<&str> = rows.iter().map(|(c, _, _)| c.as_str()).collect();
    assert_eq!(channels, ["email", "webhook"], "one per target: {rows:?}");

    // 1000 credited, then 10 debits of 100: 80 % crossed at version 9, 100 % at version 11.
    ledger::grant(&app.pool, org, 1_000, "g1", None)
        .await
        .unwrap();
    for i in 0..10 {
        ledger::consume(&app.pool, org, 100, &format!("r{i}"))
            .await
            .unwrap();
    }
    let first = ledger_events(&app.pool, org, 0).await;
    assert_eq!(first.len(), 11);
    // Each event twice: redeliveries change nothing.
    let twice: Vec<String> = first.iter().flat_map(|e| [e.clone(), e.clone()]).collect();
    produce(&brokers, &ledger_topic, &key, &twice).await;
    until("the ledger events", || {
        let sl = sl.clone();
        async move { sl.applied() + sl.duplicates() == 22 }
    })
    .await;
    assert_eq!((sl.applied(), sl.duplicates()), (11, 11));
    assert_eq!(crossings(&app.pool).await, [(80, 9), (100, 11)]);

    // A credit re-arms both (1000 of 2000 left: 50 % used); 700 more crosses 80 % again (85 %).
    ledger::grant(&app.pool, org, 1_000, "g2", None)
        .await
        .unwrap();
    ledger::consume(&app.pool, org, 700, "r10").await.unwrap();
    let second = ledger_events(&app.pool, org, 11).await;
    assert_eq!(second.len(), 2);
    produce(&brokers, &ledger_topic, &key, &second).await;
    until("the second ledger events", || {
        let sl = sl.clone();
        async move { sl.applied() == 13 }
    })
    .await;
    assert_eq!(crossings(&app.pool).await, [(80, 9), (100, 11), (80, 13)]);
    let per_crossing: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM notify.deliveries WHERE type = 'balance.threshold_crossed'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        per_crossing, 6,
        "each crossing: one webhook, one email to the org-admin"
    );
    let debited: i64 =
        sqlx::query_scalar("SELECT count(*) FROM notify.deliveries WHERE type = 'ledger.debited'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(debited, 0, "no endpoint subscribed to ledger.debited");
    for t in tasks {
        t.abort();
    }
}
