# PostgreSQL helpers shared by scripts/stack and loadtests: a throwaway cluster in a directory of its
# own, on a loopback port, trusted local auth. Source this file; it defines:
#   pg_install            install Debian's postgresql if no server binaries are present
#   pg_start DIR PORT [OPTS]  initdb DIR/data (first time only) and start it on 127.0.0.1:PORT, with
#                         extra server options OPTS (e.g. `-c fsync=off` for throwaway test clusters)
#   pg_stop DIR           stop it (fast)
#   free_port             a free loopback TCP port
#   pg_archive_opts DIR   server options that archive every WAL segment into DIR (point-in-time
#                         recovery with scripts/restore; DIR is created, owned by the server's user)
# Running as root, the server runs as user `postgres` (initdb and postgres refuse root).

pg_bin() {
  local d
  for d in /usr/lib/postgresql/*/bin; do [ -d "$d" ] && echo "$d"; done | sort -V | tail -n 1
}

pg_install() {
  if [ -z "$(pg_bin)" ]; then
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends postgresql >/dev/null
  fi
}

as_postgres() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

# shellcheck source=scripts/lib/ports.sh
source "$(dirname "${BASH_SOURCE[0]}")/ports.sh"

pg_start() {
  local dir=$1 port=$2 extra=${3:-} bin
  bin=$(pg_bin)
  mkdir -p "$dir"
  # The postgres user must reach the data dir: a world-traversable dir of its own.
  chmod 755 "$dir"
  [ "$(id -u)" -eq 0 ] && chown postgres "$dir"
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    as_postgres "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --locale=C --no-sync >"$dir/initdb.log"
  fi
  as_postgres "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -o "-c listen_addresses=127.0.0.1 \
    -p $port -k $dir -c max_connections=400 $extra" start >/dev/null
}

pg_stop() {
  local dir=$1
  [ -f "$dir/data/postmaster.pid" ] || return 0
  as_postgres "$(pg_bin)/pg_ctl" -D "$dir/data" -m fast stop >/dev/null 2>&1 || true
}

# Creates database NAME on the server at PORT if it does not exist.
pg_createdb() {
  local port=$1 name=$2
  as_postgres "$(pg_bin)/psql" -h 127.0.0.1 -p "$port" -U postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname = '$name'" | grep -q 1 ||
    as_postgres "$(pg_bin)/createdb" -h 127.0.0.1 -p "$port" -U postgres "$name"
}

# WAL archiving for point-in-time recovery (docs/backup.md): each finished segment is copied into DIR
# (never overwriting one already there, as the PostgreSQL docs require), and a segment is forced at
# least every 60 s, which bounds the data lost with the server's disk (the RPO) to a minute.
pg_archive_opts() {
  local dir=$1
  mkdir -p "$dir"
  chmod 755 "$dir"
  [ "$(id -u)" -eq 0 ] && chown postgres "$dir"
  echo "-c wal_level=replica -c archive_mode=on -c archive_timeout=60 -c archive_command='test ! -f $dir/%f && cp %p $dir/%f'"
}

# Runs one SQL statement as the superuser on the server at PORT and prints the unaligned result.
pg_sql() {
  local port=$1 db=$2 sql=$3
  as_postgres "$(pg_bin)/psql" -h 127.0.0.1 -p "$port" -U postgres -d "$db" -v ON_ERROR_STOP=1 -tAc "$sql"
}
