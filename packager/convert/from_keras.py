"""Keras models → TFLite through TensorFlow's ``TFLiteConverter`` (optional extra
``edgeship[tensorflow]``; TensorFlow is imported here only, when a Keras model is built).

Accepted: a whole Keras model with one input and one output, saved as ``.keras`` (loaded in
Keras's safe mode, which refuses to deserialize Lambda-layer code) or ``.h5`` (legacy HDF5). The
packaged model is the plain float conversion; its reference is the Keras model's own predictions
on the sample, so parity measures the conversion. The quantized variants are made from the Keras
model by the same converter (``Converted.variants``), for ``packager.validate_tflite`` to run,
score and time with LiteRT:

- ``dynamic``: ``Optimize.DEFAULT`` without data: int8 weights, float activations.
- ``static``: full-integer quantization: ``Optimize.DEFAULT``, a representative dataset of
  calibration rows (``--calibration``, else the sample), ``supported_ops=[TFLITE_BUILTINS_INT8]``
  (conversion fails rather than leave an op in float). Inputs and outputs stay float32: the
  converter puts one QUANTIZE op in front and one DEQUANTIZE op behind the int8 graph. Requests,
  golden vectors, the reference profile and drift, explanations and the validation data all stay
  in real units, and no client has to know a scale and zero point; the two ops cost next to
  nothing. Whoever needs int8 at the interface (a microcontroller) converts to ``.tflite``
  themselves and builds that file: edgeship quantizes float samples for int8 inputs.
- ``fp16``: float16 weights (``target_spec.supported_types=[float16]``).
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any, Optional, cast

import numpy as np

from packager.convert import Arrays, Converted, Warn, sha256_file
from packager.convert.from_tflite import sample_inputs
from packager.data import Dataset
from packager.runner import packaged
from runtime.backends.litert import LiteRTBackend, interpreter_version
from runtime.errors import BackendUnavailableError, ConversionError, ModelError

INSTALL_HINT = "Keras models need the tensorflow extra: pip install 'edgeship[tensorflow]'"
CALIBRATION_ROWS = 512
"""At most this many rows feed the converter's representative dataset, one at a time."""
CONVERTER = "tf.lite.TFLiteConverter.from_keras_model"


def _import_tensorflow() -> Any:
    # TensorFlow's C++ start-up notes (CPU features, oneDNN) go to stderr before any Python
    # logger can stop them; a user's own setting wins.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        with _quiet():
            import tensorflow as tf
    except ImportError as e:
        raise ConversionError(f"{INSTALL_HINT} ({e})") from e
    return tf


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Keep TensorFlow's prints, warnings and native log lines (written straight to file
    descriptor 2) off the user's terminal: library code never prints. Errors still carry the
    converter's message."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    yield
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def _load(tf: Any, path: Path, warn: Warn) -> Any:
    if path.suffix.lower() == ".h5":
        warn(f"{path.name}: .h5 files can hold Lambda-layer code; only build models you trust")
    try:
        with _quiet():
            model = tf.keras.models.load_model(path, compile=False)
    except Exception as e:
        detail = " ".join(str(e).split())[:300]
        raise ConversionError(
            f"cannot load {path.name} as a Keras model ({detail}); save the whole model with "
            "model.save('model.keras')"
        ) from e
    inputs, outputs = len(model.inputs or ()), len(model.outputs or ())
    if inputs != 1 or outputs != 1:
        raise ConversionError(
            f"{path.name} has {inputs} inputs and {outputs} outputs; edgeship converts Keras "
            "models with one of each: convert others to .tflite yourself and build that file"
        )
    return model


def _tflite(tf: Any, model: Any, mode: str, calibration: Optional[np.ndarray] = None) -> bytes:
    """The TFLite conversion of ``model`` for ``mode`` (module docstring); ``static`` needs
    ``calibration`` rows. Raises ConversionError with the converter's reason."""
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if mode != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    elif mode == "static":
        if calibration is None or not len(calibration):
            raise ConversionError("full-integer quantization needs calibration rows")
        rows = calibration[:CALIBRATION_ROWS]

        def representative() -> Iterator[list[np.ndarray]]:
            for row in rows:
                yield [row[None]]

        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    try:
        with _quiet():
            return bytes(converter.convert())
    except Exception as e:
        detail = " ".join(str(e).split())[:300]
        raise ConversionError(f"the TFLite converter failed ({mode}): {detail}") from e


def _versions(tf: Any) -> dict[str, str]:
    found = {"converter": CONVERTER, "tensorflow": str(tf.__version__)}
    with contextlib.suppress(metadata.PackageNotFoundError):
        found["keras"] = metadata.version("keras")
    with contextlib.suppress(BackendUnavailableError):
        found.update(interpreter_version())
    return found


def convert_keras(path: Path, sample: Dataset, warn: Warn) -> Converted:
    """Convert the Keras model at ``path`` to a float TFLite model; the reference is the Keras
    model's own output on the sample, and ``variants`` makes the quantized ones.

    Raises ConversionError when TensorFlow is not installed (with the install command), the file
    is not a Keras model with one input and one output, or the converter fails;
    BackendUnavailableError when no LiteRT interpreter is installed; UsageError when the sample
    does not fit the model's input.
    """
    tf = _import_tensorflow()
    model = _load(tf, path, warn)
    dtype = np.dtype(str(model.inputs[0].dtype))
    float_model = _tflite(tf, model, "none")
    try:
        with _quiet(), packaged(float_model, "tflite") as backend:
            inputs = sample_inputs(cast(LiteRTBackend, backend), sample, warn)
            output = backend.outputs[0].name
    except ModelError as e:
        raise ConversionError(f"LiteRT cannot load the converted {path.name}: {e}") from e
    [name] = inputs
    try:
        with _quiet():
            predicted = model.predict(inputs[name], batch_size=256, verbose=0)
    except Exception as e:
        raise ConversionError(f"the Keras model does not run on the sample: {e}") from e

    def variants(mode: str, calibration: Arrays) -> bytes:
        return _tflite(tf, model, mode, np.asarray(calibration[name], dtype=dtype))

    return Converted(
        model_bytes=float_model,
        model_format="tflite",
        task="other",
        source_format=f"keras ({path.suffix.lower()[1:]})",
        source_sha256=sha256_file(path),
        inputs=inputs,
        reference={output: np.asarray(predicted)},
        converter=_versions(tf),
        variants=variants,
    )
