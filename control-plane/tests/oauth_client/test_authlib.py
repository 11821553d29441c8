"""The control plane's authorization server driven by a third-party client: authlib (OAuth2 over httpx)
for discovery -> client_credentials -> introspection -> revocation, and joserfc verifying the access
token from the published JWKS. Everything is real: the `leaky-tokens control-plane` binary, a fresh
PostgreSQL database, a `redis-server`.

Needs LEAKY_TEST_DATABASE_URL (any database on a server whose user may CREATE DATABASE; scripts/test
exports one) and the debug binary (LEAKY_BIN, default target/debug/leaky-tokens). Run:
    .venv/bin/python -m pytest -q control-plane/tests/oauth_client
"""

import base64
import os
import secrets
import socket
import subprocess
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
from authlib.integrations.httpx_client import OAuth2Client
from authlib.integrations.base_client.errors import OAuthError
from joserfc import jwt
from joserfc.jwk import KeySet

ROOT = Path(__file__).resolve().parents[3]
ADMIN_TOKEN = "authlib-test-admin"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, check, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"{what} not ready within {timeout}s")


def fresh_database():
    server = os.environ.get("LEAKY_TEST_DATABASE_URL")
    assert server, "set LEAKY_TEST_DATABASE_URL (scripts/test exports one)"
    name = f"authlib_{uuid.uuid4().hex}"
    subprocess.run(["psql", server, "-qc", f"CREATE DATABASE {name}"], check=True)
    parts = urlsplit(server)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    redis_port, port = free_port(), free_port()
    logs = tmp_path_factory.mktemp("cp") / "control-plane.log"
    redis = subprocess.Popen(
        ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    master = base64.b64encode(secrets.token_bytes(32)).decode()
    env = dict(
        os.environ,
        LEAKY_DATABASE_URL=fresh_database(),
        LEAKY_REDIS_URL=f"redis://127.0.0.1:{redis_port}/",
        LEAKY_MASTER_KEY=f"v1:{master}",
        LEAKY_ADMIN_TOKEN=ADMIN_TOKEN,
    )
    env.pop("LEAKY_IDENTITY_DEV", None)
    binary = os.environ.get("LEAKY_BIN", str(ROOT / "target/debug/leaky-tokens"))
    with open(logs, "wb") as log:
        cp = subprocess.Popen(
            [binary, "control-plane", "--listen", f"127.0.0.1:{port}", "--roles", "admin-api"],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for("readyz", lambda: httpx.get(f"{base}/readyz").status_code == 200)
        # The rotation job's first step creates the first key of each algorithm.
        wait_for("JWKS", lambda: len(httpx.get(f"{base}/.well-known/jwks.json").json()["keys"]) == 3)
        yield {"base": base, "logs": logs, "master": master, "binary": binary, "env": env}
    finally:
        cp.terminate()
        cp.wait(timeout=20)
        redis.terminate()
        redis.wait(timeout=10)


def new_client(base, **fields):
    body = {"name": "authlib", "scopes": ["read", "write"], "audience": "gateway", **fields}
    res = httpx.post(f"{base}/v1/identity/clients", json=body, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert res.status_code == 201, res.text
    created = res.json()
    return created["id"], created["client_secret"]


@pytest.mark.parametrize("alg", ["ES256", "RS256", "EdDSA"])
def test_discovery_client_credentials_introspect_revoke(server, alg):
    base = server["base"]
    meta = httpx.get(f"{base}/.well-known/oauth-authorization-server").json()
    assert meta == httpx.get(f"{base}/.well-known/openid-configuration").json()
    assert meta["issuer"] == base
    assert "client_credentials" in meta["grant_types_supported"]
    client_id, client_secret = new_client(base, alg=alg, roles=["org-member"])

    client = OAuth2Client(client_id, client_secret, token_endpoint_auth_method="client_secret_basic")
    token = client.fetch_token(meta["token_endpoint"], grant_type="client_credentials", scope="read")
    assert token["token_type"] == "Bearer" and token["scope"] == "read"
    assert 0 < token["expires_in"] <= 600

    # An independent verifier: joserfc with the published JWKS only.
    keys = KeySet.import_key_set(httpx.get(meta["jwks_uri"]).json())
    decoded = jwt.decode(token["access_token"], keys, algorithms=[alg])
    assert decoded.header["alg"] == alg
    claims = decoded.claims
    assert claims["iss"] == base and claims["aud"] == "gateway" and claims["sub"] == client_id
    assert claims["roles"] == ["org-member"] and claims["scope"] == "read"
    jwt.JWTClaimsRegistry(iss={"essential": True, "value": base}, aud={"essential": True, "value": "gateway"}).validate(claims)

    res = client.introspect_token(meta["introspection_endpoint"], token=token["access_token"])
    assert res.status_code == 200 and res.json()["active"] is True
    assert res.json()["client_id"] == client_id

    res = client.revoke_token(meta["revocation_endpoint"], token=token["access_token"])
    assert res.status_code == 200
    res = client.introspect_token(meta["introspection_endpoint"], token=token["access_token"])
    assert res.json() == {"active": False}


def test_client_secret_post_and_errors(server):
    base = server["base"]
    client_id, client_secret = new_client(base)
    token_url = f"{base}/oauth2/token"
    post = OAuth2Client(client_id, client_secret, token_endpoint_auth_method="client_secret_post")
    assert post.fetch_token(token_url, grant_type="client_credentials")["scope"] == "read write"

    with pytest.raises(OAuthError) as wrong:
        OAuth2Client(client_id, "wrong-secret").fetch_token(token_url, grant_type="client_credentials")
    assert wrong.value.error == "invalid_client"
    with pytest.raises(OAuthError) as scope:
        post.fetch_token(token_url, grant_type="client_credentials", scope="admin")
    assert scope.value.error == "invalid_scope"

    # No secret (neither the created ones nor the master key) reached the logs.
    text = server["logs"].read_text(errors="replace")
    for secret in (client_secret, "wrong-secret", server["master"]):
        assert secret not in text


def test_secrets_rewrap_command_moves_every_key_once(server):
    """Runs last: afterwards the running server (v1 only) can no longer open its keys."""
    env = dict(server["env"])
    new_key = base64.b64encode(secrets.token_bytes(32)).decode()
    env["LEAKY_MASTER_KEY"] = f"v1:{server['master']},v2:{new_key}"
    rewrap = [server["binary"], "control-plane", "secrets", "rewrap"]
    first = subprocess.run(rewrap, env=env, capture_output=True, text=True, check=True, cwd=ROOT)
    assert "3 row(s) re-wrapped under master key v2" in first.stdout, first.stdout + first.stderr
    again = subprocess.run(rewrap, env=env, capture_output=True, text=True, check=True, cwd=ROOT)
    assert "0 row(s) re-wrapped" in again.stdout
    for out in (first.stdout, first.stderr, again.stdout, again.stderr):
        assert new_key not in out and server["master"] not in out
    versions = subprocess.run(
        ["psql", env["LEAKY_DATABASE_URL"], "-tAc", "SELECT DISTINCT key_version FROM identity.signing_keys"],
        capture_output=True, text=True, check=True,
    )
    assert versions.stdout.split() == ["2"]
