"""Inference throughput with telemetry on vs off, same run: in the agent, and in one process.

An MLP (scikit-learn, on the digits data set: 64 features, one hidden layer of 64) is built into
a bundle with the packager and installed in throw-away stores: some 30 µs a call here, about the
fastest model a device serves, so the worst case for a cost paid per request. Two measurements:

- **agent** (the target, >= 0.97): telemetry runs in the agent, so this is the device's inference
  throughput with it on vs off. Two ``edgeship-device agent`` processes serve the bundle over
  their local API (Unix socket, keep-alive), one with ``--broker`` and a telemetry window of
  2 s (a fifth of the default, so several window closes with drift over all 64 features fall
  inside the measurement); requests alternate between them in rounds.
- **in-process** (reported, no target): two ``InferenceService`` s share a registry, one with a
  started ``TelemetryLink`` as observer (default settings, publishing to a real mosquitto started
  here), one with none; phases of calls at batch 1 alternate, the order rotating every round.
  With no HTTP around a 30 µs call, this isolates what the observer costs a request at the
  fastest rate one Python thread can call; it is the figure to watch when changing the observer.

Throughput is calls per wall-clock second. Each ratio is the median over rounds of off-time /
on-time of a round's two adjacent phases, so a burst of other work on the machine in one phase
moves it little; the in-process total over all rounds is reported too (``total_ratio``).
Also reported: the observer call's own time measured in place (``observe_in_place_us``: timed
around the call inside the request loop, less the same timing around an empty observer), and the
CPU the link's own threads used per request (``link_threads_us``: window closes, drift,
spooling, MQTT). The rest of an in-process difference is what the observer's work costs the rest
of the request (caches).
"""

from __future__ import annotations

import gc
import getpass
import itertools
import os
import shutil
import socket
import statistics
import subprocess
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import skops.io as sio
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from benchmarks._common import (
    BenchResult,
    Log,
    Ratio,
    Signer,
    build_bundle,
    fresh_store,
    make_signer,
)
from benchmarks.bench_api import Agent
from runtime.api.client import ApiClient
from runtime.install import install_bundle
from runtime.registry import ModelRegistry
from runtime.service import InferenceService, Observation, Observer
from runtime.telemetry.connection import BrokerURL
from runtime.telemetry.link import TelemetryLink, TelemetrySettings

MODELS = {
    # name: (hidden layers, rounds, calls per phase)
    "digits-64": ((64,), 60, 2_500),
}
WARMUP = 2_000
TARGET = 0.97
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


class _Broker:
    """A memory-only mosquitto on a free port, for as long as the benchmark runs."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        config = folder / "mosquitto.conf"
        config.write_text(
            f"user {getpass.getuser()}\nallow_anonymous true\npersistence false\n"
            f"listener {self.port} 127.0.0.1\n"
        )
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError("bench_telemetry: mosquitto did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def _phases(
    subjects: dict[str, Callable[[], object]], rounds: int, block: int
) -> dict[str, list[float]]:
    """Per subject, the wall seconds of each of its ``rounds`` phases of ``block`` calls."""
    names = list(subjects)
    spent: dict[str, list[float]] = {n: [] for n in names}
    gc.collect()
    gc.disable()
    try:
        for i in range(rounds):
            shift = i % len(names)
            for name in names[shift:] + names[:shift]:
                fn = subjects[name]
                start = time.perf_counter()
                for _ in range(block):
                    fn()
                spent[name].append(time.perf_counter() - start)
    finally:
        gc.enable()
    return spent


class _Timed(Observer):
    """Times the observer it wraps, inside the request loop."""

    def __init__(self, inner: Observer) -> None:
        self.inner, self.seconds, self.calls = inner, 0.0, 0

    def observe(self, observation: Observation) -> None:
        start = time.perf_counter()
        self.inner.observe(observation)
        self.seconds += time.perf_counter() - start
        self.calls += 1


def _in_place(
    registry: ModelRegistry, link: TelemetryLink, name: str, feeds: Callable[[], Any], calls: int
) -> float:
    """Microseconds one ``link.observe`` takes inside a request loop, less the timing's own."""
    timed, empty = _Timed(link), _Timed(Observer())
    services = (InferenceService(registry, [timed]), InferenceService(registry, [empty]))
    for _ in range(10):
        for service in services:
            for _ in range(calls // 10):
                service.predict(name, feeds())
    return (timed.seconds / timed.calls - empty.seconds / empty.calls) * 1e6


def _link_threads_cpu() -> float:
    """CPU seconds used so far by the link's threads (``edgeship-*``), from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for thread in threading.enumerate():
        if not thread.name.startswith("edgeship-") or thread.native_id is None:
            continue
        try:
            stat = Path(f"/proc/self/task/{thread.native_id}/stat").read_bytes()
        except OSError:
            continue
        fields = stat.rsplit(b")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def _train(folder: Path, hidden: tuple[int, ...]) -> tuple[Path, Path, np.ndarray]:
    """A scaler + MLP pipeline on digits as .skops, a sample (.npy), and the data as float32."""
    x, y = load_digits(return_X_y=True)
    model = make_pipeline(
        StandardScaler(),
        MLPClassifier(hidden_layer_sizes=hidden, solver="lbfgs", max_iter=100, random_state=0),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x, y)
    data = x.astype(np.float32)
    folder.mkdir(parents=True)
    model_path, sample_path = folder / "mlp.skops", folder / "sample.npy"
    sio.dump(model, model_path)
    np.save(sample_path, data[::4])
    return model_path, sample_path, data


def _measure(
    work: Path, log: Log, signer: Signer, name: str, port: int
) -> tuple[dict[str, float], dict[str, Any], float]:
    """On vs off for one model: (metrics, info, median on/off throughput ratio)."""
    hidden, rounds, block = MODELS[name]
    model_path, sample_path, data = _train(work / name, hidden)
    bundle = build_bundle(signer, model_path, sample_path, work / name / "dist", name)
    store = fresh_store(work / name / "device", signer)
    install_bundle(store, bundle)
    registry = ModelRegistry(store)
    settings = TelemetrySettings(broker=BrokerURL("mqtt", "127.0.0.1", port), fleet="bench",
                                 device_id=f"bench-{name}", home=store.home)  # fmt: skip
    link = TelemetryLink(settings, store, registry)
    on, off = InferenceService(registry, [link]), InferenceService(registry, [])
    (input_name,) = (spec.name for spec in registry.get(name).manifest.model.inputs)
    rows = [{input_name: np.ascontiguousarray(data[i : i + 1])} for i in range(256)]
    order = itertools.cycle(np.random.default_rng(0).integers(0, 256, size=4099).tolist())
    link.start()
    try:
        for _ in range(WARMUP):
            off.predict(name, rows[next(order)])
            on.predict(name, rows[next(order)])
        link.flush()  # a first window closed: the next one sizes its samples by it
        log(f"telemetry: {name}: {rounds} rounds of {block} calls each side, batch 1")
        before = _link_threads_cpu()
        spent = _phases(
            {
                "off": lambda: off.predict(name, rows[next(order)]),
                "on": lambda: on.predict(name, rows[next(order)]),
            },
            rounds,
            block,
        )
        link_cpu = _link_threads_cpu() - before
        in_place = _in_place(registry, link, name, lambda: rows[next(order)], rounds * block // 2)
        status = link.connection_status()
        drained = link.stop(timeout_s=10.0)
    finally:
        link.stop(timeout_s=1.0)
    calls = rounds * block
    off_s, on_s = sum(spent["off"]), sum(spent["on"])
    ratio = statistics.median(o / n for o, n in zip(spent["off"], spent["on"]))
    metrics = {
        "off_calls_per_s": calls / off_s,
        "on_calls_per_s": calls / on_s,
        "off_us_per_call": off_s / calls * 1e6,
        "observe_in_place_us": in_place,
        "link_threads_us": link_cpu / calls * 1e6,
        "total_ratio": off_s / on_s,
    }
    info = {
        "hidden_layers": list(hidden),
        "rounds": rounds,
        "block": block,
        "published": status.published if status else 0,
        "acknowledged": status.acknowledged if status else 0,
        "drained_at_stop": drained,
    }
    return metrics, info, ratio


AGENT_ROUNDS = 40
AGENT_BLOCK = 200
AGENT_INTERVAL_S = 2


def _through_agents(
    work: Path, log: Log, signer: Signer, name: str, port: int
) -> tuple[dict[str, float], float]:
    """On vs off where telemetry runs in practice: two agent processes serving the same bundle
    over their local API (Unix socket, keep-alive), one with ``--broker``; requests alternate
    between them in rounds. Returns (metrics, median on/off throughput ratio)."""
    model_path, sample_path, data = _train(work / f"{name}-agents", MODELS[name][0])
    bundle = build_bundle(signer, model_path, sample_path, work / f"{name}-agents" / "dist", name)
    agents = {}
    for side, extra in (
        ("off", ()),
        (
            "on",
            (
                "--broker",
                f"mqtt://127.0.0.1:{port}",
                "--fleet",
                "bench",
                "--device-id",
                f"agent-{name}",
                "--telemetry-interval",
                str(AGENT_INTERVAL_S),
                "--log-level",
                "warning",
            ),
        ),
    ):
        store = fresh_store(work / f"{name}-agents" / side, signer)
        install_bundle(store, bundle)
        agents[side] = Agent(store.home, work / f"{name}-agents" / f"{side}.log", extra)
    clients = {side: ApiClient(agent.unix) for side, agent in agents.items()}
    rows = [{"input": np.ascontiguousarray(data[i : i + 1])} for i in range(256)]
    try:
        for client in clients.values():
            for i in range(WARMUP // 4):
                client.infer(name, rows[i % 256])
        log(f"telemetry: {name}: {AGENT_ROUNDS} rounds of {AGENT_BLOCK} API calls each agent")
        spent: dict[str, list[float]] = {"off": [], "on": []}
        for r in range(AGENT_ROUNDS):
            for side in ("off", "on") if r % 2 == 0 else ("on", "off"):
                client = clients[side]
                start = time.perf_counter()
                for i in range(AGENT_BLOCK):
                    client.infer(name, rows[i % 256])
                spent[side].append(time.perf_counter() - start)
    finally:
        for client in clients.values():
            client.close()
        for agent in agents.values():
            agent.stop()
    ratio = statistics.median(o / n for o, n in zip(spent["off"], spent["on"]))
    calls = AGENT_ROUNDS * AGENT_BLOCK
    metrics = {
        "agent_off_calls_per_s": calls / sum(spent["off"]),
        "agent_on_calls_per_s": calls / sum(spent["on"]),
    }
    return metrics, ratio


def run(work: Path, log: Log) -> BenchResult:
    log("telemetry: training an MLP on digits and building its bundle")
    signer = make_signer(work / "keys")
    broker: Optional[_Broker] = _Broker(work / "broker") if Path(MOSQUITTO).exists() else None
    port = broker.port if broker else 1  # nothing listens on port 1: the link spools only
    metrics: dict[str, float] = {}
    info: dict[str, Any] = {"batch": 1, "interval_s": 10.0, "broker": broker is not None}
    ratios = []
    try:
        for name in MODELS:
            found, details, ratio = _measure(work, log, signer, name, port)
            metrics.update({f"{name}_{key}": value for key, value in found.items()})
            info[name] = details
            ratios.append(Ratio(f"on/off throughput {name} (in-process)", ratio))
            found, ratio = _through_agents(work, log, signer, name, port)
            metrics.update({f"{name}_{key}": value for key, value in found.items()})
            ratios.append(Ratio(f"on/off throughput {name} (agent, local API)", ratio, TARGET))
    finally:
        if broker is not None:
            broker.stop()
    return BenchResult("telemetry", metrics, tuple(ratios), info)
