"""The SQL both fleet stores share: tables, the ingest transaction, and the queries.

Written in the SQL that SQLite (3.24 or newer) and PostgreSQL both accept, with ``?`` for
parameters (the PostgreSQL store rewrites them). What differs between the two (connecting,
starting a write transaction, row locks, how the dedupe insert reports which rows were new, how an
alert insert returns its id) is left to the subclasses' hooks.
"""

# ruff: noqa: S608 - statements are built from this module's constants; values are always bound

from __future__ import annotations

import contextlib
import json
from abc import abstractmethod
from typing import Any, Iterable, Optional, Sequence

from packager.fleet.alerts import Alert
from packager.fleet.series import COLUMNS, Window
from packager.fleet.state import DeviceState, apply_status
from packager.fleet.store import Event, FleetStore, IngestResult, Received
from runtime.errors import FleetStoreError

SCHEMA_VERSION = 1
CHUNK = 300
"""Keys per ``IN (VALUES …)`` list: below SQLite's oldest limit of 999 parameters."""

TELEMETRY = COLUMNS
DEVICE = (
    "fleet", "device", "birth_seq", "prev_birth_seq", "will_seq", "lost_seq", "lost_since",
    "shutdown_seq", "shutdown_since", "status", "last_seq", "last_ts", "first_seen", "last_seen",
)  # fmt: skip
STATUS = DEVICE[2:10]
"""The device columns only status messages change (the rest only ever grow or shrink)."""
EVENT = ("fleet", "device", "seq", "ts", "received", "event", "model", "detail")
ALERT = ("id", "rule", "kind", "severity", "fleet", "device", "model", "value", "threshold",
         "message", "opened", "cleared")  # fmt: skip
JSON_COLUMNS = frozenset({"status", "detail"})

_WINDOW_COLUMNS = """fleet TEXT NOT NULL, device TEXT NOT NULL, model TEXT NOT NULL,
    seq BIGINT NOT NULL, ts DOUBLE PRECISION NOT NULL, received DOUBLE PRECISION NOT NULL,
    version TEXT NOT NULL, requests BIGINT NOT NULL, errors BIGINT NOT NULL,
    rejected BIGINT NOT NULL, p50 DOUBLE PRECISION, p95 DOUBLE PRECISION, p99 DOUBLE PRECISION,
    max_ms DOUBLE PRECISION, drift_worst DOUBLE PRECISION, feedback_count BIGINT NOT NULL,
    accuracy DOUBLE PRECISION, mae DOUBLE PRECISION, raw TEXT NOT NULL"""


def schema(autoid: str) -> list[str]:
    """The DDL; ``autoid`` is the dialect's auto-numbered primary key column type."""
    return [
        "CREATE TABLE IF NOT EXISTS fleet_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        # the dedupe record: a message is stored by whoever inserts its row first
        """CREATE TABLE IF NOT EXISTS fleet_seen (fleet TEXT NOT NULL, device TEXT NOT NULL,
            seq BIGINT NOT NULL, kind TEXT NOT NULL, received DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (fleet, device, seq))""",
        """CREATE TABLE IF NOT EXISTS fleet_devices (fleet TEXT NOT NULL, device TEXT NOT NULL,
            birth_seq BIGINT NOT NULL DEFAULT -1, prev_birth_seq BIGINT NOT NULL DEFAULT -1,
            will_seq BIGINT NOT NULL DEFAULT -1, lost_seq BIGINT NOT NULL DEFAULT -1,
            lost_since DOUBLE PRECISION, shutdown_seq BIGINT NOT NULL DEFAULT -1,
            shutdown_since DOUBLE PRECISION, status TEXT NOT NULL DEFAULT '{}',
            last_seq BIGINT NOT NULL DEFAULT -1, last_ts DOUBLE PRECISION,
            first_seen DOUBLE PRECISION, last_seen DOUBLE PRECISION, online INTEGER,
            PRIMARY KEY (fleet, device))""",
        f"""CREATE TABLE IF NOT EXISTS fleet_telemetry ({_WINDOW_COLUMNS},
            PRIMARY KEY (fleet, device, model, seq))""",
        # every (device, model) that ever sent a window: the newest window of each is found
        # through the telemetry primary key (highest seq), not kept twice
        """CREATE TABLE IF NOT EXISTS fleet_models (fleet TEXT NOT NULL, device TEXT NOT NULL,
            model TEXT NOT NULL, PRIMARY KEY (fleet, device, model))""",
        """CREATE TABLE IF NOT EXISTS fleet_events (fleet TEXT NOT NULL, device TEXT NOT NULL,
            seq BIGINT NOT NULL, ts DOUBLE PRECISION NOT NULL, received DOUBLE PRECISION NOT NULL,
            event TEXT NOT NULL, model TEXT, detail TEXT NOT NULL,
            PRIMARY KEY (fleet, device, seq))""",
        "CREATE INDEX IF NOT EXISTS fleet_events_received ON fleet_events (received)",
        f"""CREATE TABLE IF NOT EXISTS fleet_alerts (id {autoid}, rule TEXT NOT NULL,
            kind TEXT NOT NULL, severity TEXT NOT NULL, fleet TEXT NOT NULL,
            device TEXT NOT NULL, model TEXT NOT NULL, value DOUBLE PRECISION NOT NULL,
            threshold DOUBLE PRECISION NOT NULL, message TEXT NOT NULL,
            opened DOUBLE PRECISION NOT NULL, cleared DOUBLE PRECISION)""",
        # no alert storms: one open alert per (rule, fleet, device, model)
        """CREATE UNIQUE INDEX IF NOT EXISTS fleet_alerts_open
            ON fleet_alerts (rule, fleet, device, model) WHERE cleared IS NULL""",
    ]


def _values(columns: Sequence[str], row: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(
        json.dumps(row[c], separators=(",", ":")) if c in JSON_COLUMNS else row[c] for c in columns
    )


def _record(columns: Sequence[str], values: Sequence[Any]) -> dict[str, Any]:
    return {c: json.loads(v) if c in JSON_COLUMNS else v for c, v in zip(columns, values)}


def chunks(items: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]


_MARKS = ", ".join("?" * len(TELEMETRY))
_INSERT_WINDOW = f"INSERT INTO fleet_telemetry ({', '.join(TELEMETRY)}) VALUES ({_MARKS})"
_INSERT_MODEL = (
    "INSERT INTO fleet_models (fleet, device, model) VALUES (?, ?, ?) ON CONFLICT DO NOTHING"
)
_NEWEST = """t.seq = (SELECT MAX(x.seq) FROM fleet_telemetry x
    WHERE x.fleet = k.fleet AND x.device = k.device AND x.model = k.model)"""
_ON_KEY = "t.fleet = k.fleet AND t.device = k.device AND t.model = k.model"
_INSERT_EVENT = (
    f"INSERT INTO fleet_events ({', '.join(EVENT)}) VALUES ({', '.join('?' * len(EVENT))})"
)
# every message: monotone, so any order of batches (and processes) ends in the same row
_UPSERT_SEEN = """INSERT INTO fleet_devices
    (fleet, device, last_seq, last_ts, first_seen, last_seen) VALUES (?, ?, ?, ?, ?, ?)
    ON CONFLICT (fleet, device) DO UPDATE SET
    last_ts = CASE WHEN excluded.last_seq > fleet_devices.last_seq THEN excluded.last_ts
              ELSE fleet_devices.last_ts END,
    last_seq = {greatest}(fleet_devices.last_seq, excluded.last_seq),
    first_seen = {least}(fleet_devices.first_seen, excluded.first_seen),
    last_seen = {greatest}(fleet_devices.last_seen, excluded.last_seen)"""
_UPDATE_STATUS = (
    "UPDATE fleet_devices SET "
    + ", ".join(f"{c} = ?" for c in (*STATUS, "online"))
    + " WHERE fleet = ? AND device = ?"
)


class SqlStore(FleetStore):
    """The shared implementation; subclasses connect and supply the dialect's hooks."""

    lock_rows = ""
    """Appended to SELECTs that read rows the transaction will update (``FOR UPDATE``)."""

    def __init__(self) -> None:
        self._connection: Any = None
        self._known_models: set[tuple[str, str, str]] = set()

    # --- dialect hooks ------------------------------------------------------------------------

    @abstractmethod
    def _connect(self) -> Any:
        """A new DB-API connection, tables created; no transaction open."""

    @abstractmethod
    def _begin(self, conn: Any) -> Any:
        """Start a write transaction; return a cursor."""

    @abstractmethod
    def _insert_seen(self, cur: Any, rows: list[tuple[Any, ...]]) -> set[tuple[str, str, int]]:
        """Insert dedupe rows (fleet, device, seq, kind, received) unless present; return the
        keys of the rows inserted."""

    @abstractmethod
    def _insert_alert(self, cur: Any, values: tuple[Any, ...]) -> Optional[int]:
        """Insert an open alert (ALERT columns but id) unless one is open for its key; return
        its id, or None."""

    def _sql(self, text: str) -> str:
        return text

    # --- connection ---------------------------------------------------------------------------

    def _conn(self) -> Any:
        if self._connection is None:
            self._connection = self._connect()
        return self._connection

    def _commit(self, conn: Any) -> None:
        conn.commit()

    def _failed(self) -> None:
        conn, self._connection = self._connection, None
        if conn is not None:
            try:
                conn.rollback()
                self._connection = conn
            except self.errors:
                # the connection is gone: the next call opens a new one
                with contextlib.suppress(*self.errors):
                    conn.close()

    def _close(self) -> None:
        conn, self._connection = self._connection, None
        if conn is not None:
            conn.close()

    def _read(self, text: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        conn = self._conn()
        cur = conn.cursor()
        try:
            cur.execute(self._sql(text), params)
            rows = list(cur.fetchall())
        finally:
            cur.close()
        conn.rollback()  # end the read transaction PostgreSQL opened
        return rows

    def _check_schema(self, cur: Any) -> None:
        cur.execute(self._sql("SELECT value FROM fleet_meta WHERE key = 'schema_version'"))
        row = cur.fetchone()
        if row is None:
            cur.execute(
                self._sql("INSERT INTO fleet_meta (key, value) VALUES ('schema_version', ?)"),
                (str(SCHEMA_VERSION),),
            )
        elif row[0] != str(SCHEMA_VERSION):
            raise FleetStoreError(
                f"{self.describe()} holds fleet schema version {row[0]}; this edgeship reads "
                f"version {SCHEMA_VERSION}"
            )

    # --- ingest -------------------------------------------------------------------------------

    def _ingest(self, batch: list[Received]) -> IngestResult:
        conn = self._conn()
        cur = self._begin(conn)
        try:
            ordered = sorted(batch, key=lambda r: r.key)  # one lock order for every process
            new = self._insert_seen(cur, [(*r.key, r.message.kind, r.received) for r in ordered])
            stored = tuple(r for r in batch if r.key in new)
            windows = [row for r in stored for row in r.rows]
            if windows:
                cur.executemany(self._sql(_INSERT_WINDOW), windows)
                pairs = sorted({row[:3] for row in windows} - self._known_models)
                if pairs:
                    cur.executemany(self._sql(_INSERT_MODEL), pairs)
            events = [_event_row(r) for r in stored if r.message.kind == "events"]
            if events:
                cur.executemany(self._sql(_INSERT_EVENT), events)
            if stored:
                cur.executemany(self._sql(self._upsert_seen), _seen_rows(stored))
            states = self._merge_status(cur, [r for r in stored if r.message.kind == "status"])
            self._commit(conn)
        finally:
            cur.close()
        keys = tuple(dict.fromkeys(row[:3] for row in windows))
        self._known_models.update(keys)  # only once committed
        return IngestResult(stored, len(batch) - len(stored), keys, tuple(states))

    @property
    def _upsert_seen(self) -> str:
        return _UPSERT_SEEN.format(greatest=self.greatest, least=self.least)

    greatest = "MAX"
    least = "MIN"
    """The dialect's two-argument maximum and minimum."""

    def _merge_status(self, cur: Any, statuses: list[Received]) -> list[DeviceState]:
        """Merge status messages into their devices' rows, locked (the rows exist: every stored
        message upserted its device first)."""
        if not statuses:
            return []
        keys = sorted({r.key[:2] for r in statuses})
        states: dict[Any, DeviceState] = {}
        for chunk in chunks(keys):
            cur.execute(
                self._sql(
                    f"SELECT {', '.join(DEVICE)} FROM fleet_devices WHERE (fleet, device) IN "
                    f"(VALUES {', '.join(['(?, ?)'] * len(chunk))}) ORDER BY fleet, device"
                    + self.lock_rows
                ),
                [v for key in chunk for v in key],
            )
            for values in cur.fetchall():
                state = DeviceState.from_row(_record(DEVICE, values))
                states[state.key] = state
        for r in statuses:
            apply_status(states[r.key[:2]], r.message, r.received)
        cur.executemany(
            self._sql(_UPDATE_STATUS),
            [(*_values(STATUS, s.to_row()), _online(s), s.fleet, s.device)
             for s in states.values()],
        )  # fmt: skip
        return list(states.values())

    # --- reads --------------------------------------------------------------------------------

    def _devices(self, fleet: Optional[str]) -> list[DeviceState]:
        where, params = ("WHERE fleet = ?", [fleet]) if fleet else ("", [])
        rows = self._read(
            f"SELECT {', '.join(DEVICE)} FROM fleet_devices {where} ORDER BY fleet, device",
            params,
        )
        return [DeviceState.from_row(_record(DEVICE, v)) for v in rows]

    def _latest_windows(
        self, keys: Optional[list[tuple[str, str, str]]], fleet: Optional[str]
    ) -> list[Window]:
        select = f"SELECT {', '.join('t.' + c for c in TELEMETRY)} FROM "
        join = f" JOIN fleet_telemetry t ON {_ON_KEY} AND {_NEWEST}"
        order = " ORDER BY t.fleet, t.device, t.model"
        if keys is None:
            where, params = (" WHERE k.fleet = ?", [fleet]) if fleet else ("", [])
            rows = self._read(select + "fleet_models k" + join + where + order, params)
        else:
            rows = []
            for chunk in chunks(keys):
                values = ", ".join(["(?, ?, ?)"] * len(chunk))
                rows += self._read(
                    f"WITH k (fleet, device, model) AS (VALUES {values}) {select}k{join}{order}",
                    [v for key in chunk for v in key],
                )
        return [Window.from_row(_record(TELEMETRY, v)) for v in rows]

    def _model_versions(
        self, fleet: Optional[str]
    ) -> dict[tuple[str, str], dict[str, tuple[str, int]]]:
        where, params = (" WHERE k.fleet = ?", [fleet]) if fleet else ("", [])
        found: dict[tuple[str, str], dict[str, tuple[str, int]]] = {}
        for f, d, model, version, seq in self._read(
            "SELECT t.fleet, t.device, t.model, t.version, t.seq FROM fleet_models k "
            f"JOIN fleet_telemetry t ON {_ON_KEY} AND {_NEWEST}{where}",
            params,
        ):
            found.setdefault((f, d), {})[model] = (version, int(seq))
        return found

    def _windows(self, fleet: str, device: str, model: str, limit: int) -> list[Window]:
        rows = self._read(
            f"SELECT {', '.join(TELEMETRY)} FROM fleet_telemetry WHERE fleet = ? AND device = ? "
            "AND model = ? ORDER BY seq DESC LIMIT ?",
            [fleet, device, model, limit],
        )
        return [Window.from_row(_record(TELEMETRY, v)) for v in rows]

    def _events(self, fleet: Optional[str], limit: int) -> list[Event]:
        where, params = ("WHERE fleet = ? ", [fleet]) if fleet else ("", [])
        rows = self._read(
            f"SELECT {', '.join(EVENT)} FROM fleet_events {where}"
            "ORDER BY received DESC, seq DESC LIMIT ?",
            [*params, limit],
        )
        return [Event(**_record(EVENT, v)) for v in rows]

    def _stored_count(self) -> int:
        return int(self._read("SELECT COUNT(*) FROM fleet_seen")[0][0])

    # --- alerts -------------------------------------------------------------------------------

    def _alerts(self, open_only: bool, limit: int) -> list[Alert]:
        where = "WHERE cleared IS NULL " if open_only else ""
        rows = self._read(
            f"SELECT {', '.join(ALERT)} FROM fleet_alerts {where}ORDER BY id DESC LIMIT ?",
            [limit],
        )
        return [Alert(**_record(ALERT, v)) for v in rows]

    def _open_alert(self, alert: Alert) -> Optional[Alert]:
        conn = self._conn()
        cur = self._begin(conn)
        try:
            values = tuple(getattr(alert, c) for c in ALERT[1:])
            ident = self._insert_alert(cur, values)
            self._commit(conn)
        finally:
            cur.close()
        return None if ident is None else Alert(**{**_record(ALERT[1:], values), "id": ident})

    def _clear_alert(self, key: tuple[str, str, str, str], at: float) -> Optional[Alert]:
        conn = self._conn()
        cur = self._begin(conn)
        try:
            cur.execute(
                self._sql(
                    f"SELECT {', '.join(ALERT)} FROM fleet_alerts WHERE rule = ? AND fleet = ? "
                    "AND device = ? AND model = ? AND cleared IS NULL" + self.lock_rows
                ),
                key,
            )
            row = cur.fetchone()
            if row is not None:
                cur.execute(self._sql("UPDATE fleet_alerts SET cleared = ? WHERE id = ?"),
                            (at, row[0]))  # fmt: skip
            self._commit(conn)
        finally:
            cur.close()
        return None if row is None else Alert(**_record(ALERT, row)).with_clear(at)


def _event_row(item: Received) -> tuple[Any, ...]:
    m = item.message
    detail = json.dumps(m.doc.get("detail") or {}, separators=(",", ":"))
    return (m.fleet, m.device, m.seq, m.ts.timestamp(), item.received, m.doc["event"],
            m.doc.get("model"), detail)  # fmt: skip


def _seen_rows(stored: Iterable[Received]) -> list[tuple[Any, ...]]:
    """One monotone update per device: its highest seq (and that message's time), and the first
    and last arrival among the batch's messages."""
    rows: dict[tuple[str, str], list[Any]] = {}
    for r in stored:
        m = r.message
        row = rows.get((m.fleet, m.device))
        if row is None:
            rows[(m.fleet, m.device)] = [m.fleet, m.device, m.seq, m.ts.timestamp(), r.received,
                                         r.received]  # fmt: skip
            continue
        if m.seq > row[2]:
            row[2], row[3] = m.seq, m.ts.timestamp()
        row[4], row[5] = min(row[4], r.received), max(row[5], r.received)
    return [tuple(rows[k]) for k in sorted(rows)]


def _online(state: DeviceState) -> Optional[int]:
    online = state.online
    return None if online is None else int(online)
