"""Every input format goes all the way: build → install (self-test) → predict on the device."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from packager.cli import main as host
from runtime.cli import main as device
from tests.packager import tflite_models


def _mlp_pt2(path):
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    program = torch.export.export(
        module.eval(), (torch.zeros(2, 4),), dynamic_shapes=({0: torch.export.Dim("batch")},)
    )
    torch.export.save(program, str(path))
    return path


@pytest.mark.parametrize("kind", ["tflite-float", "tflite-int8", "torch"])
def test_build_install_predict(kind, tmp_path, keys):
    rng = np.random.default_rng(0)
    if kind == "tflite-float":
        model = tflite_models.float_mlp(tmp_path / "m.tflite")
        sample = rng.normal(size=(20, 4)).astype(np.float32)
    elif kind == "tflite-int8":
        model = tflite_models.int8_fc(tmp_path / "m.tflite")
        sample = tflite_models.quantize_input(rng.normal(size=(1, 4)).astype(np.float32))
    else:
        model = _mlp_pt2(tmp_path / "m.pt2")
        sample = rng.normal(size=(20, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", sample)
    runner = CliRunner()
    built = runner.invoke(host, ["build", str(model), "--target", "x86_64-generic", "--key",
                                 str(keys.key("release")), "--name", "m", "--version", "1.0.0",
                                 "--sample", str(tmp_path / "x.npy"), "--out",
                                 str(tmp_path / "dist"), "--json"])  # fmt: skip
    assert built.exit_code == 0, built.output
    [result] = json.loads(built.stdout)
    card = runner.invoke(host, ["inspect", result["path"], "--card"])
    assert card.exit_code == 0 and card.output.startswith("# m 1.0.0")
    manifest = json.loads(runner.invoke(host, ["inspect", result["path"], "--json"]).stdout)
    backend = manifest["manifest"]["target"]["backend"]
    assert backend == ("litert" if kind.startswith("tflite") else "onnxruntime")
    home = str(tmp_path / "home")
    assert (
        runner.invoke(
            device, ["init", "--trust", str(keys.pub("release")), "--home", home]
        ).exit_code
        == 0
    )
    installed = runner.invoke(device, ["install", result["path"], "--home", home, "--json"])
    assert installed.exit_code == 0, installed.output
    assert json.loads(installed.stdout)["selftest"]["passed"]
    predicted = runner.invoke(
        device, ["predict", "m", "--input", str(tmp_path / "x.npy"), "--home", home, "--json"]
    )
    assert predicted.exit_code == 0, predicted.output
    outputs = json.loads(predicted.stdout)["outputs"]
    first = np.asarray(next(iter(outputs.values())))
    assert first.shape[0] == sample.shape[0]
    if kind == "tflite-float":
        assert np.allclose(first, tflite_models.expected_float(sample), atol=1e-5)


def test_card_and_reference_profile_in_every_bundle(build_bundle, tmp_path):
    from packager.inspect import inspect_bundle

    doc = inspect_bundle(build_bundle(description="Sorts iris flowers by their measurements."))
    assert "Sorts iris flowers" in doc["card"]
    assert "## Metrics" in doc["card"] and "Signed by key" in doc["card"]
    features = doc["manifest"]["reference_profile"]["features"]
    assert len(features) == 4 and all(
        "bin_edges" in f or "frequencies" in f for f in features.values()
    )
    assert "card.md" in [f["path"] for f in doc["manifest"]["files"]]


def test_input_shape_option(tmp_path, keys):
    from tests.packager.test_onnx_inputs import dynamic_model

    model = dynamic_model(tmp_path / "d.onnx")
    np.save(tmp_path / "x.npy", np.ones((3, 4), np.float32))
    runner = CliRunner()
    args = ["build", str(model), "--target", "x86_64-generic", "--key", str(keys.key("release")),
            "--name", "d", "--version", "1.0.0", "--sample", str(tmp_path / "x.npy"),
            "--out", str(tmp_path / "o"), "--json", "--quantize", "none"]  # fmt: skip
    built = runner.invoke(host, [*args, "--input-shape", "x=3,4"])
    assert built.exit_code == 0, built.output
    from packager.inspect import inspect_bundle

    [result] = json.loads(built.stdout)
    inputs = inspect_bundle(__import__("pathlib").Path(result["path"]))["manifest"]["model"][
        "inputs"
    ]
    assert inputs[0]["shape"] == [3, 4]
    bad = runner.invoke(host, [*args, "--input-shape", "x=three"])
    assert bad.exit_code == 2 and "NAME=D0,D1" in bad.output
