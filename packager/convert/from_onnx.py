"""ONNX models as third parties ship them: checked, signature read, sample matched to inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import external_data_helper

from packager.convert import Arrays, Converted, key_sample, sha256_file
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
    arrays = key_sample([s.name for s in specs], sample)
    return {
        s.name: np.ascontiguousarray(arrays[s.name].astype(numpy_dtype(s.dtype))) for s in specs
    }


def run_session(session: ort.InferenceSession, inputs: Arrays) -> Arrays:
    names = [o.name for o in session.get_outputs()]
    try:
        return dict(zip(names, session.run(names, inputs)))
    except Exception as e:
        raise ConversionError(f"the model does not run on the sample: {e}") from e


MIN_OPSET = 11
MAX_INLINE_BYTES = 2**31 - 1  # protobuf's limit for one serialized model


def load_onnx(path: Path) -> onnx.ModelProto:
    """Load and check a model, pulling in external data files that sit beside it.

    Raises ConversionError for an invalid model, missing external data, an opset below 11, or a
    model too large to hold in one file.
    """
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise ConversionError(f"{path.name} is not an ONNX model: {e}") from e
    external = {
        entry.value
        for tensor in external_data_helper._get_all_tensors(model)
        if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    }
    missing = sorted(name for name in external if not (path.parent / name).is_file())
    if missing:
        raise ConversionError(f"{path.name}: external data file(s) missing: {', '.join(missing)}")
    if external:
        external_data_helper.load_external_data_for_model(model, str(path.parent))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is not None and opset < MIN_OPSET:
        raise ConversionError(
            f"{path.name} uses opset {opset}; edgeship supports opset {MIN_OPSET} and later "
            "(upgrade it with onnx.version_converter.convert_version)"
        )
    if model.ByteSize() > MAX_INLINE_BYTES:
        raise ConversionError(f"{path.name}: larger than 2 GB once its external data is inlined")
    try:
        onnx.checker.check_model(model)
    except Exception as e:
        raise ConversionError(f"{path.name} is not a valid ONNX model: {e}") from e
    return model


def fix_input_shapes(
    model: onnx.ModelProto,
    shapes: dict[str, tuple[int, ...]],
    *,
    keep_batch: bool = False,
    source: str = "--input-shape",
) -> None:
    """Replace dynamic dimensions of the named inputs with fixed sizes; with ``keep_batch`` the
    first dimension is left as it is.

    Raises UsageError for an unknown input, a rank mismatch, or a fixed dim given another size.
    """
    graph_inputs = {i.name: i for i in model.graph.input}
    for name, shape in shapes.items():
        if name not in graph_inputs:
            raise UsageError(f"{source} {name}: the model has no input {name!r}")
        dims = graph_inputs[name].type.tensor_type.shape.dim
        if len(dims) != len(shape):
            raise UsageError(f"{source} {name}: the input has rank {len(dims)}, not {len(shape)}")
        for axis, (dim, size) in enumerate(zip(dims, shape)):
            if keep_batch and axis == 0:
                continue
            if dim.HasField("dim_value"):
                if dim.dim_value != size:
                    raise UsageError(
                        f"{source} {name}: dimension {axis} is fixed at {dim.dim_value}, not {size}"
                    )
                continue
            dim.Clear()
            dim.dim_value = size


def shapes_from_sample(model: onnx.ModelProto, sample: Dataset) -> dict[str, tuple[int, ...]]:
    """Sizes for dynamic non-batch dimensions taken from the sample (the batch stays dynamic)."""
    initializers = {i.name for i in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in initializers]
    arrays = sample.arrays
    if None in arrays and len(graph_inputs) == 1:
        arrays = {graph_inputs[0].name: arrays[None]}
    shapes = {}
    for graph_input in graph_inputs:
        array = arrays.get(graph_input.name)
        dims = graph_input.type.tensor_type.shape.dim
        if array is not None and array.ndim == len(dims) >= 2:
            shapes[graph_input.name] = tuple(int(n) for n in array.shape)
    return shapes


def convert_onnx(
    path: Path, sample: Dataset, input_shapes: dict[str, tuple[int, ...]] | None = None
) -> Converted:
    """Load an ONNX model as shipped; dynamic non-batch dims are fixed from ``input_shapes``
    (``--input-shape``) or else from the sample."""
    model = load_onnx(path)
    explicit = input_shapes or {}
    fix_input_shapes(model, explicit)
    from_sample = shapes_from_sample(model, sample)
    fix_input_shapes(
        model,
        {k: v for k, v in from_sample.items() if k not in explicit},
        keep_batch=True,
        source="the sample's shape for",
    )
    data = model.SerializeToString()
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
