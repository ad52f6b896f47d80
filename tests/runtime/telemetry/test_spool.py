"""The SQLite spool: sequence numbers that survive restarts, delete-on-ack only, bounds that drop
the oldest and count it, and no committed row lost to a crash."""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.errors import TelemetryMessageError, TransportError
from runtime.telemetry.spool import ROW_OVERHEAD_BYTES, Spool, SpoolInfo, SpoolLimits

TOPIC = "edgeship/v1/lab/dev-1/telemetry"


def payload(size: int = 40):
    def build(seq: int, info: SpoolInfo) -> bytes:
        return f"{seq}:{info.dropped}:".encode().ljust(size, b".")

    return build


class Clock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_sequence_survives_reopen_and_is_shared_with_reserved_numbers(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite"
    spool = Spool(path, clock=Clock(1_000.0))
    first = spool.append(TOPIC, payload())
    assert first.seq == 1_000_000  # a new spool numbers from the wall clock in milliseconds
    assert spool.append(TOPIC, payload()).seq == first.seq + 1
    assert spool.reserve_seq() == first.seq + 2
    spool.close()

    again = Spool(path, clock=Clock(5.0))  # an earlier clock changes nothing once it exists
    third = again.append(TOPIC, payload())
    assert third.seq == first.seq + 3
    assert third.payload.startswith(f"{third.seq}:".encode())
    assert [m.seq for m in again.pending()] == [first.seq, first.seq + 1, third.seq]
    again.close()


def test_rows_are_deleted_only_when_acknowledged(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite"
    spool = Spool(path)
    ids = [spool.append(TOPIC, payload(), retain=i == 0).id for i in range(5)]
    assert [m.id for m in spool.pending(limit=2)] == ids[:2]
    assert [m.id for m in spool.pending(after_id=ids[2])] == ids[3:]
    assert spool.pending()[0].retain and not spool.pending()[1].retain
    assert spool.delete([ids[1], ids[3], 999_999]) == 2
    assert spool.delete([ids[1]]) == 0  # a PUBACK seen twice
    spool.close()

    reopened = Spool(path)
    assert [m.id for m in reopened.pending()] == [ids[0], ids[2], ids[4]]
    assert reopened.rows == 3
    assert reopened.size_bytes == 3 * (40 + len(TOPIC) + ROW_OVERHEAD_BYTES)
    reopened.close()


def test_row_bound_drops_the_oldest_and_counts_until_a_window_claims_it(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite"
    spool = Spool(path, SpoolLimits(max_rows=3))
    seqs = [spool.append(TOPIC, payload()).seq for _ in range(5)]
    assert [m.seq for m in spool.pending()] == seqs[2:]
    assert spool.rows == 3
    assert spool.take_new_drops() == 2
    assert spool.take_new_drops() == 0
    spool.close()

    reopened = Spool(path, SpoolLimits(max_rows=3))
    assert reopened.unclaimed_drops() == 2  # survives a restart until reported
    claimed = reopened.append(TOPIC, payload(), claim_drops=True)
    assert claimed.payload.startswith(f"{claimed.seq}:2:".encode())
    assert reopened.unclaimed_drops() == 1  # the claiming append itself dropped one more
    reopened.close()


def test_a_dropped_row_hands_its_claimed_count_back(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.sqlite", SpoolLimits(max_rows=2))
    for _ in range(3):
        spool.append(TOPIC, payload())  # the third drops the first
    window = spool.append(TOPIC, payload(), claim_drops=True)  # claims 1, drops another
    assert window.payload.startswith(f"{window.seq}:1:".encode())
    assert (spool.unclaimed_drops(), spool.undelivered_drops()) == (1, 2)
    spool.append(TOPIC, payload())
    spool.append(TOPIC, payload())  # drops the claiming window: its 1 comes back
    assert (spool.unclaimed_drops(), spool.undelivered_drops()) == (4, 4)
    last = spool.append(TOPIC, payload(), claim_drops=True)
    assert last.payload.startswith(f"{last.seq}:4:".encode())
    spool.delete(m.id for m in spool.pending())  # delivered: only the last append's drop is owed
    assert (spool.unclaimed_drops(), spool.undelivered_drops()) == (1, 1)


def test_byte_bound_drops_the_oldest(tmp_path: Path) -> None:
    limits = SpoolLimits(max_bytes=2_200, max_message_bytes=1_000)
    spool = Spool(tmp_path / "spool.sqlite", limits)
    row = 600 + len(TOPIC) + ROW_OVERHEAD_BYTES
    seqs = [spool.append(TOPIC, payload(600)).seq for _ in range(4)]
    assert 3 * row <= 2_200 < 4 * row
    assert [m.seq for m in spool.pending()] == seqs[1:]
    assert spool.size_bytes == 3 * row
    assert spool.take_new_drops() == 1


def test_age_bound_drops_old_rows(tmp_path: Path) -> None:
    clock = Clock(1_000.0)
    spool = Spool(tmp_path / "spool.sqlite", SpoolLimits(max_age_s=50.0), clock=clock)
    old = [spool.append(TOPIC, payload()).seq for _ in range(2)]
    clock.now = 1_040.0
    kept = spool.append(TOPIC, payload()).seq
    clock.now = 1_060.0
    assert spool.expire() == 2
    assert [m.seq for m in spool.pending()] == [kept]
    assert kept > max(old)
    assert spool.unclaimed_drops() == 2


@pytest.mark.parametrize(
    ("build", "error"),
    [
        (payload(2_000), TransportError),
        (
            lambda seq, info: (_ for _ in ()).throw(TelemetryMessageError("too big")),
            TelemetryMessageError,
        ),
    ],
    ids=["payload over the limit", "build fails"],
)
def test_a_failed_append_writes_nothing_and_uses_no_number(tmp_path: Path, build, error) -> None:
    spool = Spool(tmp_path / "spool.sqlite", SpoolLimits(max_message_bytes=1_000))
    before = spool.next_seq()
    with pytest.raises(error):
        spool.append(TOPIC, build)
    assert spool.rows == 0 and spool.pending() == []
    assert spool.next_seq() == before


def test_limits_must_hold_one_message() -> None:
    with pytest.raises(ValueError):
        SpoolLimits(max_bytes=1_000, max_message_bytes=1_000)
    with pytest.raises(ValueError):
        SpoolLimits(max_rows=0)


def test_the_file_is_private(tmp_path: Path) -> None:
    Spool(tmp_path / "spool.sqlite").close()
    mode = stat.S_IMODE((tmp_path / "spool.sqlite").stat().st_mode)
    assert mode & 0o077 == 0


def test_a_damaged_file_is_moved_aside_and_numbering_continues_upward(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    spool = Spool(path, clock=Clock(2_000.0))
    assert spool.append(TOPIC, payload()).seq == 2_000_000
    aside = [p.name for p in tmp_path.iterdir() if ".damaged-" in p.name]
    assert aside == ["spool.sqlite.damaged-2000"]


def test_one_spool_has_one_owner(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite"
    first = Spool(path)
    with pytest.raises(TransportError, match="in use"):
        Spool(path)
    first.close()
    Spool(path).close()


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite"
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(TransportError, match="newer"):
        Spool(path)


CHILD = """
import sys
from pathlib import Path
from runtime.telemetry.spool import Spool
spool = Spool(Path(sys.argv[1]))
while True:
    m = spool.append("t/x", lambda seq, info: b"x" * 200)
    sys.stdout.write(f"{m.seq}\\n")
    sys.stdout.flush()
"""


def test_a_killed_writer_loses_no_committed_row(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[3],
    )
    assert child.stdout is not None
    committed = [int(child.stdout.readline()) for _ in range(300)]
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    committed += [int(line) for line in child.stdout.read().split()]
    spool = Spool(path)
    stored = [m.seq for m in spool.pending(limit=100_000)]
    assert set(committed) <= set(stored)
    assert stored == sorted(stored) and len(set(stored)) == len(stored)
    assert spool.next_seq() == stored[-1] + 1
