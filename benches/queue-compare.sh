#!/usr/bin/env bash
# Work queues: Tern vs RabbitMQ 3.10 quorum queue, same load, same pinning.
#
#   bash benches/queue-compare.sh              # ~5 minutes
#   SIDES=rabbitmq bash benches/queue-compare.sh
#   CLIENT_CPUS=0,1 bash benches/queue-compare.sh   # load generators on both CPUs
#   SIDES=rabbitmq RMQ_PREFETCH=256 OUT=target/bench/qc-p256 bash benches/queue-compare.sh
#
# Each run gets a fresh broker (and a fresh store): broker on CPU 0 (taskset), load
# generator on CPU 1. Runs: 16 publishers, 1 / 4 / 16 consumers at 64 B and at
# 1 KB (publish DURATION seconds, consumers get up to DRAIN more), and a backlog
# fill (16 publishers, FILL seconds, no consumer) drained by 4 consumers.
#
# Tern: `tern-bench --scenario queue --qos 1` (QoS 1 publishers with INFLIGHT
# unacknowledged each, consumers of one `$queue/...` queue created by a
# subscription, prefetch 16: Tern's default), the durable store with its default
# durability = "always" (fsync before the PUBACK), the caps of a queue created by
# a subscription raised by TERN_LIMITS__AUTO_QUEUE_MAX_LENGTH / _MAX_BYTES.
#
# RabbitMQ: Debian's rabbitmq-server (3.10.8 in Debian 12), a node of its own
# (RABBITMQ_NODENAME, ports, RABBITMQ_MNESIA_BASE / LOG_BASE in a temp dir under
# target/bench, so on the same filesystem as Tern's store; its own epmd on a free
# port; no plugins; RabbitMQ's default Erlang flags, which with the CPU 0 affinity
# give one scheduler), driven by benches/rabbitmq_queue.py (pika): a durable quorum
# queue, persistent messages, publisher confirms with the same window INFLIGHT per
# publisher, basic_qos(prefetch_count=16), one basic.ack per message.
#
# Peers: rabbitmq-server (apt-get) and pika (pip) are installed when missing
# (INSTALL=0: fail instead); a system RabbitMQ service that apt starts is stopped
# and disabled. A missing peer, a broker that does not start or a run that fails
# makes the script exit non-zero: nothing is skipped.
#
# While measuring it holds LOCK (default /tmp/tern-cargo.lock, the lock cargo
# builds on this machine take), so a build does not share the 2 CPUs with a run.
# Writes target/bench/queue-compare/{results.jsonl,queue-compare.md}.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-4}      # seconds of publishing
DRAIN=${DRAIN:-20}           # seconds the consumers get after publishing
FILL=${FILL:-3}              # seconds of backlog fill (no consumer)
PUBS=${PUBS:-16}
INFLIGHT=${INFLIGHT:-64}     # unacknowledged publishes per publisher (tern-bench's default)
SIDES=${SIDES:-"tern rabbitmq"}
BROKER_CPUS=${BROKER_CPUS:-0}
CLIENT_CPUS=${CLIENT_CPUS:-1}
INSTALL=${INSTALL:-1}
LOCK=${LOCK:-/tmp/tern-cargo.lock}
RMQ_PREFETCH=${RMQ_PREFETCH:-16}  # RabbitMQ only (Tern's queue created by a subscription has prefetch 16)
OUT=${OUT:-target/bench/queue-compare}
RMQ_BIN=${RMQ_BIN:-/usr/lib/rabbitmq/bin}
mkdir -p "$OUT"

# label subs size fill_first
RUNS=(
  "c1_64b 1 64 0"
  "c4_64b 4 64 0"
  "c16_64b 16 64 0"
  "c1_1k 1 1024 0"
  "c4_1k 4 1024 0"
  "c16_1k 16 1024 0"
  "fill_c4_64b 4 64 1"
)

die() { echo "queue-compare: $*" >&2; exit 1; }

# ------------------------------------------------------------------ peers
need_rabbit=0; need_pika=0
case " $SIDES " in *" rabbitmq "*)
  [ -x "$RMQ_BIN/rabbitmq-server" ] && [ -x "$RMQ_BIN/rabbitmqctl" ] || need_rabbit=1
  python3 -c 'import pika' 2>/dev/null || need_pika=1 ;;
esac
if [ "$need_rabbit$need_pika" != 00 ] && [ "$INSTALL" != 1 ]; then
  die "missing peer: $([ $need_rabbit = 1 ] && echo 'rabbitmq-server (apt-get install -y rabbitmq-server) ')$([ $need_pika = 1 ] && echo 'pika (pip install pika)')"
fi
if [ "$need_rabbit" = 1 ]; then
  echo "== installing rabbitmq-server (apt-get)" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null
  # This script runs its own node: no system service left running or starting at boot.
  if command -v systemctl >/dev/null && systemctl disable --now rabbitmq-server >/dev/null 2>&1; then :; else
    (HOME=/var/lib/rabbitmq "$RMQ_BIN/rabbitmqctl" stop >/dev/null 2>&1 || true)
  fi
  [ -x "$RMQ_BIN/rabbitmq-server" ] || die "rabbitmq-server did not install"
fi
if [ "$need_pika" = 1 ]; then
  echo "== installing pika (pip)" >&2
  pip install -q pika 2>/dev/null || pip install -q --break-system-packages pika
  python3 -c 'import pika' || die "pika did not install"
fi
for t in taskset flock; do command -v $t >/dev/null || die "missing $t"; done

echo "== building tern and tern-bench (release, under $LOCK)" >&2
flock "$LOCK" cargo build --release -q --bin tern --bin tern-bench
TERN=target/release/tern
BENCH=target/release/tern-bench

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# CPU use of a broker and its load generator: samples /proc/PID/stat every 100 ms
# until the load generator exits; prints "t broker_cpu_s client_cpu_s broker_rss_kb".
SAMPLER=$OUT/sample.py
cat >"$SAMPLER" <<'PY'
import os, sys, time
broker, client = int(sys.argv[1]), int(sys.argv[2])
tick = os.sysconf("SC_CLK_TCK")
def cpu(pid):
    try:
        f = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / tick
    except Exception:
        return None
t0 = time.monotonic()
last_client = 0.0
while True:
    c = cpu(client)
    if c is None:
        break
    last_client = c
    print("%.3f %s %.2f" % (time.monotonic() - t0, cpu(broker), c), flush=True)
    time.sleep(0.1)
PY
# util FILE T0 T1: broker and client CPU over [T0, T1] s after the start, as a
# share of one CPU.
util() {
  python3 - "$@" <<'PY'
import sys
path, t0, t1 = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
rows = [l.split() for l in open(path) if l.strip()]
rows = [(float(t), float(b), float(c)) for t, b, c in rows if b != "None"]
if len(rows) < 2:
    print("null null"); sys.exit()
near = lambda t: min(rows, key=lambda r: abs(r[0] - t))
a, b = near(t0), near(t1)
dt = b[0] - a[0]
if dt <= 0.2:
    print("null null"); sys.exit()
print("%.2f %.2f" % ((b[1] - a[1]) / dt, (b[2] - a[2]) / dt))
PY
}

# ------------------------------------------------------------------ cleanup
TERN_PID=""; RMQ_PID=""; BEAM_PID=""; EPMD_PID=""; RMQ_DIR=""
cleanup() {
  if [ -n "$TERN_PID" ]; then kill "$TERN_PID" 2>/dev/null || true; wait "$TERN_PID" 2>/dev/null || true; TERN_PID=""; fi
  stop_rabbit
}
trap cleanup EXIT

# ------------------------------------------------------------------ tern
run_tern() { # label subs size fill_first
  local label=$1 subs=$2 size=$3 fill=$4 port data args line bpid err
  port=$(free_port)
  data=$OUT/tern-data
  rm -rf "$data"
  TERN_LIMITS__AUTO_QUEUE_MAX_LENGTH=2000000 TERN_LIMITS__AUTO_QUEUE_MAX_BYTES=2147483648 \
    taskset -c "$BROKER_CPUS" "$TERN" --listen "127.0.0.1:$port" --data-dir "$data" --log warn \
    >"$OUT/tern-$label.log" 2>&1 &
  TERN_PID=$!
  for _ in $(seq 1 100); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1',$port),0.2)" 2>/dev/null && break
    kill -0 "$TERN_PID" 2>/dev/null || { cat "$OUT/tern-$label.log" >&2; die "tern did not start"; }
    sleep 0.1
  done
  sleep 0.5
  args=(--addr "127.0.0.1:$port" --pid "$TERN_PID" --label "$label" --json --scenario queue --qos 1
        --pubs "$PUBS" --subs "$subs" --size "$size" --inflight "$INFLIGHT" --drain "${DRAIN}s")
  if [ "$fill" = 1 ]; then args+=(--fill-first --duration "${FILL}s"); else args+=(--duration "${DURATION}s"); fi
  err=$OUT/tern-$label.err
  taskset -c "$CLIENT_CPUS" "$BENCH" "${args[@]}" >"$OUT/tern-$label.json" 2>"$err" &
  bpid=$!
  taskset -c "$CLIENT_CPUS" python3 "$SAMPLER" "$TERN_PID" "$bpid" >"$OUT/tern-$label.cpu" &
  local spid=$!
  wait "$bpid" || { cat "$err" >&2; die "tern-bench failed ($label)"; }
  wait "$spid" || true
  local rss_end; rss_end=$(awk '/VmRSS/ {print $2}' "/proc/$TERN_PID/status")
  local disk; disk=$(du -sb "$data" | cut -f1)
  kill "$TERN_PID"; wait "$TERN_PID" 2>/dev/null || true; TERN_PID=""
  rm -rf "$data"
  line=$(cat "$OUT/tern-$label.json")
  [ -n "$line" ] || die "tern-bench printed nothing ($label)"
  # CPU while publishing (0.5 s .. end of publishing); with a fill: while draining.
  local cpu
  if [ "$fill" = 1 ]; then
    local backlog rss_filled
    backlog=$(sed -n 's/^backlog of \([0-9]*\) messages.*/\1/p' "$err")
    rss_filled=$(sed -n 's/.*end of the fill \([0-9]*\) KB.*/\1/p' "$err")
    [ -n "$backlog" ] || die "tern-bench did not report the backlog ($label)"
    local fillcpu drain_s
    fillcpu=$(util "$OUT/tern-$label.cpu" 0.5 "$FILL")
    drain_s=$(python3 -c "import json,sys; r=json.loads(sys.argv[1]); print(r['received']/max(1,r['rate']))" "$line")
    cpu=$(util "$OUT/tern-$label.cpu" "$(python3 -c "print($FILL+0.7)")" "$(python3 -c "print($FILL+0.5+$drain_s)")")
    line=$(python3 -c "
import json,sys
r=json.loads(sys.argv[1]); f=sys.argv[2].split()
r.update(backlog=int(sys.argv[3]), rss_filled_kb=int(sys.argv[4]), fill_rate=round(int(sys.argv[3])/$FILL),
         fill_broker_cpu=None if f[0]=='null' else float(f[0]), fill_client_cpu=None if f[1]=='null' else float(f[1]))
print(json.dumps(r))" "$line" "$fillcpu" "$backlog" "$rss_filled")
  else
    cpu=$(util "$OUT/tern-$label.cpu" 0.5 "$DURATION")
  fi
  python3 -c "
import json,sys
r=json.loads(sys.argv[1]); c=sys.argv[2].split()
r.update(broker='tern', size=$size, subs=$subs, rss_end_kb=int(sys.argv[3]), data_dir_bytes=int(sys.argv[4]),
         broker_cpu=None if c[0]=='null' else float(c[0]), client_cpu=None if c[1]=='null' else float(c[1]))
print(json.dumps(r))" "$line" "$cpu" "$rss_end" "$disk" >>"$RESULTS"
  echo "   tern $label: $(tail -1 "$RESULTS")" >&2
}

# ------------------------------------------------------------------ rabbitmq
rmqctl() { taskset -c "$CLIENT_CPUS" "$RMQ_BIN/rabbitmqctl" -n "$RABBITMQ_NODENAME" "$@"; }

start_rabbit() {
  RMQ_DIR=$(mktemp -d "$PWD/$OUT/rabbitmq.XXXXXX")
  local port dist epmd
  port=$(free_port); dist=$(free_port); epmd=$(free_port)
  export HOME=$RMQ_DIR   # the Erlang cookie, shared by the node and rabbitmqctl
  export RABBITMQ_NODENAME="tern-bench-$$@localhost"
  export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT=$port RABBITMQ_DIST_PORT=$dist
  export ERL_EPMD_PORT=$epmd ERL_EPMD_ADDRESS=127.0.0.1
  export RABBITMQ_MNESIA_BASE=$RMQ_DIR/mnesia RABBITMQ_LOG_BASE=$RMQ_DIR/log
  export RABBITMQ_CONF_ENV_FILE=$RMQ_DIR/rabbitmq-env.conf RABBITMQ_CONFIG_FILE=$RMQ_DIR/rabbitmq.conf
  export RABBITMQ_ADVANCED_CONFIG_FILE=$RMQ_DIR/advanced.config RABBITMQ_ENABLED_PLUGINS_FILE=$RMQ_DIR/enabled_plugins
  export RABBITMQ_PID_FILE=$RMQ_DIR/pid
  export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
  : >"$RABBITMQ_CONF_ENV_FILE"
  echo '[].' >"$RABBITMQ_ENABLED_PLUGINS_FILE"
  echo '[].' >"$RABBITMQ_ADVANCED_CONFIG_FILE"
  printf 'log.file.level = warning\n' >"$RABBITMQ_CONFIG_FILE"
  python3 -c 'import secrets; print(secrets.token_hex(16).upper(), end="")' >"$HOME/.erlang.cookie"
  chmod 400 "$HOME/.erlang.cookie"
  RMQ_PORT=$port
  # Our own epmd, a child of this script (not a daemon left behind).
  epmd -port "$epmd" -address 127.0.0.1 >/dev/null 2>&1 &
  EPMD_PID=$!
  taskset -c "$BROKER_CPUS" "$RMQ_BIN/rabbitmq-server" >"$RMQ_DIR/stdout" 2>&1 &
  RMQ_PID=$!   # the rabbitmq-server script, which waits for the VM
  local up=0
  for _ in $(seq 1 600); do
    kill -0 "$RMQ_PID" 2>/dev/null || break
    if python3 -c "import socket; socket.create_connection(('127.0.0.1',$port),0.2)" 2>/dev/null; then up=1; break; fi
    sleep 0.1
  done
  if [ "$up" != 1 ] || ! rmqctl -q await_startup --timeout 60 >/dev/null 2>&1; then
    cat "$RMQ_DIR/stdout" "$RMQ_DIR"/log/*.log >&2 2>/dev/null || true
    die "rabbitmq did not start"
  fi
  BEAM_PID=$(cat "$RABBITMQ_PID_FILE" 2>/dev/null || true)
  [ -n "$BEAM_PID" ] && grep -q beam "/proc/$BEAM_PID/comm" 2>/dev/null || die "no beam.smp at the node's pid ($BEAM_PID)"
  [ "$(taskset -p "$BEAM_PID" | awk '{print $NF}')" = "$(taskset -p "$RMQ_PID" | awk '{print $NF}')" ] || die "beam.smp is not pinned like the script"
}

stop_rabbit() {
  if [ -n "$RMQ_PID" ]; then
    rmqctl -q stop >/dev/null 2>&1 || kill "$RMQ_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$RMQ_PID" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$RMQ_PID" 2>/dev/null; then
      [ -n "$BEAM_PID" ] && kill -9 "$BEAM_PID" 2>/dev/null || true
      kill -9 "$RMQ_PID" 2>/dev/null || true
    fi
    wait "$RMQ_PID" 2>/dev/null || true
    RMQ_PID=""; BEAM_PID=""
  fi
  if [ -n "$EPMD_PID" ]; then kill "$EPMD_PID" 2>/dev/null || true; wait "$EPMD_PID" 2>/dev/null || true; EPMD_PID=""; fi
  if [ -n "$RMQ_DIR" ]; then rm -rf "$RMQ_DIR"; RMQ_DIR=""; fi
}

RMQ_INFO=""
run_rabbit() { # label subs size fill_first
  local label=$1 subs=$2 size=$3 fill=$4 args line
  start_rabbit
  if [ -z "$RMQ_INFO" ]; then
    RMQ_INFO=$(rmqctl -q eval '{rabbit_misc:version(), erlang:system_info(otp_release), erlang:system_info(schedulers_online), erlang:system_info(dirty_io_schedulers)}.')
    echo "   rabbitmq {version, OTP, schedulers online, dirty IO schedulers}: $RMQ_INFO" >&2
  fi
  sleep 0.5
  args=(--port "$RMQ_PORT" --pid "$BEAM_PID" --label "$label" --json --pubs "$PUBS" --subs "$subs"
        --size "$size" --inflight "$INFLIGHT" --prefetch "$RMQ_PREFETCH" --drain "$DRAIN" --keep-queue)
  if [ "$fill" = 1 ]; then args+=(--fill-first --duration "$FILL"); else args+=(--duration "$DURATION"); fi
  line=$(taskset -c "$CLIENT_CPUS" python3 benches/rabbitmq_queue.py "${args[@]}" 2>"$OUT/rabbitmq-$label.err") \
    || { cat "$OUT/rabbitmq-$label.err" >&2; echo "$line" >&2; die "rabbitmq_queue.py failed ($label)"; }
  local disk; disk=$(du -sb "$RMQ_DIR/mnesia" | cut -f1)
  stop_rabbit
  python3 -c "
import json,sys
r=json.loads(sys.argv[1]); r.update(data_dir_bytes=int(sys.argv[2])); print(json.dumps(r))" "$line" "$disk" >>"$RESULTS"
  echo "   rabbitmq $label: $(tail -1 "$RESULTS")" >&2
}

# ------------------------------------------------------------------ runs
RESULTS=$OUT/results.jsonl
: >"$RESULTS"
exec 9>"$LOCK"
echo "== waiting for $LOCK (no cargo build during the runs)" >&2
flock 9
echo "== $(date -u '+%Y-%m-%d %H:%M UTC'), load average $(cut -d' ' -f1-3 /proc/loadavg); broker on CPU $BROKER_CPUS, load generators on CPU $CLIENT_CPUS" >&2
for side in $SIDES; do
  echo "== $side" >&2
  for r in "${RUNS[@]}"; do
    set -- $r
    case $side in
      tern) run_tern "$@" ;;
      rabbitmq) run_rabbit "$@" ;;
      *) die "unknown side $side" ;;
    esac
  done
done
flock -u 9

python3 - "$RESULTS" "$CLIENT_CPUS" "$RMQ_INFO" "$PUBS" "$INFLIGHT" "$RMQ_PREFETCH" "$DURATION" "$DRAIN" "$FILL" <<'PY' | tee "$OUT/queue-compare.md"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = {}
for r in rows:
    by.setdefault(r["label"], {})[r["broker"]] = r
def k(n): return "%.1fk" % (n / 1000) if n < 100_000 else "%.0fk" % (n / 1000)
def ms(us): return "%.1f ms" % (us / 1000) if us < 1_000_000 else "%.2f s" % (us / 1e6)
def mb(kb): return "?" if kb is None else "%.0f MB" % (kb / 1024)
def cpu(r, b="broker_cpu", c="client_cpu"):
    f = lambda v: "?" if v is None else "%.2f" % v
    return "%s / %s" % (f(r.get(b)), f(r.get(c)))
def losses(r):
    if r["broker"] == "tern":
        # tern-bench: published and not delivered by the end (still queued or lost).
        return "{:,} / {:,}".format(r["lost"], r["duplicates"])
    # Confirmed and not delivered by the end; the queue's depth at the end says
    # whether they were still there.
    s = "{:,}".format(r["lost"])
    if r["lost"]:
        s += " ({:,} still queued)".format(r["queued_at_end"])
    if r["not_delivered"] > r["lost"]:
        s += " +{:,} unconfirmed".format(r["not_delivered"] - r["lost"])
    return s + " / {:,}".format(r["duplicates"])
def published(r):
    return "{:,}".format(r["sent"])
titles = {"c1_64b": "1 consumer, 64 B", "c4_64b": "4 consumers, 64 B", "c16_64b": "16 consumers, 64 B",
          "c1_1k": "1 consumer, 1 KB", "c4_1k": "4 consumers, 1 KB", "c16_1k": "16 consumers, 1 KB",
          "fill_c4_64b": "backlog fill, then 4 consumers drain, 64 B"}
pubs, inflight, prefetch, duration, drain, fill = sys.argv[4:10]
print("%s publishers, each with at most %s unacknowledged (Tern: QoS 1 inflight; RabbitMQ: unconfirmed); "
      "prefetch 16 (Tern) / %s (RabbitMQ); %s s of publishing, up to %s s more to drain (fill: %s s); "
      "broker on CPU 0, load generator on CPU %s. RabbitMQ {version, OTP, schedulers, dirty IO schedulers}: %s."
      % (pubs, inflight, prefetch, duration, drain, fill, sys.argv[2], sys.argv[3] or "-"))
print()
print("| run | Tern delivered | RabbitMQ delivered | Tern / RabbitMQ | >= 3x | latency p50 / p99 Tern | latency p50 / p99 RabbitMQ | RSS peak Tern | RSS peak RabbitMQ | published Tern / RabbitMQ | undelivered / dup Tern | undelivered / dup RabbitMQ | CPU broker / client Tern | CPU broker / client RabbitMQ |")
print("|---" * 14 + "|")
for label in ["c1_64b", "c4_64b", "c16_64b", "c1_1k", "c4_1k", "c16_1k", "fill_c4_64b"]:
    s = by.get(label, {})
    t, q = s.get("tern"), s.get("rabbitmq")
    cell = lambda r, f: f(r) if r else "-"
    ratio = "%.1fx" % (t["rate"] / q["rate"]) if t and q and q["rate"] else "-"
    three = ("yes" if t["rate"] >= 3 * q["rate"] else "no") if t and q else "-"
    print("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
        titles[label],
        cell(t, lambda r: k(r["rate"]) + " msg/s"), cell(q, lambda r: k(r["rate"]) + " msg/s"), ratio, three,
        cell(t, lambda r: "%s / %s" % (ms(r["p50_us"]), ms(r["p99_us"]))),
        cell(q, lambda r: "%s / %s" % (ms(r["p50_us"]), ms(r["p99_us"]))),
        cell(t, lambda r: mb(r["rss_peak_kb"])), cell(q, lambda r: mb(r["rss_peak_kb"])),
        "%s / %s" % (cell(t, published), cell(q, published)),
        cell(t, losses), cell(q, losses),
        cell(t, cpu), cell(q, cpu)))
t, q = by.get("fill_c4_64b", {}).get("tern"), by.get("fill_c4_64b", {}).get("rabbitmq")
print()
print("Backlog fill (no consumer), then the drain by 4 consumers (its rate is the row above):")
print()
print("| broker | backlog | fill rate (acknowledged) | RSS at the end of the fill | bytes of RSS per queued message | CPU broker / client while filling | CPU broker / client while draining | RSS after the drain | data dir after the drain |")
print("|---" * 9 + "|")
for name, r in (("Tern", t), ("RabbitMQ", q)):
    if not r:
        continue
    per = (r["rss_filled_kb"] - r["rss_idle_kb"]) * 1024 / max(1, r["backlog"]) if r.get("rss_idle_kb") else None
    print("| %s | {:,} | %s msg/s | %s | %s | %s | %s | %s | %s |".format(r["backlog"]) % (
        name, k(r["fill_rate"]), mb(r["rss_filled_kb"]), "?" if per is None else "%.0f B" % per,
        cpu(r, "fill_broker_cpu", "fill_client_cpu"), cpu(r), mb(r.get("rss_end_kb")),
        "%.0f MB" % (r["data_dir_bytes"] / 1e6)))
print()
print("Undelivered: published (Tern: all; RabbitMQ: confirmed) and not delivered when the drain time ran out; "
      "for RabbitMQ the queue's depth at the end shows whether they were still queued.")
print()
print("CPU: share of one core (1.00 = a full core), broker / load generator, sampled while publishing "
      "(from 0.5 s to the end of publishing; for the fill row: while draining). A load generator near "
      "1.00 per allowed CPU set the pace, not the broker.")
PY
