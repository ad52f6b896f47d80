"""The monitor against real mosquitto brokers: plain, TLS, passwords, outages, shared load."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from packager.fleet.store import open_store
from tests.broker import Broker
from tests.packager.fleet.helpers import (
    MonitorProcess,
    Publisher,
    alive,
    event,
    status,
    telemetry,
    wait_for,
)

Monitors = Callable[..., MonitorProcess]


@pytest.fixture
def monitors(tmp_path: Path) -> Iterator[Monitors]:
    """Make ``edgeship fleet monitor`` processes; any still running are killed afterwards."""
    made: list[MonitorProcess] = []

    def make(
        broker: Broker,
        db: str,
        *extra: str,
        name: str = "monitor",
        scheme: str = "mqtt",
        env: dict[str, str] | None = None,
    ) -> MonitorProcess:
        args = [
            "--broker",
            broker.url(scheme),
            "--db",
            db,
            "--json-log",
            "--client-id",
            name,
            *extra,
        ]
        monitor = MonitorProcess(tmp_path, args, env=env, name=name)
        made.append(monitor)
        return monitor

    yield make
    for monitor in made:
        if monitor.proc is not None:
            monitor.kill()


def stored(db: str) -> Callable[[], int]:
    store = open_store(db)
    return store.stored_count


def test_plain_broker_status_telemetry_events_and_duplicates(
    mosquitto: Callable[..., Broker], monitors: Monitors, tmp_path: Path
) -> None:
    broker = mosquitto()
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    device = Publisher(broker.port, "dev-1")
    # retained birth sent before the monitor ever connected: it still arrives
    device.wait_acked([device.send(status("lab", "dev-1", 1), retain=True)])
    monitor = monitors(broker, db).start()
    mids = [device.send(telemetry("lab", "dev-1", seq, p95=float(seq))) for seq in range(2, 52)]
    mids.append(device.send(telemetry("lab", "dev-1", 7, p95=999.0)))  # the same seq again
    mids.append(device.send(event("lab", "dev-1", 52, kind="selftest")))
    device.wait_acked(mids)
    count = stored(db)
    wait_for(lambda: count() == 52, what="52 messages stored")
    summary = monitor.stop()
    assert (summary["stored"], summary["duplicates"], summary["bad"]) == (52, 1, 0)
    with open_store(db) as store:
        [dev] = store.devices()
        assert (dev.device, dev.online, dev.last_seq, dev.versions()) == (
            "dev-1",
            True,
            52,
            {"digits": "1.0.0"},
        )
        assert [
            w.latency_ms["p95"] for w in store.windows("lab", "dev-1", "digits", 100) if w.seq == 7
        ] == [7.0]
        assert [e.event for e in store.events()] == ["selftest"]
    # restarted with the same session: the retained birth is not sent again, nothing is lost
    monitor.start()
    mid = device.send(telemetry("lab", "dev-1", 53))
    device.wait_acked([mid])
    wait_for(lambda: count() == 53, what="the 53rd message")
    assert monitor.stop()["stored"] == 1
    device.close()


def test_tls_with_ca_verification_and_passwords(
    mosquitto: Callable[..., Broker], monitors: Monitors, tmp_path: Path
) -> None:
    broker = mosquitto(tls=True, users={"edgeship-monitor": "m-secret", "dev-1": "d-secret"})
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    secret = tmp_path / "password"
    secret.write_text("m-secret\n")
    monitor = monitors(
        broker,
        db,
        "--ca",
        str(broker.ca),
        "--username",
        "edgeship-monitor",
        "--password-file",
        str(secret),
        scheme="mqtts",
    ).start()
    device = Publisher(broker.tls_port or 0, "dev-1", "dev-1", "d-secret", ca=broker.ca)
    device.wait_acked([device.send(telemetry("lab", "dev-1", seq)) for seq in range(20)])
    wait_for(lambda: stored(db)() == 20, what="20 messages over TLS")
    assert monitor.stop()["stored"] == 20
    device.close()

    # a wrong password (here from the environment), and a broker the CA does not vouch for
    wrong = monitors(
        broker,
        db,
        "--ca",
        str(broker.ca),
        "--username",
        "edgeship-monitor",
        scheme="mqtts",
        name="wrong",
        env={"EDGESHIP_MQTT_PASSWORD": "nope"},
    )
    wrong.start(wait_connected=False)
    assert wrong.wait_exit() == 7
    assert "refused the connection: Not authorized" in wrong.log_text()
    other_ca = tmp_path / "other-ca.pem"
    other_ca.write_bytes(mosquitto(tls=True).ca.read_bytes())
    untrusted = monitors(
        broker,
        db,
        "--ca",
        str(other_ca),
        "--username",
        "edgeship-monitor",
        "--password-file",
        str(secret),
        scheme="mqtts",
        name="untrusted",
    )
    untrusted.start(wait_connected=False)
    assert untrusted.wait_exit() == 7
    assert "CERTIFICATE_VERIFY_FAILED" in untrusted.log_text()


def _publish_in_background(device: Publisher, docs: list[dict[str, Any]]) -> threading.Thread:
    def send() -> None:
        device.wait_acked([device.send(doc) for doc in docs], timeout=120)

    thread = threading.Thread(target=send)
    thread.start()
    return thread


def test_monitor_killed_mid_stream_loses_nothing_and_stores_once(
    mosquitto: Callable[..., Broker], monitors: Monitors, tmp_path: Path
) -> None:
    broker = mosquitto()
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    monitor = monitors(broker, db).start()
    count = stored(db)
    devices = [Publisher(broker.port, f"dev-{i}") for i in range(3)]
    total = 3000
    threads = [
        _publish_in_background(d, [telemetry("lab", f"dev-{i}", seq) for seq in range(total // 3)])
        for i, d in enumerate(devices)
    ]
    wait_for(lambda: count() >= 300, what="the first messages stored")
    writers = monitor.children()
    monitor.kill()  # SIGKILL: no flush, no goodbye; unacknowledged messages stay with the broker
    # its writer process finishes the batch in hand (never acknowledged) and exits
    wait_for(lambda: not any(alive(pid) for pid in writers), what="the writer's exit")
    at_kill = count()
    assert at_kill < total  # it died mid-stream
    monitor.start()
    for thread in threads:
        thread.join()
    wait_for(lambda: count() == total, timeout=120, what="every message stored")
    summary = monitor.stop()
    assert summary["stored"] == total - at_kill
    with open_store(db) as store:
        for i in range(3):
            seqs = [w.seq for w in store.windows("lab", f"dev-{i}", "digits", limit=total)]
            assert sorted(seqs) == list(range(total // 3))
    for device in devices:
        device.close()


def test_broker_killed_and_restarted(
    mosquitto: Callable[..., Broker], monitors: Monitors, tmp_path: Path
) -> None:
    broker = mosquitto()
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    monitor = monitors(broker, db).start()
    count = stored(db)
    device = Publisher(broker.port, "dev-1")
    device.wait_acked([device.send(telemetry("lab", "dev-1", seq)) for seq in range(100)])
    wait_for(lambda: count() == 100, what="100 stored before the outage")
    saved = broker.folder / "mosquitto.db"
    connected_at = monitor.log.stat().st_mtime
    # the broker keeps the monitor's session only once it has saved it (autosave every second)
    wait_for(lambda: saved.exists() and saved.stat().st_mtime > connected_at, what="autosave")
    device.close()
    broker.kill()
    broker.start()
    # sent while the monitor is still reconnecting: queued in its persistent session
    again = Publisher(broker.port, "dev-1b")
    again.wait_acked([again.send(telemetry("lab", "dev-1", seq)) for seq in range(100, 200)])
    wait_for(lambda: monitor.log_text().count("connected to") >= 2, what="monitor reconnected")
    wait_for(lambda: count() == 200, what="200 stored after the outage")
    assert "lost the broker" in monitor.log_text()
    summary = monitor.stop()
    assert summary["stored"] == 200 and summary["bad"] == 0
    again.close()


def test_two_monitors_share_the_load_on_postgresql(
    mosquitto: Callable[..., Broker], monitors: Monitors, pg_url: str
) -> None:
    broker = mosquitto()
    first = monitors(broker, pg_url, "--share", "fleet", name="mon-a").start()
    second = monitors(broker, pg_url, "--share", "fleet", name="mon-b").start()
    count = stored(pg_url)
    devices = [Publisher(broker.port, f"dev-{i}") for i in range(4)]
    per_device = 300
    threads = []
    for i, device in enumerate(devices):
        # a birth, then windows whose versions change half-way (state must end at the newest)
        docs = [status("lab", f"dev-{i}", 0)]
        docs += [
            telemetry(
                "lab", f"dev-{i}", seq, version="1.0.0" if seq < 150 else "2.0.0", p95=float(seq)
            )
            for seq in range(1, per_device)
        ]
        threads.append(_publish_in_background(device, docs))
    for thread in threads:
        thread.join()
    total = 4 * per_device
    wait_for(lambda: count() == total, timeout=120, what="every message stored once")
    a, b = first.stop(), second.stop()
    assert a["stored"] + b["stored"] == total
    assert a["stored"] > 0 and b["stored"] > 0  # both took a share
    # statuses reach both monitors (a plain subscription): each is stored by one of them
    assert a["duplicates"] + b["duplicates"] == 4
    with open_store(pg_url) as store:
        newest = store.model_versions()
        found = [
            (d.device, d.online, d.last_seq, d.versions(newest[d.key])) for d in store.devices()
        ]
        assert found == [(f"dev-{i}", True, per_device - 1, {"digits": "2.0.0"}) for i in range(4)]
        assert {w.seq for w in store.latest_windows()} == {per_device - 1}
    for device in devices:
        device.close()


def test_acl_keeps_devices_to_their_own_topics(
    mosquitto: Callable[..., Broker], monitors: Monitors, tmp_path: Path
) -> None:
    acl = (Path(__file__).parents[3] / "devices" / "mosquitto" / "acl").read_text()
    users = {"edgeship-monitor": "m", "edgeship-deploy": "x", "dev-1": "one", "dev-2": "two"}
    broker = mosquitto(users=users, acl=acl)
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    monitor = monitors(
        broker,
        db,
        "--username",
        "edgeship-monitor",
        "--share",
        "g",
        env={"EDGESHIP_MQTT_PASSWORD": "m"},
    ).start()
    dev1 = Publisher(broker.port, "dev-1", "dev-1", "one")
    # dev-1 speaks for dev-2 (a well-formed message): the broker refuses it
    spoof = dev1.send(telemetry("lab", "dev-2", 1))
    own = dev1.send(telemetry("lab", "dev-1", 1))
    dev1.wait_acked([spoof, own])
    assert str(dev1.acked[spoof]) == "Not authorized"
    assert str(dev1.acked[own]) == "Success"
    wait_for(lambda: stored(db)() == 1, what="dev-1's own message")
    # deploy commands: dev-1 reads its own, never dev-2's
    received: list[str] = []
    dev1.client.on_message = lambda _c, _u, m: received.append(m.topic)
    subscribed = threading.Event()
    dev1.client.on_subscribe = lambda *a: subscribed.set()
    dev1.client.subscribe(
        [("edgeship/v1/lab/dev-1/deploy", 1), ("edgeship/v1/lab/dev-2/deploy", 1)]
    )
    wait_for(subscribed.is_set, what="dev-1 subscribed")
    deployer = Publisher(broker.port, "deployer", "edgeship-deploy", "x")
    deployer.wait_acked(
        [
            deployer.send_raw("edgeship/v1/lab/dev-2/deploy", b"{}"),
            deployer.send_raw("edgeship/v1/lab/dev-1/deploy", b"{}"),
        ]
    )
    wait_for(lambda: received, what="dev-1's deploy message")
    summary = monitor.stop()
    assert received == ["edgeship/v1/lab/dev-1/deploy"]
    assert (summary["stored"], summary["bad"]) == (1, 0)
    with open_store(db) as store:
        assert [d.device for d in store.devices()] == ["dev-1"]
    for client in (dev1, deployer):
        client.close()
