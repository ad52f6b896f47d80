"""Reading one request under the local API's deadlines (``ApiLimits``).

A connection waits for the first byte of its next request at most ``keepalive_idle_s``; that byte
starts the request's clock, and the whole request (line, headers, body) must have arrived within
``request_read_s`` of it. Reads are cut into ``POLL_S`` slices while idle so a stopping server is
noticed promptly. The request line and headers together are bounded by ``max_head_bytes``.
"""

from __future__ import annotations

import io
import select
import socket
import threading
import time
from typing import Any, Optional

from runtime.api.settings import ApiLimits

POLL_S = 0.25
"""Slice of every idle wait, so that a stopping server is noticed promptly (seconds)."""


class Idle(Exception):
    """No request arrived in time, the client left, or the server is stopping: close quietly."""


class Slow(Exception):
    """A request did not arrive whole within ``request_read_s``: answer 408."""


class HeadTooLarge(Exception):
    """The request line and headers exceed ``max_head_bytes``."""


class DeadlineReader(io.RawIOBase):
    """The socket as a raw stream whose reads keep the connection's deadlines.

    Waiting for a request's first byte is bounded by ``keepalive_idle_s`` (then ``Idle``); the
    first byte starts the request's clock, and every later read is bounded by what is left of
    ``request_read_s`` (then ``Slow``) until :meth:`next_request` resets it.
    """

    def __init__(self, sock: socket.socket, limits: ApiLimits, stopping: threading.Event) -> None:
        super().__init__()
        self._sock = sock
        self._limits = limits
        self._stopping = stopping
        self._deadline: Optional[float] = None
        self._poller = select.poll()
        self._poller.register(sock, select.POLLIN)

    def readable(self) -> bool:
        return True

    def next_request(self) -> None:
        self._deadline = None

    def readinto(self, buffer: Any) -> int:
        if self._deadline is None:
            self._wait_idle()
            timeout = self._limits.request_read_s
        else:
            timeout = self._deadline - time.monotonic()
            if timeout <= 0:
                raise Slow
        self._sock.settimeout(timeout)
        try:
            count = self._sock.recv_into(buffer)
        except socket.timeout as e:
            raise Slow from e
        except OSError as e:
            raise Idle from e
        if self._deadline is None and count:
            self._deadline = time.monotonic() + self._limits.request_read_s
        return count

    def _wait_idle(self) -> None:
        poller = self._poller
        end = time.monotonic() + self._limits.keepalive_idle_s
        while True:
            left = end - time.monotonic()
            closing = left <= 0 or self._stopping.is_set()
            # a request already sent is served even while the server stops
            if poller.poll(0 if closing else min(left, POLL_S) * 1000):
                return
            if closing:
                raise Idle


class HeadBudget:
    """``readline`` over the request's stream, refusing more than ``budget`` bytes in all."""

    def __init__(self, stream: io.BufferedIOBase, budget: int) -> None:
        self._stream = stream
        self._left = budget

    def readline(self, size: int = -1) -> bytes:
        if self._left <= 0:
            raise HeadTooLarge
        limit = self._left + 1 if size < 0 else min(size, self._left + 1)
        line = self._stream.readline(limit)
        self._left -= len(line)
        if self._left < 0:
            raise HeadTooLarge
        return line
