"""The local inference API and the agent against in-process and bare onnxruntime.

The digits MLP of ``bench_predict`` is built into a bundle and installed in a throw-away store;
a real ``edgeship-device agent`` process serves it. Three measurements:

- **round trip**: one request at batch 1 through the local API (a keep-alive ``http.client``
  connection, JSON both ways, over TCP on localhost and over the Unix socket) against
  ``InferenceService.predict`` in this process, interleaved call by call. The figure is the
  overhead the API adds per request (target <= 0.5 ms).
- **cold start**: process start to first prediction, ``edgeship-device predict`` on the installed
  model against a bare script that imports onnxruntime, creates the session and runs once
  (target ratio <= 1.3). Each round runs both processes back to back, in rotated order; the
  figure is the median of the rounds' ratios.
- **memory**: resident memory (VmRSS) of a fresh agent with the model loaded and one request
  served, against the bare script holding its session after one run (target <= +15 MB).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from benchmarks._common import (
    BenchResult,
    Log,
    Ratio,
    build_bundle,
    fresh_store,
    interleaved,
    make_signer,
    median,
    percentile,
)
from benchmarks.bench_predict import write_mlp
from runtime.api.client import ApiClient, infer_body
from runtime.api.settings import TcpAddress, UnixAddress, parse_address
from runtime.install import install_bundle
from runtime.registry import ModelRegistry
from runtime.service import InferenceService
from runtime.store import Store

NAME = "digits"
ROUNDS = 40
BLOCK = 50
WARMUP = 300
COLD_RUNS = 15
OVERHEAD_TARGET_MS = 0.5
COLD_TARGET = 1.3
RSS_TARGET_MB = 15.0
EDGESHIP_DEVICE = str(Path(sys.executable).with_name("edgeship-device"))

# What a user would write first: import, load, run once (configured as the backend configures it)
BARE = """
import sys
import numpy as np
import onnxruntime as ort
options = ort.SessionOptions()
options.intra_op_num_threads = int(sys.argv[3])
options.inter_op_num_threads = 1
options.log_severity_level = 3
session = ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
feeds = {session.get_inputs()[0].name: np.load(sys.argv[2])}
print(session.run(None, feeds)[0].tolist(), flush=True)
if len(sys.argv) > 4:
    print("ready", flush=True)
    sys.stdin.read()
"""


class Agent:
    """A real agent process serving ``home`` on a free TCP port and a Unix socket."""

    def __init__(self, home: Path, log_path: Path, extra: tuple[str, ...] = ()) -> None:
        self.socket_dir = Path(tempfile.mkdtemp(prefix="es-bench-", dir="/tmp"))
        command = [EDGESHIP_DEVICE, "agent", "--serve", "127.0.0.1:0", "--serve",
                   f"unix:{self.socket_dir / 'api.sock'}", "--home", str(home),
                   *extra]  # fmt: skip
        self.home = home
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        self.tcp, self.unix = self._wait_ready()

    def _wait_ready(self, timeout_s: float = 60.0) -> tuple[TcpAddress, UnixAddress]:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise RuntimeError(f"the agent exited with {self.process.returncode}")
            try:
                doc = json.loads((self.home / "agent.json").read_text())
            except (FileNotFoundError, ValueError):
                doc = {}
            if doc.get("pid") == self.process.pid:
                found = [parse_address(text) for text in doc["serve"]]
                tcp = next(a for a in found if isinstance(a, TcpAddress))
                unix = next(a for a in found if isinstance(a, UnixAddress))
                return tcp, unix
            time.sleep(0.05)
        raise RuntimeError("the agent did not start")

    def rss_mb(self) -> float:
        return rss_mb(self.process.pid)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(60)
        if code != 0:
            raise RuntimeError(f"the agent exited with {code} on SIGTERM")
        self.socket_dir.rmdir()


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` (VmRSS from /proc, MB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def round_trip(
    store_home: Path, agent: Agent, feeds: dict[str, np.ndarray], log: Log
) -> dict[str, list[float]]:
    service = InferenceService(ModelRegistry(Store(store_home)))
    body = json.dumps(infer_body(feeds)).encode()
    path = f"/v2/models/{NAME}/infer"
    expected = service.predict(NAME, feeds).prediction.outputs
    clients = {"tcp": ApiClient(agent.tcp), "unix": ApiClient(agent.unix)}

    def over(client: ApiClient) -> Callable[[], Any]:
        def call() -> Any:
            status, _, data = client.request("POST", path, body)
            if status != 200:
                raise RuntimeError(f"the API answered {status}: {data[:200]!r}")
            return json.loads(data)

        return call

    for transport, client in clients.items():
        answer = over(client)()
        outputs = {o["name"]: np.asarray(o["data"]) for o in answer["outputs"]}
        for name, value in expected.items():
            if not np.allclose(outputs[name].reshape(value.shape), value, atol=1e-6):
                raise AssertionError(f"{transport}: {name} differs from the in-process answer")
    log(f"api: {ROUNDS} rounds of {BLOCK} requests at batch 1 (TCP, Unix socket, in-process)")
    times = interleaved(
        {
            "in_process": lambda: service.predict(NAME, feeds),
            "api_tcp": over(clients["tcp"]),
            "api_unix": over(clients["unix"]),
        },
        ROUNDS,
        BLOCK,
        warmup=WARMUP,
    )
    for client in clients.values():
        client.close()
    return times


def cold_start(
    home: Path, model_file: Path, rows: Path, threads: int, log: Log
) -> dict[str, float]:
    """Median wall time of each process, and the median of the per-round ratios cli/bare (each
    round runs both back to back, so a busy moment of the machine weighs on both)."""
    commands = {
        "cli": [EDGESHIP_DEVICE, "predict", NAME, "--input", str(rows), "--home", str(home)],
        "bare": [sys.executable, "-c", BARE, str(model_file), str(rows), str(threads)],
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    log(f"api: cold start, {COLD_RUNS} runs of each process")
    names = list(commands)
    for i in range(COLD_RUNS + 1):
        for name in names[i % 2 :] + names[: i % 2]:
            start = time.perf_counter()
            subprocess.run(commands[name], check=True, capture_output=True)
            if i:  # the first round warms the page cache
                times[name].append(time.perf_counter() - start)
    ratios = [c / b for c, b in zip(times["cli"], times["bare"])]
    return {
        "cli": median(times["cli"]),
        "bare": median(times["bare"]),
        "ratio": median(ratios),
        "ratio_of_minima": min(times["cli"]) / min(times["bare"]),
    }


def bare_rss_mb(model_file: Path, rows: Path, threads: int) -> float:
    process = subprocess.Popen(
        [sys.executable, "-c", BARE, str(model_file), str(rows), str(threads), "hold"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stdin is not None
    try:
        while process.stdout.readline().strip() != "ready":
            if process.poll() is not None:
                raise RuntimeError("the bare script failed")
        return rss_mb(process.pid)
    finally:
        process.stdin.close()
        process.wait(30)


def run(work: Path, log: Log) -> BenchResult:
    log("api: training an MLP on digits and building its bundle")
    signer = make_signer(work / "keys")
    model_path, sample_path, data = write_mlp(work)
    bundle = build_bundle(signer, model_path, sample_path, work / "dist", NAME)
    store = fresh_store(work / "device", signer)
    install_bundle(store, bundle)
    manifest_model = json.loads((store.active_dir(NAME) / "manifest.json").read_text())
    model_file = store.active_dir(NAME) / "payload" / manifest_model["model"]["file"]
    threads = int(manifest_model["target"].get("threads", 1))
    input_name = manifest_model["model"]["inputs"][0]["name"]
    feeds = {input_name: np.ascontiguousarray(data[:1])}
    rows = work / "row.npy"
    np.save(rows, feeds[input_name])

    agent = Agent(store.home, work / "agent.log")
    try:
        times = round_trip(store.home, agent, feeds, log)
        rss_after_load = agent.rss_mb()
    finally:
        agent.stop()
    cold = cold_start(store.home, model_file, rows, threads, log)

    log("api: resident memory of a fresh agent and of the bare script")
    fresh = Agent(store.home, work / "agent-rss.log")
    try:
        with ApiClient(fresh.tcp) as client:
            client.infer(NAME, feeds)
        time.sleep(0.5)
        agent_rss = fresh.rss_mb()
    finally:
        fresh.stop()
    bare_rss = bare_rss_mb(model_file, rows, threads)

    med = {k: median(v) for k, v in times.items()}
    metrics: dict[str, float] = {}
    for key, values in times.items():
        metrics[f"{key}_median_us"] = med[key] * 1e6
        metrics[f"{key}_p95_us"] = percentile(values, 95) * 1e6
    overhead_tcp_ms = (med["api_tcp"] - med["in_process"]) * 1e3
    overhead_unix_ms = (med["api_unix"] - med["in_process"]) * 1e3
    metrics.update(
        api_tcp_overhead_ms=overhead_tcp_ms,
        api_unix_overhead_ms=overhead_unix_ms,
        cold_cli_seconds=cold["cli"],
        cold_bare_seconds=cold["bare"],
        agent_rss_mb=agent_rss,
        bare_rss_mb=bare_rss,
        agent_rss_after_load_mb=rss_after_load,
    )
    return BenchResult(
        "api",
        metrics,
        (
            Ratio("api_tcp overhead ms", overhead_tcp_ms, OVERHEAD_TARGET_MS, False),
            Ratio("api_unix overhead ms", overhead_unix_ms, OVERHEAD_TARGET_MS, False),
            Ratio("api_tcp/in_process", med["api_tcp"] / med["in_process"]),
            Ratio("cold start cli/bare", cold["ratio"], COLD_TARGET, False),
            Ratio("cold start cli/bare minima", cold["ratio_of_minima"]),
            Ratio("agent rss - bare rss MB", agent_rss - bare_rss, RSS_TARGET_MB, False),
        ),
        {
            "rounds": ROUNDS,
            "block": BLOCK,
            "batch": 1,
            "intra_op_threads": threads,
            "cold_runs": COLD_RUNS,
            "cpus": os.cpu_count(),
        },
    )
