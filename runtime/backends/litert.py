"""LiteRT backend: ``ai_edge_litert`` first, then ``tflite_runtime`` (armv7 boards, old Pythons)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from runtime.backends.base import Arrays, Backend
from runtime.errors import BackendUnavailableError, ModelError
from runtime.manifest import TensorSpec


def _interpreter_class() -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError as e:
            raise BackendUnavailableError(
                "this bundle needs LiteRT: pip install 'edgeship[litert]' "
                "(or tflite-runtime on 32-bit ARM)"
            ) from e
    return Interpreter


def _spec(detail: dict[str, Any]) -> TensorSpec:
    signature = detail.get("shape_signature", detail["shape"])
    shape = tuple(None if int(d) < 0 else int(d) for d in signature)
    return TensorSpec(detail["name"], np.dtype(detail["dtype"]).name, shape)


class LiteRTBackend(Backend):
    name = "litert"

    def __init__(self, model_path: Path, threads: int = 1) -> None:
        interpreter = _interpreter_class()
        try:
            self._interp = interpreter(model_path=str(model_path), num_threads=threads)
            self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise ModelError(f"LiteRT cannot load {model_path.name}: {e}") from e
        self._in = self._interp.get_input_details()
        self._out = self._interp.get_output_details()
        self._inputs = tuple(_spec(d) for d in self._in)
        self._outputs = tuple(_spec(d) for d in self._out)

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self._outputs

    def _run(self, feeds: Arrays) -> dict[str, np.ndarray]:
        resized = False
        for detail in self._in:
            value = feeds[detail["name"]]
            if tuple(detail["shape"]) != value.shape:
                self._interp.resize_tensor_input(detail["index"], value.shape)
                resized = True
        if resized:
            self._interp.allocate_tensors()
            self._in = self._interp.get_input_details()
            self._out = self._interp.get_output_details()
        for detail in self._in:
            self._interp.set_tensor(detail["index"], feeds[detail["name"]])
        self._interp.invoke()
        return {d["name"]: self._interp.get_tensor(d["index"]).copy() for d in self._out}
