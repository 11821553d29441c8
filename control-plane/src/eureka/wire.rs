//! How Eureka documents go over the wire: JSON when the client asks for it (`Accept: application/json`,
//! as Spring Cloud's client does), XML otherwise — Eureka's own default, and the only format
//! `py_eureka_client` parses. Both come from one JSON document with Eureka's mapping conventions: a key
//! `@name` is an attribute, `$` the element's text, an array repeats its element.
//!
//! And who may call: Eureka clients put credentials in the server URL
//! (`http://admin:<token>@host:9300/eureka`), i.e. HTTP Basic, so besides the admin bearer token the
//! Eureka routes accept Basic with the admin token as the password (any user name).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde_json::Value;

use crate::http::{ApiState, Principal, Problem, ProblemKind};

/// Whether the client asked for JSON rather than Eureka's default XML.
pub fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/json") || v.contains("+json"))
}

/// `doc` (one top-level key, e.g. `{"applications": {...}}`) as JSON or XML, as the client asked.
pub fn reply(headers: &HeaderMap, doc: Value) -> Response {
    if wants_json(headers) {
        return Json(doc).into_response();
    }
    let mut response = to_xml(&doc).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/xml"),
    );
    response
}

/// `doc` as an XML document (with its declaration).
pub fn to_xml(doc: &Value) -> String {
    let mut xml = String::from(r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>"#);
    if let Value::Object(map) = doc {
        for (name, value) in map {
            element(&mut xml, name, value);
        }
    }
    xml
}

/// Whether `name` can be an XML element or attribute name (metadata keys come from clients).
fn is_xml_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn escape(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
}

fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Children written first, in this order, as Eureka's own server does (JSON maps here are sorted by
/// key; XML readers that stream expect the names before the instances).
const FIRST: [&str; 9] = [
    "versions__delta",
    "apps__hashcode",
    "name",
    "instanceId",
    "hostName",
    "app",
    "ipAddr",
    "status",
    "overriddenStatus",
];

/// Appends `value` as element(s) `name`; names XML cannot hold are left out.
fn element(out: &mut String, name: &str, value: &Value) {
    if !is_xml_name(name) {
        return;
    }
    if let Value::Array(items) = value {
        items.iter().for_each(|item| element(out, name, item));
        return;
    }
    out.push('<');
    out.push_str(name);
    let Value::Object(map) = value else {
        out.push('>');
        escape(out, &scalar(value));
        out.push_str(&format!("</{name}>"));
        return;
    };
    for (key, attr) in map.iter().filter(|(k, _)| k.starts_with('@')) {
        if is_xml_name(&key[1..]) {
            out.push_str(&format!(" {}=\"", &key[1..]));
            escape(out, &scalar(attr));
            out.push('"');
        }
    }
    out.push('>');
    if let Some(text) = map.get("$") {
        escape(out, &scalar(text));
    }
    let children = map.iter().filter(|(k, _)| !k.starts_with('@') && *k != "$");
    let (first, rest): (Vec<_>, Vec<_>) = children.partition(|(k, _)| FIRST.contains(&k.as_str()));
    let mut first = first;
    first.sort_by_key(|(k, _)| FIRST.iter().position(|f| f == k));
    for (key, child) in first.into_iter().chain(rest) {
        element(out, key, child);
    }
    out.push_str(&format!("</{name}>"));
}

/// A caller of the Eureka API: the admin bearer token, or HTTP Basic with it as the password.
pub struct EurekaCaller(pub Principal);

impl FromRequestParts<ApiState> for EurekaCaller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, Response> {
        let basic = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "));
        let result = match basic {
            Some(encoded) => basic_principal(encoded.trim(), state),
            None => Principal::from_request_parts(parts, state).await,
        };
        result.map(EurekaCaller).map_err(|problem| {
            let mut response = problem.into_response();
            // Clients that wait for a challenge before sending URL credentials get one.
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"eureka\""),
            );
            response
        })
    }
}

/// The admin principal when `encoded` (`base64(user:password)`) carries the admin token as password.
fn basic_principal(encoded: &str, state: &ApiState) -> Result<Principal, Problem> {
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok());
    let password = decoded
        .as_deref()
        .and_then(|pair| pair.split_once(':'))
        .map(|(_, password)| password);
    match password {
        Some(p) if state.admin.matches(p) => Ok(Principal::bootstrap()),
        _ => Err(Problem::new(
            ProblemKind::Unauthorized,
            "invalid Basic credentials: the password must be the admin token",
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn xml(doc: Value) -> String {
        let declaration = r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>"#;
        to_xml(&doc).strip_prefix(declaration).unwrap().to_owned()
    }

    #[test]
    fn json_maps_to_eureka_xml_attributes_text_and_repeated_elements() {
        let doc = json!({"application": {"name": "A&B", "instance": [
            {"port": {"$": 8080, "@enabled": "true"}, "metadata": {"zone": "eu", "bad key": "x"}},
            {"hostName": null}
        ]}});
        assert_eq!(
            xml(doc),
            "<application><name>A&amp;B</name>\
             <instance><metadata><zone>eu</zone></metadata><port enabled=\"true\">8080</port></instance>\
             <instance><hostName></hostName></instance></application>"
        );
    }

    #[test]
    fn accept_json_selects_json() {
        let mut headers = HeaderMap::new();
        assert!(!wants_json(&headers));
        headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        assert!(!wants_json(&headers));
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        assert!(wants_json(&headers));
    }
}
