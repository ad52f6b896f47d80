"""scikit-learn estimators and Pipelines → ONNX through skl2onnx.

Classifiers come out with plain outputs (``label`` and a ``probabilities`` matrix, no ZipMap);
regressors with ``variable``. The original estimator is kept as the parity reference.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import skl2onnx
import sklearn
from sklearn.base import is_classifier, is_regressor
from sklearn.pipeline import Pipeline

from packager.convert import Arrays, Converted, Warn, sha256_file
from packager.data import Dataset
from runtime.errors import ConversionError

TARGET_OPSET = 17
INPUT_NAME = "input"


def load_estimator(path: Path, warn: Warn) -> Any:
    suffix = path.suffix.lower()
    if suffix == ".skops":
        import skops.io as sio

        untrusted = sio.get_untrusted_types(file=path)
        if untrusted:
            raise ConversionError(
                f"{path.name} contains types skops does not trust by default: "
                f"{', '.join(untrusted)}; load and re-save it after review, or use .joblib"
            )
        return sio.load(path)
    warn(f"{path.name}: {suffix} files run code when loaded; only build models you trust")
    try:
        if suffix == ".joblib":
            import joblib

            return joblib.load(path)
        with path.open("rb") as f:
            return pickle.load(f)  # noqa: S301 - the user asked for this file; warned above
    except Exception as e:
        raise ConversionError(f"cannot load {path.name}: {e}") from e


def _final_step(model: Any) -> Any:
    return model.steps[-1][1] if isinstance(model, Pipeline) else model


def _dedupe_opsets(model: onnx.ModelProto) -> None:
    seen: dict[str, onnx.OperatorSetIdProto] = {}
    for opset in model.opset_import:
        if opset.domain not in seen or opset.version > seen[opset.domain].version:
            seen[opset.domain] = opset
    kept = [onnx.helper.make_opsetid(o.domain, o.version) for o in seen.values()]
    del model.opset_import[:]
    model.opset_import.extend(kept)


def convert_sklearn(path: Path, sample: Dataset, warn: Warn) -> Converted:
    from skl2onnx.common.data_types import FloatTensorType

    model = load_estimator(path, warn)
    final = _final_step(model)
    if not (is_classifier(model) or is_regressor(model)):
        raise ConversionError(
            f"{type(final).__name__} is neither a classifier nor a regressor; edgeship builds "
            "scikit-learn classifiers, regressors and Pipelines ending in one"
        )
    original = np.asarray(sample.single())
    x = np.ascontiguousarray(original, dtype=np.float32)
    if x.ndim != 2:
        raise ConversionError(f"sample must be a 2-D table of rows, got shape {x.shape}")
    classifier = is_classifier(model)
    options = {id(final): {"zipmap": False}} if classifier else None
    try:
        onx = skl2onnx.convert_sklearn(
            model,
            name=path.stem,  # skl2onnx picks a random graph name otherwise
            initial_types=[(INPUT_NAME, FloatTensorType([None, x.shape[1]]))],
            target_opset=TARGET_OPSET,
            options=options,
        )
    except Exception as e:
        raise ConversionError(
            f"skl2onnx cannot convert {type(final).__name__}: {e}. Check that skl2onnx supports "
            "every step of the model, or export it to ONNX yourself and build the .onnx file"
        ) from e
    _dedupe_opsets(onx)
    outputs = [o.name for o in onx.graph.output]

    try:
        reference = _run_original(model, original, outputs, classifier)
    except Exception as e:
        raise ConversionError(f"the original model cannot predict the sample: {e}") from e
    labels = [_plain(c) for c in final.classes_] if classifier else None
    return Converted(
        model_bytes=onx.SerializeToString(),
        model_format="onnx",
        task="classification" if classifier else "regression",
        source_format=f"sklearn ({path.suffix.lower()[1:]})",
        source_sha256=sha256_file(path),
        inputs={INPUT_NAME: x},
        reference=reference,
        labels=labels,
        label_output=outputs[0] if classifier else None,
        converter={
            "scikit-learn": sklearn.__version__,
            "skl2onnx": skl2onnx.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": ort.__version__,
        },
    )


def _run_original(model: Any, rows: np.ndarray, outputs: list[str], classifier: bool) -> Arrays:
    if classifier:
        return {
            outputs[0]: np.asarray(model.predict(rows)),
            outputs[1]: np.asarray(model.predict_proba(rows), dtype=np.float64),
        }
    return {outputs[0]: np.asarray(model.predict(rows), dtype=np.float64).reshape(-1, 1)}


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
