"""Fleet monitor ingest through a real mosquitto, against a bare paho subscriber.

Three measurements, each with its own mosquitto started here (memory only, one listener):

- ``ingest``: how fast the monitor stores, as a ratio to a paho subscriber that only counts. Both
  hold a persistent session (QoS 1, Receive Maximum 1000) registered before a backlog of
  ``BACKLOG`` telemetry windows from ``BACKLOG_DEVICES`` devices is published; then each in turn
  (never both at once) reconnects and drains the same backlog. The rate is messages over the time
  from the first message received to the last one counted (bare) or committed to SQLite (the
  monitor, ``edgeship fleet monitor`` as a process, as deployed). Draining a backlog measures what
  each consumer sustains at full speed, without the publishers competing for the CPU. Done
  ``INGEST_ROUNDS`` times; the median of the rounds' ratios is reported.
- ``lag``: ``LAG_DEVICES`` simulated devices each send one window every ``LAG_PERIOD_S`` seconds
  (spread evenly), for ``LAG_SECONDS``; lag is commit time minus the window's own time stamp,
  reported by the monitor. The devices are simulated by ``LAG_CLIENTS`` paho clients each
  publishing for an equal share of the device ids (the broker and the monitor see the same
  topics and payloads as from one connection per device; only the connection count differs).
- ``shared``: one monitor vs two monitors in one shared subscription group, both on PostgreSQL
  (the set-up several monitors need), draining the same backlog; reports the speed-up. Skipped,
  and said so in ``info``, when no PostgreSQL server answers at ``EDGESHIP_BENCH_PG``.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from benchmarks._common import BenchResult, Log, Ratio
from runtime.telemetry.messages import device_topic, encode, envelope

BACKLOG = 40_000
INGEST_ROUNDS = 3
"""Drains of the same kind of backlog; the median ratio is reported (the machine's load varies)."""
BACKLOG_DEVICES = 1_000
LAG_DEVICES = 10_000
LAG_PERIOD_S = 10.0
LAG_SECONDS = float(os.environ.get("EDGESHIP_BENCH_LAG_S", "30"))
LAG_CLIENTS = 20
RATIO_TARGET = 0.6
PG_URL = os.environ.get("EDGESHIP_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
EDGESHIP = [sys.executable, "-c", "from packager.cli import main; main()"]

BARE = r"""
import json, sys, threading, time
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
port, mode, expected = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
done, seen = threading.Event(), {"n": 0, "first": None, "last": None}
def on_message(client, userdata, msg):
    now = time.time()
    seen["first"] = seen["first"] or now
    seen["n"] += 1
    seen["last"] = now
    if seen["n"] >= expected:
        done.set()
def on_connect(client, userdata, flags, reason, props):
    client.subscribe("edgeship/v1/+/+/telemetry", qos=1)
client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bare", protocol=mqtt.MQTTv5)
client.on_message, client.on_connect = on_message, on_connect
client.on_subscribe = lambda *a: mode == "register" and done.set()
props = Properties(PacketTypes.CONNECT)
props.SessionExpiryInterval, props.ReceiveMaximum = 3600, 1000
client.connect("127.0.0.1", port, clean_start=False, properties=props)
client.loop_start()
done.wait(600)
client.disconnect()
client.loop_stop()
print(json.dumps(seen))
"""


class _Broker:
    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True)
        with __import__("socket").socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        config = folder / "mosquitto.conf"
        config.write_text(
            f"user {getpass.getuser()}\nallow_anonymous true\npersistence false\n"
            "max_queued_messages 1000000\nmax_queued_bytes 0\n"
            f"listener {self.port} 127.0.0.1\n"
        )
        self.log = (folder / "mosquitto.log").open("ab")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(config)], stdout=self.log,
                                     stderr=subprocess.STDOUT)  # fmt: skip
        _wait(lambda: _listening(self.port), "mosquitto listening")

    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()


def _listening(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _wait(check: Callable[[], Any], what: str, timeout: float = 300.0, step: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"bench_monitor: timed out waiting for {what}")
        time.sleep(step)


def window(device: str, seq: int) -> bytes:
    """A realistic telemetry window: one model, 8 features of drift, feedback (~900 bytes)."""
    doc = envelope("telemetry", "bench", device, seq, datetime.now(timezone.utc))
    doc.update(
        window_s=LAG_PERIOD_S,
        models={"digits": {
            "version": "1.2.0", "requests": 120, "errors": 1, "rejected": 2,
            "rejected_reasons": {"shape": 2},
            "latency_ms": {"p50": 0.41, "p95": 0.93, "p99": 1.31, "max": 2.02},
            "predictions": {"0": 40, "1": 41, "2": 39},
            "drift": {f"f{i}": {"psi": 0.01 * i, "js": 0.002 * i} for i in range(8)},
            "feedback": {"count": 12, "accuracy": 0.92},
        }},
        system={"rss_mb": 61.2, "cpu_percent": 3.1},
    )  # fmt: skip
    return encode(doc)


class _Publisher:
    """One paho client publishing QoS 1 (up to 1000 in flight), counting PUBACKs."""

    def __init__(self, port: int, client_id: str) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv5)  # fmt: skip
        self.client.max_inflight_messages_set(1000)
        self.acked = 0
        self._lock = threading.Lock()
        self.client.on_publish = self._on_publish
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_publish(self, *_: Any) -> None:
        with self._lock:
            self.acked += 1

    def send(self, device: str, seq: int) -> None:
        self.client.publish(device_topic("edgeship/v1", "bench", device, "telemetry"),
                            window(device, seq), qos=1)  # fmt: skip

    def close(self, expected: int) -> None:
        _wait(lambda: self.acked >= expected, "PUBACKs")
        self.client.disconnect()
        self.client.loop_stop()


def publish_backlog(port: int, count: int, first_seq: int = 0) -> None:
    publisher = _Publisher(port, f"backlog-{uuid.uuid4().hex[:6]}")
    for i in range(count):
        publisher.send(f"dev-{i % BACKLOG_DEVICES:05d}", first_seq + i // BACKLOG_DEVICES)
    publisher.close(count)


class _Monitor:
    """``edgeship fleet monitor`` as a process (as deployed), logging JSON to a file."""

    def __init__(self, work: Path, broker: _Broker, db: str, client_id: str,
                 share: Optional[str] = None) -> None:  # fmt: skip
        self.args = [*EDGESHIP, "fleet", "monitor", "--broker", broker.url(), "--db", db,
                     "--client-id", client_id, "--json-log"]  # fmt: skip
        if share:
            self.args += ["--share", share]
        self.log = work / f"{client_id}.log"
        self.proc: Optional[subprocess.Popen[bytes]] = None

    def start(self) -> _Monitor:
        before = self.log.read_text().count("connected to") if self.log.exists() else 0
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=log)
        _wait(lambda: self.log.read_text().count("connected to") > before, "monitor connected")
        return self

    def stop(self) -> dict[str, Any]:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=120)
        self.proc = None
        return dict(json.loads(out.decode().strip().splitlines()[-1]))


def _bare(port: int, mode: str, expected: int) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", BARE, str(port), mode, str(expected)],
                          capture_output=True, check=True, timeout=600)  # fmt: skip
    return dict(json.loads(done.stdout))


def _drain_rate(
    stored: Callable[[], int], first: Callable[[], Optional[float]], expected: int
) -> float:
    """Messages per second from the first one received to the poll that saw all stored."""
    _wait(lambda: stored() >= expected, "the backlog stored", step=0.05)
    end = time.time()
    began = first()
    assert began is not None
    return expected / (end - began)


class _SqliteStored:
    """Messages a monitor stores into a SQLite database from now on, and the first arrival
    among them.

    The poll runs every 50 ms on the machine being measured, so it must cost the same whatever
    the table holds (a ``COUNT(*)`` read every row: 12 ms a poll by the third round, a fifth of
    a core taken from the monitor and not from the bare subscriber). Rows are only ever added to
    ``fleet_seen``, so the rows stored since are the rowids above the highest one now.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.base = self._highest()

    def _highest(self) -> int:
        with contextlib.closing(sqlite3.connect(self.path)) as conn:
            (top,) = conn.execute("SELECT COALESCE(MAX(rowid), 0) FROM fleet_seen").fetchone()
        return int(top)

    def count(self) -> int:
        return self._highest() - self.base

    def first(self) -> Optional[float]:
        with contextlib.closing(sqlite3.connect(self.path)) as conn:
            (first,) = conn.execute(
                "SELECT MIN(received) FROM fleet_seen WHERE rowid > ?", (self.base,)
            ).fetchone()
        return None if first is None else float(first)


def ingest(work: Path, log: Log) -> list[tuple[float, float]]:
    """``INGEST_ROUNDS`` pairs of (bare, monitor) rates, each pair over the same backlog."""
    broker = _Broker(work / "broker-ingest")
    rounds = []
    try:
        db = work / "ingest.db"
        monitor = _Monitor(work, broker, f"sqlite:///{db}", "mon-ingest")
        monitor.start().stop()  # the persistent sessions exist before the backlog is sent
        _bare(broker.port, "register", 0)
        for n in range(INGEST_ROUNDS):
            log(
                f"monitor: round {n + 1}/{INGEST_ROUNDS}: a backlog of {BACKLOG} windows from "
                f"{BACKLOG_DEVICES} devices; the bare subscriber, then the monitor drain it"
            )
            publish_backlog(broker.port, BACKLOG, first_seq=n * BACKLOG)
            seen = _bare(broker.port, "drain", BACKLOG)
            bare_rate = seen["n"] / (seen["last"] - seen["first"])
            stored = _SqliteStored(db)
            monitor.start()
            monitor_rate = _drain_rate(stored.count, stored.first, BACKLOG)
            summary = monitor.stop()
            assert summary["stored"] == BACKLOG, summary
            rounds.append((bare_rate, monitor_rate))
    finally:
        broker.stop()
    return rounds


def lag(work: Path, log: Log) -> dict[str, Any]:
    broker = _Broker(work / "broker-lag")
    total = int(LAG_DEVICES * LAG_SECONDS / LAG_PERIOD_S)
    try:
        db = work / "lag.db"
        monitor = _Monitor(work, broker, f"sqlite:///{db}", "mon-lag").start()
        stored = _SqliteStored(db)
        log(f"monitor: {LAG_DEVICES} devices x 1 window / {LAG_PERIOD_S:g} s for "
            f"{LAG_SECONDS:g} s through {LAG_CLIENTS} connections")  # fmt: skip
        publishers = [_Publisher(broker.port, f"lag-{i}") for i in range(LAG_CLIENTS)]
        start = time.monotonic()
        interval = LAG_PERIOD_S / LAG_DEVICES
        for n in range(total):
            due = start + n * interval
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            device = n % LAG_DEVICES
            publishers[device % LAG_CLIENTS].send(f"dev-{device:05d}", n // LAG_DEVICES)
        sent_s = time.monotonic() - start
        for publisher in publishers:
            publisher.close(total // LAG_CLIENTS)
        _wait(lambda: stored.count() >= total, "every window stored")
        summary = monitor.stop()
    finally:
        broker.stop()
    summary["offered_msgs_per_s"] = total / sent_s
    return summary


def shared(work: Path, log: Log) -> Optional[tuple[float, float]]:
    try:
        import psycopg

        admin = psycopg.connect(PG_URL, autocommit=True, connect_timeout=5)
    except Exception as e:
        log(f"monitor: shared subscriptions skipped, no PostgreSQL at {PG_URL}: {e}")
        return None
    schemas = [f"edgeship_bench_{uuid.uuid4().hex[:10]}" for _ in range(2)]
    broker = _Broker(work / "broker-shared")
    try:
        for schema in schemas:
            admin.execute(f"CREATE SCHEMA {schema}")
        urls = [f"{PG_URL}?options=-csearch_path%3D{s}" for s in schemas]
        one = [_Monitor(work, broker, urls[0], "one-a", share="one")]
        two = [_Monitor(work, broker, urls[1], f"two-{x}", share="two") for x in "ab"]
        for monitor in one + two:
            monitor.start()
        for monitor in one + two:
            monitor.stop()
        log(f"monitor: publishing a backlog of {BACKLOG} windows for both groups")
        publish_backlog(broker.port, BACKLOG)
        rates = []
        for group, url in ((one, urls[0]), (two, urls[1])):
            log(f"monitor: {len(group)} monitor(s) on PostgreSQL drain it")
            for monitor in group:
                monitor.start()
            rates.append(_drain_rate(*_pg_stored(url), BACKLOG))
            stored = sum(m.stop()["stored"] for m in group)
            assert stored == BACKLOG, stored
    finally:
        broker.stop()
        for schema in schemas:
            admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        admin.close()
    return rates[0], rates[1]


def _pg_stored(url: str) -> tuple[Callable[[], int], Callable[[], Optional[float]]]:
    """Messages stored in a PostgreSQL schema, and the first arrival among them."""
    import psycopg

    def query() -> tuple[int, Optional[float]]:
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT COUNT(*), MIN(received) FROM fleet_seen").fetchone()
        assert row is not None
        return int(row[0]), row[1]

    return (lambda: query()[0]), (lambda: query()[1])


def run(work: Path, log: Log) -> BenchResult:
    rounds = ingest(work, log)
    ratio = statistics.median(m / b for b, m in rounds)
    bare_rate = statistics.median(b for b, _ in rounds)
    monitor_rate = statistics.median(m for _, m in rounds)
    lagged = lag(work, log)
    pair = shared(work, log)
    metrics = {
        "bare_msgs_per_s": bare_rate,
        "monitor_sqlite_msgs_per_s": monitor_rate,
        "lag_p50_ms": float(lagged["lag_p50_ms"]),
        "lag_p99_ms": float(lagged["lag_p99_ms"]),
        "lag_offered_msgs_per_s": lagged["offered_msgs_per_s"],
    }
    ratios = [Ratio("monitor/bare", ratio, RATIO_TARGET, True)]
    info: dict[str, Any] = {
        "backlog_messages": BACKLOG,
        "ingest_rounds": [
            {"bare_msgs_per_s": round(b), "monitor_msgs_per_s": round(m)} for b, m in rounds
        ],
        "backlog_devices": BACKLOG_DEVICES,
        "lag_devices": LAG_DEVICES,
        "lag_period_s": LAG_PERIOD_S,
        "lag_seconds": LAG_SECONDS,
        "lag_connections": LAG_CLIENTS,
        "lag_stored": lagged["stored"],
        "message_bytes": len(window("dev-00000", 0)),
        "method": "drain of a backlog held by the broker for a persistent session; "
        "devices simulated by fewer connections (module docstring)",
    }
    if pair is None:
        info["shared"] = f"skipped: no PostgreSQL at {PG_URL}"
    else:
        metrics["postgres_one_monitor_msgs_per_s"] = pair[0]
        metrics["postgres_two_monitors_msgs_per_s"] = pair[1]
        ratios.append(Ratio("two/one monitors (shared)", pair[1] / pair[0]))
    return BenchResult("monitor", metrics, tuple(ratios), info)
