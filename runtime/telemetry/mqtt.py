"""The MQTT connection of a device: drains the telemetry spool to the broker (docs/telemetry.md).

One thread owns one paho-mqtt 2.x client at a time and does everything with it: connect, run the
network loop in short slices, publish spooled rows in order with a bounded number in flight, and
delete a row when its PUBACK arrives (``on_publish``). paho keeps unacknowledged messages in
memory only, so a fresh client is made for every connection and rows in flight when a connection
drops are simply read from the spool again after the next connect (QoS 1: the broker may see a
row twice; the monitor drops duplicates by sequence number).

The connection moves through :class:`ConnectionState`; a failed attempt or a lost connection
waits a capped, jittered exponential back-off that resets only after a broker accepted a connect
(CONNACK success). MQTT 5 is tried first; a broker that answers "unsupported protocol version" is
spoken to in 3.1.1 from then on. Every connect publishes the retained birth status and sets a
retained Last Will ("offline"); :meth:`SpoolPublisher.stop` drains what it can, publishes a clean
"offline" and disconnects.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from typing import Any, Callable, Optional

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from runtime.errors import EdgeshipError
from runtime.telemetry.connection import (
    Backoff,
    BrokerURL,
    ConnectionOptions,
    ConnectionState,
    ConnectionStatus,
)
from runtime.telemetry.spool import Spool
from runtime.telemetry.spooldb import SpoolUnavailableError

log = logging.getLogger(__name__)
_paho_log = logging.getLogger(f"{__name__}.paho")
"""paho's own packet log (DEBUG), for diagnosing a broker that misbehaves."""

LOOP_SLICE_S = 0.05
"""Longest the network loop blocks at a time: bounds the delay of new rows and of stop()."""
UNSUPPORTED_PROTOCOL = 0x84
AUTH_REASONS = frozenset({0x86, 0x87, 0x8A, 0x8C})
"""CONNACK reasons that mean the credentials were refused: bad user name or password, not
authorized, banned, bad authentication method (3.1.1 return codes 4 and 5 map to the first two)."""
OFFLINE_RESERVE_S = 0.5
"""While stopping, the clean "offline" is published at the latest this long before the deadline."""
DELETE_RETRY_S = 1.0
"""How often acknowledged rows that could not be deleted (a full disk) are tried again (seconds)."""


StatusPayload = Callable[[int, str, Optional[int]], bytes]
"""(sequence number, ``online`` | ``lost`` | ``shutdown``, the sequence number of this
connection's Last Will) → a retained status payload."""


class _Session:
    """What one connection tracks: spool rows in flight by message id, acknowledged rows."""

    def __init__(self) -> None:
        self.connack: Optional[ReasonCode] = None
        self.lost: Optional[str] = None
        self.inflight: dict[int, int] = {}
        self.acked: list[int] = []
        self.delete_after = 0.0
        self.status_mid: Optional[int] = None
        self.status_acked = False
        self.offline_sent = False
        self.will_seq: Optional[int] = None
        self.cursor = 0


class SpoolPublisher:
    """Publishes a :class:`Spool` to one broker from its own thread."""

    def __init__(
        self,
        options: ConnectionOptions,
        spool: Spool,
        status_topic: str,
        status_payload: StatusPayload,
    ) -> None:
        self.options = options
        self.spool = spool
        self.status_topic = status_topic
        self._status_payload = status_payload
        self._backoff = Backoff(options.reconnect)
        self._delete_error: Optional[str] = None
        self._use_v5 = options.protocol != "3.1.1"
        self._state_lock = threading.Lock()
        self._state = ConnectionState.STOPPED
        self._problem: Optional[str] = None
        self._counts = {
            "attempts": 0,
            "connects": 0,
            "published": 0,
            "acknowledged": 0,
            "refused": 0,
        }
        self._stopping = threading.Event()
        self._deadline = 0.0
        self._status_dirty = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # --- public ---------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the publisher was already started")
        self._thread = threading.Thread(target=self._run, name="edgeship-mqtt", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> bool:
        """Drain the spool for up to ``timeout_s`` while connected, publish the clean "offline",
        disconnect. Returns True when nothing was left waiting in the spool."""
        self._deadline = time.monotonic() + timeout_s
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout_s + self.options.connect_timeout_s + 1.0)
        return self.spool.rows == 0

    def refresh_status(self) -> None:
        """Publish the birth status again (the installed models changed)."""
        self._status_dirty.set()

    def status(self) -> ConnectionStatus:
        with self._state_lock:
            return ConnectionStatus(
                self._state, self._problem, "5" if self._use_v5 else "3.1.1", **self._counts
            )

    @property
    def state(self) -> ConnectionState:
        with self._state_lock:
            return self._state

    # --- the thread -----------------------------------------------------------------------------

    def _set(self, state: ConnectionState, problem: Optional[str] = None, **bump: int) -> None:
        with self._state_lock:
            self._state, self._problem = state, problem
            for key, by in bump.items():
                self._counts[key] += by

    def _count(self, key: str) -> None:
        with self._state_lock:
            self._counts[key] += 1

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                try:
                    delay = self._attempt()
                except Exception as e:  # the thread must outlive any single failure
                    log.exception("telemetry connection failed unexpectedly")
                    self._set(ConnectionState.BACKING_OFF, f"internal error: {e}")
                    delay = self._backoff.next_delay()
                if delay > 0:
                    self._sleep(delay)
        finally:
            self._set(ConnectionState.STOPPED, self._problem)

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self._stopping.is_set():
            left = end - time.monotonic()
            if left <= 0:
                return
            self._stopping.wait(min(left, 0.1))

    def _attempt(self) -> float:
        """One connection, from connect to its end; returns how long to wait before the next."""
        self._set(ConnectionState.CONNECTING, self._problem, attempts=1)
        session = _Session()
        url = self.options.url
        try:
            client = self._client(session)
            clean = True if self._use_v5 else paho.MQTT_CLEAN_START_FIRST_ONLY
            client.connect(url.host, url.port, self.options.keepalive_s, clean_start=clean)
        except (OSError, ValueError) as e:
            return self._failed(ConnectionState.BACKING_OFF, _describe(e, url))
        except SpoolUnavailableError as e:  # no sequence number for the Last Will: a full disk
            return self._failed(ConnectionState.BACKING_OFF, f"{e} (not connecting until it can)")
        try:
            reason = self._await_connack(client, session)
            if reason is None:
                return self._failed(
                    ConnectionState.BACKING_OFF, session.lost or f"no CONNACK from {url} in time"
                )
            if reason.is_failure:
                return self._refused(reason)
            return self._connected(client, session)
        except SpoolUnavailableError as e:  # no sequence number for a status message
            return self._failed(ConnectionState.BACKING_OFF, f"{e} (not connecting until it can)")
        finally:
            if client.is_connected():
                client.disconnect()
            if client.socket() is not None:
                client.loop(0.01)
            sock = client.socket()
            if sock is not None:
                sock.close()

    def _client(self, session: _Session) -> paho.Client:
        o = self.options
        protocol = MQTTProtocolVersion.MQTTv5 if self._use_v5 else MQTTProtocolVersion.MQTTv311
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=o.client_id,
            clean_session=None if self._use_v5 else True,
            userdata=session,
            protocol=protocol,
            reconnect_on_failure=False,
        )
        client.connect_timeout = o.connect_timeout_s
        client.enable_logger(_paho_log)
        client.max_inflight_messages_set(o.max_inflight + 2)  # + the status message
        if o.username is not None:
            client.username_pw_set(o.username, o.password)
        if o.url.tls:
            context = ssl.create_default_context(cafile=str(o.ca) if o.ca else None)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            if o.cert is not None:
                context.load_cert_chain(
                    str(o.cert), str(o.key) if o.key else None, password=_no_passphrase
                )
            client.tls_set_context(context)
        session.will_seq = self.spool.reserve_seq()
        will = self._status_payload(session.will_seq, "lost", None)
        client.will_set(self.status_topic, will, qos=1, retain=True)
        client.on_connect = _on_connect
        client.on_disconnect = _on_disconnect
        client.on_publish = self._on_publish
        return client

    def _await_connack(self, client: paho.Client, session: _Session) -> Optional[ReasonCode]:
        end = time.monotonic() + self.options.connect_timeout_s
        while session.connack is None and time.monotonic() < end and not self._stopping.is_set():
            if client.loop(LOOP_SLICE_S) != MQTTErrorCode.MQTT_ERR_SUCCESS or session.lost:
                break
        return session.connack

    def _refused(self, reason: ReasonCode) -> float:
        url = self.options.url
        fallback = self._use_v5 and self.options.protocol == "auto"
        if reason.value == UNSUPPORTED_PROTOCOL and fallback:
            log.info("broker %s does not speak MQTT 5; using MQTT 3.1.1", url)
            with self._state_lock:
                self._use_v5 = False
            return 0.0
        if reason.value in AUTH_REASONS:
            who = self.options.username or "(no user name)"
            return self._failed(
                ConnectionState.AUTH_FAILED,
                f"broker {url} refused the credentials of {who}: {reason} ({reason.value})",
            )
        problem = f"broker {url} refused the connection: {reason} ({reason.value})"
        return self._failed(ConnectionState.BACKING_OFF, problem)

    def _failed(self, state: ConnectionState, problem: str) -> float:
        delay = self._backoff.next_delay()
        changed = problem != self._problem
        self._set(state, problem)
        level = logging.ERROR if state is ConnectionState.AUTH_FAILED else logging.WARNING
        log.log(
            level if changed else logging.DEBUG, "telemetry: %s; retrying in %.1f s", problem, delay
        )
        return delay

    def _connected(self, client: paho.Client, session: _Session) -> float:
        """Serve one accepted connection until it drops (returns the back-off to wait) or the
        publisher stops (returns 0)."""
        self._backoff.reset()
        self._set(ConnectionState.CONNECTED, None, connects=1)
        log.info(
            "telemetry connected to %s (MQTT %s)",
            self.options.url,
            "5" if self._use_v5 else "3.1.1",
        )
        self._publish_status(client, session, "online")
        while True:
            rc = client.loop(LOOP_SLICE_S)
            if session.acked and time.monotonic() >= session.delete_after:
                self._delete(session)
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or session.lost is not None:
                problem = session.lost or f"connection lost ({paho.error_string(rc)})"
                return self._failed(ConnectionState.BACKING_OFF, problem)
            if self._stopping.is_set() and self._finish(client, session):
                return 0.0
            if self._status_dirty.is_set():
                self._status_dirty.clear()
                self._publish_status(client, session, "online")
            self._fill(client, session)

    def _fill(self, client: paho.Client, session: _Session) -> None:
        room = self.options.max_inflight - len(session.inflight)
        if room <= 0 or session.offline_sent or session.cursor >= self.spool.last_id:
            return
        for message in self.spool.pending(session.cursor, room):
            info = client.publish(message.topic, message.payload, message.qos, message.retain)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return  # the connection is going; the loop notices
            session.inflight[info.mid] = message.id
            session.cursor = message.id
            self._count("published")

    def _delete(self, session: _Session) -> None:
        acked, session.acked = session.acked, []
        try:
            self.spool.delete(acked)
        except EdgeshipError as e:  # kept for another try; a reconnect sends them again anyway
            session.acked = acked + session.acked
            session.delete_after = time.monotonic() + DELETE_RETRY_S
            if self._delete_error is None:
                log.error(
                    "telemetry: %s; acknowledged messages stay in the spool and are deleted "
                    "once it can be written (a reconnect meanwhile sends them again)",
                    e,
                )
            self._delete_error = str(e)
            return
        if self._delete_error is not None:
            log.warning("telemetry: acknowledged messages are deleted from the spool again")
            self._delete_error = None

    def _publish_status(self, client: paho.Client, session: _Session, kind: str) -> None:
        payload = self._status_payload(self.spool.reserve_seq(), kind, session.will_seq)
        info = client.publish(self.status_topic, payload, qos=1, retain=True)
        session.status_mid, session.status_acked = info.mid, False

    def _finish(self, client: paho.Client, session: _Session) -> bool:
        """While stopping: once drained (or nearly out of time), publish the clean "offline" and
        wait for its PUBACK. Returns True when the connection may close."""
        left = self._deadline - time.monotonic()
        if session.offline_sent:
            return session.status_acked or left <= 0
        drained = self.spool.rows == 0 and not session.inflight
        if drained or left <= OFFLINE_RESERVE_S:
            self._publish_status(client, session, "shutdown")
            session.offline_sent = True
        return False

    def _on_publish(
        self, client: paho.Client, session: _Session, mid: int, reason: ReasonCode, properties: Any
    ) -> None:
        row = session.inflight.pop(mid, None)
        if row is None:
            if mid == session.status_mid:
                session.status_acked = True
            return
        session.acked.append(row)
        if reason.is_failure:
            log.error(
                "telemetry: the broker refused spooled message %d: %s (%d); dropped",
                row,
                reason,
                reason.value,
            )
            self._count("refused")
        else:
            self._count("acknowledged")


def _on_connect(
    client: paho.Client, session: _Session, flags: Any, reason: ReasonCode, properties: Any
) -> None:
    session.connack = reason


def _on_disconnect(
    client: paho.Client, session: _Session, flags: Any, reason: ReasonCode, properties: Any
) -> None:
    session.lost = f"disconnected by the broker or the network: {reason} ({reason.value})"


def _no_passphrase() -> bytes:
    # an encrypted key would otherwise make OpenSSL prompt on the terminal of a daemon
    return b""


def _describe(error: Exception, url: BrokerURL) -> str:
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"TLS: the certificate of {url} was not accepted: {error.verify_message}"
    if isinstance(error, ssl.CertificateError):
        return f"TLS: the certificate of {url} does not name {url.host}: {error}"
    if isinstance(error, ssl.SSLError):
        return f"TLS with {url} failed: {error.reason or error}"
    if isinstance(error, ConnectionRefusedError):
        return f"connection to {url} refused (is the broker running?)"
    if isinstance(error, TimeoutError):
        return f"connection to {url} timed out"
    return f"cannot connect to {url}: {error}"
