"""The agent serves a TFLite bundle through the LiteRT backend exactly as it serves ONNX ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from packager.build import BuildOptions, build
from runtime.install import install_bundle
from tests.packager import tflite_models
from tests.runtime.api.agentproc import AgentProcess
from tests.runtime.api.conftest import new_home


def test_agent_serves_a_tflite_bundle_with_litert(tmp_path: Path, keys) -> None:
    model = tflite_models.float_mlp(tmp_path / "mlp.tflite")
    x = np.random.default_rng(3).normal(size=(120, 4)).astype(np.float32)
    np.save(tmp_path / "sample.npy", x)
    options = BuildOptions(
        model=model,
        targets=("x86_64-generic",),
        keys=(keys.key("release"),),
        name="mlp",
        version="1.0.0",
        sample=tmp_path / "sample.npy",
        out=tmp_path / "dist",
    )
    store = new_home(tmp_path, keys)
    install_bundle(store, build(options)[0].path)
    agent = AgentProcess(store.home).start()
    try:
        with agent.client("tcp") as client:
            meta = client.metadata("mlp")
            answer = client.infer("mlp", {"input": x[:3]})
        with agent.client("unix") as client:
            again = client.infer("mlp", {"input": x[3:5]})
    finally:
        assert agent.stop() == 0, agent.log()
    assert meta["platform"] == "tensorflow_lite"
    (output,) = answer["outputs"]
    assert output["name"] == "probabilities" and output["shape"] == [3, 3]
    got = np.asarray(output["data"], dtype=np.float32).reshape(3, 3)
    np.testing.assert_allclose(got, tflite_models.expected_float(x[:3]), atol=1e-5)
    (output,) = again["outputs"]
    got = np.asarray(output["data"], dtype=np.float32).reshape(2, 3)
    np.testing.assert_allclose(got, tflite_models.expected_float(x[3:5]), atol=1e-5)
