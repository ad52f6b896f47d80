"""packager/emulated.py without an emulated device: which core a profile is emulated on, and what
``--emulate`` does on a host that cannot emulate (a real condition: the device's cache folder
cannot be created). tests/arm/test_arm_parity_build.py runs the real device."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

import devices
from packager.build import BuildOptions, build
from packager.cli import main
from packager.emulated import NOT_MEASURED, ArmDevices, EmulationRequired, core_for, core_name
from packager.evaluate import LatencySettings
from packager.inspect import inspect_bundle
from runtime.errors import UsageError
from tests.packager import quant_models as qm

FAST = LatencySettings(seconds=0.2, max_rounds=50, min_rounds=5, warmup=1)


@pytest.fixture
def no_device(tmp_path, monkeypatch):
    """A host whose emulated-device cache sits below a plain file: it cannot be created, so no
    device can be prepared here, root or not."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("EDGESHIP_EMULATION_CACHE", str(blocker / "cache"))
    return blocker


@pytest.fixture
def mlp(tmp_path):
    model = qm.mlp(tmp_path / "mlp.onnx", features=16, hidden=32)
    np.save(tmp_path / "x.npy", qm.rows((64, 16)))
    return model, tmp_path / "x.npy"


def options(keys, model, sample, out, **extra):
    return BuildOptions(
        model=model,
        targets=extra.pop("targets", ("raspberry-pi-4",)),
        keys=(keys.key("release"),),
        name="m",
        version="1.0.0",
        sample=sample,
        out=out,
        latency=FAST,
        **extra,
    )


@pytest.mark.parametrize(
    ("profile", "core"),
    [
        ("aarch64-generic", "emulated Cortex-A53 (qemu)"),
        ("raspberry-pi-4", "emulated Cortex-A72 (qemu)"),
        ("raspberry-pi-5", "emulated Cortex-A76 (qemu)"),
        ("jetson-orin-cpu", "emulated Neoverse N1 (qemu)"),
        ("armv7-tflite", "emulated Cortex-A7 (qemu)"),
    ],
)
def test_each_arm_profile_is_emulated_on_its_core(profile, core):
    p = devices.load_profile(profile)
    assert ArmDevices.applies(p)
    assert core_name(core_for(p)) == core


def test_a_users_own_arm_profile_gets_the_oldest_core_of_its_arch():
    box = devices.Profile("my-box", "aarch64", "onnxruntime", backends=("onnxruntime",))
    assert core_name(core_for(box)) == "emulated Cortex-A53 (qemu)"
    old = devices.Profile("my-pi2", "armv7", "litert", backends=("litert",))
    assert core_name(core_for(old)) == "emulated Cortex-A7 (qemu)"


def test_profiles_of_the_hosts_own_arch_never_emulate():
    here = devices.load_profile(f"{devices.host_arch()}-generic")
    assert not ArmDevices.applies(here)


def test_emulate_on_without_a_device_fails_with_a_usage_error(keys, mlp, no_device, tmp_path):
    model, sample = mlp
    out = tmp_path / "out"
    with pytest.raises(EmulationRequired) as raised:
        build(options(keys, model, sample, out, emulate="on"))
    assert isinstance(raised.value, UsageError) and raised.value.exit_code == 2
    message = str(raised.value)
    assert message.startswith("--emulate on: raspberry-pi-4 needs an emulated aarch64 device: ")
    assert "cannot create the device cache" in message or "needs root" in message
    assert not out.exists()


def test_emulate_on_through_the_cli_exits_2_with_one_line(keys, mlp, no_device, tmp_path):
    model, sample = mlp
    args = ["build", str(model), "--target", "raspberry-pi-4", "--key", str(keys.key("release"))]
    args += ["--name", "m", "--version", "1.0.0", "--sample", str(sample)]
    args += ["--out", str(tmp_path / "out"), "--emulate", "on", "--json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "--emulate on: raspberry-pi-4 needs an emulated" in errors[0]
    assert not (tmp_path / "out").exists()


def test_emulate_auto_without_a_device_builds_and_says_parity_was_not_measured(
    keys, mlp, no_device, tmp_path
):
    model, sample = mlp
    warnings, tables = [], {}
    targets = ("raspberry-pi-4", "aarch64-generic", f"{devices.host_arch()}-generic")
    results = build(
        options(keys, model, sample, tmp_path / "out", targets=targets),
        warn=warnings.append,
        table=tables.__setitem__,
    )
    # one warning for the build, however many ARM targets it has
    assert [w for w in warnings if w.startswith(NOT_MEASURED)] == [warnings[-1]]
    for result in results:
        validation = inspect_bundle(result.path)["manifest"]["validation"]
        if result.manifest.target.profile == f"{devices.host_arch()}-generic":
            assert (
                "arm_parity" not in validation
                and tables[result.manifest.target.profile]["arm_parity"] is None
            )
            continue
        note = validation["arm_parity"]
        assert note["measured"] is False and note["note"].startswith(f"{NOT_MEASURED}: ")
        assert result.to_dict()["arm_parity"] == note
        assert all("arm" not in c for c in validation["candidates"])


def test_emulate_off_records_why_and_warns_nothing(keys, mlp, tmp_path):
    model, sample = mlp
    warnings = []
    [result] = build(
        options(keys, model, sample, tmp_path / "out", emulate="off"), warn=warnings.append
    )
    validation = inspect_bundle(result.path)["manifest"]["validation"]
    assert validation["arm_parity"] == {
        "measured": False,
        "note": "ARM parity not measured: --emulate off",
    }
    assert not [w for w in warnings if NOT_MEASURED in w]


def test_unknown_emulate_value_is_a_usage_error(keys, mlp, tmp_path):
    model, sample = mlp
    with pytest.raises(UsageError, match="--emulate must be one of auto, on, off"):
        build(options(keys, model, sample, tmp_path / "out", emulate="maybe"))
    [emulate] = [p for p in main.commands["build"].params if p.name == "emulate"]
    assert emulate.default == "auto" and list(emulate.type.choices) == ["auto", "on", "off"]
