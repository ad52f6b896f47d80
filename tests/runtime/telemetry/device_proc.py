"""A device process for the outage tests: a TelemetryLink over the iris model and a request loop.

    python -m tests.runtime.telemetry.device_proc HOME BROKER_URL DEVICE_ID INTERVAL_S LOG

Prints READY once the link is started, logs every message the spool commits ("spooled seq N on
TOPIC") to LOG, serves requests until SIGTERM, then stops the link cleanly. A test SIGKILLs it to
play a crash or a power cut.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path

import numpy as np

from runtime.registry import ModelRegistry
from runtime.service import InferenceService
from runtime.store import Store
from runtime.telemetry.connection import BrokerURL, ReconnectPolicy
from runtime.telemetry.link import TelemetryLink, TelemetrySettings


def main(home: str, broker: str, device_id: str, interval_s: str, log_path: str) -> None:
    handler = logging.FileHandler(log_path)
    handler.setFormatter(logging.Formatter("%(message)s"))
    spool_log = logging.getLogger("runtime.telemetry.spool")
    spool_log.addHandler(handler)
    spool_log.setLevel(logging.DEBUG)
    store = Store(Path(home))
    registry = ModelRegistry(store)
    settings = TelemetrySettings(
        broker=BrokerURL.parse(broker),
        fleet="lab",
        device_id=device_id,
        home=store.home,
        interval_s=float(interval_s),
        reconnect=ReconnectPolicy(0.1, 0.5, 0.2),
    )
    link = TelemetryLink(settings, store, registry)
    service = InferenceService(registry, [link])
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    link.start()
    print("READY", flush=True)
    name = registry.get("iris").manifest.model.inputs[0].name
    rows = np.random.default_rng(0).normal(5.0, 1.0, size=(64, 4)).astype(np.float32)
    i = 0
    while not stop.wait(0.002):
        service.predict("iris", {name: rows[i % 64 : i % 64 + 1]})
        i += 1
    link.stop(timeout_s=10.0)
    print("STOPPED", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:6])
