"""Hostile and broken requests against the real agent: each gets its clear error in the protocol's
shape, and the agent keeps serving after every one."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from runtime.api.settings import DEFAULT_API_LIMITS
from tests.runtime.api.conftest import IRIS_ROW
from tests.runtime.api.rawhttp import connect, exchange, read_answer, request_bytes

INFER = "/v2/models/iris/infer"


def tensor(**fields):
    base = {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": IRIS_ROW}
    return json.dumps({"inputs": [{**base, **fields}]}).encode()


def binary(shape: list, size: int, raw: bytes, json_length: int | None = None) -> bytes:
    """An infer request with binary tensor data: ``size`` announced, ``raw`` sent."""
    head = {"inputs": [{"name": "input", "shape": shape, "datatype": "FP32",
                        "parameters": {"binary_data_size": size}}]}  # fmt: skip
    text = json.dumps(head).encode()
    length = len(text) if json_length is None else json_length
    headers = {"Inference-Header-Content-Length": str(length)}
    return request_bytes("POST", INFER, text + raw, headers)


def post(body: bytes, path: str = INFER, **headers: str) -> bytes:
    return request_bytes("POST", path, body, headers)


BIG = DEFAULT_API_LIMITS.max_body_bytes + 1
TOO_MANY_ROWS = np.zeros((100_001, 4), dtype="<f4").tobytes()

CASES = [
    # (id, request bytes, status, words in the error)
    ("malformed-json", post(b'{"inputs": [}'), 400, "not valid JSON"),
    ("not-utf8", post(b'{"inputs": "\xff\xfe"}'), 400, "not valid JSON"),
    ("json-array", post(b"[1, 2, 3]"), 400, "must be a JSON object"),
    ("empty-body", post(b""), 400, "not valid JSON"),
    ("no-inputs", post(b"{}"), 400, '"inputs"'),
    ("inputs-not-list", post(b'{"inputs": {"input": [1]}}'), 400, '"inputs"'),
    ("tensor-not-object", post(b'{"inputs": [7]}'), 400, "must be a JSON object"),
    ("no-name", post(b'{"inputs": [{"shape": [1], "datatype": "FP32", "data": [1]}]}'), 400,
     "needs a name"),
    ("wrong-shape", post(tensor(shape=[1, 3], data=[1, 2, 3])), 400, "dimension 1 must be 4"),
    ("wrong-rank", post(tensor(shape=[1, 1, 4])), 400, "expected rank 2"),
    ("shape-data-mismatch", post(tensor(shape=[2, 4])), 400, "needs 8 elements, data has 4"),
    ("negative-dim", post(tensor(shape=[-1, 4])), 400, "non-negative"),
    ("huge-shape", post(tensor(shape=[10**9, 10**9])), 400, "more elements than the body"),
    ("strings-as-fp32", post(tensor(data=["a", "b", "c", "d"])), 400, "must be numbers"),
    ("unknown-datatype", post(tensor(datatype="FLOAT")), 400, "unknown datatype"),
    ("bytes-into-fp32", post(tensor(datatype="BYTES", data=["1", "2", "3", "4"])), 400,
     "expected float32"),
    ("float-as-int", post(tensor(datatype="INT64", data=[1.5, 2, 3, 4])), 400, "integers"),
    ("int8-overflow", post(tensor(datatype="INT8", data=[1000, 2, 3, 4])), 400, "does not fit"),
    ("nan", post(b'{"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", '
                 b'"data": [NaN, 1, 2, 3]}]}'), 400, "NaN or infinity"),
    ("overflow-to-inf", post(tensor(data=[1e300, 1, 2, 3])), 400, "NaN or infinity"),
    ("ragged", post(tensor(shape=[2, 4], data=[[1, 2, 3, 4], [1, 2]])), 400, "rectangular"),
    ("data-not-list", post(tensor(data=5)), 400, "data must be a list"),
    ("null-element", post(tensor(data=[1, None, 2, 3])), 400, "must be numbers"),
    ("deep-nesting", post(b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"), 400,
     "not valid JSON"),
    ("unknown-input", post(tensor(name="pixels")), 400, "unknown input(s) pixels"),
    ("duplicate-input", post(json.dumps({"inputs": [json.loads(tensor())["inputs"][0]] * 2})
                             .encode()), 400, "given twice"),
    ("bad-id", post(json.dumps({"id": 7, **json.loads(tensor())}).encode()), 400, "id must be"),
    ("unknown-output", post(json.dumps({**json.loads(tensor()), "outputs": [{"name": "x"}]})
                            .encode()), 400, "unknown output x"),
    ("too-many-rows", binary([100_001, 4], len(TOO_MANY_ROWS), TOO_MANY_ROWS), 400,
     "batch of 100001"),
    ("binary-short", binary([1, 4], 16, b"\0" * 8), 400, "binary data ends"),
    ("binary-extra", binary([1, 4], 16, b"\0" * 20), 400, "belong to no input"),
    ("binary-odd-size", binary([1, 4], 15, b"\0" * 15), 400, "whole number"),
    ("binary-header-beyond-body", binary([1, 4], 16, b"\0" * 16, json_length=10**6), 400,
     "Inference-Header-Content-Length"),
    ("gzip", post(tensor(), **{"Content-Encoding": "gzip"}), 415, "not supported"),
    ("unknown-model", post(tensor(), "/v2/models/nope/infer"), 404, "no model called 'nope'"),
    ("bad-model-name", post(tensor(), "/v2/models/..%2f..%2fetc/infer"), 404, "not a valid"),
    ("unknown-route", request_bytes("GET", "/v1/models"), 404, "no such endpoint"),
    ("wrong-method", request_bytes("PUT", INFER, b"{}"), 405, "use POST"),
    ("head-method", request_bytes("HEAD", "/v2"), 405, None),
    ("no-content-length", post(tensor(), **{"Content-Length": None}), 411, "Content-Length"),
    ("chunked", b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n4\r\n{}{}\r\n0\r\n\r\n", 411,
     "Transfer-Encoding"),
    ("bad-content-length", post(b"{}", **{"Content-Length": "12abc"}), 400, "Content-Length"),
    ("huge-body-announced", request_bytes("POST", INFER, headers={"Content-Length": str(BIG)}),
     413, "the limit is"),
    ("huge-body-expect-100", request_bytes("POST", INFER, headers={
        "Content-Length": str(100 * BIG), "Expect": "100-continue"}), 413, "the limit is"),
    ("huge-header", request_bytes("GET", "/v2", headers={"X-Pad": "a" * 40_000}), 431,
     "exceed"),
    ("too-many-headers", request_bytes("GET", "/v2", headers={f"X-{i}": "1" for i in range(150)}),
     431, None),
    ("huge-request-line", b"GET /" + b"a" * 40_000 + b" HTTP/1.1\r\n\r\n", 414, "request line"),
    ("garbage-request-line", b"HELLO\r\n\r\n", 400, None),
    ("http-2-version", b"GET /v2 HTTP/2.0\r\nHost: x\r\n\r\n", 505, None),
    ("feedback-not-json", post(b"label=1", "/v2/models/iris/feedback"), 400, "not valid JSON"),
    ("feedback-no-id", post(b'{"label": 1}', "/v2/models/iris/feedback"), 400, '"id"'),
    ("feedback-both", post(b'{"id": "x", "label": 1, "labels": [1]}', "/v2/models/iris/feedback"),
     400, "one of"),
    ("feedback-nested", post(b'{"id": "x", "labels": [[1]]}', "/v2/models/iris/feedback"), 400,
     "numbers or strings"),
    ("explain-bad-shape", post(tensor(shape=[1, 3], data=[1, 2, 3]), "/v2/models/iris/explain"),
     400, "dimension 1 must be 4"),
]  # fmt: skip


def still_serving(agent) -> None:
    with agent.client("tcp") as client:
        answer = client.infer("iris", {"input": np.asarray([IRIS_ROW], dtype=np.float32)})
    assert answer["outputs"][0]["data"] == [0]


@pytest.mark.parametrize(("data", "status", "words"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])  # fmt: skip
@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_bad_request_gets_a_clear_error(agent, transport, data, status, words):
    answer = exchange(agent.addresses[transport], data)
    assert answer.status == status, answer.body[:300]
    if answer.body:  # HEAD answers carry no body
        error = answer.doc["error"]
        assert isinstance(error, str) and error
        if words is not None:
            assert words in error
    assert answer.headers["content-type"] == "application/json" or not answer.body
    still_serving(agent)


def test_a_refused_request_keeps_the_connection_in_step(agent):
    with agent.client("tcp") as client:
        status, _, body = client.request("POST", INFER, b'{"inputs": [}')
        connection = client._connection
        assert status == 400 and "not valid JSON" in json.loads(body)["error"]
        status, _, body = client.request("POST", INFER, tensor())
        assert status == 200 and json.loads(body)["outputs"]
        assert client._connection is connection  # the same keep-alive connection


def test_slow_clients_get_408_while_others_are_served(agent):
    limit = DEFAULT_API_LIMITS.request_read_s
    slow = [connect(agent.tcp, timeout_s=limit + 10) for _ in range(3)]
    trickle = request_bytes("POST", INFER, tensor())
    answers: list = []

    def drip(sock, index) -> None:
        # one byte per second: the request would take minutes to arrive
        try:
            for byte in trickle:
                sock.sendall(bytes([byte]))
                time.sleep(1.0 if index else 0.5)
        except OSError:  # the server closed the connection: what we wait for
            pass

    threads = [threading.Thread(target=drip, args=(s, i), daemon=True) for i, s in enumerate(slow)]
    for thread in threads:
        thread.start()
    served = 0
    with agent.client("tcp") as client:
        end = time.monotonic() + limit / 2
        while time.monotonic() < end:
            assert client.infer("iris", {"input": np.asarray([IRIS_ROW], np.float32)})["outputs"]
            served += 1
    for sock in slow:
        answers.append(read_answer(sock))
        sock.close()
    assert served > 0
    assert [a.status for a in answers] == [408, 408, 408]
    assert "did not arrive within" in answers[0].doc["error"]
    still_serving(agent)


def test_idle_connection_is_closed_quietly(agent):
    with connect(agent.tcp, timeout_s=DEFAULT_API_LIMITS.keepalive_idle_s + 10) as sock:
        assert sock.recv(1024) == b""  # closed by the server, no response for no request
    still_serving(agent)
