"""An existing client of the protocol, unchanged: NVIDIA's ``tritonclient.http`` against the agent.

Its defaults send and receive binary tensor data; the JSON forms are checked too.
"""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.runtime.api.conftest import IRIS_ROW


@pytest.fixture
def triton_client(agent):
    client = triton.InferenceServerClient(str(agent.tcp), connection_timeout=10.0)
    yield client
    client.close()


def test_health_and_metadata(triton_client):
    assert triton_client.is_server_live()
    assert triton_client.is_server_ready()
    assert triton_client.is_model_ready("iris")
    assert triton_client.is_model_ready("iris", model_version="1.0.0")
    assert not triton_client.is_model_ready("iris", model_version="9.9.9")
    assert not triton_client.is_model_ready("nope")
    server = triton_client.get_server_metadata()
    assert server["name"] == "edgeship"
    model = triton_client.get_model_metadata("iris")
    assert model["inputs"][0] == {"name": "input", "datatype": "FP32", "shape": [-1, 4]}


@pytest.mark.parametrize("binary", [True, False])
def test_infer(triton_client, iris, binary):
    rows = np.load(iris["rows"])
    tensor = triton.InferInput("input", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows, binary_data=binary)
    wanted = [
        triton.InferRequestedOutput("probabilities", binary_data=binary),
        triton.InferRequestedOutput("label", binary_data=binary),
    ]
    result = triton_client.infer("iris", [tensor], outputs=wanted, request_id="t-1")
    probabilities = result.as_numpy("probabilities")
    assert probabilities.dtype == np.float32 and probabilities.shape == (5, 3)
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    assert result.as_numpy("label").tolist() == [0, 0, 0, 0, 0]
    response = result.get_response()
    assert response["id"] == "t-1" and response["parameters"]["prediction_id"]


def test_infer_with_every_default(triton_client):
    tensor = triton.InferInput("input", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.asarray([IRIS_ROW], dtype=np.float32))
    result = triton_client.infer("iris", [tensor])
    assert result.as_numpy("label").tolist() == [0]


def test_bytes_tensors(triton_client):
    tensor = triton.InferInput("text", [2], "BYTES")
    tensor.set_data_from_numpy(np.asarray(["héllo".encode(), b"x"], dtype=np.object_))
    result = triton_client.infer("echo", [tensor])
    assert result.as_numpy("echo").tolist() == ["héllo".encode(), b"x"]
    assert result.as_numpy("n").tolist() == [2]


def test_errors_reach_the_client_as_messages(triton_client):
    tensor = triton.InferInput("input", [1, 3], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 3), dtype=np.float32))
    with pytest.raises(InferenceServerException, match="dimension 1 must be 4"):
        triton_client.infer("iris", [tensor])
    with pytest.raises(InferenceServerException, match="no model called 'nope'"):
        triton_client.get_model_metadata("nope")
