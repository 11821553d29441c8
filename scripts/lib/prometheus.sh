# shellcheck shell=bash
# Prometheus and Alertmanager helpers shared by scripts/test, scripts/stack and the observability
# tests: Debian's packages (Prometheus 2.42, Alertmanager 0.25, promtool, amtool) run unprivileged on
# loopback, each in a directory of its own. Source this file; it defines:
#   prometheus_install                 apt-get install prometheus prometheus-alertmanager when a binary
#                                      is missing (--no-install-recommends: with Recommends it pulls
#                                      ~45 packages, node-exporter and friends)
#   prometheus_start DIR PORT CONFIG   start Prometheus on 127.0.0.1:PORT with CONFIG, TSDB in DIR/data;
#                                      waits for /-/ready (idempotent: a running one is kept)
#   prometheus_stop DIR                stop it; a no-op when none runs
#   alertmanager_start DIR PORT CONFIG start Alertmanager on 127.0.0.1:PORT with CONFIG, state in
#                                      DIR/data, clustering off; waits for /-/ready (idempotent)
#   alertmanager_stop DIR              stop it; a no-op when none runs
# Logs go to DIR/prometheus.log and DIR/alertmanager.log, pids to DIR/*.pid. Neither server starts
# through systemd: the image's policy-rc.d keeps apt from starting them.

prometheus_install() {
  command -v prometheus >/dev/null 2>&1 && command -v prometheus-alertmanager >/dev/null 2>&1 &&
    command -v promtool >/dev/null 2>&1 && command -v amtool >/dev/null 2>&1 && return 0
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    prometheus prometheus-alertmanager >/dev/null
}

# The pid in DIR/NAME.pid if that process still is NAME's server (a recycled pid is not ours).
prom_pid() {
  local dir=$1 name=$2 pid
  pid=$(cat "$dir/$name.pid" 2>/dev/null) || return 1
  [ -n "$pid" ] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "--storage" || return 1
  echo "$pid"
}

prom_wait_ready() {
  local what=$1 port=$2 log=$3
  for _ in $(seq 1 150); do
    curl -fs -o /dev/null "http://127.0.0.1:$port/-/ready" && return 0
    sleep 0.1
  done
  tail -n 20 "$log" >&2 2>/dev/null || true
  echo "$what did not become ready on 127.0.0.1:$port (log: $log)" >&2
  return 1
}

prom_stop_named() {
  local dir=$1 name=$2 pid
  pid=$(prom_pid "$dir" "$name") || { rm -f "$dir/$name.pid"; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$dir/$name.pid"
}

prometheus_start() {
  local dir=$1 port=$2 config=$3
  mkdir -p "$dir/data"
  if prom_pid "$dir" prometheus >/dev/null; then
    prom_pid "$dir" prometheus
    return 0
  fi
  # --web.enable-lifecycle: tests and the stack reload rules with POST /-/reload.
  setsid prometheus --config.file="$config" --storage.tsdb.path="$dir/data" \
    --web.listen-address="127.0.0.1:$port" --web.enable-lifecycle \
    --storage.tsdb.retention.time=2d >"$dir/prometheus.log" 2>&1 </dev/null &
  echo $! >"$dir/prometheus.pid"
  prom_wait_ready prometheus "$port" "$dir/prometheus.log"
}

prometheus_stop() { prom_stop_named "$1" prometheus; }

alertmanager_start() {
  local dir=$1 port=$2 config=$3
  mkdir -p "$dir/data"
  if prom_pid "$dir" alertmanager >/dev/null; then
    prom_pid "$dir" alertmanager
    return 0
  fi
  # The empty cluster address turns gossip off (by default Alertmanager also listens on 0.0.0.0:9094).
  setsid prometheus-alertmanager --config.file="$config" --storage.path="$dir/data" \
    --web.listen-address="127.0.0.1:$port" --cluster.listen-address= \
    >"$dir/alertmanager.log" 2>&1 </dev/null &
  echo $! >"$dir/alertmanager.pid"
  prom_wait_ready alertmanager "$port" "$dir/alertmanager.log"
}

alertmanager_stop() { prom_stop_named "$1" alertmanager; }
