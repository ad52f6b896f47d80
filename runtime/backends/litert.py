"""LiteRT backend: ``ai_edge_litert`` first, then ``tflite_runtime`` (armv7 boards, old Pythons).

The interpreter lookup (``interpreter_class``) is shared with the packager, which runs source
``.tflite`` files with the same interpreter a device will use.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from runtime.backends.base import Arrays, Backend
from runtime.errors import BackendUnavailableError, ModelError
from runtime.manifest import DTYPES, TensorSpec


def interpreter_class() -> Any:
    """The TFLite ``Interpreter`` class of the first installed provider.

    Raises BackendUnavailableError (with the install command) when neither is installed.
    """
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError as e:
            raise BackendUnavailableError(
                "this model needs LiteRT: pip install 'edgeship[litert]' "
                "(or tflite-runtime on 32-bit ARM)"
            ) from e
    return Interpreter


def interpreter_version() -> dict[str, str]:
    """``{distribution: version}`` of the provider ``interpreter_class`` returns (provenance).

    Raises BackendUnavailableError when no provider is installed.
    """
    module = interpreter_class().__module__
    distribution = "ai-edge-litert" if module.startswith("ai_edge_litert") else "tflite-runtime"
    try:
        return {distribution: metadata.version(distribution)}
    except metadata.PackageNotFoundError:
        return {distribution: "unknown"}


def _dtype_name(detail: dict[str, Any]) -> str:
    dtype = np.dtype(detail["dtype"])
    name = "string" if dtype.kind in "OSU" else dtype.name
    if name not in DTYPES:
        raise ModelError(f"{detail['name']}: unsupported tensor type {dtype.name}")
    return name


def spec_from_detail(detail: dict[str, Any]) -> TensorSpec:
    """A TensorSpec from a LiteRT tensor detail; dims that are -1 in shape_signature become None."""
    signature = detail.get("shape_signature")
    if signature is None or len(signature) != len(detail["shape"]):
        signature = detail["shape"]
    shape = tuple(None if int(d) < 0 else int(d) for d in signature)
    return TensorSpec(str(detail["name"]), _dtype_name(detail), shape)


def _per_tensor(details: list[dict[str, Any]]) -> dict[str, tuple[float, int]]:
    found = {}
    for detail in details:
        params = detail.get("quantization_parameters", {})
        scales, zero_points = params.get("scales", ()), params.get("zero_points", ())
        if len(scales) == 1 and len(zero_points) == 1 and float(scales[0]) > 0:
            found[str(detail["name"])] = (float(scales[0]), int(zero_points[0]))
    return found


class LiteRTBackend(Backend):
    """A ``.tflite`` model in a LiteRT interpreter. Inputs whose shape differs from the current
    allocation are resized (only along dims the model declares dynamic) before the run."""

    name = "litert"

    def __init__(self, model_path: Path, threads: int = 1) -> None:
        interpreter = interpreter_class()
        try:
            self._interp = interpreter(model_path=str(model_path), num_threads=threads)
            self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise ModelError(f"LiteRT cannot load {model_path.name}: {e}") from e
        self._refresh()
        self._inputs = tuple(spec_from_detail(d) for d in self._in)
        self._outputs = tuple(spec_from_detail(d) for d in self._out)

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self._outputs

    @property
    def input_quantization(self) -> dict[str, tuple[float, int]]:
        """``{input name: (scale, zero_point)}`` for inputs quantized per tensor: real value =
        scale * (q - zero_point). Float inputs and per-channel ones are absent."""
        return _per_tensor(self._in)

    @property
    def output_quantization(self) -> dict[str, tuple[float, int]]:
        """Like :attr:`input_quantization`, for the outputs."""
        return _per_tensor(self._out)

    def _refresh(self) -> None:
        self._in = self._interp.get_input_details()
        self._out = self._interp.get_output_details()

    def _run(self, feeds: Arrays) -> dict[str, np.ndarray]:
        missing = [d["name"] for d in self._in if d["name"] not in feeds]
        if missing:
            raise ModelError(f"missing input(s): {', '.join(missing)}")
        arrays = {d["name"]: np.ascontiguousarray(feeds[d["name"]]) for d in self._in}
        changed = [d for d in self._in if tuple(d["shape"]) != arrays[d["name"]].shape]
        if changed:
            try:
                for detail in changed:
                    shape = list(arrays[detail["name"]].shape)
                    self._interp.resize_tensor_input(detail["index"], shape, strict=True)
                self._interp.allocate_tensors()
            finally:
                # A failed resize leaves some tensors resized: re-read what the interpreter holds
                # so the next call compares against the truth.
                self._refresh()
        for detail in self._in:
            self._interp.set_tensor(detail["index"], arrays[detail["name"]])
        self._interp.invoke()
        return {d["name"]: self._interp.get_tensor(d["index"]) for d in self._out}
