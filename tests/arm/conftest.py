"""The emulated-ARM scenario: collected only when asked for by path (``pytest tests/arm``,
``make test-arm``), never by a plain ``pytest`` run over ``tests/``, because it needs root and
prepares a Debian arm64 root filesystem (docs/arm64.md).

Tests here record what they measured in :data:`REPORT`; the terminal summary prints it, so the CI
log shows the setup time, the per-step timings under emulation and the parity figures.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent


def _asked_for(config: pytest.Config) -> bool:
    base = config.invocation_params.dir
    for arg in config.args:
        path = (base / arg.split("::", 1)[0]).resolve()
        if path == HERE or HERE in path.parents:
            return True
    return False


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if HERE in collection_path.parents and not _asked_for(config):
        return True
    return None


@dataclass
class Report:
    """What the scenario measured, printed at the end of the run."""

    setups: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per device: seconds per preparation step."""
    steps: list[tuple[str, str, float, int]] = field(default_factory=list)
    """(case, step, seconds, exit code) per edgeship-device command run under emulation."""
    parity: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = []
        for device, timings in self.setups.items():
            parts = ", ".join(f"{k} {v:.1f} s" for k, v in timings.items())
            out.append(f"{device} device setup {sum(timings.values()):.1f} s ({parts})")
        if self.steps:
            out.append(f"{'case / device':<50} {'step':<16} {'seconds':>8} {'exit':>5}")
            out += [f"{c:<50} {s:<16} {t:>8.2f} {rc:>5}" for c, s, t, rc in self.steps]
        if self.parity:
            out.append(
                f"{'case / device':<50} {'mode':<7} {'set':<9} {'rows':>5} {'output':<14} "
                f"{'max |arm-x86|':>14} {'identical':>9}"
            )
            out += [
                f"{p['case']:<50} {p['mode']:<7} {p['set']:<9} {p['rows']:>5} {p['output']:<14} "
                f"{p['max_abs_diff']:>14.3g} {('yes' if p['identical'] else 'no'):>9}"
                for p in self.parity
            ]
        out += [f"note: {n}" for n in self.notes]
        return out


REPORT = Report()


@pytest.fixture(scope="session")
def report() -> Report:
    return REPORT


def pytest_terminal_summary(terminalreporter: Any) -> None:
    lines = REPORT.lines()
    if lines:
        terminalreporter.section("emulated ARM devices")
        for line in lines:
            terminalreporter.write_line(line)
