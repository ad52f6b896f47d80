"""TFLite models: checked, signature read with LiteRT, sample matched to the inputs.

The packaged model is the source file unchanged. Its reference outputs come from running the source
with the LiteRT backend a device uses (``runtime.backends.litert``), so for an unchanged file parity
is exact, and a later step that rewrites the model (quantization) is measured against the source.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import cast

import numpy as np

from packager.convert import Arrays, Converted, Warn, cast_sample, check_shape, key_sample
from packager.data import Dataset
from packager.runner import packaged
from runtime.backends.litert import LiteRTBackend, interpreter_version
from runtime.errors import BackendUnavailableError, ConversionError, ModelError

FILE_IDENTIFIER = b"TFL3"
"""The TFLite schema's flatbuffer file identifier, at bytes 4-8 of every .tflite file."""


def is_tflite(data: bytes) -> bool:
    """Whether ``data`` starts like a TFLite flatbuffer (root offset, then the identifier)."""
    return len(data) >= 8 and data[4:8] == FILE_IDENTIFIER


def sample_inputs(backend: LiteRTBackend, sample: Dataset, warn: Warn) -> Arrays:
    """Key the sample by the model's input names, check shapes, and cast to the input dtypes.

    A float sample for a quantized integer input is quantized with that input's scale and zero
    point (and ``warn`` says so), since a plain cast would feed the model the wrong numbers.
    Raises UsageError when the sample does not fit the inputs.
    """
    quantization = backend.input_quantization
    arrays = key_sample([s.name for s in backend.inputs], sample)
    result = {}
    for spec in backend.inputs:
        array = np.asarray(arrays[spec.name])
        check_shape(spec, array)
        if (
            spec.name in quantization
            and array.dtype.kind == "f"
            and spec.dtype in ("int8", "uint8")
        ):
            scale, zero_point = quantization[spec.name]
            info = np.iinfo(np.dtype(spec.dtype))
            warn(
                f"input {spec.name} is {spec.dtype}-quantized (scale {scale:g}, zero point "
                f"{zero_point}): the float sample was quantized with those parameters"
            )
            array = np.clip(np.round(array / scale) + zero_point, info.min, info.max)
        result[spec.name] = cast_sample(spec, array)
    return result


def convert_tflite(path: Path, sample: Dataset, warn: Warn) -> Converted:
    """Package the ``.tflite`` file at ``path`` as is, with its reference outputs on the sample.

    Raises ConversionError when the file is not a TFLite model LiteRT can load and run,
    BackendUnavailableError when no LiteRT interpreter is installed, UsageError when the sample
    does not fit the model's inputs.
    """
    data = path.read_bytes()
    if not is_tflite(data):
        raise ConversionError(
            f"{path.name} is not a TFLite model (no {FILE_IDENTIFIER.decode()} flatbuffer "
            "identifier); give a .tflite file written by a TFLite/LiteRT converter"
        )
    try:
        # Run the very bytes that will be packaged, not the file again (it could change).
        with packaged(data, "tflite") as backend:
            inputs = sample_inputs(cast(LiteRTBackend, backend), sample, warn)
            outputs = [s.name for s in backend.outputs]
            reference = backend.run(inputs)
    except BackendUnavailableError:
        raise
    except ModelError as e:
        raise ConversionError(
            f"{path.name}: LiteRT cannot load or run it on the sample: {e}"
        ) from e
    label_output = "label" if "label" in outputs and "probabilities" in outputs else None
    return Converted(
        model_bytes=data,
        model_format="tflite",
        task="classification" if label_output else "other",
        source_format="tflite",
        source_sha256=hashlib.sha256(data).hexdigest(),
        inputs=inputs,
        reference=reference,
        label_output=label_output,
        converter=interpreter_version(),
    )
