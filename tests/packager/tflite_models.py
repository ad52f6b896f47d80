"""Real TFLite flatbuffers built without TensorFlow, with the ``tflite`` package's builders.

Each builder writes a ``.tflite`` file and returns its path; ``expected_*`` compute what LiteRT must
answer, with numpy, so tests check the runtime against arithmetic rather than against itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import flatbuffers
import numpy as np
import tflite as fb

SCHEMA_VERSION = 3
FILE_IDENTIFIER = b"TFL3"

# The float model: probabilities = softmax(x @ W.T + b), x of shape [batch, 4].
FLOAT_W = (np.arange(12, dtype=np.float32).reshape(3, 4) - 6.0) / 8.0
FLOAT_B = np.array([0.1, -0.2, 0.3], dtype=np.float32)

# The int8 model: y = requantize(x_q @ W_q.T + b_q), per-tensor scales, symmetric weights.
INT8_IN_SCALE, INT8_IN_ZP = 0.05, -3
INT8_W_SCALE = 0.02
INT8_OUT_SCALE, INT8_OUT_ZP = 0.1, 5
INT8_W = np.array([[10, -20, 30, -40], [5, 15, -25, 35], [-60, 0, 60, 1]], dtype=np.int8)
INT8_B = np.array([100, -250, 40], dtype=np.int32)


@dataclass(frozen=True)
class _Tensor:
    name: str
    type: int
    shape: tuple[int, ...]
    signature: Optional[tuple[int, ...]] = None
    data: Optional[bytes] = None
    scale: Optional[float] = None
    zero_point: int = 0


@dataclass(frozen=True)
class _Op:
    code: int
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    options_type: int
    options: Callable[[flatbuffers.Builder], int]


def _int_vector(builder: flatbuffers.Builder, values: tuple[int, ...]) -> int:
    return builder.CreateNumpyVector(np.asarray(values, dtype=np.int32))


def _aligned_bytes(builder: flatbuffers.Builder, data: bytes) -> int:
    # 16-byte alignment, as TFLite's own converter writes buffers (kernels read them in place).
    builder.StartVector(1, len(data), 16)
    builder.head -= len(data)
    builder.Bytes[builder.head : builder.head + len(data)] = data
    return builder.EndVector()


def _quantization(builder: flatbuffers.Builder, scale: float, zero_point: int) -> int:
    scales = builder.CreateNumpyVector(np.array([scale], dtype=np.float32))
    zero_points = builder.CreateNumpyVector(np.array([zero_point], dtype=np.int64))
    fb.QuantizationParametersStart(builder)
    fb.QuantizationParametersAddScale(builder, scales)
    fb.QuantizationParametersAddZeroPoint(builder, zero_points)
    return fb.QuantizationParametersEnd(builder)


def _offsets(builder: flatbuffers.Builder, start: Callable[..., None], items: list[int]) -> int:
    start(builder, len(items))
    for item in reversed(items):
        builder.PrependUOffsetTRelative(item)
    return builder.EndVector()


def _model(
    tensors: list[_Tensor], ops: list[_Op], inputs: tuple[int, ...], outputs: tuple[int, ...]
) -> bytes:
    builder = flatbuffers.Builder(1024)
    codes = sorted({op.code for op in ops})

    fb.BufferStart(builder)
    buffers = [fb.BufferEnd(builder)]  # buffer 0 is the empty sentinel the schema reserves
    buffer_index: list[int] = []
    for t in tensors:
        if t.data is None:
            buffer_index.append(0)
            continue
        data = _aligned_bytes(builder, t.data)
        fb.BufferStart(builder)
        fb.BufferAddData(builder, data)
        buffers.append(fb.BufferEnd(builder))
        buffer_index.append(len(buffers) - 1)

    tensor_offsets = []
    for t, buffer in zip(tensors, buffer_index):
        name = builder.CreateString(t.name)
        shape = _int_vector(builder, t.shape)
        signature = _int_vector(builder, t.signature) if t.signature is not None else None
        quant = _quantization(builder, t.scale, t.zero_point) if t.scale is not None else None
        fb.TensorStart(builder)
        fb.TensorAddShape(builder, shape)
        if signature is not None:
            fb.TensorAddShapeSignature(builder, signature)
        fb.TensorAddType(builder, t.type)
        fb.TensorAddBuffer(builder, buffer)
        fb.TensorAddName(builder, name)
        if quant is not None:
            fb.TensorAddQuantization(builder, quant)
        tensor_offsets.append(fb.TensorEnd(builder))

    op_offsets = []
    for op in ops:
        op_inputs = _int_vector(builder, op.inputs)
        op_outputs = _int_vector(builder, op.outputs)
        options = op.options(builder)
        fb.OperatorStart(builder)
        fb.OperatorAddOpcodeIndex(builder, codes.index(op.code))
        fb.OperatorAddInputs(builder, op_inputs)
        fb.OperatorAddOutputs(builder, op_outputs)
        fb.OperatorAddBuiltinOptionsType(builder, op.options_type)
        fb.OperatorAddBuiltinOptions(builder, options)
        op_offsets.append(fb.OperatorEnd(builder))

    tensors_vec = _offsets(builder, fb.SubGraphStartTensorsVector, tensor_offsets)
    ops_vec = _offsets(builder, fb.SubGraphStartOperatorsVector, op_offsets)
    graph_inputs = _int_vector(builder, inputs)
    graph_outputs = _int_vector(builder, outputs)
    graph_name = builder.CreateString("main")
    fb.SubGraphStart(builder)
    fb.SubGraphAddTensors(builder, tensors_vec)
    fb.SubGraphAddInputs(builder, graph_inputs)
    fb.SubGraphAddOutputs(builder, graph_outputs)
    fb.SubGraphAddOperators(builder, ops_vec)
    fb.SubGraphAddName(builder, graph_name)
    subgraph = fb.SubGraphEnd(builder)

    code_offsets = []
    for code in codes:
        fb.OperatorCodeStart(builder)
        fb.OperatorCodeAddDeprecatedBuiltinCode(builder, code)
        fb.OperatorCodeAddBuiltinCode(builder, code)
        fb.OperatorCodeAddVersion(builder, 1)
        code_offsets.append(fb.OperatorCodeEnd(builder))

    codes_vec = _offsets(builder, fb.ModelStartOperatorCodesVector, code_offsets)
    subgraphs_vec = _offsets(builder, fb.ModelStartSubgraphsVector, [subgraph])
    buffers_vec = _offsets(builder, fb.ModelStartBuffersVector, buffers)
    description = builder.CreateString("edgeship test model")
    fb.ModelStart(builder)
    fb.ModelAddVersion(builder, SCHEMA_VERSION)
    fb.ModelAddOperatorCodes(builder, codes_vec)
    fb.ModelAddSubgraphs(builder, subgraphs_vec)
    fb.ModelAddDescription(builder, description)
    fb.ModelAddBuffers(builder, buffers_vec)
    builder.Finish(fb.ModelEnd(builder), file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())


def _fc_options(builder: flatbuffers.Builder) -> int:
    fb.FullyConnectedOptionsStart(builder)
    return fb.FullyConnectedOptionsEnd(builder)


def _softmax_options(builder: flatbuffers.Builder) -> int:
    fb.SoftmaxOptionsStart(builder)
    fb.SoftmaxOptionsAddBeta(builder, 1.0)
    return fb.SoftmaxOptionsEnd(builder)


def float_mlp(path: Path, dynamic_batch: bool = True) -> Path:
    """input [batch, 4] float32 → FULLY_CONNECTED (W [3, 4], b [3]) → SOFTMAX → probabilities.

    With ``dynamic_batch`` the batch dim's shape_signature is -1 (resizable), else fixed at 1.
    """
    batch = (-1,) if dynamic_batch else (1,)
    tensors = [
        _Tensor("input", fb.TensorType.FLOAT32, (1, 4), (*batch, 4)),
        _Tensor("weights", fb.TensorType.FLOAT32, (3, 4), data=FLOAT_W.tobytes()),
        _Tensor("bias", fb.TensorType.FLOAT32, (3,), data=FLOAT_B.tobytes()),
        _Tensor("logits", fb.TensorType.FLOAT32, (1, 3), (*batch, 3)),
        _Tensor("probabilities", fb.TensorType.FLOAT32, (1, 3), (*batch, 3)),
    ]
    ops = [
        _Op(fb.BuiltinOperator.FULLY_CONNECTED, (0, 1, 2), (3,),
            fb.BuiltinOptions.FullyConnectedOptions, _fc_options),
        _Op(fb.BuiltinOperator.SOFTMAX, (3,), (4,),
            fb.BuiltinOptions.SoftmaxOptions, _softmax_options),
    ]  # fmt: skip
    path.write_bytes(_model(tensors, ops, (0,), (4,)))
    return path


def expected_float(x: np.ndarray) -> np.ndarray:
    logits = x.astype(np.float64) @ FLOAT_W.T.astype(np.float64) + FLOAT_B
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def int8_fc(path: Path) -> Path:
    """input [batch, 4] int8 → FULLY_CONNECTED (int8 W, int32 b) → output [batch, 3] int8.

    Quantization: input (0.05, -3), weights (0.02, 0), bias (0.05 * 0.02, 0), output (0.1, 5).
    """
    bias_scale = INT8_IN_SCALE * INT8_W_SCALE
    t = fb.TensorType
    tensors = [
        _Tensor("input_q", t.INT8, (1, 4), (-1, 4), scale=INT8_IN_SCALE, zero_point=INT8_IN_ZP),
        _Tensor("weights_q", t.INT8, (3, 4), data=INT8_W.tobytes(), scale=INT8_W_SCALE),
        _Tensor("bias_q", t.INT32, (3,), data=INT8_B.tobytes(), scale=bias_scale),
        _Tensor("output_q", t.INT8, (1, 3), (-1, 3), scale=INT8_OUT_SCALE, zero_point=INT8_OUT_ZP),
    ]
    ops = [
        _Op(fb.BuiltinOperator.FULLY_CONNECTED, (0, 1, 2), (3,),
            fb.BuiltinOptions.FullyConnectedOptions, _fc_options),
    ]  # fmt: skip
    path.write_bytes(_model(tensors, ops, (0,), (3,)))
    return path


def quantize_input(x: np.ndarray) -> np.ndarray:
    """Float rows → the int8 model's input (its scale and zero point)."""
    q = np.round(x / INT8_IN_SCALE) + INT8_IN_ZP
    return np.clip(q, -128, 127).astype(np.int8)


def expected_int8(x_q: np.ndarray) -> np.ndarray:
    """The int8 model's answer, computed in real numbers then requantized (± 1 step of rounding)."""
    acc = (x_q.astype(np.int64) - INT8_IN_ZP) @ INT8_W.T.astype(np.int64) + INT8_B
    real = acc * (INT8_IN_SCALE * INT8_W_SCALE)
    q = np.round(real / INT8_OUT_SCALE) + INT8_OUT_ZP
    return np.clip(q, -128, 127).astype(np.int8)
