"""Running a packaged model on the host through the device's own backends.

The packager measures parity, writes golden vectors and describes signatures with exactly the code
a device runs (``runtime.backends``), whatever the model's format: one way in for ONNX and TFLite.
Backends load from files, so the model bytes go through a private temporary directory that lives
as long as the loaded model.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from runtime.backends.base import Backend, open_backend
from runtime.errors import UsageError
from runtime.manifest import TensorSpec

BACKEND_FOR_FORMAT = {"onnx": "onnxruntime", "tflite": "litert"}
"""The host runs each model format with the backend a device would use for it."""

_SUFFIX = {"onnx": ".onnx", "tflite": ".tflite"}


def backend_name(model_format: str) -> str:
    """The runtime backend for ``model_format``; UsageError for an unknown format."""
    try:
        return BACKEND_FOR_FORMAT[model_format]
    except KeyError:
        known = ", ".join(sorted(BACKEND_FOR_FORMAT))
        raise UsageError(f"unknown model format {model_format!r}; known: {known}") from None


@contextmanager
def packaged(model_bytes: bytes, model_format: str, threads: int = 1) -> Iterator[Backend]:
    """Load ``model_bytes`` with the device backend for ``model_format`` and yield it.

    The backend is valid inside the ``with`` block only. Raises UsageError for an unknown format,
    BackendUnavailableError if that backend is not installed, ModelError if it cannot load the
    model.
    """
    name = backend_name(model_format)
    with tempfile.TemporaryDirectory(prefix="edgeship-run-") as folder:
        path = Path(folder) / f"model{_SUFFIX[model_format]}"
        path.write_bytes(model_bytes)
        yield open_backend(name, path, threads)


def run_packaged(
    model_bytes: bytes, model_format: str, inputs: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Run the packaged model once on ``inputs`` (keyed by input name, already in the model's
    dtypes) and return every output by name.

    Raises what :func:`packaged` raises, and ModelError when the model does not run on the inputs.
    """
    with packaged(model_bytes, model_format) as backend:
        return backend.run(inputs)


def describe(
    model_bytes: bytes, model_format: str
) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """The packaged model's ``(inputs, outputs)`` as a device's backend reports them (dynamic
    dims are None). Raises what :func:`packaged` raises."""
    with packaged(model_bytes, model_format) as backend:
        return backend.inputs, backend.outputs
