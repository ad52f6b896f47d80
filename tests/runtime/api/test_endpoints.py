"""Every endpoint of the local API against the real agent process, over TCP and the Unix socket."""

from __future__ import annotations

import json

import numpy as np
import pytest

from runtime import __version__
from runtime.errors import ApiError
from tests.runtime.api.conftest import IRIS_ROW


def infer_doc(rows, **extra):
    data = np.asarray(rows, dtype=np.float32)
    return {
        "inputs": [{"name": "input", "shape": list(data.shape), "datatype": "FP32", "data": rows}],
        **extra,
    }


def test_server_metadata(client):
    doc = client.call("GET", "/v2")
    assert doc["name"] == "edgeship" and doc["version"] == __version__
    assert {"edgeship_explain", "edgeship_feedback", "binary_tensor_data"} <= set(doc["extensions"])


def test_health(client):
    assert client.call("GET", "/v2/health/live") == {"live": True}
    assert client.call("GET", "/v2/health/ready") == {"ready": True}


def test_model_metadata_in_protocol_types(client):
    doc = client.call("GET", "/v2/models/iris")
    assert doc["name"] == "iris" and doc["versions"] == ["1.0.0"]
    assert doc["platform"] == "onnxruntime_onnx"
    assert doc["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert doc["outputs"] == [
        {"name": "label", "datatype": "INT64", "shape": [-1]},
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]},
    ]
    assert doc["parameters"]["sequence"] == 10
    assert json.loads(doc["parameters"]["labels"]) == [0, 1, 2]
    echo = client.call("GET", "/v2/models/echo")
    assert echo["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]


def test_model_ready_and_version_paths(client):
    assert client.call("GET", "/v2/models/iris/ready") == {"name": "iris", "ready": True}
    for version in ("1.0.0", "10"):  # the semantic version or the sequence
        path = f"/v2/models/iris/versions/{version}"
        assert client.call("GET", path)["name"] == "iris"
        assert client.call("GET", f"{path}/ready")["ready"] is True
        answer = client.call("POST", f"{path}/infer", infer_doc([IRIS_ROW]))
        assert answer["model_version"] == "1.0.0"
    with pytest.raises(ApiError) as e:
        client.call("GET", "/v2/models/iris/versions/2.0.0/ready")
    assert e.value.status == 404 and "1.0.0" in str(e.value)


@pytest.mark.parametrize("nested", [True, False])
def test_infer_flat_or_nested(client, iris, nested):
    rows = np.load(iris["rows"])
    data = rows.tolist() if nested else rows.reshape(-1).tolist()
    doc = {"inputs": [{"name": "input", "shape": [5, 4], "datatype": "FP32", "data": data}]}
    answer = client.call("POST", "/v2/models/iris/infer", doc)
    assert answer["model_name"] == "iris" and answer["model_version"] == "1.0.0"
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert outputs["label"]["datatype"] == "INT64" and outputs["label"]["shape"] == [5]
    assert outputs["label"]["data"] == [0, 0, 0, 0, 0]
    probabilities = outputs["probabilities"]
    assert probabilities["datatype"] == "FP32" and probabilities["shape"] == [5, 3]
    assert np.allclose(np.asarray(probabilities["data"]).reshape(5, 3).sum(axis=1), 1, atol=1e-5)
    assert answer["parameters"]["prediction_id"]
    assert answer["parameters"]["out_of_range"] == 0
    assert "id" not in answer


def test_infer_output_filter_and_id_echo(client):
    doc = infer_doc([IRIS_ROW], id="req-7", outputs=[{"name": "probabilities"}])
    answer = client.call("POST", "/v2/models/iris/infer", doc)
    assert answer["id"] == "req-7"
    assert [o["name"] for o in answer["outputs"]] == ["probabilities"]


def test_infer_accepts_fp64_and_int_data_for_an_fp32_model(client):
    doc = infer_doc([IRIS_ROW])
    doc["inputs"][0].update(datatype="INT64", data=[5, 3, 1, 0])
    assert client.call("POST", "/v2/models/iris/infer", doc)["outputs"]
    doc["inputs"][0].update(datatype="FP64", data=IRIS_ROW)
    assert client.call("POST", "/v2/models/iris/infer", doc)["outputs"]


def test_infer_flags_out_of_range_values(client):
    answer = client.call("POST", "/v2/models/iris/infer", infer_doc([[50.0, 3.5, 1.4, 0.2]]))
    params = answer["parameters"]
    assert params["out_of_range"] == 1
    assert [k for k in params if k.startswith("out_of_range.")] == ["out_of_range.input[0]"]


def test_infer_bytes_tensors(client):
    doc = {"inputs": [{"name": "text", "shape": [3], "datatype": "BYTES", "data": ["hé", "b", ""]}]}
    answer = client.call("POST", "/v2/models/echo/infer", doc)
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert outputs["echo"] == {"name": "echo", "datatype": "BYTES", "shape": [3],
                               "data": ["hé", "b", ""]}  # fmt: skip
    assert outputs["n"]["data"] == [3]


def test_infer_binary_tensor_data(client):
    rows = np.asarray([IRIS_ROW, [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)
    raw = rows.astype("<f4").tobytes()
    doc = infer_doc(rows.tolist(), outputs=[{"name": "label", "parameters": {"binary_data": True}}])
    del doc["inputs"][0]["data"]
    doc["inputs"][0]["parameters"] = {"binary_data_size": len(raw)}
    head = json.dumps(doc).encode()
    connection = client._connect()
    connection.request(
        "POST",
        "/v2/models/iris/infer",
        body=head + raw,
        headers={"Inference-Header-Content-Length": str(len(head))},
    )
    response = connection.getresponse()
    body = response.read()
    assert response.status == 200
    json_length = int(response.getheader("Inference-Header-Content-Length"))
    answer = json.loads(body[:json_length])
    (label,) = answer["outputs"]
    assert label["parameters"]["binary_data_size"] == 16
    assert np.frombuffer(body[json_length:], dtype="<i8").tolist() == [0, 2]


def test_explain(client):
    answer = client.call("POST", "/v2/models/iris/explain", infer_doc([IRIS_ROW], id="e1"))
    assert answer["id"] == "e1" and answer["model_version"] == "1.0.0"
    (row,) = answer["explanation"]["rows"]
    assert set(row["attributions"]) == set(answer["explanation"]["features"])
    assert len(row["attributions"]) == 4


def test_feedback_for_a_prediction(client):
    answer = client.call("POST", "/v2/models/iris/infer", infer_doc([IRIS_ROW, IRIS_ROW]))
    ident = answer["parameters"]["prediction_id"]
    done = client.call("POST", "/v2/models/iris/feedback", {"id": ident, "labels": [0, 1]})
    assert done == {"model_name": "iris", "model_version": "1.0.0", "id": ident, "accepted": 2}
    one = client.call("POST", "/v2/models/iris/infer", infer_doc([IRIS_ROW]))
    ident = one["parameters"]["prediction_id"]
    done_one = client.call("POST", "/v2/models/iris/feedback", {"id": ident, "label": 0})
    assert done_one["accepted"] == 1
    with pytest.raises(ApiError) as e:
        client.call("POST", "/v2/models/iris/feedback", {"id": "nope-1", "label": 0})
    assert e.value.status == 400 and "unknown prediction id" in str(e.value)
    with pytest.raises(ApiError) as e:  # two rows predicted, one label given
        client.call("POST", "/v2/models/iris/feedback", {"id": done["id"], "label": 0})
    assert e.value.status == 400


def test_errors_have_the_protocol_shape(client):
    status, headers, body = client.request("GET", "/v2/models/nope")
    assert status == 404 and json.loads(body) == {
        "error": "no model called 'nope' is installed (installed: echo, iris)"
    }
    assert headers["content-type"] == "application/json"
    status, headers, body = client.request("DELETE", "/v2/models/iris")
    assert status == 405 and headers["allow"] == "GET" and "error" in json.loads(body)
    status, _, body = client.request("GET", "/v2/models/iris/infer")
    assert status == 405
    status, _, body = client.request("GET", "/v3/anything")
    assert status == 404 and "no such endpoint" in json.loads(body)["error"]
    status, _, body = client.request("GET", "/v2/models/..%2F..%2Fetc")
    assert status == 404


def test_keep_alive_serves_many_requests_on_one_connection(client):
    for _ in range(20):
        client.call("POST", "/v2/models/iris/infer", infer_doc([IRIS_ROW]))
    connection = client._connection
    for _ in range(5):
        client.call("GET", "/v2/health/live")
    assert client._connection is connection  # never reconnected
