#!/usr/bin/env python3
"""Work-queue load generator for RabbitMQ (AMQP 0-9-1, pika), the counterpart of
`tern-bench --scenario queue`.

One durable quorum queue (`x-queue-type: quorum`, a fresh name per run, deleted at
the end unless --keep-queue). `--pubs` publishers send persistent messages (delivery_mode=2) through
the default exchange with publisher confirms, each keeping at most `--inflight`
unconfirmed messages (a window refilled as confirms, single or `multiple`,
arrive: the counterpart of MQTT's inflight window). `--subs` competing consumers
take them with basic_qos(prefetch_count=`--prefetch`) and acknowledge each message
with its own basic.ack. Every body starts like tern-bench's payload: send time
(CLOCK_MONOTONIC, ns), per-publisher sequence number, publisher index (big-endian
u64, u64, u32), padded to `--size` bytes.

Publishers publish for `--duration` seconds; the consumers then get up to `--drain`
seconds to receive the rest (the run ends early once every published message was
received). With `--fill-first` there are no consumers while publishing: the
backlog builds, its size and the broker's RSS are read at the end of the fill,
then the consumers connect and drain it.

pika is pure Python, so the clients run in several processes (`--pub-procs`,
`--sub-procs`, 2 each by default), each running one pika SelectConnection IOLoop
for several connections. The script samples its processes' CPU time and the
broker's (`--pid`) and reports both as a share of one CPU while publishing (with
--fill-first: while draining) and after publishing: a client near 1.0 per allowed
CPU means Python, not RabbitMQ, set the pace.

Reported (text, or one JSON object with --json): published, confirmed, nacked,
delivered (unique), lost (confirmed but never delivered: still queued at the
end when the drain time was too short, see queued_at_end), duplicates (across all
consumers), delivered msg/s (unique deliveries over the span from the first to the
last delivery, at least half of --duration, as tern-bench computes it), latency
p50/p99/p99.9 from send to receipt, the broker's VmRSS idle / peak (sampled every
100 ms) and, with --fill-first, the backlog and RSS at the end of the fill.

  python3 benches/rabbitmq_queue.py --port 5672 --pid $(pidof beam.smp) --subs 4
"""

import argparse
import json
import multiprocessing as mp
import os
import struct
import sys
import threading
import time
from array import array

import pika
from pika.adapters.select_connection import IOLoop

HEADER = struct.Struct(">QQI")  # send time ns, sequence, publisher


def now_ns():
    return time.monotonic_ns()


def params(a):
    return pika.ConnectionParameters(
        host=a.host,
        port=a.port,
        credentials=pika.PlainCredentials(a.user, a.password),
        heartbeat=0,
        blocked_connection_timeout=None,
        connection_attempts=3,
        retry_delay=0.5,
    )


# ---------------------------------------------------------------- publishers


class Publisher:
    """One connection and channel in confirm mode, a window of unconfirmed messages."""

    def __init__(self, proc, idx, a):
        self.proc = proc
        self.idx = idx
        self.a = a
        self.ch = None
        self.seq = 0  # next sequence; delivery tag = seq + 1
        self.outstanding = set()  # delivery tags awaiting a confirm
        self.confirmed = bytearray()  # per sequence: 1 when confirmed
        self.nconfirmed = 0
        self.nacked = 0
        self.done = False
        self.pad = b"a" * (a.size - HEADER.size)
        self.props = pika.BasicProperties(delivery_mode=2)

    def open(self, ioloop):
        self.conn = pika.SelectConnection(
            params(self.a),
            on_open_callback=lambda c: c.channel(on_open_callback=self.on_channel),
            on_open_error_callback=lambda c, e: self.proc.fail("publisher %d: %s" % (self.idx, e)),
            on_close_callback=self.on_close,
            custom_ioloop=ioloop,
        )

    def on_close(self, conn, reason):
        if not self.done:
            self.proc.fail("publisher %d closed: %s" % (self.idx, reason))

    def on_channel(self, ch):
        self.ch = ch
        ch.confirm_delivery(ack_nack_callback=self.on_confirm, callback=lambda f: self.proc.ready_one())

    def fill(self):
        """Publish until the window is full (or the time is up)."""
        if self.proc.stopping(self):
            return
        a = self.a
        publish = self.ch.basic_publish
        q = a.queue
        while len(self.outstanding) < a.inflight:
            body = HEADER.pack(now_ns(), self.seq, self.idx) + self.pad
            publish("", q, body, self.props)
            self.seq += 1
            self.outstanding.add(self.seq)

    def settle(self, tag):
        self.outstanding.discard(tag)
        seq = tag - 1
        c = self.confirmed
        if len(c) <= seq:
            c.extend(bytes(seq + 1 - len(c) + 4096))
        c[seq] = 1
        self.nconfirmed += 1

    def on_confirm(self, frame):
        m = frame.method
        ack = isinstance(m, pika.spec.Basic.Ack)
        tags = [m.delivery_tag]
        if m.multiple:
            tags = [t for t in self.outstanding if t <= m.delivery_tag]
        for t in tags:
            if t not in self.outstanding:
                continue
            if ack:
                self.settle(t)
            else:
                self.outstanding.discard(t)
                self.nacked += 1
        self.fill()

    def result(self):
        return {
            "idx": self.idx,
            "sent": self.seq,
            "confirmed": self.nconfirmed,
            "nacked": self.nacked,
            "unconfirmed": len(self.outstanding),
            "confirmed_bits": bytes(self.confirmed[: self.seq]),
        }


class PublisherProc:
    def __init__(self, a, indices, ready_q, go, deadline, results):
        self.a = a
        self.indices = indices
        self.ready_q = ready_q
        self.go = go
        self.deadline = deadline
        self.results = results
        self.ioloop = IOLoop()
        self.pubs = [Publisher(self, i, a) for i in indices]
        self.nready = 0
        self.started = False
        self.end_ns = None
        self.errors = []

    def fail(self, msg):
        self.errors.append(msg)
        self.finish()

    def ready_one(self):
        self.nready += 1
        if self.nready == len(self.pubs):
            self.ready_q.put(("ready", os.getpid()))
            self.wait_go()

    def wait_go(self):
        if self.go.is_set():
            self.end_ns = self.deadline.value
            self.started = True
            for p in self.pubs:
                p.fill()
            self.tick()
        else:
            self.ioloop.call_later(0.002, self.wait_go)

    def stopping(self, _publisher):
        return not self.started or now_ns() >= self.end_ns

    def tick(self):
        # Publishing ends at the deadline; then wait (at most 2 s, like
        # tern-bench) for the outstanding confirms.
        t = now_ns()
        if t < self.end_ns:
            self.ioloop.call_later(0.05, self.tick)
            return
        if all(not p.outstanding for p in self.pubs) or t > self.end_ns + 2_000_000_000:
            self.finish()
        else:
            self.ioloop.call_later(0.01, self.tick)

    def finish(self):
        if getattr(self, "finished", False):
            return
        self.finished = True
        self.results.put(("pubs", [p.result() for p in self.pubs], self.errors))
        for p in self.pubs:
            p.done = True
            try:
                p.conn.close()
            except Exception:
                pass
        self.ioloop.call_later(0.5, self.ioloop.stop)

    def run(self):
        for p in self.pubs:
            p.open(self.ioloop)
        self.ioloop.start()


def publisher_main(a, indices, ready_q, go, deadline, results):
    PublisherProc(a, indices, ready_q, go, deadline, results).run()


# ----------------------------------------------------------------- consumers


class ConsumerProc:
    """Several consumers sharing one tally: per publisher, a count per sequence."""

    def __init__(self, a, n, ready_q, stop, counter, results):
        self.a = a
        self.n = n
        self.ready_q = ready_q
        self.stop = stop
        self.counter = counter
        self.results = results
        self.ioloop = IOLoop()
        self.seen = [bytearray() for _ in range(a.pubs)]
        self.lat = array("q")
        self.received = 0
        self.first = None
        self.last = 0
        self.nready = 0
        self.conns = []
        self.errors = []
        self.closing = False

    def open_one(self):
        a = self.a

        def on_channel(ch):
            ch.basic_qos(prefetch_count=a.prefetch, callback=lambda f: consume(ch))

        def consume(ch):
            ch.basic_consume(a.queue, self.on_message, auto_ack=False, callback=lambda f: self.ready_one())

        def on_close(conn, reason):
            if not self.closing:
                self.errors.append("consumer closed: %s" % (reason,))

        conn = pika.SelectConnection(
            params(a),
            on_open_callback=lambda c: c.channel(on_open_callback=on_channel),
            on_open_error_callback=lambda c, e: self.errors.append("consumer: %s" % (e,)),
            on_close_callback=on_close,
            custom_ioloop=self.ioloop,
        )
        self.conns.append(conn)

    def ready_one(self):
        self.nready += 1
        if self.nready == self.n:
            self.ready_q.put(("ready", os.getpid()))

    def on_message(self, ch, method, props, body):
        t = now_ns()
        sent, seq, pub = HEADER.unpack_from(body)
        self.received += 1
        if self.first is None:
            self.first = t
        self.last = t
        self.lat.append((t - sent) // 1000)
        s = self.seen[pub]
        if len(s) <= seq:
            s.extend(bytes(seq + 1 - len(s) + 4096))
        c = s[seq]
        if c < 255:
            s[seq] = c + 1
        ch.basic_ack(method.delivery_tag)

    def tick(self):
        self.counter.value = self.received
        if self.stop.is_set():
            self.finish()
        else:
            self.ioloop.call_later(0.05, self.tick)

    def finish(self):
        self.counter.value = self.received
        self.results.put(
            (
                "subs",
                {
                    "received": self.received,
                    "first": self.first,
                    "last": self.last,
                    "seen": [bytes(s) for s in self.seen],
                    "lat": self.lat.tobytes(),
                },
                self.errors,
            )
        )
        self.closing = True
        for c in self.conns:
            try:
                c.close()
            except Exception:
                pass
        self.ioloop.call_later(0.5, self.ioloop.stop)

    def run(self):
        for _ in range(self.n):
            self.open_one()
        self.ioloop.call_later(0.05, self.tick)
        self.ioloop.start()


def consumer_main(a, n, ready_q, stop, counter, results):
    ConsumerProc(a, n, ready_q, stop, counter, results).run()


# -------------------------------------------------------------- measurement


def rss_kb(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid):
    """utime + stime of a process (all its threads), in seconds."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    except (OSError, IndexError, ValueError):
        return None


class Sampler(threading.Thread):
    """Every 100 ms: the broker's RSS and CPU time, and the clients' CPU time."""

    def __init__(self, broker_pid):
        super().__init__(daemon=True)
        self.broker_pid = broker_pid
        self.client_pids = set()
        self.client_cpu_final = {}  # pid -> last CPU time read (a process may exit)
        self.samples = []  # (t_ns, rss_kb, broker_cpu_s, client_cpu_s)
        self.halt = threading.Event()

    def sample(self):
        rss = rss_kb(self.broker_pid) if self.broker_pid else None
        bcpu = cpu_s(self.broker_pid) if self.broker_pid else None
        for p in list(self.client_pids):
            c = cpu_s(p)
            if c is not None:
                self.client_cpu_final[p] = c
        self.samples.append((now_ns(), rss, bcpu, sum(self.client_cpu_final.values())))

    def run(self):
        while not self.halt.is_set():
            self.sample()
            time.sleep(0.1)

    def at(self, t_ns):
        """The sample nearest to t_ns."""
        return min(self.samples, key=lambda s: abs(s[0] - t_ns))

    def util(self, t0, t1):
        """Broker and client CPU over [t0, t1] as a share of one CPU."""
        a, b = self.at(t0), self.at(t1)
        dt = (b[0] - a[0]) / 1e9
        if dt <= 0.2:
            return None, None
        bu = (b[2] - a[2]) / dt if a[2] is not None and b[2] is not None else None
        return bu, (b[3] - a[3]) / dt

    def peak(self, t0=0, t1=None):
        vals = [s[1] for s in self.samples if s[1] is not None and s[0] >= t0 and (t1 is None or s[0] <= t1)]
        return max(vals) if vals else None


def percentile(sorted_vals, q):
    if not sorted_vals:
        return 0
    i = min(len(sorted_vals) - 1, int(q * len(sorted_vals)))
    return sorted_vals[i]


def split(n, k):
    """n items over at most k groups, as lists of indices."""
    k = max(1, min(n, k))
    return [list(range(n))[i::k] for i in range(k)]


def declare(a):
    conn = pika.BlockingConnection(params(a))
    ch = conn.channel()
    ch.queue_delete(a.queue)
    ch.queue_declare(a.queue, durable=True, arguments={"x-queue-type": "quorum"})
    conn.close()


def queue_depth(a):
    conn = pika.BlockingConnection(params(a))
    ch = conn.channel()
    ok = ch.queue_declare(a.queue, passive=True)
    conn.close()
    return ok.method.message_count


def delete(a):
    try:
        conn = pika.BlockingConnection(params(a))
        conn.channel().queue_delete(a.queue)
        conn.close()
    except Exception as e:  # reported, not fatal: the node is stopped after the run
        print("queue_delete failed: %s" % e, file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=5672)
    ap.add_argument("--user", default="guest")
    ap.add_argument("--password", default="guest")
    ap.add_argument("--pubs", type=int, default=16)
    ap.add_argument("--subs", type=int, default=1)
    ap.add_argument("--size", type=int, default=64, help="body bytes (at least 20)")
    ap.add_argument("--duration", type=float, default=4.0, help="publishing seconds")
    ap.add_argument("--drain", type=float, default=20.0, help="seconds to receive the rest")
    ap.add_argument("--inflight", type=int, default=64, help="unconfirmed messages per publisher")
    ap.add_argument("--prefetch", type=int, default=16)
    ap.add_argument("--fill-first", action="store_true")
    ap.add_argument("--pid", type=int, help="broker (beam.smp) pid: RSS and CPU")
    ap.add_argument("--pub-procs", type=int, default=2)
    ap.add_argument("--sub-procs", type=int, default=2)
    ap.add_argument("--queue", default="")
    ap.add_argument("--label", default="")
    ap.add_argument("--keep-queue", action="store_true", help="do not delete the queue at the end")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.size < HEADER.size:
        ap.error("--size must be at least %d" % HEADER.size)
    if not a.queue:
        a.queue = "bench-%d" % os.getpid()

    declare(a)
    sampler = Sampler(a.pid)
    rss_idle = rss_kb(a.pid) if a.pid else None
    sampler.start()
    ctx = mp.get_context("fork")
    ready_q, results = ctx.Queue(), ctx.Queue()
    stop, go = ctx.Event(), ctx.Event()
    deadline = ctx.Value("q", 0, lock=False)
    counters = []
    procs = []
    errors = []

    def start_consumers():
        groups = split(a.subs, a.sub_procs)
        for g in groups:
            c = ctx.Value("q", 0, lock=False)
            counters.append(c)
            p = ctx.Process(target=consumer_main, args=(a, len(g), ready_q, stop, c, results))
            p.start()
            procs.append(p)
            sampler.client_pids.add(p.pid)
        wait_ready(len(groups), "consumers")

    def wait_ready(n, what):
        for _ in range(n):
            try:
                ready_q.get(timeout=30)
            except Exception:
                sys.exit("%s did not get ready in 30 s" % what)

    if not a.fill_first:
        start_consumers()
    groups = split(a.pubs, a.pub_procs)
    for g in groups:
        p = ctx.Process(target=publisher_main, args=(a, g, ready_q, go, deadline, results))
        p.start()
        procs.append(p)
        sampler.client_pids.add(p.pid)
    wait_ready(len(groups), "publishers")
    t0 = now_ns()
    deadline.value = t0 + int(a.duration * 1e9)
    go.set()

    pub_results = []
    sub_results = []

    def collect(kind_wanted, n, timeout):
        got = []
        end = time.monotonic() + timeout
        while len(got) < n:
            try:
                kind, r, errs = results.get(timeout=max(0.1, end - time.monotonic()))
            except Exception:
                sys.exit("no result from the %s within %.0f s" % (kind_wanted, timeout))
            errors.extend(errs)
            (pub_results if kind == "pubs" else sub_results).append(r)
            if kind == kind_wanted:
                got.append(r)
        return got

    collect("pubs", len(groups), a.duration + 10)
    t_pub_end = now_ns()
    pubs = [p for r in pub_results for p in r]
    sent = sum(p["sent"] for p in pubs)
    confirmed = sum(p["confirmed"] for p in pubs)

    fill = {}
    if a.fill_first:
        time.sleep(0.2)
        sampler.sample()
        fill["rss_filled_kb"] = rss_kb(a.pid) if a.pid else None
        fill["backlog"] = queue_depth(a)
        fill["fill_rate"] = confirmed / a.duration
        bu, cu = sampler.util(t0 + 500_000_000, t0 + int(a.duration * 1e9))
        fill["fill_broker_cpu"], fill["fill_client_cpu"] = bu, cu
        print(
            "backlog of %d messages (%d confirmed): broker RSS at the end of the fill %s KB"
            % (fill["backlog"], confirmed, fill["rss_filled_kb"]),
            file=sys.stderr,
        )
        t_drain = now_ns()
        start_consumers()
        end = time.monotonic() + a.drain
    else:
        t_drain = t0
        end = time.monotonic() + max(0.0, a.duration + a.drain - (t_pub_end - t0) / 1e9)
    # Until every published message came or the drain time is up.
    while time.monotonic() < end and sum(c.value for c in counters) < sent:
        time.sleep(0.05)
    time.sleep(0.3)  # stragglers, duplicates
    t_stop = now_ns()
    stop.set()
    collect("subs", len(counters), 30)
    for p in procs:
        p.join(5)
    sampler.halt.set()
    sampler.join()
    sampler.sample()
    rss_end = rss_kb(a.pid) if a.pid else None
    # What is left in the queue (undelivered, and deliveries unacknowledged when
    # the consumers closed, which go back to the queue).
    queued_end = queue_depth(a)
    if not a.keep_queue:
        delete(a)

    # Merge the tallies.
    received = sum(s["received"] for s in sub_results)
    firsts = [s["first"] for s in sub_results if s["first"] is not None]
    first = min(firsts) if firsts else None
    last = max((s["last"] for s in sub_results), default=0)
    unique = dup = lost = 0
    confirmed_bits = {p["idx"]: p["confirmed_bits"] for p in pubs}
    for i in range(a.pubs):
        cb = confirmed_bits.get(i, b"")
        counts = [s["seen"][i] for s in sub_results]
        n = max([len(cb)] + [len(c) for c in counts])
        for seq in range(n):
            tot = 0
            for c in counts:
                if seq < len(c):
                    tot += c[seq]
            if tot:
                unique += 1
                dup += tot - 1
            elif seq < len(cb) and cb[seq]:
                lost += 1
    lat = array("q")
    for s in sub_results:
        lat.frombytes(s["lat"])
    lat = sorted(lat)
    window = (last - first) / 1e9 if first is not None else 0.0
    span = max(window, a.duration * 0.5, 1e-3)
    # CPU while publishing (with --fill-first: while draining), and while only
    # consumers ran (after publishing, until the last delivery).
    if a.fill_first:
        bu, cu = sampler.util(t_drain + 500_000_000, (last or t_stop))
        du = (None, None)
    else:
        bu, cu = sampler.util(t0 + 500_000_000, t0 + int(a.duration * 1e9))
        du = sampler.util(t_pub_end + 200_000_000, (last or t_stop))
    client_cpus = len(os.sched_getaffinity(0))
    r = {
        "label": a.label,
        "broker": "rabbitmq",
        "scenario": "queue",
        "pubs": a.pubs,
        "subs": a.subs,
        "size": a.size,
        "inflight": a.inflight,
        "prefetch": a.prefetch,
        "fill_first": a.fill_first,
        "sent": sent,
        "confirmed": confirmed,
        "nacked": sum(p["nacked"] for p in pubs),
        "unconfirmed": sum(p["unconfirmed"] for p in pubs),
        "received": received,
        "unique": unique,
        "lost": lost,
        "not_delivered": sent - unique,
        "duplicates": dup,
        "queued_at_end": queued_end,
        "rate": round(unique / span),
        "delivery_window_s": round(window, 3),
        "p50_us": percentile(lat, 0.5),
        "p99_us": percentile(lat, 0.99),
        "p999_us": percentile(lat, 0.999),
        "rss_idle_kb": rss_idle,
        "rss_peak_kb": sampler.peak(),
        "rss_end_kb": rss_end,
        # Share of one CPU while busy (publishing; with --fill-first: draining).
        "broker_cpu": None if bu is None else round(bu, 2),
        "client_cpu": None if cu is None else round(cu, 2),
        "drain_broker_cpu": None if du[0] is None else round(du[0], 2),
        "drain_client_cpu": None if du[1] is None else round(du[1], 2),
        "client_cpus_allowed": client_cpus,
        "client_procs": len(procs),
        "errors": errors,
    }
    for k, v in fill.items():
        r[k] = round(v, 2) if isinstance(v, float) else v
    if a.json:
        print(json.dumps(r))
    else:
        print(
            "queue (RabbitMQ quorum): published %d confirmed %d nacked %d | delivered %d unique "
            "(%d received) lost %d dup %d, %d still queued | %d msg/s delivered | latency us p50 %d p99 %d p99.9 %d | "
            "broker RSS idle %s KB peak %s KB end %s KB | CPU (1 = one core) broker %s client %s of %d, "
            "after publishing broker %s client %s"
            % (
                sent, confirmed, r["nacked"], unique, received, lost, dup, queued_end, r["rate"],
                r["p50_us"], r["p99_us"], r["p999_us"], rss_idle, r["rss_peak_kb"], rss_end,
                r["broker_cpu"], r["client_cpu"], client_cpus, r["drain_broker_cpu"], r["drain_client_cpu"],
            )
        )
        if a.fill_first:
            print(
                "fill: backlog %d, %.0f msg/s confirmed, RSS at the end of the fill %s KB, CPU broker %s client %s"
                % (fill["backlog"], fill["fill_rate"], fill["rss_filled_kb"], fill["fill_broker_cpu"], fill["fill_client_cpu"])
            )
        for e in errors:
            print("  error: %s" % e)
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
