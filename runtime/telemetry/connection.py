"""What an MQTT connection is made of: the broker URL, the options, the back-off policy and
the connection states (the publisher that uses them is ``runtime/telemetry/mqtt.py``).
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlsplit

PROTOCOLS = ("auto", "5", "3.1.1")
DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}


class ConnectionState(enum.Enum):
    """Where the connection is. Only the publisher thread changes it."""

    STOPPED = "stopped"
    """Not started, or stopped."""
    CONNECTING = "connecting"
    """TCP, TLS and CONNECT under way."""
    CONNECTED = "connected"
    """The broker accepted the connect; the spool is draining."""
    BACKING_OFF = "backing-off"
    """The last attempt failed or the connection dropped; waiting to try again."""
    AUTH_FAILED = "auth-failed"
    """The broker refused the credentials; trying again with back-off (they may be fixed)."""


@dataclass(frozen=True)
class BrokerURL:
    """``mqtt://HOST[:PORT]`` (plain TCP, port 1883 by default) or ``mqtts://HOST[:PORT]`` (TLS,
    8883)."""

    scheme: str
    host: str
    port: int

    @property
    def tls(self) -> bool:
        return self.scheme == "mqtts"

    @classmethod
    def parse(cls, url: str) -> BrokerURL:
        """Raise ValueError for anything but a plain broker URL (no credentials, path or query:
        a password in a URL ends up in process listings and shell history)."""
        parts = urlsplit(url)
        if parts.scheme not in DEFAULT_PORTS:
            raise ValueError(f"broker URL {url!r} must start with mqtt:// or mqtts://")
        if parts.username is not None or parts.password is not None:
            raise ValueError(
                "the broker URL must not hold credentials: use --username and a "
                "password file or EDGESHIP_MQTT_PASSWORD"
            )
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(f"broker URL {url!r} must be scheme://HOST[:PORT] only")
        try:
            port = parts.port
        except ValueError as e:
            raise ValueError(f"broker URL {url!r}: the port must be 1 to 65535") from e
        if port is None:
            port = DEFAULT_PORTS[parts.scheme]
        elif not 1 <= port <= 65535:
            raise ValueError(f"broker URL {url!r}: the port must be 1 to 65535")
        if not parts.hostname:
            raise ValueError(f"broker URL {url!r} has no host")
        return cls(parts.scheme, parts.hostname, port)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


@dataclass(frozen=True)
class ReconnectPolicy:
    """Back-off between connection attempts (seconds): ``initial_s`` doubling up to ``max_s``,
    each wait shortened by a random fraction of up to ``jitter`` so a fleet that lost its broker
    together does not come back in lockstep."""

    initial_s: float = 0.5
    max_s: float = 30.0
    jitter: float = 0.25

    def __post_init__(self) -> None:
        if not 0 < self.initial_s <= self.max_s or not 0 <= self.jitter < 1:
            raise ValueError("reconnect policy: need 0 < initial_s <= max_s and 0 <= jitter < 1")


class Backoff:
    """The next wait of a :class:`ReconnectPolicy`; :meth:`reset` after a confirmed connect."""

    def __init__(self, policy: ReconnectPolicy, rng: Optional[random.Random] = None) -> None:
        self.policy = policy
        self._rng = rng or random.Random()
        self._failures = 0

    def next_delay(self) -> float:
        p = self.policy
        base = min(p.max_s, p.initial_s * 2.0 ** min(self._failures, 60))
        self._failures += 1
        return base * (1.0 - p.jitter * self._rng.random())

    def reset(self) -> None:
        self._failures = 0


@dataclass(frozen=True)
class ConnectionOptions:
    """How to reach the broker. Paths are PEM files; ``password`` never comes from a URL."""

    url: BrokerURL
    client_id: str
    username: Optional[str] = None
    password: Optional[str] = field(default=None, repr=False)
    ca: Optional[Path] = None
    """CA bundle the broker's certificate must chain to (``mqtts``); default: the system's."""
    cert: Optional[Path] = None
    """Client certificate, for brokers that require one (with ``key``)."""
    key: Optional[Path] = None
    protocol: str = "auto"
    """``auto`` (MQTT 5, then 3.1.1 if the broker refuses 5), ``5`` or ``3.1.1``."""
    keepalive_s: int = 30
    connect_timeout_s: float = 5.0
    max_inflight: int = 20
    """Spooled messages published and not yet acknowledged, at most."""
    reconnect: ReconnectPolicy = field(default_factory=ReconnectPolicy)

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}")
        if not 1 <= self.max_inflight <= 65535 or self.keepalive_s < 5:
            raise ValueError("max_inflight must be 1..65535 and keepalive_s at least 5")


@dataclass(frozen=True)
class ConnectionStatus:
    """A snapshot of the connection for status displays and tests."""

    state: ConnectionState
    problem: Optional[str]
    """Why the last attempt failed or the connection dropped; ``None`` while all is well."""
    protocol: str
    attempts: int
    connects: int
    published: int
    acknowledged: int
    refused: int
    """Rows the broker answered with a failure PUBACK (e.g. an ACL refusal): dropped, logged."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "problem": self.problem,
            "protocol": self.protocol,
            "attempts": self.attempts,
            "connects": self.connects,
            "published": self.published,
            "acknowledged": self.acknowledged,
            "refused": self.refused,
        }
