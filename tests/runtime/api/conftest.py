"""Fixtures for the local API: a device store with real bundles and a real agent serving it."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from packager.build import BuildOptions, build
from runtime.api.client import ApiClient
from runtime.install import install_bundle
from runtime.store import Store
from runtime.trust import TrustPolicy
from tests.runtime.api.agentproc import AgentProcess

IRIS_ROW = [5.1, 3.5, 1.4, 0.2]


def string_model(path: Path) -> Path:
    """echo = text (strings, dynamic batch), n = shape(text): a model with a BYTES input."""
    nodes = [
        helper.make_node("Identity", ["text"], ["echo"]),
        helper.make_node("Shape", ["text"], ["n"]),
    ]
    graph = helper.make_graph(
        nodes,
        "strings",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["batch"])],
        [
            helper.make_tensor_value_info("echo", TensorProto.STRING, ["batch"]),
            helper.make_tensor_value_info("n", TensorProto.INT64, [1]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.fixture(scope="session")
def echo_bundle(tmp_path_factory: pytest.TempPathFactory, keys) -> Path:
    folder = tmp_path_factory.mktemp("echo")
    np.save(folder / "sample.npy", np.array(["a", "bb", "ccc"]))
    options = BuildOptions(
        model=string_model(folder / "echo.onnx"),
        targets=("x86_64-generic",),
        keys=(keys.key("release"),),
        name="echo",
        version="1.0.0",
        sample=folder / "sample.npy",
        out=folder / "dist",
        sequence=1,
    )
    return build(options)[0].path


def new_home(folder: Path, keys) -> Store:
    store = Store(folder / "home")
    store.save_policy(TrustPolicy.create([(keys.public("release"), "release")]))
    return store


@pytest.fixture(scope="module")
def api_home(tmp_path_factory: pytest.TempPathFactory, keys, build_bundle, echo_bundle) -> Path:
    """A device store with iris 1.0.0 (sequence 10) and echo 1.0.0 installed."""
    store = new_home(tmp_path_factory.mktemp("api"), keys)
    install_bundle(store, build_bundle("1.0.0", 10))
    install_bundle(store, echo_bundle)
    return store.home


@pytest.fixture(scope="module")
def agent(api_home: Path) -> Iterator[AgentProcess]:
    """One agent per test module, serving on a TCP port and a Unix socket; it must exit 0."""
    process = AgentProcess(api_home).start()
    yield process
    code = process.stop()
    assert code == 0, process.log()


@pytest.fixture(params=["tcp", "unix"])
def client(request: pytest.FixtureRequest, agent: AgentProcess) -> Iterator[ApiClient]:
    """A keep-alive client of the agent, over TCP and over the Unix socket."""
    with agent.client(request.param) as c:
        yield c
