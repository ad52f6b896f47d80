"""onnxruntime backend (CPU execution provider)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

from runtime.backends.base import Arrays, Backend, keyed_by
from runtime.errors import BackendUnavailableError, ModelError
from runtime.manifest import TensorSpec

try:
    import onnxruntime as ort
except ImportError:  # pragma: no cover - exercised on devices without onnxruntime
    ort = None

_ORT_TYPES = {
    "tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
    "tensor(int8)": "int8", "tensor(int16)": "int16", "tensor(int32)": "int32",
    "tensor(int64)": "int64", "tensor(uint8)": "uint8", "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32", "tensor(uint64)": "uint64", "tensor(bool)": "bool",
    "tensor(string)": "string",
}  # fmt: skip


def spec_from_ort(arg: Any) -> TensorSpec:
    """A TensorSpec from an onnxruntime NodeArg (symbolic dims become None)."""
    dtype = _ORT_TYPES.get(arg.type)
    if dtype is None:
        raise ModelError(f"{arg.name}: unsupported type {arg.type}")
    shape: list[Optional[int]] = [d if isinstance(d, int) else None for d in (arg.shape or [])]
    return TensorSpec(arg.name, dtype, tuple(shape))


class OnnxBackend(Backend):
    name = "onnxruntime"

    def __init__(self, model_path: Path, threads: int = 1) -> None:
        if ort is None:
            raise BackendUnavailableError(
                "this bundle needs onnxruntime: pip install 'edgeship[onnx]'"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(
                str(model_path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # onnxruntime raises its own untyped errors
            raise ModelError(f"onnxruntime cannot load {model_path.name}: {e}") from e
        self._inputs = tuple(spec_from_ort(a) for a in self._session.get_inputs())
        self._outputs = tuple(spec_from_ort(a) for a in self._session.get_outputs())
        self._output_names = [o.name for o in self._outputs]
        self._keyed = keyed_by(self._output_names)
        # The session's own ``run`` re-validates the feed names and dtypes in Python before
        # calling the C++ session; InputChecker has already done exactly that, so call the C++
        # session directly when this onnxruntime exposes it (every release since 1.0 does).
        inner = getattr(self._session, "_sess", None)
        self._call = inner.run if inner is not None and hasattr(inner, "run") else self._public_run

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self._outputs

    def _public_run(self, names: list[str], feeds: Arrays, options: None) -> list[Any]:
        results: list[Any] = self._session.run(names, feeds, options)
        return results

    def _run(self, feeds: Arrays) -> dict[str, np.ndarray]:
        # onnxruntime takes a dict: copy only what is not one already (the input checker's is)
        if type(feeds) is not dict:
            feeds = dict(feeds)
        return self._keyed(self._call(self._output_names, feeds, None))
