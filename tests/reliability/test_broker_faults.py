"""Broker faults end to end: the real agent serves requests and sends telemetry through a real
mosquitto that is SIGKILLed and restarted again and again, while the agent itself is stopped and
started again during an outage; the real fleet monitor must end up counting every request that
was answered exactly once (0 lost; QoS 1 duplicates are removed by the monitor's seq check).

What a SIGKILLed broker keeps is what it had saved: the broker here saves on every change
(``autosave_on_changes``, as devices/mosquitto/mosquitto.conf recommends), so the monitor's
persistent session and the messages queued for it survive each kill.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

from packager.fleet.store import open_store
from runtime.errors import EdgeshipError
from runtime.install import install_bundle
from runtime.store import Store
from tests.broker import Broker
from tests.runtime.api.agentproc import AgentProcess

EDGESHIP = str(Path(sys.executable).with_name("edgeship"))
OUTAGES = int(os.environ.get("EDGESHIP_BROKER_OUTAGES", "4"))
"""Broker kills in one run: 4 in ``make test``, 30 in ``make soak``."""


class Load:
    """One client thread sending batch-1 requests to whichever agent is current."""

    def __init__(self) -> None:
        self.answered = 0
        self.agent: AgentProcess | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.row = np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32)

    def _run(self) -> None:
        while not self.stop.is_set():
            agent = self.agent
            if agent is None:
                time.sleep(0.01)
                continue
            try:
                with agent.client("tcp") as client:
                    while not self.stop.is_set() and self.agent is agent:
                        client.infer("iris", {"input": self.row})
                        self.answered += 1
                        time.sleep(0.002)
            except (EdgeshipError, OSError):
                time.sleep(0.01)  # the agent is restarting: nothing was answered


def _counted(db: str) -> tuple[int, int]:
    store = open_store(db)
    try:
        return sum(w.requests for w in store.windows("lab", "dev-1", "iris")), store.stored_count()
    finally:
        store.close()


def test_every_request_is_counted_once_through_broker_kills_and_an_agent_restart(
    device: Store,
    build_bundle: Callable[..., Path],
    mosquitto: Callable[..., Broker],
    tmp_path: Path,
) -> None:
    install_bundle(device, build_bundle("1.0.0", 1))
    broker = mosquitto(durable=True)
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    monitor_log = (tmp_path / "monitor.log").open("wb")
    monitor = subprocess.Popen(
        [EDGESHIP, "fleet", "monitor", "--broker", broker.url(), "--db", db,
         "--client-id", "monitor-1"],
        stdout=monitor_log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    # the broker keeps messages for the monitor's session only from its subscription on
    deadline = time.monotonic() + 30
    while "subscribed to" not in (tmp_path / "monitor.log").read_text(errors="replace"):
        assert monitor.poll() is None and time.monotonic() < deadline, "the monitor did not start"
        time.sleep(0.05)
    telemetry = ["--broker", broker.url(), "--fleet", "lab", "--device-id", "dev-1",
                 "--telemetry-interval", "0.2"]  # fmt: skip
    load = Load()
    load.thread.start()
    agent = AgentProcess(device.home, *telemetry, unix=False).start()
    try:
        load.agent = agent
        for outage in range(OUTAGES):
            time.sleep(1.0)
            broker.kill()
            time.sleep(0.6)
            if outage == OUTAGES // 2:  # the device restarts while the broker is away
                load.agent = None
                assert agent.stop() == 0, agent.log()
                agent = AgentProcess(device.home, *telemetry, unix=False).start()
                load.agent = agent
                time.sleep(0.5)
            broker.start()
        time.sleep(1.0)
        load.stop.set()
        load.thread.join(timeout=30)
        assert agent.stop() == 0, agent.log()
        answered = load.answered
        assert answered > 100, "the load barely ran"
        deadline = time.monotonic() + 60
        counted = -1
        while time.monotonic() < deadline:
            counted, _ = _counted(db)
            if counted >= answered:
                break
            time.sleep(0.25)
        time.sleep(1.0)  # anything late (a duplicate) would show up now
        counted, stored = _counted(db)
        assert counted == answered, (
            f"answered {answered} requests, the monitor counted {counted}; agent log:\n"
            + agent.log()
        )
        assert stored > OUTAGES
        print(
            f"\nbroker faults: {OUTAGES} broker kills, 1 agent restart while offline: "
            f"{answered} requests answered, {counted} counted by the monitor, "
            f"{stored} messages stored once"
        )
        assert Store(device.home).home.joinpath("spool.sqlite").exists()
    finally:
        load.stop.set()
        if agent.alive():
            agent.kill()
        monitor.terminate()
        try:
            monitor.wait(timeout=20)
        except subprocess.TimeoutExpired:
            monitor.kill()
        monitor_log.close()
