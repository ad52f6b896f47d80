"""PyTorch models → ONNX through ``torch.onnx.export`` (optional extra ``edgeship[torch]``).

Accepted: an exported program (``.pt2``, written by ``torch.export.save``; preferred) or a whole
``nn.Module`` pickled by ``torch.save`` (``.pt``; loading it runs code, so the user is warned).
Inputs are named from the sample: a single array feeds the module's one input, called ``input``;
an ``.npz`` names the ``forward`` arguments. The batch dimension is exported as dynamic where the
model allows it. The reference is the torch module's own output on the sample.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import warnings
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from packager.convert import (
    Arrays,
    Converted,
    Warn,
    cast_sample,
    check_shape,
    key_sample,
    sha256_file,
)
from packager.data import Dataset
from runtime.errors import ConversionError, UsageError
from runtime.manifest import DTYPES, TensorSpec

INPUT_NAME = "input"
OPSET = 18
"""ONNX opset of the exported model: the dynamo exporter's lowest, run by onnxruntime ≥ 1.14."""
INSTALL_HINT = "PyTorch models need the torch extra: pip install 'edgeship[torch]'"


def _import_torch() -> Any:
    try:
        import onnxscript  # noqa: F401 - the dynamo exporter needs it; fail early and clearly
        import torch
    except ImportError as e:
        raise ConversionError(f"{INSTALL_HINT} ({e})") from e
    return torch


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Keep the exporter's progress prints, warnings and log lines off the user's terminal:
    library code never prints (errors still carry the exporter's message)."""
    logger = logging.getLogger("torch")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _load(torch: Any, path: Path, warn: Warn) -> tuple[Any, Any]:
    """``(what to export, module to call)`` for the file at ``path``."""
    if path.suffix.lower() == ".pt2":
        try:
            with _quiet():
                program = torch.export.load(path)
        except Exception as e:
            raise ConversionError(
                f"{path.name} is not a torch.export program (save one with torch.export.save; "
                f"AOTInductor packages cannot be converted): {e}"
            ) from e
        return program, program.module()
    warn(f"{path.name}: .pt files run code when loaded; only build models you trust")
    try:
        with _quiet():
            module = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise ConversionError(f"cannot load {path.name} with torch.load: {e}") from e
    if not isinstance(module, torch.nn.Module):
        hint = (
            "it holds a state_dict (weights only): rebuild the module, load the weights, and "
            "save the module with torch.save(model) or export it with torch.export (.pt2)"
            if isinstance(module, dict)
            else "save the whole module with torch.save(model), or export it (.pt2)"
        )
        raise ConversionError(f"{path.name} holds a {type(module).__name__}, not a module; {hint}")
    return module.eval(), module


def _argument_names(module: Any) -> list[str]:
    """The positional arguments of ``module.forward``, by name (TorchScript modules too)."""
    schema = getattr(module.forward, "schema", None)
    if schema is not None:  # a TorchScript method: inspect cannot read it; skip ``self``
        return [a.name for a in schema.arguments[1:]]
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError) as e:
        raise ConversionError(f"cannot read the module's forward() arguments: {e}") from e
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in params if p.kind in kinds]


def _input_specs(torch: Any, exported: Any, names: list[str], arrays: Arrays) -> list[TensorSpec]:
    """What each input takes: an exported program says (dtype, fixed dims); a plain module takes
    float32 for floats, int64 for integers, and any shape."""
    if isinstance(exported, torch.export.ExportedProgram):
        user = exported.graph_signature.user_inputs
        values = {n.name: n.meta.get("val") for n in exported.graph.nodes if n.op == "placeholder"}
        specs = []
        for name, placeholder in zip(names, user):
            val = values.get(placeholder)
            if val is None or not hasattr(val, "shape"):
                raise ConversionError(f"input {name}: only tensor inputs are supported")
            shape = tuple(d if isinstance(d, int) else None for d in val.shape)
            dtype = str(val.dtype).replace("torch.", "")
            if dtype not in DTYPES:
                raise ConversionError(f"input {name}: {dtype} tensors are not supported")
            specs.append(TensorSpec(name, dtype, shape))
        return specs
    plain = []
    for name in names:
        kind = np.asarray(arrays[name]).dtype.kind
        plain_dtype = {"f": "float32", "i": "int64", "u": "int64", "b": "bool"}.get(kind)
        if plain_dtype is None:
            raise UsageError(f"input {name}: sample of {arrays[name].dtype} is not numeric")
        plain.append(TensorSpec(name, plain_dtype, (None,) * np.ndim(arrays[name])))
    return plain


def _flatten(torch: Any, result: Any) -> tuple[list[str], list[Any]]:
    """The module's outputs as (names, tensors): ``output`` for one tensor, ``output_0``… for a
    tuple or list, the keys for a dict."""
    if isinstance(result, torch.Tensor):
        return ["output"], [result]
    if isinstance(result, dict):
        names, values = [str(k) for k in result], list(result.values())
    elif isinstance(result, (tuple, list)):
        names, values = [f"output_{i}" for i in range(len(result))], list(result)
    else:
        raise ConversionError(f"the module returns a {type(result).__name__}; expected tensors")
    if not values or not all(isinstance(v, torch.Tensor) for v in values):
        raise ConversionError(
            "the module must return a tensor, or a flat tuple, list or dict of them"
        )
    return names, values


def _trace_args(torch: Any, exported: Any, inputs: Arrays, names: list[str]) -> tuple[Any, ...]:
    args = []
    for name in names:
        array = inputs[name]
        if not isinstance(exported, torch.export.ExportedProgram) and array.shape[:1] == (1,):
            # torch.export specializes a dim traced at size 1: trace a batch of 2 instead.
            array = np.concatenate([array, array])
        args.append(torch.from_numpy(np.ascontiguousarray(array)))
    return tuple(args)


def _export(
    torch: Any, exported: Any, args: tuple[Any, ...], names: list[str], outputs: list[str]
) -> tuple[bytes, str]:
    """ONNX bytes and the exporter used: dynamo first; the TorchScript exporter for modules it
    cannot trace (e.g. TorchScript archives). Raises ConversionError with every failure."""
    failures = []
    is_program = isinstance(exported, torch.export.ExportedProgram)
    dynamic = (
        None if is_program else tuple({0: torch.export.Dim.AUTO} if a.ndim else None for a in args)
    )
    try:
        with _quiet():
            program = torch.onnx.export(
                exported, args, dynamo=True, input_names=names, output_names=outputs,
                dynamic_shapes=dynamic, opset_version=OPSET, external_data=False, verbose=False,
            )  # fmt: skip
        return program.model_proto.SerializeToString(), "dynamo"
    except Exception as e:  # noqa: BLE001 - the exporter raises anything; try the next
        failures.append(f"dynamo exporter: {e}")
    if not is_program:
        buffer = io.BytesIO()
        axes = {n: {0: "batch"} for n, a in zip(names, args) if a.ndim}
        axes.update({n: {0: "batch"} for n in outputs})
        try:
            with _quiet():
                torch.onnx.export(
                    exported, args, buffer, dynamo=False, input_names=names, output_names=outputs,
                    dynamic_axes=axes, opset_version=OPSET,
                )  # fmt: skip
            return buffer.getvalue(), "torchscript"
        except Exception as e:  # noqa: BLE001 - collected into one ConversionError below
            failures.append(f"TorchScript exporter: {e}")
    raise ConversionError("torch.onnx.export failed: " + "; ".join(failures))


def _check_onnx(data: bytes, names: list[str], outputs: list[str]) -> tuple[list[str], bool]:
    """The exported model's input names, and whether every input's batch dim is dynamic.
    ConversionError unless the model is valid and its outputs are ``outputs``."""
    import onnx

    try:
        model = onnx.load_from_string(data)
        onnx.checker.check_model(model)
    except Exception as e:
        raise ConversionError(f"the exported ONNX model is not valid: {e}") from e
    initializers = {i.name for i in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in initializers]
    got_inputs = [i.name for i in graph_inputs]
    got_outputs = [o.name for o in model.graph.output]
    if got_outputs != outputs or not set(got_inputs) <= set(names):
        raise ConversionError(
            f"the exported model has inputs {got_inputs} and outputs {got_outputs}; "
            f"expected {names} and {outputs}"
        )
    dims = [i.type.tensor_type.shape.dim for i in graph_inputs]
    dynamic = all(not d or not d[0].HasField("dim_value") for d in dims)
    return got_inputs, dynamic


def _versions(exporter: str) -> dict[str, str]:
    found = {"exporter": f"torch.onnx ({exporter})"}
    for dist in ("torch", "onnxscript", "onnx"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[dist] = metadata.version(dist)
    return found


def convert_torch(path: Path, sample: Dataset, warn: Warn) -> Converted:
    """Export the PyTorch model at ``path`` to ONNX; the reference is torch's own output.

    Raises ConversionError when torch is not installed (with the install command), the file is not
    a PyTorch model, the model does not run on the sample or cannot be exported; UsageError when
    the sample does not fit the model's inputs.
    """
    torch = _import_torch()
    exported, module = _load(torch, path, warn)
    forward_names = _argument_names(module)
    if None in sample.arrays:
        if len(forward_names) != 1:
            raise UsageError(
                f"the model takes {len(forward_names)} inputs ({', '.join(forward_names)}): "
                "give the sample as .npz keyed by those names"
            )
        names, arrays = [INPUT_NAME], {INPUT_NAME: sample.single()}
    else:
        names = forward_names
        arrays = key_sample(names, sample)
    specs = _input_specs(torch, exported, names, arrays)
    inputs = {}
    for spec in specs:
        check_shape(spec, np.asarray(arrays[spec.name]))
        inputs[spec.name] = cast_sample(spec, arrays[spec.name])
    try:
        with torch.no_grad(), _quiet():
            result = module(*(torch.from_numpy(inputs[n]) for n in names))
    except Exception as e:
        raise ConversionError(f"the PyTorch model does not run on the sample: {e}") from e
    outputs, tensors = _flatten(torch, result)
    reference = {n: t.detach().cpu().numpy() for n, t in zip(outputs, tensors)}

    args = _trace_args(torch, exported, inputs, names)
    data, exporter = _export(torch, exported, args, names, outputs)
    kept, dynamic_batch = _check_onnx(data, names, outputs)
    if not dynamic_batch:
        warn(
            f"{path.name}: the exported model has a fixed batch size; export it with a dynamic "
            "batch dimension (torch.export dynamic_shapes) to serve any number of rows"
        )
    return Converted(
        model_bytes=data,
        model_format="onnx",
        task="other",
        source_format=f"pytorch ({path.suffix.lower()[1:]})",
        source_sha256=sha256_file(path),
        inputs={n: inputs[n] for n in kept},
        reference=reference,
        converter=_versions(exporter),
    )
