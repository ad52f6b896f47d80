"""The monitor's writer: checks, stores and judges batches, in a process of its own.

Checking a message (JSON, schema) and storing it cost more CPU than receiving it; under one
interpreter lock with paho's network thread, the monitor would keep up with only about a third of
what a bare subscriber receives. So the writer runs in a child process (docs/adr/0008): the
monitor sends it batches through a pipe, in order, and acknowledges a batch's messages only when
the writer answers that the batch is committed.

Protocol (tuples, in order on one pipe each way)::

    monitor → writer   ("batch", n, [(topic, payload, received), …])   ("stop",)
    writer → monitor   ("ready",)   ("fatal", exit_code, message)
                       ("done", n, {"received", "stored", "duplicates", "bad": {reason: n},
                                    "alerts": [Alert, …]})
                       ("alerts", [Alert, …])      (the timer's)
                       ("stopped", {"lag_p50_ms", "lag_p99_ms", "store_errors"})

The writer retries a batch the store refuses (back-off up to ``retry_max_s``) and never skips
one: a batch is answered only once committed. It exits when the monitor says stop or goes away.
"""

from __future__ import annotations

import gc
import logging
import signal
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, Callable, Optional

from packager.fleet.alerts import Alert
from packager.fleet.engine import AlertEngine
from packager.fleet.logs import setup_logging
from packager.fleet.rules import Rule
from packager.fleet.store import FleetStore, IngestResult, Received, open_store
from runtime.errors import EdgeshipError, FleetStoreError, TelemetryMessageError
from runtime.telemetry.messages import (
    DEFAULT_PREFIX,
    ID_RE,
    MAX_MESSAGE_BYTES,
    Message,
    parse_message,
    parse_topic,
)

log = logging.getLogger(__name__)

LAG_SAMPLES = 100_000
GC_THRESHOLDS = (50_000, 20, 100)
"""Parsed messages are many small dicts that live for one batch: with Python's default (700, 10,
10) the cyclic collector runs every few messages and costs about a fifth of the checking time."""


@dataclass(frozen=True)
class WriterSettings:
    """What the writer process needs (picklable). Times in seconds."""

    db: str
    prefix: str = DEFAULT_PREFIX
    rules: tuple[Rule, ...] = ()
    check_interval_s: float = 5.0
    """How often offline and version-skew rules are judged."""
    retry_max_s: float = 10.0
    """Longest wait between tries of a batch the store refused."""
    bad_log_interval_s: float = 10.0
    """At most one log line per bad-message reason per interval."""
    json_log: bool = False


def bad_reason(topic: str, payload: bytes, prefix: str, error: Exception) -> str:
    """A short fixed word for why a message was refused (for counting)."""
    try:
        parse_topic(topic, prefix)
    except TelemetryMessageError:
        return "topic"
    if len(payload) > MAX_MESSAGE_BYTES:
        return "oversized"
    text = str(error)
    for needle, reason in (("not UTF-8 JSON", "malformed"), ("must be a JSON object", "malformed"),
                           ("nests deeper", "malformed"), ("schema", "schema"),
                           ("claims", "spoofed"), ("model name", "names")):  # fmt: skip
        if needle in text:
            return reason
    return "invalid"


def check_names(message: Message) -> None:
    """Model names become keys in the store: they must be ids like device ids."""
    models = message.doc.get("models")
    if isinstance(models, dict):
        names = list(models)
    elif isinstance(models, list):
        names = [m["name"] for m in models]
    else:
        names = []
    for name in names:
        if not ID_RE.match(name):
            raise TelemetryMessageError(f"model name {name[:80]!r} is not a valid id")


class _RateLimitedLog:
    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._quiet: Counter[str] = Counter()

    def warning(self, key: str, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last.get(key, -self.interval_s) < self.interval_s:
            self._quiet[key] += 1
            return
        if self._quiet[key]:
            message += f" ({self._quiet[key]} more like it not logged)"
        self._last[key], self._quiet[key] = now, 0
        log.warning(message, *args)


class Writer:
    """Checks and stores batches; judges the rules. Used by :func:`writer_main`."""

    def __init__(self, store: FleetStore, settings: WriterSettings) -> None:
        self.store = store
        self.settings = settings
        self.engine = AlertEngine(settings.rules, store) if settings.rules else None
        self.lags: deque[float] = deque(maxlen=LAG_SAMPLES)
        self.store_errors = 0
        self._bad_log = _RateLimitedLog(settings.bad_log_interval_s)

    def process(self, items: list[tuple[str, bytes, float]]) -> dict[str, Any]:
        """Check, store (retrying until committed) and judge one batch; return its counts."""
        bad: Counter[str] = Counter()
        good = []
        prefix = self.settings.prefix
        for topic, payload, received in items:
            try:
                message = parse_message(topic, payload, prefix)
                check_names(message)
            except TelemetryMessageError as e:
                reason = bad_reason(topic, payload, prefix, e)
                bad[reason] += 1
                self._bad_log.warning(reason, "dropped a bad message on %.200s (%s): %.300s",
                                      topic, reason, e)  # fmt: skip
                continue
            except Exception as e:  # noqa: BLE001 - a fault in a check must not stop ingestion
                bad["error"] += 1
                self._bad_log.warning("error", "dropped a message on %.200s that broke its "
                                      "check (%s: %.300s)", topic, type(e).__name__, e)  # fmt: skip
                continue
            good.append(Received(message, received, payload.decode("utf-8")))
        result = self._store(good)
        committed = time.time()
        self.lags.extend(committed - r.message.ts.timestamp() for r in result.stored)
        alerts: list[Alert] = []
        if self.engine is not None and result.stored:
            alerts = self.judge(lambda now: self.engine.after_batch(result, now))  # type: ignore[union-attr]
        return {"received": len(items), "stored": len(result.stored),
                "duplicates": result.duplicates, "bad": dict(bad), "alerts": alerts}  # fmt: skip

    def _store(self, good: list[Received]) -> IngestResult:
        delay = 0.1
        while True:
            try:
                return self.store.ingest(good)
            except FleetStoreError as e:
                self.store_errors += 1
                log.error("could not store a batch of %d, trying again in %.1f s: %s",
                          len(good), delay, e)  # fmt: skip
                time.sleep(delay)
                delay = min(delay * 2, self.settings.retry_max_s)

    def judge(self, judge: Callable[[float], list[Alert]]) -> list[Alert]:
        """Run one judgement; a store failure is logged and judged again next time."""
        try:
            return judge(time.time())
        except FleetStoreError as e:
            log.error("could not judge the alert rules: %s", e)
            return []

    def final(self) -> dict[str, Any]:
        lags = sorted(self.lags)

        def pct(q: float) -> Optional[float]:
            return round(lags[min(len(lags) - 1, int(q * len(lags)))] * 1000, 2) if lags else None

        return {"lag_p50_ms": pct(0.50), "lag_p99_ms": pct(0.99), "store_errors": self.store_errors}

    def serve(self, requests: Any, answers: Any) -> None:
        """Answer the monitor's batches until it says stop or goes away."""
        next_check = time.monotonic()
        while True:
            wait = 1.0
            if self.engine is not None:
                wait = max(0.0, min(wait, next_check - time.monotonic()))
            if requests.poll(wait):
                try:
                    request = requests.recv()
                except EOFError:
                    return
                if request[0] == "stop":
                    break
                answers.send(("done", request[1], self.process(request[2])))
            if self.engine is not None and time.monotonic() >= next_check:
                next_check = time.monotonic() + self.settings.check_interval_s
                alerts = self.judge(self.engine.on_timer)
                if alerts:
                    answers.send(("alerts", alerts))
        answers.send(("stopped", self.final()))


def writer_main(requests: Any, answers: Any, settings: WriterSettings) -> None:
    """The child process: open the store, say ready (or fatal), serve."""
    # the monitor process decides when to stop; a Ctrl-C reaches the whole process group
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    gc.set_threshold(*GC_THRESHOLDS)
    setup_logging(settings.json_log)
    try:
        store = open_store(settings.db)
    except EdgeshipError as e:
        answers.send(("fatal", e.exit_code, str(e)))
        return
    try:
        answers.send(("ready",))
        Writer(store, settings).serve(requests, answers)
    except (BrokenPipeError, EOFError):
        log.warning("the monitor went away; the writer stops")
    finally:
        store.close()
