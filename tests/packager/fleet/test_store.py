"""The fleet store on SQLite and PostgreSQL: dedupe, order-independent state, alerts."""

from __future__ import annotations

import random
import sqlite3
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest

from packager.fleet.alerts import Alert
from packager.fleet.store import FleetStore, Received, open_store
from runtime.errors import FleetStoreError, UsageError
from runtime.telemetry.messages import encode, parse_message
from tests.packager.fleet.helpers import event, status, telemetry, topic_of


def rec(doc: dict[str, Any], received: float = 1000.0) -> Received:
    return Received(parse_message(topic_of(doc), encode(doc)), received)


def test_each_message_is_stored_once(store_url: str) -> None:
    with open_store(store_url) as store:
        first = store.ingest(
            [
                rec(telemetry("lab", "d1", 1)),
                rec(telemetry("lab", "d1", 2)),
                rec(telemetry("lab", "d1", 2)),
            ]
        )
        assert (len(first.stored), first.duplicates) == (2, 1)
        again = store.ingest(
            [
                rec(telemetry("lab", "d1", 2)),
                rec(telemetry("lab", "d1", 3)),
                rec(telemetry("lab", "d2", 2)),
            ]
        )
        assert [r.key for r in again.stored] == [("lab", "d1", 3), ("lab", "d2", 2)]
        assert again.duplicates == 1
        assert store.stored_count() == 4
        assert [w.seq for w in store.windows("lab", "d1", "digits")] == [3, 2, 1]
        assert store.ingest([]).stored == ()


HISTORY = [
    status("lab", "d1", 1, models=(("digits", "1.0.0"),)),
    telemetry("lab", "d1", 2, p95=5.0),
    telemetry("lab", "d1", 4, p95=9.0, version="1.1.0"),
    telemetry("lab", "d1", 3, p95=7.0),
    event("lab", "d1", 5, kind="rollback"),
    status("lab", "d1", 6, state="offline"),
    status("lab", "d2", 1, models=(("digits", "2.0.0"),)),
    telemetry("lab", "d2", 2, p95=1.0, version="2.0.0"),
    status("lab", "d2", 0, state="offline"),
    status("lab", "d2", 4, models=(("digits", "2.0.0"),)),
    status("other", "d1", 1),
]


def snapshot(store: FleetStore) -> Any:
    newest = store.model_versions()
    devices = [
        (d.key, d.online, d.versions(newest.get(d.key)), d.birth_seq, d.last_seq)
        for d in store.devices()
    ]
    latest = [(w.key, w.seq, w.latency_ms["p95"], w.version) for w in store.latest_windows()]
    return devices, latest


def test_state_does_not_depend_on_the_order_of_batches(store_url: str, tmp_path: Path) -> None:
    with open_store(store_url) as store:
        store.ingest([rec(d) for d in HISTORY])
        expected = snapshot(store)
    assert expected[0] == [
        (("lab", "d1"), False, {"digits": "1.1.0"}, 1, 6),
        (("lab", "d2"), True, {"digits": "2.0.0"}, 4, 4),
        (("other", "d1"), True, {"digits": "1.0.0"}, 1, 1),
    ]
    assert expected[1][0] == (("lab", "d1", "digits"), 4, 9.0, "1.1.0")
    for attempt in range(3):
        shuffled = HISTORY[:]
        random.Random(attempt).shuffle(shuffled)
        with open_store(f"sqlite:///{tmp_path / f'{attempt}.db'}") as other:
            for doc in shuffled:
                other.ingest([rec(doc)])
            assert snapshot(other) == expected


def test_events_and_fleet_filter(store_url: str) -> None:
    with open_store(store_url) as store:
        store.ingest([rec(event("lab", "d1", 1, kind="selftest")), rec(event("x", "d9", 1))])
        assert [(e.device, e.event) for e in store.events("lab")] == [("d1", "selftest")]
        assert {e.fleet for e in store.events()} == {"lab", "x"}
        store.ingest([rec(status("x", "d9", 2))])
        assert [d.device for d in store.devices("x")] == ["d9"]


def test_one_open_alert_per_key(store_url: str) -> None:
    alert = Alert(
        rule="slow",
        kind="latency",
        severity="warning",
        fleet="lab",
        device="d1",
        model="digits",
        value=80.0,
        threshold=50.0,
        message="slow",
        opened=10.0,
    )
    with open_store(store_url) as store:
        opened = store.open_alert(alert)
        assert opened is not None and opened.id is not None
        assert store.open_alert(alert) is None
        other = store.open_alert(Alert(**{**alert.__dict__, "device": "d2"}))
        assert other is not None
        assert [a.id for a in store.open_alerts()] == [other.id, opened.id]
        cleared = store.clear_alert(alert.key, 20.0)
        assert cleared is not None and (cleared.id, cleared.cleared) == (opened.id, 20.0)
        assert store.clear_alert(alert.key, 21.0) is None
        again = store.open_alert(alert)
        assert again is not None and again.id not in (opened.id, other.id)
        assert len(store.alerts()) == 2 and len(store.alerts(include_cleared=True)) == 3


def test_two_writers_store_overlapping_batches_once(store_url: str) -> None:
    """Two connections (as two monitors would) ingest the same messages in different batches."""
    docs = [telemetry("lab", f"d{i % 7}", i // 7, p95=float(i)) for i in range(700)]
    docs += [status("lab", f"d{i}", 1000) for i in range(7)]
    open_store(store_url).close()  # tables first
    results: list[int] = []
    errors: list[BaseException] = []

    def writer(seed: int) -> None:
        order = docs[:]
        random.Random(seed).shuffle(order)
        try:
            with open_store(store_url) as store:
                for start in range(0, len(order), 50):
                    batch = [rec(d) for d in order[start : start + 50]]
                    for _ in range(20):  # a deadlock or a busy database fails a batch: retry
                        try:
                            results.append(len(store.ingest(batch).stored))
                            break
                        except FleetStoreError:
                            continue
                    else:
                        raise AssertionError("a batch failed 20 times")
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(seed,)) for seed in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sum(results) == len(docs)
    with open_store(store_url) as store:
        assert store.stored_count() == len(docs)
        devices = store.devices()
        assert [(d.device, d.last_seq, d.online) for d in devices] == [
            (f"d{i}", 1000, True) for i in range(7)
        ]
        latest = {w.device: w.seq for w in store.latest_windows()}
        assert latest == {f"d{i}": 99 for i in range(7)}


def test_bad_urls_and_unreachable_databases(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="unsupported database URL"):
        open_store("mysql://x")
    with pytest.raises(UsageError, match="names no file"):
        open_store("sqlite:///")
    with pytest.raises(FleetStoreError, match="does not exist"):
        open_store(f"sqlite:///{tmp_path}/missing/fleet.db")
    with pytest.raises(FleetStoreError, match=r"postgresql://u:\*\*\*@127.0.0.1:1/test"):
        open_store("postgresql://u:secret@127.0.0.1:1/test")


def test_a_newer_schema_is_refused(store_url: str) -> None:
    open_store(store_url).close()
    if store_url.startswith("sqlite"):
        with sqlite3.connect(store_url[len("sqlite:///") :]) as conn:
            conn.execute("UPDATE fleet_meta SET value = '99'")
    else:
        with psycopg.connect(store_url, autocommit=True) as conn:
            conn.execute("UPDATE fleet_meta SET value = '99'")
    with pytest.raises(FleetStoreError, match="schema version 99"):
        open_store(store_url)


def test_sqlite_keeps_its_indexes_cached_and_checkpoints_seldom(tmp_path: Path) -> None:
    from packager.fleet.sqlite_store import CACHE_KIB, CHECKPOINT_PAGES, SqliteStore

    store = open_store(f"sqlite:///{tmp_path / 'fleet.db'}")
    assert isinstance(store, SqliteStore)
    conn = store._conn()
    assert conn.execute("PRAGMA cache_size").fetchone() == (-CACHE_KIB,)
    assert conn.execute("PRAGMA wal_autocheckpoint").fetchone() == (CHECKPOINT_PAGES,)
    # still durable at every commit
    assert conn.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    store.close()
