//! Provider credentials at rest (issue 14) on a real PostgreSQL: the vault's rows hold no plaintext and
//! are bound to their names; a base references credentials as `${secret:<name>}` and only the
//! snapshot streamed to a proxy carries the value (`config.versions` keeps the reference); literal and
//! unknown credentials are refused at `PUT /v1/config/base`; a changed credential reaches the watch
//! stream as a new snapshot; master-key rotation with `secrets rewrap`; the API never returns a value;
//! only platform admins may use it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::sync::{Arc, Once};
use std::time::Duration;

use base64::Engine;
use common::problem;
use futures::StreamExt;
use leaky_control_plane::http::{AdminToken, ApiState};
use leaky_control_plane::identity::{self, provider_credentials, Identity, MasterKeys, Settings};
use leaky_control_plane::{app, db, Roles};
use serde_json::{json, Value};
use sqlx::PgPool;

const VALUE: &str = "sk-live-PLAINTEXT-4f1c9a7e2b";
const OTHER_VALUE: &str = "sk-live-ROTATED-88d0e3a1c5";

fn b64(byte: u8) -> String {
    base64::engine::general_purpose::STANDARD.encode([byte; 32])
}

/// The master keys of this process (`v1` and `v2`, so `v2` seals): the config server reads them from
/// the environment like the binary does. Set once, before any server starts, by every test.
fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::env::set_var("LEAKY_MASTER_KEY", format!("v1:{},v2:{}", b64(1), b64(2)));
    });
}

fn only(version: i32, byte: u8) -> MasterKeys {
    MasterKeys::parse(&format!("v{version}:{}", b64(byte))).unwrap()
}

struct Server {
    base: String,
    http: reqwest::Client,
    pool: PgPool,
}

/// A control plane with identity (its master keys `keys`) and the config server, on `pool`.
async fn serve(pool: &PgPool, keys: MasterKeys) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let state = ApiState::new(pool.clone(), AdminToken::new(common::TOKEN));
    state.set_migrated();
    let settings = Settings::new(&base, keys, false);
    let clock = state.clock.clone();
    let identity: Arc<Identity> = Identity::new(settings, pool.clone(), clock, None).unwrap();
    let router = app::router(state.clone(), &Roles::all())
        .merge(identity::router(state, identity))
        .into_make_service_with_connect_info::<std::net::SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, router).await });
    Server {
        base,
        http: reqwest::Client::new(),
        pool: pool.clone(),
    }
}

async fn fresh_pool() -> PgPool {
    let url = common::fresh_db().await.unwrap();
    let pool = db::pool(&url, 8).unwrap();
    db::migrate(&pool).await.unwrap();
    pool
}

async fn server() -> Server {
    init();
    let pool = fresh_pool().await;
    serve(&pool, MasterKeys::from_env(false).unwrap()).await
}

impl Server {
    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(common::TOKEN)
    }

    async fn put_credential(&self, name: &str, value: &str) -> reqwest::Response {
        self.req(
            reqwest::Method::PUT,
            &format!("/v1/provider-credentials/{name}"),
        )
        .json(&json!({ "value": value }))
        .send()
        .await
        .unwrap()
    }

    async fn put_base(&self, base: &str) -> reqwest::Response {
        self.req(reqwest::Method::PUT, "/v1/config/base")
            .header("content-type", "application/yaml")
            .body(base.to_owned())
            .send()
            .await
            .unwrap()
    }

    async fn text(&self, path: &str) -> String {
        let res = self.req(reqwest::Method::GET, path).send().await.unwrap();
        assert_eq!(res.status(), 200, "{path}");
        res.text().await.unwrap()
    }

    /// Every byte of `table`'s rows, as text and raw (`bytea` columns included).
    async fn dump(&self, table: &str) -> (String, Vec<u8>) {
        let text: Vec<String> = sqlx::query_scalar(&format!("SELECT t::text FROM {table} t"))
            .fetch_all(&self.pool)
            .await
            .unwrap();
        let raw: Vec<Vec<u8>> = sqlx::query_scalar(&format!(
            "SELECT convert_to(t::text, 'UTF8') FROM {table} t"
        ))
        .fetch_all(&self.pool)
        .await
        .unwrap();
        (text.join("\n"), raw.concat())
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// A base whose OpenAI provider's credential is `credential` (YAML, written as is).
fn base(credential: &str) -> String {
    format!(
        "providers:\n  openai:\n    base_url: http://127.0.0.1:9\n    models: [gpt-4o]\n    credential: {credential}\n\
routes:\n  - name: v1\n    prefix: /v1\n    upstream: {{ provider: openai, path_prefix: /v1 }}\n    filters: [{{ kind: api-key }}]\n"
    )
}

/// A watch stream's events, heartbeats skipped.
struct Watcher {
    rx: tokio::sync::mpsc::UnboundedReceiver<Value>,
}

impl Watcher {
    async fn open(s: &Server) -> Watcher {
        let res = s
            .req(reqwest::Method::GET, "/v1/config/watch?instance=proxy-1")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut body = res.bytes_stream();
            let mut buf = Vec::new();
            while let Some(Ok(chunk)) = body.next().await {
                buf.extend_from_slice(&chunk);
                while let Some(i) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=i).collect();
                    let v: Value = serde_json::from_slice(&line).unwrap();
                    if v["type"] != "heartbeat" && tx.send(v).is_err() {
                        return;
                    }
                }
            }
        });
        Watcher { rx }
    }

    /// The next snapshot's document, loaded as a proxy loads it: (version, OpenAI credential).
    async fn snapshot(&mut self) -> (i64, String) {
        loop {
            let v = tokio::time::timeout(Duration::from_secs(10), self.rx.recv())
                .await
                .expect("an event within 10 s")
                .expect("the stream is open");
            if v["type"] != "snapshot" {
                continue;
            }
            let doc = v["document"].as_str().unwrap();
            let config =
                leaky_config::load_text(Path::new("pushed"), doc, Path::new("."), &|_| None)
                    .unwrap();
            let cred = config.providers["openai"].credential.as_ref().unwrap();
            return (v["version"].as_i64().unwrap(), cred.expose().to_owned());
        }
    }
}

#[tokio::test]
async fn a_stored_credential_is_sealed_bound_to_its_name_and_never_shown() {
    let s = server().await;
    let res = s.put_credential("openai", VALUE).await;
    assert_eq!(res.status(), 201);
    let created = res.text().await.unwrap();
    assert!(!created.contains(VALUE), "{created}");
    let created: Value = serde_json::from_str(&created).unwrap();
    assert_eq!(created["name"], "openai");
    assert_eq!(
        created["fingerprint"],
        provider_credentials::fingerprint(VALUE)
    );
    assert_eq!(s.put_credential("other", OTHER_VALUE).await.status(), 201);

    // The rows (every column, bytea included) and the audit log hold no plaintext.
    for table in ["identity.provider_credentials", "audit.events"] {
        let (text, raw) = s.dump(table).await;
        for v in [VALUE, OTHER_VALUE] {
            assert!(!text.contains(v), "{table} holds a value in clear");
            assert!(!contains(&raw, v), "{table} holds a value's bytes");
        }
    }
    let actions: Vec<String> = sqlx::query_scalar(
        "SELECT action FROM audit.events WHERE object_kind = 'provider_credential' ORDER BY id",
    )
    .fetch_all(&s.pool)
    .await
    .unwrap();
    assert_eq!(
        actions,
        ["provider_credential.put", "provider_credential.put"]
    );
    let ciphertext: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT ciphertext FROM identity.provider_credentials")
            .fetch_all(&s.pool)
            .await
            .unwrap();
    assert!(ciphertext.iter().all(|c| !contains(c, VALUE)));

    // Both layers bind the name: openai's sealed value moved onto `other` does not open.
    let keys = MasterKeys::from_env(false).unwrap();
    let mut conn = s.pool.acquire().await.unwrap();
    let names = ["openai".to_owned(), "other".to_owned()];
    let opened = provider_credentials::open_all(&mut conn, &keys, names.iter())
        .await
        .unwrap();
    assert_eq!(opened["openai"].expose(), VALUE);
    sqlx::query(
        "UPDATE identity.provider_credentials o SET key_version = s.key_version,
            wrapped_dek = s.wrapped_dek, ciphertext = s.ciphertext
         FROM identity.provider_credentials s WHERE o.name = 'other' AND s.name = 'openai'",
    )
    .execute(&s.pool)
    .await
    .unwrap();
    let moved = provider_credentials::open_all(&mut conn, &keys, names[1..].iter()).await;
    let err = moved.unwrap_err().to_string();
    assert!(err.contains("failed authentication"), "{err}");
    assert!(!err.contains(VALUE));

    // The listing shows names and fingerprints only.
    let listing = s.text("/v1/provider-credentials").await;
    assert!(!listing.contains(VALUE) && !listing.contains(OTHER_VALUE));
    let listing: Value = serde_json::from_str(&listing).unwrap();
    let names: Vec<&str> = listing["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["openai", "other"]);
    assert_eq!(
        listing["items"][0].as_object().unwrap().len(),
        4,
        "{listing}"
    );

    // Replacing is 200 with a new fingerprint; bad input never echoes the value.
    let res = s.put_credential("openai", OTHER_VALUE).await;
    assert_eq!(res.status(), 200);
    let replaced: Value = res.json().await.unwrap();
    assert_eq!(
        replaced["fingerprint"],
        provider_credentials::fingerprint(OTHER_VALUE)
    );
    let body = problem(s.put_credential("Bad Name", VALUE).await, 422, "validation")
        .await
        .unwrap();
    assert!(!body.to_string().contains(VALUE));
    let bad_value = format!("{VALUE}\n");
    let body = problem(
        s.put_credential("openai", &bad_value).await,
        422,
        "validation",
    )
    .await
    .unwrap();
    assert!(!body.to_string().contains(VALUE), "{body}");
    let res = s
        .req(reqwest::Method::PUT, "/v1/provider-credentials/openai")
        .json(&json!({ "value": VALUE, "extra": 1 }))
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    assert!(
        (400..500).contains(&status) && !text.contains(VALUE),
        "{text}"
    );

    // Delete: 204, then 404.
    let del = |name: &str| {
        s.req(
            reqwest::Method::DELETE,
            &format!("/v1/provider-credentials/{name}"),
        )
        .send()
    };
    assert_eq!(del("other").await.unwrap().status(), 204);
    problem(del("other").await.unwrap(), 404, "not-found")
        .await
        .unwrap();
}

#[tokio::test]
async fn a_base_references_a_credential_and_only_the_proxy_stream_carries_the_value() {
    let s = server().await;
    assert_eq!(s.put_credential("openai", VALUE).await.status(), 201);
    let res = s.put_base(&base("${secret:openai}")).await;
    assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
    let mut watcher = Watcher::open(&s).await;
    let (v1, cred) = watcher.snapshot().await;
    assert_eq!(cred, VALUE, "the proxy gets the value");

    // Postgres and the admin API keep the reference only.
    let (text, raw) = s.dump("config.versions").await;
    assert!(text.contains("${secret:openai}"));
    assert!(!text.contains(VALUE) && !contains(&raw, VALUE));
    for path in [
        "/v1/config/base".to_owned(),
        format!("/v1/config/versions/{v1}"),
    ] {
        let shown = s.text(&path).await;
        assert!(shown.contains("${secret:openai}"), "{path}: {shown}");
        assert!(!shown.contains(VALUE), "{path}");
    }

    // A changed credential is pushed as a new snapshot, without any base change.
    assert_eq!(s.put_credential("openai", OTHER_VALUE).await.status(), 200);
    let (v2, cred) = watcher.snapshot().await;
    assert!(v2 > v1);
    assert_eq!(cred, OTHER_VALUE);
    let (text, _) = s.dump("config.versions").await;
    assert!(!text.contains(OTHER_VALUE));
    // A proxy connecting now starts from the new value too.
    let (_, cred) = Watcher::open(&s).await.snapshot().await;
    assert_eq!(cred, OTHER_VALUE);

    // A `$` in a value reaches the proxy as itself (the loader's `$$` escape).
    assert_eq!(s.put_credential("openai", "sk-$x${Y}").await.status(), 200);
    assert_eq!(watcher.snapshot().await.1, "sk-$x${Y}");

    // The credential in force cannot be deleted; once the base no longer uses it, it can.
    let del = || {
        s.req(reqwest::Method::DELETE, "/v1/provider-credentials/openai")
            .send()
    };
    let body = problem(del().await.unwrap(), 409, "conflict")
        .await
        .unwrap();
    assert!(body["detail"]
        .as_str()
        .unwrap()
        .contains("${secret:openai}"));
    assert_eq!(
        s.put_base(&base("${OPENAI_API_KEY:-sk-stub}"))
            .await
            .status(),
        201
    );
    assert_eq!(del().await.unwrap().status(), 204);
}

#[tokio::test]
async fn literal_and_unknown_credentials_are_refused_at_put() {
    let s = server().await;
    let versions = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM config.versions")
            .fetch_one(&s.pool)
            .await
            .unwrap()
    };
    let body = problem(s.put_base(&base(VALUE)).await, 422, "validation")
        .await
        .unwrap();
    let shown = body.to_string();
    assert!(shown.contains("providers.openai.credential"), "{shown}");
    assert!(
        shown.contains("PUT /v1/provider-credentials/{name}"),
        "{shown}"
    );
    assert!(!shown.contains(VALUE), "{shown}");
    let deployment = base("${OPENAI_API_KEY}").replace(
        "    models: [gpt-4o]\n",
        &format!("    models: [gpt-4o]\n    deployments:\n      - {{ name: eu, base_url: http://127.0.0.1:10, credential: {VALUE} }}\n"),
    );
    let body = problem(s.put_base(&deployment).await, 422, "validation")
        .await
        .unwrap();
    assert!(
        body.to_string().contains("deployments[0].credential"),
        "{body}"
    );

    let body = problem(s.put_base(&base("${secret:nope}")).await, 422, "validation")
        .await
        .unwrap();
    assert!(body.to_string().contains("${secret:nope}"), "{body}");
    assert_eq!(versions().await, 0, "nothing refused was stored");
    let (text, _) = s.dump("config.versions").await;
    assert!(!text.contains(VALUE));

    // Environment references work as before (defaults included).
    // (validated with the control plane's environment, as before: `PATH` is set, the default covers the other)
    for env in ["${PATH}", "${OPENAI_API_KEY:-sk-stub-openai}"] {
        let res = s.put_base(&base(env)).await;
        assert!(
            res.status().is_success(),
            "{env}: {}",
            res.text().await.unwrap()
        );
    }
    assert_eq!(versions().await, 2);
}

#[tokio::test]
async fn master_key_rotation_and_rewrap_keep_credentials_readable() {
    init();
    let db_url = common::fresh_db().await.unwrap();
    let pool = db::pool(&db_url, 8).unwrap();
    db::migrate(&pool).await.unwrap();
    // Sealed under v1 only (an older deployment).
    let old = serve(&pool, only(1, 1)).await;
    assert_eq!(old.put_credential("openai", VALUE).await.status(), 201);
    let version: i32 = sqlx::query_scalar("SELECT key_version FROM identity.provider_credentials")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(version, 1);

    // `secrets rewrap` with v1 and v2 configured (this process's environment) moves the row to v2.
    let lines = identity::rewrap_command(&db_url).await.unwrap();
    assert!(
        lines.contains(
            &"identity.provider_credentials: 1 row(s) re-wrapped under master key v2".to_owned()
        ),
        "{lines:?}"
    );
    let lines = identity::rewrap_command(&db_url).await.unwrap();
    assert!(
        lines[1].starts_with("identity.provider_credentials: 0 row(s)"),
        "{lines:?}"
    );

    // v2 alone opens it now; v1 alone no longer does.
    let mut conn = pool.acquire().await.unwrap();
    let names = ["openai".to_owned()];
    let opened = provider_credentials::open_all(&mut conn, &only(2, 2), names.iter())
        .await
        .unwrap();
    assert_eq!(opened["openai"].expose(), VALUE);
    assert!(
        provider_credentials::open_all(&mut conn, &only(1, 1), names.iter())
            .await
            .is_err()
    );
    // And the config server (v1+v2 from the environment) still resolves it for proxies.
    let res = old.put_base(&base("${secret:openai}")).await;
    assert_eq!(res.status(), 201);
    assert_eq!(Watcher::open(&old).await.snapshot().await.1, VALUE);
}

#[tokio::test]
async fn only_platform_admins_manage_credentials() {
    let s = server().await;
    assert_eq!(s.put_credential("openai", VALUE).await.status(), 201);
    let org: Value = s
        .req(reqwest::Method::POST, "/v1/orgs")
        .json(&json!({"name": "acme"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let org = org["id"].as_str().unwrap();
    let key: Value = s
        .req(reqwest::Method::POST, &format!("/v1/orgs/{org}/keys"))
        .json(&json!({"name": "k", "tier": "pro", "admin_roles": ["org-admin"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let org_admin = key["key"].as_str().unwrap();
    let calls = [
        (reqwest::Method::GET, "/v1/provider-credentials"),
        (reqwest::Method::PUT, "/v1/provider-credentials/openai"),
        (reqwest::Method::DELETE, "/v1/provider-credentials/openai"),
    ];
    for (method, path) in calls {
        let call = |token: Option<&str>| {
            let req = s
                .http
                .request(method.clone(), format!("{}{path}", s.base))
                .json(&json!({"value": OTHER_VALUE}));
            match token {
                Some(t) => req.bearer_auth(t),
                None => req,
            }
            .send()
        };
        problem(call(None).await.unwrap(), 401, "unauthorized")
            .await
            .unwrap();
        problem(call(Some("garbage")).await.unwrap(), 401, "unauthorized")
            .await
            .unwrap();
        problem(call(Some(org_admin)).await.unwrap(), 403, "forbidden")
            .await
            .unwrap();
    }
    // Nothing changed.
    let mut conn = s.pool.acquire().await.unwrap();
    let keys = MasterKeys::from_env(false).unwrap();
    let names = ["openai".to_owned()];
    let opened = provider_credentials::open_all(&mut conn, &keys, names.iter())
        .await
        .unwrap();
    assert_eq!(opened["openai"].expose(), VALUE);
}
