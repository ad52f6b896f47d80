"""The local inference API under sustained concurrent load, for a few seconds.

A real agent serves a real iris bundle over TCP and a Unix socket; the load generator
(``tests/reliability/loadgen.py``) sends batch-1 infer requests on both at once from two client
processes with keep-alive connections: first a warm-up, then the measured run while the agent's
resident memory is sampled every second. ``make soak`` (``benchmarks/soak.py``) runs the same for
60 s and reports the figures.

What must hold: every request sent is answered, 200 with the expected outputs (no other status,
no connection error, no timeout); the agent counts exactly the requests the clients saw answered;
its memory after the warm-up stays within ``GROWTH_LIMIT_MB``; it stops cleanly.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from runtime.install import install_bundle
from runtime.store import Store
from runtime.trust import TrustPolicy
from tests.conftest import BuildBundle, Keys
from tests.reliability.loadgen import LoadPlan, run_load
from tests.runtime.api.agentproc import AgentProcess

WARMUP_S = 2.0
LOAD_S = 8.0
WINDOW_S = 2.0
"""Growth compares the mean RSS over the run's first and last WINDOW_S seconds."""
GROWTH_LIMIT_MB = 20.0
"""Generous: a leak of a kilobyte per request would cross it; allocator noise stays far below."""
BODY = json.dumps(
    {
        "inputs": [
            {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}
        ]
    }
).encode()


def counters_once_counted(home: Path, at_least: int, timeout_s: float = 15.0) -> dict[str, Any]:
    """iris's counters in agent.json (rewritten every 2 s) once they reach ``at_least``
    requests, or the last ones read."""
    end = time.monotonic() + timeout_s
    counters: dict[str, Any] = {}
    while time.monotonic() < end:
        try:
            doc = json.loads((home / "agent.json").read_text())
        except (FileNotFoundError, ValueError):
            doc = {}
        counters = doc.get("counters", {}).get("models", {}).get("iris", {})
        if counters.get("requests", 0) >= at_least:
            return counters
        time.sleep(0.2)
    return counters


def test_sustained_load_is_answered_without_errors_in_bounded_memory(
    tmp_path: Path, keys: Keys, build_bundle: BuildBundle
) -> None:
    store = Store(tmp_path / "home")
    store.save_policy(TrustPolicy.create([(keys.public("release"), "release")]))
    install_bundle(store, build_bundle("1.0.0", 10))
    agent = AgentProcess(store.home).start()
    try:
        assert agent.process is not None and agent.tcp is not None
        # one client process on TCP, one on the Unix socket
        addresses = (str(agent.tcp), f"unix:{agent.socket_path}")
        path = "/v2/models/iris/infer"
        warm = run_load(LoadPlan(addresses, path, BODY, WARMUP_S, processes=2, connections=3))
        report = run_load(
            LoadPlan(addresses, path, BODY, LOAD_S, processes=2, connections=3),
            server_pid=agent.process.pid,
        )
        served = warm.answered + report.answered + 2  # and one reference request per run
        counters = counters_once_counted(store.home, served)
    finally:
        code = agent.stop()
    assert code == 0, agent.log()

    for run in (warm, report):
        assert run.errors == {}, run.errors
        assert run.sent == run.answered == run.ok > 0
    assert counters["requests"] == served, counters
    assert counters["errors"] == 0 and counters["rejected"] == {}, counters

    first, last, peak = report.rss_mb(WINDOW_S)
    assert len(report.samples) >= LOAD_S
    assert last - first < GROWTH_LIMIT_MB, report.to_dict(WINDOW_S)["server"]
    assert peak - report.samples[0][1] < GROWTH_LIMIT_MB, report.to_dict(WINDOW_S)["server"]
