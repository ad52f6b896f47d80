"""The SQLite fleet store (``sqlite:///fleet.db``): one file, the default.

Write-ahead log with ``synchronous=FULL``, so a committed batch survives a crash of the process
or the machine before the monitor acknowledges its messages. Several processes may share the file
(each write transaction takes SQLite's write lock up front, waiting up to ``BUSY_TIMEOUT_S``), but
one writer at a time is all SQLite allows: several monitors want PostgreSQL.

A batch of telemetry from many devices changes a leaf page of each key index per device, and
every commit writes each page it changed to the log whole: the page cache holds the indexes (no
page is read from the file again per batch), and the log is copied back into the database only
every ``CHECKPOINT_PAGES`` pages, so a page that many batches change is copied once, not once per
commit.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Optional

from packager.fleet.sql import SqlStore, schema

BUSY_TIMEOUT_S = 30.0
"""How long a write waits for another process's write transaction (seconds)."""
CACHE_KIB = 64 * 1024
"""Page cache of a connection (KiB; SQLite's default is 2 MiB)."""
CHECKPOINT_PAGES = 16_384
"""Write-ahead log pages (4 KiB each) after which a commit copies the log into the database
(SQLite's default is 1,000: about one batch)."""


class SqliteStore(SqlStore):
    errors = (sqlite3.Error,)

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self._call(self._conn)

    def describe(self) -> str:
        return f"sqlite:///{self.path}"

    def _connect(self) -> Any:
        if self.path.parent and not self.path.parent.is_dir():
            raise sqlite3.OperationalError(f"folder {self.path.parent} does not exist")
        conn = sqlite3.connect(
            str(self.path), timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
            conn.execute(f"PRAGMA wal_autocheckpoint={CHECKPOINT_PAGES}")
            conn.execute("BEGIN IMMEDIATE")
            for statement in schema("INTEGER PRIMARY KEY"):
                conn.execute(statement)
            self._check_schema(conn.cursor())
            conn.execute("COMMIT")
        except BaseException:
            conn.close()
            raise
        return conn

    def _begin(self, conn: Any) -> Any:
        cur = conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        return cur

    def _commit(self, conn: Any) -> None:
        conn.execute("COMMIT")

    def _insert_seen(self, cur: Any, rows: list[tuple[Any, ...]]) -> set[tuple[str, str, int]]:
        new = set()
        for row in rows:
            cur.execute(
                "INSERT OR IGNORE INTO fleet_seen (fleet, device, seq, kind, received) "
                "VALUES (?, ?, ?, ?, ?)",
                row,
            )
            if cur.rowcount == 1:
                new.add(row[:3])
        return new

    def _insert_alert(self, cur: Any, values: tuple[Any, ...]) -> Optional[int]:
        cur.execute(
            "INSERT OR IGNORE INTO fleet_alerts (rule, kind, severity, fleet, device, model, "
            "value, threshold, message, opened, cleared) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            values,
        )
        return int(cur.lastrowid) if cur.rowcount == 1 else None
