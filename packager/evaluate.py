"""Measuring candidate variants: their outputs on the validation data, scored with
:mod:`packager.metrics`, and their latency at batch 1 on the host.

Place in the design: ``validate`` asks this module for numbers and ``choice`` decides with them.
Latency is measured on this machine for every profile, ARM ones included, with the profile's
thread count (capped at the host's cores): it ranks variants against each other, it does not
predict the device's milliseconds. For ARM profiles the outputs a candidate gave on an emulated
ARM device (``packager.emulated``) are scored exactly like the host's (:func:`score_arm`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Optional

import numpy as np

from packager import metrics
from packager.convert import Arrays
from packager.quantize import batch_rows, fixed_batch, rows, session
from runtime.errors import ConversionError, UsageError

MAX_EVAL_BATCH = 1024


@dataclass(frozen=True)
class EvalData:
    """The rows every candidate is scored on, the original model's outputs on them, and the true
    labels when the user gave them."""

    inputs: Arrays
    reference: Arrays
    task: str
    label_output: Optional[str] = None
    labels: Optional[np.ndarray] = None
    source: str = "sample"

    @property
    def rows(self) -> int:
        return batch_rows(self.inputs)

    def reading(self) -> Optional[metrics.Reading]:
        """How outputs are scored against the labels; None without labels."""
        if self.labels is None:
            return None
        return metrics.reading(self.task, self.label_output, self.reference, self.labels)


def check_labels(labels: np.ndarray, rows: int) -> np.ndarray:
    """One label per row as a 1-D array; raises UsageError when the shape or count is wrong."""
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise UsageError(f"--labels must hold one value per row, got shape {labels.shape}")
    if labels.shape[0] != rows:
        raise UsageError(f"--labels has {labels.shape[0]} rows, the validation data {rows}")
    return labels


@dataclass(frozen=True)
class Scores:
    """One model's numbers on the EvalData: every metric, and the gate's loss against the
    original model (named: accuracy drop, R² drop, label disagreement, 1 - output R²)."""

    metrics: dict[str, Optional[float]]
    loss_name: str
    loss: float
    outputs: Arrays = field(default_factory=dict, repr=False, compare=False)
    """The outputs scored, by name (for comparing them with another machine's)."""


def score_original(data: EvalData) -> dict[str, Optional[float]]:
    """The original model's metrics against the labels (empty without labels)."""
    how = data.reading()
    if how is None or data.labels is None:
        return {}
    return metrics.labelled(data.reference, data.labels, how)


Runner = Callable[[bytes, Arrays], Arrays]
"""Runs a model on every row of its inputs: :func:`run_all` (onnxruntime) or, for TFLite,
``packager.validate_tflite.run_all``."""


def score(
    model_bytes: bytes,
    data: EvalData,
    original: dict[str, Optional[float]],
    run: Optional[Runner] = None,
) -> Scores:
    """Run the model on ``data`` (with ``run``, default onnxruntime) and score it; raises
    ConversionError when it cannot run."""
    return score_outputs((run or run_all)(model_bytes, data.inputs), data, original)


def score_outputs(outputs: Arrays, data: EvalData, original: dict[str, Optional[float]]) -> Scores:
    """Score a model's ``outputs`` on ``data`` (against the original's outputs and the labels);
    raises UsageError when an output the original has is missing."""
    found = metrics.agreement(outputs, data.reference, data.label_output)
    how = data.reading()
    if how is not None and data.labels is not None:
        found.update(metrics.labelled(outputs, data.labels, how))
    name, value = metrics.loss(found, original, how)
    return Scores(found, name, value, dict(outputs))


@dataclass(frozen=True)
class ArmScore:
    """One candidate on the emulated ARM device: the gate's loss measured there (scored like the
    host's), and how far its outputs are from the host's on the same rows (largest absolute
    difference of the numeric outputs; share of equal labels). ``detail`` says why it did not run
    there; the numbers are then None."""

    device: str
    rows: int
    loss: Optional[float] = None
    max_abs_diff: Optional[float] = None
    label_agreement: Optional[float] = None
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "rows": self.rows,
            "loss": _round(self.loss),
            "max_abs_diff": _round(self.max_abs_diff, significant=True),
            "label_agreement": _round(self.label_agreement),
            "detail": self.detail,
        }


def score_arm(
    outputs: Arrays,
    host: Scores,
    data: EvalData,
    original: dict[str, Optional[float]],
    device: str,
) -> ArmScore:
    """Score a candidate's ``outputs`` from the ARM ``device`` like the host's, and compare them
    with the host's own (``host.outputs``)."""
    on_arm = score_outputs(outputs, data, original)
    versus = metrics.agreement(outputs, host.outputs, data.label_output)
    return ArmScore(
        device,
        data.rows,
        on_arm.loss,
        versus.get("max_abs_diff"),
        versus["label_agreement"],
    )


def _round(value: Optional[float], significant: bool = False) -> Optional[float]:
    """Six decimals (six significant digits: differences of a few float32 ulps stay visible)."""
    if value is None:
        return None
    return float(f"{value:.6g}") if significant else round(float(value), 6)


def run_all(model_bytes: bytes, inputs: Arrays) -> Arrays:
    """Every row through the model, in batches its input shapes allow; outputs keyed by name.

    Raises ConversionError when the model cannot run, UsageError when a model with a fixed batch
    size gets a row count that is not a multiple of it.
    """
    n = batch_rows(inputs)
    try:
        sess = session(model_bytes)
        names = [o.name for o in sess.get_outputs()]
        fixed = fixed_batch(sess, inputs)
        if fixed is not None and n % fixed:
            raise UsageError(f"the model takes batches of {fixed} rows; {n} rows do not divide")
        step = fixed or min(n, MAX_EVAL_BATCH)
        parts = [sess.run(names, rows(inputs, i, i + step)) for i in range(0, n, step)]
    except UsageError:
        raise
    except Exception as e:  # onnxruntime raises its own untyped errors
        raise ConversionError(f"a candidate model does not run on the validation data: {e}") from e
    if len(parts) == 1:
        return {name: np.asarray(parts[0][j]) for j, name in enumerate(names)}
    return {name: np.concatenate([p[j] for p in parts]) for j, name in enumerate(names)}


@dataclass(frozen=True)
class LatencySettings:
    """How latency is measured: batch-1 runs of every candidate interleaved round by round (so
    drift in the host's speed hits all alike), after ``warmup`` runs each, until ``max_rounds``
    rounds or ``seconds`` of wall time, but never fewer than ``min_rounds``."""

    seconds: float = 2.0
    max_rounds: int = 300
    min_rounds: int = 10
    warmup: int = 3


@dataclass(frozen=True)
class Latency:
    median_ms: float
    p95_ms: float
    runs: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "p50": round(self.median_ms, 4),
            "p95": round(self.p95_ms, 4),
            "runs": self.runs,
        }


def host_threads(threads: int) -> int:
    """A profile's thread count, capped at this host's cores."""
    return max(1, min(threads, os.cpu_count() or 1))


def measure_latency(
    models: dict[str, bytes], inputs: Arrays, threads: int, settings: LatencySettings
) -> dict[str, Latency]:
    """Median and 95th percentile latency of each model on the first row of ``inputs`` (the
    first batch, for a model with a fixed batch size).

    Raises ConversionError when a model cannot be loaded or run.
    """
    try:
        sessions = {mode: session(data, host_threads(threads)) for mode, data in models.items()}
        feed = rows(inputs, 0, fixed_batch(next(iter(sessions.values())), inputs) or 1)
        runs = {mode: partial(sess.run, None, feed) for mode, sess in sessions.items()}
        return interleaved(runs, settings)
    except Exception as e:  # onnxruntime raises its own untyped errors
        raise ConversionError(f"a candidate model cannot be timed: {e}") from e


def interleaved(
    runs: Mapping[str, Callable[[], object]], settings: LatencySettings
) -> dict[str, Latency]:
    """Time each of ``runs`` (one batch-1 inference each) as :class:`LatencySettings` says:
    warm-up, then rounds that visit every run in a rotating order. The runs' errors pass
    through."""
    order = list(runs)
    for mode in order:
        for _ in range(settings.warmup):
            runs[mode]()
    times: dict[str, list[float]] = {mode: [] for mode in order}
    start = time.perf_counter()
    for r in range(settings.max_rounds):
        if r >= settings.min_rounds and time.perf_counter() - start > settings.seconds:
            break
        shift = r % len(order)
        for mode in order[shift:] + order[:shift]:
            began = time.perf_counter()
            runs[mode]()
            times[mode].append(time.perf_counter() - began)
    return {
        mode: Latency(float(np.median(t)) * 1000, float(np.percentile(t, 95)) * 1000, len(t))
        for mode, t in times.items()
    }
