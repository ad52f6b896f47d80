"""Turning a source model into a packaged model (ONNX or TFLite) plus a reference for parity.

``convert(path, sample)`` picks the converter by file suffix. Every converter returns a
:class:`Converted`: the packaged model's bytes, what the model is (task, labels), the sample as the
packaged model takes it, and the *original* model's outputs on it, so parity is always measured
against the source. The helpers below key and cast a sample for a model's input signature.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from packager.data import Dataset
from runtime.backends.base import numpy_dtype
from runtime.errors import UsageError
from runtime.manifest import TensorSpec

Arrays = dict[str, np.ndarray]
Warn = Callable[[str], None]

SKLEARN_SUFFIXES = (".skops", ".joblib", ".pkl", ".pickle")
TFLITE_SUFFIXES = (".tflite",)
TORCH_SUFFIXES = (".pt2", ".pt")
KERAS_SUFFIXES = (".keras", ".h5")
VariantMaker = Callable[[str, Arrays], bytes]
"""Makes the ``mode`` variant (dynamic, static, fp16) of a model from its source, with these
calibration rows; raises ConversionError."""


@dataclass
class Converted:
    model_bytes: bytes
    model_format: str
    task: str
    source_format: str
    source_sha256: str
    inputs: Arrays
    """The sample as the packaged model takes it (keyed by input name, right dtype)."""
    reference: Arrays
    """The original model's outputs on the sample, in the source's own precision; keys match
    the packaged model's output names."""
    labels: Optional[list[Any]] = None
    label_output: Optional[str] = None
    converter: dict[str, str] = field(default_factory=dict)
    variants: Optional[VariantMaker] = None
    """For a TFLite model converted here (Keras): makes its quantized variants. None: the model
    ships as converted (a ``.tflite`` file as given), or is quantized by ``packager.quantize``
    (ONNX)."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def convert(
    path: Path,
    sample: Dataset,
    warn: Warn,
    input_shapes: Optional[dict[str, tuple[int, ...]]] = None,
) -> Converted:
    """Convert the model at ``path``; raises ConversionError (or UsageError for a bad path).

    ``input_shapes`` (``--input-shape``) fixes dynamic dimensions of an ONNX model's inputs; other
    formats take their shapes from the model and the sample, and refuse it.
    """
    if input_shapes and path.suffix.lower() != ".onnx":
        raise UsageError("--input-shape applies to .onnx models only")
    if not path.is_file():
        raise UsageError(f"no such model file: {path}")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        from packager.convert.from_onnx import convert_onnx

        return convert_onnx(path, sample, input_shapes)
    if suffix in SKLEARN_SUFFIXES:
        from packager.convert.from_sklearn import convert_sklearn

        return convert_sklearn(path, sample, warn)
    if suffix in TFLITE_SUFFIXES:
        from packager.convert.from_tflite import convert_tflite

        return convert_tflite(path, sample, warn)
    if suffix in TORCH_SUFFIXES:
        from packager.convert.from_torch import convert_torch

        return convert_torch(path, sample, warn)
    if suffix in KERAS_SUFFIXES:
        from packager.convert.from_keras import convert_keras

        return convert_keras(path, sample, warn)
    raise UsageError(
        f"{path.name}: unsupported model type; use .onnx, .tflite, a scikit-learn model saved as "
        ".skops (preferred), .joblib or .pkl, a PyTorch model: an exported program (.pt2, "
        "preferred) or a whole module saved with torch.save (.pt), or a Keras model (.keras, .h5)"
    )


def key_sample(names: Sequence[str], sample: Dataset) -> Arrays:
    """The sample keyed by input name: a single array feeds a single input; an ``.npz`` must hold
    every input by name (extra arrays are ignored). Raises UsageError saying what is missing."""
    if None in sample.arrays:
        if len(names) != 1:
            raise UsageError(
                f"the model has several inputs ({', '.join(names)}): give the sample as .npz"
            )
        return {names[0]: sample.single()}
    arrays = {str(k): v for k, v in sample.arrays.items()}
    missing = [n for n in names if n not in arrays]
    if missing:
        raise UsageError(f"the sample lacks input(s) {', '.join(missing)}")
    return {n: arrays[n] for n in names}


def check_shape(spec: TensorSpec, array: np.ndarray) -> None:
    """UsageError unless ``array`` has the rank and the fixed dims ``spec`` declares."""
    fits = len(array.shape) == len(spec.shape) and all(
        want is None or want == got for want, got in zip(spec.shape, array.shape)
    )
    if not fits:
        want = "x".join("?" if d is None else str(d) for d in spec.shape) or "a scalar"
        raise UsageError(
            f"input {spec.name}: the model takes shape {want} (? = any), the sample has "
            f"{'x'.join(map(str, array.shape)) or 'a scalar'}"
        )


def cast_sample(spec: TensorSpec, array: np.ndarray) -> np.ndarray:
    """``array`` as ``spec.dtype``, contiguous. Floats become integers only when they are whole
    numbers in the target's range; anything else raises UsageError instead of wrapping or
    truncating silently."""
    target = numpy_dtype(spec.dtype)
    source = np.asarray(array)
    if target.kind in "iu" and source.dtype.kind in "fiub":
        info = np.iinfo(target)
        if source.size and source.dtype.kind == "f" and not np.all(np.isfinite(source)):
            raise UsageError(f"input {spec.name} takes {spec.dtype}; the sample has NaN or inf")
        if source.size and (source.min() < info.min or source.max() > info.max):
            raise UsageError(f"input {spec.name}: sample values do not fit in {spec.dtype}")
        if source.dtype.kind == "f" and not np.array_equal(source, np.round(source)):
            raise UsageError(
                f"input {spec.name} takes {spec.dtype}; the sample has fractional values"
            )
    return np.ascontiguousarray(source.astype(target))
