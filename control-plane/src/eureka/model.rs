//! Eureka's instance documents: reading the `{"instance": {...}}` a client registers (lenient, since
//! clients send many fields we only store), and rendering registry records in the shapes Eureka clients
//! decode (`applications` / `application` / `instance` arrays, `port: {"$": 8080, "@enabled": "true"}`,
//! `leaseInfo`, timestamps in milliseconds).
//!
//! A record registered through Eureka is served back as its client sent it, with the fields the server
//! owns (status, lease timestamps, action type) filled in; a gateway instance registered through `/v1`
//! is described from its address, role and version.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::http::{FieldError, Problem};
use crate::registry::apps::{check_app, AppRegistration, Record};

/// The statuses Eureka knows.
pub const STATUSES: [&str; 5] = ["UP", "DOWN", "STARTING", "OUT_OF_SERVICE", "UNKNOWN"];

/// Eureka's default lease: an instance is `DOWN` 90 s after its last renewal.
const DEFAULT_LEASE_SECS: i64 = 90;
const DEFAULT_RENEWAL_SECS: i64 = 30;
const DATA_CENTER_CLASS: &str = "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo";

/// A JSON value clients send as a number, a string or a boolean (`"8080"`, `8080`, `"true"`, `true`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Flex {
    Int(i64),
    Bool(bool),
    Text(String),
}

impl Flex {
    fn int(&self) -> Option<i64> {
        match self {
            Flex::Int(n) => Some(*n),
            Flex::Text(t) => t.trim().parse().ok(),
            Flex::Bool(_) => None,
        }
    }

    fn truthy(&self) -> bool {
        matches!(self, Flex::Bool(true)) || matches!(self, Flex::Text(t) if t == "true")
    }
}

#[derive(Debug, Deserialize)]
struct PortIn {
    #[serde(rename = "$")]
    port: Flex,
    #[serde(rename = "@enabled")]
    enabled: Option<Flex>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LeaseIn {
    duration_in_secs: Option<Flex>,
    renewal_interval_in_secs: Option<Flex>,
}

/// The fields of a registered instance we read; the rest is stored as sent.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct InstanceIn {
    instance_id: Option<String>,
    host_name: String,
    app: Option<String>,
    ip_addr: Option<String>,
    status: Option<String>,
    port: Option<PortIn>,
    secure_port: Option<PortIn>,
    lease_info: Option<LeaseIn>,
    metadata: Option<Map<String, Value>>,
}

/// `instance` decoded as [`InstanceIn`]; a bad field is a 422 naming it (`instance.port.$`).
fn decode(instance: &Map<String, Value>) -> Result<InstanceIn, Problem> {
    serde_path_to_error::deserialize(Value::Object(instance.clone())).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|r| r.split('`').next());
        let field = match (path.as_str(), missing) {
            (".", Some(name)) => format!("instance.{name}"),
            (".", None) => "instance".to_owned(),
            (p, _) => format!("instance.{p}"),
        };
        Problem::field(field, message)
    })
}

/// `{"$": port, "@enabled": "true"|"false"}`, or the field's error.
fn port(field: &str, p: Option<&PortIn>, default: (i64, bool)) -> Result<Value, FieldError> {
    let (number, enabled) = match p {
        None => default,
        Some(p) => {
            let n = p.port.int().filter(|n| (0..=65535).contains(n));
            let n = n.ok_or_else(|| FieldError::new(format!("{field}.$"), "must be 0 to 65535"))?;
            (n, p.enabled.as_ref().is_some_and(Flex::truthy))
        }
    };
    Ok(json!({"$": number, "@enabled": enabled.to_string()}))
}

/// The lease and renewal interval (seconds) a client states, or Eureka's defaults.
fn lease(l: Option<&LeaseIn>) -> Result<(i64, i64), FieldError> {
    let get = |f: Option<&Flex>, default| f.map_or(Some(default), Flex::int);
    let duration = get(
        l.and_then(|l| l.duration_in_secs.as_ref()),
        DEFAULT_LEASE_SECS,
    )
    .filter(|d| (1..=3600).contains(d))
    .ok_or_else(|| FieldError::new("instance.leaseInfo.durationInSecs", "must be 1 to 3600"))?;
    let renewal = get(
        l.and_then(|l| l.renewal_interval_in_secs.as_ref()),
        DEFAULT_RENEWAL_SECS,
    )
    .filter(|r| (1..=3600).contains(r))
    .ok_or_else(|| {
        FieldError::new(
            "instance.leaseInfo.renewalIntervalInSecs",
            "must be 1 to 3600",
        )
    })?;
    Ok((duration, renewal))
}

/// What [`checked`] derives from a valid instance document.
struct Checked {
    status: String,
    port: Value,
    secure_port: Value,
    lease_secs: i64,
    renewal_secs: i64,
}

/// Every field rule of an instance of `app` at once: 422 naming each bad field.
fn checked(app: &str, parsed: &InstanceIn) -> Result<Checked, Problem> {
    let mut errors = Vec::new();
    errors.extend(check_app("app", app).err());
    if let Some(body_app) = &parsed.app {
        if !body_app.eq_ignore_ascii_case(app) {
            let message = format!("must match the app in the path, `{app}`");
            errors.push(FieldError::new("instance.app", message));
        }
    }
    let status = parsed.status.clone().unwrap_or_else(|| "UP".to_owned());
    if !STATUSES.contains(&status.as_str()) {
        let message = format!("must be one of {}", STATUSES.join(", "));
        errors.push(FieldError::new("instance.status", message));
    }
    let secure = parsed.secure_port.as_ref();
    let ports = (
        port("instance.port", parsed.port.as_ref(), (0, false)),
        port("instance.securePort", secure, (443, false)),
    );
    match (ports, lease(parsed.lease_info.as_ref())) {
        ((Ok(port), Ok(secure_port)), Ok((lease_secs, renewal_secs))) if errors.is_empty() => {
            Ok(Checked {
                status,
                port,
                secure_port,
                lease_secs,
                renewal_secs,
            })
        }
        ((p, s), l) => {
            errors.extend([p.err(), s.err(), l.err()].into_iter().flatten());
            Err(Problem::invalid(errors))
        }
    }
}

/// The registration a client's `POST /eureka/apps/{app}` asks for (`app` already upper-cased). The
/// document is stored as sent, less the fields the server owns, with ports normalized.
pub fn registration(app: &str, instance: Map<String, Value>) -> Result<AppRegistration, Problem> {
    let parsed = decode(&instance)?;
    let c = checked(app, &parsed)?;
    let id = parsed
        .instance_id
        .clone()
        .unwrap_or_else(|| parsed.host_name.clone());
    let host = parsed
        .ip_addr
        .clone()
        .filter(|ip| !ip.is_empty())
        .unwrap_or(parsed.host_name.clone());
    let version = parsed
        .metadata
        .as_ref()
        .and_then(|m| m.get("version"))
        .and_then(Value::as_str);
    let mut meta = instance;
    let owned = [
        "status",
        "overriddenstatus",
        "overriddenStatus",
        "actionType",
        "lastUpdatedTimestamp",
    ];
    for field in owned {
        meta.remove(field);
    }
    meta.insert("instanceId".into(), json!(id));
    meta.insert("app".into(), json!(app));
    meta.insert("port".into(), c.port.clone());
    meta.insert("securePort".into(), c.secure_port);
    let lease_info = json!({"renewalIntervalInSecs": c.renewal_secs});
    meta.insert("leaseInfo".into(), lease_info);
    Ok(AppRegistration {
        app: app.to_owned(),
        address: format!("{host}:{}", c.port["$"]),
        version: version.unwrap_or("unknown").to_owned(),
        lease_secs: i32::try_from(c.lease_secs).unwrap_or(90),
        reported_status: c.status,
        meta: Value::Object(meta),
        id,
    })
}

/// Renames the registry's field names in `p` to the Eureka document's.
pub fn eureka_fields(mut p: Problem) -> Problem {
    for e in &mut p.errors {
        let renamed = match e.field.as_str() {
            "id" => "instance.instanceId",
            "address" => "instance.ipAddr",
            "version" => "instance.metadata.version",
            "lease" => "instance.leaseInfo.durationInSecs",
            _ => continue,
        };
        e.field = renamed.to_owned();
    }
    p
}

/// The status Eureka shows: the operator's override, else `DOWN` past the lease, else what the
/// instance reports.
pub fn status(r: &Record) -> String {
    if let Some(o) = &r.status_override {
        return o.clone();
    }
    if r.instance.status != "up" {
        return "DOWN".to_owned();
    }
    r.reported_status.clone().unwrap_or_else(|| "UP".to_owned())
}

fn millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// A gateway instance registered through `/v1`, described from its address, role and version.
fn described(r: &Record) -> Map<String, Value> {
    let i = &r.instance;
    let (host, port) = i
        .address
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
        .map_or((i.address.as_str(), None), |(h, p)| (h, Some(p)));
    let mut metadata = json!({"role": i.role, "version": i.version});
    if let Some(v) = i.config_version {
        metadata["config_version"] = json!(v.to_string());
    }
    let vip = i.app.to_ascii_lowercase();
    let doc = json!({
        "hostName": host,
        "ipAddr": host,
        "port": {"$": port.unwrap_or(0), "@enabled": port.is_some().to_string()},
        "securePort": {"$": 443, "@enabled": "false"},
        "homePageUrl": format!("http://{}/", i.address),
        "statusPageUrl": "",
        "healthCheckUrl": "",
        "vipAddress": vip,
        "secureVipAddress": vip,
        "countryId": 1,
        "dataCenterInfo": {"@class": DATA_CENTER_CLASS, "name": "MyOwn"},
        "metadata": metadata,
        "leaseInfo": {"renewalIntervalInSecs": 10},
        "lastDirtyTimestamp": millis(i.registered_at).to_string(),
        "isCoordinatingDiscoveryServer": "false",
    });
    match doc {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// One instance in Eureka's shape.
pub fn instance(r: &Record) -> Value {
    let i = &r.instance;
    let mut doc = match &r.meta {
        Some(Value::Object(meta)) => meta.clone(),
        _ => described(r),
    };
    let renewal = doc["leaseInfo"]["renewalIntervalInSecs"]
        .as_i64()
        .unwrap_or(DEFAULT_RENEWAL_SECS);
    let lease = r.lease_secs.map_or(30, i64::from);
    doc.insert("instanceId".into(), json!(i.id));
    doc.insert("app".into(), json!(i.app));
    doc.insert("status".into(), json!(status(r)));
    let overridden = r.status_override.as_deref().unwrap_or("UNKNOWN");
    doc.insert("overriddenStatus".into(), json!(overridden));
    doc.insert(
        "leaseInfo".into(),
        json!({
            "renewalIntervalInSecs": renewal,
            "durationInSecs": lease,
            "registrationTimestamp": millis(i.registered_at),
            "lastRenewalTimestamp": millis(i.last_heartbeat_at),
            "evictionTimestamp": 0,
            "serviceUpTimestamp": millis(i.started_at),
        }),
    );
    doc.insert(
        "lastUpdatedTimestamp".into(),
        json!(millis(i.registered_at).to_string()),
    );
    doc.entry("lastDirtyTimestamp")
        .or_insert(json!(millis(i.registered_at).to_string()));
    doc.entry("metadata").or_insert(json!({}));
    doc.insert("actionType".into(), json!("ADDED"));
    Value::Object(doc)
}

/// `{"name": app, "instance": [...]}` for `records` (all of one app).
fn application_body(app: &str, records: &[&Record]) -> Value {
    let instances: Vec<Value> = records.iter().map(|r| instance(r)).collect();
    json!({"name": app, "instance": instances})
}

/// `GET /eureka/apps/{app}`'s document.
pub fn application(app: &str, records: &[Record]) -> Value {
    let refs: Vec<&Record> = records.iter().collect();
    json!({"application": application_body(app, &refs)})
}

/// Eureka's `apps__hashcode`: `<STATUS>_<count>_` for each status, by status name (`DOWN_1_UP_2_`).
pub fn hashcode(records: &[Record]) -> String {
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for r in records {
        *counts.entry(status(r)).or_default() += 1;
    }
    counts.iter().map(|(s, n)| format!("{s}_{n}_")).collect()
}

/// `GET /eureka/apps`'s document (records sorted by app): every app with its instances.
pub fn applications(records: &[Record], revision: i64) -> Value {
    let mut apps: Vec<Value> = Vec::new();
    let mut start = 0;
    while start < records.len() {
        let app = &records[start].instance.app;
        let end = records[start..]
            .iter()
            .position(|r| &r.instance.app != app)
            .map_or(records.len(), |n| start + n);
        let group: Vec<&Record> = records[start..end].iter().collect();
        apps.push(application_body(app, &group));
        start = end;
    }
    json!({"applications": {
        "versions__delta": revision.to_string(),
        "apps__hashcode": hashcode(records),
        "application": apps,
    }})
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::registry::Instance;

    fn object(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    fn fields(p: &Problem) -> Vec<&str> {
        p.errors.iter().map(|e| e.field.as_str()).collect()
    }

    fn record(status: &str, reported: Option<&str>, overridden: Option<&str>) -> Record {
        let at = DateTime::from_timestamp(1_768_469_400, 0).unwrap();
        Record {
            instance: Instance {
                id: "p-1".into(),
                app: "LEAKY-PROXY".into(),
                role: "proxy".into(),
                address: "10.0.0.7:8080".into(),
                version: "0.4.0".into(),
                config_version: Some(7),
                started_at: at,
                registered_at: at,
                last_heartbeat_at: at,
                status: status.into(),
            },
            lease_secs: None,
            reported_status: reported.map(str::to_owned),
            status_override: overridden.map(str::to_owned),
            meta: None,
        }
    }

    #[test]
    fn a_minimal_instance_gets_eureka_defaults() {
        let r = registration("BILLING", object(json!({"hostName": "h1"}))).unwrap();
        assert_eq!((r.id.as_str(), r.address.as_str()), ("h1", "h1:0"));
        assert_eq!((r.version.as_str(), r.lease_secs), ("unknown", 90));
        assert_eq!(r.reported_status, "UP");
        assert_eq!(r.meta["port"], json!({"$": 0, "@enabled": "false"}));
        assert_eq!(r.meta["securePort"], json!({"$": 443, "@enabled": "false"}));
        assert_eq!(r.meta["app"], "BILLING");
    }

    #[test]
    fn ports_and_leases_may_come_as_text_and_server_fields_are_dropped() {
        let doc = json!({"hostName": "h1", "ipAddr": "10.0.0.9", "status": "STARTING",
            "actionType": "DELETED", "port": {"$": "8080", "@enabled": true},
            "leaseInfo": {"durationInSecs": "30"}});
        let r = registration("BILLING", object(doc)).unwrap();
        assert_eq!(r.address, "10.0.0.9:8080");
        assert_eq!(r.meta["port"], json!({"$": 8080, "@enabled": "true"}));
        assert_eq!((r.lease_secs, r.reported_status.as_str()), (30, "STARTING"));
        assert!(r.meta.get("status").is_none() && r.meta.get("actionType").is_none());
    }

    #[test]
    fn every_bad_field_is_named_at_once() {
        let doc = json!({"hostName": "h1", "status": "HAPPY", "port": {"$": -1},
            "leaseInfo": {"renewalIntervalInSecs": 0}});
        let p = registration("BAD APP", object(doc)).unwrap_err();
        assert_eq!(
            fields(&p),
            [
                "app",
                "instance.status",
                "instance.port.$",
                "instance.leaseInfo.renewalIntervalInSecs"
            ]
        );
        let p = registration("A", object(json!({"hostName": 7}))).unwrap_err();
        assert_eq!(fields(&p), ["instance.hostName"]);
    }

    #[test]
    fn status_is_the_override_else_down_past_the_lease_else_the_reported_one() {
        assert_eq!(status(&record("up", None, None)), "UP");
        assert_eq!(status(&record("up", Some("STARTING"), None)), "STARTING");
        assert_eq!(status(&record("down", Some("UP"), None)), "DOWN");
        let out = record("down", Some("UP"), Some("OUT_OF_SERVICE"));
        assert_eq!(status(&out), "OUT_OF_SERVICE");
        let all = [
            record("up", None, None),
            record("down", None, None),
            record("up", None, None),
        ];
        assert_eq!(hashcode(&all), "DOWN_1_UP_2_");
    }

    #[test]
    fn a_gateway_instance_is_described_from_its_address() {
        let i = instance(&record("up", None, None));
        assert_eq!(
            (i["hostName"].as_str(), i["ipAddr"].as_str()),
            (Some("10.0.0.7"), Some("10.0.0.7"))
        );
        assert_eq!(i["port"], json!({"$": 8080, "@enabled": "true"}));
        assert_eq!(i["leaseInfo"]["durationInSecs"], 30);
        assert_eq!(i["vipAddress"], "leaky-proxy");
        let mut odd = record("up", None, None);
        odd.instance.address = "unix-socket".into();
        assert_eq!(instance(&odd)["port"], json!({"$": 0, "@enabled": "false"}));
    }
}
