"""A short run of every fuzz target (fuzz/), in a subprocess, as ``make fuzz`` runs them for
longer: any input outside the contract (not parsed, and not refused with an EdgeshipError), a
crash or a hang fails the test. Seeds come from a real bundle built here.

Inputs the fuzzers found are kept below as regression cases, next to those kept in
tests/runtime/test_verify.py and tests/runtime/test_hostile_bundles.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fuzz.make_seeds import TARGETS, write_corpora
from fuzz.run import run_target
from runtime.errors import TelemetryMessageError
from runtime.telemetry.messages import parse_message

ROOT = Path(__file__).resolve().parents[2]
RUNS = 4000


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory, iris: dict[str, Path]) -> Path:
    folder = tmp_path_factory.mktemp("seeds")
    counts = write_corpora(folder, iris["model"], iris["sample"])
    assert set(counts) == set(TARGETS) and all(counts.values())
    return folder


@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_target_smoke(target: str, seeds: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "fuzz.run", "--target", target, "--seeds", str(seeds),
         "--work", str(tmp_path), "--seconds", "30", "--runs", str(RUNS), "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    results = json.loads(done.stdout)
    assert len(results) == 1, done.stderr[-2000:]
    result = results[0]
    assert result["findings"] == [], result["tail"]
    assert result["ok"] and done.returncode == 0, result["tail"]
    assert result["executions"] >= RUNS
    assert result["corpus"] >= len(list((seeds / target).iterdir()))


def test_the_runner_reports_a_finding(seeds: Path, tmp_path: Path) -> None:
    """A planted target that breaks the contract on a seed is reported, with its input kept."""
    result = run_target(
        "telemetry", seeds, tmp_path, seconds=30, runs=RUNS,
        module="tests.reliability.fuzz_planted",
    )  # fmt: skip
    assert not result.ok
    assert len(result.findings) == 1 and "crash-" in result.findings[0]
    assert b"\n{" in Path(result.findings[0]).read_bytes()


def _telemetry(kind: str, **fields: object) -> tuple[str, bytes]:
    doc = {"schema": f"edgeship.{'event' if kind == 'events' else kind}/v1", "fleet": "lab",
           "device": "dev-7", "seq": 1, "ts": "2026-01-01T00:00:00Z", **fields}  # fmt: skip
    return f"edgeship/v1/lab/dev-7/{kind}", json.dumps(doc).encode()


BIG = 10**400
LATENCY = {"p50": 1, "p95": 1, "p99": 1, "max": 1}
WINDOW = {"version": "1", "requests": 1, "errors": 0, "rejected": 0, "latency_ms": LATENCY}

# Found by fuzz/fuzz_telemetry.py: each raised OverflowError or TypeError instead of refusing.
TELEMETRY_FINDINGS = {
    "drift-score-huge-int": _telemetry(
        "telemetry", window_s=10, models={"m": {**WINDOW, "drift": {"f": {"psi": BIG}}}}
    ),
    "window-huge-int": _telemetry("telemetry", window_s=BIG, models={}),
    "latency-huge-int": _telemetry(
        "telemetry", window_s=1, models={"m": {**WINDOW, "latency_ms": {**LATENCY, "p99": BIG}}}
    ),
    "system-huge-negative-int": _telemetry(
        "telemetry", window_s=1, models={}, system={"rss_mb": -BIG}
    ),
    "event-is-a-list": _telemetry("events", event=["install"]),
    "event-is-an-object": _telemetry("events", event={"install": 1}),
}


@pytest.mark.parametrize("case", sorted(TELEMETRY_FINDINGS))
def test_telemetry_findings_are_refused(case: str) -> None:
    topic, payload = TELEMETRY_FINDINGS[case]
    with pytest.raises(TelemetryMessageError):
        parse_message(topic, payload)
