"""Installs while the agent serves: clients keep sending requests and never see an error; the
version they are served moves from old to new once, never back."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

from runtime.errors import EdgeshipError
from runtime.install import install_bundle
from tests.runtime.api.agentproc import EDGESHIP_DEVICE, AgentProcess
from tests.runtime.api.conftest import IRIS_ROW, new_home

ROW = {"input": np.asarray([IRIS_ROW], dtype=np.float32)}


class Traffic:
    """Clients sending requests in a loop, each on its own keep-alive connection."""

    def __init__(self, agent: AgentProcess, transports: tuple[str, ...]) -> None:
        self.agent = agent
        self.stop = threading.Event()
        self.seen: dict[str, list[str]] = {t: [] for t in transports}
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._run, args=(t,)) for t in transports]

    def _run(self, transport: str) -> None:
        seen = self.seen[transport]
        with self.agent.client(transport, timeout_s=30.0) as client:
            while not self.stop.is_set():
                try:
                    seen.append(client.infer("iris", ROW)["model_version"])
                except EdgeshipError as e:
                    self.errors.append(f"{transport}: {e}")

    def __enter__(self) -> Traffic:
        for thread in self.threads:
            thread.start()
        return self

    def wait_for(self, version: str, after: int = 20) -> None:
        """Until every client was served ``version`` at least ``after`` times (or an error)."""
        while not self.errors:
            if all(seen[-after:] == [version] * after for seen in self.seen.values()):
                return
            if not self.agent.alive():
                pytest.fail(f"the agent died:\n{self.agent.log()}")
            self.stop.wait(0.05)

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)


def install(home: Path, bundle: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [EDGESHIP_DEVICE, "install", str(bundle), "--home", str(home)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def changes(versions: list[str]) -> list[str]:
    """The versions in the order they were first served, each once per run of equal ones."""
    return [v for i, v in enumerate(versions) if i == 0 or versions[i - 1] != v]


@pytest.fixture
def serving(tmp_path, keys, build_bundle):
    store = new_home(tmp_path, keys)
    install_bundle(store, build_bundle("1.0.0", 10))
    agent = AgentProcess(store.home).start()
    yield agent
    code = agent.stop()
    assert code == 0, agent.log()


def test_install_through_the_cli_swaps_atomically_under_load(serving, build_bundle):
    bundle = build_bundle("2.0.0", 20)
    with Traffic(serving, ("tcp", "unix")) as traffic:
        traffic.wait_for("1.0.0")
        done = install(serving.home, bundle)
        _, err = done.communicate(timeout=120)
        assert done.returncode == 0, err
        traffic.wait_for("2.0.0")
    assert traffic.errors == []
    for versions in traffic.seen.values():
        assert changes(versions) == ["1.0.0", "2.0.0"]


def test_concurrent_installs_never_interrupt_serving(serving, build_bundle):
    good = [build_bundle("2.0.0", 20), build_bundle("3.0.0", 30), build_bundle("2.1.0", 21)]
    untrusted = build_bundle("9.0.0", 90, key_names=("stranger",))
    with Traffic(serving, ("tcp", "unix")) as traffic:
        traffic.wait_for("1.0.0")
        running = [install(serving.home, b) for b in [*good, untrusted]]
        codes = []
        for process in running:
            process.communicate(timeout=180)
            codes.append(process.returncode)
        traffic.wait_for("3.0.0")
    assert codes[1] == 0 and codes[3] == 1  # 3.0.0 installed; the stranger's bundle refused
    assert traffic.errors == []
    order = ["1.0.0", "2.0.0", "2.1.0", "3.0.0"]
    for versions in traffic.seen.values():
        served = changes(versions)
        assert served[0] == "1.0.0" and served[-1] == "3.0.0"
        assert served == sorted(served, key=order.index)  # never back to an older version
