#!/usr/bin/env python3
"""An offline persistent session's backlog: RAM it costs the broker, and how fast
it drains when the client returns. Driven by benches/session-backlog.sh, which
starts the broker; this script is the client side (paho-mqtt).

Steps: a subscriber with a persistent session (MQTT 3.1.1, clean session 0)
subscribes to bench/# at QoS 1 and disconnects; PUBS publishers send N QoS 1
messages of SIZE bytes (each with up to INFLIGHT unacknowledged); the broker's
RSS is read (/proc/PID/status) before and after the fill; the subscriber
reconnects and receives everything, acknowledging each message (paho's
automatic PUBACK); the drain rate, losses, duplicates and order are reported,
and the RSS after the drain. Prints one JSON line.
"""

import json
import os
import sys
import threading
import time

import paho.mqtt.client as mqtt


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def client(cid, clean):
    c = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=cid,
        clean_session=clean,
        protocol=mqtt.MQTTv311,
    )
    c.max_inflight_messages_set(INFLIGHT)
    c.max_queued_messages_set(0)
    return c


def connect(c, port):
    done = threading.Event()
    c.on_connect = lambda *a: done.set()
    c.connect("127.0.0.1", port, keepalive=600)
    c.loop_start()
    if not done.wait(10):
        raise RuntimeError("no CONNACK")


def publish(port, start, count, payload_size):
    """Send `count` messages; paho keeps INFLIGHT unacknowledged and queues the
    rest. Returns once the broker acknowledged every one."""
    c = client(f"bench-pub-{start}", True)
    acked = threading.Semaphore(0)
    c.on_publish = lambda *a: acked.release()
    connect(c, port)
    for i in range(start, start + count):
        seq = str(i).encode()
        c.publish("bench/t", seq + b"-" + b"x" * max(0, payload_size - len(seq) - 1), qos=1)
    for _ in range(count):
        if not acked.acquire(timeout=120):
            raise RuntimeError("publisher: acknowledgements stopped")
    c.disconnect()
    c.loop_stop()


port = int(os.environ["PORT"])
pid = int(os.environ["BROKER_PID"])
N = int(os.environ.get("N", "100000"))
SIZE = int(os.environ.get("SIZE", "64"))
PUBS = int(os.environ.get("PUBS", "4"))
INFLIGHT = int(os.environ.get("INFLIGHT", "64"))
LABEL = os.environ.get("LABEL", "backlog")

sub = client("bench-sub", False)
subscribed = threading.Event()
sub.on_subscribe = lambda *a: subscribed.set()
connect(sub, port)
sub.subscribe("bench/#", qos=1)
if not subscribed.wait(10):
    sys.exit("no SUBACK")
sub.disconnect()
sub.loop_stop()
time.sleep(0.5)

rss_before = rss_kb(pid)
t0 = time.time()
per = N // PUBS
threads = [
    threading.Thread(target=publish, args=(port, k * per, per, SIZE)) for k in range(PUBS)
]
for t in threads:
    t.start()
for t in threads:
    t.join()
fill_secs = time.time() - t0
time.sleep(2)
rss_filled = rss_kb(pid)

total = per * PUBS
seen = set()
dups = 0
out_of_order = 0
last = {}
lock = threading.Lock()
all_in = threading.Event()


def on_message(c, userdata, msg):
    global dups, out_of_order
    seq = int(msg.payload.split(b"-", 1)[0])
    pub = seq // per
    with lock:
        if seq in seen:
            dups += 1
            return
        seen.add(seq)
        if last.get(pub, -1) > seq:
            out_of_order += 1
        last[pub] = seq
        if len(seen) == total:
            all_in.set()


sub = client("bench-sub", False)
sub.on_message = on_message
t1 = time.time()
connect(sub, port)
all_in.wait(120)
drain_secs = time.time() - t1
time.sleep(1)
sub.disconnect()
sub.loop_stop()
time.sleep(3)
rss_after = rss_kb(pid)
print(
    json.dumps(
        {
            "label": LABEL,
            "messages": total,
            "size": SIZE,
            "fill_rate": round(total / fill_secs),
            "rss_before_kb": rss_before,
            "rss_filled_kb": rss_filled,
            "bytes_per_msg": round((rss_filled - rss_before) * 1024 / total),
            "received": len(seen),
            "lost": total - len(seen),
            "duplicates": dups,
            "out_of_order": out_of_order,
            "drain_rate": round(len(seen) / drain_secs),
            "rss_after_drain_kb": rss_after,
        }
    )
)
