//! The front channel of the code flow: `GET /oauth2/authorize` (RFC 6749 §4.1.1 with PKCE, RFC 7636)
//! and the login page (`POST /oauth2/login`), server-rendered, every value HTML-escaped.
//!
//! **Who gets an error how.** Until the client and its redirect URI are known to be registered (an
//! exact string match, so prefix, suffix, case and encoding tricks all fail), errors are shown on a
//! page: redirecting to an unverified URI would make this server an open redirector. After that,
//! errors go back to the client as `error=` on its redirect URI, with `state` verbatim.
//! `response_type` must be `code` and PKCE is required with `S256` (`plain` or none is refused).
//!
//! **Sessions.** The browser holds one cookie, `lt_session` (`HttpOnly; SameSite=Lax`, `Secure` when
//! the issuer is `https`, path `/oauth2`), naming a session in Redis that carries the CSRF token the
//! login form must echo and, once logged in, who and since when. A successful login replaces the
//! session id (no fixation). A pending authorization request lives in Redis under its own random id
//! for ten minutes; the form names it. A logged-in session gets its code without seeing the form
//! again (unless `prompt=login`).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::RawQuery;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::clients::{self, Client};
use super::grants::{self, CodeRecord};
use super::oauth::PeerIp;
use super::secrets::Secret;
use super::sessions::random_id;
use super::users::{self, LoginOutcome, Person};
use super::{Identity, IdentityError};

const COOKIE: &str = "lt_session";
const REQUEST_TTL_SECS: i64 = 600;
const MAX_PARAM: usize = 2048;

/// A browser's session (Redis `session:<id>`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Session {
    csrf: String,
    user: Option<LoggedIn>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct LoggedIn {
    user: Uuid,
    org: Uuid,
    auth_time: i64,
}

/// A validated authorization request waiting for a login (Redis `authreq:<id>`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct AuthRequest {
    client_id: String,
    client_name: String,
    redirect_uri: String,
    scope: Vec<String>,
    state: Option<String>,
    nonce: Option<String>,
    code_challenge: String,
    exp: i64,
}

/// How `/authorize` or the login answers when it does not issue a code.
enum Refusal {
    /// Shown on a page (the redirect URI is not trusted, or the session is gone).
    Page(StatusCode, String),
    /// Sent back to the client's redirect URI.
    Redirect(String, Option<String>, &'static str, String),
    Failed(IdentityError),
}

impl From<IdentityError> for Refusal {
    fn from(e: IdentityError) -> Self {
        Refusal::Failed(e)
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::Page(status, message) => {
                page(status, "Cannot continue", &message_html(&message))
            }
            Refusal::Redirect(uri, state, error, description) => {
                let mut pairs = vec![
                    ("error", error.to_owned()),
                    ("error_description", description),
                ];
                pairs.extend(state.map(|s| ("state", s)));
                redirect(&uri, &pairs)
            }
            Refusal::Failed(IdentityError::Unavailable(m)) => page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Unavailable",
                &message_html(&m),
            ),
            Refusal::Failed(e) => {
                tracing::error!(error = %e, "identity: authorize failed");
                page(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Error",
                    &message_html("internal error"),
                )
            }
        }
    }
}

fn page_error(message: &str) -> Refusal {
    Refusal::Page(StatusCode::BAD_REQUEST, message.to_owned())
}

/// Query or form parameters; a repeated or oversized one is refused (on the page).
fn params(raw: &[u8]) -> Result<HashMap<String, String>, Refusal> {
    let mut out = HashMap::new();
    for (k, v) in form_urlencoded::parse(raw) {
        if v.len() > MAX_PARAM {
            return Err(page_error(&format!("parameter `{k}` is too long")));
        }
        if out.insert(k.to_string(), v.into_owned()).is_some() {
            return Err(page_error(&format!("parameter `{k}` is repeated")));
        }
    }
    Ok(out)
}

/// `GET /oauth2/authorize`.
pub(crate) async fn authorize(
    Extension(identity): Extension<Arc<Identity>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    match authorize_inner(&identity, &headers, query.unwrap_or_default()).await {
        Ok(res) => res,
        Err(refusal) => refusal.into_response(),
    }
}

async fn authorize_inner(
    identity: &Identity,
    headers: &HeaderMap,
    query: String,
) -> Result<Response, Refusal> {
    let p = params(query.as_bytes())?;
    let (client, redirect_uri) = trusted_client(identity, &p).await?;
    let req = validate_request(identity, &client, redirect_uri, &p)?;
    let store = identity.sessions()?;
    let existing = match cookie(headers) {
        Some(sid) => store
            .get::<Session>("session", &sid)
            .await?
            .map(|s| (sid, s)),
        None => None,
    };
    let force_login = p
        .get("prompt")
        .is_some_and(|v| v.split(' ').any(|x| x == "login"));
    let logged_in = existing.as_ref().and_then(|(_, s)| s.user);
    if let (Some(who), false) = (logged_in, force_login) {
        return Ok(complete(identity, &req, &who, None).await?);
    }
    if p.get("prompt").is_some_and(|v| v == "none") {
        return Err(Refusal::Redirect(
            req.redirect_uri,
            req.state,
            "login_required",
            "the user is not logged in".into(),
        ));
    }
    Ok(show_login(identity, existing, &req).await?)
}

/// Parks `req` in Redis and shows the login form, starting a session (and its cookie) if needed.
async fn show_login(
    identity: &Identity,
    existing: Option<(String, Session)>,
    req: &AuthRequest,
) -> Result<Response, IdentityError> {
    let store = identity.sessions()?;
    let (sid, session, fresh) = match existing {
        Some((sid, s)) => (sid, s, false),
        None => {
            let s = Session {
                csrf: random_id()?,
                user: None,
            };
            (random_id()?, s, true)
        }
    };
    if fresh {
        let ttl = ttl(identity.settings.session_ttl);
        store.put("session", &sid, &session, ttl).await?;
    }
    let rid = random_id()?;
    let req_ttl = ttl(chrono::Duration::seconds(REQUEST_TTL_SECS));
    store.put("authreq", &rid, req, req_ttl).await?;
    let form = login_form(&req.client_name, &rid, &session.csrf, "", None);
    let mut res = page(StatusCode::OK, "Log in", &form);
    if fresh {
        set_cookie(&mut res, identity, &sid);
    }
    Ok(res)
}

fn ttl(d: chrono::Duration) -> u64 {
    u64::try_from(d.num_seconds()).unwrap_or(1).max(1)
}

/// The client and the redirect URI, both registered, or a page error (never a redirect).
async fn trusted_client(
    identity: &Identity,
    p: &HashMap<String, String>,
) -> Result<(Client, String), Refusal> {
    let id = p
        .get("client_id")
        .ok_or_else(|| page_error("`client_id` is required"))?;
    let client = match clients::find(&identity.pool, id).await? {
        Some((c, _)) if c.allows("authorization_code") => c,
        _ => {
            return Err(page_error(
                "unknown client, or not registered for the authorization code flow",
            ))
        }
    };
    let uri = p
        .get("redirect_uri")
        .ok_or_else(|| page_error("`redirect_uri` is required"))?;
    // Exact string comparison: no normalization, prefix or pattern matching.
    if !client.redirect_uris.iter().any(|r| r == uri) {
        return Err(page_error(
            "`redirect_uri` is not registered for this client",
        ));
    }
    let uri = uri.clone();
    Ok((client, uri))
}

/// The rest of the request, errors redirected to the (trusted) redirect URI.
fn validate_request(
    identity: &Identity,
    client: &Client,
    redirect_uri: String,
    p: &HashMap<String, String>,
) -> Result<AuthRequest, Refusal> {
    let state = p.get("state").cloned();
    let refuse = |error: &'static str, description: &str| {
        Refusal::Redirect(
            redirect_uri.clone(),
            state.clone(),
            error,
            description.to_owned(),
        )
    };
    if p.get("response_type").map(String::as_str) != Some("code") {
        return Err(refuse(
            "unsupported_response_type",
            "only response_type=code is supported",
        ));
    }
    if p.get("code_challenge_method").map(String::as_str) != Some("S256") {
        return Err(refuse(
            "invalid_request",
            "PKCE is required with code_challenge_method=S256",
        ));
    }
    let challenge = p
        .get("code_challenge")
        .filter(|c| c.len() == 43 && grants::pkce_value_ok(c))
        .ok_or_else(|| {
            refuse(
                "invalid_request",
                "code_challenge must be BASE64URL(SHA-256(verifier))",
            )
        })?;
    let scope = requested_scope(client, p.get("scope")).ok_or_else(|| {
        refuse(
            "invalid_scope",
            "a requested scope is not allowed for this client",
        )
    })?;
    Ok(AuthRequest {
        client_id: client.id.clone(),
        client_name: client.name.clone(),
        redirect_uri: redirect_uri.clone(),
        scope,
        state: state.clone(),
        nonce: p.get("nonce").cloned(),
        code_challenge: challenge.clone(),
        exp: identity.clock.now().timestamp() + REQUEST_TTL_SECS,
    })
}

/// The requested scope (the client's whole scope if none is asked for), if the client may have it.
fn requested_scope(client: &Client, requested: Option<&String>) -> Option<Vec<String>> {
    let scope: Vec<String> = match requested {
        Some(s) => s
            .split(' ')
            .filter(|x| !x.is_empty())
            .map(str::to_owned)
            .collect(),
        None => client.scopes.clone(),
    };
    (!scope.is_empty() && scope.iter().all(|s| client.scopes.contains(s))).then_some(scope)
}

/// Issues the code for `req` to `who` and redirects back to the client (setting `cookie` if given).
async fn complete(
    identity: &Identity,
    req: &AuthRequest,
    who: &LoggedIn,
    cookie: Option<&str>,
) -> Result<Response, IdentityError> {
    let rec = CodeRecord {
        client_id: req.client_id.clone(),
        redirect_uri: req.redirect_uri.clone(),
        user: who.user,
        org: who.org,
        scope: req.scope.clone(),
        nonce: req.nonce.clone(),
        auth_time: who.auth_time,
        code_challenge: req.code_challenge.clone(),
        exp: identity.clock.now().timestamp() + identity.settings.code_ttl.num_seconds(),
    };
    let code = grants::new_code(identity, &rec).await?;
    let mut pairs = vec![("code", code)];
    pairs.extend(req.state.clone().map(|s| ("state", s)));
    let mut res = redirect(&req.redirect_uri, &pairs);
    if let Some(sid) = cookie {
        set_cookie(&mut res, identity, sid);
    }
    Ok(res)
}

/// `POST /oauth2/login`: the form of [`login_form`].
pub(crate) async fn login(
    Extension(identity): Extension<Arc<Identity>>,
    PeerIp(ip): PeerIp,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match login_inner(&identity, ip, &headers, &body).await {
        Ok(res) => res,
        Err(refusal) => refusal.into_response(),
    }
}

async fn login_inner(
    identity: &Identity,
    ip: Option<std::net::IpAddr>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, Refusal> {
    let gone = || page_error("Your login session expired. Start again from the application.");
    let form = params(body)?;
    let store = identity.sessions()?;
    let sid = cookie(headers).ok_or_else(gone)?;
    let session = store
        .get::<Session>("session", &sid)
        .await?
        .ok_or_else(gone)?;
    let csrf = form.get("csrf").map(String::as_bytes).unwrap_or_default();
    if !bool::from(csrf.ct_eq(session.csrf.as_bytes())) {
        return Err(gone());
    }
    let rid = form.get("request").ok_or_else(gone)?;
    let now = identity.clock.now().timestamp();
    let req = match store.get::<AuthRequest>("authreq", rid).await? {
        Some(r) if r.exp > now => r,
        _ => return Err(gone()),
    };
    let email = form.get("email").cloned().unwrap_or_default();
    let password = Secret::new(form.get("password").cloned().unwrap_or_default());
    match users::login(identity, &email, password, ip).await? {
        LoginOutcome::Ok(person) => Ok(logged_in(identity, &sid, rid, &req, &person).await?),
        LoginOutcome::Invalid => {
            let form = login_form(
                &req.client_name,
                rid,
                &session.csrf,
                &email,
                Some("Invalid e-mail or password."),
            );
            Ok(page(StatusCode::UNAUTHORIZED, "Log in", &form))
        }
        LoginOutcome::Throttled(wait) => {
            let mut res = page(
                StatusCode::TOO_MANY_REQUESTS,
                "Log in",
                &message_html("Too many failed logins from your address. Try again later."),
            );
            if let Ok(v) = HeaderValue::from_str(&wait.to_string()) {
                res.headers_mut().insert(header::RETRY_AFTER, v);
            }
            Ok(res)
        }
    }
}

/// A successful login: a new session id (no fixation), the pending request consumed, the code issued.
async fn logged_in(
    identity: &Identity,
    old_sid: &str,
    rid: &str,
    req: &AuthRequest,
    person: &Person,
) -> Result<Response, IdentityError> {
    let store = identity.sessions()?;
    let who = LoggedIn {
        user: person.id,
        org: person.org,
        auth_time: identity.clock.now().timestamp(),
    };
    let session = Session {
        csrf: random_id()?,
        user: Some(who),
    };
    let sid = random_id()?;
    store
        .put(
            "session",
            &sid,
            &session,
            ttl(identity.settings.session_ttl),
        )
        .await?;
    store.delete("session", old_sid).await?;
    store.delete("authreq", rid).await?;
    tracing::info!(user = %person.id, client_id = %req.client_id, "identity: login");
    complete(identity, req, &who, Some(&sid)).await
}

/// The session id from the `Cookie` header.
fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, v)| *k == COOKIE && v.len() == 43)
        .map(|(_, v)| v.to_owned())
}

fn set_cookie(res: &mut Response, identity: &Identity, sid: &str) {
    let secure = if identity.settings.issuer.starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    let max_age = identity.settings.session_ttl.num_seconds();
    let value =
        format!("{COOKIE}={sid}; Path=/oauth2; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}");
    if let Ok(v) = HeaderValue::from_str(&value) {
        res.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// A 303 to `uri` with `pairs` appended to its query.
fn redirect(uri: &str, pairs: &[(&str, String)]) -> Response {
    let Ok(mut url) = reqwest::Url::parse(uri) else {
        return page(
            StatusCode::BAD_REQUEST,
            "Cannot continue",
            &message_html("bad redirect URI"),
        );
    };
    url.query_pairs_mut()
        .extend_pairs(pairs.iter().map(|(k, v)| (*k, v.as_str())));
    let mut res = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(url.as_str()) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// `s` with HTML's special characters escaped.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn message_html(message: &str) -> String {
    format!("<p>{}</p>", escape(message))
}

fn login_form(client: &str, request: &str, csrf: &str, email: &str, error: Option<&str>) -> String {
    let error = error
        .map(|e| format!("<p role=\"alert\">{}</p>", escape(e)))
        .unwrap_or_default();
    format!(
        "<p>Log in to continue to <strong>{client}</strong>.</p>{error}\
         <form method=\"post\" action=\"/oauth2/login\">\
         <input type=\"hidden\" name=\"request\" value=\"{request}\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <label>E-mail <input type=\"email\" name=\"email\" value=\"{email}\" autocomplete=\"username\" required></label>\
         <label>Password <input type=\"password\" name=\"password\" autocomplete=\"current-password\" required></label>\
         <button type=\"submit\">Log in</button></form>",
        client = escape(client),
        request = escape(request),
        csrf = escape(csrf),
        email = escape(email),
    )
}

/// A complete page: no caching, no framing, no scripts.
fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{} · Leaky Tokens</title>\
         <style>body{{font-family:sans-serif;max-width:24rem;margin:4rem auto}}label{{display:block;margin:.5rem 0}}</style>\
         </head><body><h1>{}</h1>{body}</body></html>",
        escape(title),
        escape(title),
    );
    let mut res = (status, html).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
        ),
    );
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_is_escaped_everywhere_it_is_interpolated() {
        assert_eq!(
            escape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        let form = login_form("<script>", "r", "c", "\"><img>", Some("<b>"));
        assert!(!form.contains("<script>") && !form.contains("\"><img>") && !form.contains("<b>"));
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        let sid = "a".repeat(43);
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("x=1; {COOKIE}={sid}"))
                .unwrap_or(HeaderValue::from_static("")),
        );
        assert_eq!(cookie(&h), Some(sid));
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("lt_session=short"));
        assert_eq!(cookie(&h), None);
    }
}
