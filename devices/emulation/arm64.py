"""An emulated ARM device on an x86-64 host: a Debian root run under qemu user-mode emulation.

``Arm64Device.prepare()`` makes the host able to run ARM programs (``host-setup.sh``), builds or
reuses a cached Debian root (``make-root.sh``), installs the device's dependencies into it as ARM
wheels with the host's pip, copies the edgeship runtime from this working tree, mounts ``/proc``
(with an ARM ``cpuinfo`` over it), ``/sys`` and ``/dev``, and unmounts them when the ``with``
block ends, also on failure. Inside, ``run`` executes ``edgeship-device`` commands on a named core
(``devices/emulation/cpus.py``)::

    with Arm64Device.prepare(progress=print) as dev:
        bundle = dev.copy_in(Path("dist/iris-1.0.0-aarch64-generic.eship"))
        dev.run(["install", bundle, "--json"], cpu=CORTEX_A53)

``EmulationConfig()`` is the arm64 (Debian bookworm) device; ``EmulationConfig.armv7()`` the
32-bit armhf (Debian bullseye, TFLite-only) one. Needs root. One session at a time per cache
folder (a lock file serializes them); a session opened again in the same process shares the open
one. See docs/arm64.md for the cache layout and the timings.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

from devices.emulation.config import (
    DEVICE_HOME,
    RUNTIME,
    SITE,
    WORK,
    EmulationConfig,
    EmulationError,
    EmulationUnavailable,
)
from devices.emulation.cpus import CpuModel
from devices.emulation.rootfs import (
    copy_runtime,
    host_setup,
    host_setup_step,
    install_site,
    make_root,
    mount,
    unmount_all,
)

__all__ = [
    "Arm64Device",
    "DeviceRun",
    "EmulationConfig",
    "EmulationError",
    "EmulationUnavailable",
    "host_setup",
]

Progress = Callable[[str], None]
_OPEN: dict[Path, Arm64Device] = {}
"""The sessions this process holds, by cache folder."""


@dataclass(frozen=True)
class DeviceRun:
    """One finished command in the emulated device."""

    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def json(self) -> Any:
        """stdout parsed as JSON; raises ValueError when it is not."""
        return json.loads(self.stdout)


class Arm64Device:
    """A prepared, mounted emulated device. Make one with :meth:`prepare`."""

    def __init__(self, config: EmulationConfig, timings: dict[str, float]) -> None:
        self.config = config
        self.root = config.root
        self.timings = timings
        """Seconds per preparation step, in order."""
        self.runs: list[DeviceRun] = []
        self._cpuinfo = config.folder / "cpuinfo"
        self._cpu = config.cpu

    @classmethod
    @contextlib.contextmanager
    def prepare(
        cls,
        config: Optional[EmulationConfig] = None,
        progress: Progress = lambda _: None,
        fresh: bool = True,
    ) -> Iterator[Arm64Device]:
        """Prepare the device and mount it for the ``with`` block; unmount afterwards.

        ``fresh``: empty the device's store and work folder first, so it starts as a new device.
        While this process already holds a session on the same cache folder (a build run inside
        a test session that holds the device), that device is yielded as it is: not prepared
        again, not emptied, and left mounted (the lock would otherwise wait on this very process).
        Raises EmulationUnavailable (this host cannot emulate) or EmulationError.
        """
        cfg = config or EmulationConfig()
        held = _OPEN.get(cfg.folder)
        if held is not None:
            progress(f"{cfg.deb_arch}: sharing the device this process already holds")
            yield held
            return
        timings: dict[str, float] = {}

        def step(name: str, action: Callable[[], str]) -> None:
            start = time.monotonic()
            note = action()
            timings[name] = time.monotonic() - start
            progress(f"{cfg.deb_arch}: {name}: {timings[name]:.1f} s{f' ({note})' if note else ''}")

        step("host setup", lambda: host_setup_step(cfg))
        cfg.folder.mkdir(parents=True, exist_ok=True)
        with open(cfg.folder / ".lock", "w", encoding="utf-8") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one session per root: mounts are shared
            if cfg.root.exists():
                unmount_all(cfg.root)  # mounts a killed session left behind
            step("root filesystem", lambda: make_root(cfg))
            step("device wheels", lambda: install_site(cfg))
            step("runtime copy", lambda: copy_runtime(cfg, fresh))
            try:
                step("mounts", lambda: mount(cfg))
                device = cls(cfg, timings)
                progress(f"{cfg.deb_arch}: device ready in {sum(timings.values()):.1f} s")
                _OPEN[cfg.folder] = device
                yield device
            finally:
                _OPEN.pop(cfg.folder, None)
                unmount_all(cfg.root)

    @property
    def setup_seconds(self) -> float:
        return sum(self.timings.values())

    def copy_in(self, path: Path, name: Optional[str] = None) -> str:
        """Copy a host file into the device's work folder; returns its path inside the device."""
        target = self.root / WORK.lstrip("/") / (name or path.name)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        return f"{WORK}/{target.name}"

    def host_path(self, device_path: str) -> Path:
        """Where a path inside the device lies on the host."""
        return self.root / device_path.lstrip("/")

    def use_cpu(self, cpu: CpuModel) -> None:
        """Make the device's core ``cpu`` from the next command on: its cpuinfo (rewritten in
        place, so the bind mount shows it) and qemu's CPU model."""
        if cpu != self._cpu:
            self._cpuinfo.write_text(cpu.cpuinfo(os.cpu_count() or 1), encoding="utf-8")
            self._cpu = cpu

    def command(self, argv: Sequence[str], env: Optional[Mapping[str, str]] = None) -> list[str]:
        """The host command line that runs ``argv`` inside the device, on the current core, with
        a clean environment (for ``subprocess.Popen`` of long-running processes, such as the
        agent)."""
        base = {
            "QEMU_CPU": self._cpu.qemu,
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": "/root",
            "LC_ALL": "C.UTF-8",
            "PYTHONPATH": f"{RUNTIME}:{SITE}",
            "EDGESHIP_HOME": DEVICE_HOME,
            **(env or {}),
        }
        return (
            ["chroot", str(self.root), "/usr/bin/env", "-i"]
            + [f"{k}={v}" for k, v in base.items()]
            + list(argv)
        )

    def execute(
        self, argv: Sequence[str], timeout: Optional[float] = None, cpu: Optional[CpuModel] = None
    ) -> DeviceRun:
        """Run ``argv`` inside the device (on ``cpu``, default the config's) and wait; never
        raises for a non-zero exit."""
        self.use_cpu(cpu or self.config.cpu)
        start = time.monotonic()
        try:
            done = subprocess.run(
                self.command(argv),
                capture_output=True,
                text=True,
                timeout=timeout or self.config.timeout_s,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise EmulationError(f"{' '.join(argv)}: {e}") from e
        result = DeviceRun(
            tuple(argv), done.returncode, done.stdout, done.stderr, time.monotonic() - start
        )
        self.runs.append(result)
        return result

    def run(
        self, args: Sequence[str], timeout: Optional[float] = None, cpu: Optional[CpuModel] = None
    ) -> DeviceRun:
        """Run ``edgeship-device ARGS`` inside the device."""
        return self.execute(["edgeship-device", *args], timeout, cpu)
