"""The local API's HTTP/1.1 server: stdlib ``socketserver`` + ``http.server``, on TCP or a Unix
socket, with every client bounded (``runtime.api.settings.ApiLimits``).

- A fixed pool of ``max_connections`` threads serves connections, one each, keep-alive included.
  When all are busy a new connection is answered 503 at once and closed: nothing queues forever.
- A request must arrive whole within ``request_read_s`` of its first byte (slow clients get 408);
  an idle keep-alive connection is closed after ``keepalive_idle_s``; a response must be taken
  within ``write_timeout_s``.
- The request line and headers are bounded by ``max_head_bytes`` (414/431), the body by
  ``max_body_bytes`` (413, before it is read); a POST needs a ``Content-Length`` (411).
- :meth:`ApiServer.stop` stops accepting, lets requests in progress finish, then returns.

A connection closed early on an error is shut for writing and drained briefly before it is
closed (``connections.Closer``), so the client reads the error rather than a reset.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import socket
import socketserver
import stat
import threading
import time
from email.utils import formatdate
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Optional, cast

from runtime import __version__
from runtime.api.connections import Closer, ConnectionPool
from runtime.api.deadline import DeadlineReader, HeadBudget, HeadTooLarge, Idle, Slow
from runtime.api.routes import Api, Response, error_response
from runtime.api.settings import (
    DEFAULT_API_LIMITS,
    Address,
    ApiLimits,
    TcpAddress,
    UnixAddress,
)
from runtime.errors import TransportError, UsageError

_log = logging.getLogger("edgeship.api")

POLL_S = 0.25
"""How often the accepting thread looks whether the server is stopping (seconds)."""
SERVER_NAME = f"edgeship/{__version__}"
_PHRASES = {status.value: status.phrase for status in HTTPStatus}
_dates: tuple[int, str] = (0, "")


def _date() -> str:
    """The Date header's value, formatted once a second."""
    global _dates  # noqa: PLW0603 - a one-entry cache shared by every connection thread
    now = int(time.time())
    if _dates[0] != now:
        _dates = (now, formatdate(now, usegmt=True))
    return _dates[1]


class _Reject(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Handler(BaseHTTPRequestHandler):
    """One connection: reads requests in turn and answers each through the server's Api."""

    protocol_version = "HTTP/1.1"
    server_version = SERVER_NAME
    sys_version = ""

    def setup(self) -> None:
        sock: socket.socket = self.request
        self.connection = sock
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        owner = cast("_Listener", self.server)
        self.owner = owner
        self.limits = owner.limits
        self.linger = False
        self._served = 0
        self._reader = DeadlineReader(sock, self.limits, owner.stopping)
        self._stream = io.BufferedReader(self._reader, 64 * 1024)
        self.rfile = self._stream
        self.wfile = io.BytesIO()  # unused: every response is written whole by _write

    def handle(self) -> None:
        self.close_connection = True
        with contextlib.suppress(Idle):
            self.handle_one_request()
            while not self.close_connection:
                self.handle_one_request()

    def finish(self) -> None:
        self.rfile.close()

    def handle_one_request(self) -> None:
        self.close_connection = True
        self._reader.next_request()
        try:
            body = self._read_request()
        except Slow:
            self._fail(408, f"the request did not arrive within {self.limits.request_read_s:g} s")
            return
        except HeadTooLarge:
            self._fail(431, f"request line and headers exceed {self.limits.max_head_bytes} bytes")
            return
        except _Reject as e:
            self._fail(e.status, str(e))
            return
        if body is None:
            return
        self._reader.next_request()
        headers = {key.lower(): value for key, value in self.headers.items()}
        response = self.owner.app.handle(self.command, self.path, headers, body)
        self._served += 1
        if self.owner.stopping.is_set() or self._served >= self.limits.max_requests_per_connection:
            self.close_connection = True
        self._send(response)

    def _read_request(self) -> Optional[bytes]:
        """The body of the next request, or None when the connection is done."""
        head = HeadBudget(self._stream, self.limits.max_head_bytes)
        try:
            self.raw_requestline = head.readline(self.limits.max_head_bytes + 1)
        except HeadTooLarge as e:
            raise _Reject(414, f"request line exceeds {self.limits.max_head_bytes} bytes") from e
        if not self.raw_requestline:
            return None
        self.rfile = head  # type: ignore[assignment]
        try:
            parsed = self.parse_request()  # answers malformed requests itself (send_error)
        finally:
            self.rfile = self._stream
        if not parsed:
            return None
        return self._read_body()

    def _content_length(self) -> Optional[int]:
        if self.headers.get("Transfer-Encoding") is not None:
            raise _Reject(411, "Transfer-Encoding is not supported: send a Content-Length")
        values = self.headers.get_all("Content-Length") or []
        if not values:
            if self.command == "POST":
                raise _Reject(411, "a POST needs a Content-Length header")
            return None
        text = values[0].strip()
        if len(set(values)) > 1 or not text.isdigit() or len(text) > 18:
            raise _Reject(400, "Content-Length must be one number of bytes")
        length = int(text)
        if length > self.limits.max_body_bytes:
            raise _Reject(
                413, f"request body is {length} bytes, the limit is {self.limits.max_body_bytes}"
            )
        return length

    def _read_body(self) -> Optional[bytes]:
        length = self._content_length()
        if not length:
            return b""
        body = self.rfile.read(length)
        if len(body) < length:  # the client went away mid-body
            return None
        return body

    def handle_expect_100(self) -> bool:
        try:
            self._content_length()
        except _Reject as e:
            self._fail(e.status, str(e))
            return False
        self._write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return True

    def send_error(
        self, code: int, message: Optional[str] = None, explain: Optional[str] = None
    ) -> None:
        """Answer a request ``parse_request`` refused, in the protocol's error shape."""
        self._fail(code, message or _PHRASES.get(code, "error"))

    def _fail(self, status: int, message: str) -> None:
        self.close_connection = True
        self.linger = True
        with contextlib.suppress(Idle):
            self._send(error_response(status, message))

    def _send(self, response: Response) -> None:
        body, headers = response.encode()
        lines = [
            f"HTTP/1.1 {response.status} {_PHRASES.get(response.status, '')}",
            f"Server: {SERVER_NAME}",
            f"Date: {_date()}",
            f"Content-Length: {len(body)}",
        ]
        lines += [f"{key}: {value}" for key, value in headers]
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self._write(head + body)
        if _log.isEnabledFor(logging.DEBUG):
            _log.debug("%s %s -> %d", self.command, self.path[:200], response.status)

    def _write(self, data: bytes) -> None:
        try:
            self.connection.settimeout(self.limits.write_timeout_s)
            self.connection.sendall(data)
        except OSError as e:  # the client does not take the answer: give the thread back
            self.close_connection = True
            raise Idle from e

    def log_message(self, format: str, *args: Any) -> None:
        _log.debug("%s: " + format, self.address_string(), *args)

    def address_string(self) -> str:
        address: Any = self.client_address
        return str(address[0]) if isinstance(address, tuple) else "unix"


_BUSY = Response(503, {"error": "busy: every connection slot is taken; retry shortly"})


class _Listener(socketserver.BaseServer):
    """What the handler needs from its server (set by :class:`ApiServer` before serving)."""

    app: Api
    limits: ApiLimits
    stopping: threading.Event
    pool: ConnectionPool
    closer: Closer

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.pool.submit(request, client_address):
            body, headers = _BUSY.encode()
            lines = ["HTTP/1.1 503 Service Unavailable", f"Content-Length: {len(body)}"]
            lines += [f"{k}: {v}" for k, v in headers] + ["Connection: close"]
            self.closer.close(request, ("\r\n".join(lines) + "\r\n\r\n").encode() + body)

    def serve_connection(self, request: socket.socket, client_address: Any) -> None:
        """Run on a pool thread: serve one connection to its end, then close it."""
        linger = False
        try:
            handler = _Handler(request, client_address, self)
            linger = handler.linger
        except Exception:  # noqa: BLE001 - one broken connection must not end the thread
            _log.exception("connection from %s failed", client_address or "unix socket")
        if linger:
            self.closer.close(request)
        else:
            self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        _log.exception("accepting a connection from %s failed", client_address or "unix socket")


class _TcpListener(_Listener, socketserver.TCPServer):
    allow_reuse_address = True
    request_queue_size = 128


class _Tcp6Listener(_TcpListener):
    address_family = socket.AF_INET6


class _UnixListener(_Listener, socketserver.UnixStreamServer):
    request_queue_size = 128


def _prepare_unix_path(path: Path) -> None:
    """Make room for a socket at ``path``: remove a stale socket, refuse anything else."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise UsageError(f"{path} exists and is not a socket; choose another path")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError:  # nobody listens: a socket left by a process that ended
        os.unlink(path)
        return
    finally:
        probe.close()
    raise TransportError(f"another process is serving on {path}")


class ApiServer:
    """The local API on one address. ``start`` binds and serves in background threads."""

    def __init__(self, address: Address, app: Api, limits: ApiLimits = DEFAULT_API_LIMITS) -> None:
        self.requested = address
        self.app = app
        self.limits = limits
        self._server: Optional[_Listener] = None
        self._thread: Optional[threading.Thread] = None
        self.address: Address = address
        """The address served; a TCP port 0 becomes the port the system chose once started."""

    def _bind(self) -> _Listener:
        address = self.requested
        try:
            if isinstance(address, UnixAddress):
                _prepare_unix_path(address.path)
                listener: _Listener = _UnixListener(str(address.path), _Handler)
                os.chmod(address.path, 0o660)
                return listener
            cls = _Tcp6Listener if ":" in address.host else _TcpListener
            listener = cls((address.host, address.port), _Handler)
        except OSError as e:
            raise TransportError(f"cannot listen on {address}: {e.strerror or e}") from e
        host, port = listener.server_address[:2]
        self.address = TcpAddress(str(host), int(port))
        return listener

    def start(self) -> None:
        """Bind and start serving; raises TransportError when the address cannot be used."""
        if self._server is not None:
            raise RuntimeError("the server is already started")
        server = self._bind()
        server.app = self.app
        server.limits = self.limits
        server.stopping = threading.Event()
        tag = "api-unix" if isinstance(self.address, UnixAddress) else f"api-{self.address.port}"
        server.closer = Closer(f"{tag}-closer")
        server.pool = ConnectionPool(self.limits.max_connections, server.serve_connection, tag)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, args=(POLL_S,), name=f"{tag}-accept", daemon=True
        )
        self._thread.start()
        _log.info("local API listening on %s", self.address)

    def stop(self, timeout_s: Optional[float] = None) -> None:
        """Stop accepting, let requests in progress finish (at most ``timeout_s``), close."""
        server = self._server
        if server is None:
            return
        self._server = None
        server.stopping.set()
        server.shutdown()
        server.server_close()
        if isinstance(self.address, UnixAddress):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.address.path)
        wait = self.limits.request_read_s + self.limits.write_timeout_s
        if not server.pool.stop(wait if timeout_s is None else timeout_s):
            _log.warning("some connections on %s were still busy when it stopped", self.address)
        server.closer.stop()
        _log.info("local API on %s stopped", self.address)
