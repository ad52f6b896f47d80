"""Durable file operations: nothing half-written ever becomes visible under its final name."""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import Iterator

from runtime.errors import StoreError

OUT_OF_SPACE = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})
"""Errors that mean the disk (or the process's file size limit, or a quota) is full."""


@contextlib.contextmanager
def out_of_space(what: str) -> Iterator[None]:
    """Turn an OSError that means "no room" into StoreError naming ``what``; other errors pass.

    A full disk is an operating condition of a device, not a bug: the caller gets one typed error
    (exit code 6) whose message keeps the system's own wording ("No space left on device",
    "File too large", "Disk quota exceeded").
    """
    try:
        yield
    except OSError as e:
        if e.errno not in OUT_OF_SPACE:
            raise
        where = f" ({e.filename})" if e.filename else ""
        raise StoreError(f"{what}: {e.strerror or os.strerror(e.errno)}{where}") from e


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder, fsync, then rename.

    On any error (a full disk included) ``path`` keeps its old content and the temp file is gone.
    """
    import tempfile  # kept off the start-up path of commands that write nothing

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_symlink(target: str, link: Path) -> None:
    """Point ``link`` at ``target`` atomically (a new link renamed over the old one)."""
    tmp = link.with_name(f".{link.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, link)
    fsync_dir(link.parent)
