"""Telemetry test helpers: a device store with the iris model, a plain paho subscriber with a
persistent session that records everything it receives, and links wired to a real broker."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from runtime.install import install_bundle
from runtime.registry import ModelRegistry
from runtime.store import Store
from runtime.telemetry.connection import BrokerURL, ConnectionState, ReconnectPolicy
from runtime.telemetry.link import TelemetryLink, TelemetrySettings
from runtime.telemetry.messages import Message, parse_message
from tests.broker import Broker

FLEET = "lab"
FAST = ReconnectPolicy(initial_s=0.1, max_s=0.5, jitter=0.2)
"""Reconnect quickly in tests: outages are seconds long here, not minutes."""


def wait_until(check: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll ``check`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def connected(link: TelemetryLink) -> bool:
    status = link.connection_status()
    return status is not None and status.state is ConnectionState.CONNECTED


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool

    def parse(self) -> Message:
        return parse_message(self.topic, self.payload)


class Subscriber:
    """A plain paho MQTT 5 client with a persistent session (clean_start=False and a session
    expiry), subscribed at QoS 1 to ``TOPIC_FILTER``; records every message it gets."""

    def __init__(
        self,
        broker: Broker,
        topic: str = "edgeship/v1/#",
        scheme: str = "mqtt",
        username: Optional[str] = None,
        password: Optional[str] = None,
        **tls: Any,
    ) -> None:
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"sub-{uuid.uuid4().hex[:8]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.client.reconnect_delay_set(1, 1)
        self.connected = threading.Event()
        self.topic = topic

        def on_connect(client: paho.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
            if not reason.is_failure:
                client.subscribe(topic, qos=1)
                self.connected.set()

        def on_disconnect(*_: Any) -> None:
            self.connected.clear()

        def on_message(_c: paho.Client, _u: Any, message: paho.MQTTMessage) -> None:
            with self._lock:
                self.received.append(
                    Received(message.topic, bytes(message.payload), bool(message.retain))
                )

        self.client.on_connect = on_connect
        self.client.on_disconnect = on_disconnect
        self.client.on_message = on_message
        if tls:
            self.client.tls_set(**tls)
        if username is not None:
            self.client.username_pw_set(username, password)
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = 3600
        url = BrokerURL.parse(broker.url(scheme))
        self.client.connect(
            url.host, url.port, keepalive=5, clean_start=False, properties=properties
        )
        self.client.loop_start()
        wait_until(self.connected.is_set, what="the subscriber to connect")

    def messages(self, kind: Optional[str] = None) -> list[Message]:
        with self._lock:
            got = list(self.received)
        parsed = [r.parse() for r in got]
        return [m for m in parsed if kind is None or m.kind == kind]

    def raw(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def seqs(self, kind: Optional[str] = None) -> set[int]:
        return {m.seq for m in self.messages(kind)}

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def subscriber() -> Iterator[Callable[..., Subscriber]]:
    made: list[Subscriber] = []

    def make(broker: Broker, **options: Any) -> Subscriber:
        made.append(Subscriber(broker, **options))
        return made[-1]

    yield make
    for sub in made:
        sub.close()


class SpooledLog(logging.Handler):
    """Records every message the spool commits (its debug log line "spooled seq N on TOPIC")."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.spooled: list[tuple[int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg.startswith("spooled seq"):
            self.spooled.append((int(record.args[0]), str(record.args[1])))  # type: ignore[index]

    def seqs(self, kind: Optional[str] = None) -> set[int]:
        return {seq for seq, topic in list(self.spooled) if kind is None or topic.endswith(kind)}


@pytest.fixture
def spooled() -> Iterator[SpooledLog]:
    logger = logging.getLogger("runtime.telemetry.spool")
    handler, level = SpooledLog(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture
def iris_store(device: Store, build_bundle: Callable[..., Path]) -> Store:
    """A device store with the iris classifier installed (a real signed bundle)."""
    install_bundle(device, build_bundle())
    return device


def settings_for(
    broker: Broker, store: Store, device_id: str = "dev-1", scheme: str = "mqtt", **changes: Any
) -> TelemetrySettings:
    base = TelemetrySettings(
        broker=BrokerURL.parse(broker.url(scheme)),
        fleet=FLEET,
        device_id=device_id,
        home=store.home,
        interval_s=0.2,
        reconnect=FAST,
    )
    return dataclasses.replace(base, **changes)


@pytest.fixture
def links() -> Iterator[Callable[..., TelemetryLink]]:
    """Make started TelemetryLinks; every one still running is stopped after the test."""
    made: list[TelemetryLink] = []

    def make(settings: TelemetrySettings, store: Store) -> TelemetryLink:
        link = TelemetryLink(settings, store, ModelRegistry(store))
        link.start()
        made.append(link)
        return link

    yield make
    for link in made:
        link.stop(timeout_s=2.0)
