"""The fleet store: devices, telemetry time series, events, alerts, and the dedupe record.

One small interface, :class:`FleetStore`, with two implementations chosen by URL
(:func:`open_store`): SQLite (``sqlite:///fleet.db``, the default) and PostgreSQL
(``postgresql://USER@HOST:PORT/DB``, psycopg 3). The public methods are written once here (input
checks, error wrapping); each implementation supplies the private ``_`` hooks.

What is promised (docs/adr/0008-monitor-ingest.md):

- :meth:`FleetStore.ingest` stores a batch in one transaction. A message is stored only if its
  (fleet, device, seq) was never stored before, decided by a unique key in the database, so any
  number of monitor processes sharing one database store each message once.
- Device state is merged so that the order in which messages are stored does not matter
  (packager/fleet/state.py); the newest window per (device, model) is the one with the highest seq.
- At most one alert is open per (rule, fleet, device, model), also enforced by a unique key.

Every database failure surfaces as :class:`FleetStoreError`.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence, TypeVar

from packager.fleet import series
from packager.fleet.alerts import Alert
from packager.fleet.series import Window
from packager.fleet.state import DeviceState
from runtime.errors import FleetStoreError, UsageError
from runtime.telemetry.messages import Message

DEFAULT_DB = "sqlite:///fleet.db"
T = TypeVar("T")


@dataclass(frozen=True)
class Received:
    """A checked message, the monitor time (epoch seconds) it arrived, and its payload as text
    (stored with telemetry; when empty, the message is written out again).

    What storing it reads, its key and rows, is worked out when it is made: the monitor makes it
    right after checking the message, while the parsed document is still in the CPU cache (a
    batch later it is not, and working them out then costs twice as much)."""

    message: Message
    received: float
    raw: str = ""
    key: tuple[str, str, int] = field(init=False, repr=False, compare=False)
    """(fleet, device, seq): what makes a message a duplicate."""
    rows: list[tuple[Any, ...]] = field(init=False, repr=False, compare=False)
    """The telemetry rows (:data:`~packager.fleet.series.COLUMNS`) the message stores, one per
    model; none for a status or event."""

    def __post_init__(self) -> None:
        message = self.message
        object.__setattr__(self, "key", (message.fleet, message.device, message.seq))
        rows = []
        if message.kind == "telemetry":
            raw = self.raw or json.dumps(message.doc, separators=(",", ":"))
            rows = series.rows(message, self.received, raw)
        object.__setattr__(self, "rows", rows)


@dataclass(frozen=True)
class IngestResult:
    """What one :meth:`FleetStore.ingest` stored."""

    stored: tuple[Received, ...]
    """The messages stored now (never stored before), in batch order."""
    duplicates: int
    """Messages of the batch dropped because their (fleet, device, seq) was already stored."""
    window_keys: tuple[tuple[str, str, str], ...]
    """(fleet, device, model) of every telemetry window stored now."""
    devices: tuple[DeviceState, ...]
    """The merged state, after this batch, of every device with a status message stored now."""


@dataclass(frozen=True)
class Event:
    fleet: str
    device: str
    seq: int
    ts: float
    received: float
    event: str
    model: Optional[str]
    detail: dict[str, object]


class FleetStore(ABC):
    """A fleet database. Not thread-safe: use one per thread."""

    def ingest(self, batch: Sequence[Received]) -> IngestResult:
        """Store ``batch`` in one transaction (see the module docstring); raise FleetStoreError.

        Messages repeated inside the batch count as duplicates too. If it raises, nothing of the
        batch was stored and the same batch may be given again.
        """
        unique: dict[tuple[str, str, int], Received] = {}
        for item in batch:
            unique.setdefault(item.key, item)
        result = self._call(self._ingest, list(unique.values()))
        extra = len(batch) - len(unique)
        if extra:
            result = IngestResult(
                result.stored, result.duplicates + extra, result.window_keys, result.devices
            )
        return result

    def devices(self, fleet: Optional[str] = None) -> list[DeviceState]:
        """Every known device (of ``fleet`` when given), ordered by fleet and device id."""
        return self._call(self._devices, fleet)

    def latest_windows(
        self,
        keys: Optional[Iterable[tuple[str, str, str]]] = None,
        fleet: Optional[str] = None,
    ) -> list[Window]:
        """The newest window (highest seq) of each (fleet, device, model) in ``keys``, or of
        every pair (of ``fleet`` when given) when ``keys`` is None."""
        return self._call(self._latest_windows, None if keys is None else sorted(set(keys)), fleet)

    def model_versions(
        self, fleet: Optional[str] = None
    ) -> dict[tuple[str, str], dict[str, tuple[str, int]]]:
        """(fleet, device) → model → (version, seq) of the model's newest window: what
        :meth:`DeviceState.versions` takes."""
        return self._call(self._model_versions, fleet)

    def windows(self, fleet: str, device: str, model: str, limit: int = 1000) -> list[Window]:
        """The time series of one model on one device, newest first, at most ``limit``."""
        return self._call(self._windows, fleet, device, model, max(0, limit))

    def events(self, fleet: Optional[str] = None, limit: int = 1000) -> list[Event]:
        """Device events, newest first (by arrival), at most ``limit``."""
        return self._call(self._events, fleet, max(0, limit))

    def stored_count(self) -> int:
        """How many messages were ever stored (the size of the dedupe record)."""
        return self._call(self._stored_count)

    def open_alerts(self) -> list[Alert]:
        return self._call(self._alerts, True, 100_000)

    def alerts(self, include_cleared: bool = False, limit: int = 1000) -> list[Alert]:
        """Open alerts, or all when ``include_cleared``; newest first, at most ``limit``."""
        return self._call(self._alerts, not include_cleared, max(0, limit))

    def open_alert(self, alert: Alert) -> Optional[Alert]:
        """Store ``alert`` as open unless one is already open for its key; return it with its
        id, or None when another was open (this call changed nothing)."""
        if alert.cleared is not None:
            raise ValueError("open_alert() takes an open alert")
        return self._call(self._open_alert, alert)

    def clear_alert(self, key: tuple[str, str, str, str], at: float) -> Optional[Alert]:
        """Clear the open alert of ``key``; return it cleared, or None when none was open."""
        return self._call(self._clear_alert, key, at)

    def close(self) -> None:
        self._call(self._close)

    def __enter__(self) -> FleetStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- implementation hooks ---------------------------------------------------------------

    errors: tuple[type[BaseException], ...] = ()
    """The driver's exception types, wrapped into FleetStoreError."""

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return fn(*args)
        except FleetStoreError:
            raise
        except self.errors as e:
            self._failed()
            raise FleetStoreError(f"{self.describe()}: {e}".rstrip()) from e

    @abstractmethod
    def describe(self) -> str:
        """The database, for messages (no password)."""

    @abstractmethod
    def _failed(self) -> None:
        """Called after a driver error: roll back, drop a broken connection."""

    @abstractmethod
    def _ingest(self, batch: list[Received]) -> IngestResult: ...

    @abstractmethod
    def _devices(self, fleet: Optional[str]) -> list[DeviceState]: ...

    @abstractmethod
    def _latest_windows(
        self, keys: Optional[list[tuple[str, str, str]]], fleet: Optional[str]
    ) -> list[Window]: ...

    @abstractmethod
    def _model_versions(
        self, fleet: Optional[str]
    ) -> dict[tuple[str, str], dict[str, tuple[str, int]]]: ...

    @abstractmethod
    def _windows(self, fleet: str, device: str, model: str, limit: int) -> list[Window]: ...

    @abstractmethod
    def _events(self, fleet: Optional[str], limit: int) -> list[Event]: ...

    @abstractmethod
    def _stored_count(self) -> int: ...

    @abstractmethod
    def _alerts(self, open_only: bool, limit: int) -> list[Alert]: ...

    @abstractmethod
    def _open_alert(self, alert: Alert) -> Optional[Alert]: ...

    @abstractmethod
    def _clear_alert(self, key: tuple[str, str, str, str], at: float) -> Optional[Alert]: ...

    @abstractmethod
    def _close(self) -> None: ...


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    return re.sub(r"//([^:/@]*):[^@/]*@", r"//\1:***@", url)


def open_store(url: str) -> FleetStore:
    """Open (and create or upgrade the tables of) the store at ``url``.

    ``sqlite:///RELATIVE.db``, ``sqlite:////ABSOLUTE.db``, or ``postgresql://…`` /
    ``postgres://…`` (a libpq URL; ``?options=-csearch_path%3DSCHEMA`` picks a schema). Raise
    UsageError for another scheme, FleetStoreError when the database cannot be opened.
    """
    if url.startswith("sqlite:///"):
        from packager.fleet.sqlite_store import SqliteStore

        path = url[len("sqlite:///") :]
        if not path:
            raise UsageError(f"{url!r} names no file: use sqlite:///fleet.db")
        return SqliteStore(Path(path))
    if url.startswith(("postgresql://", "postgres://")):
        from packager.fleet.postgres_store import PostgresStore

        return PostgresStore(url)
    raise UsageError(
        f"unsupported database URL {url!r}: use sqlite:///PATH.db or postgresql://USER@HOST/DB"
    )
