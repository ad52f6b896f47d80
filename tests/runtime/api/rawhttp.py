"""Raw HTTP exchanges for hostile-request tests: exact bytes out, the server's answer back."""

from __future__ import annotations

import http.client
import json
import socket
from dataclasses import dataclass
from typing import Any

from runtime.api.settings import Address, UnixAddress


def connect(address: Address, timeout_s: float = 10.0) -> socket.socket:
    if isinstance(address, UnixAddress):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target: Any = str(address.path)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        target = (address.host, address.port)
    sock.settimeout(timeout_s)
    sock.connect(target)
    return sock


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def doc(self) -> Any:
        return json.loads(self.body)


def read_answer(sock: socket.socket) -> Answer:
    response = http.client.HTTPResponse(sock)
    response.begin()
    body = response.read()
    return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, body)


def exchange(address: Address, data: bytes, timeout_s: float = 10.0) -> Answer:
    """Send ``data`` on a new connection and read one response."""
    with connect(address, timeout_s) as sock:
        sock.sendall(data)
        return read_answer(sock)


def request_bytes(
    method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> bytes:
    """A well-formed HTTP/1.1 request with a Content-Length (unless ``headers`` say otherwise)."""
    fields = {"Host": "localhost", "Content-Length": str(len(body)), **(headers or {})}
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in fields.items() if v is not None
    )
    return head.encode("latin-1") + b"\r\n" + body
