"""Who serves a connection and how one ends: the local API's fixed thread pool and its closer.

:class:`ConnectionPool` is a fixed set of threads, each serving one connection at a time; a
connection that finds none free is refused at once (the caller answers 503), so an overload costs
a quick error instead of a queue that grows without bound.

:class:`Closer` ends connections the server gave up on (refused, or closed on an error while the
client may still be sending): it shuts them for writing and drains what the client still sends,
for at most ``LINGER_S`` and ``LINGER_BYTES``, before closing. Closing a socket with unread input
resets it, and a reset can destroy the error response before the client reads it.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import selectors
import socket
import threading
import time
from typing import Any, Callable, Optional

_log = logging.getLogger("edgeship.api")

LINGER_S = 1.0
"""Longest time a given-up connection is drained before it is closed (seconds)."""
LINGER_BYTES = 256 * 1024
"""Most bytes drained from a given-up connection."""
MAX_LINGERING = 256
"""Most connections draining at once; beyond that they are closed at once."""
_TICK_S = 0.1

Serve = Callable[[socket.socket, Any], None]


class ConnectionPool:
    """``size`` threads serving connections with ``serve(sock, address)``."""

    def __init__(self, size: int, serve: Serve, name: str) -> None:
        self._free = threading.Semaphore(size)
        self._queue: queue.SimpleQueue[Optional[tuple[socket.socket, Any]]] = queue.SimpleQueue()
        self._serve = serve
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(size)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, sock: socket.socket, address: Any) -> bool:
        """Hand ``sock`` to a free thread; False, and nothing done, when none is free."""
        if not self._free.acquire(blocking=False):
            return False
        self._queue.put((sock, address))
        return True

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                self._serve(*item)
            finally:
                self._free.release()

    def stop(self, timeout_s: float) -> bool:
        """Let each thread finish its connection, then end it; False if some did not in time."""
        for _ in self._threads:
            self._queue.put(None)
        end = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, end - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)


class Closer:
    """One thread that drains and closes given-up connections."""

    def __init__(self, name: str) -> None:
        self._selector = selectors.DefaultSelector()
        self._incoming: queue.SimpleQueue[socket.socket] = queue.SimpleQueue()
        self._draining: dict[socket.socket, tuple[float, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def close(self, sock: socket.socket, first: bytes = b"") -> None:
        """Send ``first`` (a short response) if the socket takes it now, then drain and close."""
        try:
            sock.setblocking(False)
            if first:
                sock.send(first)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            sock.close()
            return
        self._incoming.put(sock)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._take_incoming()
            events = self._selector.select(_TICK_S) if self._draining else []
            if not self._draining:
                self._stop.wait(_TICK_S)
            for key, _ in events:
                self._drain(key.fileobj)  # type: ignore[arg-type]
            now = time.monotonic()
            for sock in [s for s, (end, _) in self._draining.items() if end <= now]:
                self._drop(sock)
        for sock in list(self._draining):
            self._drop(sock)
        self._take_incoming(close_all=True)

    def _take_incoming(self, close_all: bool = False) -> None:
        while True:
            try:
                sock = self._incoming.get_nowait()
            except queue.Empty:
                return
            if close_all or len(self._draining) >= MAX_LINGERING:
                sock.close()
                continue
            self._draining[sock] = (time.monotonic() + LINGER_S, 0)
            self._selector.register(sock, selectors.EVENT_READ)

    def _drain(self, sock: socket.socket) -> None:
        end, taken = self._draining[sock]
        try:
            data = sock.recv(64 * 1024)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data or taken + len(data) > LINGER_BYTES:
            self._drop(sock)
        else:
            self._draining[sock] = (end, taken + len(data))

    def _drop(self, sock: socket.socket) -> None:
        self._draining.pop(sock, None)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(sock)
        sock.close()

    def stop(self) -> None:
        """Close every connection still draining and end the thread."""
        self._stop.set()
        self._thread.join(LINGER_S + 1.0)
        self._selector.close()
        _log.debug("closer stopped")
