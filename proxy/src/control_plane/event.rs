//! The watch protocol's events (`docs/config-protocol.md`) and the key entries they carry, converted to
//! and from the config model. Unknown fields and event types are ignored, so a control plane can add
//! to the protocol without breaking older proxies.

use leaky_config::{ApiKey, KeySpec, ModelPattern};
use serde::Deserialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// One line of the watch stream.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A complete config (YAML text, keys included).
    Snapshot {
        version: u64,
        hash: String,
        document: String,
    },
    /// Key changes on top of version `base`.
    Keys {
        version: u64,
        base: u64,
        hash: String,
        #[serde(default)]
        upsert: Vec<KeySpec>,
        #[serde(default)]
        remove: Vec<String>,
    },
    /// The complete set of revoked access tokens (replaces the previous one); `revision` grows with
    /// every revocation.
    Revoked {
        #[serde(default)]
        revision: u64,
        #[serde(default)]
        tokens: Vec<RevokedToken>,
    },
    /// Liveness, every 10 s.
    Heartbeat {
        #[serde(default)]
        version: Option<u64>,
    },
    /// A type this proxy does not know.
    #[serde(other)]
    Unknown,
}

/// One revoked token: its id and its expiry (unix seconds), after which the entry can go.
#[derive(Debug, Clone, Deserialize)]
pub struct RevokedToken {
    pub jti: String,
    pub exp: i64,
}

impl Event {
    /// Parses one line.
    pub fn parse(line: &[u8]) -> Result<Event, serde_json::Error> {
        serde_json::from_slice(line)
    }
}

/// A key entry as the config model holds it; the tier is checked later, against the serving config.
/// Errors name the entry (`upsert[2].sha256: ...`).
pub fn api_key(i: usize, k: &KeySpec) -> Result<ApiKey, String> {
    let mut sha256 = [0u8; 32];
    if k.sha256.len() != 64 || hex::decode_to_slice(&k.sha256, &mut sha256).is_err() {
        return Err(format!(
            "upsert[{i}].sha256: key `{}`: `sha256` must be 64 hex digits",
            k.id
        ));
    }
    let expires_at = match &k.expires_at {
        None => None,
        Some(s) => match OffsetDateTime::parse(s, &Rfc3339) {
            Ok(t) => Some(t.unix_timestamp()),
            Err(_) => {
                return Err(format!(
                    "upsert[{i}].expires_at: key `{}`: `{s}` is not an RFC 3339 timestamp",
                    k.id
                ))
            }
        },
    };
    Ok(ApiKey {
        id: k.id.clone(),
        sha256,
        user: k.user.clone(),
        org: k.org.clone(),
        tier: k.tier.clone(),
        roles: k.roles.clone(),
        models: k.models.iter().map(|m| ModelPattern::parse(m)).collect(),
        expires_at,
    })
}

/// Every entry of a delta, or every problem with them.
pub fn api_keys(specs: &[KeySpec]) -> Result<Vec<ApiKey>, Vec<String>> {
    let (ok, errors): (Vec<_>, Vec<_>) = specs
        .iter()
        .enumerate()
        .map(|(i, k)| api_key(i, k))
        .partition(Result::is_ok);
    if errors.is_empty() {
        Ok(ok.into_iter().filter_map(Result::ok).collect())
    } else {
        Err(errors.into_iter().filter_map(Result::err).collect())
    }
}

/// A key back in the shape a `keys:` item is written in (what the last-good cache stores).
pub fn key_spec(k: &ApiKey) -> KeySpec {
    KeySpec {
        id: k.id.clone(),
        sha256: hex::encode(k.sha256),
        user: k.user.clone(),
        org: k.org.clone(),
        tier: k.tier.clone(),
        roles: k.roles.clone(),
        models: k
            .models
            .iter()
            .map(|m| match m {
                ModelPattern::Exact(s) => s.clone(),
                ModelPattern::Prefix(p) => format!("{p}*"),
            })
            .collect(),
        expires_at: k.expires_at.and_then(|t| {
            OffsetDateTime::from_unix_timestamp(t)
                .ok()
                .and_then(|t| t.format(&Rfc3339).ok())
        }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    const SHA: &str = "ba95025563ae64f9e484181b3a02aa6b1f12f02d867fb056fb648b8ce6c7af86";

    #[test]
    fn every_event_type_parses_and_unknown_ones_are_tolerated() {
        let snap = Event::parse(
            br#"{"type":"snapshot","version":4,"hash":"h","document":"a: 1\n","extra":true}"#,
        );
        assert!(matches!(snap.unwrap(), Event::Snapshot { version: 4, .. }));
        let line = format!(
            r#"{{"type":"keys","version":5,"base":4,"hash":"h2","upsert":[{{"id":"k","sha256":"{SHA}","user":"u","tier":"pro","expires_at":"2030-01-01T00:00:00Z"}}],"remove":["old"]}}"#
        );
        let Event::Keys {
            version,
            base,
            upsert,
            remove,
            ..
        } = Event::parse(line.as_bytes()).unwrap()
        else {
            panic!("not a keys event");
        };
        assert_eq!((version, base, remove), (5, 4, vec!["old".to_string()]));
        let keys = api_keys(&upsert).unwrap();
        assert_eq!(keys[0].expires_at, Some(1_893_456_000));
        assert!(matches!(
            Event::parse(br#"{"type":"heartbeat","version":5}"#).unwrap(),
            Event::Heartbeat { version: Some(5) }
        ));
        let Event::Revoked { revision, tokens } = Event::parse(
            br#"{"type":"revoked","revision":3,"tokens":[{"jti":"a","exp":1900000000}]}"#,
        )
        .unwrap() else {
            panic!("not a revoked event");
        };
        assert_eq!(
            (revision, tokens[0].jti.as_str(), tokens[0].exp),
            (3, "a", 1_900_000_000)
        );
        assert!(matches!(
            Event::parse(br#"{"type":"bookmark","version":5}"#).unwrap(),
            Event::Unknown
        ));
        assert!(Event::parse(b"not json").is_err());
    }

    #[test]
    fn bad_entries_are_named_and_good_ones_round_trip() {
        let spec = |sha: &str, exp: Option<&str>| KeySpec {
            id: "k".into(),
            sha256: sha.into(),
            user: "u".into(),
            org: Some("o".into()),
            tier: "pro".into(),
            roles: vec!["r".into()],
            models: vec!["gpt-*".into(), "o1".into()],
            expires_at: exp.map(Into::into),
        };
        let errors =
            api_keys(&[spec(SHA, None), spec("zz", None), spec(SHA, Some("soon"))]).unwrap_err();
        assert_eq!(
            errors,
            [
                "upsert[1].sha256: key `k`: `sha256` must be 64 hex digits",
                "upsert[2].expires_at: key `k`: `soon` is not an RFC 3339 timestamp",
            ]
        );
        let good = spec(SHA, Some("2030-01-01T00:00:00Z"));
        let back = key_spec(&api_key(0, &good).unwrap());
        assert_eq!(
            serde_json::to_value(&back).unwrap(),
            serde_json::to_value(&good).unwrap()
        );
    }
}
