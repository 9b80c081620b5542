#!/usr/bin/env python3
"""AMQP side of the RabbitMQ bridge test (tests/bridge_peers.rs), with pika.

  declare --port P --queue Q --key K
      A durable quorum queue Q (x-queue-type: quorum) bound to the exchange
      amq.topic (where RabbitMQ's MQTT plugin publishes, `/` in the MQTT topic
      becoming `.` in the routing key) with routing key K. Prints "declared".

  read --port P --queue Q --count N --timeout S
      Consume up to N messages from Q (manual acks, one basic.ack each) and
      print one line per message, in arrival order: "<routing key> <body>".
      Stops after N, or after S seconds in all; the caller counts the lines.

Exits non-zero (with the reason on stderr) when pika is missing or RabbitMQ
cannot be reached: the test then fails, it never skips.
"""

import argparse
import sys
import time

try:
    import pika
except ImportError:
    sys.exit("pika is not installed: run `bash .ci/run` (it installs the test peers)")


def connect(port):
    return pika.BlockingConnection(
        pika.ConnectionParameters(
            host="127.0.0.1",
            port=port,
            credentials=pika.PlainCredentials("guest", "guest"),
            connection_attempts=5,
            retry_delay=0.5,
        )
    )


def declare(a):
    conn = connect(a.port)
    ch = conn.channel()
    ch.queue_declare(queue=a.queue, durable=True, arguments={"x-queue-type": "quorum"})
    ch.queue_bind(queue=a.queue, exchange="amq.topic", routing_key=a.key)
    conn.close()
    print("declared", flush=True)


def read(a):
    conn = connect(a.port)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=100)
    deadline = time.monotonic() + a.timeout
    got = 0
    for method, _props, body in ch.consume(a.queue, auto_ack=False, inactivity_timeout=0.5):
        if method is not None:
            sys.stdout.write("%s %s\n" % (method.routing_key, body.decode("utf-8", "replace")))
            ch.basic_ack(method.delivery_tag)
            got += 1
        if got >= a.count or time.monotonic() >= deadline:
            break
    sys.stdout.flush()
    ch.cancel()
    conn.close()


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("declare")
    d.add_argument("--port", type=int, required=True)
    d.add_argument("--queue", required=True)
    d.add_argument("--key", required=True)
    r = sub.add_parser("read")
    r.add_argument("--port", type=int, required=True)
    r.add_argument("--queue", required=True)
    r.add_argument("--count", type=int, required=True)
    r.add_argument("--timeout", type=float, required=True)
    a = p.parse_args()
    {"declare": declare, "read": read}[a.cmd](a)


if __name__ == "__main__":
    main()
