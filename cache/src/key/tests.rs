//! The key: what changes it, what never does, and that tenants never share one.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use http::HeaderMap;
use proptest::prelude::*;
use serde_json::json;
use std::sync::LazyLock;

fn body(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

static CHAT: LazyLock<Value> = LazyLock::new(
    || json!({"model": "gpt-4o", "temperature": 0, "messages": [{"role": "user", "content": "hi"}]}),
);
static NO_HEADERS: LazyLock<HeaderMap> = LazyLock::new(HeaderMap::new);

/// The key of a chat request by org `acme` on route `v1` with these differences.
fn key_with<'a>(f: impl FnOnce(&mut KeyParts<'a>)) -> Key {
    let mut parts = KeyParts {
        tenant: Tenant::Org("acme"),
        route: "v1",
        method: "POST",
        path: "/chat/completions",
        query: None,
        model: Some("gpt-4o"),
        headers: &NO_HEADERS,
        body: &CHAT,
    };
    f(&mut parts);
    request_key(&parts)
}

fn key_of_body(b: &Value) -> Key {
    key_with(|p| p.body = b)
}

#[test]
fn key_order_and_whitespace_never_change_the_key() {
    let a =
        body(r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"temperature":0}"#);
    let b = body(
        "{ \"temperature\" : 0,\n  \"messages\": [ {\"content\": \"hi\", \"role\": \"user\"} ],\n  \"model\": \"gpt-4o\" }",
    );
    assert_eq!(key_of_body(&a), key_of_body(&b));
}

#[test]
fn one_number_has_one_spelling() {
    let spellings = ["0", "0.0", "0e0", "-0.0", "0.000", "0E+3"];
    let keys: Vec<Key> = spellings
        .iter()
        .map(|n| key_of_body(&body(&format!(r#"{{"temperature":{n}}}"#))))
        .collect();
    assert!(keys.iter().all(|k| *k == keys[0]), "{spellings:?}");
    assert_eq!(
        canonical_json(&body(
            r#"{"a":2.0,"b":1e2,"c":0.5,"d":-7,"e":1e20,"f":1.5e-7}"#
        )),
        r#"{"a":2,"b":100,"c":0.5,"d":-7,"e":100000000000000000000,"f":1.5e-7}"#
    );
    assert_ne!(
        key_of_body(&body(r#"{"temperature":0}"#)),
        key_of_body(&body(r#"{"temperature":0.1}"#))
    );
}

#[test]
fn one_string_has_one_spelling() {
    let a = body(r#"{"content":"caf\u00e9 \"x\"\n\t\u0001"}"#);
    let b = body("{\"content\":\"café \\\"x\\\"\\n\\u0009\\u0001\"}");
    assert_eq!(key_of_body(&a), key_of_body(&b));
    assert_eq!(
        canonical_json(&a),
        "{\"content\":\"café \\\"x\\\"\\n\\t\\u0001\"}"
    );
}

#[test]
fn two_tenants_never_share_a_key() {
    let tenants = [
        Tenant::Org("acme"),
        Tenant::Org("globex"),
        Tenant::Key("acme"),
        Tenant::Key("k1"),
        Tenant::User {
            org: "acme",
            user: "alice",
        },
        Tenant::User {
            org: "globex",
            user: "alice",
        },
        Tenant::User {
            org: "acme",
            user: "bob",
        },
        // Framing: `("ac", "me")` must not read as `("acm", "e")`.
        Tenant::User {
            org: "ac",
            user: "me",
        },
        Tenant::User {
            org: "acm",
            user: "e",
        },
    ];
    let keys: std::collections::HashSet<Key> = tenants
        .iter()
        .map(|t| key_with(|p| p.tenant = *t))
        .collect();
    assert_eq!(keys.len(), tenants.len());
}

#[test]
fn a_principal_without_an_org_is_its_own_tenant() {
    use leaky_config::CacheScope::{Key as K, Org, User};
    assert_eq!(
        Tenant::resolve(Org, Some("acme"), Some("k1"), Some("alice")),
        Some(Tenant::Org("acme"))
    );
    assert_eq!(
        Tenant::resolve(Org, None, Some("k1"), Some("alice")),
        Some(Tenant::Key("k1"))
    );
    assert_eq!(
        Tenant::resolve(Org, Some(""), Some("k1"), None),
        Some(Tenant::Key("k1"))
    );
    assert_eq!(
        Tenant::resolve(K, Some("acme"), Some("k1"), Some("alice")),
        Some(Tenant::Key("k1"))
    );
    assert_eq!(
        Tenant::resolve(User, Some("acme"), Some("k1"), Some("alice")),
        Some(Tenant::User {
            org: "acme",
            user: "alice"
        })
    );
    assert_eq!(
        Tenant::resolve(User, None, Some("k1"), Some("alice")),
        Some(Tenant::Key("k1"))
    );
    assert_eq!(Tenant::resolve(Org, None, None, Some("alice")), None);
    assert_eq!(Tenant::resolve(K, Some("acme"), None, None), None);
}

#[test]
fn fields_that_cannot_change_the_answer_are_left_out_at_the_top_level_only() {
    let plain = body(r#"{"model":"m","temperature":0}"#);
    let labelled = body(
        r#"{"model":"m","temperature":0,"user":"u-1","safety_identifier":"s","metadata":{"a":"b"},
            "prompt_cache_key":"p","labels":{"team":"x"}}"#,
    );
    assert_eq!(key_of_body(&plain), key_of_body(&labelled));
    // Inside the content a field called `user` or `metadata` is content.
    let a = body(r#"{"messages":[{"role":"user","content":"x","metadata":1}]}"#);
    let b = body(r#"{"messages":[{"role":"user","content":"x","metadata":2}]}"#);
    assert_ne!(key_of_body(&a), key_of_body(&b));
}

#[test]
fn everything_that_can_change_the_answer_changes_the_key() {
    let base = r#""model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"temperature":0"#;
    let variants = [
        r#""model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"temperature":0"#
            .to_string(),
        r#""model":"gpt-4o","messages":[{"role":"user","content":"hi!"}],"temperature":0"#
            .to_string(),
        r#""model":"gpt-4o","messages":[{"role":"system","content":"hi"}],"temperature":0"#
            .to_string(),
        format!(r#"{base},"stream":true"#),
        format!(r#"{base},"stream":true,"stream_options":{{"include_usage":true}}"#),
        format!(r#"{base},"tools":[{{"type":"function","function":{{"name":"f"}}}}]"#),
        format!(r#"{base},"tool_choice":"required""#),
        format!(r#"{base},"n":2"#),
        format!(r#"{base},"max_tokens":5"#),
        format!(r#"{base},"max_completion_tokens":5"#),
        format!(r#"{base},"seed":7"#),
        format!(r#"{base},"top_p":0.5"#),
        format!(r#"{base},"response_format":{{"type":"json_object"}}"#),
        format!(r#"{base},"store":true"#),
        format!(r#"{base},"service_tier":"flex""#),
        format!(r#"{base},"some_future_field":1"#),
    ];
    let mut keys = std::collections::HashSet::new();
    keys.insert(key_of_body(&body(&format!("{{{base}}}"))));
    for v in &variants {
        assert!(keys.insert(key_of_body(&body(&format!("{{{v}}}")))), "{v}");
    }
}

#[test]
fn route_method_path_and_model_are_in_the_key() {
    let base = key_with(|_| {});
    assert_ne!(base, key_with(|p| p.route = "openai"));
    assert_ne!(base, key_with(|p| p.method = "PUT"));
    assert_ne!(base, key_with(|p| p.path = "/completions"));
    assert_ne!(base, key_with(|p| p.model = Some("qwen-plus")));
    assert_ne!(base, key_with(|p| p.model = None));
    // Gemini native: the model and the method are in the path.
    assert_ne!(
        key_with(|p| p.path = "models/gemini-2.0-flash:generateContent"),
        key_with(|p| p.path = "models/gemini-2.0-flash:streamGenerateContent")
    );
}

#[test]
fn the_query_counts_without_its_order_and_its_credential() {
    let q = |s: &'static str| key_with(move |p| p.query = Some(s));
    assert_eq!(q("alt=sse&x=1"), q("x=1&alt=sse"));
    assert_eq!(q("alt=sse&key=AIza-secret"), q("alt=sse"));
    assert_eq!(q("key=one&alt=sse"), q("key=two&alt=sse"));
    assert_eq!(q(""), key_with(|p| p.query = None));
    assert_eq!(q("&&"), q(""));
    assert_ne!(q("alt=sse"), q(""));
    assert_ne!(q("alt=sse"), q("alt=json"));
    // `keyx=` is not the credential.
    assert_ne!(q("keyx=1"), q(""));
}

#[test]
fn headers_that_shape_the_answer_are_in_the_key_and_no_others() {
    let with = |name: &'static str, value: &'static str| {
        let mut h = HeaderMap::new();
        h.insert(name, http::HeaderValue::from_static(value));
        let b = json!({"model": "qwen-plus", "input": {"prompt": "hi"}});
        request_key(&KeyParts {
            tenant: Tenant::Org("acme"),
            route: "qwen",
            method: "POST",
            path: "/services/aigc/text-generation/generation",
            query: None,
            model: Some("qwen-plus"),
            headers: &h,
            body: &b,
        })
    };
    assert_ne!(
        with("x-dashscope-sse", "enable"),
        with("user-agent", "sdk/1.0")
    );
    assert_ne!(
        with("openai-beta", "assistants=v2"),
        with("user-agent", "x")
    );
    assert_eq!(with("user-agent", "sdk/1.0"), with("x-request-id", "abc"));
}

#[test]
fn the_key_is_stable_across_builds() {
    // The canonical form is a persisted format (shared Redis entries outlive a proxy's version):
    // changing it must change KEY_VERSION. This pins one key, computed apart from this code:
    // SHA-256 of the length-prefixed (u64 big-endian) fields "leaky-cache-key/v1", "org", "acme",
    // "v1", "POST", "/chat/completions", "gpt-4o", 0 query parameters, 0 and 0 answer headers,
    // "body", then Python's `json.dumps(body, sort_keys=True, separators=(",", ":"))`.
    let k = key_with(|_| {});
    assert_eq!(
        k.hex(),
        "c2a21543af2623e72038e2a85e2fd0460468c40c57bde3ed8ea6ab94d858055d"
    );
    let respelled =
        json!({"messages":[{"content":"hi","role":"user"}],"temperature":0.0,"model":"gpt-4o"});
    assert_eq!(k, key_with(|p| p.body = &respelled));
}

/// A JSON value as an arbitrary caller might send it: any shape, any key order, any whitespace.
fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i32>().prop_map(|i| json!(i)),
        // Decimals of up to 15 significant digits: serde_json reads those exactly (longer ones it
        // may read 1 ulp off, the same way for the same text, which is all the key needs).
        (-1_000_000i64..1_000_000).prop_map(|m| json!(m as f64 / 1000.0)),
        "[a-z\\u{e9}\"\\\\ \n]{0,6}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{1,4}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// `v` written with its keys in reverse order, `ws` between tokens and integers as floats.
fn render(v: &Value, ws: &str, out: &mut String) {
    match v {
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(ws);
                render(item, ws, out);
            }
            out.push_str(ws);
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (k, item)) in map.iter().rev().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(ws);
                out.push_str(&serde_json::to_string(k).unwrap());
                out.push_str(ws);
                out.push(':');
                render(item, ws, out);
            }
            out.push('}');
        }
        Value::Number(n) if n.is_i64() => {
            out.push_str(&format!("{}.0", n.as_i64().unwrap()));
        }
        other => out.push_str(&serde_json::to_string(other).unwrap()),
    }
}

proptest! {
    #[test]
    fn any_spelling_of_the_same_body_has_the_same_key(v in arb_json(), ws in "[ \n\t]{0,3}") {
        let mut text = String::new();
        render(&v, &ws, &mut text);
        let respelled: Value = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(canonical_json(&v), canonical_json(&respelled));
        prop_assert_eq!(key_of_body(&v), key_of_body(&respelled));
        // The canonical form is JSON that means the same.
        let reparsed: Value = serde_json::from_str(&canonical_json(&v)).unwrap();
        prop_assert_eq!(canonical_json(&reparsed), canonical_json(&v));
    }
}

/// A tenant of any kind with short ids drawn from a small alphabet, so collisions of names across
/// kinds and of concatenations (`ab`+`c` vs `a`+`bc`) are frequent.
fn arb_tenant() -> impl Strategy<Value = (u8, String, String)> {
    (0u8..3, "[abc]{0,3}", "[abc]{0,3}")
}

fn tenant_of((kind, a, b): &(u8, String, String)) -> Tenant<'_> {
    match kind {
        0 => Tenant::Org(a),
        1 => Tenant::Key(a),
        _ => Tenant::User { org: a, user: b },
    }
}

/// Two tuples name the same tenant only when they are equal (the user id only counts for `User`).
fn same_tenant(x: &(u8, String, String), y: &(u8, String, String)) -> bool {
    x.0 == y.0 && x.1 == y.1 && (x.0 < 2 || x.2 == y.2)
}

proptest! {
    #[test]
    fn different_tenants_never_share_a_key(x in arb_tenant(), y in arb_tenant()) {
        let kx = key_with(|p| p.tenant = tenant_of(&x));
        let ky = key_with(|p| p.tenant = tenant_of(&y));
        prop_assert_eq!(kx == ky, same_tenant(&x, &y), "{:?} {:?}", x, y);
    }
}
