"""A real alert, end to end: a real proxy (the leaky-tokens binary) serves TLS with a certificate that
expires in 2 days; a real Prometheus scrapes it with the project's rules and sends to a real
Alertmanager with the project's routing and inhibition, which posts to a webhook receiver here.

Expected: LeakyCertificateExpiry fires in both flavours; the critical one is paged (receiver `pager`),
the warning one is inhibited by it and never reaches `ticket`. Then the proxy is stopped: its `up`
turns 0 and LeakyInstanceDown is paged with the proxy's instance label.

What the test changes, and only that: scrape and evaluation every second, every rule's `for:` cut to
2 s, Alertmanager's group_wait/group_interval cut to 1 s, targets and webhook URLs pointed at this
test's free ports. The rule expressions, labels, routes and inhibition rules are the shipped ones.
"""
import os
import re
import signal
import subprocess

import httpx
import pytest
import yaml

from conftest import OBS, ROOT, free_port, lib, until

BIN = os.environ.get("LEAKY_BIN", str(ROOT / "target" / "debug" / "leaky-tokens"))


def shorten_rules(src, dst):
    """`src` with every `for:` cut to 2 s (the expressions untouched)."""
    text = re.sub(r"^(\s+for:) \S+$", r"\1 2s", src.read_text(), flags=re.M)
    dst.write_text(text)


def prometheus_config(tmp, proxy_admin, am_port):
    rules = tmp / "rules"
    rules.mkdir()
    for name in ("recording.yml", "alerts.yml"):
        shorten_rules(OBS / "prometheus" / "rules" / name, rules / name)
    shipped = yaml.safe_load((OBS / "prometheus" / "prometheus.yml").read_text())
    proxy_job = next(j for j in shipped["scrape_configs"] if j["job_name"] == "proxy")
    proxy_job["static_configs"][0]["targets"] = [f"127.0.0.1:{proxy_admin}"]
    config = dict(
        shipped,
        **{
            "global": dict(shipped["global"], scrape_interval="1s", evaluation_interval="1s"),
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]},
            "scrape_configs": [proxy_job],
        },
    )
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def alertmanager_config(tmp, receiver_url):
    config = yaml.safe_load((OBS / "alertmanager" / "alertmanager.yml").read_text())
    config["route"].update(group_wait="1s", group_interval="1s")
    for r in config["receivers"]:
        for w in r["webhook_configs"]:
            w["url"] = f"{receiver_url}/{r['name']}"
    path = tmp / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def tls_proxy(tmp_path):
    """The real proxy, its listener serving a certificate that expires in 2 days."""
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
         "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem")],
        check=True, capture_output=True,
    )
    config = tmp_path / "proxy.yaml"
    config.write_text(
        f"extends: {ROOT / 'config' / 'dev.yaml'}\n"
        f"server:\n  tls:\n    cert: {tmp_path / 'cert.pem'}\n    key: {tmp_path / 'key.pem'}\n"
    )
    admin = free_port()
    log = open(tmp_path / "proxy.log", "w")
    proc = subprocess.Popen(
        [BIN, "proxy", "-c", str(config), "--listen", f"127.0.0.1:{free_port()}",
         "--admin-listen", f"127.0.0.1:{admin}"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    until(lambda: _ready(admin), "the proxy's /readyz")
    yield proc, admin
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    log.close()


def _ready(admin):
    try:
        return httpx.get(f"http://127.0.0.1:{admin}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def servers(tmp_path, tools, tls_proxy, receiver):
    proc, admin = tls_proxy
    am_port, prom_port = free_port(), free_port()
    lib(f'alertmanager_start "{tmp_path}/am" {am_port} "{alertmanager_config(tmp_path, receiver.url)}"')
    lib(f'prometheus_start "{tmp_path}/prom" {prom_port} "{prometheus_config(tmp_path, admin, am_port)}"')
    yield proc, f"127.0.0.1:{admin}", f"http://127.0.0.1:{prom_port}", f"http://127.0.0.1:{am_port}"
    lib(f'prometheus_stop "{tmp_path}/prom"; alertmanager_stop "{tmp_path}/am"')


def firing(receiver, path, alertname, **labels):
    return [
        a for p, status, a in receiver.alerts(path)
        if status == "firing" and a["alertname"] == alertname
        and all(a.get(k) == v for k, v in labels.items())
    ]


def test_a_real_failure_pages_and_the_inhibited_warning_stays_silent(servers, receiver):
    proc, instance, prom, am = servers
    # The shipped external label says where the alert comes from.
    expiry = dict(instance=instance, job="proxy", service="proxy", listener="proxy", environment="local")

    paged = until(
        lambda: firing(receiver, "/pager", "LeakyCertificateExpiry", severity="critical", **expiry),
        "LeakyCertificateExpiry (critical) at the pager webhook",
    )
    assert paged[0] == dict(expiry, alertname="LeakyCertificateExpiry", severity="critical")

    # Both flavours fire in Prometheus; Alertmanager holds the warning as suppressed by the critical.
    rules = httpx.get(f"{prom}/api/v1/alerts").json()["data"]["alerts"]
    assert {(a["labels"]["alertname"], a["labels"]["severity"], a["state"]) for a in rules} >= {
        ("LeakyCertificateExpiry", "critical", "firing"),
        ("LeakyCertificateExpiry", "warning", "firing"),
    }, rules
    held = httpx.get(f"{am}/api/v2/alerts").json()
    warning = [a for a in held if a["labels"]["severity"] == "warning"]
    assert warning and all(a["status"]["state"] == "suppressed" for a in warning), held
    assert all(a["status"]["inhibitedBy"] for a in warning), held

    # A real failure: the proxy dies, its scrape fails, the pager hears of that instance.
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    down = until(
        lambda: firing(receiver, "/pager", "LeakyInstanceDown", instance=instance),
        "LeakyInstanceDown at the pager webhook",
    )
    assert down[0] == dict(
        alertname="LeakyInstanceDown", instance=instance, job="proxy", service="proxy", severity="critical",
        environment="local",
    )

    # By now Alertmanager has flushed every group many times (1 s intervals): the inhibited warning
    # never went to the ticket receiver, nor anywhere else.
    assert firing(receiver, None, "LeakyCertificateExpiry", severity="warning") == []
    assert receiver.alerts("/ticket") == []
