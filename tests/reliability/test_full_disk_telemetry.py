"""The telemetry spool on a full disk: inference goes on, one
clear log line, no crash, the spool stays a valid SQLite database whose committed rows are kept
and published once there is room again, and what could not be spooled is counted as dropped.

The device home is a small tmpfs mounted for the test and filled with a file; one case runs the
spool in a child process under ``RLIMIT_FSIZE`` instead. Everything is real: SQLite, the model,
a mosquitto broker and a subscriber.

The other spool limit, its bounds (``SpoolLimits``: oldest dropped first, the drops counted and
reported in a delivered window), is tested in ``tests/runtime/telemetry/test_spool.py``
(``test_row_bound_drops_the_oldest_and_counts_until_a_window_claims_it``,
``test_byte_bound_drops_the_oldest``, ``test_age_bound_drops_old_rows``) and end to end in
``tests/runtime/telemetry/test_link.py::test_spool_drops_are_reported_once_the_broker_is_back``.
"""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest

from runtime.install import install_bundle
from runtime.registry import ModelRegistry
from runtime.service import InferenceService
from runtime.store import Store
from runtime.telemetry.link import TelemetryLink
from runtime.telemetry.mqtt import SpoolPublisher
from runtime.telemetry.spool import Spool, SpoolInfo
from runtime.telemetry.spooldb import SpoolUnavailableError
from runtime.trust import TrustPolicy
from tests.broker import Broker
from tests.conftest import BuildBundle, Keys
from tests.reliability.disk import KiB, file_size_limit, free_bytes, leave_free, tmpfs
from tests.runtime.telemetry.conftest import (
    SpooledLog,
    Subscriber,
    connected,
    settings_for,
    spooled,  # noqa: F401 - the fixture, used by name
    wait_until,
)

FS_SIZE = 2048 * KiB
NEVER_S = 3600.0
"""A window interval that never comes during a test: windows close on ``flush()`` only."""


@pytest.fixture
def fs(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "fs", FS_SIZE) as mount_point:
        yield mount_point


@pytest.fixture
def home(fs: Path, keys: Keys, build_bundle: BuildBundle) -> Store:
    """A device store on the small file system, with iris 1.0.0 installed."""
    store = Store(fs / "device")
    store.save_policy(TrustPolicy.create([(keys.public("release"), "release")]))
    install_bundle(store, build_bundle())
    return store


@pytest.fixture
def cleanup() -> Iterator[list[Callable[[], object]]]:
    """Things to stop after the test (links, publishers, subscribers), last first."""
    stops: list[Callable[[], object]] = []
    yield stops
    for stop in reversed(stops):
        stop()


def integrity(path: Path) -> str:
    """``PRAGMA integrity_check`` of the spool at ``path``, through a connection of its own."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        db.close()


def by_seq(sub: Subscriber, kind: str) -> dict[int, dict[str, Any]]:
    return {m.seq: m.doc for m in sub.messages(kind)}


def problems(caplog: pytest.LogCaptureFixture, logger: str) -> list[logging.LogRecord]:
    """Warnings and errors logged by ``logger``."""
    return [r for r in caplog.records if r.levelno >= logging.WARNING and r.name == logger]


LINK = "runtime.telemetry.link"
MQTT = "runtime.telemetry.mqtt"


def test_a_full_disk_keeps_the_spool_and_inference_going(
    fs: Path,
    home: Store,
    mosquitto: Callable[..., Broker],
    iris: dict[str, Path],
    spooled: SpooledLog,  # noqa: F811 - the imported fixture
    caplog: pytest.LogCaptureFixture,
    cleanup: list[Callable[[], object]],
) -> None:
    broker = mosquitto()
    sub = Subscriber(broker)
    cleanup.append(sub.close)
    broker.stop()  # offline: what is spooled stays in the spool (a clean stop keeps sub's session)
    link = TelemetryLink(settings_for(broker, home, interval_s=NEVER_S), home, ModelRegistry(home))
    link.start()
    cleanup.append(lambda: link.stop(timeout_s=2.0))
    service = InferenceService(link.registry, [link])
    rows = np.load(iris["rows"])
    feed = link.registry.get("iris").manifest.model.inputs[0].name

    def predict(count: int) -> None:
        for i in range(count):
            service.predict("iris", {feed: rows[i % 5 : i % 5 + 1]})

    predict(3)
    link.flush()  # the agent-start event and a window of 3 requests, committed
    predict(2)
    link.flush()
    committed = spooled.seqs()
    spool = link.spool
    assert spool is not None and spool.rows == len(committed) == 3

    caplog.set_level(logging.INFO, logger="runtime.telemetry")
    caplog.clear()
    leave_free(fs, fs / "filler", 0)
    assert free_bytes(fs) == 0
    predict(4)  # served: telemetry never stops inference
    service.event("selftest", {"model": "iris", "passed": True})
    link.flush()  # this window cannot be spooled: lost, and counted
    link.flush()
    assert spooled.seqs() == committed
    assert {m.seq for m in spool.pending()} == committed
    assert integrity(spool.path) == "ok"
    error = link.status()["spool_error"]
    assert "database or disk is full" in error
    [line] = problems(caplog, LINK)
    assert line.levelno == logging.ERROR and line.exc_info is None
    assert "database or disk is full" in line.getMessage()
    assert "requests are still served" in line.getMessage()

    broker.start()  # reachable again, but no sequence number can be written for the Last Will
    wait_until(
        lambda: "full" in (link.status()["connection"].get("problem") or ""),
        what="the connection waiting for room in the spool",
    )
    assert not connected(link)
    [waiting] = [r for r in problems(caplog, MQTT) if "full" in r.getMessage()]  # logged once
    assert "cannot reserve a sequence number: database or disk is full" in waiting.getMessage()
    assert all(r.exc_info is None for r in caplog.records)

    (fs / "filler").unlink()
    link.flush()  # counts the 2 lost windows first, then claims them in this window
    assert link.status()["spool_error"] is None
    wait_until(lambda: connected(link), timeout=30, what="the link to connect")
    wait_until(lambda: spool.rows == 0, what="the spool to drain")
    assert link.stop(timeout_s=10.0)
    wait_until(
        lambda: any(m.doc["state"] == "offline" for m in sub.messages("status")),
        what="the clean offline",
    )
    assert committed <= sub.seqs()  # every row committed before the disk filled was delivered
    windows = by_seq(sub, "telemetry")
    # two windows before, the one after that reports the 2 lost, the last one at stop
    assert [w["spool"]["dropped"] for _, w in sorted(windows.items())] == [0, 0, 2, 0]
    assert sum(w["models"]["iris"]["requests"] for w in windows.values()) == 5
    events = {d["event"]: d for d in by_seq(sub, "events").values()}
    assert events["selftest"]["detail"] == {"passed": True}  # it waited in memory
    assert events["spool-dropped"]["detail"]["dropped"] == 2
    assert "agent-start" in events and "agent-stop" in events
    recovered = [r.getMessage() for r in problems(caplog, LINK) if r.levelno == logging.WARNING]
    assert any("written again; 2 telemetry messages lost" in m for m in recovered), recovered
    assert not [r for r in caplog.records if r.exc_info is not None]
    assert integrity(spool.path) == "ok"


def test_a_link_started_on_a_full_disk_serves_and_opens_its_spool_later(
    fs: Path,
    home: Store,
    mosquitto: Callable[..., Broker],
    iris: dict[str, Path],
    caplog: pytest.LogCaptureFixture,
    cleanup: list[Callable[[], object]],
) -> None:
    """An agent restarted on a full disk: its spool (holding rows from before) cannot be opened
    (SQLite needs room for its WAL index). The link starts anyway, and its window keeps counting
    until the spool opens."""
    broker = mosquitto()
    sub = Subscriber(broker)
    cleanup.append(sub.close)
    broker.stop()
    settings = settings_for(broker, home, interval_s=NEVER_S)
    first = TelemetryLink(settings, home, ModelRegistry(home))
    first.start()
    first.flush()
    first.stop(timeout_s=0.5)  # offline: its rows stay in the spool
    before = Spool(settings.spool_path)
    waiting = {m.seq for m in before.pending()}
    before.close()
    assert len(waiting) >= 2  # agent-start and a window (agent-stop too)

    caplog.set_level(logging.INFO, logger="runtime.telemetry")
    caplog.clear()
    leave_free(fs, fs / "filler", 0)
    with pytest.raises(SpoolUnavailableError):
        Spool(settings.spool_path).close()
    link = TelemetryLink(settings, home, ModelRegistry(home))
    link.start()  # does not raise: telemetry never keeps the agent from serving
    cleanup.append(lambda: link.stop(timeout_s=2.0))
    assert link.spool is None
    service = InferenceService(link.registry, [link])
    feed = link.registry.get("iris").manifest.model.inputs[0].name
    rows = np.load(iris["rows"])
    for i in range(7):
        service.predict("iris", {feed: rows[i % 5 : i % 5 + 1]})
    link.flush()  # the spool still cannot be opened: the window stays open
    assert link.spool is None
    [line] = problems(caplog, LINK)
    assert line.levelno == logging.ERROR and line.exc_info is None
    assert "cannot open the telemetry spool" in line.getMessage()

    (fs / "filler").unlink()
    broker.start()
    link.flush()  # opens the spool and spools the window of all 7 requests
    assert link.spool is not None
    wait_until(lambda: link.spool is not None and link.spool.rows == 0, what="the spool drained")
    assert link.stop(timeout_s=10.0)
    wait_until(
        lambda: any(m.doc["state"] == "offline" for m in sub.messages("status")),
        what="the clean offline",
    )
    assert waiting <= sub.seqs()
    windows = by_seq(sub, "telemetry").values()
    # the first link's two windows (no model loaded), the one of all 7 requests, the last one
    served = [w["models"].get("iris", {}).get("requests", 0) for w in windows]
    assert sorted(served) == [0, 0, 0, 7]
    assert not [r for r in caplog.records if r.exc_info is not None]
    assert integrity(settings.spool_path) == "ok"


def message(size: int) -> Callable[[int, SpoolInfo], bytes]:
    return lambda seq, info: f"{seq}:".encode() + b"m" * size


def test_the_disk_fills_at_every_point_of_a_commit(fs: Path) -> None:
    """For free room from 0 up in steps of 4 KiB: append until the disk is full. Every append
    that returned is committed, every one that failed left nothing, and once there is room
    the next append commits (no transaction was left open by a failed COMMIT)."""
    path = fs / "spool.sqlite"
    filler = fs / "filler"
    spool = Spool(path)
    kept: set[int] = set()
    failures: set[str] = set()
    for free in range(0, 64 * KiB, 4 * KiB):
        leave_free(fs, filler, free)
        next_seq = spool.next_seq()
        for _ in range(100):
            try:
                kept.add(spool.append("t/x", message(700)).seq)
            except SpoolUnavailableError as e:
                failures.add(str(e))
                break
        else:
            pytest.fail(f"the disk never filled with {free} bytes free")
        assert spool.next_seq() >= next_seq
        assert {m.seq for m in spool.pending(limit=10_000)} == kept
        assert integrity(path) == "ok"
    assert failures
    assert all("database or disk is full" in f or "disk I/O error" in f for f in failures)
    filler.unlink()
    last = spool.append("t/x", message(700)).seq
    other = sqlite3.connect(str(path))  # another connection sees only what was committed
    try:
        found = {row[0] for row in other.execute("SELECT seq FROM messages")}
    finally:
        other.close()
    assert found == kept | {last}
    spool.close()
    again = Spool(path)
    assert {m.seq for m in again.pending(limit=10_000)} == kept | {last}
    again.close()
    assert integrity(path) == "ok"


CHILD = """
import sys
from pathlib import Path
from runtime.telemetry.spool import Spool
from runtime.telemetry.spooldb import SpoolUnavailableError

spool = Spool(Path(sys.argv[1]))
for i in range(10_000):
    try:
        m = spool.append("t/x", lambda seq, info: b"x" * 700)
    except SpoolUnavailableError as e:
        print(f"refused: {e}", flush=True)
        break
    print(m.seq, flush=True)
spool.close()
"""


def test_a_file_size_limit_keeps_every_committed_row(tmp_path: Path) -> None:
    """The same in a child process under RLIMIT_FSIZE (the WAL cannot grow past 256 KiB)."""
    path = tmp_path / "spool.sqlite"
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=file_size_limit(256 * KiB),
        cwd=Path(__file__).parents[2],
    )
    assert done.returncode == 0, done.stderr
    *seqs, refused = done.stdout.splitlines()
    assert refused.startswith("refused: telemetry spool "), refused
    assert "cannot append" in refused
    assert len(seqs) >= 5
    assert integrity(path) == "ok"
    spool = Spool(path)
    assert [m.seq for m in spool.pending(limit=10_000)] == [int(s) for s in seqs]
    spool.append("t/x", message(700))  # without the limit, it takes writes again
    spool.close()


def test_acknowledged_rows_are_deleted_once_there_is_room_again(
    fs: Path,
    mosquitto: Callable[..., Broker],
    caplog: pytest.LogCaptureFixture,
    cleanup: list[Callable[[], object]],
) -> None:
    """The disk fills while connected: the broker acknowledges rows that cannot be deleted. They
    stay (a reconnect would send them again), are deleted once there is room, without a
    reconnect, and the failure is logged once."""
    broker = mosquitto()
    sub = Subscriber(broker, topic="fd/#")
    cleanup.append(sub.close)
    spool = Spool(fs / "spool.sqlite")
    cleanup.append(spool.close)
    seqs = [spool.append(f"fd/rows/{i}", message(500)).seq for i in range(30)]
    filler = fs / "filler"

    def status(seq: int, kind: str, will_seq: object) -> bytes:
        if kind == "online":  # connected: the disk fills before any row is sent
            leave_free(fs, filler, 0)
        return f"{kind} {seq}".encode()

    options = settings_for(broker, Store(fs)).connection()
    publisher = SpoolPublisher(options, spool, "fd/status", status)
    caplog.set_level(logging.INFO, logger="runtime.telemetry")
    publisher.start()
    cleanup.append(lambda: publisher.stop(timeout_s=1.0))
    wait_until(lambda: publisher.status().acknowledged == len(seqs), what="every row acknowledged")
    assert spool.rows == len(seqs)  # nothing could be deleted
    assert integrity(spool.path) == "ok"
    filler.unlink()
    wait_until(lambda: spool.rows == 0, what="the acknowledged rows deleted")
    assert publisher.status().connects == 1
    received = {r.topic for r in sub.raw() if r.topic.startswith("fd/rows/")}
    assert received == {f"fd/rows/{i}" for i in range(30)}
    logged = [(r.levelno, r.getMessage()) for r in problems(caplog, MQTT)]
    errors = [m for level, m in logged if level == logging.ERROR]
    assert len(errors) == 1, logged
    assert "cannot delete acknowledged messages" in errors[0]
    assert "database or disk is full" in errors[0]
    assert any("deleted from the spool again" in m for _, m in logged), logged
    assert not [r for r in caplog.records if r.exc_info is not None]
