"""No loss: the broker killed and restarted while telemetry flows, the device killed while the
broker is down, the Last Will when the device dies. Messages are counted end to end by sequence
number at a plain paho subscriber with a persistent session."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest

from runtime.service import InferenceService
from runtime.store import Store
from runtime.telemetry.connection import BrokerURL
from runtime.telemetry.spool import Spool
from tests.broker import Broker, free_port
from tests.runtime.telemetry.conftest import Subscriber, connected, settings_for, wait_until

ROOT = Path(__file__).resolve().parents[3]
SPOOLED = re.compile(r"^spooled seq (\d+) on (\S+)")


def saved_after(broker: Broker, moment: float) -> bool:
    """True once the broker's persistence file was written after ``moment`` (so a SIGKILL keeps
    the subscriber's session; mosquitto saves every second here)."""
    db = broker.folder / "mosquitto.db"
    return db.exists() and db.stat().st_mtime > moment


def persistent_subscriber(subscriber: Callable[..., Subscriber], broker: Broker) -> Subscriber:
    sub = subscriber(broker)
    moment = time.time()
    wait_until(lambda: saved_after(broker, moment), what="the subscriber's session to be saved")
    return sub


def assert_no_loss(sub: Subscriber, spooled: set[int]) -> None:
    """Every spooled sequence number arrived; duplicates (QoS 1) carry identical payloads."""
    payloads: dict[int, set[bytes]] = defaultdict(set)
    for received in sub.raw():
        if not received.topic.endswith("/status"):
            payloads[received.parse().seq].add(received.payload)
    missing = spooled - set(payloads)
    assert not missing, f"{len(missing)} of {len(spooled)} spooled messages never arrived"
    assert all(len(p) == 1 for p in payloads.values())


def test_broker_killed_and_restarted_repeatedly_while_telemetry_flows(
    mosquitto, iris_store: Store, subscriber, links, spooled, iris: dict[str, Path]
) -> None:
    broker = mosquitto()
    sub = persistent_subscriber(subscriber, broker)
    link = links(settings_for(broker, iris_store, interval_s=0.05), iris_store)
    service = InferenceService(link.registry, [link])
    name = link.registry.get("iris").manifest.model.inputs[0].name
    rows = np.load(iris["rows"])
    done = threading.Event()

    def requests() -> None:
        i = 0
        while not done.wait(0.001):
            service.predict("iris", {name: rows[i % 5 : i % 5 + 1]})
            i += 1

    worker = threading.Thread(target=requests)
    worker.start()
    try:
        for _ in range(3):
            before = len(spooled.seqs())
            wait_until(
                lambda: len(sub.seqs("telemetry")) > 5 and connected(link), what="telemetry flowing"
            )
            moment = time.time()
            wait_until(lambda m=moment: saved_after(broker, m), what="a broker save")
            broker.kill()
            wait_until(
                lambda b=before: len(spooled.seqs()) > b + 10, what="windows spooled offline"
            )
            broker.start()
            wait_until(sub.connected.is_set, what="the subscriber back")
    finally:
        done.set()
        worker.join()
    wait_until(lambda: connected(link), what="the link back")  # stop() drains only if connected
    assert link.stop(timeout_s=10.0)
    wait_until(
        lambda: any(m.doc["state"] == "offline" for m in sub.messages("status")),
        what="the clean offline, the last message",
    )
    assert_no_loss(sub, spooled.seqs())
    requests_counted = sum(
        m.doc["models"]["iris"]["requests"]
        for m in {m.seq: m for m in sub.messages("telemetry")}.values()
    )
    assert requests_counted == service.stats()["models"]["iris"]["requests"]


class Blackhole:
    """A TCP proxy to a broker that can partition the network: while partitioned, bytes in both
    directions are read and thrown away and the connections stay open, as behind a dead router;
    ``heal`` cuts the connections that lived through it (their peers find out) and lets new ones
    through."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.dropped_bytes = 0
        self._open = threading.Event()
        self._open.set()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
                upstream = socket.create_connection(("127.0.0.1", self.upstream))
            except OSError:
                return
            with self._lock:
                self._sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                if self._open.is_set():
                    dst.sendall(data)
                else:
                    self.dropped_bytes += len(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                s.close()

    def partition(self) -> None:
        self._open.clear()

    def heal(self) -> None:
        with self._lock:
            cut, self._sockets = self._sockets, []
        for s in cut:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        self._open.set()

    def close(self) -> None:
        self._server.close()
        self.heal()


def test_messages_sent_into_a_network_partition_are_sent_again(
    mosquitto, iris_store: Store, subscriber, links, spooled
) -> None:
    broker = mosquitto()
    sub = subscriber(broker)
    proxy = Blackhole(broker.port)
    try:
        settings = replace(
            settings_for(broker, iris_store, interval_s=0.05),
            broker=BrokerURL("mqtt", "127.0.0.1", proxy.port),
        )
        link = links(settings, iris_store)
        for cut in range(1, 3):
            wait_until(
                lambda: connected(link) and link.spool.rows <= 1,  # type: ignore[union-attr]
                what="telemetry flowing, the spool drained",
            )
            proxy.partition()
            sent = link.connection_status().published  # type: ignore[union-attr]
            # published (written to the socket), never acknowledged: paho holds them in memory
            wait_until(
                lambda s=sent: link.connection_status().published >= s + 10,  # type: ignore[union-attr]
                what="messages sent into the partition",
            )
            proxy.heal()
            wait_until(
                lambda c=cut: link.connection_status().connects > c,  # type: ignore[union-attr]
                what="a new connection",
            )
        assert link.stop(timeout_s=10.0)
        wait_until(
            lambda: any(m.doc["state"] == "offline" for m in sub.messages("status")),
            what="the clean offline, the last message",
        )
        assert proxy.dropped_bytes > 0
        assert_no_loss(sub, spooled.seqs())
    finally:
        proxy.close()


class Device:
    """The device process (tests/runtime/telemetry/device_proc.py)."""

    def __init__(self, home: Path, broker: Broker, log: Path, device_id: str = "dev-1") -> None:
        self.log = log
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.runtime.telemetry.device_proc",
                str(home),
                broker.url(),
                device_id,
                "0.1",
                str(log),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "READY"

    def spooled(self) -> set[int]:
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        return {int(m.group(1)) for m in map(SPOOLED.match, lines) if m}

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=30) == 0


@pytest.fixture
def devices() -> Iterator[list[Device]]:
    made: list[Device] = []
    yield made
    for device in made:
        if device.proc.poll() is None:
            device.kill()


def test_device_killed_while_the_broker_is_down_loses_nothing(
    mosquitto, iris_store: Store, subscriber, devices: list[Device], tmp_path: Path
) -> None:
    broker = mosquitto()
    sub = persistent_subscriber(subscriber, broker)
    first = Device(iris_store.home, broker, tmp_path / "run1.log")
    devices.append(first)
    wait_until(lambda: len(sub.seqs("telemetry")) >= 3, what="telemetry from the device")
    moment = time.time()
    wait_until(lambda: saved_after(broker, moment), what="a broker save")
    broker.kill()
    offline = len(first.spooled())
    wait_until(lambda: len(first.spooled()) >= offline + 10, what="windows spooled offline")
    first.kill()  # a crash with unsent telemetry on disk
    spool = Spool(iris_store.home / "spool.sqlite")
    waiting = {m.seq for m in spool.pending(limit=100_000)}
    spool.close()
    assert len(waiting) >= 10

    broker.start()
    second = Device(iris_store.home, broker, tmp_path / "run2.log")
    devices.append(second)
    wait_until(lambda: waiting <= sub.seqs(), what="the spooled messages after the restart")
    second.stop()
    wait_until(
        lambda: any(
            m.doc["state"] == "offline" and m.doc["reason"] == "shutdown"
            for m in sub.messages("status")
        ),
        what="the clean offline",
    )
    assert_no_loss(sub, first.spooled() | waiting | second.spooled())
    starts = [m for m in sub.messages("events") if m.doc["event"] == "agent-start"]
    assert len({m.seq for m in starts}) == 2
    assert max(m.doc["detail"]["pending"] for m in starts) >= 10


def test_last_will_when_the_device_dies(
    mosquitto, iris_store: Store, subscriber, devices: list[Device], tmp_path: Path
) -> None:
    broker = mosquitto()
    sub = subscriber(broker)
    device = Device(iris_store.home, broker, tmp_path / "run.log")
    devices.append(device)
    wait_until(
        lambda: any(m.doc["state"] == "online" for m in sub.messages("status")),
        what="the birth status",
    )
    device.kill()
    will = wait_until(
        lambda: [m for m in sub.messages("status") if m.doc["state"] == "offline"],
        what="the Last Will",
    )
    assert will[0].doc["reason"] == "connection-lost"
    births = [m for m in sub.messages("status") if m.doc["state"] == "online"]
    assert will[0].seq == births[-1].doc["will_seq"] < births[-1].seq  # the birth names its will
    late = subscriber(broker)
    retained = wait_until(late.raw, what="the retained status")
    assert retained[0].retain and retained[0].parse().doc["state"] == "offline"
