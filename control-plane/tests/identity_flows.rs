//! The people flows of the authorization server (issue 14, third increment) on a real PostgreSQL and
//! a real `redis-server`, each test with its own of both: authorization_code + PKCE for public and
//! confidential clients, ID tokens verified from the JWKS by `jsonwebtoken`, `userinfo`, refresh
//! rotation, `private_key_jwt`, and every negative of the OAuth2 list — wrong secret,
//! unknown client, redirect-URI tricks, PKCE mismatch and `plain`, code reuse (revoking what the code
//! gave), expired codes (injected clock), refresh reuse (revoking the family), login lockout and the
//! per-IP counter — plus sessions surviving a control-plane restart.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::net::SocketAddr;
use std::sync::Arc;

use chrono::{Duration, TimeZone, Utc};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use leaky_control_plane::clock::ManualClock;
use leaky_control_plane::http::{AdminToken, ApiState};
use leaky_control_plane::identity::grants::s256;
use leaky_control_plane::identity::oidc::at_hash;
use leaky_control_plane::identity::users::{MAX_ACCOUNT_FAILURES, MAX_IP_FAILURES};
use leaky_control_plane::identity::{self, Alg, Identity, MasterKeys, Settings};
use leaky_control_plane::{app, db, Roles};
use leaky_limit::redis_server::RedisServer;
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use serde_json::{json, Value};
use sqlx::PgPool;

const REDIRECT: &str = "https://app.example.com/cb";
const PASSWORD: &str = "correct horse battery";
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";

/// One control-plane replica with identity on `pool`, Redis at `redis`, time from `clock`.
struct Server {
    base: String,
    http: reqwest::Client,
    identity: Arc<Identity>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    /// The replica stops serving (its in-memory state is gone with it).
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(pool: &PgPool, clock: Arc<ManualClock>, redis: &str) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let state =
        ApiState::new(pool.clone(), AdminToken::new(common::TOKEN)).with_clock(clock.clone());
    state.set_migrated();
    let mut settings = Settings::new(&base, MasterKeys::dev(), false);
    settings.algs = vec![Alg::ES256, Alg::EdDSA];
    let identity = Identity::new(settings, pool.clone(), clock, Some(redis)).unwrap();
    identity.tick().await.unwrap();
    let router = identity::attach(
        app::router(state.clone(), &Roles::all()),
        state,
        identity.clone(),
    )
    .into_make_service_with_connect_info::<SocketAddr>();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    Server {
        base,
        http,
        identity,
        task,
    }
}

/// A fresh database, a fresh Redis, a manual clock, one replica, and an org with a user who has a
/// password.
struct World {
    pool: PgPool,
    redis: RedisServer,
    clock: Arc<ManualClock>,
    s: Server,
    org: String,
    email: String,
}

async fn world() -> World {
    let url = common::fresh_db().await.unwrap();
    let pool = db::pool(&url, 8).unwrap();
    db::migrate(&pool).await.unwrap();
    let redis = RedisServer::spawn().expect(leaky_limit::redis_server::NOT_FOUND);
    let clock = Arc::new(ManualClock::new(
        Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap(),
    ));
    let s = serve(&pool, clock.clone(), &redis.url()).await;
    let org = s.admin("POST", "/v1/orgs", json!({"name": "acme"})).await.1["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let email = "ada@acme.example".to_owned();
    s.user(&org, &email, &["org-admin"]).await;
    World {
        pool,
        redis,
        clock,
        s,
        org,
        email,
    }
}

/// A browser: the session cookie it holds.
#[derive(Default)]
struct Browser {
    cookie: Option<String>,
}

impl Browser {
    fn keep_cookie(&mut self, res: &reqwest::Response) {
        if let Some(c) = res.headers().get(SET_COOKIE) {
            let pair = c.to_str().unwrap().split(';').next().unwrap().to_owned();
            self.cookie = Some(pair);
        }
    }
}

fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker).expect(name) + marker.len();
    let len = html[start..].find('"').unwrap();
    html[start..start + len].to_owned()
}

fn query_param(location: &str, name: &str) -> Option<String> {
    let url = reqwest::Url::parse(location).unwrap();
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

impl Server {
    async fn admin(&self, method: &str, path: &str, body: Value) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let res = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(common::TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    /// A user of `org` with `roles` and the password [`PASSWORD`]; returns its id.
    async fn user(&self, org: &str, email: &str, roles: &[&str]) -> String {
        let (status, user) = self
            .admin(
                "POST",
                &format!("/v1/orgs/{org}/users"),
                json!({"email": email, "name": "Ada", "roles": roles}),
            )
            .await;
        assert_eq!(status, 201, "{user}");
        let id = user["id"].as_str().unwrap().to_owned();
        let path = format!("/v1/orgs/{org}/users/{id}/password");
        let (status, body) = self
            .admin("PUT", &path, json!({"password": PASSWORD}))
            .await;
        assert_eq!(status, 204, "{body}");
        id
    }

    /// A client; returns its id and secret (if it has one).
    async fn client(&self, body: Value) -> (String, Option<String>) {
        let (status, v) = self.admin("POST", "/v1/identity/clients", body).await;
        assert_eq!(status, 201, "{v}");
        (
            v["id"].as_str().unwrap().into(),
            v["client_secret"].as_str().map(str::to_owned),
        )
    }

    /// A public code-flow client for people, tokens for the admin audience.
    async fn public_client(&self) -> String {
        self.client(
            json!({"name": "spa", "scopes": ["openid", "profile", "email", "admin"],
            "audience": "leaky-admin", "grant_types": ["authorization_code", "refresh_token"],
            "auth_method": "none", "redirect_uris": [REDIRECT, "http://127.0.0.1:8765/callback"]}),
        )
        .await
        .0
    }

    /// A confidential service client allowed to introspect.
    async fn introspector(&self) -> (String, String) {
        let (id, secret) = self
            .client(json!({"name": "rs", "scopes": ["introspect"]}))
            .await;
        (id, secret.unwrap())
    }

    async fn authorize(&self, b: &mut Browser, query: &[(&str, &str)]) -> reqwest::Response {
        let mut req = self
            .http
            .get(format!("{}/oauth2/authorize", self.base))
            .query(query);
        if let Some(c) = &b.cookie {
            req = req.header(COOKIE, c);
        }
        let res = req.send().await.unwrap();
        b.keep_cookie(&res);
        res
    }

    /// Posts the login form of `page` with `email`/`password`.
    async fn login(
        &self,
        b: &mut Browser,
        page: &str,
        email: &str,
        password: &str,
    ) -> reqwest::Response {
        let form = [
            ("request", hidden(page, "request")),
            ("csrf", hidden(page, "csrf")),
            ("email", email.to_owned()),
            ("password", password.to_owned()),
        ];
        let mut req = self
            .http
            .post(format!("{}/oauth2/login", self.base))
            .form(&form);
        if let Some(c) = &b.cookie {
            req = req.header(COOKIE, c);
        }
        let res = req.send().await.unwrap();
        b.keep_cookie(&res);
        res
    }

    /// authorize → login (unless the browser is logged in already) → the code from the redirect
    /// (asserting `state` came back verbatim).
    async fn code_for(&self, b: &mut Browser, client: &str, email: &str, nonce: &str) -> String {
        let challenge = s256(VERIFIER);
        let state = "st&te=<1>";
        let mut res = self
            .authorize(b, &code_query(client, REDIRECT, &challenge, state, nonce))
            .await;
        if res.status() == 200 {
            let page = res.text().await.unwrap();
            res = self.login(b, &page, email, PASSWORD).await;
        }
        assert_eq!(res.status(), 303);
        let location = res.headers()[LOCATION].to_str().unwrap().to_owned();
        assert!(location.starts_with(&format!("{REDIRECT}?")), "{location}");
        assert_eq!(query_param(&location, "state").as_deref(), Some(state));
        query_param(&location, "code").unwrap()
    }

    async fn token(&self, auth: Option<(&str, &str)>, form: &[(&str, &str)]) -> (u16, Value) {
        self.post_form("/oauth2/token", auth, form).await
    }

    async fn post_form(
        &self,
        path: &str,
        auth: Option<(&str, &str)>,
        form: &[(&str, &str)],
    ) -> (u16, Value) {
        let mut req = self.http.post(format!("{}{path}", self.base)).form(form);
        if let Some((id, secret)) = auth {
            req = req.basic_auth(id, Some(secret));
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    /// Redeems `code` as public client `client` with `verifier`.
    async fn redeem(&self, client: &str, code: &str, verifier: &str) -> (u16, Value) {
        self.token(
            None,
            &[
                ("grant_type", "authorization_code"),
                ("client_id", client),
                ("code", code),
                ("redirect_uri", REDIRECT),
                ("code_verifier", verifier),
            ],
        )
        .await
    }

    async fn active(&self, introspector: &(String, String), token: &str) -> bool {
        let auth = Some((introspector.0.as_str(), introspector.1.as_str()));
        let (status, v) = self
            .post_form("/oauth2/introspect", auth, &[("token", token)])
            .await;
        assert_eq!(status, 200, "{v}");
        v["active"].as_bool().unwrap()
    }

    async fn jwks(&self) -> JwkSet {
        let url = format!("{}/.well-known/jwks.json", self.base);
        self.http
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

fn code_query<'a>(
    client: &'a str,
    redirect: &'a str,
    challenge: &'a str,
    state: &'a str,
    nonce: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("response_type", "code"),
        ("client_id", client),
        ("redirect_uri", redirect),
        ("scope", "openid profile email admin"),
        ("state", state),
        ("nonce", nonce),
        ("code_challenge", challenge),
        ("code_challenge_method", "S256"),
    ]
}

/// Verifies `token` with the published JWKS only, as a relying party would (signature, `iss`,
/// `aud`; the manual clock's times are checked by the caller).
fn verify_jwt(set: &JwkSet, token: &str, iss: &str, aud: &str) -> Value {
    let header = jsonwebtoken::decode_header(token).unwrap();
    let key = DecodingKey::from_jwk(set.find(header.kid.as_deref().unwrap()).unwrap()).unwrap();
    let mut v = Validation::new(header.alg);
    v.set_issuer(&[iss]);
    v.set_audience(&[aud]);
    v.validate_exp = false;
    jsonwebtoken::decode::<Value>(token, &key, &v)
        .unwrap()
        .claims
}

#[tokio::test]
async fn a_person_logs_in_with_pkce_and_gets_access_id_and_refresh_tokens() {
    let w = world().await;
    let s = &w.s;
    let client = s.public_client().await;
    let mut b = Browser::default();
    let code = s.code_for(&mut b, &client, &w.email, "n-0S6_WzA2Mj").await;
    // The session cookie: HttpOnly, SameSite=Lax, scoped to /oauth2, not Secure on plain http.
    let (status, t) = s.redeem(&client, &code, VERIFIER).await;
    assert_eq!(status, 200, "{t}");
    assert_eq!(t["token_type"], "Bearer");
    assert!(t["refresh_token"].as_str().unwrap().len() >= 43);
    let access = t["access_token"].as_str().unwrap();
    let set = s.jwks().await;
    let at = verify_jwt(&set, access, &s.base, "leaky-admin");
    assert_eq!(at["org"], w.org.as_str());
    assert_eq!(at["roles"], json!(["org-admin"]));
    assert_eq!(at["client_id"], client.as_str());
    let user_id = at["sub"].as_str().unwrap().to_owned();
    assert_ne!(user_id, client);

    let id = verify_jwt(&set, t["id_token"].as_str().unwrap(), &s.base, &client);
    let now = w.clock.now_secs();
    assert_eq!(id["sub"], user_id.as_str());
    assert_eq!(id["nonce"], "n-0S6_WzA2Mj");
    assert_eq!(id["auth_time"], now);
    assert_eq!(id["iat"], now);
    assert!(id["exp"].as_i64().unwrap() > now);
    assert_eq!(id["email"], w.email.as_str());
    assert_eq!(id["name"], "Ada");
    assert_eq!(id["at_hash"], at_hash(Alg::ES256, access).as_str());

    // userinfo with the access token; without one, RFC 6750.
    let res = s
        .http
        .get(format!("{}/oauth2/userinfo", s.base))
        .bearer_auth(access)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let info: Value = res.json().await.unwrap();
    assert_eq!(
        info,
        json!({"sub": user_id, "email": w.email, "name": "Ada", "org": w.org, "roles": ["org-admin"]})
    );
    let res = s
        .http
        .get(format!("{}/oauth2/userinfo", s.base))
        .bearer_auth("not-a-token")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert!(res.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Bearer error=\"invalid_token\""));

    // The person's token is an admin credential of its org (aud leaky-admin, org-admin role).
    let res = s
        .http
        .get(format!("{}/v1/orgs/{}/users", s.base, w.org))
        .bearer_auth(access)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    // Logged in: the next authorization gets its code without the form (single sign-on).
    let res = s
        .authorize(
            &mut b,
            &code_query(&client, REDIRECT, &s256(VERIFIER), "again", "n2"),
        )
        .await;
    assert_eq!(res.status(), 303);
    let location = res.headers()[LOCATION].to_str().unwrap();
    assert_eq!(query_param(location, "state").as_deref(), Some("again"));
    let code = query_param(location, "code").unwrap();
    let (status, t2) = s.redeem(&client, &code, VERIFIER).await;
    assert_eq!(status, 200, "{t2}");
    let id2 = verify_jwt(&set, t2["id_token"].as_str().unwrap(), &s.base, &client);
    assert_eq!(
        (id2["nonce"].clone(), id2["auth_time"].clone()),
        (json!("n2"), json!(now))
    );
}

trait Secs {
    fn now_secs(&self) -> i64;
}

impl Secs for ManualClock {
    fn now_secs(&self) -> i64 {
        use leaky_control_plane::clock::Clock;
        self.now().timestamp()
    }
}

#[tokio::test]
async fn the_login_page_sets_a_strict_cookie_checks_csrf_and_escapes_html() {
    let w = world().await;
    let s = &w.s;
    let client = s
        .client(json!({"name": "<script>alert(1)</script>", "scopes": ["openid"],
            "grant_types": ["authorization_code"], "auth_method": "none", "redirect_uris": [REDIRECT]}))
        .await
        .0;
    let mut b = Browser::default();
    let challenge = s256(VERIFIER);
    let q = code_query(&client, REDIRECT, &challenge, "s", "n");
    let q: Vec<_> = q.into_iter().filter(|(k, _)| *k != "scope").collect();
    let res = s.authorize(&mut b, &q).await;
    assert_eq!(res.status(), 200);
    let cookie = res.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    for attr in ["HttpOnly", "SameSite=Lax", "Path=/oauth2"] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain http: {cookie}");
    assert_eq!(res.headers()["x-frame-options"], "DENY");
    let page = res.text().await.unwrap();
    assert!(!page.contains("<script>") && page.contains("&lt;script&gt;"));

    // A forged CSRF token, or no session cookie: nothing happens.
    let forged = page.replace(&hidden(&page, "csrf"), &"x".repeat(43));
    let res = s.login(&mut b, &forged, &w.email, PASSWORD).await;
    assert_eq!(res.status(), 400);
    let res = s
        .login(&mut Browser::default(), &page, &w.email, PASSWORD)
        .await;
    assert_eq!(res.status(), 400);
    // The right one logs in, under a new session id (no fixation).
    let before = b.cookie.clone();
    let res = s.login(&mut b, &page, &w.email, PASSWORD).await;
    assert_eq!(res.status(), 303);
    assert_ne!(b.cookie, before);
    // The request was consumed: the same form cannot be replayed.
    let res = s.login(&mut b, &page, &w.email, PASSWORD).await;
    assert_eq!(res.status(), 400);
}

#[tokio::test]
async fn a_confidential_client_redeems_with_its_secret_and_wrong_or_unknown_clients_fail() {
    let w = world().await;
    let s = &w.s;
    let (client, secret) = s
        .client(
            json!({"name": "web", "scopes": ["openid", "profile", "email", "admin"],
            "grant_types": ["authorization_code"], "redirect_uris": [REDIRECT]}),
        )
        .await;
    let secret = secret.unwrap();
    let mut b = Browser::default();
    let code = s.code_for(&mut b, &client, &w.email, "n").await;
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", REDIRECT),
        ("code_verifier", VERIFIER),
    ];
    // Without its secret (as if public) / with a wrong one / as an unknown client: invalid_client.
    let mut public = form.to_vec();
    public.push(("client_id", &client));
    let (status, e) = s.token(None, &public).await;
    assert_eq!((status, e["error"].as_str()), (401, Some("invalid_client")));
    let (status, e) = s.token(Some((&client, "wrong")), &form).await;
    assert_eq!((status, e["error"].as_str()), (401, Some("invalid_client")));
    let (status, e) = s
        .token(Some(("cl_000000000000000000000000", "x")), &form)
        .await;
    assert_eq!((status, e["error"].as_str()), (401, Some("invalid_client")));
    // Failed authentications did not consume the code; the real client redeems it.
    let (status, t) = s.token(Some((&client, &secret)), &form).await;
    assert_eq!(status, 200, "{t}");
    assert!(
        t.get("refresh_token").is_none(),
        "not registered for refresh_token"
    );
    assert!(t.get("id_token").is_some());
    // It may not use grants it is not registered for.
    let (status, e) = s
        .token(
            Some((&client, &secret)),
            &[("grant_type", "client_credentials")],
        )
        .await;
    assert_eq!(
        (status, e["error"].as_str()),
        (400, Some("unauthorized_client"))
    );
}

#[tokio::test]
async fn redirect_uri_tricks_are_refused_on_the_page_and_other_errors_are_redirected() {
    let w = world().await;
    let s = &w.s;
    let client = s.public_client().await;
    let challenge = s256(VERIFIER);
    let mut b = Browser::default();
    for bad in [
        "https://app.example.com/cb/",
        "https://app.example.com/cb2",
        "https://app.example.com/c",
        "https://app.example.com/cb?x=1",
        "https://app.example.com/cb#frag",
        "https://APP.example.com/cb",
        "HTTPS://app.example.com/cb",
        "https://app.example.com/%63b",
        "https://app.example.com.evil.test/cb",
        "https://evil.test/https://app.example.com/cb",
        "https://app.example.com:443/cb",
        "http://127.0.0.1:8765/callback/../evil",
    ] {
        let res = s
            .authorize(&mut b, &code_query(&client, bad, &challenge, "s", "n"))
            .await;
        assert_eq!(res.status(), 400, "{bad}");
        assert!(res.headers().get(LOCATION).is_none(), "{bad}");
    }
    // Unknown client, missing redirect_uri: the page too.
    let res = s
        .authorize(
            &mut b,
            &code_query("cl_nope", REDIRECT, &challenge, "s", "n"),
        )
        .await;
    assert_eq!(res.status(), 400);
    let no_redirect: Vec<_> = code_query(&client, REDIRECT, &challenge, "s", "n")
        .into_iter()
        .filter(|(k, _)| *k != "redirect_uri")
        .collect();
    assert_eq!(s.authorize(&mut b, &no_redirect).await.status(), 400);

    // With a trusted redirect URI, errors go back to it with `state`.
    let with = |k: &'static str, v: Option<&'static str>| {
        let mut q: Vec<(&str, String)> = code_query(&client, REDIRECT, &challenge, "s t", "n")
            .into_iter()
            .filter(|(x, _)| *x != k)
            .map(|(a, b)| (a, b.to_owned()))
            .collect();
        if let Some(v) = v {
            q.push((k, v.to_owned()));
        }
        q
    };
    for (q, error) in [
        (
            with("code_challenge_method", Some("plain")),
            "invalid_request",
        ),
        (with("code_challenge_method", None), "invalid_request"),
        (with("code_challenge", None), "invalid_request"),
        (with("code_challenge", Some("too-short")), "invalid_request"),
        (
            with("response_type", Some("token")),
            "unsupported_response_type",
        ),
        (with("scope", Some("openid billing")), "invalid_scope"),
    ] {
        let q: Vec<(&str, &str)> = q.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let res = s.authorize(&mut b, &q).await;
        assert_eq!(res.status(), 303, "{error}");
        let location = res.headers()[LOCATION].to_str().unwrap();
        assert!(location.starts_with(REDIRECT), "{location}");
        assert_eq!(query_param(location, "error").as_deref(), Some(error));
        assert_eq!(query_param(location, "state").as_deref(), Some("s t"));
        assert!(query_param(location, "code").is_none());
    }
}

#[tokio::test]
async fn pkce_mismatch_redirect_mismatch_and_another_client_fail_and_use_up_the_code() {
    let w = world().await;
    let s = &w.s;
    let client = s.public_client().await;
    let other = s.public_client().await;
    let mut b = Browser::default();
    let code = s.code_for(&mut b, &client, &w.email, "n").await;
    let wrong = "x".repeat(43);
    let (status, e) = s.redeem(&client, &code, &wrong).await;
    assert_eq!((status, e["error"].as_str()), (400, Some("invalid_grant")));
    // A code is single use whatever the first attempt presented.
    let (status, e) = s.redeem(&client, &code, VERIFIER).await;
    assert_eq!((status, e["error"].as_str()), (400, Some("invalid_grant")));

    let code = s.code_for(&mut b, &client, &w.email, "n").await;
    let (status, e) = s
        .token(
            None,
            &[
                ("grant_type", "authorization_code"),
                ("client_id", &client),
                ("code", &code),
                ("redirect_uri", "http://127.0.0.1:8765/callback"),
                ("code_verifier", VERIFIER),
            ],
        )
        .await;
    assert_eq!((status, e["error"].as_str()), (400, Some("invalid_grant")));
    let code = s.code_for(&mut b, &client, &w.email, "n").await;
    let (status, e) = s.redeem(&other, &code, VERIFIER).await;
    assert_eq!((status, e["error"].as_str()), (400, Some("invalid_grant")));
    let code = s.code_for(&mut b, &client, &w.email, "n").await;
    let (status, e) = s
        .token(
            None,
            &[
                ("grant_type", "authorization_code"),
                ("client_id", &client),
                ("code", &code),
                ("redirect_uri", REDIRECT),
            ],
        )
        .await;
    assert_eq!(
        (status, e["error"].as_str()),
        (400, Some("invalid_request"))
    );
}

#[tokio::test]
async fn a_reused_code_fails_and_revokes_every_token_issued_from_it() {
    let w = world().await;
    let s = &w.s;
    let client = s.public_client().await;
    let rs = s.introspector().await;
    let mut b = Browser::default();
    let code = s.code_for(&mut b, &client, &w.email, "n").await;
    let (status, first) = s.redeem(&client, &code, VERIFIER).await;
    assert_eq!(status, 200);
    let access = first["access_token"].as_str().unwrap();
    let refresh = first["refresh_token"].as_str().unwrap();
    assert!(s.active(&rs, access).await);

    let (status, e) = s.redeem(&client, &code, VERIFIER).await;
    assert_eq!((status, e["error"].as_str()), (400, Some("invalid_grant")));
    assert!(!s.active(&rs, access).await, "the first token is revoked");
    let (status, e) = s
        .token(
            None,
            &[
                ("grant_type", "refresh_token"),
                ("client_id", &client),
                ("refresh_token", refresh),
            ],
        )
        .await;
    assert_eq!((status, e["error"].as_str()), (400, Some("invalid_grant")));
    // The admin API refuses the revoked token too.
    let res = s
        .http
        .get(format!("{}/v1/orgs/{}/users", s.base, w.org))
        .bearer_auth(access)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
}

#[tokio::test]
async fn an_expired_code_is_refused() {
    let w = world().await;
    let s = &w.s;
    let client = s.public_client().await;
    let mut b = Browser::default();
    let code = s.code_for(&mut b, &client, &w.email, "n").await;
    w.clock
        .advance(s.identity.settings.code_ttl + Duration::seconds(1));
    let (status, e) = s.redeem(&client, &code, VERIFIER).await;
    assert_eq!((status, e["error"].as_str()), (400, Some("invalid_grant")));
    assert!(e["error_description"].as_str().unwrap().contains("expired"));
    // One second earlier it would have worked.
    let code = s.code_for(&mut b, &client, &w.email, "n").await;
    w.clock
        .advance(s.identity.settings.code_ttl - Duration::seconds(1));
    assert_eq!(s.redeem(&client, &code, VERIFIER).await.0, 200);
}

#[tokio::test]
async fn refresh_rotates_and_a_reused_refresh_token_revokes_the_family() {
    let w = world().await;
    let s = &w.s;
    let client = s.public_client().await;
    let rs = s.introspector().await;
    let mut b = Browser::default();
    let code = s.code_for(&mut b, &client, &w.email, "n").await;
    let (_, t1) = s.redeem(&client, &code, VERIFIER).await;
    let r1 = t1["refresh_token"].as_str().unwrap().to_owned();
    let refresh = |token: String, scope: Option<&'static str>| {
        let client = client.clone();
        async move {
            let mut form = vec![
                ("grant_type", "refresh_token".to_owned()),
                ("client_id", client),
                ("refresh_token", token),
            ];
            form.extend(scope.map(|s| ("scope", s.to_owned())));
            let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
            s.token(None, &form).await
        }
    };
    w.clock.advance(Duration::minutes(20));
    let (status, t2) = refresh(r1.clone(), Some("admin")).await;
    assert_eq!(status, 200, "{t2}");
    assert_eq!(t2["scope"], "admin", "a refresh may narrow the scope");
    let r2 = t2["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(r1, r2);
    let a2 = t2["access_token"].as_str().unwrap().to_owned();
    assert!(s.active(&rs, &a2).await);
    let (status, e) = refresh(r2.clone(), Some("admin openid")).await;
    assert_eq!((status, e["error"].as_str()), (400, Some("invalid_scope")));

    // r1 was rotated away: presenting it again is a replay → the whole family dies.
    let (status, e) = refresh(r1, None).await;
    assert_eq!((status, e["error"].as_str()), (400, Some("invalid_grant")));
    assert!(
        !s.active(&rs, &a2).await,
        "the family's access tokens are revoked"
    );
    let (status, e) = refresh(r2, None).await;
    assert_eq!((status, e["error"].as_str()), (400, Some("invalid_grant")));

    // RFC 7009 on a refresh token ends its family too.
    let code = s.code_for(&mut b, &client, &w.email, "n").await;
    let (_, t) = s.redeem(&client, &code, VERIFIER).await;
    let (a, r) = (
        t["access_token"].as_str().unwrap(),
        t["refresh_token"].as_str().unwrap(),
    );
    let (status, _) = s
        .post_form(
            "/oauth2/revoke",
            None,
            &[
                ("client_id", &client),
                ("token", r),
                ("token_type_hint", "refresh_token"),
            ],
        )
        .await;
    assert_eq!(status, 200);
    assert!(!s.active(&rs, a).await);
    assert_eq!(refresh(r.to_owned(), None).await.0, 400);
}

/// Posts a login for `email` with `password` from a fresh browser; returns status and page.
async fn try_login(s: &Server, client: &str, email: &str, password: &str) -> (u16, String) {
    let mut b = Browser::default();
    let res = s
        .authorize(
            &mut b,
            &code_query(client, REDIRECT, &s256(VERIFIER), "s", "n"),
        )
        .await;
    let page = res.text().await.unwrap();
    let res = s.login(&mut b, &page, email, password).await;
    let status = res.status().as_u16();
    let body = res.text().await.unwrap();
    // The page never echoes the password.
    assert!(!body.contains(password));
    (status, body)
}

/// The part of a login answer that may differ between attempts: the per-request ids.
fn without_ids(page: &str) -> String {
    let mut p = page.to_owned();
    for name in ["request", "csrf"] {
        if p.contains(&format!("name=\"{name}\"")) {
            p = p.replace(&hidden(page, name), "");
        }
    }
    p
}

#[tokio::test]
async fn an_account_locks_after_repeated_failures_and_answers_like_a_wrong_password() {
    let w = world().await;
    let s = &w.s;
    let client = s.public_client().await;
    for _ in 0..MAX_ACCOUNT_FAILURES {
        let (status, _) = try_login(s, &client, &w.email, "wrong password!").await;
        assert_eq!(status, 401);
    }
    // Locked: the right password gets exactly the wrong-password answer, and so does an unknown
    // account with the same e-mail shape.
    let (status, locked) = try_login(s, &client, &w.email, PASSWORD).await;
    assert_eq!(status, 401);
    let (_, wrong) = try_login(s, &client, &w.email, "wrong password!").await;
    assert_eq!(without_ids(&locked), without_ids(&wrong));
    let (status, _) = try_login(s, &client, "nobody@acme.example", PASSWORD).await;
    assert_eq!(status, 401);
    // Another account is not affected; the window ends on the clock.
    s.user(&w.org, "bob@acme.example", &[]).await;
    assert_eq!(
        try_login(s, &client, "bob@acme.example", PASSWORD).await.0,
        303
    );
    w.clock.advance(Duration::seconds(
        leaky_control_plane::identity::users::LOGIN_WINDOW_SECS,
    ));
    assert_eq!(try_login(s, &client, &w.email, PASSWORD).await.0, 303);
}

#[tokio::test]
async fn failed_logins_per_ip_are_counted_in_redis_across_replicas() {
    let w = world().await;
    let client = w.s.public_client().await;
    let other = serve(&w.pool, w.clock.clone(), &w.redis.url()).await;
    // Spread over two replicas and many accounts: one counter per IP, shared through Redis.
    for i in 0..MAX_IP_FAILURES {
        let s = if i % 2 == 0 { &w.s } else { &other };
        let (status, _) =
            try_login(s, &client, &format!("u{i}@acme.example"), "wrong password!").await;
        assert_eq!(status, 401);
    }
    let (status, page) = try_login(&other, &client, &w.email, PASSWORD).await;
    assert_eq!(status, 429, "{page}");
    let (status, _) = try_login(&w.s, &client, &w.email, PASSWORD).await;
    assert_eq!(status, 429);
}

#[tokio::test]
async fn failed_client_authentications_are_counted_in_redis_across_replicas() {
    let w = world().await;
    let (id, secret) = w.s.client(json!({"name": "svc", "scopes": ["read"]})).await;
    let secret = secret.unwrap();
    let other = serve(&w.pool, w.clock.clone(), &w.redis.url()).await;
    let cc = [("grant_type", "client_credentials")];
    assert_eq!(w.s.token(Some((&id, &secret)), &cc).await.0, 200);
    // Spread over two replicas: each alone would allow MAX_FAILURES; together they allow no more.
    for i in 0..identity::oauth::MAX_FAILURES {
        let s = if i % 2 == 0 { &w.s } else { &other };
        assert_eq!(s.token(Some((&id, "a guess")), &cc).await.0, 401);
    }
    // The right secret is refused on both until the window ends (it was remembered as verified
    // before the attack: the limit still comes first).
    assert_eq!(other.token(Some((&id, &secret)), &cc).await.0, 429);
    assert_eq!(w.s.token(Some((&id, &secret)), &cc).await.0, 429);
    w.clock
        .advance(Duration::seconds(identity::oauth::WINDOW_SECS));
    assert_eq!(other.token(Some((&id, &secret)), &cc).await.0, 200);
}

#[tokio::test]
async fn sessions_and_codes_survive_a_control_plane_restart() {
    let w = world().await;
    let client = w.s.public_client().await;
    let mut b = Browser::default();
    let challenge = s256(VERIFIER);
    let res =
        w.s.authorize(&mut b, &code_query(&client, REDIRECT, &challenge, "s", "n"))
            .await;
    let page = res.text().await.unwrap();
    // The replica that showed the form goes away; a fresh one (nothing in memory) takes the POST.
    drop(w.s);
    let s = serve(&w.pool, w.clock.clone(), &w.redis.url()).await;
    let res = s.login(&mut b, &page, &w.email, PASSWORD).await;
    assert_eq!(res.status(), 303);
    let location = res.headers()[LOCATION].to_str().unwrap().to_owned();
    let code = query_param(&location, "code").unwrap();
    // Another fresh replica redeems the code and knows the logged-in session.
    let s2 = serve(&w.pool, w.clock.clone(), &w.redis.url()).await;
    assert_eq!(s2.redeem(&client, &code, VERIFIER).await.0, 200);
    let res = s2
        .authorize(&mut b, &code_query(&client, REDIRECT, &challenge, "s", "n"))
        .await;
    assert_eq!(res.status(), 303, "logged in across the restart");
}

/// An ES256 key pair: the signing key and its public JWK (`kid` = `kid`).
fn client_key(kid: &str) -> (EncodingKey, Jwk) {
    use p256::pkcs8::EncodePrivateKey;
    let secret = p256::SecretKey::random(&mut rand08::rngs::OsRng);
    let der = secret.to_pkcs8_der().unwrap();
    let key = EncodingKey::from_ec_der(der.as_bytes());
    let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256).unwrap();
    jwk.common.key_id = Some(kid.into());
    (key, jwk)
}

fn assertion(key: &EncodingKey, alg: Algorithm, claims: Value) -> String {
    let mut header = Header::new(alg);
    header.kid = Some("k1".into());
    jsonwebtoken::encode(&header, &claims, key).unwrap()
}

#[tokio::test]
async fn private_key_jwt_authenticates_at_token_introspection_and_revocation() {
    let w = world().await;
    let s = &w.s;
    let (key, jwk) = client_key("k1");
    let (client, secret) = s
        .client(
            json!({"name": "signer", "scopes": ["read"], "auth_method": "private_key_jwt",
            "jwks": {"keys": [jwk]}}),
        )
        .await;
    assert!(
        secret.is_none(),
        "no secret exists for a private_key_jwt client"
    );
    let token_ep = format!("{}/oauth2/token", s.base);
    let claims = |aud: &str, jti: &str| {
        let now = w.clock.now_secs();
        json!({"iss": client, "sub": client, "aud": aud, "exp": now + 60, "iat": now, "jti": jti})
    };
    let call = |path: &'static str, jwt: String, extra: Vec<(&'static str, String)>| async move {
        let mut form = vec![
            (
                "client_assertion_type",
                identity::assertion::JWT_BEARER.to_owned(),
            ),
            ("client_assertion", jwt),
        ];
        form.extend(extra);
        let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        s.post_form(path, None, &form).await
    };
    let cc = || vec![("grant_type", "client_credentials".to_owned())];
    let jwt = assertion(&key, Algorithm::ES256, claims(&token_ep, "j1"));
    let (status, t) = call("/oauth2/token", jwt.clone(), cc()).await;
    assert_eq!(status, 200, "{t}");
    let access = t["access_token"].as_str().unwrap().to_owned();
    // The same assertion again: its jti was used.
    let (status, e) = call("/oauth2/token", jwt, cc()).await;
    assert_eq!((status, e["error"].as_str()), (401, Some("invalid_client")));

    // Introspection and revocation with assertions for those endpoints (or the issuer).
    let jwt = assertion(
        &key,
        Algorithm::ES256,
        claims(&format!("{}/oauth2/introspect", s.base), "j2"),
    );
    let (status, v) = call("/oauth2/introspect", jwt, vec![("token", access.clone())]).await;
    assert_eq!((status, v["active"].as_bool()), (200, Some(true)));
    let jwt = assertion(&key, Algorithm::ES256, claims(&s.base, "j3"));
    let (status, _) = call("/oauth2/revoke", jwt, vec![("token", access.clone())]).await;
    assert_eq!(status, 200);
    let rs = s.introspector().await;
    assert!(!s.active(&rs, &access).await);

    // Refused: wrong audience, expired, iss != sub, another client's key, alg none, HS256 with the
    // public key as secret, no jti, a tampered payload, a wrong assertion type.
    let now = w.clock.now_secs();
    let bad_claims = [
        claims("https://elsewhere.example/token", "b1"),
        json!({"iss": client, "sub": client, "aud": token_ep, "exp": now, "jti": "b2"}),
        json!({"iss": "someone", "sub": client, "aud": token_ep, "exp": now + 60, "jti": "b3"}),
        json!({"iss": client, "sub": client, "aud": token_ep, "exp": now + 60}),
        json!({"iss": client, "sub": client, "aud": token_ep, "exp": now + 86_400, "jti": "b4"}),
    ];
    for c in bad_claims {
        let (status, e) = call(
            "/oauth2/token",
            assertion(&key, Algorithm::ES256, c.clone()),
            cc(),
        )
        .await;
        assert_eq!(
            (status, e["error"].as_str()),
            (401, Some("invalid_client")),
            "{c}"
        );
    }
    // Failed client authentications are rate limited (10 per window): start a new window.
    w.clock.advance(Duration::seconds(
        leaky_control_plane::identity::oauth::WINDOW_SECS + 1,
    ));
    let now = w.clock.now_secs();
    let (other_key, _) = client_key("k1");
    let forged = assertion(&other_key, Algorithm::ES256, claims(&token_ep, "b5"));
    assert_eq!(call("/oauth2/token", forged, cc()).await.0, 401);
    let b64 = |v: &Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "kid": "k1"})),
        b64(&claims(&token_ep, "b6"))
    );
    assert_eq!(call("/oauth2/token", none, cc()).await.0, 401);
    let public_json = serde_json::to_vec(&jwk).unwrap();
    let hs = assertion(
        &EncodingKey::from_secret(&public_json),
        Algorithm::HS256,
        claims(&token_ep, "b7"),
    );
    assert_eq!(call("/oauth2/token", hs, cc()).await.0, 401);
    let good = assertion(&key, Algorithm::ES256, claims(&token_ep, "b8"));
    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    parts[1] = b64(
        &json!({"iss": client, "sub": client, "aud": token_ep, "exp": now + 9999, "jti": "b8"}),
    );
    assert_eq!(call("/oauth2/token", parts.join("."), cc()).await.0, 401);
    let mut form = vec![
        ("client_assertion_type", "urn:example:other"),
        ("client_assertion", good.as_str()),
    ];
    form.push(("grant_type", "client_credentials"));
    assert_eq!(s.post_form("/oauth2/token", None, &form).await.0, 401);
}

#[tokio::test]
async fn passwords_are_validated_scoped_to_their_org_and_stored_hashed() {
    let w = world().await;
    let s = &w.s;
    let user: String = sqlx::query_scalar("SELECT user_id::text FROM identity.user_credentials")
        .fetch_one(&w.pool)
        .await
        .unwrap();
    let path = format!("/v1/orgs/{}/users/{user}/password", w.org);
    let (status, p) = s.admin("PUT", &path, json!({"password": "short"})).await;
    assert_eq!(status, 422, "{p}");
    // The user under another org's path: 404.
    let other = s
        .admin("POST", "/v1/orgs", json!({"name": "globex"}))
        .await
        .1["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/v1/orgs/{other}/users/{user}/password");
    assert_eq!(
        s.admin("PUT", &path, json!({"password": PASSWORD})).await.0,
        404
    );
    // A second user with the same e-mail in another org cannot claim the login.
    let (status, u) = s
        .admin(
            "POST",
            &format!("/v1/orgs/{other}/users"),
            json!({"email": w.email}),
        )
        .await;
    assert_eq!(status, 201);
    let path = format!(
        "/v1/orgs/{other}/users/{}/password",
        u["id"].as_str().unwrap()
    );
    assert_eq!(
        s.admin("PUT", &path, json!({"password": PASSWORD})).await.0,
        409
    );
    let hash: String = sqlx::query_scalar("SELECT password_hash FROM identity.user_credentials")
        .fetch_one(&w.pool)
        .await
        .unwrap();
    assert!(hash.starts_with("$argon2id$") && !hash.contains(PASSWORD));
}

#[tokio::test]
async fn discovery_lists_the_people_flows() {
    let w = world().await;
    let s = &w.s;
    let d: Value = s
        .http
        .get(format!("{}/.well-known/openid-configuration", s.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let iss = &s.base;
    assert_eq!(
        d["authorization_endpoint"],
        format!("{iss}/oauth2/authorize")
    );
    assert_eq!(d["userinfo_endpoint"], format!("{iss}/oauth2/userinfo"));
    assert_eq!(d["code_challenge_methods_supported"], json!(["S256"]));
    assert_eq!(d["response_types_supported"], json!(["code"]));
    let methods = d["token_endpoint_auth_methods_supported"]
        .as_array()
        .unwrap();
    assert!(methods.contains(&json!("private_key_jwt")));
    assert_eq!(
        d["id_token_signing_alg_values_supported"],
        json!(["ES256", "EdDSA"])
    );
}

#[tokio::test]
async fn dev_mode_seeds_a_user_and_a_public_client_that_log_in_idempotently() {
    use leaky_control_plane::identity::users::{DEV_USER_EMAIL, DEV_USER_PASSWORD};
    use leaky_control_plane::identity::{DEV_LOGIN_CLIENT_ID, DEV_LOGIN_REDIRECT_URI};
    let w = world().await;
    let dev = Identity::new(
        Settings::new(&w.s.base, MasterKeys::dev(), true),
        w.pool.clone(),
        w.clock.clone(),
        Some(&w.redis.url()),
    )
    .unwrap();
    for _ in 0..2 {
        identity::api::seed_dev_client(&dev).await.unwrap();
        identity::users::seed_dev_user(&dev).await.unwrap();
    }
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM identity.user_credentials")
        .fetch_one(&w.pool)
        .await
        .unwrap();
    assert_eq!(users, 2, "acme's user and the one dev user");
    let s = &w.s;
    let mut b = Browser::default();
    let challenge = s256(VERIFIER);
    let q = code_query(
        DEV_LOGIN_CLIENT_ID,
        DEV_LOGIN_REDIRECT_URI,
        &challenge,
        "s",
        "n",
    );
    let res = s.authorize(&mut b, &q).await;
    assert_eq!(res.status(), 200);
    let page = res.text().await.unwrap();
    let res = s
        .login(&mut b, &page, DEV_USER_EMAIL, DEV_USER_PASSWORD)
        .await;
    assert_eq!(res.status(), 303);
    let location = res.headers()[LOCATION].to_str().unwrap().to_owned();
    let code = query_param(&location, "code").unwrap();
    let (status, t) = s
        .token(
            None,
            &[
                ("grant_type", "authorization_code"),
                ("client_id", DEV_LOGIN_CLIENT_ID),
                ("code", &code),
                ("redirect_uri", DEV_LOGIN_REDIRECT_URI),
                ("code_verifier", VERIFIER),
            ],
        )
        .await;
    assert_eq!(status, 200, "{t}");
    let claims = verify_jwt(
        &s.jwks().await,
        t["access_token"].as_str().unwrap(),
        &s.base,
        "leaky-admin",
    );
    assert_eq!(claims["roles"], json!(["org-admin"]));
}

/// A third-party relying party: the `openidconnect` crate (with its `oauth2` core) discovers the
/// provider, runs the code flow with PKCE as a confidential client, verifies the ID token (signature
/// from the JWKS, issuer, audience, nonce, `at_hash`), reads `userinfo`, refreshes, and gets a
/// service token by `client_credentials` — all with its own strict parsing of our documents.
#[tokio::test]
async fn the_openidconnect_crate_runs_the_whole_flow_against_the_server() {
    use openidconnect::core::{
        CoreAuthenticationFlow, CoreClient, CoreProviderMetadata, CoreUserInfoClaims,
    };
    use openidconnect::{
        AccessTokenHash, AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce,
        OAuth2TokenResponse, PkceCodeChallenge, RedirectUrl, Scope, TokenResponse,
    };
    let w = world().await;
    let s = &w.s;
    let (id, secret) = s
        .client(
            json!({"name": "portal", "scopes": ["openid", "profile", "email", "admin"],
            "audience": "leaky-admin", "redirect_uris": [REDIRECT],
            "grant_types": ["authorization_code", "refresh_token", "client_credentials"]}),
        )
        .await;
    let http = openidconnect::reqwest::ClientBuilder::new()
        .redirect(openidconnect::reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let meta = CoreProviderMetadata::discover_async(IssuerUrl::new(s.base.clone()).unwrap(), &http)
        .await
        .expect("discovery parses and its issuer matches");
    let client = CoreClient::from_provider_metadata(
        meta,
        ClientId::new(id.clone()),
        Some(ClientSecret::new(secret.unwrap())),
    )
    .set_redirect_uri(RedirectUrl::new(REDIRECT.into()).unwrap());

    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, csrf, nonce) = client
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .add_scope(Scope::new("profile".into()))
        .add_scope(Scope::new("email".into()))
        .add_scope(Scope::new("admin".into()))
        .set_pkce_challenge(challenge)
        .url();
    let mut b = Browser::default();
    let page = s.http.get(url).send().await.unwrap();
    b.keep_cookie(&page);
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    let res = s.login(&mut b, &page, &w.email, PASSWORD).await;
    assert_eq!(res.status(), 303);
    let location = res.headers()[LOCATION].to_str().unwrap().to_owned();
    assert_eq!(
        query_param(&location, "state").as_deref(),
        Some(csrf.secret().as_str())
    );
    let code = query_param(&location, "code").unwrap();

    let tokens = client
        .exchange_code(AuthorizationCode::new(code))
        .unwrap()
        .set_pkce_verifier(verifier)
        .request_async(&http)
        .await
        .expect("code exchange");
    // The server's clock is the test's manual clock, not the system's.
    let at = leaky_control_plane::clock::Clock::now(&*w.clock);
    let id_verifier = client.id_token_verifier().set_time_fn(move || at);
    let id_token = tokens.id_token().expect("an ID token for the openid scope");
    let claims = id_token
        .claims(&id_verifier, &nonce)
        .expect("ID token verifies");
    let expected_hash = AccessTokenHash::from_token(
        tokens.access_token(),
        id_token.signing_alg().unwrap(),
        id_token.signing_key(&id_verifier).unwrap(),
    )
    .unwrap();
    assert_eq!(claims.access_token_hash(), Some(&expected_hash));
    assert_eq!(claims.email().map(|e| e.as_str()), Some(w.email.as_str()));

    let info: CoreUserInfoClaims = client
        .user_info(
            tokens.access_token().clone(),
            Some(claims.subject().clone()),
        )
        .unwrap()
        .request_async(&http)
        .await
        .expect("userinfo for the ID token's subject");
    assert_eq!(info.subject(), claims.subject());

    let refreshed = client
        .exchange_refresh_token(tokens.refresh_token().expect("a refresh token"))
        .unwrap()
        .request_async(&http)
        .await
        .expect("refresh");
    assert_ne!(
        refreshed.refresh_token().unwrap().secret(),
        tokens.refresh_token().unwrap().secret(),
        "refresh tokens rotate"
    );
    // The rotated-out refresh token is refused: the library surfaces the server's invalid_grant.
    let replay = client
        .exchange_refresh_token(tokens.refresh_token().unwrap())
        .unwrap()
        .request_async(&http)
        .await;
    assert!(
        format!("{:?}", replay.unwrap_err()).contains("invalid_grant"),
        "a replayed refresh token is invalid_grant"
    );

    let service = client
        .exchange_client_credentials()
        .unwrap()
        .add_scope(Scope::new("admin".into()))
        .request_async(&http)
        .await
        .expect("client_credentials");
    let set = s.jwks().await;
    let claims = verify_jwt(
        &set,
        service.access_token().secret(),
        &s.base,
        "leaky-admin",
    );
    assert_eq!(claims["sub"], id.as_str());
}
