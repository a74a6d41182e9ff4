#!/usr/bin/env bash
# Recovery after kill -9 of Nexmark q20 under a memory limit: builds the
# state from the built-in generator, checkpoints, kills eddy with SIGKILL,
# restarts it and reports the seconds to the first answer and the peak RSS
# of the restart (from /usr/bin/time). Loopback only; every wait is bounded.
#
#   benches/recovery.sh EDDY_BINARY [EVENTS=10000000] [LIMIT=1GiB] [reuse]
#
# `reuse` skips building the state and restarts from the data dir a
# previous run left (/tmp/eddy-recovery-bench). Needs psql, bc and
# /usr/bin/time (Debian: postgresql-client, bc, time).
set -euo pipefail
BIN=$1; EVENTS=${2:-10000000}; LIMIT=${3:-1GiB}
DIR=/tmp/eddy-recovery-bench; PORT=16549
QUERY="$(dirname "$0")/nexmark/queries/q20.sql"
PSQL="psql -h 127.0.0.1 -p $PORT -U eddy -d eddy -qAt"
pkill -9 -f eddy-recovery-bin 2>/dev/null || true; sleep 1
cp "$BIN" /tmp/eddy-recovery-bin
start() {
  /usr/bin/time -v -o "$DIR/time.$1" /tmp/eddy-recovery-bin --listen 127.0.0.1:$PORT --no-http \
    --data-dir "$DIR/data" --memory-limit "$LIMIT" > "$DIR/log.$1" 2>&1 &
}
# Waits (at most $2 seconds) until `$1` answers; prints the answer.
answer() {
  local deadline=$(( $(date +%s) + $2 ))
  until $PSQL -c "$1" 2>/dev/null; do
    [ "$(date +%s)" -lt $deadline ] || { echo "no answer to $1 in $2 s" >&2; exit 1; }
    sleep 0.05
  done
}
if [ "${4:-}" != reuse ]; then
  rm -rf "$DIR"; mkdir -p "$DIR"
  start 1
  answer 'SELECT 1' 60 > /dev/null
  for t in bid auction; do
    pt=""; [ $t = bid ] && pt="p_time TIMESTAMP AS PROCTIME(), "
    $PSQL -c "CREATE SOURCE $t (${pt}WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
      WITH (connector = 'nexmark', nexmark.table.type = '$t', nexmark.event.rate = '10000000',
            nexmark.max.events = '$EVENTS', nexmark.max.emit.speed = 'true')"
  done
  $PSQL -c "CREATE MATERIALIZED VIEW q20 AS $(grep -v '^--' "$QUERY")"
  # Loaded once the view stops growing (at most an hour).
  previous=-1
  for _ in $(seq 720); do
    sleep 5
    rows=$($PSQL -c 'SELECT count(*) FROM q20')
    [ "$rows" = "$previous" ] && break
    previous=$rows
  done
  $PSQL -c 'CHECKPOINT' > /dev/null
  echo "state: q20 has $rows rows; $(du -sh "$DIR/data/checkpoints" | cut -f1) of checkpoints"
  pkill -9 -f eddy-recovery-bin; sleep 2
fi
started=$(date +%s.%N)
start 2
rows=$(answer 'SELECT count(*) FROM q20' 600)
echo "first answer ($rows rows) $(echo "$(date +%s.%N) - $started" | bc) s after the restart"
sleep 2
pkill -INT -f eddy-recovery-bin; sleep 4
grep "Maximum resident" "$DIR/time.2"
echo "spill directory: $(du -sh "$DIR/data/spill" 2>/dev/null | cut -f1)"
