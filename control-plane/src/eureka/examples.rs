//! Examples for the Eureka routes' OpenAPI documentation: one `py_eureka_client`-style registration and
//! the documents the API serves for it, in JSON and (through the same mapping as the responses) XML.

use serde_json::{json, Value};

use super::wire::to_xml;

/// A registration as `py_eureka_client` sends it.
pub fn registration() -> Value {
    json!({"instance": {
        "instanceId": "10.0.0.9:billing:8080",
        "hostName": "billing-1.internal",
        "app": "BILLING",
        "ipAddr": "10.0.0.9",
        "status": "UP",
        "port": {"$": 8080, "@enabled": "true"},
        "securePort": {"$": 8443, "@enabled": "false"},
        "countryId": 1,
        "dataCenterInfo": {"@class": "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo", "name": "MyOwn"},
        "leaseInfo": {"renewalIntervalInSecs": 30, "durationInSecs": 90},
        "metadata": {"management.port": "8080", "version": "2.3.1"},
        "homePageUrl": "http://billing-1.internal:8080/",
        "statusPageUrl": "http://billing-1.internal:8080/info",
        "healthCheckUrl": "http://billing-1.internal:8080/health",
        "vipAddress": "billing",
        "secureVipAddress": "billing",
        "isCoordinatingDiscoveryServer": "false"
    }})
}

/// A gateway proxy registered through `/v1`, as Eureka clients see it.
pub fn instance() -> Value {
    json!({
        "hostName": "10.0.0.7",
        "ipAddr": "10.0.0.7",
        "port": {"$": 8080, "@enabled": "true"},
        "securePort": {"$": 443, "@enabled": "false"},
        "homePageUrl": "http://10.0.0.7:8080/",
        "statusPageUrl": "",
        "healthCheckUrl": "",
        "vipAddress": "leaky-proxy",
        "secureVipAddress": "leaky-proxy",
        "countryId": 1,
        "dataCenterInfo": {"@class": "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo", "name": "MyOwn"},
        "metadata": {"role": "proxy", "version": "0.4.0", "config_version": "7"},
        "leaseInfo": {
            "renewalIntervalInSecs": 10,
            "durationInSecs": 30,
            "registrationTimestamp": 1_768_469_400_000_i64,
            "lastRenewalTimestamp": 1_768_469_400_000_i64,
            "evictionTimestamp": 0,
            "serviceUpTimestamp": 1_768_469_400_000_i64
        },
        "lastDirtyTimestamp": "1768469400000",
        "isCoordinatingDiscoveryServer": "false",
        "instanceId": "proxy-eu-1",
        "app": "LEAKY-PROXY",
        "status": "UP",
        "overriddenStatus": "UNKNOWN",
        "lastUpdatedTimestamp": "1768469400000",
        "actionType": "ADDED"
    })
}

pub fn application() -> Value {
    json!({"application": {"name": "LEAKY-PROXY", "instance": [instance()]}})
}

pub fn applications() -> Value {
    json!({"applications": {
        "versions__delta": "3",
        "apps__hashcode": "UP_1_",
        "application": [{"name": "LEAKY-PROXY", "instance": [instance()]}]
    }})
}

pub fn applications_xml() -> String {
    to_xml(&applications())
}

pub fn application_xml() -> String {
    to_xml(&application())
}

pub fn instance_xml() -> String {
    to_xml(&json!({"instance": instance()}))
}
