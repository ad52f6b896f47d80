"""What the ARM scenarios share: the documented tolerance, the comparison that records parity
figures, preparing a device with live progress, and the LiteRT backend check."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from devices.emulation.arm64 import Arm64Device, EmulationConfig
from devices.emulation.cpus import CpuModel
from runtime.backends.base import open_backend
from tests.arm.conftest import Report
from tests.packager import tflite_models

QUANTIZED = ("dynamic", "static", "fp16", "int8")
TOLERANCE = {"float": (1e-5, 1e-6), "quantized": (0.0, 5e-2)}
"""(rtol, atol) allowed between ARM and x86-64 per model kind (docs/arm64.md#parity): float32
models must agree to float32 rounding; quantized models (whose x86 and ARM kernels accumulate and
requantize differently) within the quantized self-test tolerance. Integer outputs (class labels,
int8 tensors) must always be identical."""


def prepare(
    request: pytest.FixtureRequest, report: Report, config: EmulationConfig
) -> Iterator[Arm64Device]:
    """Prepare the device for a session fixture, printing progress live (the first preparation
    takes minutes) and recording the setup timings."""
    capture = request.config.pluginmanager.get_plugin("capturemanager")

    def progress(message: str) -> None:
        with capture.global_and_fixture_disabled():
            print(message, flush=True)

    with Arm64Device.prepare(config, progress=progress) as dev:
        report.setups[f"{config.deb_arch} ({config.suite})"] = dict(dev.timings)
        yield dev


def compare(
    report: Report,
    label: str,
    mode: str,
    part: str,
    arm: dict[str, np.ndarray],
    x86: dict[str, np.ndarray],
    rows: slice,
) -> list[str]:
    """Record max |arm - x86| per output over ``rows``; return the outputs out of tolerance."""
    rtol, atol = TOLERANCE["quantized" if mode in QUANTIZED else "float"]
    bad = []
    for name, expected in x86.items():
        got, want = arm[name][rows], expected[rows]
        diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
        worst = float(diff.max()) if diff.size else 0.0
        report.parity.append(
            {
                "case": label,
                "mode": mode,
                "set": part,
                "rows": len(got),
                "output": name,
                "max_abs_diff": worst,
                "identical": bool(np.array_equal(got, want)),
            }
        )
        ok = (
            np.allclose(got, want, rtol=rtol, atol=atol)
            if want.dtype.kind == "f"
            else np.array_equal(got, want)
        )
        if not ok:
            bad.append(f"{name} ({part}): max |arm-x86| {worst:.3g}")
    return bad


LITERT_SCRIPT = """
import sys
from pathlib import Path
import numpy as np
from runtime.backends.base import open_backend
backend = open_backend("litert", Path(sys.argv[1]), 4)
x = np.load(sys.argv[2])
np.savez(sys.argv[3], **backend.run({backend.inputs[0].name: x}))
"""


def check_litert(
    device: Arm64Device, cpu: CpuModel, kind: str, report: Report, tmp_path: Path
) -> list[str]:
    """Run a float32 or int8 TFLite model through edgeship's LiteRT backend on the device (on
    ``cpu``) and on this host; record the parity figures and return the outputs out of
    tolerance."""
    rng = np.random.default_rng(11)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    if kind == "float":
        model = tflite_models.float_mlp(tmp_path / "m.tflite")
    else:
        model = tflite_models.int8_fc(tmp_path / "m.tflite")
        x = tflite_models.quantize_input(x)
    np.save(tmp_path / "x.npy", x)
    backend = open_backend("litert", model, 4)
    x86 = backend.run({backend.inputs[0].name: x})
    args = [
        device.copy_in(model, f"litert-{kind}.tflite"),
        device.copy_in(tmp_path / "x.npy", f"litert-{kind}.npy"),
        f"/work/litert-{kind}.npz",
    ]
    done = device.execute(["python3", "-c", LITERT_SCRIPT, *args], cpu=cpu)
    label = f"litert {kind}:{device.config.deb_arch}@{cpu.qemu}"
    report.steps.append((label, "load + run", done.seconds, done.returncode))
    assert done.returncode == 0, done.stderr
    with np.load(device.host_path(args[2])) as archive:
        arm = {k: archive[k] for k in archive.files}
    mode = "none" if kind == "float" else "int8"
    return compare(report, label, mode, "random", arm, x86, np.s_[:])
