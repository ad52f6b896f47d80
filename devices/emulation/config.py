"""What an emulated ARM device is made of (``EmulationConfig``), where it is cached, and the
errors preparing one raises. See devices/emulation/arm64.py for the device itself."""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Optional

from devices.emulation.cpus import CORTEX_A7, DEFAULT_CPU, CpuModel
from runtime.errors import EdgeshipError

HERE = Path(__file__).resolve().parent
SOURCE_TREE = HERE.parents[1]
CACHE_ENV = "EDGESHIP_EMULATION_CACHE"
MIRROR_ENV = "EDGESHIP_DEBIAN_MIRROR"
DEVICE_PACKAGES = ("numpy", "cryptography", "paho-mqtt", "click", "onnxruntime", "ai-edge-litert")
SITE = "/opt/site"
RUNTIME = "/opt/edgeship"
WORK = "/work"
DEVICE_HOME = "/var/lib/edgeship"
SITE_MARKER = ".edgeship-site-complete"
ROOT_MARKER = ".edgeship-root-complete"
"""Written last by make-root.sh: a root without it is built again."""
LAUNCHER = """#!/usr/bin/python3
# The console script pip would write for edgeship's [project.scripts] entry.
import sys

from runtime.cli import main

sys.exit(main(prog_name="edgeship-device"))
"""


class EmulationError(EdgeshipError):
    """The emulated device could not be prepared or a command could not be started in it."""

    exit_code = 8


class EmulationUnavailable(EmulationError):
    """This host cannot emulate ARM at all (not root, the cache folder cannot be created,
    binfmt_misc cannot be enabled)."""


def cache_base() -> Path:
    """``$EDGESHIP_EMULATION_CACHE``, else /var/cache/edgeship; each device flavour is a folder
    in it (``arm64-bookworm``, ``armhf-bullseye``)."""
    return Path(os.environ.get(CACHE_ENV) or "/var/cache/edgeship")


@dataclass(frozen=True)
class EmulationConfig:
    """What the emulated device is made of: ``EmulationConfig()`` is the arm64 device,
    :meth:`armv7` the 32-bit one. ``mirror`` None: the host's apt mirror."""

    suite: str = "bookworm"
    deb_arch: str = "arm64"
    qemu_arch: str = "aarch64"
    wheel_arch: str = "aarch64"
    python_version: str = "3.11"
    glibc_minor: int = 36
    """bookworm's glibc is 2.36: every manylinux_2_17 … manylinux_2_36 wheel runs there."""
    packages: tuple[str, ...] = DEVICE_PACKAGES
    """PyPI packages installed as wheels with the host's pip (with their dependencies)."""
    pin_to_host: bool = True
    """Pin ``packages`` to the versions installed on the host, so parity compares the same
    library versions on both architectures."""
    no_deps: tuple[str, ...] = ()
    """PyPI packages installed without their dependencies (Debian provides those)."""
    debian_packages: tuple[str, ...] = ("python3",)
    """Installed by debootstrap into the root."""
    mirror: Optional[str] = None
    cpu: CpuModel = DEFAULT_CPU
    """The core commands run on unless they name another (devices/emulation/cpus.py)."""
    cache: Optional[Path] = None
    """Default: ``cache_base() / f"{deb_arch}-{suite}"``."""
    timeout_s: float = 600.0

    @classmethod
    def armv7(cls) -> EmulationConfig:
        """A 32-bit ARM (armhf) device: Debian bullseye's Python 3.9, numpy and cryptography
        from Debian (PyPI has no armv7 wheels of them), tflite-runtime 2.11 as the only backend
        (PyPI has no armv7 onnxruntime or ai-edge-litert)."""
        return cls(
            suite="bullseye",
            deb_arch="armhf",
            qemu_arch="arm",
            wheel_arch="armv7l",
            python_version="3.9",
            glibc_minor=31,
            packages=("paho-mqtt>=2", "click>=8", "tomli>=1.1"),
            pin_to_host=False,
            no_deps=("tflite-runtime==2.11.0",),
            # debootstrap resolves no virtual packages: cffi-backend is named for cryptography
            debian_packages=(
                "python3",
                "python3-numpy",
                "python3-cryptography",
                "python3-cffi-backend",
            ),
            cpu=CORTEX_A7,
        )

    @property
    def folder(self) -> Path:
        return self.cache or cache_base() / f"{self.deb_arch}-{self.suite}"

    @property
    def root(self) -> Path:
        return self.folder / "root"

    @property
    def root_cached(self) -> bool:
        """The Debian root is built: preparing the device then takes seconds, not minutes."""
        return (self.root / ROOT_MARKER).is_file()

    def platform_tags(self) -> list[str]:
        arch = self.wheel_arch
        tags = [f"manylinux2014_{arch}", f"linux_{arch}"]
        tags += [f"manylinux_2_{n}_{arch}" for n in range(17, self.glibc_minor + 1)]
        return tags

    def requirements(self) -> list[str]:
        """``packages``, pinned to the host's versions when ``pin_to_host``."""
        if not self.pin_to_host:
            return list(self.packages)
        pinned = []
        for name in self.packages:
            try:
                pinned.append(f"{name}=={metadata.version(name)}")
            except metadata.PackageNotFoundError:
                pinned.append(name)
        return pinned
