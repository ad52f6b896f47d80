"""Preparing an emulated device's root filesystem on the host, step by step (each step returns
a note for the progress line): qemu and binfmt (``host-setup.sh``), the Debian root
(``make-root.sh``), the wheels, the runtime copy, and the mounts. Also the unmounting, which must
happen whatever else failed."""

from __future__ import annotations

import compileall
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from devices.emulation.config import (
    DEVICE_HOME,
    HERE,
    LAUNCHER,
    MIRROR_ENV,
    RUNTIME,
    SITE,
    SITE_MARKER,
    SOURCE_TREE,
    WORK,
    EmulationConfig,
    EmulationError,
    EmulationUnavailable,
)
from devices.emulation.mirror import debian_mirror


def _sh(argv: Sequence[str], what: str, timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise EmulationError(f"{what}: {e}") from e
    if done.returncode != 0:
        detail = (done.stderr.strip() or done.stdout.strip()).splitlines()[-20:]
        raise EmulationError(f"{what} failed (exit {done.returncode}): " + "\n".join(detail))
    return done


def host_setup(config: EmulationConfig) -> None:
    """Install qemu/binfmt/debootstrap if missing and enable qemu for ``config.qemu_arch``.
    Raises EmulationUnavailable when this host cannot (not root, the cache folder cannot be
    created, binfmt_misc not mountable); those cheap checks come before any package is
    installed."""
    if os.geteuid() != 0:
        raise EmulationUnavailable("emulating a device needs root (mount, chroot, binfmt_misc)")
    try:
        config.folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EmulationUnavailable(f"cannot create the device cache {config.folder}: {e}") from e
    script = HERE / "host-setup.sh"
    done = subprocess.run(
        ["bash", str(script), config.qemu_arch],
        capture_output=True,
        text=True,
        timeout=config.timeout_s,
        check=False,
    )
    if done.returncode in (3, 5):
        raise EmulationUnavailable(done.stderr.strip() or f"{script.name} exit {done.returncode}")
    if done.returncode != 0:
        raise EmulationError(done.stderr.strip() or f"{script.name} exit {done.returncode}")


def mounts_under(path: Path) -> list[Path]:
    """Mount points at or below ``path``, deepest first (the order to unmount them in)."""
    base = str(path.resolve())
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point == base or point.startswith(base + "/"):
                found.append(Path(point))
    return sorted(set(found), key=lambda p: len(p.parts), reverse=True)


def unmount_all(root: Path) -> None:
    """Unmount everything below ``root``; lazily where a mount is still busy."""
    for point in mounts_under(root):
        if subprocess.run(["umount", str(point)], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", str(point)], capture_output=True, check=False)
    left = mounts_under(root)
    if left:
        raise EmulationError(f"could not unmount {', '.join(map(str, left))}")


def host_setup_step(cfg: EmulationConfig) -> str:
    host_setup(cfg)
    return f"qemu-{cfg.qemu_arch} enabled"


def make_root(cfg: EmulationConfig) -> str:
    cached = cfg.root_cached
    mirror = cfg.mirror or os.environ.get(MIRROR_ENV) or debian_mirror(cfg.suite)
    if mirror is None:
        raise EmulationError(f"no Debian mirror in /etc/apt/sources.list*; set {MIRROR_ENV} to one")
    include = ",".join(cfg.debian_packages)
    argv = ["bash", str(HERE / "make-root.sh"), str(cfg.root), cfg.suite, cfg.deb_arch, mirror]
    _sh([*argv, include], "make-root.sh", cfg.timeout_s)
    return "cached" if cached else f"debootstrap from {mirror}"


def install_site(cfg: EmulationConfig) -> str:
    site = cfg.root / SITE.lstrip("/")
    wanted_pkgs = [*cfg.requirements(), *cfg.no_deps]
    wanted = json.dumps(
        {"python": cfg.python_version, "tags": cfg.platform_tags(), "pkgs": wanted_pkgs}
    )
    marker = site / SITE_MARKER
    if marker.is_file() and marker.read_text(encoding="utf-8") == wanted:
        return "cached: " + " ".join(wanted_pkgs)
    partial = site.with_name(site.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    base = [sys.executable, "-m", "pip", "install", "-q", "--only-binary=:all:"]
    base += ["--python-version", cfg.python_version, "--implementation", "cp"]
    for tag in cfg.platform_tags():
        base += ["--platform", tag]
    base += ["--target", str(partial)]
    what = f"pip install ({cfg.wheel_arch} wheels)"
    if cfg.packages:
        _sh([*base, *cfg.requirements()], what, cfg.timeout_s)
    if cfg.no_deps:
        _sh([*base, "--no-deps", "--upgrade", *cfg.no_deps], what, cfg.timeout_s)
    shutil.rmtree(site, ignore_errors=True)
    partial.rename(site)
    marker.write_text(wanted, encoding="utf-8")
    return " ".join(wanted_pkgs)


def copy_runtime(cfg: EmulationConfig, fresh: bool) -> str:
    """Copy ``runtime/`` and ``devices/`` (its profiles, without this emulation package) from the
    working tree: the device gets what ``pip install edgeship`` would give it, minus packager/."""
    dest = cfg.root / RUNTIME.lstrip("/")
    shutil.rmtree(dest, ignore_errors=True)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "emulation")
    for package in ("runtime", "devices"):
        shutil.copytree(SOURCE_TREE / package, dest / package, ignore=skip)
    if sys.version_info[:2] == tuple(int(p) for p in cfg.python_version.split(".")):
        compileall.compile_dir(dest, quiet=2)  # byte-compiling under emulation is slow
    if fresh:  # every device store (/var/lib/edgeship*) and the work folder
        stores = (cfg.root / DEVICE_HOME.lstrip("/")).parent
        for folder in [cfg.root / WORK.lstrip("/"), *stores.glob("edgeship*")]:
            shutil.rmtree(folder, ignore_errors=True)
    (cfg.root / WORK.lstrip("/")).mkdir(parents=True, exist_ok=True)
    launcher = cfg.root / "usr/local/bin/edgeship-device"
    launcher.parent.mkdir(parents=True, exist_ok=True)
    launcher.write_text(LAUNCHER, encoding="utf-8")
    launcher.chmod(0o755)
    cpuinfo = cfg.folder / "cpuinfo"
    cpuinfo.write_text(cfg.cpu.cpuinfo(os.cpu_count() or 1), encoding="utf-8")
    return f"from {SOURCE_TREE}" + (", fresh device store" if fresh else "")


def mount(cfg: EmulationConfig) -> str:
    root = cfg.root
    steps = [
        ["mount", "-t", "proc", "proc", str(root / "proc")],
        ["mount", "--bind", str(cfg.folder / "cpuinfo"), str(root / "proc/cpuinfo")],
        ["mount", "--rbind", "/sys", str(root / "sys")],
        # rslave: unmounting the chroot's view later must not propagate to the host's /sys, /dev
        ["mount", "--make-rslave", str(root / "sys")],
        ["mount", "--rbind", "/dev", str(root / "dev")],
        ["mount", "--make-rslave", str(root / "dev")],
    ]
    for argv in steps:
        _sh(argv, " ".join(argv), 60)
    return f"proc ({cfg.cpu.qemu} cpuinfo), sys, dev"
