"""Static checks of observability/grafana: the dashboards are what dashboards.py generates, valid
JSON of the current schema (39+) with unique panel ids, every panel and query on the DS_PROMETHEUS
datasource variable, and every query valid PromQL as a real Prometheus parses it (an empty one here;
tests/stack/test_dashboards.py runs them against a Prometheus that scraped real traffic)."""
import re
import subprocess
import sys

import httpx
import pytest
import yaml

from conftest import OBS, free_port, lib
from grafana_queries import load, panels, queries, variable_queries

DS = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
EXPECTED = {
    "gateway-overview.json", "providers.json", "rate-limiting.json", "tokens-and-cost.json",
    "control-plane.json", "kafka-outbox-sagas.json", "analytics.json",
}


def test_the_json_is_what_the_generator_writes():
    r = subprocess.run(
        [sys.executable, str(OBS / "grafana" / "dashboards.py"), "--check"], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr


def test_dashboards_are_current_schema_with_unique_ids_and_the_datasource_variable():
    dashboards = load()
    assert set(dashboards) == EXPECTED
    uids = [d["uid"] for d in dashboards.values()]
    assert len(set(uids)) == len(uids), uids
    for name, d in dashboards.items():
        assert d["schemaVersion"] >= 39, name
        ids = [p["id"] for p in panels(d)]
        assert ids and len(set(ids)) == len(ids), f"{name}: panel ids {ids}"
        names = [v["name"] for v in d["templating"]["list"]]
        assert "DS_PROMETHEUS" in names, name
        for v in d["templating"]["list"]:
            if v["type"] == "query":
                assert v["datasource"] == DS, f"{name}: variable {v['name']}"
        for p in panels(d):
            assert p["datasource"] == DS, f"{name}: panel {p['title']}"
            assert p["targets"], f"{name}: panel {p['title']} has no query"
            for t in p["targets"]:
                assert t["datasource"] == DS, f"{name}: {p['title']} {t['refId']}"
            # Every variable a query names exists on the dashboard (or is Grafana's own).
            for t in p["targets"]:
                used = set(re.findall(r"\$\{?(\w+)\}?", t["expr"]))
                assert used <= set(names) | {"__rate_interval"}, f"{name}: {p['title']} uses {used}"


def test_the_provisioning_points_at_the_dashboards_and_the_datasource_uid():
    ds = yaml.safe_load((OBS / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uid = ds["datasources"][0]["uid"]
    for d in load().values():
        var = next(v for v in d["templating"]["list"] if v["name"] == "DS_PROMETHEUS")
        assert var["current"]["value"] == uid
    prov = yaml.safe_load((OBS / "grafana" / "provisioning" / "dashboards" / "leaky-tokens.yml").read_text())
    assert prov["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


@pytest.fixture(scope="module")
def empty_prometheus(tmp_path_factory, tools):
    d = tmp_path_factory.mktemp("prom")
    port = free_port()
    (d / "prometheus.yml").write_text("global: {scrape_interval: 1m}\n")
    lib(f'prometheus_start "{d}/run" {port} "{d}/prometheus.yml"')
    yield f"http://127.0.0.1:{port}"
    lib(f'prometheus_stop "{d}/run"')


def test_every_query_is_valid_promql(empty_prometheus):
    bad = []
    for name, title, expr in queries():
        r = httpx.get(f"{empty_prometheus}/api/v1/query", params={"query": expr})
        if r.status_code != 200:
            bad.append(f"{name} / {title}: {expr}: {r.json().get('error')}")
    for name, var, selector, _ in variable_queries():
        r = httpx.get(f"{empty_prometheus}/api/v1/series", params={"match[]": selector})
        if r.status_code != 200:
            bad.append(f"{name} / ${var}: {selector}: {r.json().get('error')}")
    assert not bad, "\n".join(bad)
