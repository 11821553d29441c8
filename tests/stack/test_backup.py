"""Backup and restore of the stack's state stores (issue 17, docs/backup.md), against the real servers.

An org buys tokens and spends some through both proxies; `scripts/backup` takes a PostgreSQL base
backup and a Cassandra snapshot; a second purchase completes AFTER the backup and its WAL is archived.
`scripts/restore` then brings both stores back in fresh instances on free ports: the restored ledger
equals the live one including the later purchase (base backup + WAL replay), and an analytics role on
the restored Cassandra answers the same usage totals as the live one. The restore phases' times are
printed (the RTO measured here). `scripts/test` brings the stack up, runs this file, and stops it.
"""
import datetime
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid

import httpx
import pytest

from test_walkthrough import CP, TOKEN, MAX_TOKENS, PROXIES, api, balance, buy, chat, finished, prepaid_key

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STACK = os.environ.get("LEAKY_STACK_DIR", os.path.join(ROOT, ".stack"))
BIN = os.environ.get("LEAKY_BIN", os.path.join(ROOT, "target/release/leaky-tokens"))
PG_PORT = 15432
ANALYTICS_TOKEN = os.environ.get("LEAKY_ANALYTICS_TOKEN", "lt-dev-analytics")
TIMEOUT = 30.0  # seconds: usage through Kafka into the ledger and Cassandra; a restored node's start


def sh(script, *args, env=None):
    """Runs a bash snippet in the repository with scripts/lib sourced; its stdout."""
    lib = "source scripts/lib/pg.sh; source scripts/lib/cassandra.sh; "
    full = {**os.environ, "LEAKY_STACK_DIR": STACK, "LEAKY_BIN": BIN, **(env or {})}
    done = subprocess.run(["bash", "-c", lib + script, "sh", *args], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{script} {args}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout.strip(), done.stderr


def sql(port, query):
    return sh('pg_sql "$1" leaky "$2"', str(port), query)[0]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def until(predicate, what):
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {TIMEOUT}s")


def ledger(port, org_id):
    """The org's ledger as the database holds it: every entry, and the balance projection."""
    entries = sql(port, f"SELECT version, kind, tokens, ref FROM ledger.entries WHERE org_id = '{org_id}' "
                        "ORDER BY version")
    row = sql(port, "SELECT purchased, granted, consumed, refunded, expired, balance FROM ledger.balances "
                    f"WHERE org_id = '{org_id}'")
    return entries, row


def usage(base, org_id, token):
    now = datetime.datetime.now(datetime.timezone.utc)
    params = {"from": (now - datetime.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
              "to": (now + datetime.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
              "granularity": "hour", "group_by": "model"}
    r = httpx.get(f"{base}/v1/orgs/{org_id}/usage", params=params,
                  headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def archived(segment):
    """True once PostgreSQL's archiver has copied `segment` (or a later one)."""
    last = sh('pg_sql "$1" postgres "SELECT coalesce(last_archived_wal, \'\') FROM pg_stat_archiver"',
              str(PG_PORT))[0]
    return last >= segment


@pytest.fixture
def scratch():
    # World-traversable: the restored PostgreSQL runs as user postgres.
    d = tempfile.mkdtemp(prefix="leaky-restore-")
    os.chmod(d, 0o755)
    started = []
    yield d, started
    for kill in started:
        kill()
    shutil.rmtree(d, ignore_errors=True)


def spend_some(org_id, key, n):
    spent = sum(chat(PROXIES[i % 2], key, max_tokens=MAX_TOKENS).usage.total_tokens for i in range(n))

    # Every debit in the ledger and every event in the rollups before the backup is taken.
    def settled():
        served = usage(CP, org_id, TOKEN)["total"]["requests"]
        return balance(org_id)["consumed"] == spent and served >= n
    until(settled, "usage reaches the ledger and the analytics rollups")


def test_backup_then_restore_into_fresh_instances_gives_the_same_ledger_and_usage(scratch):
    root, started = scratch
    org_id = api("POST", "/v1/orgs", json={"name": f"backup-{os.getpid()}-{time.time_ns()}"})["id"]
    key = prepaid_key(org_id)
    assert finished(buy(org_id, 2000, f"backup-{uuid.uuid4()}").json()["id"])["status"] == "completed"
    spend_some(org_id, key, 4)

    backup, _ = sh("scripts/backup")
    backup = backup.splitlines()[-1]
    assert os.path.isfile(os.path.join(backup, "manifest.json")), backup

    # After the base backup: only the WAL archive holds this purchase.
    late = finished(buy(org_id, 300, f"backup-late-{uuid.uuid4()}").json()["id"])
    assert late["status"] == "completed", late
    lsn = sh('pg_sql "$1" postgres "SELECT pg_switch_wal()"', str(PG_PORT))[0]
    segment = sh('pg_sql "$1" postgres "SELECT pg_walfile_name(\'$2\')"', str(PG_PORT), lsn)[0]
    until(lambda: archived(segment), f"WAL segment {segment} archived")
    live_ledger = ledger(PG_PORT, org_id)
    assert any("|purchased|300|" in line for line in live_ledger[0].splitlines()), live_ledger
    live_usage = usage("http://127.0.0.1:9400", org_id, ANALYTICS_TOKEN)

    pg_dir, pg_port = os.path.join(root, "pg"), free_port()
    t0 = time.monotonic()
    sh('scripts/restore postgres "$1" "$2" "$3"', backup, pg_dir, str(pg_port))
    pg_rto = time.monotonic() - t0
    started.append(lambda: sh('pg_stop "$1"', pg_dir))
    assert ledger(pg_port, org_id) == live_ledger

    cass_dir, cass_port = os.path.join(root, "cassandra"), free_port()
    t0 = time.monotonic()
    sh('scripts/restore cassandra "$1" "$2" "$3"', backup, cass_dir, str(cass_port))
    cass_rto = time.monotonic() - t0
    started.append(lambda: sh('cassandra_stop "$1"', cass_dir))

    # An analytics role on the restored node, reading only (its Kafka address is a closed port).
    api_port = free_port()
    role = subprocess.Popen([BIN, "analytics", "--cassandra", f"127.0.0.1:{cass_port}",
                             "--kafka", f"127.0.0.1:{free_port()}", "--listen", f"127.0.0.1:{api_port}",
                             "--token", "restore-check", "--group", "restore-check"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started.append(role.kill)
    base = f"http://127.0.0.1:{api_port}"

    def up():
        try:
            return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False
    until(up, "the analytics role on the restored node")
    assert usage(base, org_id, "restore-check") == live_usage
    assert live_usage["total"]["requests"] >= 4, live_usage
    print(f"\nRTO measured: postgres restore {pg_rto:.1f} s, cassandra restore {cass_rto:.1f} s")
