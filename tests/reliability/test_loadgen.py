"""The load generator counts what goes wrong: run against a small stdlib HTTP server that
answers some requests 503, some with wrong outputs, drops some connections without answering and
closes others after answering, it must report each kind, and account for every request sent."""

from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import pytest

from tests.reliability.loadgen import LoadPlan, percentile, run_load


class _Flaky(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    received = 0
    lock = threading.Lock()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        with _Flaky.lock:
            _Flaky.received += 1
            n = _Flaky.received
        if n > 1 and n % 11 == 0:  # drop the connection without an answer
            self.close_connection = True
            return
        status, outputs = 200, [1]
        if n > 1 and n % 5 == 0:
            status = 503
        elif n > 1 and n % 7 == 0:
            outputs = [2]
        body = json.dumps({"outputs": outputs}).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        if n % 13 == 0:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def flaky() -> Iterator[str]:
    _Flaky.received = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def test_every_kind_of_failure_is_counted(flaky: str) -> None:
    plan = LoadPlan((flaky,), "/infer", b'{"x": 1}', seconds=1.0, processes=1, connections=2)
    report = run_load(plan, server_pid=os.getpid())

    assert report.errors.get("status 503", 0) > 0
    assert report.errors.get("wrong answer", 0) > 0
    assert report.errors.get("connection: Broken", 0) > 0
    assert report.reconnects > 0
    connection_errors = report.errors["connection: Broken"]
    assert report.sent == report.answered + connection_errors
    assert (
        report.answered == report.ok + report.errors["status 503"] + report.errors["wrong answer"]
    )
    assert _Flaky.received == report.sent + 1  # and the reference request
    assert len(report.latencies_s) == report.answered
    assert len(report.samples) >= 2 and all(rss > 0 for _, rss, _ in report.samples)


def test_refuses_a_server_whose_first_answer_is_not_a_prediction(flaky: str) -> None:
    _Flaky.received = 4  # the next request is the fifth: answered 503
    with pytest.raises(RuntimeError, match="answered 503"):
        run_load(LoadPlan((flaky,), "/infer", b"{}", seconds=1.0))


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [([], 50, 0.0), ([3.0], 99, 3.0), ([4.0, 1.0, 3.0, 2.0], 50, 2.0), ([*range(100)], 99, 98)],
)
def test_percentile_is_nearest_rank(values: list[float], q: float, expected: float) -> None:
    assert percentile(values, q) == expected
