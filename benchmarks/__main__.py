"""``python -m benchmarks [NAME ...]``: run the benchmarks, print their ratios, write JSON.

The table ends the output; the JSON (default ``bench-results/bench.json``) holds every metric,
ratio and target, with the versions and machine they were measured on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from benchmarks import (
    bench_api,
    bench_install,
    bench_monitor,
    bench_predict,
    bench_quantize,
    bench_telemetry,
)
from benchmarks._common import BenchResult, Log

BENCHES: dict[str, Callable[[Path, Log], BenchResult]] = {
    "install": bench_install.run,
    "predict": bench_predict.run,
    "quantize": bench_quantize.run,
    "monitor": bench_monitor.run,
    "api": bench_api.run,
    "telemetry": bench_telemetry.run,
}
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "bench-results" / "bench.json"


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _environment() -> dict[str, Any]:
    import numpy
    import onnxruntime

    # a busy machine (other jobs, a noisy neighbour VM) slows every side; the ratios hold better
    # than the absolute numbers, and the load says how much to trust either
    return {
        "load_average_1m_at_start": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "numpy": numpy.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def _table(results: list[BenchResult]) -> str:
    lines = []
    for result in results:
        lines.append(f"{result.name}:")
        for key, value in result.metrics.items():
            digits = 3 if key.endswith("_seconds") else 2
            lines.append(f"  {key:<28} {value:12.{digits}f}")
        for ratio in result.ratios:
            target = "" if ratio.target is None else f"(target {ratio.comparison} {ratio.target})"
            verdict = {None: "", True: "ok", False: "MISSED"}[ratio.met]
            lines.append(f"  {ratio.name:<28} {ratio.value:12.3f}  {target} {verdict}".rstrip())
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"of {', '.join(BENCHES)}")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON result file")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(BENCHES))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHES)}")
    names = args.names or list(BENCHES)
    environment = _environment()
    results = []
    started = time.perf_counter()
    for name in names:
        with tempfile.TemporaryDirectory(prefix=f"edgeship-bench-{name}-") as work:
            results.append(BENCHES[name](Path(work), _log))
    elapsed = time.perf_counter() - started
    doc = {
        "schema": "edgeship.bench/v1",
        "at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "seconds": round(elapsed, 1),
        "environment": {**environment, "load_average_1m_at_end": round(os.getloadavg()[0], 2)},
        "benchmarks": {r.name: r.to_dict() for r in results},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(_table(results))
    print(f"({elapsed:.0f} s; results in {args.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
