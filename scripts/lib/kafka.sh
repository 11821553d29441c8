# Apache Kafka helpers shared by scripts/test, scripts/stack and the tests: a single-node KRaft broker
# on loopback, run from Maven Central jars (Debian ships no Kafka). Source this file; it defines:
#   kafka_fetch            the Kafka classpath in $KAFKA_LIB (idempotent: a no-op once the jars are there)
#   kafka_start DIR PORT   format DIR (first time only) and start a broker on 127.0.0.1:PORT; waits for
#                          "Kafka Server started" (a second loopback port serves the KRaft controller)
#   kafka_stop DIR         stop DIR's broker (SIGTERM, controlled shutdown); a no-op when none runs
#   kafka_topics DIR PORT NAME:PARTITIONS:RETENTION_MS...
#                          create the topics the broker on PORT lacks (existing ones are left as they are;
#                          the tool's output goes to DIR/logs/topics.log)
# Needs java (17) and maven; installs them from Debian when missing. Overrides: KAFKA_VERSION,
# KAFKA_CACHE, KAFKA_HEAP_OPTS, KAFKA_JVM_OPTS, JAVA, MVN_ARGS.

KAFKA_VERSION=${KAFKA_VERSION:-4.4.0}
KAFKA_CACHE=${KAFKA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/leaky-tokens/kafka-$KAFKA_VERSION}
KAFKA_LIB="$KAFKA_CACHE/lib"
# Small heap and few threads: a test broker idles at ~170 MiB RSS instead of ~370.
KAFKA_HEAP_OPTS=${KAFKA_HEAP_OPTS:--Xms64m -Xmx256m}
KAFKA_JVM_OPTS=${KAFKA_JVM_OPTS:--XX:+UseSerialGC -XX:TieredStopAtLevel=1 -XX:ReservedCodeCacheSize=64m -XX:MaxMetaspaceSize=128m -XX:MaxDirectMemorySize=128m -Xss512k -Djava.net.preferIPv4Stack=true -Djava.awt.headless=true}

# shellcheck source=scripts/lib/ports.sh
source "$(dirname "${BASH_SOURCE[0]}")/ports.sh"
# shellcheck source=scripts/lib/procs.sh
source "$(dirname "${BASH_SOURCE[0]}")/procs.sh"
kafka_free_port() { free_port; }

kafka_install_tools() {
  command -v java >/dev/null 2>&1 && command -v mvn >/dev/null 2>&1 && return 0
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends openjdk-17-jre-headless maven >/dev/null
}

kafka_fetch() {
  [ -f "$KAFKA_LIB/.complete" ] && return 0
  kafka_install_tools
  mkdir -p "$KAFKA_CACHE"
  # A throwaway pom: the broker, the tools (without connect-runtime, which only serves Connect and
  # brings ~45 jars), and a log4j binding for slf4j (without it the broker logs nothing at all).
  cat >"$KAFKA_CACHE/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>leaky-tokens</groupId><artifactId>kafka-classpath</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>$KAFKA_VERSION</version>
      <exclusions><exclusion><groupId>org.apache.kafka</groupId><artifactId>connect-runtime</artifactId></exclusion></exclusions></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>2.25.5</version></dependency>
  </dependencies>
</project>
EOF
  rm -rf "$KAFKA_LIB"
  # shellcheck disable=SC2086
  (cd "$KAFKA_CACHE" && mvn -q -B ${MVN_ARGS:-} dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory=lib) >&2
  touch "$KAFKA_LIB/.complete"
}

# The broker's properties and log4j2 config in DIR (rewritten on every start: the ports may change).
kafka_write_config() {
  local dir=$1 port=$2 cport=$3
  cat >"$dir/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$dir/data
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=2
background.threads=2
log.cleaner.threads=1
log.cleaner.dedupe.buffer.size=8388608
log.segment.bytes=67108864
EOF
  cat >"$dir/log4j2.properties" <<EOF
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = $dir/logs/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.file.ref = file
EOF
}

# The pid of DIR's broker if it runs (checked against /proc: a stale pid file names another process).
kafka_pid() {
  local dir=$1 pid
  [ -f "$dir/kafka.pid" ] || return 1
  pid=$(cat "$dir/kafka.pid")
  [ -r "/proc/$pid/cmdline" ] || return 1
  # No pipes into `grep -q` here or below: callers may run with `set -o pipefail`, and an early
  # exit of grep makes the writer's SIGPIPE fail the pipeline.
  local cmd
  cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline")
  [[ $cmd == *"kafka.Kafka $dir/server.properties"* ]] && echo "$pid"
}

kafka_start() {
  local dir=$1 port=$2 cport java=${JAVA:-java} pid
  if pid=$(kafka_pid "$dir"); then echo "kafka already running in $dir (pid $pid)" >&2; return 0; fi
  kafka_fetch
  mkdir -p "$dir/logs"
  [ -f "$dir/controller.port" ] || kafka_free_port >"$dir/controller.port"
  cport=$(cat "$dir/controller.port")
  kafka_write_config "$dir" "$port" "$cport"
  if [ ! -f "$dir/data/meta.properties" ]; then
    # A random cluster id: 16 bytes, base64url. Not one that starts with `-` (1 in 64): the storage
    # tool's argument parser takes it for an option, formats nothing, and the broker then dies with
    # "No readable meta.properties files found" (a fresh-clone run lost a test's broker to it).
    local id=-
    while [[ $id == -* ]]; do id=$(head -c16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '='); done
    # shellcheck disable=SC2086
    "$java" $KAFKA_HEAP_OPTS -cp "$KAFKA_LIB/*" -Dlog4j2.configurationFile="$dir/log4j2.properties" \
      kafka.tools.StorageTool format -t "$id" -c "$dir/server.properties" >"$dir/logs/format.log" 2>&1 ||
      { echo "kafka storage format failed; see $dir/logs/format.log" >&2; tail -5 "$dir/logs/format.log" >&2; return 1; }
  fi
  local from=0
  [ -f "$dir/logs/server.log" ] && from=$(wc -c <"$dir/logs/server.log")
  # shellcheck disable=SC2086
  nohup "$java" $KAFKA_HEAP_OPTS $KAFKA_JVM_OPTS -Dlog4j2.configurationFile="$dir/log4j2.properties" \
    -cp "$KAFKA_LIB/*" kafka.Kafka "$dir/server.properties" >"$dir/logs/stdout.log" 2>&1 &
  local started=$!
  echo "$started" >"$dir/kafka.pid"
  # Ready when this start's part of the log says so (60 s: a cold JVM on a busy 2-core box).
  for _ in $(seq 600); do
    if [ "$(tail -c +"$((from + 1))" "$dir/logs/server.log" 2>/dev/null | grep -c "Kafka Server started")" -gt 0 ]; then
      return 0
    fi
    started_alive "$started" || {
      echo "kafka exited; see $dir/logs" >&2
      tail -20 "$dir/logs/stdout.log" >&2
      tail -c +"$((from + 1))" "$dir/logs/server.log" 2>/dev/null | grep -E "ERROR|FATAL|Exception" | tail -10 >&2
      return 1
    }
    sleep 0.1
  done
  echo "kafka did not start within 60 s; see $dir/logs" >&2
  return 1
}

kafka_stop() {
  local dir=$1 pid
  pid=$(kafka_pid "$dir") || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  # Controlled shutdown takes ~2 s; after 30 s the broker is killed.
  for _ in $(seq 300); do
    [ -d "/proc/$pid" ] || { rm -f "$dir/kafka.pid"; return 0; }
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$dir/kafka.pid"
}

kafka_topics() {
  local dir=$1 port=$2 java=${JAVA:-java} existing spec name partitions retention
  shift 2
  mkdir -p "$dir/logs"
  # One JVM to list, one per missing topic: a warm `up` starts a single JVM. The tools run without
  # the broker's log4j2 file (it appends to server.log, which kafka_start reads).
  # shellcheck disable=SC2086
  existing=$("$java" $KAFKA_HEAP_OPTS $KAFKA_JVM_OPTS -cp "$KAFKA_LIB/*" org.apache.kafka.tools.TopicCommand \
    --bootstrap-server "127.0.0.1:$port" --list 2>>"$dir/logs/topics.log") || return 1
  for spec in "$@"; do
    IFS=: read -r name partitions retention <<<"$spec"
    [[ $'\n'$existing$'\n' == *$'\n'$name$'\n'* ]] && continue
    # shellcheck disable=SC2086
    "$java" $KAFKA_HEAP_OPTS $KAFKA_JVM_OPTS -cp "$KAFKA_LIB/*" org.apache.kafka.tools.TopicCommand \
      --bootstrap-server "127.0.0.1:$port" --create --if-not-exists --topic "$name" \
      --partitions "$partitions" --replication-factor 1 --config "retention.ms=$retention" \
      >>"$dir/logs/topics.log" 2>&1 || { tail -5 "$dir/logs/topics.log" >&2; return 1; }
  done
}
