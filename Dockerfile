# syntax=docker/dockerfile:1
# One image for every role of the `leaky-tokens` binary (proxy, control-plane, analytics, stubs, up,
# check-config): the role is the container's command, e.g. `docker run IMAGE proxy --listen 0.0.0.0:8080`.
# docs/delivery.md: how it is built, what it holds, the size to expect.
#
#   docker build -t leaky-tokens .
#
# Stages: chef (toolchain + cargo-chef) → planner (the dependency recipe) → builder (dependencies
# first, cached as long as Cargo.toml/Cargo.lock do not change; then the workspace, --release) →
# runtime (debian slim, ca-certificates, the binary, the shipped configs, a non-root user).

ARG RUST_IMAGE=rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS chef
# cmake + a C/C++ toolchain: pingora's zlib-ng and librdkafka (rdkafka-sys builds it from source);
# libcurl4-openssl-dev: librdkafka 2.12's rdkafka_conf.c includes curl/curl.h even with OIDC off
# (shared/notes/infra.md §4; only the header is used, nothing links libcurl); zlib1g-dev: rdkafka's
# `libz` feature links the system zlib, which the runtime image has (zlib1g is essential in Debian).
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake build-essential pkg-config perl \
      libcurl4-openssl-dev zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
RUN cargo install cargo-chef --version 0.1.78 --locked
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
ENV CARGO_INCREMENTAL=0
COPY --from=planner /src/recipe.json recipe.json
# The dependency layer: rebuilt only when the recipe (manifests + lock file) changes.
RUN cargo chef cook --release --locked --recipe-path recipe.json --bin leaky-tokens
COPY . .
RUN cargo build --release --locked --bin leaky-tokens \
 && cp target/release/leaky-tokens /leaky-tokens

FROM ${RUNTIME_IMAGE} AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 leaky \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/leaky-tokens --create-home \
      --shell /usr/sbin/nologin leaky
COPY --from=builder /leaky-tokens /usr/local/bin/leaky-tokens
# Relative paths in the CLI defaults (config/dev.yaml, config/stack.yaml) resolve against /app.
# deploy/config/*.yaml are overlays that `extends` a shipped config, so they sit beside them.
WORKDIR /app
COPY config/*.yaml config/schema.json config/
COPY deploy/config/*.yaml config/
COPY --chmod=0755 deploy/docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
# Writable state (the proxy's last-good config cache and usage-event spool) lives under the user's
# home, a volume in docker-compose.yml.
USER 10001:10001
ENV LEAKY_LOG_FORMAT=json
# The admin listener's /readyz (proxy, 9090) is the default health check; the compose file sets each
# role's own (control plane and analytics /readyz and /healthz, stubs /healthz).
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["docker-entrypoint.sh", "probe", "http://127.0.0.1:9090/readyz"]
ENTRYPOINT ["docker-entrypoint.sh"]
# The quickstart by default: stubs and proxy in one process, the proxy reachable from outside the
# container; its admin listener stays on the container's loopback (the health check reaches it there).
EXPOSE 8080
CMD ["up", "--listen", "0.0.0.0:8080"]
