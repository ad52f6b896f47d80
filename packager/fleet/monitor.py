"""The fleet monitor: MQTT in, batches to the writer, acknowledgements after commit, alerts out.

Ingest (docs/adr/0008-monitor-ingest.md): paho's network thread only queues what arrives; the
monitor's main thread cuts the queue into batches and hands them, in order, to the writer
process (packager/fleet/writer.py), which checks each message, stores the good ones in one
transaction per batch and answers. Only then does the monitor acknowledge the batch's QoS 1
messages, in the order they arrived. A crash of either process at any point loses nothing
acknowledged: what was not acknowledged is sent again by the broker (persistent session) and
dropped as a duplicate if it had been stored. Bad messages are counted and acknowledged too:
they will never get better.

Alerts the writer opens or clears are published here on ``PREFIX/FLEET/alerts`` and opened ones
passed to the hook.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Optional

import paho.mqtt.client as mqtt
from paho.mqtt.subscribeoptions import SubscribeOptions

from packager.fleet.alerts import Alert, alert_topic, encode_alert
from packager.fleet.connection import BrokerSettings, connect_properties, make_client
from packager.fleet.hooks import HookRunner
from packager.fleet.writer import WriterSettings, writer_main
from runtime.errors import FleetStoreError, TelemetryMessageError, TransportError, UsageError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MonitorSettings:
    """How the monitor subscribes and batches. Times in seconds."""

    share: Optional[str] = None
    """Shared subscription group for telemetry and events (status is always read by all)."""
    batch_max: int = 1000
    """Most messages stored in one transaction."""
    in_flight_batches: int = 2
    """Batches handed to the writer and not yet answered (one stored, one waiting)."""
    queue_max: int = 4000
    """Messages waiting for the writer; the network thread stops reading while that many wait
    (QoS 1 deliveries are held to the Receive Maximum by the broker anyway)."""
    connect_timeout_s: float = 15.0
    writer_start_s: float = 60.0
    """Longest wait for the writer to open the store."""
    writer_stop_s: float = 60.0
    """Longest wait for the writer to finish its batches at shutdown."""


_Item = tuple[str, bytes, float, int, int, int]
"""A message waiting in the inbox: topic, payload, received (epoch seconds), then what its
acknowledgement needs: mid, qos, connection generation. A plain tuple, made once per message;
its first three are what the writer takes (:data:`_FOR_WRITER`)."""
_FOR_WRITER = slice(0, 3)


@dataclass
class Counts:
    """What the monitor did since it started."""

    received: int = 0
    stored: int = 0
    duplicates: int = 0
    bad: Counter[str] = field(default_factory=Counter)
    batches: int = 0
    alerts_opened: int = 0
    alerts_cleared: int = 0
    writer: dict[str, Any] = field(default_factory=dict)
    """The writer's final figures: lag percentiles (commit time minus the message's own time
    stamp), store errors."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "stored": self.stored,
            "duplicates": self.duplicates,
            "bad": sum(self.bad.values()),
            "bad_by_reason": dict(sorted(self.bad.items())),
            "batches": self.batches,
            "store_errors": self.writer.get("store_errors", 0),
            "alerts_opened": self.alerts_opened,
            "alerts_cleared": self.alerts_cleared,
            "lag_p50_ms": self.writer.get("lag_p50_ms"),
            "lag_p99_ms": self.writer.get("lag_p99_ms"),
        }


class Monitor:
    """One monitor: :meth:`run` blocks until :meth:`stop` (or a fatal failure)."""

    def __init__(
        self,
        broker: BrokerSettings,
        writer: WriterSettings,
        hook: Optional[HookRunner] = None,
        settings: MonitorSettings = MonitorSettings(),
    ) -> None:
        self.broker = broker
        self.writer = writer
        self.settings = settings
        self.hook = hook
        self.counts = Counts()
        self._inbox: deque[_Item] = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._fatal: Optional[str] = None
        self._accepting = True
        self._connected = threading.Event()
        self._disconnected = threading.Event()
        self._connect_error: Optional[str] = None
        self._generation = 0
        self._ack_lock = threading.Lock()
        self._pending: dict[int, list[_Item]] = {}
        self._slots = threading.Semaphore(settings.in_flight_batches)
        self._stopped = threading.Event()
        self._client = make_client(broker)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe

    # --- public -------------------------------------------------------------------------------

    def run(self) -> Counts:
        """Start the writer, connect, ingest until :meth:`stop`, flush, disconnect.

        Raise FleetStoreError (or UsageError) when the writer cannot open the store or dies,
        TransportError when the first connection fails (unreachable, TLS, refused credentials);
        later outages are retried with capped back-off, logged.
        """
        context = multiprocessing.get_context("spawn")
        # one pipe each way: closing ours for requests ends the writer whatever the reader does
        requests, self._requests = context.Pipe(duplex=False)
        self._answers, answers = context.Pipe(duplex=False)
        self._process = context.Process(target=writer_main, args=(requests, answers, self.writer),
                                        name="edgeship-fleet-writer", daemon=True)  # fmt: skip
        self._process.start()
        requests.close()
        answers.close()
        try:
            self._await_writer()
            reader = threading.Thread(target=self._read_writer, name="writer-answers", daemon=True)
            reader.start()
            self._connect()
            try:
                self._ship_until_stopped()
            finally:
                self._shutdown(reader)
        finally:
            self._end_writer()
        if self._fatal is not None:
            raise FleetStoreError(self._fatal)
        return self.counts

    def stop(self) -> None:
        """Ask :meth:`run` to finish (safe from signal handlers and other threads)."""
        self._stop.set()
        self._wake.set()

    # --- the writer process -------------------------------------------------------------------

    def _end_writer(self) -> None:
        """Close our end of the pipe (the writer stops at its end) and reap the process; one
        that does not stop is killed (it ignores SIGTERM: the monitor decides when it stops)."""
        self._stopped.set()
        self._requests.close()
        self._process.join(self.settings.writer_stop_s)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()

    def _await_writer(self) -> None:
        if not self._answers.poll(self.settings.writer_start_s):
            raise FleetStoreError("the writer process did not start")
        try:
            answer = self._answers.recv()
        except EOFError as e:
            raise FleetStoreError("the writer process exited at start") from e
        if answer[0] == "fatal":
            error = UsageError if answer[1] == UsageError.exit_code else FleetStoreError
            raise error(answer[2])

    def _read_writer(self) -> None:
        """Take the writer's answers: acknowledge committed batches, publish alerts."""
        while True:
            try:
                answer = self._answers.recv()
            except (EOFError, OSError):
                if not self._stopped.is_set():
                    self._fatal = "the writer process exited unexpectedly"
                    log.error("%s; stopping (nothing it did not commit was acknowledged)",
                              self._fatal)  # fmt: skip
                    self.stop()
                self._stopped.set()
                return
            kind = answer[0]
            if kind == "done":
                self._batch_done(answer[1], answer[2])
            elif kind == "alerts":
                self._publish(answer[1])
            elif kind == "stopped":
                self.counts.writer = answer[1]
                self._stopped.set()
                return

    def _batch_done(self, number: int, summary: dict[str, Any]) -> None:
        with self._ack_lock:
            # a message from an earlier connection cannot be acknowledged on this one: the
            # broker sends it again and it is dropped as a duplicate
            for _topic, _payload, _received, mid, qos, generation in self._pending.pop(number):
                if qos and generation == self._generation:
                    self._client.ack(mid, qos)
        self._slots.release()
        counts = self.counts
        counts.batches += 1
        counts.received += summary["received"]
        counts.stored += summary["stored"]
        counts.duplicates += summary["duplicates"]
        counts.bad.update(summary["bad"])
        self._publish(summary["alerts"])

    def _publish(self, alerts: list[Alert]) -> None:
        for alert in alerts:
            if alert.state == "open":
                self.counts.alerts_opened += 1
                log.warning("alert %s opened: %s", alert.rule, alert.message)
            else:
                self.counts.alerts_cleared += 1
                log.info("alert %s cleared: %s/%s %s", alert.rule, alert.fleet, alert.device,
                         alert.model)  # fmt: skip
            try:
                payload = encode_alert(alert)
            except TelemetryMessageError as e:  # alerts are built by edgeship: only a bug
                log.error("cannot encode alert %s: %s", alert.id, e)
                continue
            self._client.publish(alert_topic(self.writer.prefix, alert), payload, qos=1)
            if alert.state == "open" and self.hook is not None:
                self.hook.submit(alert.to_dict())

    def _ship_until_stopped(self) -> None:
        number = 0
        while True:
            if self._stop.is_set():
                self._accepting = False  # hand over what is queued, take nothing new
            inbox = self._inbox
            if not inbox:
                if self._stop.is_set():
                    return
                self._wake.wait(0.05)
                self._wake.clear()
                continue
            while not self._slots.acquire(timeout=0.05):
                if self._fatal is not None:
                    return
            items = [inbox.popleft() for _ in range(min(len(inbox), self.settings.batch_max))]
            number += 1
            self._pending[number] = items
            try:
                self._requests.send(("batch", number, [item[_FOR_WRITER] for item in items]))
            except OSError:
                return  # the writer is gone: the reader has said so

    def _shutdown(self, reader: threading.Thread) -> None:
        self._accepting = False
        if self._fatal is None:
            with contextlib.suppress(OSError):
                self._requests.send(("stop",))
            if not self._stopped.wait(self.settings.writer_stop_s):
                log.error("the writer did not finish in %g s; its last batches will come again",
                          self.settings.writer_stop_s)  # fmt: skip
        self._stopped.set()
        reader.join(5)
        self._client.disconnect()
        self._disconnected.wait(5.0)
        self._client.loop_stop()
        if self.hook is not None:
            self.hook.close()

    # --- network thread -----------------------------------------------------------------------

    def _connect(self) -> None:
        b = self.broker
        try:
            self._client.connect(b.host, b.port, b.keepalive_s, clean_start=False,
                                 properties=connect_properties(b))  # fmt: skip
        except (OSError, ValueError) as e:
            raise TransportError(f"cannot connect to {b.describe()}: {e}") from e
        self._client.loop_start()
        deadline = time.monotonic() + self.settings.connect_timeout_s
        while not self._connected.wait(0.05):
            if self._connect_error is not None or time.monotonic() > deadline:
                self._client.disconnect()
                self._client.loop_stop()
                why = self._connect_error or "no answer"
                raise TransportError(f"{b.describe()} refused the connection: {why}")

    def _on_connect(self, client: mqtt.Client, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            if self._generation == 0:
                self._connect_error = str(reason)
            log.warning("broker %s refused the connection: %s", self.broker.describe(), reason)
            return
        with self._ack_lock:
            self._generation += 1
        prefix, share = self.writer.prefix, self.settings.share
        options = SubscribeOptions(qos=1, retainHandling=1)
        shared = f"$share/{share}/" if share else ""
        client.subscribe([
            (f"{prefix}/+/+/status", options),
            (f"{shared}{prefix}/+/+/telemetry", options),
            (f"{shared}{prefix}/+/+/events", options),
        ])  # fmt: skip
        self._disconnected.clear()
        self._connected.set()
        log.info("connected to %s as %s (session resumed: %s)", self.broker.describe(),
                 self.broker.client_id, flags.session_present)  # fmt: skip

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, reasons: Any, _p: Any) -> None:
        # from here on the broker keeps every device's messages for this session: a script that
        # starts devices after the monitor waits for this line
        refused = [str(r) for r in reasons if getattr(r, "is_failure", False)]
        if refused:
            log.error("the broker refused a subscription: %s", ", ".join(refused))
        else:
            log.info("subscribed to status, telemetry and events under %s/", self.writer.prefix)

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self._connected.clear()
        self._disconnected.set()
        if self._accepting:
            log.warning("lost the broker %s (%s); reconnecting", self.broker.describe(), reason)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if not self._accepting:
            return  # not acknowledged: the broker sends it again next session
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            topic = "(not UTF-8)"
        item = (topic, bytes(msg.payload), time.time(), msg.mid, msg.qos, self._generation)
        inbox = self._inbox
        while len(inbox) >= self.settings.queue_max and self._accepting:
            time.sleep(0.01)  # the writer is behind: stop reading, the broker holds the rest
        inbox.append(item)
        if len(inbox) == 1:
            self._wake.set()  # the main thread waits only on an empty inbox
