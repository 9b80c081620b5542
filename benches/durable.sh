#!/usr/bin/env bash
# Durability benchmark: what Tern's durable store costs in throughput and in bytes
# written to the block device (flash wear), at rates from 1 msg/s to saturation.
#
#   bash benches/durable.sh                  # ~2 minutes
#   SCALE=0.2 bash benches/durable.sh        # durations x 0.2, a quick look
#   SCENARIOS="rate1 mem" bash benches/durable.sh
#   DATA_PARENT=/mnt/sdcard bash benches/durable.sh   # the store on that filesystem
#
# Every scenario: fan-in, PUBS (4) publishers -> 1 subscriber with a persistent
# session (clean_session=0), QoS 1, SIZE (64) byte payloads, against a freshly
# started broker with a fresh data dir ([storage] durability = "always"); the
# fixed-rate runs spread the publishers evenly (--stagger). The last scenario runs
# the same saturated load against `[storage] in_memory = true` for comparison.
# Broker on CPU 0, tern-bench on CPU 1, free loopback port.
#
# Reported per scenario: delivered msg/s, lost, the broker's write_bytes and wchar
# (from /proc/PID/io, publishing start to draining end) per delivered message, and
# the data dir size after the run (`du -sb`; `du -sB1` for the blocks allocated).
# Results depend on the filesystem of the data dir, which is printed with them.
# Prints one markdown table and writes it to target/bench/durable.md.
#
# Needs a broker with the [storage] config section.
set -euo pipefail
cd "$(dirname "$0")/.."

SCALE=${SCALE:-1}
PUBS=${PUBS:-4}
SIZE=${SIZE:-64}
SCENARIOS=${SCENARIOS:-"rate1 rate100 rate10000 max mem"}
DATA_PARENT=${DATA_PARENT:-target/bench}
KEEP_DATA=${KEEP_DATA:-0}
OUT=target/bench
mkdir -p "$OUT" "$DATA_PARENT"

echo "== building tern and tern-bench (release)" >&2
cargo build --release --bins -q
BIN_DIR=${CARGO_TARGET_DIR:-target}/release

WORK=$(mktemp -d -p "$(cd "$DATA_PARENT" && pwd)" durable.XXXXXX)
PID=""
cleanup() {
  if [ -n "$PID" ]; then
    kill "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
  fi
  if [ "$KEEP_DATA" = 1 ]; then
    echo "== kept $WORK" >&2
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT

# Private copies: another build into a shared CARGO_TARGET_DIR cannot swap the
# binaries under a running benchmark.
mkdir -p "$WORK/bin"
cp "$BIN_DIR/tern" "$BIN_DIR/tern-bench" "$WORK/bin/"
TERN=$WORK/bin/tern
BENCH=$WORK/bin/tern-bench

FS_STAT=$(stat -f -c %T "$WORK")
FS_DF=$(df --output=fstype,source "$WORK" | tail -1 | awk '{print $1 " on " $2}')
case $FS_STAT in
  tmpfs|ramfs)
    echo "warning: $WORK is on $FS_STAT: nothing reaches a block device, write_bytes will be 0; set DATA_PARENT" >&2 ;;
esac

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

secs() { # a duration in seconds times SCALE, at least 1
  python3 -c 'import sys; print("%ds" % max(1, round(float(sys.argv[1]) * float(sys.argv[2]))))' "$1" "$SCALE"
}

# Write the config of one scenario; $1 = label, $2 = durable|mem.
write_config() {
  local label=$1 kind=$2 cfg=$WORK/$1.toml
  {
    echo "[storage]"
    if [ "$kind" = mem ]; then
      echo "in_memory = true"
    else
      echo "dir = \"$WORK/$label/data\""
      echo "durability = \"always\""
    fi
    echo
    echo "[limits]"
    echo "max_queued_messages = 100000"
    echo "max_queued_bytes = 268435456"
  } >"$cfg"
  if ! "$TERN" check-config "$cfg" >&2; then
    echo "this tern does not accept the [storage] section: durable.sh needs the durable store" >&2
    exit 1
  fi
}

start_broker() { # label, port
  local label=$1 port=$2
  # The broker's working directory is the scenario's own, so anything it writes
  # outside the configured data dir (an in-memory broker should write nothing) stays
  # in view.
  mkdir -p "$WORK/$label"
  (cd "$WORK/$label" && exec taskset -c 0 "$TERN" --config "$WORK/$label.toml" \
    --listen "127.0.0.1:$port" --log warn) >"$OUT/durable-$label.log" 2>&1 &
  PID=$!
  for _ in $(seq 1 100); do
    if python3 -c "import socket,sys; s=socket.create_connection(('127.0.0.1',$port),0.2)" 2>/dev/null; then
      return 0
    fi
    if ! kill -0 "$PID" 2>/dev/null; then
      break
    fi
    sleep 0.1
  done
  echo "tern ($label) did not start; log:" >&2
  cat "$OUT/durable-$label.log" >&2
  exit 1
}

stop_broker() {
  kill "$PID" 2>/dev/null || true
  wait "$PID" 2>/dev/null || true
  PID=""
}

RESULTS="$OUT/durable.jsonl"
: >"$RESULTS"
for sc in $SCENARIOS; do
  case $sc in
    rate1) kind=durable; dur=30; args=(--rate 1 --stagger) ;;
    rate100) kind=durable; dur=20; args=(--rate 100 --stagger) ;;
    rate10000) kind=durable; dur=10; args=(--rate 10000 --stagger) ;;
    max) kind=durable; dur=10; args=() ;;
    mem) kind=mem; dur=10; args=() ;;
    *) echo "unknown scenario $sc (known: rate1 rate100 rate10000 max mem)" >&2; exit 2 ;;
  esac
  d=$(secs "$dur")
  port=$(free_port)
  write_config "$sc" "$kind"
  echo "== $sc: $kind broker on 127.0.0.1:$port, $d" >&2
  start_broker "$sc" "$port"
  sleep 0.5
  line=$(taskset -c 1 "$BENCH" --json --addr "127.0.0.1:$port" --pid "$PID" --io-pid "$PID" \
    --persistent --label "$sc" --scenario fan-in --qos 1 --pubs "$PUBS" --subs 1 \
    --size "$SIZE" --duration "$d" "${args[@]}" 2>>"$OUT/bench-errors.log") ||
    line='{"label":"'"$sc"'","failed":true}'
  # Sizes with the broker still running (its shutdown is not part of the run).
  data=$WORK/$sc/data
  if [ -e "$data" ]; then
    du_b=$(du -sb "$data" | cut -f1)
    du_alloc=$(du -sB1 "$data" | cut -f1)
  else
    du_b=null
    du_alloc=null
  fi
  other=$(find "$WORK/$sc" -mindepth 1 -maxdepth 1 ! -name data | wc -l)
  log_bytes=$(stat -c %s "$OUT/durable-$sc.log")
  echo "{\"kind\":\"$kind\",\"du_b\":$du_b,\"du_alloc\":$du_alloc,\"other_files\":$other,\"log_bytes\":$log_bytes,\"r\":$line}" >>"$RESULTS"
  echo "   $sc: $line" >&2
  stop_broker
  [ "$KEEP_DATA" = 1 ] || rm -rf "${WORK:?}/$sc"
  sleep 1
done

python3 - "$RESULTS" "$PUBS" "$SIZE" "$FS_STAT" "$FS_DF" "$(git rev-parse --short HEAD)" <<'PY' | tee "$OUT/durable.md"
import json, sys
path, pubs, size, fs_stat, fs_df, commit = sys.argv[1:]
rows = [json.loads(l) for l in open(path) if l.strip()]
titles = {
    "rate1": "1 msg/s", "rate100": "100 msg/s", "rate10000": "10,000 msg/s",
    "max": "saturated", "mem": "saturated, in_memory = true",
}
def b(v):
    if v is None: return "-"
    for unit, n in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if v >= n: return "%.1f %s" % (v / n, unit)
    return "%d B" % v
def per(v):
    return "-" if v is None else "{:,.0f} B".format(v) if v >= 10 else "%.1f B" % v
print("Fan-in %s -> 1 persistent subscriber, QoS 1, %s-byte payloads; commit %s; "
      "data dir filesystem: %s (stat -f: %s)." % (pubs, size, commit, fs_df, fs_stat))
print()
print("| scenario | msg/s delivered | delivered | lost | write_bytes/msg | wchar/msg | data dir (du -sb) | allocated (du -sB1) |")
print("|---|---|---|---|---|---|---|---|")
notes = []
for row in rows:
    r = row["r"]
    label = r.get("label", "?")
    title = titles.get(label, label)
    if r.get("failed"):
        print("| %s | failed | | | | | | |" % title)
        continue
    delivered = r["expected"] - r["lost"]
    lost = str(r["lost"])
    if r.get("errors"):
        lost += " (%d errors)" % r["errors"]
    print("| %s | %s | %s | %s | %s | %s | %s | %s |" % (
        title, "{:,.0f}".format(r["rate"]), "{:,}".format(delivered), lost,
        per(r.get("write_bytes_per_msg")), per(r.get("wchar_per_msg")),
        b(row["du_b"]), b(row["du_alloc"])))
    if r.get("cancelled_write_bytes"):
        notes.append("%s: %s of write_bytes cancelled (dirty pages dropped before writeback)"
                     % (title, b(r["cancelled_write_bytes"])))
    if row["other_files"]:
        notes.append("%s: the broker left %d other entries in its working directory"
                     % (title, row["other_files"]))
    if row["log_bytes"]:
        notes.append("%s: the broker logged %s (warnings; its log writes are in wchar/write_bytes too)"
                     % (title, b(row["log_bytes"])))
if notes:
    print()
    for n in notes:
        print("- " + n)
PY
