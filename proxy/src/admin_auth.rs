//! Who may use the admin listener: the browser checks and the bearer token, decided before any
//! endpoint runs.
//!
//! - **Browsers** (CSRF, DNS rebinding): a request whose `Origin` is not the listener's own origin,
//!   whose `Sec-Fetch-Site` is neither `same-origin` nor `none`, or — on a loopback listener — whose
//!   `Host` is not a loopback name is refused with 403, token or not, on every endpoint. Non-browser
//!   clients (curl, Prometheus, probes) send none of these and are unaffected.
//! - **Token** (`server.admin_token`, `Authorization: Bearer`): mutating endpoints always need it and
//!   are refused (403) while none is configured; reload then works by `SIGHUP` or by saving the file.
//!   On a listener bound beyond loopback every endpoint but `/healthz` and `/readyz` needs it. On
//!   loopback, `/metrics` and `/admin/config` stay open: they hold no secret (credentials show as
//!   `set`, keys by id), local scrapers rely on them, and browsers are kept out by the checks above.
//!   Digests are compared in constant time, so neither the token nor its length leaks through timing.

use http::{HeaderMap, Method, StatusCode};
use leaky_config::AdminToken;
use std::net::{IpAddr, SocketAddr};

/// Why a request may not reach an admin endpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("cross-origin requests are not allowed on the admin listener ({0})")]
    CrossOrigin(String),
    #[error("{0} needs `Authorization: Bearer <server.admin_token>`")]
    MissingToken(String),
    #[error("the admin token does not match")]
    WrongToken,
    #[error(
        "{0} is disabled: `server.admin_token` is not set (reload with SIGHUP or by saving the \
         config file, or set the token)"
    )]
    NoTokenConfigured(String),
}

impl Refusal {
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::MissingToken(_) | Refusal::WrongToken => StatusCode::UNAUTHORIZED,
            Refusal::CrossOrigin(_) | Refusal::NoTokenConfigured(_) => StatusCode::FORBIDDEN,
        }
    }
}

/// What an endpoint needs beyond the browser checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// Liveness and readiness probes: never a token.
    Nothing,
    /// Reads: a token only when the listener is reachable beyond loopback.
    TokenBeyondLoopback,
    /// Changes state: always a token.
    Token,
}

fn need(method: &Method, path: &str) -> Need {
    match (method, path) {
        (&Method::GET, "/healthz" | "/readyz") => Need::Nothing,
        (&Method::GET | &Method::HEAD, _) => Need::TokenBeyondLoopback,
        _ => Need::Token,
    }
}

/// Decides whether the request may proceed. `listen` is the address the admin listener is bound to.
pub fn check(
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    listen: SocketAddr,
    token: Option<&AdminToken>,
) -> Result<(), Refusal> {
    let loopback = listen.ip().to_canonical().is_loopback();
    same_origin(headers, listen, loopback)?;
    let what = || format!("{method} {path}");
    match (need(method, path), token) {
        (Need::Nothing, _) => Ok(()),
        (Need::TokenBeyondLoopback, _) if loopback => Ok(()),
        (Need::Token, None) => Err(Refusal::NoTokenConfigured(what())),
        // Bound beyond loopback without a token cannot start (config validation).
        (Need::TokenBeyondLoopback, None) => Err(Refusal::NoTokenConfigured(what())),
        (_, Some(expected)) => bearer(headers, expected, what),
    }
}

fn bearer(
    headers: &HeaderMap,
    expected: &AdminToken,
    what: impl Fn() -> String,
) -> Result<(), Refusal> {
    let presented = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim());
    let Some(presented) = presented else {
        return Err(Refusal::MissingToken(what()));
    };
    // Compares fixed-size digests: the time taken depends on neither the token nor its length.
    if expected.matches(presented) {
        Ok(())
    } else {
        Err(Refusal::WrongToken)
    }
}

/// The browser checks: `Sec-Fetch-Site`, `Host` (DNS rebinding onto loopback), `Origin`.
fn same_origin(headers: &HeaderMap, listen: SocketAddr, loopback: bool) -> Result<(), Refusal> {
    let header = |name: &str| headers.get(name).map(|v| v.to_str().unwrap_or("\u{fffd}"));
    if let Some(site) = header("sec-fetch-site") {
        if !site.eq_ignore_ascii_case("same-origin") && !site.eq_ignore_ascii_case("none") {
            return Err(Refusal::CrossOrigin(format!("Sec-Fetch-Site: {site}")));
        }
    }
    let host = header("host");
    if let Some(host) = host {
        // A page on a name the attacker re-points at 127.0.0.1 reaches a loopback listener with its
        // own name in `Host` (and, being same-origin, may send no `Origin`).
        if loopback && !is_loopback_authority(host) {
            return Err(Refusal::CrossOrigin(format!("Host: {host}")));
        }
    }
    if let Some(origin) = header("origin") {
        let own = match host {
            Some(h) => format!("http://{h}"),
            None => format!("http://{listen}"),
        };
        if !origin.eq_ignore_ascii_case(&own) {
            return Err(Refusal::CrossOrigin(format!("Origin: {origin}")));
        }
    }
    Ok(())
}

/// `localhost`, `127.x.y.z` or `[::1]`, with or without a port.
fn is_loopback_authority(authority: &str) -> bool {
    let host = match authority.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map(|(h, _)| h).unwrap_or(rest),
        None => authority
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(authority),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const LOOPBACK: &str = "127.0.0.1:9090";

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    fn run(
        method: Method,
        path: &str,
        h: &[(&'static str, &str)],
        listen: &str,
        token: Option<&str>,
    ) -> Result<(), Refusal> {
        let token = token.map(AdminToken::new);
        check(
            &method,
            path,
            &headers(h),
            listen.parse().unwrap(),
            token.as_ref(),
        )
    }

    #[test]
    fn reload_needs_the_configured_token() {
        let post =
            |h: &[(&'static str, &str)], t| run(Method::POST, "/admin/reload", h, LOOPBACK, t);
        assert!(matches!(
            post(&[], Some("s3cret")),
            Err(Refusal::MissingToken(_))
        ));
        assert_eq!(
            post(&[("authorization", "Bearer s3cre")], Some("s3cret")),
            Err(Refusal::WrongToken)
        );
        assert_eq!(
            post(&[("authorization", "Basic s3cret")], Some("s3cret")).map_err(|e| e.status()),
            Err(StatusCode::UNAUTHORIZED)
        );
        assert_eq!(
            post(&[("authorization", "bearer s3cret")], Some("s3cret")),
            Ok(())
        );
        assert!(matches!(
            post(&[("authorization", "Bearer x")], None),
            Err(Refusal::NoTokenConfigured(_))
        ));
    }

    #[test]
    fn reads_need_the_token_only_beyond_loopback() {
        assert_eq!(run(Method::GET, "/metrics", &[], LOOPBACK, None), Ok(()));
        assert_eq!(
            run(Method::GET, "/admin/config", &[], "[::1]:9090", Some("t")),
            Ok(())
        );
        let wide = "0.0.0.0:9090";
        assert!(matches!(
            run(Method::GET, "/metrics", &[], wide, Some("t")),
            Err(Refusal::MissingToken(_))
        ));
        assert_eq!(
            run(
                Method::GET,
                "/metrics",
                &[("authorization", "Bearer t")],
                wide,
                Some("t")
            ),
            Ok(())
        );
        assert_eq!(
            run(
                Method::GET,
                "/healthz",
                &[("host", "10.0.0.5:9090")],
                wide,
                Some("t")
            ),
            Ok(())
        );
        assert_eq!(run(Method::GET, "/readyz", &[], wide, Some("t")), Ok(()));
    }

    #[test]
    fn browsers_from_other_origins_are_refused_even_with_the_token() {
        let auth = ("authorization", "Bearer t");
        let cross = |h: &[(&'static str, &str)]| {
            matches!(
                run(Method::POST, "/admin/reload", h, LOOPBACK, Some("t")),
                Err(Refusal::CrossOrigin(_))
            )
        };
        assert!(cross(&[
            auth,
            ("host", LOOPBACK),
            ("origin", "https://evil.example")
        ]));
        assert!(cross(&[auth, ("origin", "null")]));
        assert!(cross(&[auth, ("sec-fetch-site", "cross-site")]));
        assert!(cross(&[auth, ("sec-fetch-site", "same-site")]));
        // DNS rebinding: the attacker's name, resolved to 127.0.0.1, same-origin from the page's view.
        assert!(cross(&[
            auth,
            ("host", "evil.example:9090"),
            ("origin", "http://evil.example:9090")
        ]));
        assert!(cross(&[auth, ("host", "evil.example:9090")]));
        for host in [LOOPBACK, "localhost:9090", "[::1]:9090", "127.0.0.1"] {
            let origin = format!("http://{host}");
            let ok = [
                auth,
                ("host", host),
                ("origin", origin.as_str()),
                ("sec-fetch-site", "same-origin"),
            ];
            assert_eq!(
                run(Method::POST, "/admin/reload", &ok, LOOPBACK, Some("t")),
                Ok(()),
                "{host}"
            );
        }
        // Beyond loopback any Host is the listener's own name; Origin must still match it.
        let wide = "0.0.0.0:9090";
        let ok = [
            auth,
            ("host", "admin.internal:9090"),
            ("origin", "http://admin.internal:9090"),
        ];
        assert_eq!(
            run(Method::GET, "/admin/config", &ok, wide, Some("t")),
            Ok(())
        );
        let bad = [
            auth,
            ("host", "admin.internal:9090"),
            ("origin", "http://evil.example"),
        ];
        assert!(matches!(
            run(Method::GET, "/admin/config", &bad, wide, Some("t")),
            Err(Refusal::CrossOrigin(_))
        ));
    }
}
