"""Property tests: arbitrary JSON documents and byte strings thrown at the agent's infer, explain
and feedback endpoints, and arbitrary feeds at ``LoadedModel.predict``.

No crash, no hang (each request has a client deadline; a hang fails it), and every refusal is a
typed error: a 4xx answer with ``{"error": "..."}`` from the API, an InputError from predict.
"""

from __future__ import annotations

import json
import math

import hypothesis.extra.numpy as hnp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.api.tensors import DATATYPES
from runtime.errors import InputError
from runtime.model import LoadedModel
from runtime.store import Store

REQUEST_DEADLINE_S = 20.0

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=30,
)
numbers = st.floats(min_value=-10, max_value=10) | st.integers(min_value=-3, max_value=300)
tensors = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["input", "text", "x"]) | st.text(max_size=6),
        "shape": st.lists(st.integers(min_value=-2, max_value=6), max_size=4) | json_values,
        "datatype": st.sampled_from((*DATATYPES, "FLOAT")) | json_values,
        "data": st.lists(numbers, max_size=24)
        | st.lists(st.lists(numbers, min_size=4, max_size=4), max_size=4)
        | json_values,
    },
    optional={"parameters": st.fixed_dictionaries({}, optional={
        "binary_data_size": st.integers(min_value=-1, max_value=64) | json_values})},
)  # fmt: skip
documents = st.fixed_dictionaries(
    {"inputs": st.lists(tensors, max_size=3) | json_values},
    optional={
        "id": st.text(max_size=8) | json_values,
        "outputs": st.lists(st.fixed_dictionaries({"name": st.text(max_size=12)}), max_size=2)
        | json_values,
        "parameters": json_values,
        "label": json_values,
        "labels": json_values,
    },
)

# requests that nearly fit iris: the right shape, any datatype and values, so the checks behind the
# parser (dtype casts, non-finite values, ranges, the model run itself) are reached too
near_fits = st.integers(min_value=0, max_value=4).flatmap(
    lambda rows: st.fixed_dictionaries(
        {
            "inputs": st.tuples(
                st.fixed_dictionaries(
                    {
                        "name": st.just("input"),
                        "shape": st.just([rows, 4]),
                        "datatype": st.sampled_from(DATATYPES),
                        "data": st.lists(scalars | numbers, min_size=rows * 4, max_size=rows * 4),
                    }
                )
            ).map(list)
        }
    )
)


def _dump(doc) -> bytes:
    return json.dumps(doc, allow_nan=True).encode()


bodies = (
    near_fits.map(_dump)
    | documents.map(_dump)
    | json_values.map(_dump)
    | st.binary(max_size=512)
    | st.tuples(documents.map(_dump), st.binary(max_size=64)).map(b"".join)
)


@pytest.fixture(scope="module")
def tcp_client(agent):
    with agent.client("tcp", timeout_s=REQUEST_DEADLINE_S) as client:
        yield client


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=bodies,
    path=st.sampled_from(
        ["/v2/models/iris/infer", "/v2/models/echo/infer", "/v2/models/iris/explain",
         "/v2/models/iris/feedback", "/v2/models/iris/versions/1.0.0/infer"]
    ),
    json_length=st.none() | st.integers(min_value=-1, max_value=600).map(str) | st.text(max_size=4),
)  # fmt: skip
def test_api_answers_anything_with_a_result_or_a_typed_4xx(tcp_client, body, path, json_length):
    headers = {} if json_length is None else {"Inference-Header-Content-Length": json_length}
    if any(ord(c) < 32 or ord(c) > 126 for c in json_length or ""):
        headers = {}  # not sendable as a header
    status, answer_headers, data = tcp_client.request("POST", path, body, headers)
    assert answer_headers.get("content-type") in ("application/json", "application/octet-stream")
    if status == 200:
        return
    assert 400 <= status < 500, data[:300]
    doc = json.loads(data)
    assert set(doc) == {"error"} and isinstance(doc["error"], str) and doc["error"]


@pytest.fixture(scope="module")
def iris_model(api_home):
    return LoadedModel.open(Store(api_home).active_dir("iris"))


array_feeds = hnp.arrays(
    dtype=hnp.scalar_dtypes() | hnp.unicode_string_dtypes(max_len=4),
    shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5),
)
feeds = st.dictionaries(
    st.sampled_from(["input", "other"]) | st.text(max_size=4),
    array_feeds | json_values,
    max_size=3,
)


@settings(max_examples=250, deadline=None)
@given(feeds=feeds)
def test_predict_returns_or_raises_input_error(iris_model, feeds):
    try:
        prediction = iris_model.predict(feeds)
    except InputError as e:
        assert str(e) and e.reason
        return
    probabilities = prediction.outputs["probabilities"]
    assert probabilities.ndim == 2 and probabilities.shape[1] == 3
    assert all(math.isfinite(v) for v in probabilities.reshape(-1).tolist())
