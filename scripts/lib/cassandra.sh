# Apache Cassandra helpers shared by scripts/test, scripts/stack, the analytics tests and loadtests: a
# single node on loopback, run from Maven Central jars (Debian ships no Cassandra). Source this file;
# it defines:
#   cassandra_fetch           the Cassandra classpath in $CASSANDRA_LIB (a no-op once the jars are there)
#   cassandra_start DIR PORT  start a node with DIR as its storage and CQL on 127.0.0.1:PORT; waits for
#                             "Startup complete" (idempotent: prints the running pid)
#   cassandra_stop DIR        stop DIR's node (SIGTERM, drain in the shutdown hook); a no-op when none runs
#   cassandra_pid DIR         the pid of DIR's node if it runs (checked through /proc/PID/cmdline)
#   cassandra_nodetool DIR ARGS...  nodetool against DIR's node (JMX on a loopback-only port of its own,
#                             kept in DIR/jmx.port): snapshots and imports for scripts/backup and restore
# Needs java 17 (Cassandra 5.0 runs on 11 and 17 only) and maven; installs them from Debian when
# missing. Overrides: CASSANDRA_VERSION, INFRA_CACHE, CASSANDRA_HEAP_OPTS, CASSANDRA_GC_OPTS,
# CASSANDRA_JVM_EXTRA, CASSANDRA_EXTRA_YAML (lines appended to the yaml; a repeated key wins), JAVA,
# MVN_ARGS. The upstream GC line, for throughput runs:
#   CASSANDRA_HEAP_OPTS="-Xms256m -Xmx512m" CASSANDRA_GC_OPTS="-XX:+UseG1GC -XX:MaxGCPauseMillis=300"

CASSANDRA_VERSION=${CASSANDRA_VERSION:-5.0.9}
CASSANDRA_CACHE=${INFRA_CACHE:-$HOME/.cache/leaky-infra}/cassandra-$CASSANDRA_VERSION
CASSANDRA_LIB="$CASSANDRA_CACHE/lib"
# SerialGC and a 128–512 MiB heap keep an idle test node near 500 MiB RSS (G1 with 256m: ~715).
CASSANDRA_HEAP_OPTS=${CASSANDRA_HEAP_OPTS:--Xms128m -Xmx512m}
CASSANDRA_GC_OPTS=${CASSANDRA_GC_OPTS:--XX:+UseSerialGC}

# shellcheck source=scripts/lib/ports.sh
source "$(dirname "${BASH_SOURCE[0]}")/ports.sh"
# shellcheck source=scripts/lib/procs.sh
source "$(dirname "${BASH_SOURCE[0]}")/procs.sh"
cassandra_free_port() { free_port; }

cassandra_install_tools() {
  command -v "${JAVA:-java}" >/dev/null 2>&1 && command -v mvn >/dev/null 2>&1 && return 0
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends openjdk-17-jre-headless maven >/dev/null
}

# Refuse a JVM Cassandra 5.0 does not support rather than fail later with an obscure error.
cassandra_check_java() {
  local v
  v=$("${JAVA:-java}" -version 2>&1 | head -1)
  [[ $v == *'"17.'* || $v == *'"11.'* ]] && return 0
  echo "cassandra 5.0 needs Java 11 or 17 (found: $v); set JAVA=" >&2
  return 1
}

cassandra_fetch() {
  [ -f "$CASSANDRA_LIB/.complete" ] && return 0
  cassandra_install_tools
  mkdir -p "$CASSANDRA_CACHE"
  # cassandra-all alone brings a complete runtime (~100 jars, 67 MB). The version is pinned: a range
  # makes Maven fetch every 5.0.x pom.
  cat >"$CASSANDRA_CACHE/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>leaky-tokens</groupId><artifactId>cassandra-classpath</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.cassandra</groupId><artifactId>cassandra-all</artifactId><version>$CASSANDRA_VERSION</version></dependency>
  </dependencies>
</project>
EOF
  rm -rf "$CASSANDRA_LIB"
  # shellcheck disable=SC2086
  (if cd "$CASSANDRA_CACHE"; then mvn -q -B ${MVN_ARGS:-} dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory=lib 2>&1 | grep -v 'sjk-' || true; fi) >&2
  ls "$CASSANDRA_LIB"/cassandra-all-*.jar >/dev/null 2>&1 || { echo "cassandra fetch failed" >&2; return 1; }
  touch "$CASSANDRA_LIB/.complete"
}

# The node's yaml and logback config in DIR (rewritten on every start: the ports may change). The
# footprint lines keep a test node small; everything else is the 5.0 default.
cassandra_write_config() {
  local dir=$1 port=$2 sport=$3
  cat >"$dir/cassandra.yaml" <<EOF
cluster_name: leaky-test
num_tokens: 1
initial_token: 0
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "127.0.0.1:$sport"
listen_address: 127.0.0.1
rpc_address: 127.0.0.1
storage_port: $sport
native_transport_port: $port
start_native_transport: true
data_file_directories: [$dir/data]
commitlog_directory: $dir/commitlog
saved_caches_directory: $dir/saved_caches
hints_directory: $dir/hints
cdc_raw_directory: $dir/cdc_raw
commitlog_sync: periodic
commitlog_sync_period: 10000ms
authenticator: AllowAllAuthenticator
authorizer: AllowAllAuthorizer
commitlog_segment_size: 8MiB
concurrent_reads: 4
concurrent_writes: 4
concurrent_counter_writes: 4
concurrent_compactors: 1
file_cache_size: 32MiB
key_cache_size: 8MiB
counter_cache_size: 0MiB
networking_cache_size: 16MiB
auto_snapshot: false
${CASSANDRA_EXTRA_YAML:-}
EOF
  cat >"$dir/logback.xml" <<EOF
<configuration>
  <appender name="FILE" class="ch.qos.logback.core.FileAppender">
    <file>$dir/logs/system.log</file>
    <encoder><pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="FILE"/></root>
</configuration>
EOF
}

# Java 17 module flags from the 5.0 tarball's jvm17-server.options and jvm-server.options.
cassandra_jvm_opts() {
  local dir=$1 m
  echo "-ea -da:net.openhft... -Xss256k -XX:+UseThreadPriorities -XX:+PerfDisableSharedMem"
  echo "-XX:+ExitOnOutOfMemoryError -XX:ReservedCodeCacheSize=96m -XX:MaxDirectMemorySize=256m"
  echo "-Djava.net.preferIPv4Stack=true -Djava.awt.headless=true -Djdk.attach.allowAttachSelf=true"
  echo "-Dio.netty.tryReflectionSetAccessible=true"
  for m in java.base/jdk.internal.misc java.management.rmi/com.sun.jmx.remote.internal.rmi \
    java.rmi/sun.rmi.registry java.rmi/sun.rmi.server java.sql/java.sql java.base/java.lang.ref \
    jdk.unsupported/sun.misc jdk.compiler/com.sun.tools.javac.file jdk.attach/sun.tools.attach; do
    echo "--add-exports $m=ALL-UNNAMED"
  done
  for m in java.base/java.lang.module java.base/jdk.internal.loader java.base/jdk.internal.ref \
    java.base/jdk.internal.reflect java.base/jdk.internal.math java.base/jdk.internal.module \
    java.base/jdk.internal.util.jar jdk.management/com.sun.management.internal java.base/sun.nio.ch \
    java.base/java.io java.base/java.lang.reflect jdk.compiler/com.sun.tools.javac java.base/java.lang \
    java.base/java.util; do
    echo "--add-opens $m=ALL-UNNAMED"
  done
  echo "-Dcassandra.config=file://$dir/cassandra.yaml -Dcassandra.storagedir=$dir"
  echo "-Dcassandra.logdir=$dir/logs -Dlogback.configurationFile=$dir/logback.xml"
  echo "-Dcassandra.triggers_dir=$dir/triggers -Dcassandra-foreground=yes"
  local jamm=("$CASSANDRA_LIB"/jamm-*.jar)
  echo "-javaagent:${jamm[0]}"
}

cassandra_pid() {
  local dir=$1 pid cmd
  [ -f "$dir/cassandra.pid" ] || return 1
  pid=$(cat "$dir/cassandra.pid")
  [ -r "/proc/$pid/cmdline" ] || return 1
  # No pipes into `grep -q`: callers may run with `set -o pipefail` (see kafka.sh).
  cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline")
  [[ $cmd == *"-Dcassandra.config=file://$dir/cassandra.yaml"*CassandraDaemon* ]] && echo "$pid"
}

cassandra_start() {
  local dir=$1 port=$2 sport java=${JAVA:-java} pid
  if pid=$(cassandra_pid "$dir"); then echo "cassandra already running in $dir (pid $pid)" >&2; return 0; fi
  cassandra_fetch || return 1
  cassandra_check_java || return 1
  mkdir -p "$dir/logs" "$dir/triggers"
  [ -f "$dir/storage.port" ] || cassandra_free_port >"$dir/storage.port"
  sport=$(cat "$dir/storage.port")
  # JMX (for nodetool) on a port of the node's own; `local.port` binds it to loopback without auth.
  [ -f "$dir/jmx.port" ] || cassandra_free_port >"$dir/jmx.port"
  cassandra_write_config "$dir" "$port" "$sport"
  local from=0
  [ -f "$dir/logs/system.log" ] && from=$(wc -c <"$dir/logs/system.log")
  # shellcheck disable=SC2046,SC2086
  MALLOC_ARENA_MAX=2 nohup "$java" $CASSANDRA_HEAP_OPTS $CASSANDRA_GC_OPTS $(cassandra_jvm_opts "$dir") \
    -Dcassandra.jmx.local.port="$(cat "$dir/jmx.port")" ${CASSANDRA_JVM_EXTRA:-} -cp "$CASSANDRA_LIB/*" org.apache.cassandra.service.CassandraDaemon \
    >"$dir/logs/stdout.log" 2>&1 &
  local started=$!
  echo "$started" >"$dir/cassandra.pid"
  # Ready when this start's part of the log says "Startup complete" (120 s: a cold JVM on a busy 2-core
  # box takes 6–9). Not "Starting listening for CQL clients": Cassandra logs that before it binds the
  # port, and a bind that fails ("Failed to bind port") then ends the node after the line was seen.
  local log
  for _ in $(seq 1200); do
    # `|| true`: callers may run with `set -e`, and the log does not exist at first.
    log=$(tail -c +"$((from + 1))" "$dir/logs/system.log" 2>/dev/null || true)
    [[ $log == *"Startup complete"* ]] && return 0
    if [[ $log == *"Exception encountered during startup"* ]] || ! started_alive "$started"; then
      echo "cassandra failed to start; see $dir/logs" >&2
      grep -A3 "Exception encountered during startup" <<<"$log" | head -8 >&2
      tail -20 "$dir/logs/stdout.log" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "cassandra did not start within 120 s; see $dir/logs" >&2
  return 1
}

cassandra_stop() {
  local dir=$1 pid
  pid=$(cassandra_pid "$dir") || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  # The drain in the shutdown hook takes ~6 s; after 60 s the node is killed.
  for _ in $(seq 600); do
    [ -d "/proc/$pid" ] || { rm -f "$dir/cassandra.pid"; return 0; }
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$dir/cassandra.pid"
}

# nodetool is a class of the same jars; it needs the server's module flags, and writes its history and
# logs under DIR rather than ~/.cassandra.
cassandra_nodetool() {
  local dir=$1 java=${JAVA:-java}
  shift
  [ -f "$dir/jmx.port" ] || { echo "no JMX port recorded in $dir (node not started by cassandra_start?)" >&2; return 1; }
  cassandra_fetch || return 1
  # shellcheck disable=SC2046
  "$java" $(cassandra_jvm_opts "$dir" | grep -E '^--add-(exports|opens)') -Xmx256m \
    -Dcassandra.logdir="$dir/logs" -Dlogback.configurationFile="$dir/logback.xml" -Duser.home="$dir" \
    -cp "$CASSANDRA_LIB/*" org.apache.cassandra.tools.NodeTool -h 127.0.0.1 -p "$(cat "$dir/jmx.port")" "$@"
}
