"""Static checks of docker-compose.yml, the Dockerfile and the image's entry point (no Docker engine
here: docs/delivery.md says what is proven here and what only statically).

- the compose file is valid against the compose-spec JSON Schema (vendored: compose-spec.json, from
  compose-go, the library the docker compose CLI is built on; no download at test time);
- every long-running service has a health check, every dependency waits on a condition, every service
  has CPU and memory limits, the gateway's roles run as the image's non-root user, no secret is
  written into the file or the env files;
- the roles, their flags, ports, environment and Kafka topics agree with scripts/stack, which runs the
  same system as local processes (parsed, so the two cannot drift apart silently);
- the entry point's health probe and *_FILE secrets, run for real against a local HTTP server;
- the payments-init job against the real payment stub (`leaky-tokens stubs`, the binary scripts/test
  builds; LEAKY_BIN overrides).
"""

import http.server
import json
import os
import pathlib
import re
import socket
import stat
import subprocess
import threading
import urllib.request

import jsonschema
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
STACK = (ROOT / "scripts/stack").read_text()
DOCKERFILE = (ROOT / "Dockerfile").read_text()
ENTRYPOINT = ROOT / "deploy/docker-entrypoint.sh"
# One-shot set-up jobs: they exit, so dependants wait for `service_completed_successfully`.
JOBS = {name for name, s in SERVICES.items() if s.get("restart") == "no"}
OUR_IMAGE = "${LEAKY_IMAGE:-leaky-tokens:local}"
ROLES = {name for name, s in SERVICES.items() if s.get("image") == OUR_IMAGE}
# A variable whose name ends so holds a secret (LEAKY_ADMIN_TOKEN, PGPASSWORD, OPENAI_API_KEY, ...).
SECRET_WORDS = re.compile(r"(TOKEN|SECRET|PASSWORD|API_KEY|MASTER_KEY|PRIVATE_KEY)$")
SECRET_FILE = re.compile(r"(TOKEN|SECRET|PASSWORD|API_KEY|MASTER_KEY|PRIVATE_KEY)_+FILE$")


def test_schema_valid():
    schema = json.loads((ROOT / "tests/compose/compose-spec.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(COMPOSE), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_schema_rejects_a_broken_file():
    # The vendored schema is strict: a misspelt key fails (so the test above can fail too).
    schema = json.loads((ROOT / "tests/compose/compose-spec.json").read_text())
    broken = {"services": {"a": {"image": "x", "healthcheck": {"tst": ["CMD", "true"]}}}}
    assert list(jsonschema.Draft202012Validator(schema).iter_errors(broken))


def test_every_service_has_a_health_check():
    for name, svc in SERVICES.items():
        check = svc.get("healthcheck", {})
        if name in JOBS:
            assert check.get("disable") is True, f"{name}: a one-shot job states it has no health check"
            continue
        assert not check.get("disable"), name
        assert check.get("test"), f"{name} has no healthcheck test"
        for key in ("interval", "timeout", "retries"):
            assert key in check, f"{name}: healthcheck.{key}"


def test_every_dependency_waits_on_a_condition():
    for name, svc in SERVICES.items():
        deps = svc.get("depends_on", {})
        assert isinstance(deps, dict), f"{name}: depends_on must be a mapping with conditions"
        for dep, spec in deps.items():
            assert dep in SERVICES, f"{name} depends on unknown {dep}"
            want = "service_completed_successfully" if dep in JOBS else "service_healthy"
            assert spec.get("condition") == want, f"{name} -> {dep}: condition {want}"


def test_jobs_are_waited_for():
    for job in JOBS:
        assert any(job in s.get("depends_on", {}) for s in SERVICES.values()), f"nothing waits for {job}"


def test_every_service_has_limits():
    for name, svc in SERVICES.items():
        limits = svc.get("deploy", {}).get("resources", {}).get("limits", {})
        assert "cpus" in limits and "memory" in limits, f"{name}: deploy.resources.limits"


def test_gateway_roles_run_as_non_root():
    assert ROLES == {"stubs", "control-plane", "analytics", "proxy-8080", "proxy-8081"}
    for name in ROLES:
        assert SERVICES[name]["user"] == "10001:10001", name
        assert SERVICES[name]["read_only"] is True, name
    final_stage = DOCKERFILE.split("\nFROM ")[-1]
    users = re.findall(r"^USER (\S+)", final_stage, re.M)
    assert users == ["10001:10001"], "the runtime stage ends as uid 10001"
    assert "useradd --system --uid 10001" in final_stage


def _env(svc):
    env = svc.get("environment", {})
    assert isinstance(env, dict), "environment as a mapping"
    return env


def test_no_secret_literal_in_environment():
    for name, svc in SERVICES.items():
        for key, value in _env(svc).items():
            value = str(value)
            assert not re.search(r"://[^/@\s]*:[^/@\s]*@", value), f"{name}.{key}: password in a URL"
            if SECRET_WORDS.search(key) and not key.endswith("_FILE"):
                pytest.fail(f"{name}.{key}: secrets come from files ({key}_FILE)")
            if SECRET_FILE.search(key):
                assert re.match(r"(\$\{[A-Z_]+:-)?/run/(secrets|leaky-init)/", value), f"{name}.{key}"


def test_secrets_come_from_files_with_examples():
    for name, spec in COMPOSE["secrets"].items():
        assert set(spec) == {"file"}, f"secret {name} is a file"
        assert (ROOT / f"deploy/secrets/{name}.example").is_file(), f"deploy/secrets/{name}.example"
    for svc in SERVICES.values():
        for secret in svc.get("secrets", []):
            assert secret in COMPOSE["secrets"], secret
        for key, value in _env(svc).items():
            m = re.match(r"/run/secrets/(\w+)$", str(value))
            if m:
                assert m.group(1) in svc.get("secrets", []), f"{key} reads a secret not mounted"
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "deploy/secrets/admin_token"], cwd=ROOT, check=False
    )
    assert ignored.returncode == 0, "real secret files are git-ignored"


def test_env_files_hold_no_secrets():
    for path in sorted((ROOT / "deploy/env").glob("*.env")):
        for line in path.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                key = line.split("=", 1)[0]
                assert not SECRET_WORDS.search(key), f"{path.name}: {key}"


def test_no_secret_value_in_compose_or_env_files():
    # Not even the dev values: they live only in deploy/secrets/*.example.
    texts = {"docker-compose.yml": (ROOT / "docker-compose.yml").read_text()}
    texts.update({p.name: p.read_text() for p in (ROOT / "deploy/env").glob("*.env")})
    for example in (ROOT / "deploy/secrets").glob("*.example"):
        value = example.read_text().strip()
        for name, text in texts.items():
            assert value not in text, f"{name} holds the value of {example.name}"


def test_profiles():
    assert SERVICES["stubs"]["profiles"] == ["dev"]
    assert SERVICES["payments-init"]["profiles"] == ["dev"]
    assert set(SERVICES["grafana"]["profiles"]) == {"dev", "staging", "prod"}
    # A service every profile runs may depend on a dev-only one only optionally.
    for name, svc in SERVICES.items():
        for dep, spec in svc.get("depends_on", {}).items():
            if "profiles" in SERVICES[dep] and "profiles" not in svc:
                assert spec.get("required") is False, f"{name} -> {dep} must be optional"
    for profile in ("dev", "staging", "prod"):
        env = dict(
            line.split("=", 1)
            for line in (ROOT / f"deploy/env/{profile}.env").read_text().splitlines()
            if line and not line.startswith("#")
        )
        base = env["LEAKY_CONFIG_BASE"]
        overlay = ROOT / "deploy/config" / pathlib.Path(base).name
        assert overlay.is_file(), base
        if profile != "dev":
            assert "stubs" not in env["OPENAI_BASE_URL"], profile
            assert env["LEAKY_IDENTITY_DEV"] == "0", profile


def test_config_overlays_extend_a_shipped_config():
    for overlay in sorted((ROOT / "deploy/config").glob("*.yaml")):
        doc = yaml.safe_load(overlay.read_text())
        assert (ROOT / "config" / doc["extends"]).is_file(), overlay.name
        assert doc["events"]["kafka"]["brokers"] == ["kafka:9092"], overlay.name
    assert "COPY deploy/config/*.yaml config/" in DOCKERFILE


def test_bind_mounts_exist():
    for name, svc in SERVICES.items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("/"):
                # A host path (the log collector reads Docker's own log files): read-only.
                assert volume.endswith(":ro"), f"{name}: host path {source} mounted read-only"
                continue
            if not source.startswith("./"):
                assert source in COMPOSE["volumes"], f"{name}: named volume {source} declared"
                continue
            # observability/ is written by other parts of issue #17; once it exists, all of it must.
            if source.startswith("./observability/") and not (ROOT / "observability").exists():
                continue
            assert (ROOT / source).exists(), f"{name}: {source}"


def test_dockerfile_shape():
    froms = re.findall(r"^FROM (\S+)", DOCKERFILE, re.M)
    assert len(froms) >= 3, "multi-stage"
    assert "ARG RUST_IMAGE=rust:1.95-slim-bookworm" in DOCKERFILE
    assert "ARG RUNTIME_IMAGE=debian:bookworm-slim" in DOCKERFILE
    assert "cargo chef cook --release" in DOCKERFILE
    assert "libcurl4-openssl-dev" in DOCKERFILE and "cmake" in DOCKERFILE
    assert re.search(r"^HEALTHCHECK ", DOCKERFILE, re.M)
    runtime = DOCKERFILE.split("\nFROM ")[-1]
    installs = re.findall(r"apt-get install -y --no-install-recommends ([^\n&\\]+)", runtime)
    assert [i.split() for i in installs] == [["ca-certificates"]], "runtime: only ca-certificates"
    for src in re.findall(r"^COPY (?:--chmod=\S+ )?(?!--from)(\S+)", runtime, re.M):
        assert list(ROOT.glob(src)), f"COPY {src}"
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert "target/" in ignore and ".git/" in ignore and "deploy/secrets/" in ignore


# --- keeping docker-compose.yml and scripts/stack in step --------------------------------------


def _stack_commands():
    """role name -> argv after the binary, from scripts/stack's `spawn NAME "$BIN" ...` lines."""
    text = STACK.replace("\\\n", " ")
    cmds = {}
    for m in re.finditer(r'spawn "?([\w$-]+)"? "\$BIN" ([^\n]+)', text):
        cmds[m.group(1)] = m.group(2).split()
    proxy = cmds.pop("proxy-$port")
    for port, admin in re.findall(r"start_proxy (\d+) (\d+)", STACK):
        argv = [a.replace("$port", port).replace("$admin", admin).strip('"') for a in proxy]
        cmds[f"proxy-{port}"] = argv
    return cmds


def _stack_var(name):
    return re.search(rf"^{name}=(\S+)", STACK, re.M).group(1)


def _expand(arg):
    for var in ("PG_PORT", "REDIS_PORT", "KAFKA_PORT", "CASSANDRA_PORT"):
        arg = arg.replace(f"${var}", _stack_var(var))
    return arg.replace("$CP", _stack_var("CP")).strip('"')


def _flags(argv):
    """{flag: value} of an argv (every flag of these roles takes a value)."""
    out, it = {}, iter(argv[1:])
    for a in it:
        assert a.startswith("--"), a
        out[a] = next(it)
    return out


def _port(value):
    return value.rsplit(":", 1)[-1].rstrip("/")


def test_same_services_as_scripts_stack():
    names = re.search(r"^SERVICES=\(([^)]*)\)", STACK, re.M).group(1).split()
    assert set(names) <= set(SERVICES), set(names) - set(SERVICES)
    assert set(_stack_commands()) == ROLES


def test_roles_flags_and_ports_match_scripts_stack():
    # Inside the compose network the roles bind 0.0.0.0 (not loopback) and reach each other by service
    # name; the stubs name their default model listeners to bind them. Everything else is identical:
    # the same role, the same flags, the same ports.
    for name, argv in _stack_commands().items():
        local = [_expand(a) for a in argv]
        compose = SERVICES[name]["command"]
        assert compose[0] == local[0], f"{name}: role"
        lf, cf = _flags(local), _flags(compose)
        extra = set(cf) - set(lf)
        if name == "stubs":
            assert extra == {"--openai-listen", "--gemini-listen", "--qwen-listen"}, extra
            assert [_port(cf[f]) for f in sorted(extra)] == ["18002", "18001", "18003"]
        else:
            assert not extra, f"{name}: flags only in compose: {extra}"
        assert set(lf) <= set(cf), f"{name}: flags missing in compose: {set(lf) - set(cf)}"
        for flag, value in lf.items():
            if flag in ("--listen", "--admin-listen", "--payment-listen", "--kafka", "--cassandra"):
                assert _port(cf[flag]) in (_port(value), "9092", "9042"), f"{name} {flag}"
            elif flag == "--control-plane":
                assert cf[flag] == "http://control-plane:" + _port(value), flag
            elif flag == "--config-base":
                base = yaml.safe_load((ROOT / "deploy/config/compose.yaml").read_text())["extends"]
                assert pathlib.Path(value).name == base, "compose.yaml extends scripts/stack's base"
            elif flag in ("--config-cache", "--upgrade-sock"):
                assert cf[flag].startswith("/var/lib/leaky-tokens/"), flag
            else:
                assert cf[flag] == value, f"{name} {flag}"


def test_published_ports_match_the_full_stack_contract():
    published = {}
    for name, svc in SERVICES.items():
        for p in svc.get("ports", []):
            host, container = p.rsplit(":", 2)[-2:]
            published[int(host)] = (name, int(container))
    want = {
        int(_stack_var("PG_PORT")): "postgres",
        int(_stack_var("REDIS_PORT")): "redis",
        int(_stack_var("KAFKA_PORT")): "kafka",
        int(_stack_var("CASSANDRA_PORT")): "cassandra",
        9300: "control-plane",
        9400: "analytics",
        8080: "proxy-8080",
        9090: "proxy-8080",
        8081: "proxy-8081",
        9091: "proxy-8081",
        18001: "stubs",
        18002: "stubs",
        18003: "stubs",
        18004: "stubs",
        16686: "jaeger",
        4317: "jaeger",
        4318: "jaeger",
        19090: "prometheus",
        19093: "alertmanager",
    }
    for port, name in want.items():
        assert published.get(port, (None,))[0] == name, f"host port {port} -> {name}"


def test_control_plane_environment_matches_scripts_stack():
    block = re.search(r"(LEAKY_DATABASE_URL=.*?)spawn control-plane", STACK, re.S).group(1)
    local = set(re.findall(r"\b([A-Z_]+)=", block))
    env = set(_env(SERVICES["control-plane"]))
    for key in local:
        assert key in env or key + "_FILE" in env, f"control-plane: {key} (scripts/stack sets it)"
    for key in ("LEAKY_ADMIN_TOKEN", "LEAKY_ANALYTICS_TOKEN"):  # exported at the top of scripts/stack
        assert key + "_FILE" in env, key
    assert "LEAKY_ANALYTICS_TOKEN_FILE" in _env(SERVICES["analytics"])
    for proxy in ("proxy-8080", "proxy-8081"):
        assert "REDIS_URL" in _env(SERVICES[proxy]), proxy


def test_kafka_topics_match_scripts_stack():
    local = re.search(r"^TOPICS=\(([^)]*)\)", STACK, re.M | re.S).group(1).split()
    compose = SERVICES["kafka-init"]["environment"]["TOPICS"].split()
    assert compose == local


def test_infra_versions_match_the_local_stack():
    libs = ROOT / "scripts/lib"
    kafka = re.search(r"KAFKA_VERSION:-([\d.]+)", (libs / "kafka.sh").read_text()).group(1)
    cassandra = re.search(r"CASSANDRA_VERSION:-([\d.]+)", (libs / "cassandra.sh").read_text()).group(1)
    assert SERVICES["kafka"]["image"] == f"apache/kafka:{kafka}"
    assert SERVICES["kafka-init"]["image"] == f"apache/kafka:{kafka}"
    assert SERVICES["cassandra"]["image"] == f"cassandra:{cassandra}"


# --- the image's entry point, run for real ----------------------------------------------------


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's naming)
        self.send_response(200 if self.path == "/readyz" else 503)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def health_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _probe(url):
    return subprocess.run([str(ENTRYPOINT), "probe", url], capture_output=True, timeout=10).returncode


def test_probe_passes_on_200_only(health_server):
    assert _probe(f"http://127.0.0.1:{health_server}/readyz") == 0
    assert _probe(f"http://127.0.0.1:{health_server}/healthz") == 1
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    assert _probe(f"http://127.0.0.1:{closed}/readyz") == 1
    assert _probe("https://127.0.0.1/readyz") == 1


def test_secret_files_become_environment(tmp_path):
    # A stand-in for the binary that prints the environment it was started with.
    fake = tmp_path / "leaky-tokens"
    fake.write_text('#!/bin/sh\necho "args=$*"\nenv\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    token = tmp_path / "admin_token"
    token.write_text("s3cret-token\n")
    env = {
        "PATH": os.environ["PATH"],
        "LEAKY_BIN": str(fake),
        "LEAKY_ADMIN_TOKEN_FILE": str(token),
        "PGPASSWORD_FILE": str(token),
        "PGPASSWORD": "explicit-wins",
    }
    out = subprocess.run(
        [str(ENTRYPOINT), "proxy", "--listen", "0.0.0.0:8080"],
        env=env, capture_output=True, text=True, timeout=10, check=True,
    ).stdout.splitlines()
    assert "args=proxy --listen 0.0.0.0:8080" in out
    assert "LEAKY_ADMIN_TOKEN=s3cret-token" in out
    assert "PGPASSWORD=explicit-wins" in out
    assert not [line for line in out if line.startswith(("LEAKY_ADMIN_TOKEN_FILE=", "PGPASSWORD_FILE="))]
    env["LEAKY_ADMIN_TOKEN_FILE"] = str(tmp_path / "missing")
    failed = subprocess.run([str(ENTRYPOINT), "proxy"], env=env, capture_output=True, text=True)
    assert failed.returncode == 1 and "not a readable file" in failed.stderr
    assert "s3cret" not in failed.stderr


# --- the payments-init job against the real payment stub --------------------------------------


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def payment_stub(tmp_path):
    """`leaky-tokens stubs` (the binary scripts/test builds; LEAKY_BIN overrides) on free ports."""
    binary = pathlib.Path(os.environ.get("LEAKY_BIN", ROOT / "target/debug/leaky-tokens"))
    assert binary.is_file(), f"{binary} missing: build it first (cargo build), or set LEAKY_BIN"
    ports = [_free_port() for _ in range(4)]
    args = [str(binary), "stubs", "--latency", "off"]
    for flag, port in zip(("--openai-listen", "--gemini-listen", "--qwen-listen", "--payment-listen"), ports):
        args += [flag, f"127.0.0.1:{port}"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    yield f"http://127.0.0.1:{ports[3]}"
    proc.terminate()
    proc.wait(timeout=10)


def _payments_init(url, out_dir, key_file):
    env = {
        "PATH": os.environ["PATH"],
        "LEAKY_PAYMENTS_URL": url,
        "LEAKY_PAYMENTS_API_KEY_FILE": str(key_file),
        "LEAKY_WEBHOOK_URL": "http://control-plane:9300/v1/webhooks/payments",
        "LEAKY_INIT_DIR": str(out_dir),
    }
    script = ROOT / "deploy/init/stack_init.py"
    run = subprocess.run(["python3", str(script), "payments-webhook"], env=env, capture_output=True,
                         text=True, timeout=150)
    assert run.returncode == 0, run.stderr
    return (out_dir / "webhook-secret").read_text()


def test_payments_init_registers_once_and_hands_over_the_secret(payment_stub, tmp_path):
    key = tmp_path / "payments_api_key"
    key.write_text("sk_test_compose\n")
    first = _payments_init(payment_stub, tmp_path, key)
    assert first.startswith("whsec_")
    written = tmp_path / "webhook-secret"
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    # Readable by the control plane's user only (the job runs as root in its container).
    assert written.stat().st_uid == (10001 if os.geteuid() == 0 else os.geteuid())
    # A second `up` reuses the endpoint the stub already has: the same secret, no second endpoint.
    assert _payments_init(payment_stub, tmp_path, key) == first
    with urllib.request.urlopen(payment_stub + "/_stub/state", timeout=5) as resp:
        state = json.load(resp)
    mine = [e for e in state["webhook_endpoints"] if e["url"].startswith("http://control-plane:9300/")]
    assert len(mine) == 1 and mine[0]["secret"] == first


def test_prometheus_scrapes_the_compose_services_by_their_names():
    """observability/prometheus/prometheus-compose.yml finds targets by DNS on service names: each
    name it asks for must be a service of docker-compose.yml."""
    prom = yaml.safe_load((ROOT / "observability/prometheus/prometheus-compose.yml").read_text())
    services = set(SERVICES)
    asked = {n for job in prom["scrape_configs"] for sd in job.get("dns_sd_configs", []) for n in sd["names"]}
    for alerting in prom.get("alerting", {}).get("alertmanagers", []):
        for sd in alerting.get("dns_sd_configs", []):
            asked.update(sd["names"])
    assert asked and asked <= services, asked - services


def test_every_role_exports_traces_to_jaeger_like_scripts_stack():
    # Issue 17's cross-service traces need every Leaky role exporting, under its own service name,
    # in compose as in scripts/stack.
    names = {}
    for name in ("control-plane", "analytics", "proxy-8080", "proxy-8081"):
        env = _env(SERVICES[name])
        assert env.get("OTEL_EXPORTER_OTLP_ENDPOINT") == "http://jaeger:4318", name
        assert "OTEL_TRACES_SAMPLER_ARG" in env, name
        names[name] = env.get("OTEL_SERVICE_NAME")
    assert names == {
        "control-plane": "leaky-control-plane",
        "analytics": "leaky-analytics",
        "proxy-8080": "leaky-proxy",
        "proxy-8081": "leaky-proxy",
    }
    for role, service in (("control-plane", "leaky-control-plane"), ("analytics", "leaky-analytics")):
        block = re.search(rf"OTEL_SERVICE_NAME=(\S+) OTEL_EXPORTER_OTLP_ENDPOINT=\S+ \\\s*\n\s*spawn {role}", STACK)
        assert block and block.group(1) == service, f"scripts/stack exports {role}'s traces as {service}"
