#!/usr/bin/env bash
# A real single-node Apache Kafka (KRaft mode) on 127.0.0.1 for eddy's tests
# and examples: the broker jars come from Maven Central and run on the
# machine's Java 17. Idempotent.
#
#   scripts/kafka.sh install     fetch the jars (once)
#   scripts/kafka.sh start       install, format (once) and start; waits until ready
#   scripts/kafka.sh stop        stop it (data is kept)
#   scripts/kafka.sh restart     stop, then start on the same data
#   scripts/kafka.sh bootstrap   print the bootstrap address
#   scripts/kafka.sh reset       stop and delete its data
#
# EDDY_KAFKA_PORT (default 19092) sets the broker port; the controller uses
# the next one. Everything lives under $EDDY_CACHE/kafka.
set -euo pipefail

KAFKA_VERSION="${KAFKA_VERSION:-4.1.1}"
EDDY_CACHE="${EDDY_CACHE:-$HOME/.cache/eddy}"
PORT="${EDDY_KAFKA_PORT:-19092}"
CONTROLLER_PORT=$((PORT + 1))
HOME_DIR="$EDDY_CACHE/kafka"
LIB="$HOME_DIR/lib-$KAFKA_VERSION"
RUN="$HOME_DIR/run-$PORT"
DATA="$RUN/data"
CONFIG="$RUN/server.properties"
PID_FILE="$RUN/kafka.pid"
LOG="$RUN/kafka.log"
CLUSTER_ID="ZWRkeS10ZXN0LWNsdXN0ZXI"

say() { echo "kafka.sh: $*"; }

install() {
  if [ -s "$LIB/.complete" ]; then
    return
  fi
  command -v java >/dev/null 2>&1 || { say "java is missing (scripts/install-test-deps.sh installs it)"; exit 1; }
  command -v mvn >/dev/null 2>&1 || { say "mvn is missing (scripts/install-test-deps.sh installs it)"; exit 1; }
  say "fetching Apache Kafka $KAFKA_VERSION from Maven Central into $LIB"
  local build="$HOME_DIR/pom-$KAFKA_VERSION"
  mkdir -p "$build" "$LIB"
  cat >"$build/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.eddy</groupId>
  <artifactId>kafka-broker</artifactId>
  <version>1</version>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>$KAFKA_VERSION</version></dependency>
  </dependencies>
</project>
EOF
  mvn -q -B -f "$build/pom.xml" dependency:copy-dependencies -DoutputDirectory="$LIB" -DincludeScope=runtime
  date >"$LIB/.complete"
}

running() {
  [ -s "$PID_FILE" ] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null
}

port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null
}

configure() {
  mkdir -p "$RUN"
  cat >"$CONFIG" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$DATA
num.partitions=1
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
log.retention.hours=24
EOF
  if [ ! -s "$DATA/meta.properties" ]; then
    say "formatting the KRaft storage in $DATA"
    java -cp "$LIB/*" kafka.tools.StorageTool format -t "$CLUSTER_ID" -c "$CONFIG" >/dev/null
  fi
}

wait_ready() {
  local deadline=$((SECONDS + 90))
  while [ $SECONDS -lt $deadline ]; do
    if ! running; then
      say "the broker exited; last lines of $LOG:"
      tail -n 30 "$LOG" >&2 || true
      exit 1
    fi
    # Ready once it answers a metadata request (listing topics).
    if port_open && java -cp "$LIB/*" org.apache.kafka.tools.TopicCommand \
        --bootstrap-server "127.0.0.1:$PORT" --list >/dev/null 2>&1; then
      say "ready on 127.0.0.1:$PORT"
      return
    fi
    sleep 1
  done
  say "not ready after 90 s; last lines of $LOG:"
  tail -n 30 "$LOG" >&2 || true
  exit 1
}

start() {
  install
  if running; then
    say "already running on 127.0.0.1:$PORT (pid $(cat "$PID_FILE"))"
    return
  fi
  configure
  say "starting on 127.0.0.1:$PORT"
  nohup java -Xms256m -Xmx768m -cp "$LIB/*" kafka.Kafka "$CONFIG" >"$LOG" 2>&1 &
  echo $! >"$PID_FILE"
  wait_ready
}

stop() {
  if running; then
    local pid
    pid="$(cat "$PID_FILE")"
    say "stopping (pid $pid)"
    kill "$pid"
    for _ in $(seq 1 60); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.5
    done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$PID_FILE"
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  bootstrap) echo "127.0.0.1:$PORT" ;;
  reset) stop; rm -rf "$RUN" ;;
  *) echo "usage: $0 install|start|stop|restart|bootstrap|reset" >&2; exit 2 ;;
esac
