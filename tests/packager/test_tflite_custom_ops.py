"""TFLite models with custom ops: one LiteRT provides (``TFLite_Detection_PostProcess``) goes
build → install → predict through the real CLIs; one it lacks fails the build naming the op.

The model is made by the TFLite converter at test time (``tests/packager/detection_models.py``);
its answers are checked against LiteRT run directly and against numpy's decoding and non-max
suppression.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter
from click.testing import CliRunner

from packager.cli import main as host
from runtime.backends.litert import LiteRTBackend
from runtime.cli import main as device
from tests.packager import detection_models as dm


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> dm.DetectionModel:
    return dm.write(tmp_path_factory.mktemp("ssd") / "ssd.tflite")


def _litert(model: dm.DetectionModel, confident: tuple[int, ...]) -> list[np.ndarray]:
    """The four outputs of plain LiteRT, a fresh interpreter, on ``dm.inputs(confident)``."""
    interpreter = Interpreter(model_content=model.path.read_bytes())
    interpreter.allocate_tensors()
    index = {d["name"]: d["index"] for d in interpreter.get_input_details()}
    for name, array in model.feed(*dm.inputs(confident)).items():
        interpreter.set_tensor(index[name], array)
    interpreter.invoke()
    index = {d["name"]: d["index"] for d in interpreter.get_output_details()}
    return [interpreter.get_tensor(index[name]) for name in model.outputs]


def _detected(outputs: list[np.ndarray]) -> list[np.ndarray]:
    """The filled slots only: past the count, the op leaves its outputs unwritten."""
    count = int(outputs[3][0])
    return [outputs[0][:, :count], outputs[1][:, :count], outputs[2][:, :count], outputs[3]]


def _check_detections(outputs: list[np.ndarray], confident: tuple[int, ...]) -> None:
    want = _detected([np.asarray(w) for w in dm.expected(*dm.inputs(confident))])
    got = _detected(outputs)
    np.testing.assert_array_equal(got[3], want[3])
    np.testing.assert_allclose(got[0], want[0], atol=1e-6)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_allclose(got[2], want[2], atol=1e-7)


@pytest.mark.parametrize(("confident", "count"), [(dm.FEW, 1), (dm.MANY, 3)])
def test_plain_litert_runs_the_custom_op(model, confident, count) -> None:
    interpreter = Interpreter(model_content=model.path.read_bytes())
    interpreter.allocate_tensors()
    assert [op["op_name"] for op in interpreter._get_ops_details()] == [dm.OP]
    outputs = _litert(model, confident)
    assert int(outputs[3][0]) == count
    _check_detections(outputs, confident)


def test_an_answer_does_not_depend_on_the_previous_request(model) -> None:
    # LiteRT leaves the slots past the count as they were: the previous request's detections.
    backend = LiteRTBackend(model.path)
    backend.run(model.feed(*dm.inputs(dm.MANY)))
    after = backend.run(model.feed(*dm.inputs(dm.FEW)))
    fresh = LiteRTBackend(model.path).run(model.feed(*dm.inputs(dm.FEW)))
    for name, want in zip(model.outputs, dm.expected(*dm.inputs(dm.FEW))):
        np.testing.assert_array_equal(after[name], fresh[name])
        np.testing.assert_allclose(after[name], want, atol=1e-6)  # empty slots are 0


def _save(path: Path, model: dm.DetectionModel, confident: tuple[int, ...]) -> Path:
    np.savez(path, **model.feed(*dm.inputs(confident)))
    return path


def _build(keys, tmp_path: Path, path: Path, sample: Path):
    return CliRunner().invoke(host, ["build", str(path), "--target", "x86_64-generic", "--key",
                                     str(keys.key("release")), "--name", "ssd", "--version",
                                     "1.0.0", "--sample", str(sample), "--out",
                                     str(tmp_path / "dist"), "--json"])  # fmt: skip


def test_build_install_predict_gives_the_litert_detections(model, keys, tmp_path) -> None:
    # A sample with one detection of three: parity and the self-test compare the empty slots too.
    sample = _save(tmp_path / "few.npz", model, dm.FEW)
    built = _build(keys, tmp_path, model.path, sample)
    assert built.exit_code == 0, built.output
    [result] = json.loads(built.stdout)
    assert result["parity"]["passed"] and result["parity"]["max_abs_diff"] == 0.0
    assert result["metrics"]["gate"]["passed"]
    runner = CliRunner()
    manifest = json.loads(runner.invoke(host, ["inspect", result["path"], "--json"]).stdout)
    assert manifest["manifest"]["target"]["backend"] == "litert"
    outputs = {o["name"]: o for o in manifest["manifest"]["model"]["outputs"]}
    shapes = [[1, dm.MAX_DETECTIONS, 4], [1, dm.MAX_DETECTIONS], [1, dm.MAX_DETECTIONS], [1]]
    assert [outputs[name]["shape"] for name in model.outputs] == shapes
    assert {o["dtype"] for o in outputs.values()} == {"float32"}

    home = str(tmp_path / "home")
    trusted = runner.invoke(device, ["init", "--trust", str(keys.pub("release")), "--home", home])
    assert trusted.exit_code == 0, trusted.output
    installed = runner.invoke(device, ["install", result["path"], "--home", home, "--json"])
    assert installed.exit_code == 0, installed.output
    assert json.loads(installed.stdout)["selftest"]["passed"]
    for confident in (dm.FEW, dm.MANY):
        request = _save(tmp_path / "request.npz", model, confident)
        predicted = runner.invoke(
            device, ["predict", "ssd", "--input", str(request), "--home", home, "--json"]
        )
        assert predicted.exit_code == 0, predicted.output
        answer = json.loads(predicted.stdout)["outputs"]
        got = [np.asarray(answer[name], dtype=np.float32) for name in model.outputs]
        for g, want in zip(_detected(got), _detected(_litert(model, confident))):
            np.testing.assert_array_equal(g, want)
        _check_detections(got, confident)


@pytest.mark.parametrize("op", ["NoSuchOp", "FlexErf"])
def test_a_custom_op_litert_lacks_fails_the_build_naming_it(model, keys, tmp_path, op) -> None:
    path = dm.write(tmp_path / "other.tflite", custom_code=op).path
    built = _build(keys, tmp_path, path, _save(tmp_path / "few.npz", model, dm.FEW))
    assert built.exit_code == 4, built.output  # docs/cli.md: the model cannot be loaded or run
    [line] = built.output.strip().splitlines()
    assert f"the model uses custom op {op}, which LiteRT (ai-edge-litert " in line
    assert "does not provide" in line and "TFLite_Detection_PostProcess" in line
    assert not (tmp_path / "dist").exists()
