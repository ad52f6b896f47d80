"""The device's MQTT connection against real mosquitto brokers: plain, TLS with CA verification,
client certificates, passwords, and the fall back to MQTT 3.1.1."""

from __future__ import annotations

import hashlib
import logging
import socket
import threading
from dataclasses import replace
from pathlib import Path
from typing import Callable

import pytest

from runtime.store import Store
from runtime.telemetry.connection import BrokerURL, ConnectionState
from runtime.telemetry.link import TelemetryLink
from runtime.verify import MANIFEST_MEMBER
from tests.broker import Broker, free_port, make_certs
from tests.runtime.telemetry.conftest import connected, settings_for, wait_until

Links = Callable[..., TelemetryLink]


def failing(link: TelemetryLink, state: ConnectionState, attempts: int = 2) -> bool:
    """True once ``attempts`` attempts failed and the link waits in ``state``."""
    status = link.connection_status()
    return status is not None and status.attempts >= attempts and status.state is state


def test_plain_connection_publishes_a_retained_birth_status(
    mosquitto, iris_store: Store, subscriber, links: Links
) -> None:
    broker = mosquitto()
    link = links(settings_for(broker, iris_store), iris_store)
    wait_until(lambda: connected(link), what="the link to connect")
    late = subscriber(broker)  # subscribes after the birth was published: gets the retained copy
    (status,) = wait_until(
        lambda: [r for r in late.raw() if r.topic.endswith("/status")], what="the retained status"
    )
    assert status.retain
    doc = status.parse().doc
    slot = iris_store.active_slot("iris")
    assert slot is not None
    digest = hashlib.sha256((iris_store.slot_dir("iris", slot) / MANIFEST_MEMBER).read_bytes())
    assert doc["state"] == "online" and doc["profile"] == "x86_64-generic"
    assert doc["models"] == [
        {"name": "iris", "version": "1.0.0", "sequence": 10, "digest": digest.hexdigest()}
    ]
    wait_until(lambda: late.messages("telemetry"), what="a telemetry window")
    status_now = link.connection_status()
    assert status_now is not None and status_now.protocol == "5" and status_now.problem is None


def test_tls_with_the_right_ca(mosquitto, iris_store: Store, subscriber, links: Links) -> None:
    broker = mosquitto(tls=True)
    sub = subscriber(broker)
    link = links(settings_for(broker, iris_store, scheme="mqtts", ca=broker.ca), iris_store)
    wait_until(lambda: sub.messages("telemetry"), what="telemetry over TLS")
    assert connected(link)


def test_tls_with_a_wrong_ca_is_refused(
    mosquitto, iris_store: Store, subscriber, links: Links, tmp_path: Path
) -> None:
    broker = mosquitto(tls=True)
    sub = subscriber(broker)
    other = make_certs(tmp_path / "other-ca")
    link = links(settings_for(broker, iris_store, scheme="mqtts", ca=other.ca), iris_store)
    wait_until(lambda: failing(link, ConnectionState.BACKING_OFF), what="two refused attempts")
    status = link.connection_status()
    assert status is not None
    assert status.connects == 0
    assert "certificate" in (status.problem or "") and "not accepted" in (status.problem or "")
    assert sub.messages() == []


def test_client_certificate_required_by_the_broker(
    mosquitto, iris_store: Store, subscriber, links: Links
) -> None:
    broker = mosquitto(tls=True, require_certificate=True)
    assert broker.certs is not None
    sub = subscriber(broker)
    with_cert = settings_for(
        broker,
        iris_store,
        scheme="mqtts",
        ca=broker.ca,
        cert=broker.certs.client_cert,
        key=broker.certs.client_key,
    )
    link = links(with_cert, iris_store)
    wait_until(lambda: sub.messages("telemetry"), what="telemetry with a client certificate")

    anonymous = settings_for(
        broker,
        iris_store,
        device_id="dev-2",
        scheme="mqtts",
        ca=broker.ca,
        home=iris_store.home / "dev-2",
    )
    refused = links(anonymous, iris_store)
    wait_until(lambda: failing(refused, ConnectionState.BACKING_OFF), what="refused attempts")
    status = refused.connection_status()
    assert status is not None and status.connects == 0 and status.problem
    assert connected(link)


def test_password_good_and_wrong(
    mosquitto, iris_store: Store, subscriber, links: Links, caplog
) -> None:
    broker = mosquitto(users={"dev-1": "right-pw", "dev-2": "other-pw", "sub": "sub-pw"})
    sub = subscriber(broker, username="sub", password="sub-pw")
    good = links(
        settings_for(broker, iris_store, username="dev-1", password="right-pw"), iris_store
    )
    wait_until(
        lambda: {m.device for m in sub.messages("telemetry")} == {"dev-1"},
        what="telemetry from the device with the right password",
    )

    with caplog.at_level(logging.ERROR, logger="runtime.telemetry"):
        wrong = links(
            settings_for(
                broker,
                iris_store,
                device_id="dev-2",
                username="dev-2",
                password="wrong-pw",
                home=iris_store.home / "dev-2",
            ),
            iris_store,
        )
        wait_until(lambda: failing(wrong, ConnectionState.AUTH_FAILED, 3), what="retried attempts")
    status = wrong.connection_status()
    assert status is not None
    assert status.connects == 0
    assert "refused the credentials of dev-2" in (status.problem or "")
    assert "Not authorized" in (status.problem or "") or "password" in (status.problem or "")
    errors = [r for r in caplog.records if "refused the credentials" in r.getMessage()]
    assert len(errors) == 1  # logged once, not once per retry
    assert wrong.stop(timeout_s=1.0) is False  # nothing could be sent; the spool keeps it
    assert connected(good)
    assert all(m.device == "dev-1" for m in sub.messages())


class MQTT311OnlyBroker:
    """A TCP front for mosquitto that plays an MQTT 3.1.1-only broker: a CONNECT asking for
    protocol level 5 gets the 3.1.1 CONNACK "unacceptable protocol version" (return code 1);
    anything else is passed through to the real broker."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.refused_v5 = 0
        self._server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        head = client.recv(2)  # CONNECT type and the first remaining-length byte
        while head[-1] & 0x80:
            head += client.recv(1)
        body = b""
        while len(body) < 7:  # protocol name (2 + 4 bytes) and level
            body += client.recv(7 - len(body))
        if body[6] == 5:
            self.refused_v5 += 1
            client.sendall(b"\x20\x02\x00\x01")
            client.close()
            return
        upstream = socket.create_connection(("127.0.0.1", self.upstream))
        upstream.sendall(head + body)
        for src, dst in ((client, upstream), (upstream, client)):
            threading.Thread(target=_pump, args=(src, dst), daemon=True).start()

    def close(self) -> None:
        self._server.close()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            s.close()


def test_falls_back_to_mqtt_311_when_the_broker_refuses_5(
    mosquitto, iris_store: Store, subscriber, links: Links
) -> None:
    broker = mosquitto()
    front = MQTT311OnlyBroker(broker.port)
    try:
        sub = subscriber(broker)
        settings = replace(
            settings_for(broker, iris_store), broker=BrokerURL("mqtt", "127.0.0.1", front.port)
        )
        link = links(settings, iris_store)
        wait_until(lambda: sub.messages("telemetry"), what="telemetry through the 3.1.1 broker")
        status = link.connection_status()
        assert status is not None and status.protocol == "3.1.1" and status.connects >= 1
        assert front.refused_v5 == 1
        assert any(m.kind == "status" and m.doc["state"] == "online" for m in sub.messages())
    finally:
        front.close()


def test_explicit_mqtt_311(mosquitto, iris_store: Store, subscriber, links: Links) -> None:
    broker: Broker = mosquitto()
    sub = subscriber(broker)
    link = links(settings_for(broker, iris_store, protocol="3.1.1"), iris_store)
    wait_until(lambda: sub.messages("telemetry"), what="telemetry over MQTT 3.1.1")
    status = link.connection_status()
    assert status is not None and status.protocol == "3.1.1"


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_nothing_listening_backs_off_without_crashing(
    iris_store: Store, links: Links, mosquitto, protocol: str
) -> None:
    broker = mosquitto()
    broker.stop()
    link = links(settings_for(broker, iris_store, protocol=protocol), iris_store)
    wait_until(lambda: failing(link, ConnectionState.BACKING_OFF, 3), what="three attempts")
    status = link.connection_status()
    assert status is not None and "refused" in (status.problem or "")
