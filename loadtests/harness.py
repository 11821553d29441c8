"""Process plumbing shared by the load runners that drive the real binary (`events/events.py`,
`cache/cache.py`; python3 stdlib only): free ports, processes pinned with taskset and stopped as a
group, readiness waits, CPU time from /proc, and the median (min–max) format of the reports."""
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
CLK = os.sysconf("SC_CLK_TCK")
PROCS = []


def die(msg):
    print(f"{os.path.basename(sys.argv[0])}: {msg}", file=sys.stderr)
    sys.exit(1)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start(argv, log, cpu=None, env=None):
    """Starts argv (pinned to `cpu` when given) in its own session, output to `log`; `stop_all` ends it."""
    if cpu is not None:
        argv = ["taskset", "-c", cpu] + argv
    f = open(log, "w")
    p = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                         env={**os.environ, **(env or {})}, cwd=ROOT)
    PROCS.append(p)
    return p


def stop_all():
    for p in PROCS:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in PROCS:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)


def wait_up(url, what, proc, secs=30):
    """Waits until GET url answers 200; dies if `proc` exits first or after `secs`."""
    end = time.time() + secs
    while time.time() < end:
        if proc.poll() is not None:
            die(f"{what} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    die(f"{what} not ready at {url} after {secs} s")


def wait_port(port, what, proc, secs=30):
    """Waits until 127.0.0.1:port accepts a connection."""
    end = time.time() + secs
    while time.time() < end:
        if proc.poll() is not None:
            die(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    die(f"{what}: port {port} never opened")


def cpu_seconds(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / CLK  # utime + stime, all threads


def spread(xs, fmt="{:.0f}"):
    return f"{fmt.format(statistics.median(xs))} ({fmt.format(min(xs))}–{fmt.format(max(xs))})"
