"""Inference throughput with the telemetry link on vs off, in one process, same run.

A small MLP (scikit-learn, on the digits data set, 64 features) is built into a bundle with the
packager and installed in a throw-away store. Two ``InferenceService`` s share its registry: one
with a started ``TelemetryLink`` as observer (windows of 1 s, ten times the default rate, drift on
all 64 features at every close, publishing to a real mosquitto started here), one with none.

Phases of ``BLOCK`` calls at batch 1 alternate between the two, the order rotating every round.
What the ratio measures is the link's whole cost to a request thread: counting on the request
path, plus window closes, drift, spooling and MQTT work on the link's threads competing for the
interpreter. Throughput is calls over wall time per side; the target is on/off >= 0.97.
"""

from __future__ import annotations

import gc
import getpass
import itertools
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from benchmarks._common import BenchResult, Log, Ratio, build_bundle, fresh_store, make_signer
from benchmarks.bench_predict import write_mlp
from runtime.install import install_bundle
from runtime.registry import ModelRegistry
from runtime.service import InferenceService
from runtime.telemetry.connection import BrokerURL
from runtime.telemetry.link import TelemetryLink, TelemetrySettings

ROUNDS = 40
BLOCK = 2_000
"""Calls per phase (about 0.1 s): several phases per telemetry tick and window."""
WARMUP = 2_000
INTERVAL_S = 1.0
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


def _phases(subjects: dict[str, Callable[[], object]]) -> dict[str, float]:
    """Seconds spent per subject over ROUNDS phases of BLOCK calls each."""
    names = list(subjects)
    spent = dict.fromkeys(names, 0.0)
    gc.collect()
    gc.disable()
    try:
        for i in range(ROUNDS):
            shift = i % len(names)
            for name in names[shift:] + names[:shift]:
                fn = subjects[name]
                start = time.perf_counter()
                for _ in range(BLOCK):
                    fn()
                spent[name] += time.perf_counter() - start
    finally:
        gc.enable()
    return spent


def run(work: Path, log: Log) -> BenchResult:
    log("telemetry: training an MLP on digits and building its bundle")
    signer = make_signer(work / "keys")
    model_path, sample_path, data = write_mlp(work)
    bundle = build_bundle(signer, model_path, sample_path, work / "dist", "digits")
    store = fresh_store(work / "device", signer)
    install_bundle(store, bundle)
    broker: Optional[_Broker] = _Broker(work / "broker") if Path(MOSQUITTO).exists() else None
    port = broker.port if broker else 1  # nothing listens on port 1: the link spools only
    registry = ModelRegistry(store)
    settings = TelemetrySettings(
        broker=BrokerURL("mqtt", "127.0.0.1", port),
        fleet="bench",
        device_id="bench-1",
        home=store.home,
        interval_s=INTERVAL_S,
    )
    link = TelemetryLink(settings, store, registry)
    on, off = InferenceService(registry, [link]), InferenceService(registry, [])
    (name,) = (spec.name for spec in registry.get("digits").manifest.model.inputs)
    rows = [{name: np.ascontiguousarray(data[i : i + 1])} for i in range(256)]
    feeds = itertools.cycle(np.random.default_rng(0).integers(0, 256, size=4099).tolist())
    link.start()
    try:
        for _ in range(WARMUP):
            on.predict("digits", rows[next(feeds)])
            off.predict("digits", rows[next(feeds)])
        log(f"telemetry: {ROUNDS} rounds of {BLOCK} calls, batch 1, windows of {INTERVAL_S} s")
        spent = _phases(
            {
                "off": lambda: off.predict("digits", rows[next(feeds)]),
                "on": lambda: on.predict("digits", rows[next(feeds)]),
            }
        )
        status = link.connection_status()
        stopped_clean = link.stop(timeout_s=10.0)
    finally:
        link.stop(timeout_s=1.0)
        if broker is not None:
            broker.stop()
    calls = ROUNDS * BLOCK
    throughput = {k: calls / v for k, v in spent.items()}
    metrics = {
        "off_calls_per_s": throughput["off"],
        "on_calls_per_s": throughput["on"],
        "off_mean_us": spent["off"] / calls * 1e6,
        "on_mean_us": spent["on"] / calls * 1e6,
        "overhead_per_call_us": (spent["on"] - spent["off"]) / calls * 1e6,
    }
    info = {
        "rounds": ROUNDS,
        "block": BLOCK,
        "batch": 1,
        "interval_s": INTERVAL_S,
        "features": int(data.shape[1]),
        "broker": broker is not None,
        "published": status.published if status else 0,
        "acknowledged": status.acknowledged if status else 0,
        "drained_at_stop": stopped_clean,
    }
    ratio = Ratio("on/off throughput", throughput["on"] / throughput["off"], TARGET)
    return BenchResult("telemetry", metrics, (ratio,), info)
