"""A real ``edgeship-device agent`` process for tests: started, found through its agent.json,
stopped with a signal."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from runtime.api.client import ApiClient
from runtime.api.settings import TcpAddress, UnixAddress, parse_address
from runtime.errors import TransportError

EDGESHIP_DEVICE = str(Path(sys.executable).with_name("edgeship-device"))


def short_socket_dir() -> Path:
    """A folder whose socket paths fit the kernel's 107 bytes (pytest's tmp paths may not)."""
    return Path(tempfile.mkdtemp(prefix="es-api-", dir="/tmp"))


class AgentProcess:
    """``edgeship-device agent --home HOME --serve 127.0.0.1:0 [--serve unix:PATH] ARGS``."""

    def __init__(self, home: Path, *args: str, unix: bool = True, tcp: bool = True) -> None:
        self.home = home
        self.socket_path = short_socket_dir() / "api.sock" if unix else None
        serve = []
        if tcp:
            serve += ["--serve", "127.0.0.1:0"]
        if self.socket_path is not None:
            serve += ["--serve", f"unix:{self.socket_path}"]
        self.command = [EDGESHIP_DEVICE, "agent", *serve, "--home", str(home), *args]
        self.log_path = home.parent / f"agent-{os.getpid()}-{time.monotonic_ns()}.log"
        self.process: Optional[subprocess.Popen[bytes]] = None
        self.tcp: Optional[TcpAddress] = None
        self.unix: Optional[UnixAddress] = None

    def start(self, timeout_s: float = 60.0) -> AgentProcess:
        """Start and wait until agent.json names this process and the API answers ready."""
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise RuntimeError(f"the agent exited {self.process.returncode}:\n{self.log()}")
            if self._found() and self._ready():
                return self
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"the agent did not get ready:\n{self.log()}")

    def _found(self) -> bool:
        try:
            doc = json.loads((self.home / "agent.json").read_text())
        except (FileNotFoundError, ValueError):
            return False
        if self.process is None or doc.get("pid") != self.process.pid:
            return False
        for text in doc["serve"]:
            address = parse_address(text)
            if isinstance(address, TcpAddress):
                self.tcp = address
            else:
                self.unix = address
        return True

    def _ready(self) -> bool:
        address = self.tcp or self.unix
        assert address is not None
        try:
            with ApiClient(address, timeout_s=5.0) as client:
                return client.request("GET", "/v2/health/live")[0] == 200
        except TransportError:
            return False

    @property
    def addresses(self) -> dict[str, object]:
        found: dict[str, object] = {}
        if self.tcp is not None:
            found["tcp"] = self.tcp
        if self.unix is not None:
            found["unix"] = self.unix
        return found

    def client(self, transport: str = "tcp", timeout_s: float = 10.0) -> ApiClient:
        address = self.tcp if transport == "tcp" else self.unix
        assert address is not None, transport
        return ApiClient(address, timeout_s=timeout_s)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, signum: int = signal.SIGTERM, timeout_s: float = 60.0) -> int:
        """Send ``signum`` and wait for the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        finally:
            if self.socket_path is not None:  # empty once the agent removed its socket
                with contextlib.suppress(OSError):
                    self.socket_path.parent.rmdir()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        if self.socket_path is not None:  # a killed agent leaves its socket behind
            shutil.rmtree(self.socket_path.parent, ignore_errors=True)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-5000:]
        except FileNotFoundError:
            return ""
