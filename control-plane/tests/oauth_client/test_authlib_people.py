"""The people flows of the control plane's authorization server driven by third-party clients, against
the real binary (fixture `server` of test_authlib.py: a fresh PostgreSQL database, a `redis-server`):

- authorization_code + PKCE (S256) with authlib's `OAuth2Session` (requests): `create_authorization_url`
  with a code verifier and a nonce, a plain `requests` session as the browser posting the login form,
  the redirect handed to `fetch_token`;
- the ID token validated by authlib's `JsonWebToken` + `CodeIDToken` against the published JWKS (issuer,
  audience, expiry, nonce, at_hash);
- userinfo, refresh with rotation, and a replayed refresh token revoking the family;
- a `private_key_jwt` client (authlib `PrivateKeyJWT`, an ES256 key made by joserfc) at the token,
  introspection and revocation endpoints.

Run:
    .venv/bin/python -m pytest -q control-plane/tests/oauth_client
"""

import secrets
import subprocess
from html.parser import HTMLParser
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import requests
from authlib.common.security import generate_token
from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.requests_client import OAuth2Session
from authlib.jose import JsonWebKey, JsonWebToken
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from authlib.oidc.core import CodeIDToken
from joserfc.jwk import ECKey

from test_authlib import ADMIN_TOKEN, ROOT, free_port, new_client, server, wait_for  # noqa: F401 (the shared fixture)

REDIRECT = "http://127.0.0.1:8765/callback"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


class Hidden(HTMLParser):
    """The hidden inputs of the login form."""

    def __init__(self):
        super().__init__()
        self.fields = {}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "input" and a.get("type") == "hidden":
            self.fields[a["name"]] = a["value"]


def admin(method, url, body):
    res = httpx.request(method, url, json=body, headers=ADMIN)
    assert res.status_code in (201, 204), res.text
    return res.json() if res.status_code == 201 else None


def person(base):
    """An org and a user with a password; returns (org id, e-mail, password)."""
    org = admin("POST", f"{base}/v1/orgs", {"name": f"people-{secrets.token_hex(6)}"})["id"]
    email = f"ada-{secrets.token_hex(4)}@example.com"
    user = admin("POST", f"{base}/v1/orgs/{org}/users", {"email": email, "name": "Ada", "roles": ["org-member"]})
    password = secrets.token_urlsafe(18)
    admin("PUT", f"{base}/v1/orgs/{org}/users/{user['id']}/password", {"password": password})
    return org, email, password


def public_client(base):
    res = httpx.post(
        f"{base}/v1/identity/clients",
        headers=ADMIN,
        json={
            "name": "authlib-cli",
            "scopes": ["openid", "profile", "email", "read"],
            "audience": "gateway",
            "grant_types": ["authorization_code", "refresh_token"],
            "auth_method": "none",
            "redirect_uris": [REDIRECT],
        },
    )
    assert res.status_code == 201, res.text
    assert "client_secret" not in res.json()
    return res.json()["id"]


def log_in(browser, url, email, password):
    """The browser's part: the authorization URL, the login form, the redirect back (not followed)."""
    page = browser.get(url, allow_redirects=False)
    assert page.status_code == 200, page.text
    form = Hidden()
    form.feed(page.text)
    action = url.split("/oauth2/")[0] + "/oauth2/login"
    res = browser.post(action, data={**form.fields, "email": email, "password": password}, allow_redirects=False)
    assert res.status_code == 303, res.text
    location = res.headers["Location"]
    assert location.startswith(REDIRECT + "?")
    return location


@pytest.fixture(scope="module")
def meta(server):  # noqa: F811
    return requests.get(f"{server['base']}/.well-known/openid-configuration").json()


@pytest.fixture(scope="module")
def introspector(server):  # noqa: F811
    client_id, secret = new_client(server["base"])
    return OAuth2Session(client_id, secret, token_endpoint_auth_method="client_secret_basic")


def test_authorization_code_pkce_id_token_userinfo_refresh(server, meta, introspector):  # noqa: F811
    base = server["base"]
    assert meta["code_challenge_methods_supported"] == ["S256"]
    org, email, password = person(base)
    client_id = public_client(base)
    session = OAuth2Session(
        client_id,
        scope="openid profile email read",
        redirect_uri=REDIRECT,
        code_challenge_method="S256",
        token_endpoint_auth_method="none",
    )
    verifier, nonce = generate_token(64), generate_token(24)
    url, state = session.create_authorization_url(meta["authorization_endpoint"], code_verifier=verifier, nonce=nonce)
    location = log_in(requests.Session(), url, email, password)
    token = session.fetch_token(meta["token_endpoint"], authorization_response=location, code_verifier=verifier)
    assert token["token_type"] == "Bearer" and token["scope"] == "openid profile email read"

    # The ID token, validated by authlib against the JWKS: iss, aud, exp, iat, nonce, at_hash.
    jwks = JsonWebKey.import_key_set(requests.get(meta["jwks_uri"]).json())
    claims = JsonWebToken(["ES256"]).decode(
        token["id_token"],
        jwks,
        claims_cls=CodeIDToken,
        claims_options={"iss": {"essential": True, "value": base}, "aud": {"essential": True, "value": client_id}},
        claims_params={"nonce": nonce, "client_id": client_id, "access_token": token["access_token"]},
    )
    claims.validate()
    assert claims["email"] == email and claims["name"] == "Ada" and claims["org"] == org
    wrong_nonce = JsonWebToken(["ES256"]).decode(
        token["id_token"], jwks, claims_cls=CodeIDToken, claims_params={"nonce": "other", "client_id": client_id}
    )
    with pytest.raises(Exception, match="nonce"):
        wrong_nonce.validate()

    info = session.get(meta["userinfo_endpoint"])
    assert info.status_code == 200
    assert info.json() == {"sub": claims["sub"], "email": email, "name": "Ada", "org": org, "roles": ["org-member"]}

    # Refresh rotates; replaying the old refresh token revokes the family.
    first = token["refresh_token"]
    refreshed = session.refresh_token(meta["token_endpoint"])
    assert refreshed["refresh_token"] != first
    assert introspector.introspect_token(meta["introspection_endpoint"], token=refreshed["access_token"]).json()["active"]
    replay = OAuth2Session(client_id, token_endpoint_auth_method="none")
    with pytest.raises(OAuthError) as reused:
        replay.refresh_token(meta["token_endpoint"], refresh_token=first)
    assert reused.value.error == "invalid_grant"
    res = introspector.introspect_token(meta["introspection_endpoint"], token=refreshed["access_token"])
    assert res.json() == {"active": False}
    with pytest.raises(OAuthError):
        session.refresh_token(meta["token_endpoint"])

    # No password reached the logs.
    assert password not in server["logs"].read_text(errors="replace")


def test_a_login_survives_the_death_of_the_process_that_served_it(server, meta, tmp_path):  # noqa: F811
    """Authorize and log in on a second control-plane process, kill it, redeem on the first: the session,
    the pending request and the code live in Redis, not in a process."""
    org, email, password = person(server["base"])
    client_id = public_client(server["base"])
    port = free_port()
    with open(tmp_path / "second.log", "wb") as log:
        second = subprocess.Popen(
            [server["binary"], "control-plane", "--listen", f"127.0.0.1:{port}", "--roles", "admin-api"],
            env=server["env"], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
        )
    try:
        other = f"http://127.0.0.1:{port}"
        wait_for("second readyz", lambda: httpx.get(f"{other}/readyz").status_code == 200)
        session = OAuth2Session(client_id, scope="openid", redirect_uri=REDIRECT, code_challenge_method="S256",
                                token_endpoint_auth_method="none")
        verifier = generate_token(64)
        url, _ = session.create_authorization_url(f"{other}/oauth2/authorize", code_verifier=verifier)
        location = log_in(requests.Session(), url, email, password)
    finally:
        second.kill()
        second.wait(timeout=10)
    token = session.fetch_token(meta["token_endpoint"], authorization_response=location, code_verifier=verifier)
    assert token["id_token"] and token["refresh_token"]


def test_a_plain_pkce_request_is_refused_back_to_the_client(server, meta):  # noqa: F811
    client_id = public_client(server["base"])
    session = OAuth2Session(client_id, scope="openid", redirect_uri=REDIRECT, code_challenge_method="plain")
    url, state = session.create_authorization_url(meta["authorization_endpoint"], code_verifier=generate_token(64))
    res = requests.get(url, allow_redirects=False)
    assert res.status_code == 303
    location = res.headers["Location"]
    assert location.startswith(REDIRECT + "?")
    params = parse_qs(urlsplit(location).query)
    assert params["error"] == ["invalid_request"] and params["state"] == [state] and "code" not in params


def test_private_key_jwt_client(server, meta):  # noqa: F811
    base = server["base"]
    key = ECKey.generate_key("P-256", parameters={"kid": "authlib-1", "alg": "ES256"})
    res = httpx.post(
        f"{base}/v1/identity/clients",
        headers=ADMIN,
        json={
            "name": "authlib-signer",
            "scopes": ["read"],
            "auth_method": "private_key_jwt",
            "jwks": {"keys": [key.as_dict(private=False)]},
        },
    )
    assert res.status_code == 201, res.text
    client_id = res.json()["id"]
    assert "private_key_jwt" in meta["token_endpoint_auth_methods_supported"]

    session = OAuth2Session(
        client_id, key, token_endpoint_auth_method="private_key_jwt", revocation_endpoint_auth_method="private_key_jwt"
    )
    session.register_client_auth_method(PrivateKeyJWT(meta["token_endpoint"], alg="ES256"))
    token = session.fetch_token(meta["token_endpoint"], grant_type="client_credentials")
    assert token["scope"] == "read"
    res = session.introspect_token(meta["introspection_endpoint"], token=token["access_token"])
    assert res.status_code == 200 and res.json()["active"] is True and res.json()["client_id"] == client_id
    assert session.revoke_token(meta["revocation_endpoint"], token=token["access_token"]).status_code == 200
    res = session.introspect_token(meta["introspection_endpoint"], token=token["access_token"])
    assert res.json() == {"active": False}

    # Another key under the same kid is not the client.
    impostor = OAuth2Session(client_id, ECKey.generate_key("P-256", parameters={"kid": "authlib-1"}),
                             token_endpoint_auth_method="private_key_jwt")
    impostor.register_client_auth_method(PrivateKeyJWT(meta["token_endpoint"], alg="ES256"))
    with pytest.raises(OAuthError) as refused:
        impostor.fetch_token(meta["token_endpoint"], grant_type="client_credentials")
    assert refused.value.error == "invalid_client"
