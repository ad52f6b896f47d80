"""Simulated devices and monitor processes for the fleet tests (real paho clients, real CLI)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from runtime.telemetry.messages import device_topic, encode, envelope

PREFIX = "edgeship/v1"
EDGESHIP = [sys.executable, "-c", "from packager.cli import main; main()"]


def wait_for(check: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll ``check`` until it returns something true; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie waiting to be reaped does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def now() -> datetime:
    return datetime.now(timezone.utc)


def telemetry(
    fleet: str,
    device: str,
    seq: int,
    model: str = "digits",
    version: str = "1.0.0",
    requests: int = 100,
    errors: int = 0,
    rejected: int = 0,
    p95: float = 1.0,
    drift: Optional[dict[str, dict[str, float]]] = None,
    feedback: Optional[dict[str, Any]] = None,
) -> dict[str, Any]:
    doc = envelope("telemetry", fleet, device, seq, now())
    entry: dict[str, Any] = {
        "version": version,
        "requests": requests,
        "errors": errors,
        "rejected": rejected,
        "latency_ms": {"p50": p95 / 2, "p95": p95, "p99": p95 * 1.5, "max": p95 * 2},
        "predictions": {"0": requests},
        "drift": drift if drift is not None else {"f0": {"psi": 0.01, "js": 0.001}},
    }
    if feedback is not None:
        entry["feedback"] = feedback
    doc.update(window_s=10.0, models={model: entry}, system={"rss_mb": 40.0, "cpu_percent": 1.0})
    return doc


def status(
    fleet: str,
    device: str,
    seq: int,
    state: str = "online",
    models: tuple[tuple[str, str], ...] = (("digits", "1.0.0"),),
    reason: Optional[str] = None,
) -> dict[str, Any]:
    """A birth, or with ``state="offline"`` a Last Will (``reason="shutdown"``: a clean stop)."""
    doc = envelope("status", fleet, device, seq, now())
    doc["state"] = state
    if reason is not None:
        doc["reason"] = reason
    if state == "online":
        doc.update(
            runtime_version="0.1.0",
            profile="x86_64-generic",
            models=[
                {"name": n, "version": v, "sequence": 1, "digest": "sha256:" + "0" * 64}
                for n, v in models
            ],
        )
    return doc


def event(fleet: str, device: str, seq: int, kind: str = "install", model: str = "digits"):  # type: ignore[no-untyped-def]
    doc = envelope("events", fleet, device, seq, now())
    doc.update(event=kind, model=model, detail={"version": "1.0.0"})
    return doc


def topic_of(doc: dict[str, Any]) -> str:
    kind = {
        "edgeship.status/v1": "status",
        "edgeship.telemetry/v1": "telemetry",
        "edgeship.event/v1": "events",
    }[doc["schema"]]
    return device_topic(PREFIX, doc["fleet"], doc["device"], kind)


class Publisher:
    """A paho client (MQTT 5) that publishes QoS 1 and can wait for every PUBACK."""

    def __init__(
        self,
        port: int,
        client_id: str,
        username: Optional[str] = None,
        password: Optional[str] = None,
        ca: Optional[Path] = None,
    ) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        if username:
            self.client.username_pw_set(username, password)
        if ca:
            self.client.tls_set(ca_certs=str(ca))
        self.acked: dict[int, Any] = {}
        self._lock = threading.Lock()
        self.client.on_publish = self._on_publish
        self.connected = threading.Event()
        self.client.on_connect = lambda *a: self.connected.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        wait_for(self.connected.is_set, what="publisher connected")

    def _on_publish(self, _c: Any, _u: Any, mid: int, reason: Any, _p: Any) -> None:
        with self._lock:
            self.acked[mid] = reason

    def send(self, doc: dict[str, Any], topic: Optional[str] = None, retain: bool = False) -> int:
        payload = doc if isinstance(doc, bytes) else encode(doc)
        info = self.client.publish(topic or topic_of(doc), payload, qos=1, retain=retain)
        return info.mid

    def send_raw(self, topic: str, payload: bytes) -> int:
        return self.client.publish(topic, payload, qos=1).mid

    def wait_acked(self, mids: list[int], timeout: float = 30.0) -> None:
        wait_for(lambda: all(m in self.acked for m in mids), timeout, "PUBACKs")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Subscriber:
    """Collects (topic, payload) of every message on ``topic`` (auto-acknowledged)."""

    def __init__(self, port: int, topic: str, client_id: str = "test-subscriber") -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        subscribed = threading.Event()
        self.client.on_message = lambda _c, _u, m: self.messages.append((m.topic, m.payload))
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        wait_for(subscribed.is_set, what="subscription")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class MonitorProcess:
    """``edgeship fleet monitor`` as a child process; its stderr goes to a log file."""

    def __init__(
        self,
        folder: Path,
        args: list[str],
        env: Optional[dict[str, str]] = None,
        name: str = "monitor",
    ) -> None:
        self.log = folder / f"{name}.log"
        self.args = args
        self.env = {**os.environ, **(env or {})}
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.stdout = b""

    def start(self, wait_connected: bool = True) -> MonitorProcess:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [*EDGESHIP, "fleet", "monitor", *self.args],
                stdout=subprocess.PIPE,
                stderr=log,
                env=self.env,
            )
        if wait_connected:
            connections = self.log_text().count("connected to")
            wait_for(
                lambda: self.log_text().count("connected to") > connections or self._dead(),
                what="monitor connected",
            )
            assert self.proc.poll() is None, self.log_text()
        return self

    def _dead(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> dict[str, Any]:
        """SIGTERM, wait, and return the summary (the monitor runs with --json-log)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=60)
        assert self.proc.returncode == 0, self.log_text()
        self.proc = None
        return json.loads(out.decode().strip().splitlines()[-1])

    def children(self) -> list[int]:
        """Process ids of the monitor's child processes (its writer)."""
        assert self.proc is not None
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.proc.pid:
                found.append(int(stat.parent.name))
        return found

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self.proc = None

    def wait_exit(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        self.proc.communicate(timeout=timeout)
        return int(self.proc.returncode)
