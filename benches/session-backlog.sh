#!/usr/bin/env bash
# An offline persistent session's backlog: RAM per queued message, drain rate,
# and RSS after the drain; Tern (backlog on disk, the default limits but for
# max_queued_messages) against Mosquitto (max_queued_messages raised to match,
# which keeps its queues in RAM), same load, same pinning.
#
#   bash benches/session-backlog.sh                 # ~2 minutes
#   N=20000 SIZE=1024 bash benches/session-backlog.sh
#   SIDES=tern bash benches/session-backlog.sh
#
# Broker on CPU 0 (taskset), the client (benches/session_backlog.py, paho-mqtt)
# on CPU 1. A fresh broker and data dir per side. The durable store runs with
# its default durability = "always". Writes target/bench/session-backlog.jsonl.
# A missing peer (mosquitto, paho-mqtt) or a failed run exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-100000}
SIZE=${SIZE:-64}
PUBS=${PUBS:-4}
SIDES=${SIDES:-"tern mosquitto"}
OUT=${OUT:-target/bench}
mkdir -p "$OUT"
RESULTS="$OUT/session-backlog.jsonl"
: > "$RESULTS"

python3 -c 'import paho.mqtt' || { echo "paho-mqtt missing (pip install paho-mqtt)" >&2; exit 1; }
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
echo "== building tern (release)" >&2
cargo build --release --bin tern -q
BIN=${CARGO_TARGET_DIR:-target}/release/tern

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

run_side() {
  local side=$1 work port pid
  work=$(mktemp -d -p "$(pwd)/$OUT" backlog.XXXXXX)
  port=$(free_port)
  case $side in
    tern)
      cat > "$work/tern.toml" <<CONF
[[listeners]]
bind = "127.0.0.1:$port"
[limits]
max_queued_messages = $((N + 1000))
max_queued_bytes = $(( (N + 1000) * (SIZE + 1024) ))
[auth]
allow_anonymous = true
[storage]
dir = "$work/data"
CONF
      taskset -c 0 "$BIN" -c "$work/tern.toml" > "$work/log" 2>&1 &
      pid=$!
      ;;
    mosquitto)
      [ -x "$MOSQUITTO" ] || { echo "mosquitto missing (apt-get install mosquitto)" >&2; exit 1; }
      cat > "$work/mosquitto.conf" <<CONF
listener $port 127.0.0.1
allow_anonymous true
max_queued_messages $((N + 1000))
max_inflight_messages 64
persistence false
CONF
      taskset -c 0 "$MOSQUITTO" -c "$work/mosquitto.conf" > "$work/log" 2>&1 &
      pid=$!
      ;;
  esac
  for _ in $(seq 100); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1',$port),1)" 2>/dev/null && break
    sleep 0.1
  done
  PORT=$port BROKER_PID=$pid N=$N SIZE=$SIZE PUBS=$PUBS LABEL="$side" \
    taskset -c 1 python3 benches/session_backlog.py | tee -a "$RESULTS"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -rf "$work"
}

for side in $SIDES; do
  run_side "$side"
done
