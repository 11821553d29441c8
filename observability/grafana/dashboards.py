#!/usr/bin/env python3
"""The Grafana dashboards of observability/grafana/dashboards/, as code.

    python3 observability/grafana/dashboards.py          rewrite the JSON files
    python3 observability/grafana/dashboards.py --check  exit 1 if a JSON file differs from this

Why a generator: seven dashboards share one datasource variable, one panel shape and one id scheme;
writing them by hand drifts (a copied panel keeps its id, a panel forgets the variable). The JSON
files are what Grafana provisions and what tests/observability and tests/stack check; this script is
how they are edited. Dashboard JSON model: schemaVersion 39 (Grafana 10.4/11).

Conventions every panel follows (tests/observability/test_dashboards.py checks them):
- datasource {"type": "prometheus", "uid": "${DS_PROMETHEUS}"} on the panel and on each target;
- template variables are used as `label=~"$var"` (multi-value, "All" = `.*`);
- rates use `[$__rate_interval]`, so a panel works at any scrape interval.
"""
import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "dashboards"
SCHEMA_VERSION = 39
DS = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
RI = "$__rate_interval"


def datasource_var():
    return {
        "name": "DS_PROMETHEUS",
        "label": "Prometheus",
        "type": "datasource",
        "query": "prometheus",
        "current": {"text": "Prometheus", "value": "leaky-prometheus"},
        "hide": 0,
        "refresh": 1,
        "options": [],
    }


def query_var(name, label, metric):
    """A multi-value variable over `label`'s values on `metric` ("All" matches everything)."""
    return {
        "name": name,
        "label": name,
        "type": "query",
        "datasource": DS,
        "definition": f"label_values({metric}, {label})",
        "query": {"query": f"label_values({metric}, {label})", "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"text": ["All"], "value": ["$__all"]},
        "refresh": 2,
        "sort": 1,
        "hide": 0,
        "options": [],
    }


def panel(title, exprs, unit="short", kind="timeseries", description=""):
    """A panel; `exprs` is [(expr, legend), ...]."""
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}}
        if kind == "timeseries"
        else {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}},
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": DS, "expr": e, "legendFormat": legend, "range": True}
            for i, (e, legend) in enumerate(exprs)
        ],
    }


def dashboard(uid, title, description, variables, panels):
    """Lays `panels` out two per row and numbers them 1..n."""
    laid = []
    for i, p in enumerate(panels):
        p = dict(p, id=i + 1, gridPos={"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)})
        laid.append(p)
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["leaky-tokens"],
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "30s",
        "timezone": "utc",
        "annotations": {"list": []},
        "links": [{"title": "Leaky Tokens", "type": "dashboards", "tags": ["leaky-tokens"], "asDropdown": True}],
        "templating": {"list": [datasource_var()] + variables},
        "panels": laid,
    }


def overview():
    sel = 'instance=~"$instance",route=~"$route"'
    return dashboard(
        "leaky-overview",
        "Leaky Tokens / Gateway overview",
        "Traffic, errors, latency and health of every proxy, and the two SLOs' burn rates.",
        [query_var("instance", "instance", 'up{service="proxy"}'), query_var("route", "route", "leaky_requests_total")],
        [
            panel("Requests by status class", [(f"sum by (status_class) (rate(leaky_requests_total{{{sel}}}[{RI}]))", "{{status_class}}")], "reqps"),
            panel("Requests by route", [(f"sum by (route) (rate(leaky_requests_total{{{sel}}}[{RI}]))", "{{route}}")], "reqps"),
            panel("Latency to the last byte (p50, p90, p99)", [
                (f"histogram_quantile({q}, sum by (le) (rate(leaky_request_duration_seconds_bucket{{{sel}}}[{RI}])))", f"p{int(q * 100)}")
                for q in (0.5, 0.9, 0.99)
            ], "s"),
            panel("Refused by the gateway, by reason", [(f"sum by (reason) (rate(leaky_rejections_total{{{sel}}}[{RI}]))", "{{reason}}")], "reqps"),
            panel("Availability SLO burn rate (1 = on budget)", [
                ("service:leaky_request_errors:ratio_rate5m / 0.001", "5m"),
                ("service:leaky_request_errors:ratio_rate1h / 0.001", "1h"),
                ("service:leaky_request_errors:ratio_rate6h / 0.001", "6h"),
            ], "short", description="Error ratio over the window divided by the 0.1 % budget; the page fires above 14.4 on 1h and 5m."),
            panel("Latency SLO burn rate (1 = on budget)", [
                ("service:leaky_request_slow:ratio_rate5m / 0.01", "5m"),
                ("service:leaky_request_slow:ratio_rate1h / 0.01", "1h"),
                ("service:leaky_request_slow:ratio_rate6h / 0.01", "6h"),
            ], "short", description="Share of requests over 10 s divided by the 1 % budget."),
            panel("Targets up", [('up{service=~"proxy|control-plane|analytics"}', "{{service}} {{instance}}")], "short", "stat"),
            panel("Open client connections", [('sum by (instance, listener) (leaky_connections_open{instance=~"$instance"})', "{{instance}} {{listener}}")]),
            panel("Active config version", [('leaky_config_version{instance=~"$instance"}', "{{instance}}")], "short", "stat"),
            panel("Last config load succeeded (0 = NACK)", [('leaky_config_last_reload_successful{instance=~"$instance"}', "{{instance}}")], "short", "stat"),
        ],
    )


def providers():
    up = 'upstream=~"($provider)/.*"'
    return dashboard(
        "leaky-providers",
        "Leaky Tokens / Providers",
        "Per provider and deployment: traffic, upstream latency, attempts by outcome, breakers and health.",
        [query_var("provider", "provider", 'leaky_requests_total{provider!="none"}')],
        [
            panel("Requests by provider and status class", [(f'sum by (provider, status_class) (rate(leaky_requests_total{{provider=~"$provider"}}[{RI}]))', "{{provider}} {{status_class}}")], "reqps"),
            panel("Upstream time to headers (p90)", [(f'histogram_quantile(0.9, sum by (provider, le) (rate(leaky_upstream_duration_seconds_bucket{{provider=~"$provider"}}[{RI}])))', "{{provider}}")], "s"),
            panel("Upstream attempts by deployment and outcome", [(f"sum by (upstream, outcome) (rate(leaky_upstream_attempts_total{{{up}}}[{RI}]))", "{{upstream}} {{outcome}}")], "reqps"),
            panel("Circuit state (0 closed, 1 open, 2 half-open)", [(f"max by (upstream) (leaky_circuit_state{{{up}}})", "{{upstream}}")]),
            panel("Deployment passes its health check", [(f"min by (upstream) (leaky_upstream_healthy{{{up}}})", "{{upstream}}")]),
            panel("Skipped for a 429 retry-after", [(f"sum by (upstream) (rate(leaky_upstream_cooldowns_total{{{up}}}[{RI}]))", "{{upstream}}")], "ops"),
            panel("Tokens by provider", [(f'sum by (provider, kind) (rate(leaky_tokens_total{{provider=~"$provider"}}[{RI}]))', "{{provider}} {{kind}}")], "short"),
        ],
    )


def ratelimit():
    return dashboard(
        "leaky-ratelimit",
        "Leaky Tokens / Rate limiting",
        "Limiter decisions per policy, 429s, settlements and the shared store (Redis).",
        [query_var("policy", "policy", "leaky_ratelimit_decisions_total")],
        [
            panel("Decisions", [(f'sum by (decision) (rate(leaky_ratelimit_decisions_total{{policy=~"$policy"}}[{RI}]))', "{{decision}}")], "ops"),
            panel("Denied by policy", [(f'sum by (policy) (rate(leaky_ratelimit_decisions_total{{policy=~"$policy",decision="denied"}}[{RI}]))', "{{policy}}")], "ops"),
            panel("Refused by the gateway, by reason", [(f"sum by (reason) (rate(leaky_rejections_total[{RI}]))", "{{reason}}")], "reqps"),
            panel("Settled reservations by usage source", [(f"sum by (source) (rate(leaky_ratelimit_settlements_total[{RI}]))", "{{source}}")], "ops"),
            panel("Shared store degraded (1 = following on_store_error)", [("max by (instance) (leaky_ratelimit_store_degraded)", "{{instance}}")]),
            panel("Store errors, fallbacks and breaker trips", [
                (f"sum(rate(leaky_ratelimit_store_errors_total[{RI}]))", "errors"),
                (f"sum(rate(leaky_ratelimit_store_fallbacks_total[{RI}]))", "fallback decisions"),
                (f"sum(increase(leaky_ratelimit_store_breaker_trips_total[{RI}]))", "breaker trips"),
            ], "ops"),
        ],
    )


def tokens():
    return dashboard(
        "leaky-tokens",
        "Leaky Tokens / Tokens and cost",
        "Token throughput by provider and kind, tokens per request, the response cache's savings and the "
        "usage-event pipeline. Money is exact and per org: it lives in statements (GET /v1/orgs/{org}/usage, "
        "docs/analytics.md), not in Prometheus floats.",
        [query_var("provider", "provider", 'leaky_tokens_total{provider!="none"}')],
        [
            panel("Tokens per second", [('sum by (provider, kind) (provider_kind:leaky_tokens:rate5m{provider=~"$provider"})', "{{provider}} {{kind}}")]),
            panel("Tokens per successful request", [(
                f'sum by (provider) (rate(leaky_tokens_total{{provider=~"$provider"}}[{RI}])) / sum by (provider) (rate(leaky_requests_total{{provider=~"$provider",status_class="2xx"}}[{RI}]))',
                "{{provider}}",
            )]),
            panel("Tokens in the last hour", [('sum by (kind) (increase(leaky_tokens_total{provider=~"$provider"}[1h]))', "{{kind}}")], "short", "stat"),
            panel("Response cache results", [(f"sum by (result) (rate(leaky_cache_requests_total[{RI}]))", "{{result}}")], "reqps"),
            panel("Usage events to Kafka", [
                (f"sum(rate(leaky_usage_events_published_total[{RI}]))", "published"),
                (f"sum(rate(leaky_usage_events_delivery_failures_total[{RI}]))", "delivery failures"),
                (f"sum(rate(leaky_usage_events_spooled_total[{RI}]))", "spooled"),
            ], "ops"),
            panel("Usage events waiting (queue) and spooled (bytes)", [
                ("sum by (instance) (leaky_usage_events_queue_depth)", "queue {{instance}}"),
                ("sum by (instance) (leaky_usage_events_spool_bytes)", "spool bytes {{instance}}"),
            ]),
        ],
    )


def control_plane():
    return dashboard(
        "leaky-control-plane",
        "Leaky Tokens / Control plane",
        "The control plane's database, outbox backlog, notification deliveries and the proxies' config.",
        [],
        [
            panel("Control plane up", [('up{service="control-plane"}', "{{instance}}")], "short", "stat"),
            panel("PostgreSQL readable at scrape", [("leaky_control_plane_db_up", "{{instance}}")], "short", "stat"),
            panel("Outbox backlog", [("leaky_outbox_unsent_events", "unsent events")]),
            panel("Oldest unpublished outbox event", [("leaky_outbox_lag_seconds", "age")], "s"),
            panel("Notification deliveries", [(f"sum by (channel, result) (rate(leaky_notify_deliveries_total[{RI}]))", "{{channel}} {{result}}")], "ops"),
            panel("Proxies' active config version", [('leaky_config_version{service="proxy"}', "{{instance}}")], "short", "stat"),
            panel("Events applied by consumer", [(f"sum by (consumer) (rate(leaky_consumer_applied_total[{RI}]))", "{{consumer}}")], "ops"),
            panel("Balance reconciler passes", [(f"sum(rate(leaky_reconcile_passes_total[{RI}]))", "passes")], "ops"),
        ],
    )


def kafka():
    return dashboard(
        "leaky-kafka",
        "Leaky Tokens / Kafka, outbox and sagas",
        "Event flow: the outbox relay, the proxies' usage events, consumers (lag, duplicates, poison) and "
        "the purchase sagas.",
        [query_var("consumer", "consumer", "leaky_consumer_applied_total")],
        [
            panel("Outbox relay", [
                (f"sum(rate(leaky_outbox_published_total[{RI}]))", "published"),
                (f"sum(rate(leaky_outbox_relay_errors_total[{RI}]))", "failed batches"),
            ], "ops"),
            panel("Usage events published by the proxies", [(f"sum by (instance) (rate(leaky_usage_events_published_total[{RI}]))", "{{instance}}")], "ops"),
            panel("Consumer lag (messages)", [
                ('leaky_consumer_lag{consumer=~"$consumer"}', "{{consumer}}"),
                ("leaky_analytics_consumer_lag", "leaky-analytics"),
            ]),
            panel("Consumer outcomes", [
                (f'sum by (consumer) (rate(leaky_consumer_applied_total{{consumer=~"$consumer"}}[{RI}]))', "applied {{consumer}}"),
                (f'sum by (consumer) (rate(leaky_consumer_duplicates_total{{consumer=~"$consumer"}}[{RI}]))', "duplicates {{consumer}}"),
                (f'sum by (consumer) (rate(leaky_consumer_poison_total{{consumer=~"$consumer"}}[{RI}]))', "poison {{consumer}}"),
                (f'sum by (consumer) (rate(leaky_consumer_retries_total{{consumer=~"$consumer"}}[{RI}]))', "retries {{consumer}}"),
            ], "ops"),
            panel("Sagas by state", [("max by (state) (leaky_sagas)", "{{state}}")]),
            panel("Sagas needing a human", [('max(leaky_sagas{state="needs_attention"})', "needs_attention")], "short", "stat"),
            panel("Saga steps by result", [(f"sum by (step, result) (rate(leaky_saga_steps_total[{RI}]))", "{{step}} {{result}}")], "ops"),
            panel("Outbox events pruned", [(f"sum(increase(leaky_outbox_pruned_total[{RI}]))", "pruned")]),
        ],
    )


def analytics():
    return dashboard(
        "leaky-analytics",
        "Leaky Tokens / Analytics",
        "The analytics role: usage events into Cassandra, lag, retries, dead letters and usage anomalies.",
        [],
        [
            panel("Usage events written", [(f"sum(rate(leaky_analytics_events_total[{RI}]))", "events")], "ops"),
            panel("Batches committed", [(f"sum(rate(leaky_analytics_batches_total[{RI}]))", "batches")], "ops"),
            panel("Consumer lag (messages)", [("leaky_analytics_consumer_lag", "{{instance}}")]),
            panel("Event time to rollups written (p50, p90)", [
                (f"histogram_quantile({q}, sum by (le) (rate(leaky_analytics_event_lag_seconds_bucket[{RI}])))", f"p{int(q * 100)}")
                for q in (0.5, 0.9)
            ], "s"),
            panel("Write retries and commit failures", [
                (f"sum(rate(leaky_analytics_write_retries_total[{RI}]))", "write retries"),
                (f"sum(rate(leaky_analytics_commit_failures_total[{RI}]))", "commit failures"),
            ], "ops"),
            panel("Usage anomalies in the last hour, by kind", [("sum by (kind) (increase(leaky_analytics_anomalies_total[1h]))", "{{kind}}")], "short", "stat"),
        ],
    )


DASHBOARDS = {
    "gateway-overview.json": overview,
    "providers.json": providers,
    "rate-limiting.json": ratelimit,
    "tokens-and-cost.json": tokens,
    "control-plane.json": control_plane,
    "kafka-outbox-sagas.json": kafka,
    "analytics.json": analytics,
}


def render(build):
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main():
    check = "--check" in sys.argv[1:]
    stale = []
    OUT.mkdir(exist_ok=True)
    for name, build in DASHBOARDS.items():
        path = OUT / name
        text = render(build)
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print("stale (run python3 observability/grafana/dashboards.py):", ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
