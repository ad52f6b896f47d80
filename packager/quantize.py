"""Producing candidate variants of a float32 ONNX model: int8 (``dynamic``, ``static`` QDQ) and
``fp16``.

Place in the design: ``build`` → ``validate`` (measure and choose) → ``prepass`` (ready the
float32 model) → here. This module only makes variants; it never decides which one ships. Every
producer works on bytes (onnxruntime's quantizers want paths, so they run in a private temporary
folder that is removed afterwards), and every model it hands back has been loaded and run in
onnxruntime. A mode that changes nothing that matters (tree and linear ops have no int8 form,
``docs/adr/0005-quantization-settings-per-profile.md``) comes back as "not quantizable", never as
a variant.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto

from devices import Profile, ProfileError
from packager.convert import Arrays

MODES = ("none", "dynamic", "static", "fp16")
QUANTIZED_MODES = ("dynamic", "static", "fp16")
OK, NOT_QUANTIZABLE, FAILED = "ok", "not quantizable", "failed"
INT8_OPS = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "DynamicQuantizeMatMul",
        "MatMulInteger",
        "MatMulIntegerToFloat",
        "ConvInteger",
        "QGemm",
    }
)
"""Ops that only an int8 model has (plus every ``QLinear*`` op)."""
_TYPES = {"int8": "QInt8", "uint8": "QUInt8"}
CALIBRATION_ROWS = 512
"""At most this many calibration rows are fed to the static quantizer (min/max converges fast)."""
CALIBRATION_BATCH = 32
_ORT_DEFAULT_SEVERITY = 2  # onnxruntime's default: warnings


@dataclass(frozen=True)
class QuantSettings:
    """A profile's ``[quantization]`` table (docs/profiles.md); why each value: ADR 0005."""

    modes: tuple[str, ...] = ("none",)
    activation_type: str = "uint8"
    weight_type: str = "int8"
    reduce_range: bool = False
    per_channel: bool = False
    op_types: Optional[tuple[str, ...]] = None
    """Ops the int8 quantizers may touch; None: every op onnxruntime can quantize."""

    @classmethod
    def from_profile(cls, profile: Profile) -> QuantSettings:
        """Read and check ``profile.quantization``; raises ProfileError naming the field."""
        table = profile.quantization
        where = f"{profile.source or profile.name}: quantization"
        modes = table.get("modes", ["none"])
        if not isinstance(modes, list) or not all(m in MODES for m in modes):
            raise ProfileError(f"{where}.modes must be a list drawn from {', '.join(MODES)}")
        types = {}
        for key in ("activation_type", "weight_type"):
            value = table.get(key, "uint8" if key == "activation_type" else "int8")
            if value not in _TYPES:
                raise ProfileError(f"{where}.{key} must be int8 or uint8")
            types[key] = value
        flags = {}
        for key in ("reduce_range", "per_channel"):
            value = table.get(key, False)
            if not isinstance(value, bool):
                raise ProfileError(f"{where}.{key} must be true or false")
            flags[key] = value
        op_types = table.get("op_types")
        if op_types is not None and (
            not isinstance(op_types, list) or not all(isinstance(o, str) for o in op_types)
        ):
            raise ProfileError(f"{where}.op_types must be a list of ONNX op names")
        return cls(
            modes=("none", *[m for m in modes if m != "none"]),
            activation_type=types["activation_type"],
            weight_type=types["weight_type"],
            reduce_range=flags["reduce_range"],
            per_channel=flags["per_channel"],
            op_types=tuple(op_types) if op_types is not None else None,
        )

    def for_mode(self, mode: str) -> dict[str, Any]:
        """The settings that shape ``mode``'s variant (what the manifest records)."""
        if mode == "none":
            return {}
        if mode == "fp16":
            return {"keep_io_types": True}
        common: dict[str, Any] = {
            "weight_type": self.weight_type,
            "reduce_range": self.reduce_range,
            "per_channel": self.per_channel,
            "op_types": list(self.op_types) if self.op_types is not None else None,
        }
        if mode == "static":
            common.update(activation_type=self.activation_type, format="QDQ")
        return common

    def to_dict(self) -> dict[str, Any]:
        return {
            "modes": list(self.modes),
            "activation_type": self.activation_type,
            "weight_type": self.weight_type,
            "reduce_range": self.reduce_range,
            "per_channel": self.per_channel,
            "op_types": list(self.op_types) if self.op_types is not None else None,
        }


@dataclass(frozen=True)
class Variant:
    """One produced candidate. ``model_bytes`` is set only when ``status`` is ``ok``: the model
    loaded and ran in onnxruntime."""

    mode: str
    status: str
    detail: str = ""
    model_bytes: Optional[bytes] = None

    @property
    def size(self) -> Optional[int]:
        return len(self.model_bytes) if self.model_bytes is not None else None

    @property
    def verdict(self) -> str:
        """``failed: reason``, ``not quantizable`` or ``ok``."""
        return f"{FAILED}: {self.detail}" if self.status == FAILED else self.status


def session(model_bytes: bytes, threads: int = 1) -> ort.InferenceSession:
    """A CPU session on ``model_bytes``; onnxruntime's own exceptions pass through."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def rows(arrays: Arrays, start: int, stop: int) -> Arrays:
    """Rows ``start:stop`` of every batched input; inputs that are not per-row stay whole."""
    n = batch_rows(arrays)
    return {k: v[start:stop] if v.ndim and v.shape[0] == n else v for k, v in arrays.items()}


def batch_rows(arrays: Arrays) -> int:
    """How many rows the arrays hold (the largest leading dimension)."""
    return max((int(v.shape[0]) for v in arrays.values() if v.ndim), default=1)


def fixed_batch(sess: ort.InferenceSession, arrays: Arrays) -> Optional[int]:
    """The batch size the model insists on for the per-row inputs in ``arrays``; None when its
    batch dimension is dynamic."""
    n = batch_rows(arrays)
    for arg in sess.get_inputs():
        array = arrays.get(arg.name)
        per_row = array is not None and array.ndim > 0 and array.shape[0] == n
        if per_row and arg.shape and isinstance(arg.shape[0], int) and arg.shape[0] > 0:
            return int(arg.shape[0])
    return None


def probe(model_bytes: bytes, arrays: Arrays, want: int = 8) -> Arrays:
    """A few rows of ``arrays`` the model accepts (its fixed batch size, else ``want`` rows)."""
    return rows(arrays, 0, fixed_batch(session(model_bytes), arrays) or want)


def produce(
    mode: str, prepared: bytes, settings: QuantSettings, calibration: Arrays, probe: Arrays
) -> Variant:
    """Make ``mode``'s variant of the ``prepare``d model and prove it loads and runs on ``probe``.

    Never raises for a model the quantizer or onnxruntime rejects: that comes back as a Variant
    with status ``failed`` and the reason; a mode that changed nothing comes back ``not
    quantizable``. ``calibration`` (static only) holds the rows whose value ranges are measured.
    """
    if mode not in QUANTIZED_MODES:
        raise ValueError(f"no producer for mode {mode!r}")
    try:
        with _quiet_quantizer(), workdir() as work:
            source = work / "float32.onnx"
            source.write_bytes(prepared)
            target = work / f"{mode}.onnx"
            if mode == "dynamic":
                _dynamic(source, target, settings)
            elif mode == "static":
                _static(source, target, settings, calibration)
            else:
                _fp16(source, target)
            result = target.read_bytes()
    except Exception as e:  # noqa: BLE001 - quantizers raise anything; it becomes a verdict
        return Variant(mode, FAILED, _reason(e))
    missing = _not_quantized(mode, onnx.load_from_string(result), onnx.load_from_string(prepared))
    if missing:
        return Variant(mode, NOT_QUANTIZABLE, missing)
    try:
        run(result, probe)
    except Exception as e:  # noqa: BLE001 - a model onnxruntime refuses is reported, not kept
        return Variant(mode, FAILED, _reason(e))
    return Variant(mode, OK, model_bytes=result)


def _dynamic(source: Path, target: Path, settings: QuantSettings) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        source,
        target,
        op_types_to_quantize=list(settings.op_types) if settings.op_types else None,
        per_channel=settings.per_channel,
        reduce_range=settings.reduce_range,
        weight_type=getattr(QuantType, _TYPES[settings.weight_type]),
    )


def _static(source: Path, target: Path, settings: QuantSettings, calibration: Arrays) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self, arrays: Arrays, batch: int, fixed: bool) -> None:
            n = min(batch_rows(arrays), CALIBRATION_ROWS)
            if fixed:
                n -= n % batch  # a fixed batch size takes only whole batches
            self._batches = iter([rows(arrays, i, i + batch) for i in range(0, n, batch)])

        def get_next(self) -> Optional[Arrays]:
            return next(self._batches, None)

    batch = fixed_batch(session(source.read_bytes()), calibration)
    quantize_static(
        source,
        target,
        Reader(calibration, batch or CALIBRATION_BATCH, batch is not None),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(settings.op_types) if settings.op_types else None,
        per_channel=settings.per_channel,
        reduce_range=settings.reduce_range,
        activation_type=getattr(QuantType, _TYPES[settings.activation_type]),
        weight_type=getattr(QuantType, _TYPES[settings.weight_type]),
    )


def _fp16(source: Path, target: Path) -> None:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(source), keep_io_types=True)
    onnx.save(model, target)


def _not_quantized(mode: str, result: onnx.ModelProto, original: onnx.ModelProto) -> str:
    """Why ``result`` is not really a ``mode`` variant of ``original``; empty when it is."""
    if mode == "fp16":
        halves = [t for t in result.graph.initializer if t.data_type == TensorProto.FLOAT16]
        if halves:
            return ""
        return f"no float weights to convert ({_ops(original)})"
    quant_ops = [n for n in result.graph.node if n.op_type in INT8_OPS or "QLinear" in n.op_type]
    int8_weights = [
        t
        for t in result.graph.initializer
        if t.data_type in (TensorProto.INT8, TensorProto.UINT8) and np.prod(t.dims) > 1
    ]
    if quant_ops and int8_weights:
        return ""
    return f"no int8 form for these ops ({_ops(original)})"


def _ops(model: onnx.ModelProto) -> str:
    seen = dict.fromkeys(n.op_type for n in model.graph.node if n.op_type != "Constant")
    return ", ".join(seen) or "no ops"


def run(model_bytes: bytes, probe: Arrays, names: Optional[list[str]] = None) -> list[Any]:
    """The outputs (all, or ``names``) of ``model_bytes`` on ``probe``; onnxruntime's exceptions
    pass through."""
    result: list[Any] = session(model_bytes).run(names, probe)
    return result


def _reason(error: Exception) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."


@contextmanager
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="edgeship-quant-") as folder:
        yield Path(folder)


@contextmanager
def _quiet_quantizer() -> Iterator[None]:
    # onnxruntime's quantizers log advice through the root logger, and the sessions they open
    # through onnxruntime's own default logger: library code must not print.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    ort.set_default_logger_severity(3)
    try:
        yield
    finally:
        root.setLevel(level)
        ort.set_default_logger_severity(_ORT_DEFAULT_SEVERITY)
