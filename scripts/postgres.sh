#!/usr/bin/env bash
# A real PostgreSQL for eddy's tests, on loopback, in a cluster of its own
# (name "eddytest", port $EDDY_TEST_PG_PORT, default 54329), trust auth.
#   scripts/postgres.sh start     install (apt) if needed, create, start; idempotent
#   scripts/postgres.sh stop
#   scripts/postgres.sh restart
#   scripts/postgres.sh url       print the connection URL tests use
set -euo pipefail

PORT="${EDDY_TEST_PG_PORT:-54329}"
CLUSTER=eddytest
DATABASE=eddy_test
URL="postgres://postgres@127.0.0.1:$PORT/$DATABASE"

sudo_cmd=""
[ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"

install() {
  if ! command -v pg_ctlcluster >/dev/null 2>&1 || [ -z "$(ls /usr/lib/postgresql 2>/dev/null)" ]; then
    echo "postgres.sh: installing postgresql"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq postgresql >/dev/null
  fi
}

version() {
  ls /usr/lib/postgresql | sort -n | tail -1
}

start() {
  install
  local v
  v=$(version)
  if ! pg_lsclusters -h | awk '{print $1" "$2}' | grep -qx "$v $CLUSTER"; then
    echo "postgres.sh: creating cluster $v/$CLUSTER on port $PORT"
    $sudo_cmd pg_createcluster "$v" "$CLUSTER" -p "$PORT" -- --auth=trust >/dev/null
    # Loopback only, and enough connections for parallel tests.
    printf "listen_addresses = '127.0.0.1'\nmax_connections = 200\n" |
      $sudo_cmd tee "/etc/postgresql/$v/$CLUSTER/conf.d/eddy.conf" >/dev/null
  fi
  if ! pg_lsclusters -h | awk -v v="$v" -v c="$CLUSTER" '$1==v && $2==c {print $4}' | grep -q online; then
    $sudo_cmd pg_ctlcluster "$v" "$CLUSTER" start
  fi
  for _ in $(seq 1 50); do
    if psql -X -q -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -c 'SELECT 1' >/dev/null 2>&1; then
      break
    fi
    sleep 0.2
  done
  if ! psql -X -q -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$DATABASE'" | grep -q 1; then
    psql -X -q -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -c "CREATE DATABASE $DATABASE"
  fi
  echo "postgres.sh: ready at $URL"
}

case "${1:-start}" in
  start) start ;;
  stop) $sudo_cmd pg_ctlcluster "$(version)" "$CLUSTER" stop || true ;;
  restart) $sudo_cmd pg_ctlcluster "$(version)" "$CLUSTER" restart ;;
  url) echo "$URL" ;;
  *) echo "usage: $0 start|stop|restart|url" >&2; exit 2 ;;
esac
