"""The load generator's client process: keep-alive connections that send one request over and
over until a deadline, and count every answer.

Standard library only, and run as a script (``python loadclient.py worker``, started by
``loadgen.run_load``): the plan (JSON) arrives on stdin, the process prints ``ready``, starts on
``go``, and prints its results (JSON) when the run ends. Each connection is one thread doing one
HTTP/1.1 exchange at a time on a raw socket, which keeps the client's cost per request small.
"""

from __future__ import annotations

import base64
import json
import socket
import sys
import threading
import time
from array import array
from typing import Any, Optional

CONNECT_BACKOFF_S = 0.05
"""Pause after a failed connect, so a refused address is not hammered in a tight loop."""


class Broken(Exception):
    """The server closed the connection or answered something that is not HTTP/1.1."""


def connect(address: str, timeout_s: float) -> socket.socket:
    """A connected socket to ``HOST:PORT`` or ``unix:PATH``; raises OSError."""
    if address.startswith("unix:"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target: Any = address[len("unix:") :]
    else:
        host, _, port = address.rpartition(":")
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        target = (host.strip("[]"), int(port))
    sock.settimeout(timeout_s)
    try:
        sock.connect(target)
    except OSError:
        sock.close()
        raise
    return sock


def request_bytes(path: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("ascii") + body


def exchange(sock: socket.socket, request: bytes) -> tuple[int, bytes, bool]:
    """Send ``request``, read one response: (status, body, whether the server closes).

    Raises Broken, socket.timeout (TimeoutError) or another OSError.
    """
    sock.sendall(request)
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            raise Broken("closed before answering")
        data += chunk
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            break
        if len(data) > 65536:
            raise Broken("response head too long")
    lines = data[:end].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise Broken("not an HTTP/1.x status line")
    length: Optional[int] = None
    close = False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "connection":
            close = value.strip().lower() == "close"
    if length is None:
        raise Broken("no Content-Length")
    body = data[end + 4 :]
    while len(body) < length:
        chunk = sock.recv(max(65536, length - len(body)))
        if not chunk:
            raise Broken("closed in the middle of the body")
        body += chunk
    if len(body) > length:
        raise Broken("more bytes than Content-Length")
    return int(parts[1]), body, close


class _Tally:
    """One client thread's counts (merged per process once the threads end)."""

    def __init__(self) -> None:
        self.sent = self.answered = self.ok = self.reconnects = 0
        self.errors: dict[str, int] = {}
        self.latencies = array("d")
        self.per_second: list[int] = []

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def done(self, second: int) -> None:
        while len(self.per_second) <= second:
            self.per_second.append(0)
        self.per_second[second] += 1


def _drive(
    address: str, request: bytes, expected: Any, started: float, plan: dict[str, Any], tally: _Tally
) -> None:
    """Send ``request`` on one keep-alive connection until the run's end, counting everything."""
    deadline = started + plan["seconds"]
    timeout_s = plan["timeout_s"]
    clock = time.perf_counter
    sock: Optional[socket.socket] = None
    while time.monotonic() < deadline:
        if sock is None:
            try:
                sock = connect(address, timeout_s)
            except OSError as e:
                tally.error(f"connect: {type(e).__name__}")
                time.sleep(CONNECT_BACKOFF_S)
                continue
        tally.sent += 1
        begin = clock()
        try:
            status, body, close = exchange(sock, request)
        except (OSError, Broken, ValueError) as e:
            kind = "timeout" if isinstance(e, socket.timeout) else type(e).__name__
            tally.error(f"connection: {kind}")
            sock.close()
            sock = None
            continue
        tally.latencies.append(clock() - begin)
        tally.answered += 1
        tally.done(int(time.monotonic() - started))
        if status != 200:
            tally.error(f"status {status}")
        elif not _same_outputs(body, expected):
            tally.error("wrong answer")
        else:
            tally.ok += 1
        if close:
            sock.close()
            sock = None
            tally.reconnects += 1
    if sock is not None:
        sock.close()


def _same_outputs(body: bytes, expected: Any) -> bool:
    try:
        doc = json.loads(body)
    except ValueError:
        return False
    return isinstance(doc, dict) and doc.get("outputs") == expected


def worker_main() -> int:
    """A client process: the plan (JSON) on stdin, ``ready``, wait for ``go``, the results."""
    plan = json.loads(sys.stdin.readline())
    request = request_bytes(plan["path"], plan["body"].encode("utf-8"))
    tallies = [_Tally() for _ in range(plan["connections"])]
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 2
    started = time.monotonic()
    cpu = time.process_time()
    threads = [
        threading.Thread(
            target=_drive,
            args=(plan["address"], request, plan["expected"], started, plan, tally),
            daemon=True,
        )
        for tally in tallies
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    latencies = array("d")
    errors: dict[str, int] = {}
    per_second: list[int] = []
    for tally in tallies:
        latencies.extend(tally.latencies)
        for kind, n in tally.errors.items():
            errors[kind] = errors.get(kind, 0) + n
        for second, n in enumerate(tally.per_second):
            if second >= len(per_second):
                per_second.append(0)
            per_second[second] += n
    result = {
        "sent": sum(t.sent for t in tallies),
        "answered": sum(t.answered for t in tallies),
        "ok": sum(t.ok for t in tallies),
        "reconnects": sum(t.reconnects for t in tallies),
        "errors": errors,
        "per_second": per_second,
        "latencies": base64.b64encode(latencies.tobytes()).decode("ascii"),
        "cpu_s": time.process_time() - cpu,
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    if sys.argv[1:] != ["worker"]:
        sys.exit("usage: python loadclient.py worker  (started by run_load)")
    sys.exit(worker_main())
