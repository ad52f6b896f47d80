"""Real ways to run out of room, for the full-disk tests: a small tmpfs mounted for the test
(needs root or CAP_SYS_ADMIN), filled up to a chosen number of free bytes or of free inodes, and
``RLIMIT_FSIZE`` set in a child process."""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import signal
import subprocess
from pathlib import Path
from typing import Callable, Iterator, Optional

import pytest

KiB = 1024


@contextlib.contextmanager
def tmpfs(mount_point: Path, size: int, nr_inodes: Optional[int] = None) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` bytes (and at most ``nr_inodes`` files and folders, the root
    included) at ``mount_point`` for the duration; the test fails when it cannot be mounted."""
    mount_point.mkdir(parents=True, exist_ok=True)
    options = f"size={size},mode=0755" + (f",nr_inodes={nr_inodes}" if nr_inodes else "")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "edgeship-test", mount_point],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.fail(
            f"cannot mount a tmpfs for the full-disk test ({done.stderr.strip()}): it needs root "
            "or CAP_SYS_ADMIN"
        )
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", mount_point], check=True)


def free_bytes(fs: Path) -> int:
    stats = os.statvfs(fs)
    return stats.f_bavail * stats.f_frsize


def leave_free(fs: Path, filler: Path, free: int) -> None:
    """Grow or shrink ``filler`` until ``fs`` has about ``free`` bytes left (page granular)."""
    filler.unlink(missing_ok=True)
    available = free_bytes(fs)
    with filler.open("wb") as f:
        f.write(b"\0" * max(available - free, 0))


def use_up_inodes(folder: Path) -> list[Path]:
    """Create empty files in ``folder`` until the file system has no inode left; returns them."""
    made: list[Path] = []
    while True:
        path = folder / f".inode-filler-{len(made)}"
        try:
            path.touch(exist_ok=False)
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
            return made
        made.append(path)


def file_size_limit(limit: int) -> Callable[[], None]:
    """A ``preexec_fn`` that limits files the child writes to ``limit`` bytes; SIGXFSZ is
    ignored, so a write past the limit fails with EFBIG ("File too large")."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply
