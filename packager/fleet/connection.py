"""The monitor's MQTT connection settings and the paho client made from them.

MQTT 5 only (shared subscriptions, session expiry and Receive Maximum are MQTT 5 features). The
client acknowledges QoS 1 messages only when told to (``manual_ack``), and resumes its session on
every reconnect (``clean_start=False`` with a session expiry), so the broker keeps what arrives
while the monitor is away and re-sends what it had not acknowledged.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from runtime.errors import UsageError

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}


@dataclass(frozen=True)
class BrokerSettings:
    """Where and how to connect. Times in seconds."""

    host: str
    port: int
    tls: bool = False
    ca: Optional[Path] = None
    """CA bundle the broker's certificate must chain to (system CAs when None)."""
    cert: Optional[Path] = None
    key: Optional[Path] = None
    username: Optional[str] = None
    password: Optional[str] = field(default=None, repr=False)
    client_id: str = "edgeship-monitor"
    """Names the persistent session: stable across restarts, different per monitor process."""
    keepalive_s: int = 30
    session_expiry_s: int = 7 * 24 * 3600
    """How long the broker keeps the session (and queues messages) while the monitor is away."""
    receive_maximum: int = 1000
    """QoS 1 messages the broker may have in flight to the monitor, unacknowledged."""
    reconnect_min_s: int = 1
    reconnect_max_s: int = 30

    @classmethod
    def from_url(cls, url: str, **options: object) -> BrokerSettings:
        """``mqtt://HOST[:PORT]`` or ``mqtts://HOST[:PORT]``; raise UsageError otherwise."""
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError as e:
            raise UsageError(f"broker URL {url!r}: {e}") from e
        if parts.scheme not in DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/"):
            raise UsageError(
                f"broker URL {url!r}: expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT]"
            )
        if parts.username or parts.password:
            raise UsageError(
                f"broker URL {url!r}: pass credentials with --username/--password-file"
            )
        return cls(
            host=parts.hostname,
            port=port or DEFAULT_PORTS[parts.scheme],
            tls=parts.scheme == "mqtts",
            **options,  # type: ignore[arg-type]
        )

    def describe(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def make_client(settings: BrokerSettings) -> mqtt.Client:
    """A paho client for ``settings``, not connected; raise UsageError for unusable TLS files."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=settings.client_id,
        protocol=mqtt.MQTTv5,
        manual_ack=True,
    )
    if settings.tls:
        try:
            client.tls_set(
                ca_certs=str(settings.ca) if settings.ca else None,
                certfile=str(settings.cert) if settings.cert else None,
                keyfile=str(settings.key) if settings.key else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        except (OSError, ssl.SSLError, ValueError) as e:
            raise UsageError(f"cannot use the TLS files: {e}") from e
    elif settings.ca or settings.cert:
        raise UsageError("--ca/--cert need an mqtts:// broker URL")
    if settings.username is not None:
        client.username_pw_set(settings.username, settings.password)
    client.reconnect_delay_set(settings.reconnect_min_s, settings.reconnect_max_s)
    return client


def connect_properties(settings: BrokerSettings) -> Properties:
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = settings.session_expiry_s
    props.ReceiveMaximum = settings.receive_maximum
    return props
