"""Scenario: ``edgeship build`` for ARM profiles runs every candidate on the emulated device of the
profile's core and gates on the loss measured there (packager/emulated.py, docs/arm64.md).

Real emulation, nothing mocked: the builds prepare the emulated device themselves (or share the
session a scenario in this run already holds) and run each candidate with the device's own
onnxruntime or LiteRT.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import joblib
import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier

from packager.build import BuildOptions, build
from packager.cli import main
from packager.evaluate import LatencySettings
from packager.inspect import inspect_bundle
from tests.arm.conftest import Report
from tests.conftest import Keys
from tests.packager import tflite_models

FAST = LatencySettings(seconds=0.3, max_rounds=60, min_rounds=10, warmup=2)
BUDGET = 0.01


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A scikit-learn MLP on the digits (64 → 64 ReLU → 10): int8 has Gemm/MatMul to quantize.
    Held-out rows with their true labels are the validation data."""
    folder = tmp_path_factory.mktemp("digits")
    x, y = load_digits(return_X_y=True)
    x = (x / 16).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # accurate enough for the gate
        clf = MLPClassifier((64,), max_iter=200, random_state=0).fit(x[:1200], y[:1200])
    joblib.dump(clf, folder / "digits.joblib")
    np.save(folder / "sample.npy", x[:200])
    np.save(folder / "validation.npy", x[1200:])
    np.save(folder / "labels.npy", y[1200:])
    return {
        "model": folder / "digits.joblib",
        "sample": folder / "sample.npy",
        "validation": folder / "validation.npy",
        "labels": folder / "labels.npy",
    }


def _record(report: Report, case: str, result: dict, seconds: float, lines: list[str]) -> None:
    ready = [line.split(": ", 1)[1] for line in lines if "ready in" in line or "sharing" in line]
    parity = result["arm_parity"]
    report.notes.append(
        f"{case}: build {seconds:.1f} s ({ready[0] if ready else 'device preparation not shown'}"
        f"), {parity['device']} ran the candidates in {parity.get('seconds', 0):.1f} s"
    )
    for c in result["candidates"]:
        arm = c.get("arm")
        if arm is None:
            continue
        report.notes.append(
            f"{case}: {c['mode']:<7} {c['verdict']:<22} loss {c['loss']} host / {arm['loss']} "
            f"ARM, max |ARM-host| {arm['max_abs_diff']:.3g} on {arm['rows']} rows"
        )


def test_auto_build_gates_every_candidate_on_the_profiles_emulated_core(
    keys: Keys, digits: dict[str, Path], report: Report, tmp_path: Path
) -> None:
    lines: list[str] = []
    started = time.monotonic()
    [result] = build(
        BuildOptions(
            model=digits["model"],
            targets=("raspberry-pi-4",),
            keys=(keys.key("release"),),
            name="digits",
            version="1.0.0",
            sample=digits["sample"],
            validation=digits["validation"],
            labels=digits["labels"],
            out=tmp_path,
            max_accuracy_drop=BUDGET,
            latency=FAST,
            emulate="on",
        ),
        progress=lines.append,
    )
    _record(report, "digits auto pi4", result.to_dict(), time.monotonic() - started, lines)
    validation = inspect_bundle(result.path)["manifest"]["validation"]
    rows = len(np.load(digits["validation"]))
    parity = validation["arm_parity"]
    assert parity["measured"] is True
    assert parity["device"] == "emulated Cortex-A72 (qemu)"
    assert (parity["machine"], parity["rows"], parity["data"]) == ("aarch64", rows, "validation")
    assert "latency is the host's" in parity["note"]
    ok = [c for c in validation["candidates"] if c["size"] is not None]
    assert {c["mode"] for c in ok} >= {"none", "dynamic"}  # int8 was made for the MLP
    for c in ok:
        arm = c["arm"]
        assert arm["device"] == "emulated Cortex-A72 (qemu)" and arm["rows"] == rows
        assert arm["loss"] is not None and arm["max_abs_diff"] is not None, arm
        broke_on_arm = c["loss"] <= BUDGET < arm["loss"]
        assert (c["verdict"] == "rejected: ARM parity") == broke_on_arm, c
    chosen = next(c for c in ok if c["verdict"] == "chosen")
    assert chosen["mode"] == result.manifest.quantization["mode"]
    assert chosen["arm"]["loss"] <= BUDGET
    assert "not on an aarch64 device nor under emulation" in result.to_dict()["latency_measured_on"]


def test_reproducible_build_with_arm_parity_is_byte_identical(
    keys: Keys, digits: dict[str, Path], report: Report, tmp_path: Path, monkeypatch
) -> None:
    """Through the CLI, an explicit mode under SOURCE_DATE_EPOCH: the ARM numbers are part of the
    signed manifest, the emulated run's seconds are not."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1790000000")
    args = ["build", str(digits["model"]), "--target", "aarch64-generic", "--key"]
    args += [str(keys.key("release")), "--name", "digits", "--version", "1.0.0", "--sample"]
    args += [str(digits["sample"]), "--quantize", "static", "--emulate", "on"]
    started = time.monotonic()
    as_json = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "a"), "--json"])
    assert as_json.exit_code == 0, as_json.output
    [doc] = json.loads(as_json.stdout)
    _record(report, "digits static generic", doc, time.monotonic() - started, [])
    as_text = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "b")])
    assert as_text.exit_code == 0, as_text.output
    assert "aarch64-generic: ARM parity on emulated Cortex-A53 (qemu)" in as_text.stderr
    built = [Path(doc["path"]), tmp_path / "b" / Path(doc["path"]).name]
    assert built[0].read_bytes() == built[1].read_bytes()
    validation = inspect_bundle(built[0])["manifest"]["validation"]
    assert "seconds" not in validation["arm_parity"]
    assert validation["arm_parity"]["device"] == "emulated Cortex-A53 (qemu)"
    assert [c["mode"] for c in validation["candidates"] if "arm" in c] == ["none", "static"]


def test_armv7_tflite_build_is_gated_on_cortex_a7(
    keys: Keys, report: Report, tmp_path: Path
) -> None:
    """A .tflite model for armv7-tflite: its candidate runs under tflite-runtime on the 32-bit
    device (Python 3.9, numpy 1.19) and answers as LiteRT does on this host."""
    model = tflite_models.float_mlp(tmp_path / "mlp.tflite")
    x = np.random.default_rng(7).normal(size=(120, 4)).astype(np.float32)
    np.save(tmp_path / "sample.npy", x)
    lines: list[str] = []
    started = time.monotonic()
    [result] = build(
        BuildOptions(
            model=model,
            targets=("armv7-tflite",),
            keys=(keys.key("release"),),
            name="mlp",
            version="1.0.0",
            sample=tmp_path / "sample.npy",
            out=tmp_path / "dist",
            latency=FAST,
            emulate="on",
        ),
        progress=lines.append,
    )
    _record(report, "tflite armv7", result.to_dict(), time.monotonic() - started, lines)
    validation = inspect_bundle(result.path)["manifest"]["validation"]
    parity = validation["arm_parity"]
    assert parity["device"] == "emulated Cortex-A7 (qemu)"
    assert (parity["machine"], parity["rows"]) == ("armv7l", 120)
    [candidate] = validation["candidates"]
    assert candidate["verdict"] == "chosen" and candidate["arm"]["loss"] <= BUDGET
    assert candidate["arm"]["max_abs_diff"] < 1e-5  # float32 rounding (docs/arm64.md#armv7)
