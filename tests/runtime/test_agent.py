"""``edgeship-device agent`` as a real process: signals, agent.json, status counters, feedback,
the inbox and telemetry through it, and the ways it refuses to start."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest

from runtime.agent_state import AGENT_FILE, read_state
from runtime.install import install_bundle
from tests.runtime.api.agentproc import EDGESHIP_DEVICE, AgentProcess
from tests.runtime.api.conftest import IRIS_ROW, new_home
from tests.runtime.telemetry.conftest import Subscriber, wait_until

ROW = {"input": np.asarray([IRIS_ROW], dtype=np.float32)}


def device_cli(*args, home):
    return subprocess.run(
        [EDGESHIP_DEVICE, *args, "--home", str(home)], capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def home(tmp_path, keys, build_bundle):
    store = new_home(tmp_path, keys)
    install_bundle(store, build_bundle("1.0.0", 10))
    return store.home


@pytest.fixture
def agent(home):
    process = AgentProcess(home).start()
    yield process
    process.kill()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_cleanly_and_removes_agent_json(agent, home, signum):
    assert (home / AGENT_FILE).exists()
    with agent.client("unix") as client:
        client.infer("iris", ROW)
    code = agent.stop(signum)
    assert code == 0, agent.log()
    assert not (home / AGENT_FILE).exists()
    assert not agent.socket_path.exists()
    log = agent.log()
    assert "received SIG" in log and "agent stopped" in log


def test_status_shows_counters_since_start(agent, home):
    with agent.client("tcp") as client:
        for _ in range(3):
            client.infer("iris", ROW)
        client.request("POST", "/v2/models/iris/infer", b'{"inputs": [{"name": "input", '
                       b'"shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}')  # fmt: skip

    def counted():
        doc = json.loads(device_cli("status", "--json", home=home).stdout)
        counters = (doc["agent"] or {}).get("counters", {}).get("iris")
        return doc if counters and counters["requests"] == 4 else None

    doc = wait_until(counted, what="agent.json to show the requests")
    assert doc["agent"]["pid"] == agent.process.pid
    iris = doc["agent"]["counters"]["iris"]
    assert iris["rejected"] == {"shape": 1} and iris["errors"] == 0 and iris["rows"] == 3
    human = device_cli("status", home=home).stdout
    assert f"agent: pid {agent.process.pid}" in human
    assert "iris counters since start: 4 requests, 0 errors, 1 rejected" in human


def test_status_without_agent(home):
    result = device_cli("status", "--json", home=home)
    assert result.returncode == 0 and json.loads(result.stdout)["agent"] is None
    assert "agent: not running" in device_cli("status", home=home).stdout


def test_feedback_reaches_the_running_agent(agent, home):
    with agent.client("tcp") as client:
        ident = client.infer("iris", ROW)["parameters"]["prediction_id"]
    result = device_cli("feedback", "iris", "--id", ident, "--label", "0", "--json", home=home)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["accepted"] == 1
    human = device_cli("feedback", "iris", "--id", ident, "--label", "0", home=home)
    assert f"prediction {ident}: 1 value(s) recorded" in human.stdout
    refused = device_cli("feedback", "iris", "--id", ident, "--label", "0", "--label", "1",
                         home=home)  # fmt: skip
    assert refused.returncode == 5 and "feedback needs 1 value(s)" in refused.stderr
    unknown = device_cli("feedback", "iris", "--id", "nope-1", "--label", "0", home=home)
    assert unknown.returncode == 5 and "unknown prediction id" in unknown.stderr
    no_model = device_cli("feedback", "nope", "--id", ident, "--label", "0", home=home)
    assert no_model.returncode == 6 and "no model called 'nope'" in no_model.stderr


def test_feedback_without_agent_says_so(home):
    result = device_cli("feedback", "iris", "--id", "x-1", "--label", "0", home=home)
    assert result.returncode == 7
    assert "no agent is running" in result.stderr and len(result.stderr.splitlines()) == 1


def test_stale_agent_json_of_a_killed_agent_reads_as_not_running(agent, home):
    agent.kill()
    assert (home / AGENT_FILE).exists()  # a killed agent cannot clean up
    assert read_state(home) is None
    assert "no agent is running" in device_cli("feedback", "iris", "--id", "x", "--label", "0",
                                               home=home).stderr  # fmt: skip
    restarted = AgentProcess(home).start()  # and a new agent takes its agent.json over
    try:
        assert read_state(home).pid == restarted.process.pid
    finally:
        assert restarted.stop() == 0


def test_inbox_installs_and_the_api_serves_the_new_version(home, tmp_path, build_bundle):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    agent = AgentProcess(home, "--inbox", str(inbox)).start()
    try:
        bundle = build_bundle("2.0.0", 20)
        shutil.copy(bundle, inbox / bundle.name)
        with agent.client("unix") as client:
            wait_until(lambda: client.infer("iris", ROW)["model_version"] == "2.0.0",
                       timeout=60, what="the inbox bundle to be served")  # fmt: skip
        assert (inbox / "installed" / bundle.name).exists()
    finally:
        assert agent.stop() == 0, agent.log()


def test_telemetry_counts_every_request_once_across_a_stop(home, mosquitto):
    broker = mosquitto()
    subscriber = Subscriber(broker)
    agent = AgentProcess(home, "--broker", broker.url(), "--fleet", "lab", "--device-id",
                         "dev-9", "--telemetry-interval", "60").start()  # fmt: skip
    try:
        with agent.client("tcp") as client:
            for _ in range(7):
                client.infer("iris", ROW)
        state = read_state(home)
        assert state.doc["telemetry"]["device_id"] == "dev-9"
        assert agent.stop() == 0, agent.log()  # the 60 s window is still open here

        def windows():
            found = subscriber.messages("telemetry")
            return found if any("iris" in m.doc.get("models", {}) for m in found) else None

        found = wait_until(windows, what="the last window to reach the broker")
        assert sum(m.doc["models"]["iris"]["requests"] for m in found
                   if "iris" in m.doc["models"]) == 7  # fmt: skip
        events = [m.doc["event"] for m in subscriber.messages("events")]
        assert "agent-start" in events and "agent-stop" in events
        stops = [line.split("stopping ")[1] for line in agent.log().splitlines()
                 if "edgeship.agent: stopping " in line]  # fmt: skip
        assert stops == ["api", "watch", "state", "telemetry"]
    finally:
        agent.kill()
        subscriber.close()


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        ((), 2, "nothing to run"),
        (("--serve", "nowhere"), 2, "cannot read address"),
        (("--serve", "8080", "--fleet", "lab"), 2, "need --broker"),
        (("--broker", "mqtt://127.0.0.1:1883"), 2, "--broker needs --fleet and --device-id"),
        (("--broker", "ftp://x", "--fleet", "lab", "--device-id", "d"), 2, "ftp"),
    ],
)
def test_agent_refuses_bad_options(home, args, code, words):
    result = subprocess.run([EDGESHIP_DEVICE, "agent", *args, "--home", str(home)],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == code, result.stderr
    assert words in result.stderr


def test_agent_refuses_a_store_without_trust_policy(tmp_path):
    result = subprocess.run([EDGESHIP_DEVICE, "agent", "--serve", "127.0.0.1:0", "--home",
                             str(tmp_path / "empty")], capture_output=True, text=True,
                            timeout=60)  # fmt: skip
    assert result.returncode == 6 and "edgeship-device init" in result.stderr


def test_agent_on_a_port_in_use_exits_7(agent, home):
    result = subprocess.run([EDGESHIP_DEVICE, "agent", "--serve", str(agent.tcp), "--home",
                             str(home)], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 7 and "cannot listen on" in result.stderr
    time.sleep(0.1)
    assert agent.alive()
    assert read_state(home).pid == agent.process.pid  # the refused one did not take agent.json
