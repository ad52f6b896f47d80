"""A load generator for the local inference API, and a sampler of the server's memory and CPU.

Client processes (``loadclient.py``), each with a few keep-alive connections (one thread each),
send the same request over and over for a bounded time and record every answer: its latency, its
status, whether its ``outputs`` are the expected ones. Connection errors, timeouts, non-200 answers
and wrong answers are counted by kind; a connection the server closes on purpose (``Connection:
close``, e.g. after ``max_requests_per_connection``) is reopened and counted as a reconnect.

Both modules need the standard library only, and the clients run as processes of their own, so
nothing of the runtime under test runs in them, and their own GIL never sets the pace: the
report gives the server's and the clients' CPU time, so a reader can see which side was the
bottleneck.

Used by ``benchmarks/soak.py`` (``make soak``) and ``tests/reliability/test_soak_short.py``.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from tests.reliability.loadclient import connect, exchange, request_bytes

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CLIENT = Path(__file__).resolve().with_name("loadclient.py")


@dataclass(frozen=True)
class LoadPlan:
    """What to send, where, how hard and for how long.

    ``addresses`` are ``HOST:PORT`` or ``unix:PATH``; client process ``i`` uses
    ``addresses[i % len(addresses)]``.
    """

    addresses: tuple[str, ...]
    path: str
    body: bytes
    seconds: float
    processes: int = 2
    connections: int = 3
    """Keep-alive connections (threads) per process."""
    timeout_s: float = 10.0
    """A connect or an answer taking longer than this counts as a timeout."""


@dataclass(frozen=True)
class LoadReport:
    """What one load run measured. Latencies are of every answer received (any status)."""

    plan: LoadPlan
    seconds: float
    sent: int
    answered: int
    ok: int
    errors: dict[str, int]
    reconnects: int
    latencies_s: tuple[float, ...] = field(repr=False)
    per_second: tuple[int, ...]
    samples: tuple[tuple[float, float, float], ...] = ()
    """(seconds since start, server VmRSS MB, server CPU seconds), about once a second."""
    generator_cpu_s: float = 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def requests_per_s(self) -> float:
        return self.answered / self.seconds if self.seconds > 0 else 0.0

    def latency_ms(self, q: float) -> float:
        """The ``q``-th percentile (0-100, nearest rank) of the answers' latencies, in ms."""
        return percentile(self.latencies_s, q) * 1e3

    def rss_mb(self, window_s: float) -> tuple[float, float, float]:
        """Mean server RSS over the first and the last ``window_s`` seconds, and the maximum."""
        if not self.samples:
            raise ValueError("no memory samples: the run had no server pid")
        end = self.samples[-1][0]
        first = [rss for t, rss, _ in self.samples if t <= window_s]
        last = [rss for t, rss, _ in self.samples if t >= end - window_s]
        return sum(first) / len(first), sum(last) / len(last), max(s[1] for s in self.samples)

    def server_cpu_percent(self) -> float:
        """The server's CPU time over the run, in percent of one core."""
        if len(self.samples) < 2:
            return 0.0
        (t0, _, c0), (t1, _, c1) = self.samples[0], self.samples[-1]
        return 100 * (c1 - c0) / (t1 - t0) if t1 > t0 else 0.0

    def to_dict(self, window_s: float = 5.0) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "addresses": list(self.plan.addresses),
            "processes": self.plan.processes,
            "connections_per_process": self.plan.connections,
            "seconds": round(self.seconds, 3),
            "sent": self.sent,
            "answered": self.answered,
            "ok": self.ok,
            "errors": dict(self.errors),
            "error_count": self.error_count,
            "reconnects": self.reconnects,
            "requests_per_s": round(self.requests_per_s, 1),
            "latency_ms": {
                f"p{q:g}": round(self.latency_ms(q), 3) for q in (50, 95, 99, 99.9, 100)
            },
            "per_second": list(self.per_second),
            "generator_cpu_percent": round(100 * self.generator_cpu_s / self.seconds, 1),
        }
        if self.samples:
            first, last, peak = self.rss_mb(window_s)
            doc["server"] = {
                "cpu_percent": round(self.server_cpu_percent(), 1),
                "rss_window_s": window_s,
                "rss_first_mb": round(first, 2),
                "rss_last_mb": round(last, 2),
                "rss_max_mb": round(peak, 2),
                "rss_growth_mb": round(last - first, 2),
                "rss_samples_mb": [[round(t, 2), round(rss, 2)] for t, rss, _ in self.samples],
            }
        return doc


def percentile(values: tuple[float, ...] | list[float], q: float) -> float:
    """The ``q``-th percentile (0-100), nearest rank; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, -(-len(ordered) * q // 100) - 1))
    return ordered[int(rank)]


def process_usage(pid: int) -> tuple[float, float]:
    """Resident memory (VmRSS, MB) and CPU time (user + system, seconds) of process ``pid``."""
    rss = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
            break
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the name may hold spaces
    return rss, (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class Sampler:
    """Samples a process's RSS and CPU time every ``interval_s`` on a thread of its own."""

    def __init__(self, pid: int, interval_s: float = 1.0) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.samples: list[tuple[float, float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loadgen-sampler", daemon=True)
        self._start = 0.0

    def start(self) -> None:
        self._start = time.monotonic()
        self._sample()
        self._thread.start()

    def _sample(self) -> None:
        rss, cpu = process_usage(self.pid)
        self.samples.append((time.monotonic() - self._start, rss, cpu))

    def _run(self) -> None:
        next_at = self._start + self.interval_s
        while not self._stop.wait(max(0.0, next_at - time.monotonic())):
            self._sample()
            next_at += self.interval_s

    def stop(self) -> tuple[tuple[float, float, float], ...]:
        self._stop.set()
        self._thread.join()
        self._sample()
        return tuple(self.samples)


def reference_outputs(address: str, path: str, body: bytes, timeout_s: float = 10.0) -> Any:
    """Send the request once and return its ``outputs``: what every answer must repeat.

    Raises RuntimeError unless the server answers 200 with outputs.
    """
    sock = connect(address, timeout_s)
    try:
        status, answer, _ = exchange(sock, request_bytes(path, body))
    finally:
        sock.close()
    doc = json.loads(answer) if status == 200 else {}
    if "outputs" not in doc:
        raise RuntimeError(f"{address}{path} answered {status}: {answer[:300]!r}")
    return doc["outputs"]


def run_load(plan: LoadPlan, server_pid: Optional[int] = None) -> LoadReport:
    """Run ``plan`` against a running server; sample ``server_pid``'s memory while it runs.

    Every answer must carry the outputs of a first request sent before the run. Raises
    RuntimeError when a client process fails (not when requests fail: those are counted).
    """
    expected = reference_outputs(plan.addresses[0], plan.path, plan.body, plan.timeout_s)
    workers = []
    for i in range(plan.processes):
        worker = subprocess.Popen(
            [sys.executable, "-I", str(CLIENT), "worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        workers.append(worker)
        assert worker.stdin is not None
        doc = {
            "address": plan.addresses[i % len(plan.addresses)],
            "path": plan.path,
            "body": plan.body.decode("utf-8"),
            "expected": expected,
            "seconds": plan.seconds,
            "connections": plan.connections,
            "timeout_s": plan.timeout_s,
        }
        worker.stdin.write(json.dumps(doc) + "\n")
        worker.stdin.flush()
    try:
        for worker in workers:
            assert worker.stdout is not None
            if worker.stdout.readline().strip() != "ready":
                raise RuntimeError("a load generator process did not start")
        sampler = Sampler(server_pid) if server_pid is not None else None
        if sampler is not None:
            sampler.start()
        started = time.monotonic()
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        results = [_result(worker, plan) for worker in workers]
        seconds = time.monotonic() - started
        samples = sampler.stop() if sampler is not None else ()
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    return _merge(plan, results, seconds, samples)


def _result(worker: subprocess.Popen[str], plan: LoadPlan) -> dict[str, Any]:
    assert worker.stdout is not None
    line = worker.stdout.readline()
    code = worker.wait(plan.seconds + plan.timeout_s + 30)
    if code != 0 or not line:
        raise RuntimeError(f"a load generator process failed (exit {code})")
    result: dict[str, Any] = json.loads(line)
    return result


def _merge(
    plan: LoadPlan,
    results: list[dict[str, Any]],
    seconds: float,
    samples: tuple[tuple[float, float, float], ...],
) -> LoadReport:
    latencies = array("d")
    errors: dict[str, int] = {}
    per_second: list[int] = []
    for result in results:
        latencies.frombytes(base64.b64decode(result["latencies"]))
        for kind, n in result["errors"].items():
            errors[kind] = errors.get(kind, 0) + n
        for second, n in enumerate(result["per_second"]):
            if second >= len(per_second):
                per_second.append(0)
            per_second[second] += n
    return LoadReport(
        plan=plan,
        seconds=seconds,
        sent=sum(r["sent"] for r in results),
        answered=sum(r["answered"] for r in results),
        ok=sum(r["ok"] for r in results),
        errors=errors,
        reconnects=sum(r["reconnects"] for r in results),
        latencies_s=tuple(latencies),
        per_second=tuple(per_second),
        samples=samples,
        generator_cpu_s=sum(r["cpu_s"] for r in results),
    )
