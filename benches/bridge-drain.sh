#!/usr/bin/env bash
# A bridge's store-and-forward: the remote (Mosquitto) is down while N QoS 1
# messages are published locally; then it comes back and the bridge drains its
# buffer. Reports the publish rate into the buffer, Tern's RSS during the
# outage, and the drain rate (buffer depth from the admin endpoint, sampled
# every 100 ms, from the remote's start to an empty buffer).
#
#   bash benches/bridge-drain.sh            # N=100000, 64-byte payloads
#   N=20000 SIZE=1024 bash benches/bridge-drain.sh
#
# Tern (release) on CPU 0 with its default durable store, Mosquitto 2 and the
# publishers (paho-mqtt, QoS 1) on CPU 1. Prints one JSON line. The drain counts
# what the buffer held (its depth) once the publishers were all acknowledged.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-100000}
SIZE=${SIZE:-64}
OUT=${OUT:-target/bench}
mkdir -p "$OUT"
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
[ -x "$MOSQUITTO" ] || { echo "mosquitto missing (apt-get install mosquitto)" >&2; exit 1; }
python3 -c "import paho.mqtt" || { echo "paho-mqtt missing (pip install paho-mqtt)" >&2; exit 1; }
cargo build --release --bin tern -q
BIN=${CARGO_TARGET_DIR:-target}/release/tern

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do python3 -c "import socket; socket.create_connection(('127.0.0.1',$1),1)" 2>/dev/null && return 0; sleep 0.1; done; return 1; }
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
now() { date +%s.%N; }

WORK=$(mktemp -d -p "$(pwd)/$OUT" bridge.XXXXXX)
trap 'kill $TERN $MOSQ 2>/dev/null || true; rm -rf "$WORK"' EXIT
REMOTE=$(free_port); LOCAL=$(free_port); ADMIN=$(free_port)
cat > "$WORK/mosquitto.conf" <<CONF
listener $REMOTE 127.0.0.1
allow_anonymous true
set_tcp_nodelay ${MOSQ_NODELAY:-true}
CONF
cat > "$WORK/tern.toml" <<CONF
[[listeners]]
bind = "127.0.0.1:$LOCAL"
[auth]
allow_anonymous = true
[storage]
dir = "$WORK/data"
[admin]
bind = "127.0.0.1:$ADMIN"
[[bridges]]
name = "cloud"
address = "127.0.0.1:$REMOTE"
keepalive = "5s"
topics = [{ filter = "sensors/#", direction = "out", qos = 1, remote_prefix = "gw1/" }]
CONF
taskset -c 0 "$BIN" -c "$WORK/tern.toml" > "$WORK/tern.log" 2>&1 & TERN=$!
MOSQ=
wait_port "$LOCAL"; wait_port "$ADMIN"
RSS_IDLE=$(rss_kb $TERN)
depth() { curl -s "http://127.0.0.1:$ADMIN/api/v1/queues/bridge-cloud" | python3 -c 'import json,sys; print(json.load(sys.stdin)["depth"])'; }

# The outage: publish N messages with the remote down.
T0=$(now)
taskset -c 1 python3 - "$LOCAL" "$N" "$SIZE" <<'PY'
# 4 publishers (paho-mqtt, 64 unacknowledged each); returns once Tern
# acknowledged every message (so every one is in the buffer, on disk).
import sys, threading
import paho.mqtt.client as mqtt
port, n, size = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
def pub(k, lo, hi):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{k}", protocol=mqtt.MQTTv311)
    c.max_inflight_messages_set(64); c.max_queued_messages_set(0)
    acked = threading.Semaphore(0); c.on_publish = lambda *a: acked.release()
    up = threading.Event(); c.on_connect = lambda *a: up.set()
    c.connect("127.0.0.1", port); c.loop_start(); up.wait(10)
    for i in range(lo, hi):
        c.publish("sensors/t", f"{i:07d}-".encode() + b"x" * max(0, size - 8), qos=1)
    for _ in range(lo, hi):
        if not acked.acquire(timeout=60): sys.exit("acks stopped")
    c.disconnect(); c.loop_stop()
per = n // 4
ts = [threading.Thread(target=pub, args=(k, k * per, (k + 1) * per)) for k in range(4)]
[t.start() for t in ts]; [t.join() for t in ts]
PY
T1=$(now)
sleep 1
D=$(depth)
RSS_OUTAGE=$(rss_kb $TERN)

# The remote comes back: time the drain.
taskset -c 1 "$MOSQUITTO" -c "$WORK/mosquitto.conf" > "$WORK/mosquitto.log" 2>&1 & MOSQ=$!
# The drain starts when the bridge is back (its reconnect backoff, up to 30 s,
# is not the drain's time).
for _ in $(seq 600); do
  grep -q "bridge connected" "$WORK/tern.log" && break
  sleep 0.05
done
T2=$(now)
while [ "$(depth)" != 0 ]; do
  sleep 0.1
  if python3 -c "import sys; sys.exit(0 if $(now) - $T2 < 300 else 1)"; then :; else echo "drain did not finish in 300 s" >&2; exit 1; fi
done
T3=$(now)
RSS_AFTER=$(rss_kb $TERN)
python3 -c "
import json
print(json.dumps({'messages': $N, 'size': $SIZE, 'buffered': $D,
  'publish_rate': round($N / ($T1 - $T0)), 'rss_idle_kb': $RSS_IDLE,
  'rss_outage_kb': $RSS_OUTAGE, 'drain_secs': round($T3 - $T2, 2),
  'drain_rate': round($D / ($T3 - $T2)), 'rss_after_kb': $RSS_AFTER}))"
