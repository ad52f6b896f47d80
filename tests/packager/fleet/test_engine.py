"""Alert rules end to end: open, no storms, clear; published on the alerts topic; the hook."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Callable

from packager.fleet.alerts import parse_alert
from packager.fleet.store import open_store
from tests.broker import Broker
from tests.packager.fleet.helpers import (
    MonitorProcess,
    Publisher,
    Subscriber,
    status,
    telemetry,
    wait_for,
)

RULES = """
[[rule]]
name = "p95-slow"
kind = "latency"
above_ms = 50
model = "digits"

[[rule]]
name = "offline"
kind = "offline"
after_s = 0.5

[[rule]]
name = "skew"
kind = "version_skew"
"""

HOOK = (
    "import pathlib, sys, uuid; out = pathlib.Path(sys.argv[1]); "
    "(out / (uuid.uuid4().hex + '.json')).write_bytes(sys.stdin.buffer.read())"
)


def test_alerts_open_once_clear_publish_and_run_the_hook(
    mosquitto: Callable[..., Broker], tmp_path: Path
) -> None:
    broker = mosquitto()
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    hooked = tmp_path / "hooked"
    hooked.mkdir()
    hook = shlex.join([sys.executable, "-c", HOOK, str(hooked)])
    monitor = MonitorProcess(
        tmp_path,
        [
            "--broker",
            broker.url(),
            "--db",
            db,
            "--json-log",
            "--rules",
            str(rules),
            "--hook",
            hook,
            "--check-interval",
            "0.2",
        ],
    )
    alerts = Subscriber(broker.port, "edgeship/v1/lab/alerts")
    monitor.start()
    store = open_store(db)

    def alerts_of(rule: str, device: str = "", open_only: bool = False) -> list[object]:
        return [
            a
            for a in store.alerts(include_cleared=not open_only)
            if a.rule == rule and (not device or a.device == device)
        ]

    try:
        devices = {name: Publisher(broker.port, name) for name in ("dev-1", "dev-2", "dev-3")}

        def send(name: str, doc: dict[str, object]) -> None:
            devices[name].wait_acked([devices[name].send(doc)])

        send("dev-1", status("lab", "dev-1", 1))
        send("dev-3", status("lab", "dev-3", 1, models=(("digits", "1.1.0"),)))
        wait_for(lambda: alerts_of("skew", open_only=True), what="version skew opened")

        send("dev-1", telemetry("lab", "dev-1", 2, p95=80.0))
        wait_for(lambda: alerts_of("p95-slow", open_only=True), what="p95-slow opened")
        for seq in range(3, 13):  # still slow: no alert storm
            send("dev-1", telemetry("lab", "dev-1", seq, p95=90.0 + seq))
        send("dev-1", telemetry("lab", "dev-1", 13, p95=10.0))
        wait_for(lambda: not alerts_of("p95-slow", open_only=True), what="p95-slow cleared")
        assert len(alerts_of("p95-slow")) == 1

        send("dev-2", status("lab", "dev-2", 1))
        send("dev-2", status("lab", "dev-2", 0, state="offline"))  # its Last Will
        wait_for(lambda: alerts_of("offline", "dev-2", open_only=True), what="dev-2 offline")
        send("dev-2", status("lab", "dev-2", 3))
        wait_for(lambda: not alerts_of("offline", "dev-2", open_only=True), what="dev-2 back")

        send("dev-3", status("lab", "dev-3", 9, state="offline"))  # clean shutdown
        wait_for(lambda: not alerts_of("skew", open_only=True), what="version skew cleared")
        wait_for(lambda: alerts_of("offline", "dev-3", open_only=True), what="dev-3 offline")
        wait_for(lambda: len(list(hooked.iterdir())) == 4, what="four hook runs")
        wait_for(lambda: len(alerts.messages) == 7, what="seven alert messages")
        summary = monitor.stop()
    finally:
        if monitor.proc is not None:
            monitor.kill()
    assert (summary["alerts_opened"], summary["alerts_cleared"]) == (4, 3)

    published = [parse_alert(payload) for _, payload in alerts.messages]
    slow = [a for a in published if a.rule == "p95-slow"]
    assert [a.state for a in slow] == ["open", "cleared"]
    assert slow[0].id == slow[1].id and slow[0].value == 80.0 and slow[0].threshold == 50.0
    assert (slow[0].fleet, slow[0].device, slow[0].model) == ("lab", "dev-1", "digits")
    skew = [a for a in published if a.rule == "skew"]
    assert skew[0].device == "" and skew[0].model == "digits" and skew[0].value == 2

    hook_alerts = [parse_alert(p.read_bytes()) for p in hooked.iterdir()]
    assert sorted((a.rule, a.device) for a in hook_alerts) == [
        ("offline", "dev-2"),
        ("offline", "dev-3"),
        ("p95-slow", "dev-1"),
        ("skew", ""),
    ]
    assert all(a.state == "open" for a in hook_alerts)
    assert [(a.rule, a.device) for a in store.alerts()] == [("offline", "dev-3")]
    for device in devices.values():
        device.close()
    alerts.close()
    store.close()
