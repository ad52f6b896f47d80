"""Scenario: the edgeship runtime on an emulated 32-bit ARM (armhf) device, the ``armv7-tflite``
profile (docs/arm64.md#armv7).

PyPI has no armv7 wheels of onnxruntime, ai-edge-litert, numpy or cryptography, so this device is
Debian bullseye armhf with Debian's own Python 3.9, numpy and cryptography, and tflite-runtime 2.11
from PyPI: the oldest dependency set the runtime promises to work with. Real emulation, no mocks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from devices.emulation.arm64 import Arm64Device, EmulationConfig
from devices.emulation.cpus import CORTEX_A7
from packager.build import BuildOptions, build
from runtime.install import install_bundle
from runtime.model import LoadedModel
from runtime.store import Store
from runtime.trust import TrustPolicy
from tests.arm.conftest import Report
from tests.arm.parity import check_litert, compare, prepare
from tests.conftest import Keys
from tests.packager import tflite_models


@pytest.fixture(scope="module")
def armv7(request: pytest.FixtureRequest, report: Report) -> Iterator[Arm64Device]:
    yield from prepare(request, report, EmulationConfig.armv7())


VERSIONS = """
import platform, sys
import numpy, cryptography, tflite_runtime
print(platform.machine(), "%d.%d" % sys.version_info[:2], numpy.__version__,
      cryptography.__version__, tflite_runtime.__version__)
"""


def test_the_device_is_armv7_with_debians_old_libraries(armv7: Arm64Device) -> None:
    done = armv7.execute(["python3", "-c", VERSIONS], cpu=CORTEX_A7)
    assert done.returncode == 0, done.stderr
    machine, python, numpy, cryptography, tflite = done.stdout.split()
    assert (machine, python, tflite) == ("armv7l", "3.9", "2.11.0")
    assert numpy.startswith("1.19.") and cryptography.startswith("3.3.")


def test_device_cli_runs_there(armv7: Arm64Device, keys: Keys, report: Report) -> None:
    pub = armv7.copy_in(keys.pub("release"))
    for step, args in (
        ("init", ["init", "--trust", pub, "--json"]),
        ("status", ["status", "--json"]),
    ):
        done = armv7.run(args, cpu=CORTEX_A7)
        report.steps.append(("runtime cli:armhf@cortex-a7", step, done.seconds, done.returncode))
        assert done.returncode == 0, done.stderr
    assert done.json()["trust"]["threshold"] == 1


@pytest.mark.parametrize("kind", ["float", "int8"])
def test_litert_backend_on_tflite_runtime_matches_x86(
    kind: str, armv7: Arm64Device, report: Report, tmp_path: Path
) -> None:
    bad = check_litert(armv7, CORTEX_A7, kind, report, tmp_path)
    assert not bad, bad


def test_aarch64_bundle_is_refused(
    armv7: Arm64Device, keys: Keys, iris: dict[str, Path], report: Report, tmp_path: Path
) -> None:
    opts = BuildOptions(
        model=iris["model"],
        targets=("aarch64-generic",),
        keys=(keys.key("release"),),
        name="iris",
        version="1.0.0",
        sample=iris["sample"],
        out=tmp_path,
    )
    (result,) = build(opts)
    pub = armv7.copy_in(keys.pub("release"))
    home = "/var/lib/edgeship-refusal"
    assert armv7.run(["init", "--trust", pub, "--home", home], cpu=CORTEX_A7).returncode == 0
    done = armv7.run(["install", armv7.copy_in(result.path), "--home", home], cpu=CORTEX_A7)
    report.steps.append(
        ("aarch64 bundle:armhf@cortex-a7", "install", done.seconds, done.returncode)
    )
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "error: target:" in done.stderr and "armv7" in done.stderr, done.stderr


def test_tflite_bundle_installs_and_answers_like_x86(
    armv7: Arm64Device, keys: Keys, report: Report, tmp_path: Path
) -> None:
    """A .tflite bundle built here for armv7-tflite installs there (self-test with the golden
    vectors under tflite-runtime) and answers held-out rows as LiteRT does on this host."""
    model = tflite_models.float_mlp(tmp_path / "mlp.tflite")
    x = np.random.default_rng(7).normal(size=(200, 4)).astype(np.float32)
    np.save(tmp_path / "sample.npy", x[:120])
    opts = BuildOptions(
        model=model,
        targets=("armv7-tflite",),
        keys=(keys.key("release"),),
        name="mlp",
        version="1.0.0",
        sample=tmp_path / "sample.npy",
        out=tmp_path / "dist",
    )
    (result,) = build(opts)
    host_store = Store(tmp_path / "host")
    host_store.save_policy(TrustPolicy.create([(keys.public("release"), "release")]))
    install_bundle(host_store, result.path, allow_any_target=True)
    host = LoadedModel.open(host_store.active_dir("mlp"))

    label = "tflite bundle:armhf@cortex-a7"
    home = "/var/lib/edgeship-tflite"
    pub = armv7.copy_in(keys.pub("release"))
    assert armv7.run(["init", "--trust", pub, "--home", home], cpu=CORTEX_A7).returncode == 0
    done = armv7.run(
        ["install", armv7.copy_in(result.path), "--home", home, "--json"], cpu=CORTEX_A7
    )
    report.steps.append((label, "install", done.seconds, done.returncode))
    assert done.returncode == 0, done.stderr
    assert done.json()["selftest"]["passed"]

    held_out = x[120:]
    np.save(tmp_path / "rows.npy", held_out)
    args = ["predict", "mlp", "--input", armv7.copy_in(tmp_path / "rows.npy"), "--home", home]
    done = armv7.run([*args, "--json"], cpu=CORTEX_A7)
    report.steps.append((label, "predict", done.seconds, done.returncode))
    assert done.returncode == 0, done.stderr
    x86 = host.run({"input": held_out})
    arm = {k: np.asarray(v, dtype=x86[k].dtype) for k, v in done.json()["outputs"].items()}
    assert set(arm) == set(x86)
    bad = compare(report, label, "none", "held-out", arm, x86, np.s_[:])
    assert not bad, bad
    assert np.allclose(arm["probabilities"], tflite_models.expected_float(held_out), atol=1e-5)
