"""Scenario: bundles built on this x86-64 host verify, install and run on an aarch64 device with
the host's outputs (docs/arm64.md).

The device is real emulation, nothing mocked: a Debian bookworm arm64 root under qemu user-mode,
PyPI's aarch64 wheels of onnxruntime, ai-edge-litert, numpy and cryptography, and the edgeship
runtime copied from this working tree (``devices/emulation/arm64.py``). Each bundle is built here,
installed there with ``edgeship-device`` (whose self-test runs the golden vectors), then the golden
rows and a held-out set go through ``edgeship-device predict --json`` on the device and through
``runtime.model.LoadedModel`` on the host, and every output is compared.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import onnx
import pytest
import skops.io as sio
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from devices.emulation.arm64 import Arm64Device, DeviceRun, EmulationConfig
from devices.emulation.cpus import CORTEX_A53, CORTEX_A72, NEOVERSE_N1, CpuModel, cpu_for_profile
from packager.build import BuildOptions, build
from packager.fleet.store import open_store
from runtime.install import install_bundle
from runtime.model import LoadedModel
from runtime.selftest import load_golden
from runtime.store import Store
from runtime.trust import TrustPolicy
from tests.arm.conftest import Report
from tests.arm.parity import check_litert, compare, prepare
from tests.broker import Broker, free_port, wait_port
from tests.conftest import Keys

BIN = Path(sys.executable).parent
TARGETS = ("aarch64-generic", "raspberry-pi-4")
CORES = {
    "aarch64-generic": (cpu_for_profile("aarch64-generic"), NEOVERSE_N1),
    "raspberry-pi-4": (cpu_for_profile("raspberry-pi-4"),),
}
"""Each target runs on its profile's own core (devices/emulation/cpus.py); the generic bundle also
on an ARMv8.2 server core, whose fp16/dot-product kernels differ."""
QUANTIZE = "quantize" in {f.name for f in dataclasses.fields(BuildOptions)}
"""``--quantize`` exists in this tree: build ``auto`` (and an explicit int8 variant) too."""
MODES = {
    "iris": ("none", "auto") if QUANTIZE else ("none",),
    "mlp": ("none", "auto", "static") if QUANTIZE else ("none",),
}


@dataclass(frozen=True)
class Case:
    model: str
    mode: str
    target: str
    cpu: CpuModel

    @property
    def name(self) -> str:
        return f"{self.model}-{self.mode}"

    @property
    def device(self) -> str:
        return f"{self.target}@{self.cpu.qemu}"

    def __str__(self) -> str:
        return f"{self.name}:{self.device}"


CASES = [
    Case(m, q, t, cpu)
    for m, modes in MODES.items()
    for q in modes
    for t in TARGETS
    for cpu in CORES[t]
]


# --- host side: models, data and bundles ------------------------------------------------------


def _mlp(path: Path, rng: np.random.Generator, features: int = 32) -> Path:
    """A three-layer MLP (Gemm/Relu/Tanh/Softmax) big enough to take onnxruntime's SIMD paths."""
    sizes = [(features, 64), (64, 32), (32, 4)]
    inits = []
    for i, (n_in, n_out) in enumerate(sizes, 1):
        w = rng.normal(size=(n_in, n_out)) / np.sqrt(n_in)
        inits.append(numpy_helper.from_array(w.astype(np.float32), f"W{i}"))
        b = rng.normal(size=n_out) * 0.1
        inits.append(numpy_helper.from_array(b.astype(np.float32), f"b{i}"))
    nodes = [
        helper.make_node("Gemm", ["x", "W1", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["a1"]),
        helper.make_node("Gemm", ["a1", "W2", "b2"], ["h2"]),
        helper.make_node("Tanh", ["h2"], ["a2"]),
        helper.make_node("Gemm", ["a2", "W3", "b3"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", features])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 4]),
        ],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


@dataclass(frozen=True)
class Source:
    model: Path
    sample: Path
    held_out: np.ndarray
    """Rows the build never saw."""


@pytest.fixture(scope="session")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Source]:
    folder = tmp_path_factory.mktemp("arm-sources")
    x, y = load_iris(return_X_y=True)
    x = x.astype(np.float32)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x[::3], y[::3])
    sio.dump(clf, folder / "iris.skops")
    np.save(folder / "iris-sample.npy", x[::3])
    rng = np.random.default_rng(6)
    _mlp(folder / "mlp.onnx", rng)
    np.save(folder / "mlp-sample.npy", rng.normal(size=(256, 32)).astype(np.float32))
    return {
        "iris": Source(
            folder / "iris.skops", folder / "iris-sample.npy", np.delete(x, np.s_[::3], 0)
        ),
        "mlp": Source(
            folder / "mlp.onnx",
            folder / "mlp-sample.npy",
            rng.normal(size=(100, 32)).astype(np.float32),
        ),
    }


Bundles = Callable[[str, str, str], Path]


@pytest.fixture(scope="session")
def bundles(
    tmp_path_factory: pytest.TempPathFactory, keys: Keys, sources: dict[str, Source]
) -> Bundles:
    """``bundles(model, mode, target)``: one build per (model, mode) for every target, cached."""
    out = tmp_path_factory.mktemp("arm-bundles")
    built: dict[tuple[str, str, tuple[str, ...]], dict[str, Path]] = {}

    def get(model: str, mode: str, target: str) -> Path:
        targets = TARGETS if target in TARGETS else (target,)
        key = (model, mode, targets)
        if key not in built:
            src = sources[model]
            extra = {"quantize": mode} if QUANTIZE else {}
            opts = BuildOptions(
                model=src.model,
                targets=targets,
                keys=(keys.key("release"),),
                name=f"{model}-{mode}",
                version="1.0.0",
                sample=src.sample,
                out=out / f"{model}-{mode}-{len(built)}",
                sequence=1,
                **extra,
            )
            built[key] = {r.manifest.target.profile: r.path for r in build(opts)}
        return built[key][target]

    return get


class HostModel:
    """The bundle's model run on this host, the same way a device runs it (``LoadedModel``)."""

    def __init__(self, bundle: Path, folder: Path, keys: Keys) -> None:
        store = Store(folder)
        store.save_policy(TrustPolicy.create([(keys.public("release"), "release")]))
        name = install_bundle(store, bundle, allow_any_target=True).manifest.name
        self.model = LoadedModel.open(store.active_dir(name))
        self.golden, _ = load_golden(store.active_dir(name), self.model.manifest.selftest.file)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.model.run(feeds)


# --- device side ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def device(request: pytest.FixtureRequest, report: Report) -> Iterator[Arm64Device]:
    yield from prepare(request, report, EmulationConfig())


Homes = Callable[[str, CpuModel], str]


@pytest.fixture(scope="session")
def homes(device: Arm64Device, keys: Keys, report: Report) -> Homes:
    """``homes(target, cpu)``: an initialized device store per emulated board."""
    made: dict[str, str] = {}

    def get(target: str, cpu: CpuModel) -> str:
        board = f"{target}@{cpu.qemu}"
        if board not in made:
            home = f"/var/lib/edgeship-{target}-{cpu.qemu}"
            pub = device.copy_in(keys.pub("release"))
            args = ["init", "--trust", pub, "--home", home]
            done = run(device, report, board, "init", args, cpu)
            assert done.returncode == 0, done.stderr
            made[board] = home
        return made[board]

    return get


def run(
    dev: Arm64Device, report: Report, label: str, step: str, args: list[str], cpu: CpuModel
) -> DeviceRun:
    """``edgeship-device ARGS`` on ``cpu``, timed into the report."""
    done = dev.run(args, cpu=cpu)
    report.steps.append((label, step, done.seconds, done.returncode))
    return done


# --- the scenario -----------------------------------------------------------------------------


CPU_PROBE = """
import platform
part = [l.split(":")[1].strip() for l in open("/proc/cpuinfo") if l.startswith("CPU part")]
print(platform.machine(), part[0])
"""


@pytest.mark.parametrize("cpu", [CORTEX_A53, CORTEX_A72, NEOVERSE_N1], ids=lambda c: c.qemu)
def test_the_device_is_aarch64_on_the_chosen_core(cpu: CpuModel, device: Arm64Device) -> None:
    done = device.execute(["python3", "-c", CPU_PROBE], cpu=cpu)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["aarch64", f"{cpu.part:#05x}"]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_bundle_runs_on_arm_as_on_x86(
    case: Case,
    device: Arm64Device,
    homes: Homes,
    bundles: Bundles,
    sources: dict[str, Source],
    keys: Keys,
    report: Report,
    tmp_path: Path,
) -> None:
    bundle = bundles(case.model, case.mode, case.target)
    host = HostModel(bundle, tmp_path / "host", keys)
    mode = host.model.manifest.quantization.get("mode", "none")
    home = homes(case.target, case.cpu)

    args = ["install", device.copy_in(bundle), "--home", home, "--json"]
    done = run(device, report, str(case), "install", args, case.cpu)
    assert done.returncode == 0, done.stderr
    selftest = done.json()["selftest"]
    assert selftest["passed"], selftest

    golden_rows = len(next(iter(host.golden.values())))
    (input_name,) = host.golden
    feeds = {input_name: np.concatenate([host.golden[input_name], sources[case.model].held_out])}
    np.savez(tmp_path / "rows.npz", **feeds)
    rows = device.copy_in(tmp_path / "rows.npz", f"{case.name}-{case.target}-{case.cpu.qemu}.npz")
    args = ["predict", case.name, "--input", rows, "--home", home, "--json"]
    done = run(device, report, str(case), "predict", args, case.cpu)
    assert done.returncode == 0, done.stderr
    x86 = host.run(feeds)
    arm = {k: np.asarray(v, dtype=x86[k].dtype) for k, v in done.json()["outputs"].items()}
    assert set(arm) == set(x86)
    bad = compare(report, str(case), mode, "golden", arm, x86, np.s_[:golden_rows])
    bad += compare(report, str(case), mode, "held-out", arm, x86, np.s_[golden_rows:])
    assert not bad, bad


def _tamper_payload(bundle: Path, out: Path) -> Path:
    data = bytearray(bundle.read_bytes())
    with tarfile.open(bundle) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("model.onnx"))
    data[member.offset_data + member.size // 2] ^= 0x01
    out.write_bytes(bytes(data))
    return out


def _tamper_manifest(bundle: Path, out: Path) -> Path:
    data = bundle.read_bytes()
    marker = b'"version":"1.0.0"'
    assert marker in data
    out.write_bytes(data.replace(marker, b'"version":"1.0.9"', 1))
    return out


@pytest.mark.parametrize(
    ("tamper", "step"),
    [(_tamper_payload, "payload:"), (_tamper_manifest, "signatures:")],
    ids=["payload-byte", "manifest-field"],
)
def test_tampered_bundle_is_refused_and_the_model_stays(
    tamper: Callable[[Path, Path], Path],
    step: str,
    device: Arm64Device,
    homes: Homes,
    bundles: Bundles,
    report: Report,
    tmp_path: Path,
) -> None:
    target, cpu = TARGETS[0], CORES[TARGETS[0]][0]
    good = bundles("iris", "none", target)
    home = homes(target, cpu)
    label = f"tampered {tamper.__name__.split('_')[-1]}:{target}@{cpu.qemu}"
    args = ["install", device.copy_in(good), "--home", home, "--json"]
    done = run(device, report, label, "install good", args, cpu)
    assert done.returncode == 0, done.stderr
    bad = tamper(good, tmp_path / "tampered.eship")
    args = ["install", device.copy_in(bad), "--home", home]
    done = run(device, report, label, "install tampered", args, cpu)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert f"error: {step}" in done.stderr, done.stderr
    done = run(device, report, label, "list", ["list", "--home", home, "--json"], cpu)
    rows = {r["name"]: r for r in done.json()}
    assert rows["iris-none"]["version"] == "1.0.0"


def test_x86_bundle_is_refused(
    device: Arm64Device, homes: Homes, bundles: Bundles, report: Report
) -> None:
    x86 = bundles("iris", "none", "x86_64-generic")
    cpu = CORES[TARGETS[0]][0]
    args = ["install", device.copy_in(x86), "--home", homes(TARGETS[0], cpu)]
    done = run(
        device, report, f"x86_64-generic bundle:{TARGETS[0]}@{cpu.qemu}", "install", args, cpu
    )
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "error: target:" in done.stderr, done.stderr
    assert "aarch64" in done.stderr


@pytest.mark.parametrize("cpu", [CORTEX_A53, CORTEX_A72, NEOVERSE_N1], ids=lambda c: c.qemu)
@pytest.mark.parametrize("kind", ["float", "int8"])
def test_litert_backend_matches_x86(
    kind: str, cpu: CpuModel, device: Arm64Device, report: Report, tmp_path: Path
) -> None:
    """edgeship's LiteRT backend (ai-edge-litert) on aarch64 vs x86-64, float32 and int8."""
    bad = check_litert(device, cpu, kind, report, tmp_path)
    assert not bad, bad


def test_agent_on_arm_reports_to_the_host_monitor(
    device: Arm64Device,
    homes: Homes,
    bundles: Bundles,
    sources: dict[str, Source],
    report: Report,
    mosquitto: Callable[..., Broker],
    tmp_path: Path,
) -> None:
    """The agent runs on the emulated device against the host's broker: requests to its local
    API are counted in telemetry windows that reach the host's fleet monitor, exactly once."""
    target, cpu = TARGETS[0], CORES[TARGETS[0]][0]
    home = homes(target, cpu)
    args = ["install", device.copy_in(bundles("iris", "none", target)), "--home", home, "--json"]
    assert run(device, report, "agent", "install", args, cpu).returncode == 0
    broker = mosquitto()
    db = tmp_path / "fleet.db"
    monitor = subprocess.Popen(
        [
            str(BIN / "edgeship"),
            "fleet",
            "monitor",
            "--broker",
            broker.url(),
            "--db",
            f"sqlite:///{db}",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    # the broker keeps messages for the monitor's session only from its subscription on
    assert monitor.stderr is not None
    for line in monitor.stderr:
        if "subscribed to" in line:
            break
    assert monitor.poll() is None, "the fleet monitor exited"
    port = free_port()
    device.use_cpu(cpu)
    started = time.monotonic()
    agent = subprocess.Popen(
        device.command(
            [
                "edgeship-device",
                "agent",
                "--serve",
                f"127.0.0.1:{port}",
                "--broker",
                broker.url(),
                "--fleet",
                "lab",
                "--device-id",
                "arm-1",
                "--telemetry-interval",
                "1",
                "--home",
                home,
            ]
        ),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_port(port, timeout=180)
        report.steps.append(
            ("agent:" + f"{target}@{cpu.qemu}", "start", time.monotonic() - started, 0)
        )
        rows = sources["iris"].held_out[:20]
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for row in rows:
            body = {
                "inputs": [
                    {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": row.tolist()}
                ]
            }
            connection.request("POST", "/v2/models/iris-none/infer", json.dumps(body))
            answer = connection.getresponse()
            assert answer.status == 200, answer.read()
            answer.read()
        connection.close()
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=120) == 0, agent.stderr.read() if agent.stderr else ""
        deadline = time.monotonic() + 60
        counted = -1
        while time.monotonic() < deadline:
            store = open_store(f"sqlite:///{db}")
            try:
                devices = {d.device: d for d in store.devices("lab")}
                windows = store.windows("lab", "arm-1", "iris-none") if "arm-1" in devices else []
            finally:
                store.close()
            counted = sum(w.requests for w in windows)
            if counted >= len(rows) and not devices["arm-1"].online:
                break
            time.sleep(0.5)
        assert counted == len(rows), f"the monitor counted {counted} of {len(rows)} requests"
        assert devices["arm-1"].status.get("profile") == target
        report.steps.append(
            ("agent:" + f"{target}@{cpu.qemu}", "telemetry", time.monotonic() - started, 0)
        )
    finally:
        for proc in (agent, monitor):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
