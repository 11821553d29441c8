# shellcheck shell=bash
# Jaeger v2 helpers shared by scripts/test, scripts/stack and the tests: the trace store (OTLP in,
# in-memory storage, query API and UI out) on loopback, built from the Go module proxy (Debian ships
# no Jaeger). Source this file; it defines:
#   jaeger_fetch           build the `jaeger` binary into $JAEGER_BIN once (idempotent; a cold build
#                          is a few minutes on a 2-core box, see docs/observability.md)
#   jaeger_start DIR QUERY_PORT OTLP_GRPC_PORT OTLP_HTTP_PORT
#                          start Jaeger with observability/otel/jaeger.yaml; waits until the query API
#                          answers (a no-op when DIR's Jaeger already runs)
#   jaeger_stop DIR        stop DIR's Jaeger; a no-op when none runs
# Needs go (any release that builds Jaeger's go.mod). Overrides: JAEGER_VERSION, INFRA_CACHE,
# JAEGER_MAX_TRACES.

JAEGER_VERSION=${JAEGER_VERSION:-v1.76.0}
JAEGER_GOBIN="${INFRA_CACHE:-$HOME/.cache/leaky-infra}/go-bin/jaeger-${JAEGER_VERSION#v}"
JAEGER_BIN="$JAEGER_GOBIN/jaeger"
JAEGER_CONFIG=${JAEGER_CONFIG:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/observability/otel/jaeger.yaml}

# shellcheck source=scripts/lib/ports.sh
source "$(dirname "${BASH_SOURCE[0]}")/ports.sh"
# shellcheck source=scripts/lib/procs.sh
source "$(dirname "${BASH_SOURCE[0]}")/procs.sh"
jaeger_free_port() { free_port; }

jaeger_fetch() {
  [ -x "$JAEGER_BIN" ] && return 0
  command -v go >/dev/null 2>&1 || { echo "jaeger: go is needed to build Jaeger" >&2; return 1; }
  # `go install pkg@version` refuses Jaeger's module (its go.mod has replace directives), so the
  # binary is built as a tool of a throwaway module, which resolves the same versions.
  local work start
  work=$(mktemp -d /tmp/leaky-jaeger-build.XXXXXX)
  start=$(date +%s)
  (
    cd "$work" &&
      go mod init leaky-jaeger-build >/dev/null 2>&1 &&
      go get -tool "github.com/jaegertracing/jaeger/cmd/jaeger@$JAEGER_VERSION" &&
      GOBIN="$JAEGER_GOBIN" go install tool
  ) >"$work/build.log" 2>&1 || { tail -20 "$work/build.log" >&2; echo "jaeger: build failed ($work/build.log)" >&2; return 1; }
  rm -rf "$work"
  echo "jaeger: built $JAEGER_VERSION in $(($(date +%s) - start)) s into $JAEGER_GOBIN" >&2
}

jaeger_pid() {
  local dir=$1 pid cmd
  [ -f "$dir/jaeger.pid" ] || return 1
  pid=$(cat "$dir/jaeger.pid")
  [ -r "/proc/$pid/cmdline" ] || return 1
  cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline")
  [[ $cmd == *"$JAEGER_BIN --config"* ]] && echo "$pid"
}

jaeger_start() {
  local dir=$1 query=$2 grpc=$3 http=$4 pid
  if pid=$(jaeger_pid "$dir"); then echo "jaeger already running in $dir (pid $pid)" >&2; return 0; fi
  jaeger_fetch || return 1
  mkdir -p "$dir"
  [ -f "$dir/query-grpc.port" ] || jaeger_free_port >"$dir/query-grpc.port"
  JAEGER_QUERY_PORT=$query JAEGER_OTLP_GRPC_PORT=$grpc JAEGER_OTLP_HTTP_PORT=$http \
    JAEGER_QUERY_GRPC_PORT=$(cat "$dir/query-grpc.port") JAEGER_MAX_TRACES=${JAEGER_MAX_TRACES:-100000} \
    nohup "$JAEGER_BIN" --config "$JAEGER_CONFIG" >"$dir/jaeger.log" 2>&1 &
  local started=$!
  echo "$started" >"$dir/jaeger.pid"
  # Ready when the query API answers (it starts after the receivers).
  for _ in $(seq 300); do
    if curl -fsS -o /dev/null "http://127.0.0.1:$query/api/services" 2>/dev/null; then return 0; fi
    started_alive "$started" || { echo "jaeger exited; see $dir/jaeger.log" >&2; tail -20 "$dir/jaeger.log" >&2; return 1; }
    sleep 0.1
  done
  echo "jaeger did not start within 30 s; see $dir/jaeger.log" >&2
  return 1
}

jaeger_stop() {
  local dir=$1 pid
  pid=$(jaeger_pid "$dir") || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 100); do
    [ -d "/proc/$pid" ] || { rm -f "$dir/jaeger.pid"; return 0; }
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$dir/jaeger.pid"
}
