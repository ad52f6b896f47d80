"""scikit-learn estimators and Pipelines → ONNX through skl2onnx.

Classifiers come out with plain outputs: ``label`` and a ``probabilities`` matrix (no ZipMap), or,
for classifiers without ``predict_proba`` (``LinearSVC``, ``SVC(probability=False)``), ``label``
and ``scores``, the decision function. Regressors come out with ``variable``. The original
estimator is kept as the parity reference. Which families are tested: ``docs/formats.md``.
"""

from __future__ import annotations

import contextlib
import pickle
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

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
SCORES = "scores"
"""The name of a classifier's second output when it holds decision scores, not probabilities."""
VALUE = "variable"
"""The name of a regressor's output."""
WHAT_TO_DO = (
    "replace it with an estimator skl2onnx converts (docs/formats.md lists the tested ones), "
    "register a converter for it with skl2onnx.update_registered_converter, or export the model "
    "to ONNX yourself and build the .onnx file"
)
_CLASS = re.compile(r"<class '([\w.]+)'>")


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


def _options(final: Any) -> Optional[dict[int, dict[str, Any]]]:
    """``zipmap: False`` for the final classifier when its converter has that option. Some
    (``LinearSVC``) never make a ZipMap and refuse the option; they get an empty entry, because
    without one skl2onnx's Pipeline parser adds ``zipmap: True`` itself, and then refuses it."""
    from skl2onnx.common._registration import get_converter

    try:
        allowed = get_converter(skl2onnx.get_model_alias(type(final))).get_allowed_options()
    except (RuntimeError, ValueError):
        return None  # no converter: skl2onnx's own error says so, and is reworded below
    return {id(final): {"zipmap": False} if "zipmap" in (allowed or {}) else {}}


@contextlib.contextmanager
def _upstream_fixes() -> Iterator[None]:
    """Work around skl2onnx 1.20 writing ``False`` into the integer attribute
    ``nodes_missing_value_tracks_true`` for HistGradientBoosting leaves: recent protobuf (7.x)
    refuses a bool there ("Expected an int, got a boolean"), so those models failed to convert."""
    from skl2onnx.common import tree_ensemble

    original = tree_ensemble.add_node

    def add_node(*args: Any, **kwargs: Any) -> Any:
        flag = kwargs.get("nodes_missing_value_tracks_true")
        if isinstance(flag, (bool, np.bool_)):
            kwargs["nodes_missing_value_tracks_true"] = int(flag)
        return original(*args, **kwargs)

    tree_ensemble.add_node = add_node
    try:
        yield
    finally:
        tree_ensemble.add_node = original


def _unsupported(model: Any, error: Exception) -> ConversionError:
    """The conversion failure as a ConversionError naming the estimator skl2onnx stopped at (and
    its step in a Pipeline), with what to do."""
    final = type(_final_step(model)).__name__
    found = _CLASS.search(str(error))
    if found is None:
        detail = " ".join(str(error).split())[:400]
        return ConversionError(
            f"skl2onnx cannot convert {final}: {detail}. Check that skl2onnx supports every step "
            f"of the model; else {WHAT_TO_DO}"
        )
    name = found.group(1).rsplit(".", 1)[-1]
    steps = []
    if isinstance(model, Pipeline):
        params = model.get_params(deep=True)
        steps = [k for k, v in params.items() if type(v).__name__ == name]
    where = f" (step {steps[0]!r})" if steps else ""
    return ConversionError(f"skl2onnx has no converter for {name}{where}; {WHAT_TO_DO}")


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
    try:
        with _upstream_fixes():
            onx = skl2onnx.convert_sklearn(
                model,
                name=path.stem,  # skl2onnx picks a random graph name otherwise
                initial_types=[(INPUT_NAME, FloatTensorType([None, x.shape[1]]))],
                target_opset=TARGET_OPSET,
                options=_options(final) if classifier else None,
            )
    except Exception as e:
        raise _unsupported(model, e) from e
    _dedupe_opsets(onx)
    proba = classifier and hasattr(model, "predict_proba")
    if classifier and not proba:
        _rename_output(onx, onx.graph.output[1].name, SCORES)
    elif not classifier:
        _rename_output(onx, onx.graph.output[0].name, VALUE)  # skl2onnx may say variable1
    outputs = [o.name for o in onx.graph.output]
    converted = _check_runs(onx, x, type(final).__name__)

    columns = converted[1].shape[1] if len(converted) > 1 and converted[1].ndim == 2 else 0
    try:
        reference = _run_original(model, original, outputs, classifier, proba, columns)
    except Exception as e:
        raise ConversionError(f"the original model cannot predict the sample: {e}") from e
    if classifier and not proba:
        _orient_scores(onx, reference[SCORES], converted[1])
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


def _rename_output(model: onnx.ModelProto, old: str, new: str) -> None:
    """Call graph output ``old`` ``new``; a value already called ``new`` inside the graph (a
    Pipeline step's output, say) gets a fresh name first."""
    if old == new:
        return
    graph = model.graph
    used = {n for node in graph.node for n in (*node.input, *node.output)}
    used |= {v.name for v in (*graph.input, *graph.output, *graph.value_info)}
    used |= {t.name for t in graph.initializer}
    if new in used:
        fresh = next(f"{new}_{i}" for i in range(1, len(used) + 2) if f"{new}_{i}" not in used)
        _rename(graph, new, fresh)
    _rename(graph, old, new)


def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if i == old else i for i in node.input]
        node.output[:] = [new if o == old else o for o in node.output]
    for value in (*graph.input, *graph.output, *graph.value_info, *graph.initializer):
        if value.name == old:
            value.name = new


def _check_runs(model: onnx.ModelProto, rows: np.ndarray, estimator: str) -> list[np.ndarray]:
    """The converted model's outputs on ``rows``. ConversionError when onnxruntime cannot load
    or run it: skl2onnx writes some estimators (e.g. GaussianProcessClassifier) with ops that
    onnxruntime's CPU build lacks."""
    try:
        session = ort.InferenceSession(
            model.SerializeToString(), providers=["CPUExecutionProvider"]
        )
        return [np.asarray(o) for o in session.run(None, {INPUT_NAME: rows})]
    except Exception as e:
        detail = " ".join(str(e).split())[:300]
        raise ConversionError(
            f"skl2onnx converted {estimator}, but onnxruntime cannot run the result ({detail}); "
            f"{WHAT_TO_DO}"
        ) from e


def _orient_scores(model: onnx.ModelProto, want: np.ndarray, got: np.ndarray) -> None:
    """Make a binary classifier's two score columns read (-d, d), as argmax and ROC-AUC expect.

    skl2onnx 1.20 writes binary ``SVC(probability=False)`` scores as (d, -d): the class-1
    column falls as the class-1 decision value rises. A ``Neg`` node after the scores turns them
    around; a layout that already agrees with the original is left alone.
    """
    if want.ndim != 2 or want.shape[1] != 2 or got.shape != want.shape:
        return
    if np.mean(np.sign(got[:, 1]) == np.sign(want[:, 1])) >= 0.5:
        return
    raw = f"{SCORES}_reversed"
    _rename_output(model, SCORES, raw)
    model.graph.output[1].name = SCORES
    model.graph.node.append(onnx.helper.make_node("Neg", [raw], [SCORES], name="orient_scores"))


def _run_original(
    model: Any, rows: np.ndarray, outputs: list[str], classifier: bool, proba: bool, columns: int
) -> Arrays:
    if not classifier:
        return {outputs[0]: np.asarray(model.predict(rows), dtype=np.float64).reshape(-1, 1)}
    if proba:
        scores = np.asarray(model.predict_proba(rows), dtype=np.float64)
    else:
        scores = np.asarray(model.decision_function(rows), dtype=np.float64)
        if scores.ndim == 1:
            # binary: skl2onnx writes one column (LinearSVC) or one per class (SVC)
            scores = scores[:, None] if columns == 1 else np.column_stack([-scores, scores])
    return {outputs[0]: np.asarray(model.predict(rows)), outputs[1]: scores}


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
