"""Static checks of observability/prometheus and observability/alertmanager with the projects' own
tools: promtool check config / check rules / test rules, amtool check-config and its route tester;
plus the rules' house style: every alert has a severity pagers route on, a summary, a description,
a runbook anchor that exists in docs/observability.md, and promtool unit tests that see it fire and
see it stay quiet."""
import re
import subprocess

import yaml

from conftest import OBS, ROOT

PROM = OBS / "prometheus"
AM = OBS / "alertmanager" / "alertmanager.yml"


def run(*cmd, cwd=PROM):
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    assert r.returncode == 0, f"{' '.join(cmd)}:\n{r.stdout}{r.stderr}"
    return r.stdout + r.stderr


def alert_rules():
    groups = yaml.safe_load((PROM / "rules" / "alerts.yml").read_text())["groups"]
    return [r for g in groups for r in g["rules"]]


def test_promtool_checks_the_configs_and_rules(tools):
    run("promtool", "check", "config", "prometheus.yml", "prometheus-compose.yml")
    out = run("promtool", "check", "rules", "rules/recording.yml", "rules/alerts.yml")
    assert out.count("SUCCESS") == 2, out


def test_promtool_unit_tests_pass(tools):
    out = run("promtool", "test", "rules", "tests/alerts_test.yml")
    assert "SUCCESS" in out, out


def test_every_alert_is_unit_tested_firing_and_quiet():
    tests = yaml.safe_load((PROM / "tests" / "alerts_test.yml").read_text())["tests"]
    fired, quiet = set(), set()
    for t in tests:
        for case in t.get("alert_rule_test", []):
            (fired if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = {r["alert"] for r in alert_rules()}
    assert names - fired == set(), "alerts never seen firing in tests/alerts_test.yml"
    assert names - quiet == set(), "alerts never seen quiet in tests/alerts_test.yml"
    # Each severity flavour of an alert fires somewhere too.
    flavours = {(r["alert"], r["labels"]["severity"]) for r in alert_rules()}
    seen = {
        (case["alertname"], a["exp_labels"]["severity"])
        for t in tests
        for case in t.get("alert_rule_test", [])
        for a in case.get("exp_alerts") or []
    }
    assert flavours - seen == set(), "severity flavours never seen firing"


def test_every_alert_has_severity_annotations_and_a_runbook_that_exists():
    doc = (ROOT / "docs" / "observability.md").read_text()
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
        for h in re.findall(r"^#+ (.+)$", doc, re.M)
    }
    for r in alert_rules():
        name = r["alert"]
        assert r["labels"]["severity"] in ("critical", "warning"), name
        for key in ("summary", "description", "runbook_url"):
            assert r["annotations"].get(key), f"{name}: no {key}"
        url = r["annotations"]["runbook_url"]
        assert url.startswith("docs/observability.md#"), f"{name}: {url}"
        assert url.split("#", 1)[1] in anchors, f"{name}: no heading for {url}"


def test_amtool_accepts_the_config_and_routes_by_severity(tools):
    run("amtool", "check-config", str(AM))
    for labels, receiver in [
        (["severity=critical", "alertname=LeakyInstanceDown"], "pager"),
        (["severity=warning", "alertname=LeakyOutboxLag"], "ticket"),
        (["alertname=Unlabelled"], "ticket"),
    ]:
        out = run("amtool", "config", "routes", "test", f"--config.file={AM}", *labels)
        assert out.split()[0] == receiver, f"{labels}: {out}"
