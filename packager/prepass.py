"""The pre-pass every quantizer starts from: a float32 ONNX model made ready to quantize.

Place in the design: ``validate`` runs it once per build, ``quantize`` makes variants from its
result. Weights held in Constant nodes (as some exporters write them) are folded into
initializers, which is all the quantizers quantize; onnxruntime's basic graph optimizer then runs
offline (constant folding, Conv+BatchNorm and MatMul+Add fusion) and its result is kept only where
it helps and still gives the same answers (ADR 0005).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from packager.convert import Arrays
from packager.quantize import run, workdir

PREPARE_RTOL = 1e-4
PREPARE_ATOL = 1e-5


def fold_constants(model: onnx.ModelProto) -> int:
    """Move the tensors of top-level ``Constant`` nodes into initializers, in place.

    Returns how many nodes were folded. Quantizers only quantize initializers: weights left in
    Constant nodes come out unquantized (larger files) or make them fail.
    """
    graph = model.graph
    kept, folded = [], []
    for node in graph.node:
        tensor = _constant_tensor(node) if node.op_type == "Constant" and not node.domain else None
        if tensor is None:
            kept.append(node)
            continue
        tensor.name = node.output[0]
        folded.append(tensor)
    if folded:
        del graph.node[:]
        graph.node.extend(kept)
        graph.initializer.extend(folded)
        model.ir_version = max(model.ir_version, 4)  # initializers need not be graph inputs
    return len(folded)


def _constant_tensor(node: onnx.NodeProto) -> Optional[TensorProto]:
    for attr in node.attribute:
        if attr.name == "value":
            tensor = TensorProto()
            tensor.CopyFrom(attr.t)
            return tensor
        scalar = {"value_float": np.float32, "value_int": np.int64}.get(attr.name)
        if scalar is not None:
            value = attr.f if attr.name == "value_float" else attr.i
            return numpy_helper.from_array(np.array(value, dtype=scalar))
        listed = {"value_floats": np.float32, "value_ints": np.int64}.get(attr.name)
        if listed is not None:
            values = attr.floats if attr.name == "value_floats" else attr.ints
            return numpy_helper.from_array(np.array(list(values), dtype=listed))
    return None  # sparse or string constants stay nodes


def prepare(model_bytes: bytes, probe: Arrays) -> bytes:
    """The pre-pass every quantizer starts from, in three steps, each kept only when the model
    still loads and gives the same outputs on ``probe``:

    1. Constant-node weights folded into initializers (always).
    2. onnxruntime's basic graph optimizer run offline (constant folding, redundant nodes,
       Conv+BatchNorm and MatMul+Add fusion), kept where it leaves fewer nodes.
    3. The element type and rank of every intermediate tensor onnx's shape inference leaves
       unknown (outputs of ``ai.onnx.ml`` ops such as Scaler) recorded from one real run: the
       quantizers and the float16 converter need them and fail without.

    Never raises for a model that onnxruntime can run; a step that does not work is skipped.
    """
    model = onnx.load_from_string(model_bytes)
    fold_constants(model)
    best: bytes = model.SerializeToString()
    try:
        want = run(best, probe)
    except Exception:  # noqa: BLE001 - the quantizers will report what is wrong with it
        return best
    for step in (_optimize, _annotate):
        try:
            candidate = step(onnx.load_from_string(best), probe)
            if candidate is not None and _same(want, run(candidate, probe)):
                best = candidate
        except Exception:  # noqa: BLE001, S112 - each step is optional; the model so far stands
            continue
    return best


def _optimize(model: onnx.ModelProto, _probe: Arrays) -> Optional[bytes]:
    with workdir() as work:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(work / "optimized.onnx")
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        optimized = _tidy(onnx.load(work / "optimized.onnx"), model)
    if len(optimized.graph.node) >= len(model.graph.node):
        return None
    result: bytes = optimized.SerializeToString()
    return result


def _annotate(model: onnx.ModelProto, probe: Arrays) -> Optional[bytes]:
    graph = model.graph
    inferred = onnx.shape_inference.infer_shapes(model).graph
    known = {v.name for v in [*inferred.value_info, *graph.input, *graph.output]}
    known |= {t.name for t in graph.initializer}
    missing = [o for n in graph.node for o in n.output if o and o not in known]
    if not missing:
        return None
    tapped = onnx.ModelProto()
    tapped.CopyFrom(model)
    tapped.graph.output.extend(onnx.ValueInfoProto(name=name) for name in missing)
    found = run(tapped.SerializeToString(), probe, missing)
    for name, value in zip(missing, found):
        if isinstance(value, np.ndarray) and value.dtype != object:
            elem = helper.np_dtype_to_tensor_dtype(value.dtype)
            graph.value_info.append(helper.make_tensor_value_info(name, elem, [None] * value.ndim))
    result: bytes = model.SerializeToString()
    return result


def _tidy(optimized: onnx.ModelProto, original: onnx.ModelProto) -> onnx.ModelProto:
    """onnxruntime writes every domain it knows, at its own versions, into the opset imports; a
    device with an older onnxruntime may refuse those. Keep the original's imports and IR
    version, plus any domain a node really uses."""
    used = {n.domain for n in optimized.graph.node}
    kept = {o.domain: o.version for o in original.opset_import}
    for o in optimized.opset_import:
        if o.domain in used and o.domain not in kept:
            kept[o.domain] = o.version
    del optimized.opset_import[:]
    optimized.opset_import.extend(helper.make_opsetid(d, v) for d, v in kept.items())
    optimized.ir_version = original.ir_version
    return optimized


def _same(want: Sequence[Any], got: Sequence[Any]) -> bool:
    if len(want) != len(got):
        return False
    for x, y in zip(want, got):
        a, b = np.asarray(x), np.asarray(y)
        if a.shape != b.shape:
            return False
        if a.dtype.kind in "fc":
            if not np.allclose(a, b, rtol=PREPARE_RTOL, atol=PREPARE_ATOL, equal_nan=True):
                return False
        elif not np.array_equal(a, b):
            return False
    return True
