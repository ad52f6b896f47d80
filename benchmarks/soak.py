"""``python -m benchmarks.soak``: the local inference API under sustained concurrent load.

A real iris bundle (scikit-learn pipeline, built and signed by the packager) is installed in a
throw-away device store and served by a real ``edgeship-device agent`` process. After a short
warm-up, the load generator (``tests/reliability/loadgen.py``: client processes with keep-alive
connections, batch-1 infer requests, stdlib only) keeps it busy for ``--seconds`` while the
agent's resident memory is sampled every second. Printed and written to
``bench-results/soak.json``: requests/s, latency percentiles, errors by kind, and memory growth
(mean RSS over the first 5 s against the last 5 s, and the maximum).

Clients: 2 processes x 4 keep-alive connections by default (8 of the agent's 16 connection
threads, so none is refused). The agent answers in Python behind one GIL and runs at about one
core; the raw-socket clients take about a sixth of one, so on a 2-core machine the agent sets the
pace. The report gives both CPU figures.

The agent's counters (``HOME/agent.json``) must then count exactly the requests the clients saw
answered. Exit status 1 on any error, a count that differs, or memory growth above
``--max-growth-mb``. ``make soak`` runs it for ``SOAK_SECONDS`` (60).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import numpy as np
import skops.io as sio
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from benchmarks._common import build_bundle, fresh_store, make_signer
from runtime.install import install_bundle
from runtime.store import Store
from tests.reliability.loadgen import LoadPlan, LoadReport, process_usage, run_load
from tests.runtime.api.agentproc import AgentProcess

NAME = "iris"
ROW = [5.1, 3.5, 1.4, 0.2]
WINDOW_S = 5.0
"""Memory growth compares the mean RSS of the run's first and last WINDOW_S seconds."""
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "bench-results" / "soak.json"


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def install_iris(work: Path) -> Path:
    """Train iris, build and sign its bundle, install it in a fresh store; the store's home."""
    x, y = load_iris(return_X_y=True)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x, y)
    sio.dump(model, work / "iris.skops")
    np.save(work / "sample.npy", x[::3].astype(np.float32))
    signer = make_signer(work / "keys")
    bundle = build_bundle(signer, work / "iris.skops", work / "sample.npy", work / "dist", NAME)
    store = fresh_store(work / "device", signer)
    install_bundle(store, bundle)
    return store.home


def infer_body(home: Path) -> bytes:
    """One iris row at batch 1, as the Open Inference Protocol's JSON infer request."""
    manifest = json.loads((Store(home).active_dir(NAME) / "manifest.json").read_text())
    name = manifest["model"]["inputs"][0]["name"]
    doc = {"inputs": [{"name": name, "shape": [1, 4], "datatype": "FP32", "data": ROW}]}
    return json.dumps(doc).encode()


def agent_requests(home: Path, at_least: int, timeout_s: float = 10.0) -> dict[str, Any]:
    """The agent's counters for iris once they count ``at_least`` requests (agent.json is
    rewritten every 2 s), or the last ones read when ``timeout_s`` runs out."""
    end = time.monotonic() + timeout_s
    counters: dict[str, Any] = {}
    while time.monotonic() < end:
        try:
            doc = json.loads((home / "agent.json").read_text())
        except (FileNotFoundError, ValueError):
            doc = {}
        counters = doc.get("counters", {}).get("models", {}).get(NAME, {})
        if counters.get("requests", 0) >= at_least:
            break
        time.sleep(0.2)
    return counters


def summary(report: LoadReport) -> str:
    first, last, peak = report.rss_mb(WINDOW_S)
    errors = ", ".join(f"{k}: {n}" for k, n in sorted(report.errors.items())) or "none"
    lines = [
        f"  clients        {report.plan.processes} processes x {report.plan.connections} "
        f"keep-alive connections, {', '.join(report.plan.addresses)}",
        f"  duration       {report.seconds:.1f} s",
        f"  requests       {report.answered} answered of {report.sent} sent, {report.ok} ok, "
        f"{report.reconnects} reconnects",
        f"  throughput     {report.requests_per_s:.0f} requests/s",
        f"  latency        p50 {report.latency_ms(50):.2f} ms, p95 {report.latency_ms(95):.2f} ms, "
        f"p99 {report.latency_ms(99):.2f} ms, max {report.latency_ms(100):.2f} ms",
        f"  errors         {report.error_count} ({errors})",
        f"  agent RSS      first {WINDOW_S:g} s {first:.1f} MB, last {WINDOW_S:g} s {last:.1f} MB, "
        f"max {peak:.1f} MB: growth {last - first:+.1f} MB",
        f"  CPU            agent {report.server_cpu_percent():.0f} %, load generator "
        f"{100 * report.generator_cpu_s / report.seconds:.0f} % (of one core; "
        f"{os.cpu_count()} cores)",
    ]
    return "\n".join(lines)


@dataclass(frozen=True)
class Soak:
    """A soak's measured run, and what the agent said about it."""

    report: LoadReport
    idle_rss_mb: float
    """The agent's RSS with the model loaded, before any load."""
    served: int
    """Requests the clients saw answered, warm-up and reference requests included."""
    counters: dict[str, Any]
    """The agent's counters for the model (agent.json) after the run."""


def soak(
    work: Path, seconds: float, transport: str, processes: int, connections: int, warmup_s: float
) -> Soak:
    """Install iris, start an agent, warm it up, run the load; raises RuntimeError when the
    agent or a client process fails (failed requests are counted in the report)."""
    _log("soak: training iris, building and installing its bundle")
    home = install_iris(work)
    body = infer_body(home)
    path = f"/v2/models/{NAME}/infer"
    agent = AgentProcess(home).start()
    try:
        assert agent.process is not None
        tcp, unix = str(agent.tcp), f"unix:{agent.socket_path}"
        chosen = {"tcp": (tcp,), "unix": (unix,), "both": (tcp, unix)}[transport]
        idle_rss = process_usage(agent.process.pid)[0]
        _log(f"soak: {warmup_s:g} s of warm-up, then {seconds:g} s of load on {', '.join(chosen)}")
        warm = run_load(LoadPlan(chosen, path, body, warmup_s, processes, connections))
        plan = LoadPlan(chosen, path, body, seconds, processes, connections)
        report = run_load(plan, agent.process.pid)
        served = warm.answered + report.answered + 2  # each run sends one reference request
        counters = agent_requests(home, served)
    finally:
        code = agent.stop()
    if code != 0:
        raise RuntimeError(f"the agent exited {code}:\n{agent.log()}")
    return Soak(report, idle_rss, served, counters)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__)
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the load run")
    parser.add_argument("--transport", choices=("tcp", "unix", "both"), default="tcp")
    parser.add_argument("--processes", type=int, default=2, help="client processes")
    parser.add_argument("--connections", type=int, default=4, help="connections per process")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before")
    parser.add_argument("--max-growth-mb", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON result file")
    args = parser.parse_args(argv)
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="edgeship-soak-") as work:
        found = soak(
            Path(work), args.seconds, args.transport, args.processes, args.connections, args.warmup
        )
    report, counters = found.report, found.counters
    first, last, _ = report.rss_mb(WINDOW_S)
    failures = []
    if report.error_count or report.answered != report.sent:
        failures.append(f"{report.error_count} errors, {report.sent - report.answered} unanswered")
    if counters.get("requests") != found.served or counters.get("errors"):
        failures.append(f"the agent counted {counters}, the clients {found.served} answers")
    if last - first > args.max_growth_mb:
        failures.append(f"memory grew {last - first:.1f} MB (limit {args.max_growth_mb:g} MB)")
    doc = {
        "schema": "edgeship.soak/v1",
        "at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "environment": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average_1m_at_start": round(load_start, 2),
            "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        },
        "model": NAME,
        "batch": 1,
        "warmup_seconds": args.warmup,
        "idle_rss_mb": round(found.idle_rss_mb, 2),
        "result": report.to_dict(WINDOW_S),
        "agent_counters": counters,
        "failures": failures,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"soak: {NAME} at batch 1 (agent idle RSS {found.idle_rss_mb:.1f} MB)")
    print(summary(report))
    print(f"  agent counted  {counters.get('requests')} requests, {counters.get('errors')} errors")
    print("FAILED: " + "; ".join(failures) if failures else "ok")
    print(f"(results in {args.out})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
