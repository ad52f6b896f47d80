"""The HTTP server's own limits, in-process with small settings: overload, graceful stop,
socket files. Real sockets, a real store and real models."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from runtime.api.client import ApiClient
from runtime.api.routes import Api
from runtime.api.server import ApiServer
from runtime.api.settings import ApiLimits, TcpAddress, UnixAddress, parse_address
from runtime.errors import TransportError, UsageError
from runtime.install import install_bundle
from runtime.registry import ModelRegistry
from runtime.service import InferenceService
from tests.runtime.api.agentproc import short_socket_dir
from tests.runtime.api.conftest import IRIS_ROW
from tests.runtime.api.rawhttp import connect, read_answer, request_bytes
from tests.runtime.api.test_endpoints import infer_doc


@pytest.fixture
def api(device, build_bundle):
    install_bundle(device, build_bundle("1.0.0", 10))
    return Api(InferenceService(ModelRegistry(device)), ApiLimits(max_model_calls=1))


@pytest.fixture
def serve(api):
    started = []

    def start(address=None, **limits):
        address = address or TcpAddress("127.0.0.1", 0)
        server = ApiServer(address, api, ApiLimits(**limits))
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop(timeout_s=5)


@pytest.fixture
def socket_dir():
    folder = short_socket_dir()
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def infer_once(address) -> dict:
    with ApiClient(address) as client:
        return client.infer("iris", {"input": np.asarray([IRIS_ROW], np.float32)})


def test_full_pool_answers_503_at_once_and_recovers(serve):
    server = serve(max_connections=2, keepalive_idle_s=60)
    held = [ApiClient(server.address) for _ in range(2)]
    for client in held:  # each keep-alive connection now holds a pool thread
        assert client.call("GET", "/v2/health/live") == {"live": True}
    with connect(server.address) as sock:
        sock.sendall(request_bytes("GET", "/v2/health/live"))
        answer = read_answer(sock)
        assert sock.recv(1) == b""  # and closed
    assert answer.status == 503 and answer.doc["error"].startswith("busy")
    held[0].close()  # frees one thread
    for _ in range(200):
        with connect(server.address) as sock:
            sock.sendall(request_bytes("GET", "/v2/health/live"))
            if read_answer(sock).status == 200:
                break
        time.sleep(0.05)
    else:
        pytest.fail("the freed connection thread never served again")
    held[1].close()


def test_model_calls_beyond_the_limit_get_503(serve, api):
    server = serve(queue_wait_s=0.05)
    assert api._slots.acquire(timeout=1)  # another request is running the model
    try:
        with ApiClient(server.address) as client:
            status, _, body = client.request("POST", "/v2/models/iris/infer", infer_body())
            assert client.call("GET", "/v2/models/iris")["name"] == "iris"  # no slot needed
    finally:
        api._slots.release()
    assert status == 503 and b"busy" in body
    assert infer_once(server.address)["outputs"]


def infer_body() -> bytes:
    return json.dumps(infer_doc([IRIS_ROW])).encode()


def test_stop_finishes_the_request_in_progress(serve):
    server = serve()
    body = infer_body()
    sock = connect(server.address)
    sock.sendall(request_bytes("POST", "/v2/models/iris/infer", body)[: -len(body) // 2])
    time.sleep(0.2)  # the server has read the head and waits for the body
    stopper = threading.Thread(target=server.stop)
    stopper.start()
    time.sleep(0.3)
    sock.sendall(body[-len(body) // 2 :])
    answer = read_answer(sock)
    stopper.join(10)
    sock.close()
    assert not stopper.is_alive()
    assert answer.status == 200 and answer.headers["connection"] == "close"
    with pytest.raises(OSError):
        connect(server.address, timeout_s=2)


def test_unix_socket_replaces_a_stale_one_and_is_removed_at_stop(serve, socket_dir):
    path = socket_dir / "api.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # a socket file nobody listens on, as a killed agent leaves it
    server = serve(UnixAddress(path))
    assert (path.stat().st_mode & 0o777) == 0o660
    assert infer_once(server.address)["model_name"] == "iris"
    with pytest.raises(TransportError, match="another process is serving"):
        ApiServer(UnixAddress(path), server.app).start()
    server.stop()
    assert not path.exists()


def test_unix_socket_never_replaces_a_file(serve, socket_dir):
    path = socket_dir / "api.sock"
    path.write_text("precious")
    with pytest.raises(UsageError, match="not a socket"):
        serve(UnixAddress(path))
    assert path.read_text() == "precious"


def test_a_port_in_use_is_a_transport_error(serve, api):
    server = serve()
    with pytest.raises(TransportError, match="cannot listen on"):
        ApiServer(server.address, api).start()


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("127.0.0.1:8080", TcpAddress("127.0.0.1", 8080)),
        ("8080", TcpAddress("127.0.0.1", 8080)),
        (":9000", TcpAddress("127.0.0.1", 9000)),
        ("[::1]:8080", TcpAddress("::1", 8080)),
        ("localhost:0", TcpAddress("localhost", 0)),
        ("unix:/run/edgeship/api.sock", UnixAddress(Path("/run/edgeship/api.sock"))),
    ],
)
def test_parse_address(text, address):
    assert parse_address(text) == address


@pytest.mark.parametrize(
    "text", ["", "host", "host:99999", "unix:", "a b:80", "unix:/" + "x" * 120]
)
def test_parse_address_refuses(text):
    with pytest.raises(UsageError):
        parse_address(text)
