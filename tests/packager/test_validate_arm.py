"""packager/validate.py with ARM parity: outputs from an ARM device are scored like the host's, a
variant that breaks the budget there is rejected, and the candidates table and the manifest say
where latency and parity were measured.

The ARM device here is a recorded one (``Recorded``): it answers with the host's own onnxruntime
outputs, optionally corrupted for one mode, so these tests pin the gate's use of ARM outputs. The
real emulated device runs in tests/arm/test_arm_parity_build.py.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import devices
from packager.candidates_table import lines_for as table_lines
from packager.convert import convert
from packager.data import load_data
from packager.emulated import ArmDevices, ArmRun
from packager.evaluate import EvalData, LatencySettings, run_all
from packager.validate import Gate, GateOptions
from runtime.errors import ParityError
from tests.packager import quant_models as qm

FAST = LatencySettings(seconds=0.2, max_rounds=50, min_rounds=5, warmup=1)
A72 = "emulated Cortex-A72 (qemu)"
ON_A72 = re.escape(f"on {A72}")


class Recorded(ArmDevices):
    """An ARM device that answers as this host does, except ``wrong`` (rows reversed: a kernel
    that scrambles its outputs) and ``crashed`` (does not run)."""

    def __init__(self, wrong: str = "", crashed: str = "") -> None:
        super().__init__("on", "onnx")
        self.wrong, self.crashed = wrong, crashed
        self.asked: list[tuple[str, tuple[str, ...]]] = []

    def run(self, profile, models, inputs):
        self.asked.append((profile.name, tuple(models)))
        outputs = {m: run_all(b, inputs) for m, b in models.items() if m != self.crashed}
        if self.wrong:
            outputs[self.wrong] = {k: v[::-1].copy() for k, v in outputs[self.wrong].items()}
        failed = {self.crashed: "qemu: uncaught target signal 4"} if self.crashed else {}
        return ArmRun(A72, "aarch64", outputs, failed, 1.5)


@pytest.fixture(scope="module")
def gate_parts(tmp_path_factory):
    """An MLP, 200 rows and labels the float32 model gets right: every variant is within a 5%
    budget on this host."""
    folder = tmp_path_factory.mktemp("arm-gate")
    model = qm.mlp(folder / "mlp.onnx", features=32, hidden=64)
    x = qm.rows((200, 32))
    np.save(folder / "x.npy", x)
    converted = convert(model, load_data(folder / "x.npy"), lambda _: None)
    labels = qm.predict(model, x).argmax(axis=1)
    data = EvalData(
        converted.inputs,
        converted.reference,
        converted.task,
        converted.label_output,
        labels,
        source="validation",
    )
    return converted, data


def run_gate(gate_parts, arm, quantize="auto", profile="raspberry-pi-4", tables=None):
    """The gate for ``profile`` with a 5% budget; the candidates tables land in ``tables``."""
    converted, data = gate_parts
    tables = {} if tables is None else tables
    options = GateOptions(quantize, 0.05, FAST, arm)
    gate = Gate(converted.model_bytes, converted.inputs, data, options)
    return gate.run(devices.load_profile(profile), tables.__setitem__), tables


def test_every_candidate_is_scored_on_arm_like_on_the_host(gate_parts):
    arm = Recorded()
    outcome, tables = run_gate(gate_parts, arm)
    assert arm.asked == [("raspberry-pi-4", ("none", "dynamic", "static"))]
    for c in outcome.candidates:
        assert c.arm is not None and c.arm.device == A72 and c.arm.rows == 200
        assert c.arm.loss == pytest.approx(c.loss)  # the same outputs score the same
        assert c.arm.max_abs_diff == 0.0 and c.arm.detail == ""
        doc = c.to_dict(timings=False)
        assert doc["arm"] == {
            "device": A72,
            "rows": 200,
            "loss": doc["loss"],
            "max_abs_diff": 0.0,
            "label_agreement": None,
            "detail": "",
        }
    parity = outcome.arm_parity
    assert parity["measured"] and parity["device"] == A72 and parity["machine"] == "aarch64"
    assert (parity["rows"], parity["data"]) == (200, "validation")
    assert "latency is the host's" in parity["note"]
    assert outcome.arm_parity_doc(timings=False) == {
        k: v for k, v in parity.items() if k != "seconds"
    }
    assert tables["raspberry-pi-4"]["arm_parity"] == parity


def test_auto_rejects_a_variant_that_breaks_the_budget_on_arm(gate_parts):
    outcome, tables = run_gate(gate_parts, Recorded(wrong="dynamic"))
    rows = {c.mode: c for c in outcome.candidates}
    assert rows["dynamic"].verdict == "rejected: ARM parity"
    assert rows["dynamic"].loss <= 0.05 < rows["dynamic"].arm.loss
    assert rows["dynamic"].arm.max_abs_diff > 0
    assert outcome.mode != "dynamic"
    lines = table_lines("raspberry-pi-4", tables["raspberry-pi-4"])
    [dynamic] = [line for line in lines if line.lstrip().startswith("dynamic")]
    assert dynamic.endswith("rejected: ARM parity")


def test_a_variant_that_does_not_run_on_arm_is_rejected_with_the_reason(gate_parts):
    outcome, tables = run_gate(gate_parts, Recorded(crashed="static"))
    static = next(c for c in outcome.candidates if c.mode == "static")
    assert static.verdict == "rejected: ARM parity"
    assert static.arm.loss is None and static.arm.detail == "qemu: uncaught target signal 4"
    lines = table_lines("raspberry-pi-4", tables["raspberry-pi-4"])
    assert any(
        line.endswith("rejected: ARM parity (qemu: uncaught target signal 4)") for line in lines
    )


def test_an_explicit_mode_that_breaks_the_budget_on_arm_fails(gate_parts):
    tables = {}
    with pytest.raises(ParityError, match=f"dynamic has accuracy drop [0-9.]+ {ON_A72}, over"):
        run_gate(gate_parts, Recorded(wrong="dynamic"), quantize="dynamic", tables=tables)
    verdicts = {c["mode"]: c["verdict"] for c in tables["raspberry-pi-4"]["candidates"]}
    assert verdicts == {"none": "baseline", "dynamic": "rejected: ARM parity"}


def test_float32_breaking_the_budget_on_arm_fails_the_build(gate_parts):
    with pytest.raises(ParityError, match=f"float32 has accuracy drop [0-9.]+ {ON_A72}"):
        run_gate(gate_parts, Recorded(wrong="none"))


def test_profiles_of_the_hosts_arch_are_not_sent_to_the_arm_device(gate_parts):
    arm = Recorded()
    outcome, tables = run_gate(gate_parts, arm, profile=f"{devices.host_arch()}-generic")
    assert arm.asked == []
    assert outcome.arm_parity is None and tables[outcome.profile]["arm_parity"] is None
    assert all(c.arm is None and "arm" not in c.to_dict() for c in outcome.candidates)


REPORT = {
    "measure": "accuracy drop",
    "latency_measured_on": "this x86_64 host (x86_64), 4 thread(s), batch 1, not on an aarch64 "
    "device nor under emulation",
    "candidates": [
        {
            "mode": "none",
            "verdict": "chosen",
            "detail": "",
            "size": 20294,
            "size_ratio": 1.0,
            "loss": 0.0,
            "metrics": {"accuracy": 0.928},
            "latency_ms": {"p50": 0.009, "p95": 0.011, "runs": 50},
            "latency_ratio": 1.0,
            "arm": {"device": A72, "rows": 597, "loss": 0.0, "max_abs_diff": 2.38419e-07},
        },
        {
            "mode": "static",
            "verdict": "rejected: ARM parity",
            "detail": "",
            "size": 8648,
            "size_ratio": 0.43,
            "loss": 0.0,
            "metrics": {"accuracy": 0.928},
            "latency_ms": {"p50": 0.010, "p95": 0.012, "runs": 50},
            "latency_ratio": 1.02,
            "arm": {"device": A72, "rows": 597, "loss": 0.0318, "max_abs_diff": 0.61},
        },
    ],
    "arm_parity": {"measured": True, "device": A72, "rows": 597},
}


def test_the_table_shows_arm_numbers_and_where_each_was_measured():
    lines = table_lines("raspberry-pi-4", REPORT)
    assert lines[0] == (
        "raspberry-pi-4: loss = accuracy drop; latency on this x86_64 host (x86_64), 4 thread(s), "
        "batch 1, not on an aarch64 device nor under emulation"
    )
    assert lines[1] == f"raspberry-pi-4: ARM parity on {A72}, 597 rows"
    assert lines[2].split() == [
        "mode", "bytes", "x", "size", "p50", "ms", "p95", "ms", "x", "time", "accuracy", "loss",
        "arm", "loss", "|arm-host|", "verdict",
    ]  # fmt: skip
    assert lines[3].split()[-3:] == ["0.0000", "2.38e-07", "chosen"]
    assert lines[4].split()[-6:] == ["0.0000", "0.0318", "0.61", "rejected:", "ARM", "parity"]


def test_the_table_says_when_arm_parity_was_not_measured():
    note = "ARM parity not measured: --emulate off"
    report = {
        **REPORT,
        "arm_parity": {"measured": False, "note": note},
        "candidates": [{k: v for k, v in c.items() if k != "arm"} for c in REPORT["candidates"]],
    }
    lines = table_lines("raspberry-pi-4", report)
    assert lines[1] == f"raspberry-pi-4: {note}"
    assert "arm" not in lines[2] and lines[2].split()[-1] == "verdict"
    x86 = {**report, "arm_parity": None}
    assert not any("ARM parity" in line for line in table_lines("x86_64-generic", x86)[:2])
