"""The telemetry spool: every outgoing message is committed to ``HOME/spool.sqlite`` before it is
sent, and deleted only when the broker acknowledges it (design.md §5, docs/telemetry.md).

The spool is the one truth about what still has to leave the device: the MQTT client's own
queue lives in memory and dies with the process, so the publisher re-reads unacknowledged rows
from here after every reconnect and every restart.

Durability. The database runs in WAL mode with ``synchronous=FULL``: a committed insert survives
a process crash *and* a power loss (each commit syncs the WAL). The cost is one fsync per commit,
and commits are few: one per telemetry window, one per event, one per batch of acknowledgements.
``NORMAL`` would survive a process crash only, and a device that loses power is the case a spool
exists for.

Sequence numbers. Each message carries a per-device sequence number, allocated in the same
transaction as its insert, so a number is never reused and never skipped by a committed message.
A new spool starts its numbers at the wall-clock time in milliseconds: a device whose spool file
was deleted or damaged keeps numbering above what the monitor saw before, so its messages are
not mistaken for duplicates. Numbers are unique and increasing, not contiguous (status messages
reserve numbers that are not spooled).

Bounds. :class:`SpoolLimits` caps the bytes and rows waiting and their age. Past a bound the
oldest rows are dropped first; the drops are counted in the database (so a drop before a crash is
still reported) until a telemetry window claims the count. A row remembers the count it claimed:
if it is dropped in turn, its count goes back to the counter, so every drop reaches the broker
in some window that is delivered.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

from runtime.errors import TransportError
from runtime.limits import MiB
from runtime.telemetry.messages import MAX_MESSAGE_BYTES
from runtime.telemetry.spooldb import SpoolUnavailableError, meta, open_database, transaction

log = logging.getLogger(__name__)

ROW_OVERHEAD_BYTES = 64
"""Bytes counted per row on top of its topic and payload (ids, flags, SQLite record header)."""
DELETE_CHUNK = 500
"""Ids per DELETE statement (SQLite limits the number of bound parameters)."""


@dataclass(frozen=True)
class SpoolLimits:
    """How much unacknowledged telemetry a device keeps. Past any bound, oldest rows go first."""

    max_bytes: int = 64 * MiB
    """Topic and payload bytes of waiting messages, plus ``ROW_OVERHEAD_BYTES`` per row. The file
    itself is larger by SQLite's page overhead and WAL (at most ``wal_limit_bytes``)."""
    max_rows: int = 200_000
    """Waiting messages."""
    max_age_s: float = 7 * 24 * 3600.0
    """Seconds a message may wait (by the wall clock: a clock set forward drops early)."""
    max_message_bytes: int = MAX_MESSAGE_BYTES
    """Largest single payload accepted (bytes)."""
    wal_limit_bytes: int = 4 * MiB
    """Size the WAL file is truncated to after a checkpoint (bytes)."""

    def __post_init__(self) -> None:
        if self.max_rows < 1 or self.max_age_s <= 0:
            raise ValueError("spool limits must be positive")
        if self.max_bytes < self.max_message_bytes + 1024 + ROW_OVERHEAD_BYTES:
            raise ValueError("max_bytes must hold at least one message of max_message_bytes")


@dataclass(frozen=True)
class SpooledMessage:
    """One row of the spool: ``id`` orders rows, ``seq`` is the number inside the payload."""

    id: int
    seq: int
    topic: str
    payload: bytes
    qos: int
    retain: bool


@dataclass(frozen=True)
class SpoolInfo:
    """What a message being built may report about the spool: ``dropped`` rows since the last
    claim (only when the append claims them, else 0) and rows ``pending`` before this one."""

    dropped: int
    pending: int


Build = Callable[[int, SpoolInfo], bytes]
"""Builds a payload from its sequence number (runs inside the insert's transaction)."""


class Spool:
    """A thread-safe SQLite spool. Open it with ``Spool(path)``; :meth:`close` when done.

    Raises SpoolUnavailableError (a TransportError) when the database cannot be opened or
    written (a full disk, read-only): a failed write changes nothing, so the spool stays as it
    was and takes writes again once there is room. A file that is not a readable spool is
    moved aside (``spool.sqlite.damaged-<time>``) and a new one is started, with a log line.
    """

    def __init__(
        self,
        path: Path,
        limits: SpoolLimits = SpoolLimits(),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.limits = limits
        self._clock = clock
        self._lock = threading.Lock()
        self._new_drops = 0
        self._full_logged = False
        self._db, self._owner = open_database(path, limits.wal_limit_bytes, clock)
        rows, size, last = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0), COALESCE(MAX(id), 0) FROM messages"
        ).fetchone()
        self._rows, self._bytes, self._last_id = int(rows), int(size), int(last)

    # --- writing ----------------------------------------------------------------------------------

    def append(
        self,
        topic: str,
        build: Build,
        qos: int = 1,
        retain: bool = False,
        claim_drops: bool = False,
    ) -> SpooledMessage:
        """Allocate the next sequence number, build the payload with it, insert it, and enforce
        the limits, in one transaction. ``claim_drops`` hands the drop count to ``build`` (in
        :class:`SpoolInfo`) and resets it.

        Raises TelemetryMessageError (from ``build``), TransportError (payload over
        ``max_message_bytes``) or SpoolUnavailableError (the database cannot be written: a full
        disk); on any error nothing is written.
        """
        with self._lock:
            return self._append(topic, build, qos, retain, claim_drops)

    def _append(
        self, topic: str, build: Build, qos: int, retain: bool, claim_drops: bool
    ) -> SpooledMessage:
        with self._write("append") as db:
            seq = meta(db, "next_seq")
            dropped = meta(db, "dropped") if claim_drops else 0
            payload = build(seq, SpoolInfo(dropped, self._rows))
            if len(payload) > self.limits.max_message_bytes:
                raise TransportError(
                    f"telemetry message of {len(payload)} bytes is over the spool's limit of "
                    f"{self.limits.max_message_bytes}"
                )
            size = len(payload) + len(topic.encode("utf-8")) + ROW_OVERHEAD_BYTES
            cursor = db.execute(
                "INSERT INTO messages (seq, topic, payload, qos, retain, created, size, claimed) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (seq, topic, payload, qos, int(retain), self._clock(), size, dropped),
            )
            db.execute("UPDATE meta SET value = ? WHERE key = 'next_seq'", (seq + 1,))
            if claim_drops:
                db.execute("UPDATE meta SET value = 0 WHERE key = 'dropped'")
            row_id = int(cursor.lastrowid or 0)
            rows, nbytes = self._rows + 1, self._bytes + size
            rows, nbytes, drops = self._enforce(db, rows, nbytes)
        self._rows, self._bytes, self._last_id = rows, nbytes, row_id
        self._new_drops += drops
        log.debug("spooled seq %d on %s (%d bytes)", seq, topic, len(payload))
        return SpooledMessage(row_id, seq, topic, payload, qos, retain)

    def reserve_seq(self) -> int:
        """Allocate a sequence number for a message that is not spooled (status messages)."""
        with self._lock, self._write("reserve a sequence number") as db:
            seq = meta(db, "next_seq")
            db.execute("UPDATE meta SET value = ? WHERE key = 'next_seq'", (seq + 1,))
        return seq

    def delete(self, ids: Iterable[int]) -> int:
        """Delete acknowledged rows (ids already gone are ignored); returns how many went."""
        wanted = sorted(set(ids))
        if not wanted:
            return 0
        rows = size = 0
        with self._lock:
            with self._write("delete acknowledged messages") as db:
                for start in range(0, len(wanted), DELETE_CHUNK):
                    chunk = wanted[start : start + DELETE_CHUNK]
                    marks = ",".join("?" * len(chunk))
                    where = f"FROM messages WHERE id IN ({marks})"
                    found = db.execute(
                        f"SELECT COUNT(*), COALESCE(SUM(size), 0) {where}",
                        chunk,
                    ).fetchone()
                    db.execute(f"DELETE {where}", chunk)
                    rows, size = rows + int(found[0]), size + int(found[1])
            self._rows -= rows
            self._bytes -= size
            limits = self.limits
            if self._rows < 0.9 * limits.max_rows and self._bytes < 0.9 * limits.max_bytes:
                self._full_logged = False
        return rows

    def add_drops(self, count: int) -> None:
        """Count ``count`` messages lost before they reached the spool (they could not be
        written: a full disk) as dropped, so that the next telemetry window reports them.
        Raises SpoolUnavailableError when the spool cannot be written yet."""
        if count <= 0:
            return
        with self._lock:
            with self._write("count dropped messages") as db:
                db.execute("UPDATE meta SET value = value + ? WHERE key = 'dropped'", (count,))
            self._new_drops += count

    def expire(self) -> int:
        """Drop rows older than ``max_age_s`` (also done on every append); returns how many."""
        with self._lock:
            with self._write("expire old messages") as db:
                rows, nbytes, drops = self._enforce(db, self._rows, self._bytes)
            self._rows, self._bytes = rows, nbytes
            self._new_drops += drops
        return drops

    def _enforce(self, db: sqlite3.Connection, rows: int, nbytes: int) -> tuple[int, int, int]:
        """Drop what breaks a limit, oldest first, and count it. Runs inside a transaction."""
        limits = self.limits
        cutoff = self._clock() - limits.max_age_s
        old = db.execute("SELECT MAX(id) FROM messages WHERE created < ?", (cutoff,)).fetchone()[0]
        if old is not None:
            log.warning("telemetry spool: dropping messages older than %.0f s", limits.max_age_s)
            rows, nbytes, aged = self._drop(db, "created < ?", (cutoff,), rows, nbytes)
        else:
            aged = 0
        last, gone, freed = 0, 0, 0
        if rows > limits.max_rows or nbytes > limits.max_bytes:
            cursor = db.execute("SELECT id, size FROM messages ORDER BY id")
            while rows - gone > limits.max_rows or nbytes - freed > limits.max_bytes:
                row = cursor.fetchone()
                if row is None:
                    break
                last, gone, freed = row[0], gone + 1, freed + row[1]
            cursor.close()
            if not self._full_logged:
                self._full_logged = True
                log.warning(
                    "telemetry spool full (%d rows or %d bytes): dropping the oldest "
                    "messages; the count is reported in telemetry",
                    limits.max_rows,
                    limits.max_bytes,
                )
            rows, nbytes, gone = self._drop(db, "id <= ?", (last,), rows, nbytes)
        return rows, nbytes, aged + gone

    def _drop(
        self, db: sqlite3.Connection, where: str, args: tuple[Any, ...], rows: int, nbytes: int
    ) -> tuple[int, int, int]:
        """Delete the rows matching ``where``; count them, and hand the drops they had claimed
        back to the counter."""
        gone, freed, claimed = db.execute(
            f"SELECT COUNT(*), COALESCE(SUM(size), 0), COALESCE(SUM(claimed), 0) FROM messages "  # noqa: S608
            f"WHERE {where}",
            args,
        ).fetchone()
        db.execute(f"DELETE FROM messages WHERE {where}", args)  # noqa: S608
        db.execute("UPDATE meta SET value = value + ? WHERE key = 'dropped'", (gone + claimed,))
        return rows - int(gone), nbytes - int(freed), int(gone)

    @contextlib.contextmanager
    def _write(self, what: str) -> Iterator[sqlite3.Connection]:
        db = self._db
        try:
            with transaction(db):
                yield db
        except sqlite3.Error as e:
            raise SpoolUnavailableError(f"telemetry spool {self.path}: cannot {what}: {e}") from e

    # --- reading ----------------------------------------------------------------------------------

    def pending(self, after_id: int = 0, limit: int = 100) -> list[SpooledMessage]:
        """Up to ``limit`` waiting rows with an id above ``after_id``, oldest first."""
        with self._lock:
            try:
                found = self._db.execute(
                    "SELECT id, seq, topic, payload, qos, retain FROM messages WHERE id > ? "
                    "ORDER BY id LIMIT ?",
                    (after_id, limit),
                ).fetchall()
            except sqlite3.Error as e:
                raise SpoolUnavailableError(f"telemetry spool {self.path}: cannot read: {e}") from e
        return [
            SpooledMessage(int(i), int(s), t, bytes(p), int(q), bool(r))
            for i, s, t, p, q, r in found
        ]

    @property
    def last_id(self) -> int:
        """The id of the newest row ever inserted by this process (0 when none)."""
        return self._last_id

    @property
    def rows(self) -> int:
        """Rows waiting for an acknowledgement."""
        return self._rows

    @property
    def size_bytes(self) -> int:
        """Bytes waiting, as the ``max_bytes`` limit counts them."""
        return self._bytes

    def take_new_drops(self) -> int:
        """Rows dropped since the last call (in this process), for a ``spool-dropped`` event."""
        with self._lock:
            drops, self._new_drops = self._new_drops, 0
        return drops

    def unclaimed_drops(self) -> int:
        """Rows dropped and not yet claimed by a telemetry window (survives restarts)."""
        with self._lock:
            return meta(self._db, "dropped")

    def undelivered_drops(self) -> int:
        """Rows dropped whose count has not reached the broker yet: unclaimed, or claimed by a
        message still waiting in the spool."""
        with self._lock:
            waiting = self._db.execute("SELECT COALESCE(SUM(claimed), 0) FROM messages").fetchone()
            return meta(self._db, "dropped") + int(waiting[0])

    def next_seq(self) -> int:
        """The sequence number the next message will get."""
        with self._lock:
            return meta(self._db, "next_seq")

    def close(self) -> None:
        with self._lock:
            self._db.close()
            if self._owner >= 0:
                os.close(self._owner)  # releases the lock
                self._owner = -1


def open_spool(home: Path, limits: Optional[SpoolLimits] = None) -> Spool:
    """The spool of the device store at ``home`` (``home/spool.sqlite``)."""
    return Spool(home / "spool.sqlite", limits or SpoolLimits())
