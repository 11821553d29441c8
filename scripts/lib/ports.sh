# shellcheck shell=bash
# A free loopback TCP port for a server the scripts start. Source this file; it defines:
#   free_port    a port that nothing listens on, below the kernel's ephemeral range
#
# Below the ephemeral range (net.ipv4.ip_local_port_range, 32768–60999 by default): a port taken
# from it (`bind(0)`) is free when picked, but any outgoing connection may be given it before the
# server binds it. Cassandra binds its storage port seconds after the JVM starts, and a test run lost
# its node to exactly that ("127.0.0.1:53705 is in use by another process"). A port below the range
# is never handed out that way. Ports picked are remembered for a while (LEAKY_PORTS_PICKED), so
# two servers started one after the other never get the same one before either has bound it. The
# picks stay under 20000: the Rust tests count their gateways' ports up from there
# (tests/common/mod.rs `free_port`).

free_port() {
  python3 - "${LEAKY_PORTS_PICKED:-${TMPDIR:-/tmp}/leaky-ports-picked}" <<'PY'
import random, socket, sys, time

log = sys.argv[1]
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
        if p not in recent and free(p):
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
