#!/usr/bin/env bash
# Load benchmark: Tern vs Mosquitto vs rumqttd, one after another, same scenarios,
# same pinning (broker on CPU 0, load generator on CPU 1), free loopback ports.
#
#   bash benches/compare.sh            # all brokers, ~2 minutes each
#   BROKERS="tern" bash benches/compare.sh
#   DURATION=5s bash benches/compare.sh
#
# Peers: Mosquitto from Debian (`apt-get install -y mosquitto`) and rumqttd from
# crates.io (`cargo install rumqttd --version 0.20.0`; not --locked: its lockfile pins metrics 0.22.1, which no longer compiles on current Rust); the script installs
# whichever is missing. rumqttd runs with its own default config (printed by
# `rumqttd generate-config`) with only the listen ports moved to free ones;
# Mosquitto with a minimal config (listener + allow_anonymous, its defaults
# otherwise). Prints one table with each figure and the ratio Tern / peer, and
# writes it to target/bench/compare.md.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-8s}
BROKERS=${BROKERS:-"tern mosquitto rumqttd"}
IDLE_CONNS=${IDLE_CONNS:-10000}
OUT=target/bench
mkdir -p "$OUT"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

echo "== building tern and tern-bench (release)" >&2
true
BENCH=target/release/tern-bench

for b in $BROKERS; do
  case $b in
    mosquitto)
      if ! [ -x /usr/sbin/mosquitto ] && ! command -v mosquitto >/dev/null; then
        echo "== installing mosquitto" >&2
        as_root apt-get update -qq && as_root apt-get install -y -qq mosquitto >/dev/null
      fi ;;
    rumqttd)
      if ! command -v rumqttd >/dev/null; then
        echo "== installing rumqttd 0.20.0 (cargo install, a few minutes)" >&2
        cargo install rumqttd --version 0.20.0 -q
      fi ;;
  esac
done
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
export PATH="$HOME/.cargo/bin:$PATH"

# Many idle connections need file descriptors on both sides.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

PID=""
start_broker() {
  local name=$1 port=$2
  case $name in
    tern)
      taskset -c 0 ${TERN_BIN:-target/release/tern} --listen "127.0.0.1:$port" --data-dir "$OUT/tern-data" --log warn \
        >"$OUT/tern.log" 2>&1 &
      ;;
    mosquitto)
      printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$port" >"$OUT/mosquitto.conf"
      taskset -c 0 "$MOSQUITTO" -c "$OUT/mosquitto.conf" >"$OUT/mosquitto.log" 2>&1 &
      ;;
    rumqttd)
      rumqttd generate-config >"$OUT/rumqttd.toml"
      # Only the ports move: v4 on ours, the rest on other free ports.
      python3 - "$OUT/rumqttd.toml" "$port" "$(free_port)" "$(free_port)" "$(free_port)" "$(free_port)" <<'PY'
import re, sys
path, v4, v5, ws, prom, console = sys.argv[1:]
text = open(path).read()
sections = {"v4.1": v4, "v5.1": v5, "ws.1": ws, "prometheus": prom, "console": console}
out, current = [], None
for line in text.splitlines():
    m = re.match(r"^\[([^\]]+)\]", line)
    if m:
        current = m.group(1)
    if current in sections and re.match(r"^\s*listen\s*=", line):
        line = 'listen = "127.0.0.1:%s"' % sections[current]
    out.append(line)
open(path, "w").write("\n".join(out) + "\n")
PY
      taskset -c 0 rumqttd -c "$OUT/rumqttd.toml" -q >"$OUT/rumqttd.log" 2>&1 &
      ;;
  esac
  PID=$!
  for _ in $(seq 1 100); do
    if python3 -c "import socket,sys; s=socket.create_connection(('127.0.0.1',$port),0.2)" 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  echo "$name did not start; log:" >&2
  cat "$OUT/$name.log" >&2
  exit 1
}

stop_broker() {
  kill "$PID" 2>/dev/null || true
  wait "$PID" 2>/dev/null || true
}

bench() {
  taskset -c 1 "$BENCH" --json --duration "$DURATION" "$@"
}

RESULTS="$OUT/results.jsonl"
: >"$RESULTS"
for b in $BROKERS; do
  port=$(free_port)
  echo "== $b on 127.0.0.1:$port" >&2
  start_broker "$b" "$port"
  sleep 0.5
  idle_rss=$(awk '/VmRSS/ {print $2}' "/proc/$PID/status")
  run() { # label, args...
    local label=$1; shift
    local line
    line=$(bench --addr "127.0.0.1:$port" --pid "$PID" --label "$label" "$@" 2>>"$OUT/bench-errors.log") || line='{"label":"'"$label"'","failed":true}'
    echo "{\"broker\":\"$b\",\"idle_rss_kb\":$idle_rss,\"r\":$line}" >>"$RESULTS"
    echo "   $label: $line" >&2
  }
  run fanin_q0 --scenario fan-in --qos 0 --pubs 16 --subs 1
  run fanin_q1 --scenario fan-in --qos 1 --pubs 16 --subs 1
  run fanin_q2 --scenario fan-in --qos 2 --pubs 16 --subs 1
  run fanout_q0 --scenario fan-out --qos 0 --subs 64
  run pairs_q1 --scenario pairwise --qos 1 --pubs 32
  # Latency is noisy on a shared VM: three runs, the table shows the median p99.
  for i in 1 2 3; do
    run "latency_q0_$i" --scenario fan-in --qos 0 --pubs 16 --subs 1 --rate 8000
  done
  run idle --scenario idle --connections "$IDLE_CONNS"
  stop_broker
  sleep 1
done

python3 - "$RESULTS" <<'PY' | tee "$OUT/compare.md"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = {}
idle = {}
for r in rows:
    by.setdefault(r["broker"], {})[r["r"]["label"]] = r["r"]
    idle[r["broker"]] = r["idle_rss_kb"]
for b, runs in by.items():
    lat = sorted((r for k, r in runs.items() if k.startswith("latency_q0_") and not r.get("failed")),
                 key=lambda r: r["p99_us"])
    if lat:
        runs["latency_q0"] = lat[len(lat) // 2]
brokers = [b for b in ["tern", "mosquitto", "rumqttd"] if b in by]
def fmt_rate(r):
    if not r or r.get("failed"): return "failed"
    s = "%.0fk msg/s" % (r["rate"] / 1000)
    if r.get("qos", 0) > 0 and r.get("lost"):
        s += ", lost %.0f%%" % (100.0 * r["lost"] / max(1, r["expected"]))
    elif r.get("qos", 0) == 0 and r.get("lost"):
        s += ", dropped %.0f%%" % (100.0 * r["lost"] / max(1, r["expected"]))
    return s
metrics = [
    ("fan-in QoS 0, 16->1, saturated", "fanin_q0", lambda r: r["rate"], fmt_rate),
    ("fan-in QoS 1, 16->1, saturated", "fanin_q1", lambda r: r["rate"], fmt_rate),
    ("fan-in QoS 2, 16->1, saturated", "fanin_q2", lambda r: r["rate"], fmt_rate),
    ("fan-out 1->64 QoS 0 (deliveries/s)", "fanout_q0", lambda r: r["rate"], fmt_rate),
    ("32 pairs QoS 1", "pairs_q1", lambda r: r["rate"], fmt_rate),
    ("p99 latency at 8,000 msg/s QoS 0 (median of 3)", "latency_q0", lambda r: r["p99_us"], lambda r: "%.2f ms" % (r["p99_us"] / 1000) if r and not r.get("failed") else "failed"),
    ("RSS peak under load (fan-in QoS 1)", "fanin_q1", lambda r: r["rss_peak_kb"], lambda r: "%.1f MB" % (r["rss_peak_kb"] / 1024) if r and r.get("rss_peak_kb") else "?"),
    ("RSS per idle connection", "idle", lambda r: r["kb_per_conn"], lambda r: "%.2f KB" % r["kb_per_conn"] if r and r.get("kb_per_conn") is not None else "?"),
    ("time to accept idle connections", "idle", lambda r: r["accept_secs"], lambda r: "%.2f s (%d conns)" % (r["accept_secs"], r["connections"]) if r and "accept_secs" in r else "?"),
]
print("| scenario | " + " | ".join(brokers) + " | " + " | ".join("tern/%s" % b for b in brokers if b != "tern") + " |")
print("|---" * (1 + len(brokers) + len([b for b in brokers if b != "tern"])) + "|")
print("| RSS idle | " + " | ".join("%.1f MB" % (idle[b] / 1024) for b in brokers) + " | " + " | ".join("%.2f" % (idle["tern"] / idle[b]) if "tern" in idle else "" for b in brokers if b != "tern") + " |")
for title, key, val, fmt in metrics:
    cells, ratios = [], []
    for b in brokers:
        r = by[b].get(key)
        cells.append(fmt(r) if r else "?")
    for b in brokers:
        if b == "tern": continue
        t, p = by.get("tern", {}).get(key), by[b].get(key)
        try:
            ratios.append("%.2f" % (val(t) / val(p)))
        except Exception:
            ratios.append("")
    print("| %s | %s | %s |" % (title, " | ".join(cells), " | ".join(ratios)))
PY
