"""Turning a source model into an ONNX model plus a reference for parity.

``convert(path, sample)`` picks the converter by file suffix. Every converter returns a
:class:`Converted`: the packaged model's bytes, what the model is (task, labels), and a reference
function that runs the *original* model, so parity is always measured against the source.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from packager.data import Dataset
from runtime.errors import UsageError

Arrays = dict[str, np.ndarray]
Warn = Callable[[str], None]

SKLEARN_SUFFIXES = (".skops", ".joblib", ".pkl", ".pickle")


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


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def convert(path: Path, sample: Dataset, warn: Warn) -> Converted:
    """Convert the model at ``path``; raises ConversionError (or UsageError for a bad path)."""
    if not path.is_file():
        raise UsageError(f"no such model file: {path}")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        from packager.convert.from_onnx import convert_onnx

        return convert_onnx(path, sample)
    if suffix in SKLEARN_SUFFIXES:
        from packager.convert.from_sklearn import convert_sklearn

        return convert_sklearn(path, sample, warn)
    raise UsageError(
        f"{path.name}: unsupported model type; use .onnx, or a scikit-learn model saved as "
        ".skops (preferred), .joblib or .pkl"
    )
