# CI tool installs shared by .ci/run and developers: each tool pinned, installed once into a cache
# directory of its own and reused (a second run only checks that the binary is there). Source this
# file; it defines:
#   tools_dir                 the cache root (LEAKY_TOOLS_DIR, default ~/.cache/leaky-tokens/tools)
#   cargo_deny                path of cargo-deny $CARGO_DENY_VERSION (cargo install --locked)
#   shellcheck_bin            path of shellcheck (Debian's package)
#   actionlint_bin            path of actionlint $ACTIONLINT_VERSION (go install, from the Go module proxy)
#   deny_advisory_args        cargo-deny flags for the RustSec database: the live one when it can be
#                             fetched, else the snapshot in ../shared/advisory-db (machines without GitHub)
# Each prints the binary's path on stdout and its progress on stderr.

CARGO_DENY_VERSION=${CARGO_DENY_VERSION:-0.20.2}
ACTIONLINT_VERSION=${ACTIONLINT_VERSION:-v1.7.12}

tools_dir() { echo "${LEAKY_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/leaky-tokens/tools}"; }

tools_apt() {
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# `cargo install` into a versioned root: another version never shadows it, and its own target dir in
# a temp dir keeps the build out of the workspace's target/ (deleted afterwards: disk is tight).
cargo_deny() {
  local root bin build
  root="$(tools_dir)/cargo-deny-$CARGO_DENY_VERSION"
  bin="$root/bin/cargo-deny"
  if [ ! -x "$bin" ]; then
    echo "installing cargo-deny $CARGO_DENY_VERSION into $root (one time; a few minutes)" >&2
    build=$(mktemp -d)
    CARGO_TARGET_DIR="$build" CARGO_INCREMENTAL=0 \
      cargo install cargo-deny --version "$CARGO_DENY_VERSION" --locked --root "$root" --quiet >&2
    rm -rf "$build"
  fi
  echo "$bin"
}

shellcheck_bin() {
  command -v shellcheck >/dev/null 2>&1 || tools_apt shellcheck
  command -v shellcheck
}

# actionlint is a Go program; GOBIN in the cache, the module and build caches wherever Go keeps them.
actionlint_bin() {
  local dir bin
  dir="$(tools_dir)/actionlint-$ACTIONLINT_VERSION"
  bin="$dir/actionlint"
  if [ ! -x "$bin" ]; then
    command -v go >/dev/null 2>&1 || tools_apt golang-go
    echo "installing actionlint $ACTIONLINT_VERSION into $dir (one time)" >&2
    mkdir -p "$dir"
    GOBIN="$dir" GOFLAGS=-mod=mod go install "github.com/rhysd/actionlint/cmd/actionlint@$ACTIONLINT_VERSION" >&2
  fi
  echo "$bin"
}

# compose-go's validator (`cmd` of the Go module the docker compose CLI itself is built on): schema
# validation, interpolation, profiles and the model's consistency checks, without a Docker engine.
COMPOSE_GO_VERSION=${COMPOSE_GO_VERSION:-v2.16.2}
compose_spec_bin() {
  local dir bin
  dir="$(tools_dir)/compose-go-$COMPOSE_GO_VERSION"
  bin="$dir/compose-spec"
  if [ ! -x "$bin" ]; then
    command -v go >/dev/null 2>&1 || tools_apt golang-go
    echo "installing compose-go's validator $COMPOSE_GO_VERSION into $dir (one time)" >&2
    mkdir -p "$dir"
    GOBIN="$dir" GOFLAGS=-mod=mod go install "github.com/compose-spec/compose-go/v2/cmd@$COMPOSE_GO_VERSION" >&2
    mv "$dir/cmd" "$bin"
  fi
  echo "$bin"
}
