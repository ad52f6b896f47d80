"""Running candidate models on an emulated ARM device and returning their outputs.

Place in the design: ``build`` opens one :class:`ArmDevices` for the whole build (``--emulate``);
``validate.settle`` asks it, for each ARM profile, for every candidate's outputs on the evaluation
rows, and scores them like the host's (``evaluate.score_arm``); ``choice`` decides. The device is
the emulated-ARM harness in ``devices/emulation`` (docs/arm64.md): a Debian root under qemu
user-mode, on the core the profile names (``devices/emulation/cpus.py``), with the edgeship runtime
and the device's own onnxruntime or LiteRT. Each device flavour is prepared once per build; one
Python process per profile loads every candidate with the runtime's backend, one thread, in the
batches the host used, and writes its outputs into the device's work folder, where the host reads
them back. Nothing is timed there: emulated milliseconds say nothing about a device.

``--emulate auto`` measures where it costs seconds: root, and the device's Debian root already
built on this host (``python -m devices.emulation prepare``, or a build with ``--emulate on``,
builds it once, in minutes). Otherwise the report says why ARM parity was not measured. ``on``
prepares whatever is missing, and raises :class:`EmulationRequired` when it cannot.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

import numpy as np

from devices import Profile, host_arch
from packager.convert import Arrays
from packager.evaluate import MAX_EVAL_BATCH
from packager.runner import backend_name
from runtime.errors import UsageError

if TYPE_CHECKING:
    from devices.emulation.arm64 import Arm64Device, EmulationConfig
    from devices.emulation.cpus import CpuModel

EMULATE = ("auto", "on", "off")
NOT_MEASURED = "ARM parity not measured"
_SUFFIX = {"onnx": ".onnx", "tflite": ".tflite"}
Report = Callable[[str], None]

RUNNER = """
import json, platform, sys
from pathlib import Path
import numpy as np
from runtime.backends.base import open_backend

work = Path(sys.argv[1])
job = json.loads((work / "job.json").read_text())
with np.load(str(work / "inputs.npz")) as saved:
    inputs = {name: saved["arr_%d" % i] for i, name in enumerate(job["inputs"])}
n = max([v.shape[0] for v in inputs.values() if v.ndim] or [1])

def rows(start, stop):
    return {k: v[start:stop] if v.ndim and v.shape[0] == n else v for k, v in inputs.items()}

def run(path):
    backend = open_backend(job["backend"], path, 1)
    fixed = [s.shape[0] for s in backend.inputs if s.name in inputs and s.shape and s.shape[0]
             and inputs[s.name].ndim and inputs[s.name].shape[0] == n]
    step = fixed[0] if fixed else min(n, job["max_batch"])
    parts = [backend.run(rows(i, i + step)) for i in range(0, n, step)]
    scales = getattr(backend, "output_quantization", {})
    out = {}
    for name in parts[0]:
        v = np.concatenate([p[name] for p in parts])
        if name in scales and v.dtype.kind in "iu":
            v = (v.astype(np.float64) - scales[name][1]) * scales[name][0]
        out[name] = v
    return out

result = {"machine": platform.machine(), "outputs": {}, "failed": {}}
for i, mode in enumerate(job["modes"]):
    try:
        out = run(work / job["files"][i])
    except Exception as e:
        result["failed"][mode] = " ".join(str(e).split())[:300]
        continue
    np.savez(str(work / ("out%d.npz" % i)), *out.values())
    result["outputs"][mode] = list(out)
(work / "result.json").write_text(json.dumps(result))
"""
"""The program run inside the device: ``python3 -c RUNNER WORK``. It reads and writes only WORK,
and mirrors the host's ``evaluate.run_all`` / ``validate_tflite.run_all``: the same backend
settings (one thread), the same batches (the model's fixed batch, else up to ``max_batch`` rows),
quantized TFLite outputs as the real numbers they stand for. Python 3.9 and numpy 1.19 (the armhf
device) run it."""


class EmulationRequired(UsageError):
    """``--emulate on``, and the emulated ARM device cannot be prepared or run on this host."""


@dataclass(frozen=True)
class ArmRun:
    """What one profile's candidates gave on the emulated device: outputs by mode and output
    name, and why the others did not run there."""

    device: str
    """e.g. ``emulated Cortex-A72 (qemu)``."""
    machine: str
    """What the device's Python calls its machine (``aarch64``, ``armv7l``)."""
    outputs: dict[str, Arrays] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def report(self, rows: int, data: str) -> dict[str, Any]:
        """Where ARM parity was measured, for the candidates report (``arm_parity``)."""
        return {
            "measured": True,
            "device": self.device,
            "machine": self.machine,
            "rows": rows,
            "data": data,
            "note": f"each candidate's outputs on {self.device}, scored like the host's on the "
            "same rows; latency is the host's (timings under emulation say nothing about the "
            "device)",
            "seconds": round(self.seconds, 3),
        }


def core_for(profile: Profile) -> CpuModel:
    """The core a profile is emulated on: the one ``devices/emulation/cpus.py`` names for it, else
    the oldest core of its architecture (Cortex-A53, or the 32-bit Cortex-A7)."""
    from devices.emulation.cpus import CORTEX_A7, CORTEX_A53, PROFILE_CPUS

    default = CORTEX_A7 if profile.arch == "armv7" else CORTEX_A53
    return PROFILE_CPUS.get(profile.name, default)


def core_name(cpu: CpuModel) -> str:
    """``emulated Cortex-A72 (qemu)`` for qemu's ``cortex-a72``."""
    family, _, model = cpu.qemu.partition("-")
    joint = "-" if family == "cortex" else " "
    return f"emulated {family.capitalize()}{joint}{model.upper()} (qemu)"


class ArmDevices:
    """The emulated ARM devices of one build: each flavour (arm64, armhf) prepared on first use
    and unmounted when the ``with`` block ends. ``warn`` gets one line when ARM parity cannot be
    measured under ``auto``."""

    def __init__(
        self,
        emulate: str,
        model_format: str,
        progress: Report = lambda _: None,
        warn: Report = lambda _: None,
    ) -> None:
        if emulate not in EMULATE:
            raise UsageError(f"--emulate must be one of {', '.join(EMULATE)}")
        self._emulate = emulate
        self._format = model_format
        self._progress = progress
        self._warn = warn
        self._stack = ExitStack()
        self._devices: dict[str, Union[Arm64Device, str]] = {}
        """By profile arch: the prepared device, or why there is none."""
        self._warned = False

    def __enter__(self) -> ArmDevices:
        return self

    def __exit__(
        self,
        kind: Optional[type[BaseException]],
        error: Optional[BaseException],
        trace: Optional[TracebackType],
    ) -> None:
        self._stack.close()

    @staticmethod
    def applies(profile: Profile) -> bool:
        """Whether ``profile`` is an ARM device this host emulates (never the host's own arch)."""
        return profile.arch in ("aarch64", "armv7") and profile.arch != host_arch()

    def run(self, profile: Profile, models: dict[str, bytes], inputs: Arrays) -> Union[ArmRun, str]:
        """Every model of ``models`` (by mode) on ``inputs``, in one process on the profile's
        emulated core; or why ARM parity is not measured (``ARM parity not measured: …``). A
        model that cannot be loaded or run there is in ``failed``. Raises EmulationRequired under
        ``--emulate on`` when the device cannot be prepared or the process does not finish."""
        from devices.emulation.config import EmulationError

        if profile.arch not in self._devices:
            try:
                self._devices[profile.arch] = self._prepare(profile)
            except EmulationError as e:
                self._devices[profile.arch] = self._not_measured(profile, e)
        device = self._devices[profile.arch]
        if isinstance(device, str):
            return device
        cpu = core_for(profile)
        self._progress(f"running {', '.join(models)} on {core_name(cpu)} for {profile.name}")
        try:
            return self._run(device, cpu, models, inputs)
        except (EmulationError, OSError) as e:  # OSError: the device's work folder
            return self._not_measured(profile, e)

    def _prepare(self, profile: Profile) -> Union[Arm64Device, str]:
        if self._emulate == "off":
            return f"{NOT_MEASURED}: --emulate off"
        try:
            from devices.emulation.arm64 import Arm64Device, EmulationConfig
        except ImportError as e:
            why = f"the emulation harness (devices/emulation, in the source tree) is missing: {e}"
            if self._emulate == "on":
                raise EmulationRequired(f"--emulate on: {why}") from e
            return self._skip(why)
        config = EmulationConfig.armv7() if profile.arch == "armv7" else EmulationConfig()
        # mounted with the first profile's core; later profiles switch cores per run
        config = dataclasses.replace(config, cpu=core_for(profile))
        if self._emulate == "auto":
            why = _not_ready(config)
            if why:
                return self._skip(why)
        self._progress(f"preparing the emulated {config.deb_arch} device (docs/arm64.md)")
        return self._stack.enter_context(
            Arm64Device.prepare(config, progress=self._progress, fresh=False)
        )

    def _not_measured(self, profile: Profile, error: Exception) -> str:
        why = " ".join(str(error).split())
        if self._emulate == "on":
            raise EmulationRequired(
                f"--emulate on: {profile.name} needs an emulated {profile.arch} device: {why} "
                "(docs/arm64.md)"
            ) from error
        return self._skip(why)

    def _skip(self, why: str) -> str:
        if not self._warned:
            self._warned = True
            self._warn(f"{NOT_MEASURED}: {why}")
        return f"{NOT_MEASURED}: {why}"

    def _run(
        self, device: Arm64Device, cpu: CpuModel, models: dict[str, bytes], inputs: Arrays
    ) -> ArmRun:
        from devices.emulation.config import WORK, EmulationError

        work_host = Path(tempfile.mkdtemp(prefix="candidates-", dir=device.host_path(WORK)))
        work = f"{WORK}/{work_host.name}"
        try:
            suffix = _SUFFIX[self._format]
            files = [f"model{i}{suffix}" for i in range(len(models))]
            for name, model_bytes in zip(files, models.values()):
                (work_host / name).write_bytes(model_bytes)
            np.savez(work_host / "inputs.npz", *inputs.values())
            job = {
                "inputs": list(inputs),
                "modes": list(models),
                "files": files,
                "backend": backend_name(self._format),
                "max_batch": MAX_EVAL_BATCH,
            }
            (work_host / "job.json").write_text(json.dumps(job), encoding="utf-8")
            started = time.monotonic()
            done = device.execute(["python3", "-c", RUNNER, work], cpu=cpu)
            seconds = time.monotonic() - started
            if done.returncode != 0 or not (work_host / "result.json").is_file():
                tail = " ".join(done.stderr.strip().splitlines()[-3:])
                raise EmulationError(f"the candidate runner exited {done.returncode}: {tail}")
            result = json.loads((work_host / "result.json").read_text(encoding="utf-8"))
            outputs = {}
            for i, mode in enumerate(models):
                if mode in result["outputs"]:
                    with np.load(work_host / f"out{i}.npz", allow_pickle=False) as saved:
                        names = result["outputs"][mode]
                        outputs[mode] = {n: saved[f"arr_{j}"] for j, n in enumerate(names)}
        finally:
            shutil.rmtree(work_host, ignore_errors=True)
        self._progress(f"{core_name(cpu)}: {len(models)} candidate(s) in {seconds:.1f} s")
        return ArmRun(core_name(cpu), result["machine"], outputs, result["failed"], seconds)


def _not_ready(config: EmulationConfig) -> str:
    """Why ``auto`` does not emulate ``config``'s device here; empty when it does."""
    if os.geteuid() != 0:
        return "emulating an ARM device needs root (docs/arm64.md)"
    if not config.root_cached:
        return (
            f"the emulated {config.deb_arch} device is not prepared on this host "
            f"(`python -m devices.emulation{' --armv7' if config.deb_arch == 'armhf' else ''} "
            "prepare` or a build with --emulate on prepares it once, in minutes)"
        )
    return ""
