//! `Deprecation` (RFC 9745) and `Sunset` (RFC 8594) headers for deprecated admin routes. One table,
//! [`DEPRECATED`]; a route is listed there the day its `/v2` successor ships, and handlers never change.

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::Response;

/// A deprecated route of the public API.
pub struct Deprecated {
    pub method: Method,
    /// The route as registered, full path: `/v1/orgs/{org}` (`{x}` matches one segment).
    pub route: &'static str,
    /// `Deprecation` value: `@<unix seconds>` of the deprecation date.
    pub since: &'static str,
    /// `Sunset` value: the HTTP-date after which the route may be gone.
    pub sunset: &'static str,
}

/// Routes deprecated today: none yet (`/v1` is the only version).
pub const DEPRECATED: &[Deprecated] = &[];

fn route_matches(route: &str, path: &str) -> bool {
    let mut template = route.split('/');
    let mut actual = path.split('/');
    loop {
        match (template.next(), actual.next()) {
            (None, None) => return true,
            (Some(t), Some(a))
                if t == a || (t.starts_with('{') && t.ends_with('}') && !a.is_empty()) => {}
            _ => return false,
        }
    }
}

/// The headers `table` asks for on `method path`.
pub fn headers_for(
    table: &[Deprecated],
    method: &Method,
    path: &str,
) -> Vec<(HeaderName, HeaderValue)> {
    let Some(d) = table
        .iter()
        .find(|d| d.method == method && route_matches(d.route, path))
    else {
        return Vec::new();
    };
    [("deprecation", d.since), ("sunset", d.sunset)]
        .into_iter()
        .map(|(name, value)| {
            (
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            )
        })
        .collect()
}

/// Middleware: adds the headers of [`DEPRECATED`] to matching responses.
pub async fn deprecation_headers(req: Request, next: Next) -> Response {
    let headers = headers_for(DEPRECATED, req.method(), req.uri().path());
    let mut response = next.run(req).await;
    response.headers_mut().extend(headers);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_routes_get_both_headers_others_none() {
        let table = [Deprecated {
            method: Method::GET,
            route: "/v1/orgs/{org}",
            since: "@1798761600",
            sunset: "Sun, 31 Dec 2028 23:59:59 GMT",
        }];
        let got = headers_for(&table, &Method::GET, "/v1/orgs/3f1c");
        let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["deprecation", "sunset"]);
        assert_eq!(got[0].1, "@1798761600");
        assert!(headers_for(&table, &Method::PATCH, "/v1/orgs/3f1c").is_empty());
        assert!(headers_for(&table, &Method::GET, "/v1/orgs/3f1c/keys").is_empty());
        assert!(headers_for(&table, &Method::GET, "/v1/orgs/").is_empty());
        assert!(headers_for(&table, &Method::GET, "/v2/orgs/3f1c").is_empty());
    }
}
