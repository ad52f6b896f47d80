"""Scenario: the edgeship runtime on an emulated 32-bit ARM (armhf) device, the ``armv7-tflite``
profile (docs/arm64.md#armv7).

PyPI has no armv7 wheels of onnxruntime, ai-edge-litert, numpy or cryptography, so this device is
Debian bullseye armhf with Debian's own Python 3.9, numpy and cryptography, and tflite-runtime 2.11
from PyPI: the oldest dependency set the runtime promises to work with. Real emulation, no mocks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from devices.emulation.arm64 import Arm64Device, EmulationConfig
from devices.emulation.cpus import CORTEX_A7
from packager.build import BuildOptions, build
from tests.arm.conftest import Report
from tests.arm.parity import check_litert, prepare
from tests.conftest import Keys


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
