"""The process's own resource use for telemetry windows: resident memory and CPU share, read from
``/proc/self`` (Linux, where devices run); elsewhere from ``resource`` as a fallback. No psutil.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def rss_bytes() -> Optional[int]:
    """Resident set size of this process (bytes), or ``None`` when it cannot be read."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # the peak, not the current
        return int(peak) * (1 if sys.platform == "darwin" else 1024) if peak else None


def cpu_seconds() -> float:
    """User plus system CPU time of this process so far (seconds, all threads)."""
    try:
        with open("/proc/self/stat", "rb") as f:
            # fields after the command name, which is in parentheses and may hold spaces
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS
    except (OSError, ValueError, IndexError):
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime


class ProcessStats:
    """CPU share between calls of :meth:`sample` (100 = one core busy) and the current RSS."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last = (clock(), cpu_seconds())

    def sample(self) -> dict[str, Any]:
        now, cpu = self._clock(), cpu_seconds()
        wall = now - self._last[0]
        share = (cpu - self._last[1]) / wall * 100 if wall > 0 else 0.0
        self._last = (now, cpu)
        rss = rss_bytes()
        return {
            "rss_mb": round(rss / (1024 * 1024), 2) if rss is not None else None,
            "cpu_percent": round(max(0.0, share), 2),
            "threads": _threads(),
        }


def _threads() -> Optional[int]:
    try:
        return sum(1 for _ in Path("/proc/self/task").iterdir())
    except OSError:
        return None
