"""Settings of the local inference API: where it listens and the limits it applies to clients.

Every request a client sends is untrusted: its size, its pace and how many arrive at once are
bounded here, in one documented place (docs/local-api.md, "Limits"). The defaults suit a small
device serving a few local processes; a device owner may raise them in code.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from runtime.errors import UsageError

MiB = 1024 * 1024
DEFAULT_PORT = 8080
UNIX_PREFIX = "unix:"
_HOST_PORT = re.compile(
    r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9.\-]*)):(?P<port>\d{1,5})$"
)


@dataclass(frozen=True)
class ApiLimits:
    """What one client may ask of the local API, and how long it may take to ask."""

    max_body_bytes: int = 8 * MiB
    """Largest request body (bytes); a larger ``Content-Length`` is answered 413 unread."""
    max_head_bytes: int = 32 * 1024
    """Most bytes of request line and headers together; more is answered 431 (and at most
    100 header lines, the standard library's own limit)."""
    max_connections: int = 16
    """Connections served at once, each by one thread of a fixed pool (idle keep-alive ones
    included); a connection beyond that is answered 503 at once and closed."""
    max_model_calls: int = max(1, min(4, os.cpu_count() or 1))
    """Requests running a model (infer, explain) at once; the rest wait ``queue_wait_s``."""
    queue_wait_s: float = 0.5
    """Longest wait for a model slot (seconds) before a request is answered 503."""
    request_read_s: float = 10.0
    """Time a client has to send one whole request, from its first byte (seconds): a slower
    client is answered 408 and disconnected."""
    keepalive_idle_s: float = 5.0
    """How long an idle keep-alive connection is kept open for the next request (seconds)."""
    write_timeout_s: float = 10.0
    """Time a client has to take one whole response (seconds) before it is disconnected."""
    max_requests_per_connection: int = 10_000
    """Requests served on one connection before it is closed (the client reconnects)."""


DEFAULT_API_LIMITS = ApiLimits()


@dataclass(frozen=True)
class TcpAddress:
    """``HOST:PORT`` (an IPv6 host in brackets); port 0 lets the system choose."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self}"


@dataclass(frozen=True)
class UnixAddress:
    """``unix:PATH``: a Unix stream socket, created by the server (mode 0660)."""

    path: Path

    def __str__(self) -> str:
        return f"{UNIX_PREFIX}{self.path}"

    @property
    def url(self) -> str:
        return str(self)


Address = Union[TcpAddress, UnixAddress]


def parse_address(text: str) -> Address:
    """Parse a ``--serve`` value: ``HOST:PORT``, ``:PORT`` (localhost), ``PORT``, or ``unix:PATH``.

    Raises UsageError for anything else (a port above 65535, an empty socket path).
    """
    if text.startswith(UNIX_PREFIX):
        path = text[len(UNIX_PREFIX) :]
        if not path:
            raise UsageError("unix: needs a socket path, e.g. unix:/run/edgeship/api.sock")
        # the kernel's sun_path holds 108 bytes with the terminating NUL
        if len(os.fsencode(path)) > 107:
            raise UsageError(f"socket path {path!r} is longer than 107 bytes")
        return UnixAddress(Path(path))
    if text.isdigit():
        text = f"127.0.0.1:{text}"
    match = _HOST_PORT.match(text)
    if match is None:
        raise UsageError(f"cannot read address {text!r}: use HOST:PORT or unix:PATH")
    port = int(match["port"])
    if port > 65535:
        raise UsageError(f"port {port} is out of range")
    host: Optional[str] = match["v6"] or match["host"]
    return TcpAddress(host or "127.0.0.1", port)
