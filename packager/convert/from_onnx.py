"""ONNX models as third parties ship them: checked, signature read, sample matched to inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from packager.convert import Arrays, Converted, sha256_file
from packager.data import Dataset
from runtime.backends.base import numpy_dtype
from runtime.backends.onnx import spec_from_ort
from runtime.errors import ConversionError, UsageError


def onnx_session(model_bytes: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise ConversionError(f"onnxruntime cannot load the model: {e}") from e


def sample_inputs(session: ort.InferenceSession, sample: Dataset) -> Arrays:
    """Key the sample by the model's input names and cast it to their dtypes."""
    specs = [spec_from_ort(a) for a in session.get_inputs()]
    if None in sample.arrays:
        if len(specs) != 1:
            names = ", ".join(s.name for s in specs)
            raise UsageError(f"the model has several inputs ({names}): give the sample as .npz")
        arrays = {specs[0].name: sample.single()}
    else:
        arrays = {str(k): v for k, v in sample.arrays.items()}
        missing = {s.name for s in specs} - set(arrays)
        if missing:
            raise UsageError(f"the sample lacks input(s) {', '.join(sorted(missing))}")
    return {
        s.name: np.ascontiguousarray(arrays[s.name].astype(numpy_dtype(s.dtype))) for s in specs
    }


def run_session(session: ort.InferenceSession, inputs: Arrays) -> Arrays:
    names = [o.name for o in session.get_outputs()]
    try:
        return dict(zip(names, session.run(names, inputs)))
    except Exception as e:
        raise ConversionError(f"the model does not run on the sample: {e}") from e


def convert_onnx(path: Path, sample: Dataset) -> Converted:
    data = path.read_bytes()
    try:
        model = onnx.load_from_string(data)
        onnx.checker.check_model(model)
    except Exception as e:
        raise ConversionError(f"{path.name} is not a valid ONNX model: {e}") from e
    session = onnx_session(data)
    inputs = sample_inputs(session, sample)
    outputs = [o.name for o in session.get_outputs()]
    label_output = "label" if "label" in outputs and "probabilities" in outputs else None
    return Converted(
        model_bytes=data,
        model_format="onnx",
        task="classification" if label_output else "other",
        source_format="onnx",
        source_sha256=sha256_file(path),
        inputs=inputs,
        reference=run_session(session, inputs),
        label_output=label_output,
        converter={"onnx": onnx.__version__, "onnxruntime": ort.__version__},
    )
