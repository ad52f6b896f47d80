"""The validation gate for TFLite models, measured with LiteRT: the interpreter a device runs them
with.

Place in the design: ``build`` → here (TFLite) or ``validate.Gate`` (ONNX) → ``validate.settle``
(choose, report, enforce). A ``.tflite`` file ships as given: its one candidate, the file itself,
is scored on the validation data (or the sample) against the labels and against the original's
outputs, and timed on this host. A model converted to TFLite here (Keras:
``packager.convert.from_keras``) has the candidates its profile allows: the converter makes each
from the source model, and each is loaded and run with LiteRT before it is scored and timed, as
ONNX candidates are.

Integer outputs quantized per tensor (a scale and a zero point) are scored as the real numbers
they stand for, the original's outputs too: metrics compare values, not codes.
"""

from __future__ import annotations

import dataclasses
import hashlib
from contextlib import ExitStack
from functools import partial
from typing import Any, Optional, cast

import numpy as np

from devices import Profile
from packager.convert import Arrays, Converted
from packager.convert.from_tflite import sample_inputs
from packager.data import Dataset
from packager.evaluate import (
    MAX_EVAL_BATCH,
    EvalData,
    Latency,
    LatencySettings,
    Scores,
    host_threads,
    interleaved,
    score,
    score_original,
)
from packager.quantize import FAILED, NOT_QUANTIZABLE, OK, QuantSettings, Variant, batch_rows, rows
from packager.runner import packaged
from packager.validate import (
    REQUESTS,
    GateOptions,
    Measured,
    Outcome,
    Report,
    Table,
    candidate_modes,
    score_variants,
    settle,
)
from runtime.backends.base import Backend
from runtime.backends.litert import LiteRTBackend, interpreter_class
from runtime.errors import ConversionError, EdgeshipError, UsageError

SETTINGS: dict[str, dict[str, Any]] = {
    "none": {},
    "dynamic": {"converter": "tflite", "weights": "int8", "activations": "float32"},
    "static": {
        "converter": "tflite",
        "weights": "int8",
        "activations": "int8",
        "inputs_outputs": "float32",
    },
    "fp16": {"converter": "tflite", "weights": "float16"},
}
"""What each TFLite mode is, as the manifest records it (``packager.convert.from_keras``)."""
AS_GIVEN = "a .tflite file ships as given (quantize it when converting); measured with LiteRT"
_QUANTIZED_TYPES = {"dynamic": ("int8",), "static": ("int8",), "fp16": ("float16",)}


class TFLiteSettings:
    """``validate.Settings`` for TFLite variants."""

    def for_mode(self, mode: str) -> dict[str, Any]:
        return dict(SETTINGS.get(mode, {}))


def _fixed_batch(backend: Backend, inputs: Arrays) -> Optional[int]:
    n = batch_rows(inputs)
    for spec in backend.inputs:
        array = inputs.get(spec.name)
        per_row = array is not None and array.ndim > 0 and array.shape[0] == n
        if per_row and spec.shape and spec.shape[0] is not None:
            return spec.shape[0]
    return None


def _real(outputs: Arrays, quantization: dict[str, tuple[float, int]]) -> Arrays:
    """Integer outputs quantized per tensor as the real numbers they stand for."""
    return {
        name: (v.astype(np.float64) - quantization[name][1]) * quantization[name][0]
        if name in quantization and v.dtype.kind in "iu"
        else v
        for name, v in outputs.items()
    }


def run_all(model_bytes: bytes, inputs: Arrays) -> Arrays:
    """Every row through the TFLite model with LiteRT, in batches its inputs allow; quantized
    outputs as real numbers. Raises ConversionError when it cannot run, UsageError when a model
    with a fixed batch size gets a row count that is not a multiple of it."""
    n = batch_rows(inputs)
    try:
        with packaged(model_bytes, "tflite") as backend:
            fixed = _fixed_batch(backend, inputs)
            if fixed is not None and n % fixed:
                raise UsageError(f"the model takes batches of {fixed} rows; {n} rows do not divide")
            step = fixed or min(n, MAX_EVAL_BATCH)
            parts = [backend.run(rows(inputs, i, i + step)) for i in range(0, n, step)]
            quantization = cast(LiteRTBackend, backend).output_quantization
    except UsageError:
        raise
    except EdgeshipError as e:
        raise ConversionError(f"a TFLite candidate does not run on the validation data: {e}") from e
    names = list(parts[0])
    joined = {name: np.concatenate([p[name] for p in parts]) for name in names}
    return _real(joined, quantization)


def measure_latency(
    models: dict[str, bytes], inputs: Arrays, threads: int, settings: LatencySettings
) -> dict[str, Latency]:
    """Median and 95th percentile latency of each TFLite model in LiteRT on the first row of
    ``inputs`` (its first batch, for a fixed batch size). Raises ConversionError."""
    try:
        with ExitStack() as stack:
            backends = {
                mode: stack.enter_context(packaged(data, "tflite", host_threads(threads)))
                for mode, data in models.items()
            }
            feed = rows(inputs, 0, _fixed_batch(next(iter(backends.values())), inputs) or 1)
            return interleaved({m: partial(b.run, feed) for m, b in backends.items()}, settings)
    except EdgeshipError as e:
        raise ConversionError(f"a TFLite candidate cannot be timed: {e}") from e


def _not_quantized(mode: str, model_bytes: bytes) -> str:
    """Why ``model_bytes`` is not really a ``mode`` variant; empty when it is."""
    interpreter = interpreter_class()(model_content=model_bytes)
    types = {np.dtype(d["dtype"]).name for d in interpreter.get_tensor_details()}
    if types & set(_QUANTIZED_TYPES[mode]):
        return ""
    return (
        f"the TFLite converter left every tensor in {', '.join(sorted(types))} (dynamic range "
        "quantization skips weights smaller than 1024 values)"
        if mode == "dynamic"
        else f"the TFLite converter wrote no {_QUANTIZED_TYPES[mode][0]} tensors"
    )


class TFLiteGate:
    """Candidates, measurements and decisions for every target of one TFLite build."""

    def __init__(
        self,
        converted: Converted,
        calibration: Optional[Dataset],
        data: EvalData,
        options: GateOptions,
        progress: Report = lambda _: None,
    ) -> None:
        if options.quantize not in REQUESTS:
            raise UsageError(f"--quantize must be one of {', '.join(REQUESTS)}")
        self._converted = converted
        self._calibration_data = calibration
        self._calibration: Optional[Arrays] = None
        self._options = options
        self._progress = progress
        with packaged(converted.model_bytes, "tflite") as backend:
            quantization = cast(LiteRTBackend, backend).output_quantization
        self._data = dataclasses.replace(data, reference=_real(data.reference, quantization))
        self._original = score_original(self._data)
        self._variants = {"none": Variant("none", OK, model_bytes=converted.model_bytes)}
        self._scores: dict[str, Scores] = {}

    def run(self, profile: Profile, table: Table = lambda _p, _r: None) -> Outcome:
        """Choose the variant for ``profile``; raises like ``validate.Gate.run``, and UsageError
        when a quantized mode is asked of a ``.tflite`` file (it ships as given)."""
        requested = self._options.quantize
        if self._converted.variants is None:
            if requested not in ("auto", "none"):
                raise UsageError(
                    f"--quantize {requested}: a .tflite file ships as given; quantize it when "
                    "you convert it to TFLite, or build from the Keras model"
                )
            modes: tuple[str, ...] = ("none",)
        else:
            modes = candidate_modes(profile, QuantSettings.from_profile(profile), requested)
        variants = {mode: self._variant(mode) for mode in modes}
        scores = score_variants(variants, self._score)
        usable = {m: v.model_bytes for m, v in variants.items() if v.model_bytes is not None}
        self._progress(f"timing {', '.join(usable)} with LiteRT on this host for {profile.name}")
        latency = measure_latency(usable, self._data.inputs, profile.threads, self._options.latency)
        measured = Measured(variants, scores, latency, len(self._converted.model_bytes))
        outcome = settle(
            profile, measured, self._data, self._original, self._options, TFLiteSettings(), table
        )
        if self._converted.variants is None:
            return dataclasses.replace(outcome, reason=AS_GIVEN)
        return outcome

    def _variant(self, mode: str) -> Variant:
        if mode not in self._variants:
            self._progress(f"making the {mode} TFLite variant")
            self._variants[mode] = self._make(mode)
        return self._variants[mode]

    def _make(self, mode: str) -> Variant:
        maker = self._converted.variants
        if maker is None:
            raise ValueError(f"no maker for the {mode} variant of a .tflite file")
        try:
            model_bytes = maker(mode, self._calibration_rows())
            missing = _not_quantized(mode, model_bytes)
        except (ConversionError, ValueError, RuntimeError) as e:
            return Variant(mode, FAILED, " ".join(str(e).split())[:300])
        if missing:
            return Variant(mode, NOT_QUANTIZABLE, missing)
        try:
            run_all(model_bytes, rows(self._data.inputs, 0, 8))
        except (ConversionError, UsageError) as e:
            return Variant(mode, FAILED, str(e))
        return Variant(mode, OK, model_bytes=model_bytes)

    def _calibration_rows(self) -> Arrays:
        if self._calibration is None:
            if self._calibration_data is None:
                self._calibration = self._converted.inputs
            else:
                with packaged(self._converted.model_bytes, "tflite") as backend:
                    self._calibration = sample_inputs(
                        cast(LiteRTBackend, backend), self._calibration_data, lambda _: None
                    )
        return self._calibration

    def _score(self, model_bytes: bytes) -> Scores:
        digest = hashlib.sha256(model_bytes).hexdigest()
        if digest not in self._scores:
            self._scores[digest] = score(model_bytes, self._data, self._original, run_all)
        return self._scores[digest]
