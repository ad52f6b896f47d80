"""The telemetry link end to end with a real model and a real broker: exactly-once counting,
events, the clean "offline", privacy by default, and spool drops reported."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

from runtime.service import InferenceService
from runtime.store import Store
from runtime.telemetry.link import TelemetryLink
from runtime.telemetry.spool import SpoolLimits
from tests.runtime.telemetry.conftest import Subscriber, connected, settings_for, wait_until

Links = Callable[..., TelemetryLink]


def by_seq(sub: Subscriber, kind: str) -> dict[int, dict]:
    """Messages of ``kind`` by sequence number, duplicates (QoS 1) removed."""
    return {m.seq: m.doc for m in sub.messages(kind)}


def offline(sub: Subscriber) -> bool:
    return any(m.doc["state"] == "offline" for m in sub.messages("status"))


def input_name(link: TelemetryLink) -> str:
    return link.registry.get("iris").manifest.model.inputs[0].name


def test_every_request_is_counted_exactly_once(
    mosquitto, iris_store: Store, subscriber, links: Links, iris: dict[str, Path]
) -> None:
    broker = mosquitto()
    sub = subscriber(broker)
    link = links(settings_for(broker, iris_store, interval_s=0.05), iris_store)
    service = InferenceService(link.registry, [link])
    rows, name = np.load(iris["rows"]), input_name(link)
    per_thread = 600

    def requests(offset: int) -> None:
        for i in range(per_thread):
            j = (i + offset) % 5
            service.predict("iris", {name: rows[j : j + 1]})
            if i % 20 == 0:
                time.sleep(0.002)  # spread the stream over several windows

    threads = [threading.Thread(target=requests, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wait_until(lambda: connected(link), what="the link connected")
    assert link.stop(timeout_s=10.0) is True  # drained: nothing left in the spool
    expected = 3 * per_thread

    def counted() -> int:
        return sum(d["models"]["iris"]["requests"] for d in by_seq(sub, "telemetry").values())

    wait_until(lambda: counted() >= expected, what="every request in some window")
    windows = by_seq(sub, "telemetry").values()
    assert counted() == expected == service.stats()["models"]["iris"]["requests"]
    assert len([d for d in windows if d["models"]["iris"]["requests"]]) > 1
    assert sum(d["models"]["iris"]["predictions"]["count"] for d in windows) == expected
    assert all(d["spool"]["dropped"] == 0 for d in windows)


def test_events_and_status_refresh_and_the_clean_offline(
    mosquitto, iris_store: Store, subscriber, links: Links
) -> None:
    broker = mosquitto()
    sub = subscriber(broker)
    link = links(settings_for(broker, iris_store), iris_store)
    service = InferenceService(link.registry, [link])
    wait_until(lambda: sub.messages("status"), what="the birth status")
    service.event(
        "install",
        {
            "model": "iris",
            "version": "1.0.0",
            "slot": "a",
            "selftest": {"passed": True, "latency_ms": np.float64(0.5)},
        },
    )
    service.event("not-a-kind", {"model": "iris"})
    events = wait_until(
        lambda: [d for d in by_seq(sub, "events").values() if d["event"] == "install"],
        what="the install event",
    )
    assert events[0]["model"] == "iris"
    assert events[0]["detail"] == {
        "version": "1.0.0",
        "slot": "a",
        "selftest": {"passed": True, "latency_ms": 0.5},
    }
    wait_until(lambda: len(by_seq(sub, "status")) >= 2, what="the status published again")
    link.stop(timeout_s=5.0)

    kinds = [d["event"] for d in by_seq(sub, "events").values()]
    assert kinds[0] == "agent-start" and kinds[-1] == "agent-stop" and "not-a-kind" not in kinds
    after = subscriber(broker)  # the retained status now says offline, from a clean stop
    retained = wait_until(lambda: after.messages("status"), what="the retained status")
    assert retained[-1].doc["state"] == "offline" and retained[-1].doc["reason"] == "shutdown"


def test_raw_inputs_stay_on_the_device_unless_sampling_is_on(
    mosquitto, iris_store: Store, subscriber, links: Links, tmp_path: Path
) -> None:
    broker = mosquitto()
    sub = subscriber(broker)
    marker = 6.123457
    rows = np.array([[marker, 3.1, 4.2, 1.3]], dtype=np.float64)
    for device, sample in (("private", 0), ("sampling", 2)):
        settings = settings_for(
            broker, iris_store, device_id=device, sample_inputs=sample, home=tmp_path / device
        )
        link = links(settings, iris_store)
        service = InferenceService(link.registry, [link])
        for _ in range(20):
            service.predict("iris", {input_name(link): rows.astype(np.float32)})
        wait_until(lambda link=link: connected(link), what="the link connected")
        link.stop(timeout_s=5.0)
    wait_until(
        lambda: {m.device for m in sub.messages("telemetry")} >= {"private", "sampling"},
        what="telemetry from both devices",
    )
    payloads = {
        device: b"".join(r.payload for r in sub.raw() if f"/{device}/" in r.topic)
        for device in ("private", "sampling")
    }
    assert str(marker).encode() not in payloads["private"]
    assert b'"samples"' not in payloads["private"]
    assert str(marker).encode()[:5] in payloads["sampling"]  # float32 rounding past 5 digits
    samples = [
        d["models"]["iris"]["samples"]
        for d in by_seq(sub, "telemetry").values()
        if "samples" in d["models"]["iris"]
    ]
    assert samples and all(len(s[input_name(link)]) <= 2 for s in samples)


def test_feedback_reaches_the_window(
    mosquitto, iris_store: Store, subscriber, links: Links, iris: dict[str, Path]
) -> None:
    broker = mosquitto()
    sub = subscriber(broker)
    link = links(settings_for(broker, iris_store), iris_store)
    service = InferenceService(link.registry, [link])
    rows = np.load(iris["rows"])
    served = [service.predict("iris", {input_name(link): rows[i : i + 1]}) for i in range(4)]
    for s, label in zip(served, (0, 0, 0, 2)):
        service.feedback("iris", s.id, label)  # iris rows 0-4 are all class 0
    wait_until(lambda: connected(link), what="the link connected")
    link.stop(timeout_s=5.0)
    docs = wait_until(
        lambda: [
            d["models"]["iris"]["feedback"]
            for d in by_seq(sub, "telemetry").values()
            if "feedback" in d["models"]["iris"]
        ],
        what="feedback",
    )
    assert sum(f["count"] for f in docs) == 4
    assert sum(f["accuracy"] * f["count"] for f in docs) == 3


def test_spool_drops_are_reported_once_the_broker_is_back(
    mosquitto, iris_store: Store, subscriber, links: Links, spooled
) -> None:
    broker = mosquitto()
    sub = subscriber(broker)
    broker.stop()  # a clean stop saves the subscriber's session
    link = links(
        settings_for(broker, iris_store, interval_s=0.05, spool=SpoolLimits(max_rows=5)), iris_store
    )
    wait_until(
        lambda: link.spool is not None and link.spool.undelivered_drops() >= 10,
        what="windows dropped from the full spool",
    )
    broker.start()
    wait_until(lambda: link.spool is not None and link.spool.rows == 0, what="the spool drained")
    assert link.stop(timeout_s=10.0)
    # the clean "offline" is the last message: once it is in, everything before it is
    wait_until(lambda: offline(sub), what="the clean offline")
    # every message spooled and never delivered was counted as dropped in a delivered window;
    # a row dropped while it was in flight (sent, not yet acknowledged) may still have arrived
    lost = spooled.seqs() - sub.seqs()
    reported = sum(d["spool"]["dropped"] for d in by_seq(sub, "telemetry").values())
    assert 10 <= len(lost) <= reported <= len(lost) + link.settings.max_inflight
    # the events say that it happened; they are spooled too (and may be dropped in turn), so
    # the exact count is the windows' job
    events = [d for d in by_seq(sub, "events").values() if d["event"] == "spool-dropped"]
    assert events and 1 <= sum(e["detail"]["dropped"] for e in events) <= reported
