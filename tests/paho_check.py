#!/usr/bin/env python3
"""Interop check of an MQTT broker with paho-mqtt 2.x (run by tests/interop_paho.rs).

Usage: paho_check.py HOST PORT

For MQTT 3.1.1 and 5.0: a QoS 1 and a QoS 2 publish -> subscribe round trip (payload,
topic, QoS and, for v5, a user property checked), then a retained message delivered
with the retain flag to a subscriber that connects afterwards. Exits 0 on success;
otherwise prints what went wrong and exits 1 (2 if paho-mqtt is missing).
"""

import sys
import threading
import time
import uuid

try:
    import paho.mqtt.client as mqtt
    from paho.mqtt.properties import Properties
    from paho.mqtt.packettypes import PacketTypes
except ImportError as e:  # pragma: no cover
    print(f"paho-mqtt is not installed ({e}): pip install paho-mqtt", file=sys.stderr)
    sys.exit(2)

TIMEOUT = 5.0


class Fail(Exception):
    pass


class Client:
    """A paho client whose callbacks feed thread-safe state."""

    def __init__(self, host, port, protocol, name):
        self.protocol = protocol
        self.name = name
        self.cond = threading.Condition()
        self.connected = None
        self.subacks = []
        self.messages = []
        self.completed = set()  # mids whose publish flow finished (PUBACK / PUBCOMP)
        self.c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"paho-{name}-{uuid.uuid4().hex[:8]}",
            protocol=protocol,
        )
        self.c.on_connect = self._on_connect
        self.c.on_subscribe = self._on_subscribe
        self.c.on_message = self._on_message
        self.c.on_publish = self._on_publish
        if protocol == mqtt.MQTTv5:
            self.c.connect(host, port, keepalive=30, clean_start=True)
        else:
            self.c.connect(host, port, keepalive=30)
        self.c.loop_start()
        self.wait(lambda: self.connected is not None, "CONNACK")
        if self.connected.is_failure:
            raise Fail(f"{name}: connect refused: {self.connected}")

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        with self.cond:
            self.connected = reason_code
            self.cond.notify_all()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        with self.cond:
            self.subacks.append((mid, reason_codes))
            self.cond.notify_all()

    def _on_message(self, client, userdata, msg):
        with self.cond:
            self.messages.append(msg)
            self.cond.notify_all()

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        with self.cond:
            self.completed.add(mid)
            self.cond.notify_all()

    def wait(self, pred, what):
        deadline = time.monotonic() + TIMEOUT
        with self.cond:
            while not pred():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Fail(f"{self.name}: timed out waiting for {what}")
                self.cond.wait(left)

    def subscribe(self, topic, qos):
        result, mid = self.c.subscribe(topic, qos)
        if result != mqtt.MQTT_ERR_SUCCESS:
            raise Fail(f"{self.name}: subscribe failed locally: {result}")
        self.wait(lambda: any(m == mid for m, _ in self.subacks), f"SUBACK for {topic}")
        codes = [rc for m, rcs in self.subacks if m == mid for rc in rcs]
        if [int(getattr(rc, "value", rc)) for rc in codes] != [qos]:
            raise Fail(f"{self.name}: SUBACK for {topic}: {codes}, expected granted QoS {qos}")

    def publish(self, topic, payload, qos, retain=False, properties=None):
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise Fail(f"{self.name}: publish failed locally: {info.rc}")
        if qos > 0:
            self.wait(lambda: info.mid in self.completed, f"QoS {qos} flow of {topic}")

    def messages_on(self, topic, n):
        self.wait(
            lambda: len([m for m in self.messages if m.topic == topic]) >= n,
            f"{n} message(s) on {topic}",
        )
        return [m for m in self.messages if m.topic == topic]

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def check_version(host, port, protocol, label):
    base = f"paho/{label}/{uuid.uuid4().hex[:6]}"
    sub = Client(host, port, protocol, f"{label}-sub")
    pub = Client(host, port, protocol, f"{label}-pub")
    try:
        sub.subscribe(f"{base}/#", 2)
        for qos in (1, 2):
            topic = f"{base}/q{qos}"
            payload = f"{label}-qos{qos}".encode()
            props = None
            if protocol == mqtt.MQTTv5:
                props = Properties(PacketTypes.PUBLISH)
                props.UserProperty = [("check", f"q{qos}")]
            pub.publish(topic, payload, qos, properties=props)
            msgs = sub.messages_on(topic, 1)
            m = msgs[0]
            if m.payload != payload or m.qos != qos or m.retain:
                raise Fail(
                    f"{label}: QoS {qos} delivery: payload={m.payload!r} qos={m.qos} "
                    f"retain={m.retain}, expected {payload!r} qos={qos} retain=False"
                )
            if protocol == mqtt.MQTTv5:
                up = getattr(m.properties, "UserProperty", None)
                if up != [("check", f"q{qos}")]:
                    raise Fail(f"{label}: user property not passed through: {up!r}")
        # Retained: stored, then delivered with retain=1 to a later subscriber.
        rtopic = f"{base}-retained"
        pub.publish(rtopic, b"kept", 1, retain=True)
        late = Client(host, port, protocol, f"{label}-late")
        try:
            late.subscribe(rtopic, 1)
            m = late.messages_on(rtopic, 1)[0]
            if m.payload != b"kept" or not m.retain or m.qos != 1:
                raise Fail(
                    f"{label}: retained delivery payload={m.payload!r} retain={m.retain} "
                    f"qos={m.qos}, expected b'kept' retain=True qos=1"
                )
        finally:
            late.close()
        pub.publish(rtopic, b"", 1, retain=True)  # clean up
        time.sleep(0.2)  # any duplicate would show up now
        for qos in (1, 2):
            n = len(sub.messages_on(f"{base}/q{qos}", 1))
            if n != 1:
                raise Fail(f"{label}: QoS {qos} message delivered {n} times")
    finally:
        sub.close()
        pub.close()
    print(f"{label}: ok")


def main():
    if len(sys.argv) != 3:
        print("usage: paho_check.py HOST PORT", file=sys.stderr)
        return 1
    host, port = sys.argv[1], int(sys.argv[2])
    try:
        check_version(host, port, mqtt.MQTTv311, "v311")
        check_version(host, port, mqtt.MQTTv5, "v5")
    except Fail as e:
        print(f"FAIL: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # connection refused, protocol error in paho, ...
        print(f"FAIL: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print("all ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
