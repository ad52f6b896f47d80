"""LiteRT backend: ``ai_edge_litert`` first, then ``tflite_runtime`` (armv7 boards, old Pythons).

The interpreter lookup (``interpreter_class``) is shared with the packager, which runs source
``.tflite`` files with the same interpreter a device will use. Custom ops run when the provider's
default op resolver registers them (``TFLite_Detection_PostProcess``, ``Mfcc``,
``AudioSpectrogram``); a model with any other is refused at load, naming the op.
"""

from __future__ import annotations

import re
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


_PARTIAL_WRITERS = frozenset({"TFLite_Detection_PostProcess"})
"""Kernels that leave part of their outputs unwritten: TFLite_Detection_PostProcess (fast NMS)
fills only the first ``num_detections`` slots. LiteRT never clears a buffer, so the other slots
would hold an earlier call's detections or stale memory, and two runs on one input could differ."""

_UNRESOLVED = (
    re.compile(r"unresolved custom op: (\S+?)\.(?=\s|$)"),
    re.compile(r"\((Flex\w+)\) failed to prepare"),
)


def _load_error(model_path: Path, error: Exception) -> ModelError:
    """The ModelError for a model LiteRT refused; it names the ops the interpreter lacks."""
    message = str(error)
    missing = sorted({name for p in _UNRESOLVED for name in p.findall(message)})
    if not missing:
        return ModelError(f"LiteRT cannot load {model_path.name}: {message}")
    provider = ", ".join(f"{d} {v}" for d, v in interpreter_version().items())
    plural = len(missing) > 1
    return ModelError(
        f"the model uses custom op{'s' if plural else ''} {', '.join(missing)}, which LiteRT "
        f"({provider}) does not provide; it runs TFLite's builtin ops and the custom ops "
        "TFLite_Detection_PostProcess, Mfcc and AudioSpectrogram, not Flex (TensorFlow) ops or an "
        f"application's own: convert the model without {'them' if plural else 'it'}"
    )


def _partially_written(interpreter: Any) -> tuple[int, ...]:
    """Indices of the tensors that kernels in ``_PARTIAL_WRITERS`` write. The op list is the
    interpreter's experimental API: a provider without it gets none."""
    ops = getattr(interpreter, "_get_ops_details", None)
    if ops is None:
        return ()
    found = {int(t) for op in ops() if op["op_name"] in _PARTIAL_WRITERS for t in op["outputs"]}
    return tuple(sorted(t for t in found if t >= 0))


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
    allocation are resized (only along dims the model declares dynamic) before the run. Outputs
    of kernels that write only part of them (``_PARTIAL_WRITERS``) are zeroed before every run, so
    an answer depends on its own inputs, never on an earlier call or on stale memory."""

    name = "litert"

    def __init__(self, model_path: Path, threads: int = 1) -> None:
        interpreter = interpreter_class()
        try:
            self._interp = interpreter(model_path=str(model_path), num_threads=threads)
            self._interp.allocate_tensors()
            self._cleared = _partially_written(self._interp)
        except (ValueError, RuntimeError) as e:
            raise _load_error(model_path, e) from e
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
        for index in self._cleared:
            # A view into the interpreter's buffer; it must be gone before invoke() (it is).
            self._interp.tensor(index)().fill(0)
        self._interp.invoke()
        return {d["name"]: self._interp.get_tensor(d["index"]) for d in self._out}
