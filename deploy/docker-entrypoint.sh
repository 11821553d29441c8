#!/usr/bin/env bash
# Entry point of the leaky-tokens image (Dockerfile): every role of the binary, plus a health probe.
#
#   docker-entrypoint.sh ROLE [ARGS...]   exec `leaky-tokens ROLE ARGS...`
#   docker-entrypoint.sh probe URL        exit 0 iff GET URL (http://host:port/path) answers 200 within
#                                         3 s; the image's HEALTHCHECK, without curl in the image
#
# Secrets come from files (compose `secrets:`, Kubernetes secret volumes), never from the image or the
# compose file: for each NAME below, NAME_FILE=/run/secrets/x sets NAME to that file's content (one
# trailing newline dropped). NAME itself, when set, wins. LEAKY_MASTER_KEY_FILE is read by the binary.
set -euo pipefail

SECRET_VARS=(LEAKY_ADMIN_TOKEN LEAKY_CONTROL_PLANE_TOKEN LEAKY_ANALYTICS_TOKEN LEAKY_PAYMENTS_API_KEY
  LEAKY_PAYMENTS_WEBHOOK_SECRET LEAKY_DATABASE_URL LEAKY_SMTP_URL PGPASSWORD OPENAI_API_KEY GEMINI_API_KEY
  DASHSCOPE_API_KEY)

die() {
  printf 'docker-entrypoint: %s\n' "$*" >&2
  exit 1
}

load_secret_files() {
  local name file value
  for name in "${SECRET_VARS[@]}"; do
    file_var="${name}_FILE"
    file=${!file_var:-}
    [ -n "$file" ] || continue
    unset "$file_var"
    [ -z "${!name:-}" ] || continue
    [ -r "$file" ] || die "$file_var names $file, which is not a readable file"
    value=$(<"$file")
    export "$name=$value"
  done
}

# A minimal HTTP/1.1 GET over bash's /dev/tcp: the runtime image has no curl or wget (smaller, fewer
# packages to patch), and the binary's health endpoints answer plain HTTP on the container's loopback.
probe() {
  local url=${1:-} rest hostport path host port status
  [[ $url == http://* ]] || die "probe: an http:// URL, got '$url'"
  rest=${url#http://}
  hostport=${rest%%/*}
  path=/${rest#"$hostport"}
  path=/${path#/}
  host=${hostport%:*}
  port=${hostport##*:}
  [[ $port =~ ^[0-9]+$ ]] || port=80
  exec 3<>"/dev/tcp/$host/$port" || exit 1
  printf 'GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$path" "$hostport" >&3
  IFS=' ' read -r -t 3 _ status _ <&3 || exit 1
  exec 3>&-
  [ "$status" = 200 ]
}

if [ "${1:-}" = probe ]; then
  probe "${2:-}"
  exit
fi
load_secret_files
exec "${LEAKY_BIN:-leaky-tokens}" "$@"
