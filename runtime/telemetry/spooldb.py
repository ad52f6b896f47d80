"""The spool's SQLite file (``runtime/telemetry/spool.py`` holds what the rows mean): opening
it with the durability settings, one owner at a time, and replacing a damaged file.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
from pathlib import Path
from typing import Callable, Iterator

from runtime.errors import TransportError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1


class SpoolUnavailableError(TransportError):
    """The spool file cannot be opened or written now for a reason outside the file's content:
    a full disk, an I/O error, permissions. What the spool committed before is intact; the same
    call may succeed once the cause is gone."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    seq INTEGER NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    created REAL NOT NULL,
    size INTEGER NOT NULL,
    claimed INTEGER NOT NULL DEFAULT 0
);
"""


def open_database(
    path: Path, wal_limit_bytes: int, clock: Callable[[], float]
) -> tuple[sqlite3.Connection, int]:
    """Lock and open the spool at ``path`` (creating it): (connection, lock file descriptor).

    Raises TransportError when another process holds the spool or the file is from a newer
    edgeship, SpoolUnavailableError when it cannot be opened for other reasons than its content
    (a full disk, permissions, I/O). A file that is not a readable
    spool is moved aside (``NAME.damaged-<time>``) with a log line, and a new one started.
    """
    owner = _lock_file(path)
    try:
        return _open_or_replace(path, wal_limit_bytes, clock), owner
    except BaseException:
        os.close(owner)
        raise


def _open_or_replace(
    path: Path, wal_limit_bytes: int, clock: Callable[[], float]
) -> sqlite3.Connection:
    try:
        return _open(path, wal_limit_bytes, clock)
    except sqlite3.DatabaseError as e:
        if isinstance(e, sqlite3.OperationalError):  # permissions, I/O: not the file's fault
            raise SpoolUnavailableError(f"cannot open the telemetry spool {path}: {e}") from e
        aside = path.with_name(f"{path.name}.damaged-{int(clock())}")
        log.error("telemetry spool %s is unreadable (%s); moved to %s", path, e, aside)
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.replace(f"{path}{suffix}", f"{aside}{suffix}")
        try:
            return _open(path, wal_limit_bytes, clock)
        except sqlite3.DatabaseError as e2:
            raise SpoolUnavailableError(f"cannot create the telemetry spool {path}: {e2}") from e2


def _open(path: Path, wal_limit_bytes: int, clock: Callable[[], float]) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    fresh = not path.exists()
    db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    try:
        if fresh:
            os.chmod(path, 0o600)  # may hold sampled inputs: owner only
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute(f"PRAGMA journal_size_limit={int(wal_limit_bytes)}")
        db.execute("PRAGMA busy_timeout=5000")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise TransportError(
                f"telemetry spool {path} has schema {version}, newer than this "
                f"edgeship ({SCHEMA_VERSION}); upgrade edgeship or move the file away"
            )
        db.executescript(_SCHEMA)
        first = max(1, int(clock() * 1000))
        db.execute("INSERT OR IGNORE INTO meta VALUES ('next_seq', ?)", (first,))
        db.execute("INSERT OR IGNORE INTO meta VALUES ('dropped', 0)")
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        db.execute("SELECT COUNT(*) FROM messages").fetchone()
    except BaseException:
        db.close()
        raise
    return db


def _lock_file(path: Path) -> int:
    """Hold ``path.lock`` exclusively for as long as the spool is open: two processes draining
    one spool would send every message twice. Raises TransportError when another holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as e:
        raise SpoolUnavailableError(f"cannot create the telemetry spool lock {lock}: {e}") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        raise TransportError(
            f"the telemetry spool {path} is in use by another process (another agent with the "
            "same home?)"
        ) from e
    return fd


@contextlib.contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE … COMMIT, or ROLLBACK on any error, a failed COMMIT included (then
    re-raised)."""
    if db.in_transaction:
        yield
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        # A failed COMMIT (a full disk) may leave the transaction open, and SQLite may already
        # have rolled back by itself: roll back only what is still open, so that neither a
        # second ROLLBACK hides the error that matters nor the next write joins a stale
        # transaction that never commits.
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def meta(db: sqlite3.Connection, key: str) -> int:
    row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    if row is None:
        raise TransportError(f"telemetry spool: meta value {key!r} is missing")
    return int(row[0])
