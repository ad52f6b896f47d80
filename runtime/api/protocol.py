"""The documents of the Open Inference Protocol (KServe V2 / Triton REST) and edgeship's
extensions to it: reading infer, explain and feedback requests, writing metadata and responses.

Pure functions over bytes and dicts: no sockets, no models run here. A request that cannot be read
is an :class:`InputError` naming what was expected; the server answers it 400.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from runtime import __version__
from runtime.api import tensors
from runtime.errors import InputError
from runtime.manifest import Manifest, TensorSpec
from runtime.service import Served

PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "litert": "tensorflow_lite"}
"""The ``platform`` a model's metadata reports, by bundle backend."""
EXTENSIONS = ("binary_tensor_data", "edgeship_explain", "edgeship_feedback")
BINARY_HEADER = "Inference-Header-Content-Length"
"""The header that says how much of a body is JSON, the rest being binary tensor data."""
MAX_ID_CHARS = 256
"""Longest request ``id`` echoed back (characters)."""


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool


@dataclass(frozen=True)
class InferRequest:
    """An infer (or explain) request, read and shaped; ``outputs`` is None for "all of them"."""

    id: Optional[str]
    feeds: dict[str, np.ndarray]
    outputs: Optional[tuple[RequestedOutput, ...]]
    binary_outputs: bool = False


def _load_json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise InputError(f"request body is not valid JSON: {str(e)[:120]}") from e


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InputError(f"{what} must be a JSON object")
    return value


def _flag(parameters: dict[str, Any], key: str, what: str) -> bool:
    value = parameters.get(key, False)
    if not isinstance(value, bool):
        raise InputError(f"{what}.parameters.{key} must be true or false")
    return value


def _binary_size(parameters: dict[str, Any], name: str) -> Optional[int]:
    size = parameters.get("binary_data_size")
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise InputError(f"input {name}: parameters.binary_data_size must be a non-negative int")
    return size


def split_body(body: bytes, json_length: Optional[str]) -> tuple[bytes, bytes]:
    """The JSON part and the binary part of a body, by the ``Inference-Header-Content-Length``."""
    if json_length is None:
        return body, b""
    text = json_length.strip()
    if not text.isdigit() or int(text) > len(body):
        raise InputError(f"{BINARY_HEADER} must be a number of bytes within the body")
    cut = int(text)
    return body[:cut], body[cut:]


def parse_infer(body: bytes, json_length: Optional[str] = None) -> InferRequest:
    """Read an infer request: ``{"id"?, "parameters"?, "inputs": [...], "outputs"?: [...]}``.

    ``json_length`` is the ``Inference-Header-Content-Length`` header when the client sent binary
    tensor data. Raises InputError for a body that is not such a request.
    """
    head, binary = split_body(body, json_length)
    doc = _object(_load_json(head), "the request")
    ident = doc.get("id")
    if ident is not None and (not isinstance(ident, str) or len(ident) > MAX_ID_CHARS):
        raise InputError(f"id must be a string of at most {MAX_ID_CHARS} characters")
    parameters = _object(doc.get("parameters", {}), "parameters")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InputError('the request needs "inputs": a non-empty list of tensors', "names")
    feeds: dict[str, np.ndarray] = {}
    offset = 0
    max_elements = max(len(body), 1)  # every element takes at least one byte of the body
    for index, raw in enumerate(inputs):
        tensor = _object(raw, f"inputs[{index}]")
        name = tensor.get("name")
        if not isinstance(name, str) or not name:
            raise InputError(f"inputs[{index}] needs a name", "names")
        if name in feeds:
            raise InputError(f"input {name} is given twice", "names")
        shape = tensors.check_shape(name, tensor.get("shape"), max_elements)
        tensor_parameters = _object(tensor.get("parameters", {}), f"input {name}: parameters")
        size = _binary_size(tensor_parameters, name)
        if size is None:
            datatype, data = tensor.get("datatype"), tensor.get("data")
            feeds[name] = tensors.decode_json(name, datatype, shape, data)
            continue
        if "data" in tensor:
            raise InputError(f"input {name}: give data or binary_data_size, not both")
        if offset + size > len(binary):
            raise InputError(f"input {name}: binary data ends before {size} bytes")
        raw_bytes = binary[offset : offset + size]
        offset += size
        feeds[name] = tensors.decode_binary(name, tensor.get("datatype"), shape, raw_bytes)
    if offset != len(binary):
        raise InputError(f"{len(binary) - offset} bytes of binary data belong to no input")
    return InferRequest(
        ident,
        feeds,
        _requested_outputs(doc.get("outputs")),
        _flag(parameters, "binary_data_output", "the request"),
    )


def _requested_outputs(raw: Any) -> Optional[tuple[RequestedOutput, ...]]:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise InputError('"outputs" must be a list of {"name": ...} objects')
    found: list[RequestedOutput] = []
    for index, entry in enumerate(raw):
        tensor = _object(entry, f"outputs[{index}]")
        name = tensor.get("name")
        if not isinstance(name, str):
            raise InputError(f"outputs[{index}] needs a name", "names")
        parameters = _object(tensor.get("parameters", {}), f"output {name}: parameters")
        found.append(RequestedOutput(name, _flag(parameters, "binary_data", f"output {name}")))
    return tuple(found)


def check_outputs(request: InferRequest, manifest: Manifest) -> None:
    """Raise InputError when the request asks for an output the model does not have."""
    if request.outputs is None:
        return
    known = [o.name for o in manifest.model.outputs]
    for wanted in request.outputs:
        if wanted.name not in known:
            raise InputError(
                f"unknown output {wanted.name} (the model has {', '.join(known)})", "names"
            )


def infer_response(request: InferRequest, served: Served) -> tuple[dict[str, Any], list[bytes]]:
    """The response document and the binary tensor data that follows it (possibly none)."""
    produced = served.prediction.outputs
    if request.outputs is None:
        wanted = [RequestedOutput(name, request.binary_outputs) for name in produced]
    else:
        binary = request.binary_outputs
        wanted = [RequestedOutput(o.name, o.binary or binary) for o in request.outputs]
    outputs: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for item in wanted:
        array = np.asarray(produced[item.name])
        tensor: dict[str, Any] = {
            "name": item.name,
            "datatype": tensors.datatype_of_array(array),
            "shape": list(array.shape),
        }
        if item.binary:
            data = tensors.encode_binary(array)
            tensor["parameters"] = {"binary_data_size": len(data)}
            chunks.append(data)
        else:
            tensor["data"] = tensors.encode_json(array)
        outputs.append(tensor)
    doc: dict[str, Any] = {"model_name": served.model, "model_version": served.version}
    if request.id is not None:
        doc["id"] = request.id
    doc["parameters"] = prediction_parameters(served)
    doc["outputs"] = outputs
    return doc, chunks


def prediction_parameters(served: Served) -> dict[str, Any]:
    """edgeship's additions to a response: the prediction id (for feedback) and how many values
    were outside the reference ranges, in total and per feature (``out_of_range.FEATURE``)."""
    counts = served.prediction.out_of_range
    params: dict[str, Any] = {
        "prediction_id": served.id,
        "out_of_range": int(sum(counts.values())),
    }
    for feature, count in counts.items():
        params[f"out_of_range.{feature}"] = int(count)
    return params


def parse_feedback(body: bytes) -> tuple[str, Any]:
    """Read ``{"id": PREDICTION_ID, "label": Y}`` or ``{"id": ..., "labels": [Y, ...]}``."""
    doc = _object(_load_json(body), "the feedback")
    ident = doc.get("id")
    if not isinstance(ident, str) or not ident or len(ident) > MAX_ID_CHARS:
        raise InputError('feedback needs "id": the prediction_id of the response', "feedback")
    if ("label" in doc) == ("labels" in doc):
        raise InputError('feedback needs one of "label" (one row) or "labels" (a list)', "feedback")
    if "labels" in doc:
        labels = doc["labels"]
        if not isinstance(labels, list) or not labels:
            raise InputError('"labels" must be a non-empty list, one value per row', "feedback")
        values: Any = labels
    else:
        values = [doc["label"]]
    if not all(isinstance(v, (str, int, float)) for v in values):
        raise InputError("feedback labels must be numbers or strings", "feedback")
    return ident, values


def server_metadata() -> dict[str, Any]:
    return {"name": "edgeship", "version": __version__, "extensions": list(EXTENSIONS)}


def _tensor_metadata(spec: TensorSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "datatype": tensors.datatype_of_manifest(spec.dtype),
        "shape": tensors.tensor_shape(spec.shape),
    }


def model_metadata(manifest: Manifest) -> dict[str, Any]:
    """A model's metadata: name, versions, platform, inputs and outputs; edgeship's own facts
    (sequence, task, profile, class labels as a JSON list) in ``parameters``."""
    info = manifest.model
    parameters: dict[str, Any] = {
        "sequence": manifest.sequence,
        "task": info.task,
        "profile": manifest.target.profile,
        "backend": manifest.target.backend,
    }
    if info.labels is not None:
        parameters["labels"] = json.dumps(list(info.labels))
    if info.label_output is not None:
        parameters["label_output"] = info.label_output
    return {
        "name": manifest.name,
        "versions": [manifest.version],
        "platform": PLATFORMS.get(manifest.target.backend, manifest.target.backend),
        "inputs": [_tensor_metadata(s) for s in info.inputs],
        "outputs": [_tensor_metadata(s) for s in info.outputs],
        "parameters": parameters,
    }
