#!/usr/bin/env bash
# Runs the whole natter topology on loopback with real processes, in the foreground:
# nats-server (JetStream), a private Postgres, the archiver, the filestore, two edges and
# an entry point that balances WebSockets over the ready edges. Ctrl-C stops everything.
#
# Everything lives under $NATTER_DATA_DIR (default .data): NATS store, Postgres cluster,
# uploaded files, logs. Ports can be moved with the variables below.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA="${NATTER_DATA_DIR:-.data}"
BIN="${NATTER_BIN_DIR:-target/release}"
NATS_PORT="${NATTER_NATS_PORT:-4222}"
PG_PORT="${NATTER_PG_PORT:-5433}"
ENTRY_PORT="${NATTER_ENTRY_PORT:-8080}"
EDGE_PORTS=("${NATTER_EDGE1_PORT:-8081}" "${NATTER_EDGE2_PORT:-8082}")
EDGE_OPS_PORTS=("${NATTER_EDGE1_OPS_PORT:-9081}" "${NATTER_EDGE2_OPS_PORT:-9082}")
FILESTORE_PORT="${NATTER_FILESTORE_PORT:-8090}"
FILESTORE_OPS_PORT="${NATTER_FILESTORE_OPS_PORT:-9090}"
ARCHIVER_PORT="${NATTER_ARCHIVER_PORT:-8091}"
WEB_PORT="${NATTER_WEB_PORT:-8079}"
BOTS_PORT="${NATTER_BOTS_PORT:-8092}"
BOTS_OPS_PORT="${NATTER_BOTS_OPS_PORT:-9092}"
export RUST_LOG="${RUST_LOG:-info}"

mkdir -p "$DATA/logs" "$DATA/files" "$DATA/nats"
DATA="$(cd "$DATA" && pwd)"
LOGS="$DATA/logs"
NATS_URL="nats://127.0.0.1:$NATS_PORT"

pids=()
PG_BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)"
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

stop_all() {
  trap - EXIT INT TERM
  echo
  echo "stopping natter..."
  for ((i=${#pids[@]}-1; i>=0; i--)); do kill -TERM "${pids[$i]}" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -f "$DATA/pg/postmaster.pid" ]; then as_pg "$PG_BIN/pg_ctl" -D "$DATA/pg" -m fast -w stop >/dev/null 2>&1 || true; fi
  echo "stopped."
}
trap stop_all EXIT INT TERM

wait_port() { # name port
  for _ in $(seq 1 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "$1 did not come up on port $2; see $LOGS/$1.log" >&2
  tail -n 20 "$LOGS/$1.log" >&2 || true
  exit 1
}

declare -A names
start() { # name command...
  local name=$1; shift
  "$@" >>"$LOGS/$name.log" 2>&1 &
  pids+=("$!")
  names[$!]=$name
}

echo "natter: data and logs under $DATA"

start nats .tools/py/bin/nats-server -c nats/conf/dev.conf -p "$NATS_PORT" -sd "$DATA/nats"
wait_port nats "$NATS_PORT"

if [ ! -f "$DATA/pg/PG_VERSION" ]; then
  echo "natter: creating a private Postgres cluster in $DATA/pg"
  mkdir -p "$DATA/pg"
  if [ "$(id -u)" = 0 ]; then chown postgres:postgres "$DATA/pg"; chmod 700 "$DATA/pg"; fi
  as_pg "$PG_BIN/initdb" -D "$DATA/pg" -U natter --auth=trust -E UTF8 >"$LOGS/initdb.log" 2>&1
fi
if [ "$(id -u)" = 0 ]; then touch "$LOGS/postgres.log"; chown postgres "$LOGS/postgres.log"; fi
as_pg "$PG_BIN/pg_ctl" -D "$DATA/pg" -l "$LOGS/postgres.log" -w \
  -o "-p $PG_PORT -h 127.0.0.1 -k $DATA/pg" start >/dev/null
DATABASE_URL="postgres://natter@127.0.0.1:$PG_PORT/postgres"

start archiver "$BIN/natter-archiver" --listen "127.0.0.1:$ARCHIVER_PORT" --nats-url "$NATS_URL" --database-url "$DATABASE_URL"
start bots "$BIN/natter-bots" --listen "127.0.0.1:$BOTS_PORT" --ops-listen "127.0.0.1:$BOTS_OPS_PORT" --nats-url "$NATS_URL" --auth off
start filestore "$BIN/natter-filestore" --listen "127.0.0.1:$FILESTORE_PORT" --ops-listen "127.0.0.1:$FILESTORE_OPS_PORT" --nats-url "$NATS_URL" --data-dir "$DATA/files"
for i in 0 1; do
  start "edge-$((i+1))" "$BIN/natter-edge" --listen "127.0.0.1:${EDGE_PORTS[$i]}" --ops-listen "127.0.0.1:${EDGE_OPS_PORTS[$i]}" --nats-url "$NATS_URL" --node-name "edge-$((i+1))" --auth off
done
start entry python3 scripts/lb.py "$ENTRY_PORT" "${EDGE_PORTS[0]}:${EDGE_OPS_PORTS[0]}" "${EDGE_PORTS[1]}:${EDGE_OPS_PORTS[1]}"
# The web app (web/: plain ES modules; web/lib links to the client library in clients/js/src).
start web python3 -m http.server --bind 127.0.0.1 --directory web "$WEB_PORT"
WEB_URL="http://127.0.0.1:$WEB_PORT/"
if [ "$ENTRY_PORT" != 8080 ] || [ "$FILESTORE_PORT" != 8090 ]; then
  WEB_URL="${WEB_URL}?ws=ws://127.0.0.1:$ENTRY_PORT/chat&files=http://127.0.0.1:$FILESTORE_PORT"
fi
wait_port archiver "$ARCHIVER_PORT"
wait_port filestore "$FILESTORE_PORT"
wait_port filestore "$FILESTORE_OPS_PORT"
wait_port edge-1 "${EDGE_PORTS[0]}"
wait_port edge-2 "${EDGE_PORTS[1]}"
wait_port edge-1 "${EDGE_OPS_PORTS[0]}"
wait_port edge-2 "${EDGE_OPS_PORTS[1]}"
wait_port entry "$ENTRY_PORT"
wait_port web "$WEB_PORT"

cat <<MSG

natter is up:
  web client                  $WEB_URL   (open it in two browser windows)
  chat (WebSocket, JSON-RPC)  ws://127.0.0.1:$ENTRY_PORT/chat     (balanced over the two edges)
  edge 1                      ws://127.0.0.1:${EDGE_PORTS[0]}/chat   http://127.0.0.1:${EDGE_OPS_PORTS[0]}/metrics
  edge 2                      ws://127.0.0.1:${EDGE_PORTS[1]}/chat   http://127.0.0.1:${EDGE_OPS_PORTS[1]}/metrics
  edge authentication         OFF (--auth off): tokens are ignored, any client may claim any userId
                              (local development only; see README "Authentication")
  filestore (REST)            http://127.0.0.1:$FILESTORE_PORT/images  /files   http://127.0.0.1:$FILESTORE_OPS_PORT/metrics
  archiver                    http://127.0.0.1:$ARCHIVER_PORT/metrics
  bots (REST, auth off)       http://127.0.0.1:$BOTS_PORT/rooms/<room>/bots   http://127.0.0.1:$BOTS_OPS_PORT/metrics
  NATS                        $NATS_URL   (monitor http://127.0.0.1:8222)
  Postgres                    $DATABASE_URL
  logs                        $LOGS/
Ctrl-C stops everything.
MSG

# A component that exits (e.g. an edge drained with kill -TERM, to watch its clients move)
# is reported; the rest keeps running until Ctrl-C or until nothing is left.
set +e
alive=("${pids[@]}")
while [ ${#alive[@]} -gt 0 ]; do
  wait -n -p done_pid "${alive[@]}"
  status=$?
  [ -n "${done_pid:-}" ] || break
  echo "natter: ${names[$done_pid]} exited (status $status); see $LOGS/${names[$done_pid]}.log" >&2
  next=()
  for p in "${alive[@]}"; do [ "$p" != "$done_pid" ] && next+=("$p"); done
  alive=("${next[@]}")
done
