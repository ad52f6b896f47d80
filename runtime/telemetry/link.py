"""The telemetry link of a device: an :class:`~runtime.service.Observer` that turns requests,
feedback and model events into spooled MQTT messages (design.md §5, docs/telemetry.md).

::

    request threads ──observe/feedback──▶ WindowCollector (counts, bounded samples)
    service.event ─────────────────────▶ event queue (bounded)
    window thread: every interval_s ──▶ close window → Spool (SQLite, committed)
    mqtt thread: Spool ──publish, QoS 1──▶ broker ──PUBACK──▶ delete row

The agent builds it from its options (:meth:`TelemetrySettings.from_options`), adds it to the
inference service's observers, calls :meth:`TelemetryLink.start`, and calls
:meth:`TelemetryLink.stop` after the request sources have stopped, so the last open window is
closed and spooled and every request is counted exactly once.

Telemetry never stops inference. A spool that cannot be written (a full disk) loses the windows
closed meanwhile, counted and reported as dropped once it can be written again, while events wait
in their bounded queue; a spool that cannot be opened at start keeps the window open and is
opened again at every window close.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections import Counter, deque
from datetime import datetime, timezone
from functools import partial
from typing import Any, Mapping, Optional

import devices
from runtime import __version__
from runtime.errors import EdgeshipError, TelemetryMessageError
from runtime.registry import ModelRegistry
from runtime.service import FeedbackRecord, Observation, Observer
from runtime.store import Store
from runtime.telemetry.connection import ConnectionStatus
from runtime.telemetry.drift import FeatureBaseline, baselines
from runtime.telemetry.messages import (
    EVENT_KINDS,
    MAX_DEPTH,
    MAX_MODELS,
    device_topic,
    encode,
    envelope,
    format_ts,
)
from runtime.telemetry.mqtt import SpoolPublisher
from runtime.telemetry.settings import TelemetrySettings
from runtime.telemetry.spool import Build, Spool, SpoolInfo
from runtime.telemetry.spooldb import SpoolUnavailableError
from runtime.telemetry.system import ProcessStats
from runtime.telemetry.window import WindowCollector
from runtime.verify import MANIFEST_MEMBER

__all__ = ["TelemetryLink", "TelemetrySettings"]

log = logging.getLogger(__name__)

EVENT_QUEUE = 1_000
"""Events waiting to be spooled, at most (the oldest is dropped past it, and counted)."""
MAX_EVENT_DETAIL_BYTES = 16 * 1024
"""Largest ``detail`` of an event (JSON bytes); a bigger one is replaced by a short summary."""
TICK_S = 0.25
"""How often the window thread wakes to spool queued events and check the clock (seconds)."""
STATUS_EVENTS = frozenset({"install", "rollback"})
"""Events after which the retained status is published again (the models changed)."""


class TelemetryLink(Observer):
    """Telemetry for one device: windows, events, spool and MQTT connection.

    ``start()`` opens the spool and starts two threads (see :meth:`start`);
    ``stop(timeout_s)`` closes and spools the open window, drains the spool to the broker for up
    to ``timeout_s`` while connected, publishes the clean "offline" and disconnects. What is not
    acknowledged by then stays in the spool for the next start.
    """

    def __init__(self, settings: TelemetrySettings, store: Store, registry: ModelRegistry) -> None:
        self.settings = settings
        self.store = store
        self.registry = registry
        self._collector = WindowCollector(settings.window, settings.sample_inputs)
        self._events: deque[tuple[str, dict[str, Any], datetime]] = deque()
        self._events_lock = threading.Lock()
        self._events_dropped = 0
        self._stats = ProcessStats()
        self._baselines: dict[tuple[str, str, int], tuple[FeatureBaseline, ...]] = {}
        self._topics = {
            kind: device_topic(settings.prefix, settings.fleet, settings.device_id, kind)
            for kind in ("status", "telemetry", "events")
        }
        self._spool: Optional[Spool] = None
        self._publisher: Optional[SpoolPublisher] = None
        self._thread: Optional[threading.Thread] = None
        self._stopping = threading.Event()
        self._spool_lock = threading.Lock()
        self._started = False
        self._stopped = False
        self._unwritable: Optional[str] = None  # the spool's error while it cannot be written
        self._lost = 0  # window messages not spooled and not yet counted in the spool
        self._lost_while_unwritable = 0

    # --- Observer: request threads, cheap --------------------------------------------------------

    def observe(self, observation: Observation) -> None:
        self._collector.observe(observation)

    def feedback(self, record: FeedbackRecord) -> None:
        self._collector.feedback(record)

    def event(self, kind: str, doc: Mapping[str, Any]) -> None:
        """Queue an event (install, selftest, rollback, error, …) for the events topic."""
        if kind not in EVENT_KINDS:
            log.warning("telemetry: unknown event kind %r not sent", kind)
            return
        with self._events_lock:
            if len(self._events) >= EVENT_QUEUE:
                self._events.popleft()
                self._events_dropped += 1
            self._events.append((kind, dict(doc), datetime.now(timezone.utc)))
        if kind in STATUS_EVENTS and self._publisher is not None:
            self._publisher.refresh_status()

    # --- life cycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Open the spool and start the window and MQTT threads.

        Raises TransportError when another process holds the spool, or it is from a newer
        edgeship. A spool that cannot be opened now (SpoolUnavailableError: a full disk) is
        logged and opened again at every window close; the link runs meanwhile.
        """
        if self._started:
            raise RuntimeError("the telemetry link was already started")
        self._open_spool()
        self._started = True
        self._thread = threading.Thread(target=self._run, name="edgeship-telemetry", daemon=True)
        self._thread.start()

    def _open_spool(self) -> bool:
        try:
            spool = Spool(self.settings.spool_path, self.settings.spool)
        except SpoolUnavailableError as e:
            if self._unwritable is None:
                log.error(
                    "telemetry: %s; requests are still served, the open window keeps counting "
                    "and the spool is opened again at every window close",
                    e,
                )
            self._unwritable = str(e)
            return False
        if self._unwritable is not None:
            log.warning("telemetry: the spool %s is open now", spool.path)
            self._unwritable = None
        self._publisher = SpoolPublisher(
            self.settings.connection(), spool, self._topics["status"], self._status_payload
        )
        self._spool = spool
        self.event("agent-start", {"runtime_version": __version__, "pending": spool.rows})
        self._publisher.start()
        return True

    def stop(self, timeout_s: float = 10.0) -> bool:
        """Close and spool the open window, then drain and disconnect within ``timeout_s``.
        Returns True when the spool was left empty. Calling it again does nothing."""
        if not self._started or self._stopped:
            return self._spool is None or self._spool.rows == 0
        self._stopped = True
        deadline = time.monotonic() + timeout_s
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(max(1.0, timeout_s))
        self.event("agent-stop", {})
        try:
            with self._spool_lock:
                self._close_window()
                self._flush_events()
        except EdgeshipError as e:
            log.error("telemetry: the last window could not be spooled: %s", e)
        if self._unwritable is not None:
            lost = "the open window" if self._spool is None else f"{self._lost} telemetry messages"
            log.error(
                "telemetry: stopping while the spool cannot be written: %s and %d events are lost",
                lost,
                len(self._events),
            )
        if self._spool is None or self._publisher is None:
            return False
        drained = self._publisher.stop(max(0.0, deadline - time.monotonic()))
        self._spool.close()
        return drained

    def flush(self) -> None:
        """Close the open window and spool it, with any queued events, now (the window thread
        does this every ``interval_s``). Raises RuntimeError before start() or after stop()."""
        if not self._started or self._stopped:
            raise RuntimeError("the telemetry link is not running")
        with self._spool_lock:
            self._flush_events()
            self._close_window()

    def status(self) -> dict[str, Any]:
        """Connection state, its problem if any, and the spool's size, for status displays."""
        connection = self.connection_status()
        spool = self._spool
        return {
            "broker": str(self.settings.broker),
            "connection": connection.to_dict() if connection else {"state": "stopped"},
            "spool": {"pending": spool.rows, "bytes": spool.size_bytes} if spool else None,
            "spool_error": self._unwritable,
        }

    def connection_status(self) -> Optional[ConnectionStatus]:
        return self._publisher.status() if self._publisher else None

    @property
    def spool(self) -> Optional[Spool]:
        return self._spool

    # --- the window thread -----------------------------------------------------------------------

    def _run(self) -> None:
        interval = self.settings.interval_s
        next_close = time.monotonic() + interval
        while not self._stopping.is_set():
            self._stopping.wait(min(TICK_S, max(0.0, next_close - time.monotonic())))
            if self._stopping.is_set():
                return
            try:
                with self._spool_lock:
                    self._flush_events()
                    if time.monotonic() >= next_close:
                        self._close_window()
                        next_close = max(next_close + interval, time.monotonic() + interval / 2)
            except Exception:  # the thread must outlive a bad window
                log.exception("telemetry: a window could not be spooled")

    def _close_window(self) -> None:
        if self._spool is None and not self._open_spool():
            return  # the window stays open: its requests are counted once the spool opens
        loaded = self.registry.loaded()
        idle = [(name, model.manifest.version) for name, model in loaded.items()]
        closed = self._collector.close(self._baselines_for, idle)
        system = self._stats.sample()
        now = datetime.now(timezone.utc)
        layers = closed.layers or ((),)
        for i, layer in enumerate(layers):
            models = {report.name: report.doc for report in layer}
            build = partial(
                self._window_payload,
                now=now,
                window_s=closed.window_s,
                models=models,
                system=system,
            )
            if not self._append(self._topics["telemetry"], build, claim_drops=i == 0):
                self._lost += len(layers) - i
                self._lost_while_unwritable += len(layers) - i
                break
        for layer in closed.layers:
            for report in layer:
                if report.errors:
                    self.event(
                        "error",
                        {
                            "model": report.name,
                            "version": report.doc["version"],
                            "errors": report.errors,
                            "last_error": (report.last_error or "")[:500],
                        },
                    )

    def _window_payload(
        self,
        seq: int,
        info: SpoolInfo,
        *,
        now: datetime,
        window_s: float,
        models: dict[str, Any],
        system: dict[str, Any],
    ) -> bytes:
        s = self.settings
        doc = envelope("telemetry", s.fleet, s.device_id, seq, now)
        doc.update(
            window_s=round(window_s, 3),
            models=_plain(models),
            system=_plain(system),
            spool={"dropped": info.dropped, "pending": info.pending},
        )
        try:
            return encode(doc)
        except TelemetryMessageError as e:
            log.warning("telemetry window too large (%s): sent without drift and samples", e)
            for model in doc["models"].values():
                model.pop("drift", None)
                model.pop("samples", None)
            return encode(doc)

    def _flush_events(self) -> None:
        spool = self._spool
        if spool is None:
            return  # events wait in their queue until the spool opens
        with self._events_lock:
            queued = list(self._events)
            self._events.clear()
            dropped, self._events_dropped = self._events_dropped, 0
        drops = spool.take_new_drops()
        if drops or dropped:
            queued.append(
                (
                    "spool-dropped",
                    {"dropped": drops, "events_dropped": dropped},
                    datetime.now(timezone.utc),
                )
            )
        for i, (kind, doc, when) in enumerate(queued):
            build = partial(self._event_payload, kind=kind, doc=doc, when=when)
            if not self._append(self._topics["events"], build):
                with self._events_lock:  # back to the front, to be spooled when there is room
                    self._events.extendleft(reversed(queued[i:]))
                    while len(self._events) > EVENT_QUEUE:
                        self._events.popleft()
                        self._events_dropped += 1
                return

    def _append(self, topic: str, build: Build, claim_drops: bool = False) -> bool:
        """Spool one message; False when the spool cannot be written now (a full disk: logged
        once until it can be written again). Messages lost earlier are counted first, so that
        this window, or the next, reports them as dropped."""
        assert self._spool is not None
        try:
            if self._lost:
                self._spool.add_drops(self._lost)
                self._lost = 0
            self._spool.append(topic, build, claim_drops=claim_drops)
        except SpoolUnavailableError as e:
            if self._unwritable is None:
                log.error(
                    "telemetry: %s; requests are still served, telemetry windows are dropped "
                    "(and counted) and events wait in memory until the spool can be written",
                    e,
                )
            self._unwritable = str(e)
            return False
        if self._unwritable is not None:
            log.warning(
                "telemetry: the spool can be written again; %d telemetry messages lost "
                "meanwhile are reported as dropped",
                self._lost_while_unwritable,
            )
            self._unwritable, self._lost_while_unwritable = None, 0
        return True

    def _event_payload(
        self, seq: int, _info: SpoolInfo, *, kind: str, doc: dict[str, Any], when: datetime
    ) -> bytes:
        s = self.settings
        out = envelope("events", s.fleet, s.device_id, seq, when)
        model = doc.get("model") or doc.get("name")
        detail = _plain({k: v for k, v in doc.items() if k != "model"})
        try:
            too_big = len(encode(detail)) > MAX_EVENT_DETAIL_BYTES
        except TelemetryMessageError:
            too_big = True
        if too_big:
            detail = {"truncated": True, "summary": str(doc)[:1000]}
        out.update(event=kind, detail=detail)
        if isinstance(model, str):
            out["model"] = model[:256]
        return encode(out)

    def _baselines_for(self, name: str, version: str) -> tuple[FeatureBaseline, ...]:
        model = self.registry.loaded().get(name)
        if model is None or model.manifest.version != version:
            return ()
        key = (name, version, model.manifest.sequence)
        found = self._baselines.get(key)
        if found is None:
            manifest = model.manifest
            found = self._baselines[key] = baselines(
                manifest.reference_profile, manifest.model.inputs
            )
        return found

    # --- status (the MQTT thread calls this) -----------------------------------------------------

    def _status_payload(self, seq: int, kind: str, will_seq: Optional[int]) -> bytes:
        s = self.settings
        doc = envelope("status", s.fleet, s.device_id, seq, datetime.now(timezone.utc))
        if kind != "online":
            doc.update(
                state="offline", reason="shutdown" if kind == "shutdown" else "connection-lost"
            )
            return encode(doc)
        models = self._installed()
        profiles = Counter(m.pop("profile") for m in models)
        doc.update(
            state="online",
            runtime_version=__version__,
            profile=profiles.most_common(1)[0][0] if profiles else None,
            arch=devices.host_arch(),
            interval_s=s.interval_s,
            models=models,
        )
        if will_seq is not None:
            doc["will_seq"] = will_seq  # names this connection's Last Will for the monitor
        return encode(doc)

    def _installed(self) -> list[dict[str, Any]]:
        found = []
        for name in self.store.names()[:MAX_MODELS]:
            try:
                slot = self.store.active_slot(name)
                if slot is None:
                    continue
                manifest = self.store.slot_manifest(name, slot)
                data = (self.store.slot_dir(name, slot) / MANIFEST_MEMBER).read_bytes()
            except (EdgeshipError, OSError) as e:
                log.warning("telemetry status: model %s left out: %s", name, e)
                continue
            found.append(
                {
                    "name": name,
                    "version": manifest.version,
                    "sequence": manifest.sequence,
                    "digest": hashlib.sha256(data).hexdigest(),
                    "profile": manifest.target.profile,
                }
            )
        return found


def _plain(value: Any, depth: int = 0) -> Any:
    """``value`` as plain JSON types: numpy scalars unwrapped, non-finite floats as null,
    unknown objects as strings, nesting cut at the messages' depth limit."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return _plain(value.item(), depth)
    if depth >= MAX_DEPTH - 2:
        return str(value)[:200]
    if isinstance(value, Mapping):
        return {str(k): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v, depth + 1) for v in value]
    if hasattr(value, "tolist"):
        return _plain(value.tolist(), depth)
    if isinstance(value, datetime):
        return format_ts(value)
    return str(value)
