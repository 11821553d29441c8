# shellcheck shell=bash
# A free loopback TCP port for a server the scripts start. Source this file; it defines:
#   free_port    a port that nothing listens on, below the kernel's ephemeral range
#
# Below the ephemeral range (net.ipv4.ip_local_port_range, 32768–60999 by default): a port taken
# from it (`bind(0)`) is free when picked, but any outgoing connection may be given it before the
# server binds it. Cassandra binds its storage port seconds after the JVM starts, and a test run lost
# its node to exactly that ("127.0.0.1:53705 is in use by another process"). A port below the range
# is never handed out that way. Ports picked are remembered for a while (LEAKY_PORTS_PICKED), so
# two servers started one after the other never get the same one before either has bound it; the
# read-modify-write of that file holds an exclusive lock, since picks run concurrently (Cassandra's
# start in the background of scripts/test). The picks stay under 20000: the Rust tests count their
# gateways' ports up from there (tests/common/mod.rs `free_port`). They also skip the full stack's
# fixed ports (scripts/stack, DESIGN.md), which scripts/test binds while its own services still run.

free_port() {
  python3 - "${LEAKY_PORTS_PICKED:-${TMPDIR:-/tmp}/leaky-ports-picked}" <<'PY'
import fcntl, random, socket, sys, time

# scripts/stack's fixed ports in this range: Postgres, Redis, Jaeger's UI, the stubs, Cassandra,
# Prometheus, Kafka, Alertmanager, the alert sink.
STACK = {15432, 16379, 16686, 18001, 18002, 18003, 18004, 19042, 19090, 19092, 19093, 19095}
log = sys.argv[1]
try:
    lock = open(log + ".lock", "a")
    fcntl.flock(lock, fcntl.LOCK_EX)
except OSError:
    lock = None
try:
    low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
except (OSError, ValueError, IndexError):
    low = 32768
try:  # picks of the last 10 minutes: "port epoch-seconds" lines
    now = time.time()
    recent = [l.split() for l in open(log).read().splitlines()]
    recent = {int(p): float(t) for p, t in (r for r in recent if len(r) == 2) if now - float(t) < 600}
except (OSError, ValueError):
    now, recent = time.time(), {}


def free(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


port = None
if low > 11000:
    for _ in range(500):
        p = random.randrange(10000, min(low, 20000))
        if p not in recent and p not in STACK and free(p):
            port = p
            break
if port is None:  # an unusual range: the kernel's pick
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
recent[port] = now
try:
    with open(log, "w") as f:
        f.writelines(f"{p} {t}\n" for p, t in recent.items())
except OSError:
    pass
print(port)
PY
}
