"""The alert hook: a command run for each opened alert, with the alert as JSON on stdin.

The command runs without a shell (its words are split like a shell would, but nothing is
expanded), one at a time on a thread of its own, each with a time limit, so a slow or failing
hook never holds up ingestion. Alerts that arrive while ``queue_max`` are already waiting are
dropped with a log line. A hook's failure (exit status, time-out, cannot start) is logged.
"""

from __future__ import annotations

import json
import logging
import queue
import shlex
import subprocess
import threading
from typing import Any, Optional, Sequence

from runtime.errors import UsageError

log = logging.getLogger(__name__)


class HookRunner:
    """Runs ``argv`` for every submitted document, in order, on one background thread."""

    def __init__(self, argv: Sequence[str], timeout_s: float = 60.0, queue_max: int = 100) -> None:
        if not argv:
            raise UsageError("the hook command is empty")
        self.argv = tuple(argv)
        self.timeout_s = timeout_s
        self.failures = 0
        self.runs = 0
        self.dropped = 0
        self._queue: queue.Queue[Optional[bytes]] = queue.Queue(maxsize=queue_max)
        self._thread = threading.Thread(target=self._work, name="alert-hook", daemon=True)
        self._thread.start()

    @classmethod
    def from_command(cls, command: str, timeout_s: float = 60.0) -> HookRunner:
        """Split ``command`` into words (shell quoting rules, no expansion)."""
        try:
            return cls(shlex.split(command), timeout_s)
        except ValueError as e:
            raise UsageError(f"cannot split the hook command {command!r}: {e}") from e

    def submit(self, doc: dict[str, Any]) -> bool:
        """Queue one run with ``doc`` on stdin; False (logged) when the queue is full."""
        try:
            self._queue.put_nowait(json.dumps(doc).encode("utf-8") + b"\n")
        except queue.Full:
            self.dropped += 1
            log.warning("alert hook: %d runs waiting already; this alert is not passed on",
                        self._queue.maxsize)  # fmt: skip
            return False
        return True

    def close(self, wait_s: float = 10.0) -> None:
        """Let queued runs finish (up to ``wait_s`` plus a running hook's limit), then stop."""
        try:
            self._queue.put(None, timeout=wait_s)
        except queue.Full:
            log.warning("alert hook: %d queued runs abandoned at shutdown", self._queue.qsize())
            return
        self._thread.join(wait_s + self.timeout_s)

    def _work(self) -> None:
        while True:
            data = self._queue.get()
            if data is None:
                return
            self._run(data)

    def _run(self, data: bytes) -> None:
        self.runs += 1
        try:
            done = subprocess.run(
                self.argv, input=data, capture_output=True, timeout=self.timeout_s, check=False
            )
        except subprocess.TimeoutExpired:
            self.failures += 1
            log.warning("alert hook %s: killed after %g s", self.argv[0], self.timeout_s)
            return
        except OSError as e:
            self.failures += 1
            log.warning("alert hook %s: cannot run: %s", self.argv[0], e)
            return
        if done.returncode != 0:
            self.failures += 1
            tail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
            log.warning("alert hook %s: exit status %d %s", self.argv[0], done.returncode, tail[0])
