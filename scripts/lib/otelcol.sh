# shellcheck shell=bash
# OpenTelemetry Collector helpers shared by scripts/test, scripts/stack and the tests: the log
# aggregation path. The collector tails the services' JSON log files (filelog receiver), parses each
# line, lifts trace_id/span_id into the record's trace context, and writes OTLP JSON to one file (file
# exporter). The binary is a minimal distribution built with the collector builder from the Go module
# proxy (observability/otel/otelcol-builder.yaml; Debian ships no collector). Source this file; it
# defines:
#   otelcol_fetch          build `otelcol-leaky` into $OTELCOL_BIN once (idempotent; timings in
#                          docs/observability.md, "Logs")
#   otelcol_start DIR OUTPUT GLOB...
#                          start the collector with observability/otel/otelcol.yaml, tailing the files
#                          matching each GLOB (from their beginning) into the OTLP JSON file OUTPUT;
#                          waits until its pipeline runs (a no-op when DIR's collector already runs)
#   otelcol_stop DIR       stop DIR's collector (it flushes on SIGTERM); a no-op when none runs
# Needs go. Overrides: OTELCOL_VERSION, OTELCOL_BUILDER_VERSION, INFRA_CACHE.

OTELCOL_VERSION=${OTELCOL_VERSION:-0.140.1}
# The builder's release line matches the collector core the manifest names (v0.140.0 / v1.46.0).
OTELCOL_BUILDER_VERSION=${OTELCOL_BUILDER_VERSION:-v0.140.0}
OTELCOL_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=scripts/lib/procs.sh
source "$(dirname "${BASH_SOURCE[0]}")/procs.sh"
OTELCOL_GOBIN="${INFRA_CACHE:-$HOME/.cache/leaky-infra}/go-bin/otelcol-leaky-$OTELCOL_VERSION"
OTELCOL_BIN="$OTELCOL_GOBIN/otelcol-leaky"
OTELCOL_MANIFEST="$OTELCOL_ROOT/observability/otel/otelcol-builder.yaml"
OTELCOL_CONFIG=${OTELCOL_CONFIG:-$OTELCOL_ROOT/observability/otel/otelcol.yaml}

otelcol_fetch() {
  [ -x "$OTELCOL_BIN" ] && return 0
  command -v go >/dev/null 2>&1 || { echo "otelcol: go is needed to build the collector" >&2; return 1; }
  local work start
  work=$(mktemp -d /tmp/leaky-otelcol-build.XXXXXX)
  start=$(date +%s)
  # The builder writes the distribution's sources (main.go, components.go, go.mod) into output_path
  # (relative: inside $work). Its own module step (`go mod tidy`) is skipped: tidy also resolves the
  # components' *test* dependencies, and the module proxy here refuses some of those versions
  # (otlpencodingextension v0.140.1: "not available"). `go build -mod=mod` resolves only what the
  # binary imports. No -trimpath (the builder's default): Jaeger's build has none, and the flag is part
  # of every package's build-cache key, so without it the collector core Jaeger compiled is reused.
  (
    cd "$work" &&
      GOBIN="$work/bin" go install "go.opentelemetry.io/collector/cmd/builder@$OTELCOL_BUILDER_VERSION" &&
      "$work/bin/builder" --config "$OTELCOL_MANIFEST" --skip-get-modules --skip-compilation &&
      cd otelcol-leaky &&
      go build -mod=mod -ldflags="-s -w" -o otelcol-leaky . &&
      mkdir -p "$OTELCOL_GOBIN" &&
      mv otelcol-leaky "$OTELCOL_BIN"
  ) >"$work/build.log" 2>&1 || { tail -20 "$work/build.log" >&2; echo "otelcol: build failed ($work/build.log)" >&2; return 1; }
  rm -rf "$work"
  echo "otelcol: built $OTELCOL_VERSION in $(($(date +%s) - start)) s into $OTELCOL_GOBIN" >&2
}

otelcol_pid() {
  local dir=$1 pid cmd
  [ -f "$dir/otelcol.pid" ] || return 1
  pid=$(cat "$dir/otelcol.pid")
  [ -r "/proc/$pid/cmdline" ] || return 1
  cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline")
  [[ $cmd == *"$OTELCOL_BIN --config"* ]] && echo "$pid"
}

otelcol_start() {
  local dir=$1 output=$2 pid include
  shift 2
  if pid=$(otelcol_pid "$dir"); then echo "otelcol already running in $dir (pid $pid)" >&2; return 0; fi
  otelcol_fetch || return 1
  mkdir -p "$dir" "$(dirname "$output")"
  # The globs become one YAML flow sequence (the config reads it from the environment).
  include=$(printf '"%s",' "$@")
  include="[${include%,}]"
  OTELCOL_INCLUDE=$include OTELCOL_OUTPUT=$output \
    nohup "$OTELCOL_BIN" --config "$OTELCOL_CONFIG" >"$dir/otelcol.log" 2>&1 &
  local started=$!
  echo "$started" >"$dir/otelcol.pid"
  # Ready when the service says so (the collector has no HTTP endpoint in this build).
  for _ in $(seq 300); do
    if grep -q 'Everything is ready' "$dir/otelcol.log" 2>/dev/null; then return 0; fi
    started_alive "$started" || { echo "otelcol exited; see $dir/otelcol.log" >&2; tail -20 "$dir/otelcol.log" >&2; return 1; }
    sleep 0.1
  done
  echo "otelcol did not start within 30 s; see $dir/otelcol.log" >&2
  return 1
}

otelcol_stop() {
  local dir=$1 pid
  pid=$(otelcol_pid "$dir") || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 100); do
    [ -d "/proc/$pid" ] || { rm -f "$dir/otelcol.pid"; return 0; }
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$dir/otelcol.pid"
}
