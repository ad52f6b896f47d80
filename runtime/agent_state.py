"""``HOME/agent.json``: what a running agent tells other commands about itself.

The agent rewrites it atomically every few seconds (its pid, when it started, the addresses its
API serves, its counters since start) and removes it when it stops cleanly. ``edgeship-device
status`` shows the counters from it; ``edgeship-device feedback`` finds the API through it. A file
whose process is gone (the agent was killed) is stale and read as "no agent running".
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from runtime.api.settings import Address, UnixAddress, parse_address
from runtime.errors import TransportError, UsageError
from runtime.fsutil import atomic_write

AGENT_FILE = "agent.json"
SCHEMA = "edgeship.agent/v1"
MAX_STATE_BYTES = 1024 * 1024
"""Largest agent.json read (bytes)."""


def state_path(home: Path) -> Path:
    return home / AGENT_FILE


def write_state(home: Path, doc: dict[str, Any]) -> None:
    """Replace ``HOME/agent.json`` with ``doc`` (atomically: readers see the old or the new)."""
    data = json.dumps({"schema": SCHEMA, **doc}, indent=1, sort_keys=True, default=str)
    atomic_write(state_path(home), data.encode("utf-8"))


def remove_state(home: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(state_path(home))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True


@dataclass(frozen=True)
class AgentState:
    """A running agent as its agent.json describes it."""

    pid: int
    serve: tuple[str, ...]
    doc: dict[str, Any]

    @property
    def counters(self) -> dict[str, Any]:
        counters = self.doc.get("counters")
        return counters if isinstance(counters, dict) else {}

    def api_address(self) -> Address:
        """Where its API listens (a Unix socket first); TransportError when it serves none."""
        if not self.serve:
            raise TransportError(
                f"the agent (pid {self.pid}) serves no local API: start it with --serve"
            )
        addresses = [parse_address(text) for text in self.serve]
        addresses.sort(key=lambda a: not isinstance(a, UnixAddress))
        return addresses[0]


def read_state(home: Path) -> Optional[AgentState]:
    """The running agent of store ``home``, or None when none runs (no file, or a stale one)."""
    path = state_path(home)
    try:
        with path.open("rb") as f:
            data = f.read(MAX_STATE_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise TransportError(f"cannot read {path}: {e.strerror or e}") from e
    try:
        doc = json.loads(data) if len(data) <= MAX_STATE_BYTES else None
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise TransportError(f"{path} is not an agent state file; remove it if no agent runs")
    pid, serve = doc.get("pid"), doc.get("serve", [])
    if (
        isinstance(pid, bool)
        or not isinstance(pid, int)
        or pid <= 0
        or not isinstance(serve, list)
        or not all(isinstance(s, str) for s in serve)
    ):
        raise TransportError(f"{path} is damaged; remove it if no agent runs")
    if not _alive(pid):
        return None
    try:
        for text in serve:
            parse_address(text)
    except UsageError as e:
        raise TransportError(f"{path}: {e}") from e
    return AgentState(pid, tuple(serve), doc)


def running_agent(home: Path) -> AgentState:
    """The running agent of store ``home``; TransportError when none runs."""
    state = read_state(home)
    if state is None:
        raise TransportError(
            f"no agent is running for {home} (start one with: edgeship-device agent --serve "
            "127.0.0.1:8080)"
        )
    return state
