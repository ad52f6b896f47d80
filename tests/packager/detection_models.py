"""A real SSD post-processing model: one ``TFLite_Detection_PostProcess`` custom op, made by the
TFLite converter at test time, and what LiteRT must answer for it, computed with numpy.

The op has no TensorFlow kernel: the converter fuses a ``tf.function`` whose
``experimental_implements`` attribute names it into the custom op, with the attributes as its
flexbuffer options (as TensorFlow's object detection exporters do). The function's own body is a
placeholder the converter drops.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import tensorflow as tf
from tensorflow.lite.tools import flatbuffer_utils

OP = "TFLite_Detection_PostProcess"
CLASSES = 3  # plus a background column, first, in the class predictions
MAX_DETECTIONS = 3
SCORE_THRESHOLD = 0.3
IOU_THRESHOLD = 0.5
SCALES = (10.0, 10.0, 5.0, 5.0)  # y, x, h, w

# Anchors (y center, x center, height, width): a 2 x 3 grid of boxes that do not overlap, and a
# sixth nearly on top of the first, for non-max suppression to remove.
ANCHORS = np.array(
    [
        [0.25, 1 / 6, 0.3, 0.2],
        [0.25, 0.5, 0.3, 0.2],
        [0.25, 5 / 6, 0.3, 0.2],
        [0.75, 1 / 6, 0.3, 0.2],
        [0.75, 0.5, 0.3, 0.2],
        [0.27, 0.18, 0.3, 0.2],
    ],
    dtype=np.float32,
)
ANCHOR_COUNT = len(ANCHORS)


@dataclass(frozen=True)
class DetectionModel:
    """A written model, with its tensor names as the converter chose them."""

    path: Path
    box_encodings: str
    class_predictions: str
    outputs: tuple[str, str, str, str]
    """boxes [1, MAX_DETECTIONS, 4], classes and scores [1, MAX_DETECTIONS], count [1]."""

    def feed(self, boxes: np.ndarray, classes: np.ndarray) -> dict[str, np.ndarray]:
        return {self.box_encodings: boxes, self.class_predictions: classes}


def _implements() -> str:
    attributes = {
        "max_detections": f"i: {MAX_DETECTIONS}",
        "max_classes_per_detection": "i: 1",
        "use_regular_nms": "b: false",
        "nms_score_threshold": f"f: {SCORE_THRESHOLD}",
        "nms_iou_threshold": f"f: {IOU_THRESHOLD}",
        "y_scale": f"f: {SCALES[0]}",
        "x_scale": f"f: {SCALES[1]}",
        "h_scale": f"f: {SCALES[2]}",
        "w_scale": f"f: {SCALES[3]}",
        "num_classes": f"i: {CLASSES}",
    }
    return " ".join(
        [
            f'name: "{OP}"',
            *(f'attr {{ key: "{k}" value {{ {v} }} }}' for k, v in attributes.items()),
        ]
    )


@functools.lru_cache(maxsize=1)
def _convert() -> bytes:
    @tf.function(experimental_implements=_implements())
    def postprocess(box_encodings, class_predictions, anchors):
        zero = tf.constant(0.0, dtype=tf.float32)
        return zero, zero, zero, zero

    class Detector(tf.Module):
        @tf.function(
            input_signature=[
                tf.TensorSpec([1, ANCHOR_COUNT, 4], tf.float32, name="boxes"),
                tf.TensorSpec([1, ANCHOR_COUNT, CLASSES + 1], tf.float32, name="classes"),
            ]
        )
        def detect(self, boxes, classes):
            return postprocess(boxes, classes, tf.constant(ANCHORS))

    detector = Detector()
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [detector.detect.get_concrete_function()], detector
    )
    converter.allow_custom_ops = True
    return bytes(converter.convert())


def write(path: Path, custom_code: Optional[str] = None) -> DetectionModel:
    """Write the converter's model to ``path`` (converted once per process). With
    ``custom_code``, the op is renamed to it: the same graph, naming an op LiteRT may lack."""
    data = _convert()
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(data))
    [code] = model.operatorCodes
    assert code.customCode.decode() == OP, code.customCode
    if custom_code is not None:
        code.customCode = custom_code.encode()
        data = bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    path.write_bytes(data)
    graph = model.subgraphs[0]
    [op] = graph.operators
    name = [t.name.decode() for t in graph.tensors]
    boxes, classes, scores, count = (name[i] for i in op.outputs)
    outputs = (boxes, classes, scores, count)
    return DetectionModel(path, name[op.inputs[0]], name[op.inputs[1]], outputs)


FEW = (4,)
"""One confident anchor: one detection, two empty slots."""
MANY = (2, 3, 1, 0, 5)
"""Five confident anchors, in rising score order; anchor 5 (the best) overlaps anchor 0, which
non-max suppression drops, and three detections fill every slot."""


def inputs(confident: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Box encodings [1, N, 4] and class predictions [1, N, CLASSES + 1] where the anchors in
    ``confident`` score 0.5, 0.58, 0.66… for one class and every other score is below 0.2."""
    rng = np.random.default_rng(seed)
    boxes = rng.uniform(-0.5, 0.5, size=(1, ANCHOR_COUNT, 4)).astype(np.float32)
    classes = rng.uniform(0.0, 0.2, size=(1, ANCHOR_COUNT, CLASSES + 1)).astype(np.float32)
    for rank, anchor in enumerate(confident):
        classes[0, anchor, 1 + rank % CLASSES] = 0.5 + 0.08 * rank
    return boxes, classes


def _decode(encodings: np.ndarray) -> np.ndarray:
    """Center-size encodings against the anchors → corners (y min, x min, y max, x max)."""
    e = encodings.astype(np.float64)
    a = ANCHORS.astype(np.float64)
    y = e[:, 0] / SCALES[0] * a[:, 2] + a[:, 0]
    x = e[:, 1] / SCALES[1] * a[:, 3] + a[:, 1]
    half_h = 0.5 * np.exp(e[:, 2] / SCALES[2]) * a[:, 2]
    half_w = 0.5 * np.exp(e[:, 3] / SCALES[3]) * a[:, 3]
    return np.stack([y - half_h, x - half_w, y + half_h, x + half_w], axis=1)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    height = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
    width = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    inter = height * width
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union)


def expected(boxes: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, ...]:
    """The op's answer (fast non-max suppression, one class per box): boxes, classes, scores and
    the count, with the slots past the count zero."""
    corners = _decode(boxes[0])
    scores = classes[0, :, 1:]  # the background column never wins
    best, label = scores.max(axis=1), scores.argmax(axis=1)
    kept: list[int] = []
    for i in np.argsort(-best, kind="stable"):
        if best[i] < SCORE_THRESHOLD or len(kept) == MAX_DETECTIONS:
            break
        if all(_iou(corners[i], corners[j]) <= IOU_THRESHOLD for j in kept):
            kept.append(int(i))
    out_boxes = np.zeros((1, MAX_DETECTIONS, 4))
    out_classes = np.zeros((1, MAX_DETECTIONS))
    out_scores = np.zeros((1, MAX_DETECTIONS))
    for slot, i in enumerate(kept):
        out_boxes[0, slot], out_classes[0, slot], out_scores[0, slot] = (
            corners[i],
            label[i],
            best[i],
        )
    return out_boxes, out_classes, out_scores, np.array([float(len(kept))])
