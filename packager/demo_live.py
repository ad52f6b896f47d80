"""The live half of ``edgeship demo``: the device agent serving and reporting, the fleet watching.

On this machine, with embedded defaults: a private mosquitto broker on a free loopback port, the
fleet monitor storing into SQLite, and ``edgeship-device agent`` serving the demo store's models
on a Unix socket and sending telemetry. Requests go through the local API; after the agent stops,
the fleet status shows the device and every request counted once.
"""

from __future__ import annotations

import contextlib
import getpass
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from packager.fleet.status import fleet_status
from packager.fleet.store import open_store
from runtime.api.client import ApiClient
from runtime.api.settings import UnixAddress
from runtime.errors import TransportError, UsageError

Say = Callable[[str], None]
FLEET, DEVICE = "demo", "device-1"
START_TIMEOUT_S = 30.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(
    check: Callable[[], bool], timeout_s: float, what: str, proc: subprocess.Popen[Any]
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise TransportError(
                f"{what} exited with {proc.returncode} (its log is in the work folder)"
            )
        if check():
            return
        time.sleep(0.05)
    raise TransportError(f"{what} did not come up within {timeout_s:.0f} s")


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _process(argv: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _broker(workdir: Path) -> tuple[list[str], int]:
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(mosquitto).exists():
        raise UsageError(
            "the live part of the demo needs mosquitto: apt-get install mosquitto (make install "
            "does this)"
        )
    port = _free_port()
    config = workdir / "mosquitto.conf"
    config.write_text(
        f"user {getpass.getuser()}\nlistener {port} 127.0.0.1\nallow_anonymous true\n"
        f"persistence true\npersistence_location {workdir}/\n",
        encoding="utf-8",
    )
    return [mosquitto, "-c", str(config)], port


def run_live(workdir: Path, home: Path, model: str, rows: np.ndarray, say: Say) -> dict[str, Any]:
    """Serve ``model`` from the store at ``home`` through the agent, send ``rows`` one request
    each, and read back what the fleet monitor stored. Raises TransportError when a process
    does not start, UsageError when mosquitto is missing."""
    live = workdir / "live"
    live.mkdir(parents=True, exist_ok=True)
    broker_argv, port = _broker(live)
    url = f"mqtt://127.0.0.1:{port}"
    db = f"sqlite:///{live / 'fleet.db'}"
    sock = live / "agent.sock"
    python = sys.executable
    with _process(broker_argv, live / "mosquitto.log") as broker:
        _wait(lambda: _listening(port), START_TIMEOUT_S, "mosquitto", broker)
        say(f"started a private MQTT broker on 127.0.0.1:{port}")
        monitor_argv = [python, "-m", "packager.cli", "fleet", "monitor", "--broker", url,
                        "--db", db]  # fmt: skip
        with _process(monitor_argv, live / "monitor.log") as monitor:
            _wait(lambda: "subscribed to" in (live / "monitor.log").read_text(errors="replace"),
                  START_TIMEOUT_S, "the fleet monitor", monitor)  # fmt: skip
            say(f"fleet monitor stores telemetry in {db}")
            agent_argv = [
                python, "-m", "runtime.cli", "agent", "--serve", f"unix:{sock}", "--broker",
                url, "--fleet", FLEET, "--device-id", DEVICE, "--telemetry-interval", "1",
                "--home", str(home), "--log-level", "warning",
            ]  # fmt: skip
            with _process(agent_argv, live / "agent.log") as agent:
                _wait(sock.exists, START_TIMEOUT_S, "the agent", agent)
                say(f"agent serves the local API on unix:{sock} (Open Inference Protocol)")
                with ApiClient(UnixAddress(sock)) as client:
                    answers = [client.infer(model, {"input": row[np.newaxis]}) for row in rows]
                say(f"sent {len(answers)} requests through the local API")
                agent.send_signal(signal.SIGTERM)
                agent.wait(timeout=30)
            counted, devices = _await_telemetry(db, model, len(rows), monitor)
    status = devices[0] if devices else {}
    say(
        f"fleet status: {DEVICE} {'online' if status.get('online') else 'offline'}, "
        f"{counted} of {len(rows)} requests counted in telemetry"
    )
    return {"broker": url, "db": db, "requests": len(rows), "counted": counted, "status": status}


def _await_telemetry(
    db: str, model: str, sent: int, monitor: subprocess.Popen[bytes]
) -> tuple[int, list[dict[str, Any]]]:
    deadline = time.monotonic() + 20
    counted, devices = 0, []
    while time.monotonic() < deadline and monitor.poll() is None:
        store = open_store(db)
        try:
            counted = sum(w.requests for w in store.windows(FLEET, DEVICE, model))
            devices = fleet_status(store, FLEET)
        finally:
            store.close()
        if counted >= sent and devices and not devices[0]["online"]:
            break
        time.sleep(0.2)
    return counted, devices
