"""The device agent: the one long-running process of a device (``edgeship-device agent``).

It composes parts that each start and stop on their own:

- the model registry and the inference service over the device store (design.md §3, §4);
- the local API servers, one per ``--serve`` address (``runtime.api``);
- the inbox, which installs bundles that appear in a folder (``runtime.inbox``);
- the telemetry link to the fleet's MQTT broker (``runtime.telemetry.link``), when asked for;
- a watcher that loads versions installed by other processes, and ``HOME/agent.json``
  (``runtime.agent_state``), rewritten every few seconds.

They start in that order with telemetry first, so the birth message precedes any request, and
stop in the same order with telemetry moved last: the API stops accepting and finishes the requests
in progress, the inbox finishes its install, agent.json is removed, and then the telemetry window
still open, which has counted every request, is closed and spooled. :func:`run_agent` runs an
agent until SIGTERM or SIGINT.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Callable, Optional

from runtime.agent_state import remove_state, write_state
from runtime.api.routes import Api
from runtime.api.server import ApiServer
from runtime.api.settings import DEFAULT_API_LIMITS, Address, ApiLimits
from runtime.errors import StoreError
from runtime.registry import ModelRegistry
from runtime.service import InferenceService, Observer
from runtime.store import Store

if TYPE_CHECKING:  # imported when telemetry is asked for: paho-mqtt costs start-up time
    from runtime.telemetry.link import TelemetryLink
    from runtime.telemetry.settings import TelemetrySettings

_log = logging.getLogger("edgeship.agent")


@dataclass(frozen=True)
class AgentSettings:
    """What the agent runs, and how often it looks after itself."""

    serve: tuple[Address, ...] = ()
    """Addresses of the local API (none: no API)."""
    inbox: Optional[Path] = None
    """Folder watched for bundles to install (none: no inbox)."""
    telemetry: Optional[TelemetrySettings] = None
    """Where and how to send telemetry (none: no telemetry)."""
    api_limits: ApiLimits = DEFAULT_API_LIMITS
    inbox_interval_s: float = 2.0
    """How often the inbox folder is looked at (seconds)."""
    watch_interval_s: float = 1.0
    """How often the store is looked at for versions installed by other processes (seconds)."""
    state_interval_s: float = 2.0
    """How often ``HOME/agent.json`` is rewritten (seconds)."""
    allow_any_target: bool = False
    """Let the inbox install bundles built for another architecture (testing only)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """More facts written to agent.json."""


class Component(ABC):
    """A part of the agent with a life of its own."""

    name = "component"

    @abstractmethod
    def start(self) -> None:
        """Start; raises EdgeshipError when it cannot (the agent then does not start)."""

    @abstractmethod
    def stop(self) -> None:
        """Stop, finishing what is in progress; never raises."""


class _Loop(Component):
    """Calls ``step`` every ``interval_s`` seconds on its own thread; ``last`` once at stop."""

    def __init__(
        self,
        name: str,
        step: Callable[[], None],
        interval_s: float,
        last: Optional[Callable[[], None]] = None,
    ) -> None:
        self.name = name
        self._step = step
        self._interval_s = interval_s
        self._last = last
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"agent-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except Exception:  # noqa: BLE001 - a service loop outlives one failed step
                _log.exception("%s failed; trying again in %g s", self.name, self._interval_s)
            self._stop.wait(self._interval_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        if self._last is not None:
            self._last()


class _Servers(Component):
    name = "api"

    def __init__(self, servers: list[ApiServer]) -> None:
        self.servers = servers

    def start(self) -> None:
        started = []
        try:
            for server in self.servers:
                server.start()
                started.append(server)
        except BaseException:
            for server in started:
                server.stop()
            raise

    def stop(self) -> None:
        threads = [threading.Thread(target=s.stop, name="api-stop") for s in self.servers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()


class _Adapter(Component):
    """A part that already has ``start``/``stop`` (the telemetry link)."""

    def __init__(self, name: str, part: Any) -> None:
        self.name = name
        self.part = part

    def start(self) -> None:
        self.part.start()

    def stop(self) -> None:
        try:
            self.part.stop()
        except Exception:  # noqa: BLE001 - stopping must go on with the other parts
            _log.exception("stopping %s failed", self.name)


class _InboxPart(Component):
    name = "inbox"

    def __init__(self, inbox: Any, interval_s: float) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=inbox.run, args=(self._stop, interval_s), name="agent-inbox", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Agent:
    """The agent's parts over one device store. ``start``, then ``stop`` (or :meth:`run`)."""

    def __init__(self, store: Store, settings: AgentSettings = AgentSettings()) -> None:
        if not store.initialized():
            raise StoreError(f"{store.home} has no trust policy: run 'edgeship-device init' first")
        self.store = store
        self.settings = settings
        self._state_failing = False
        self.registry = ModelRegistry(store)
        telemetry = self._telemetry()
        self.telemetry = telemetry
        observers: list[Observer] = [telemetry] if telemetry is not None else []
        self.service = InferenceService(self.registry, observers)
        self.api = Api(self.service, settings.api_limits)
        self.servers = [ApiServer(a, self.api, settings.api_limits) for a in settings.serve]
        self.components: list[Component] = []
        if telemetry is not None:
            self.components.append(_Adapter("telemetry", telemetry))
        self.components.append(_Servers(self.servers))
        if settings.inbox is not None:
            self.components.append(self._inbox(settings.inbox))
        self.components.append(_Loop("watch", self._watch, settings.watch_interval_s))
        self.components.append(
            _Loop("state", self._write_state, settings.state_interval_s, self._remove_state)
        )
        self._started: list[Component] = []

    def _telemetry(self) -> Optional[TelemetryLink]:
        if self.settings.telemetry is None:
            return None
        from runtime.telemetry.link import TelemetryLink

        return TelemetryLink(self.settings.telemetry, self.store, self.registry)

    def _inbox(self, folder: Path) -> Component:
        from runtime.inbox import Inbox

        inbox = Inbox(
            self.store,
            folder,
            on_event=self._on_install,
            allow_any_target=self.settings.allow_any_target,
        )
        return _InboxPart(inbox, self.settings.inbox_interval_s)

    def _on_install(self, kind: str, doc: dict[str, Any]) -> None:
        self.service.event(kind, doc)
        if kind == "install":
            self._watch()

    def _watch(self) -> None:
        for name in self.registry.refresh():
            model = self.registry.loaded().get(name)
            if model is not None:
                _log.info("serving %s %s", name, model.manifest.version)

    def snapshot(self) -> dict[str, Any]:
        """The agent.json document: who, where, and the counters since start."""
        return {
            "pid": os.getpid(),
            "started": _utc(self.service.started),
            "updated": _utc(time.time()),
            "home": str(self.store.home),
            "serve": [str(s.address) for s in self.servers],
            "inbox": str(self.settings.inbox) if self.settings.inbox else None,
            "telemetry": self._telemetry_status(),
            **self.settings.extra,
            "counters": self.service.stats(),
        }

    def _telemetry_status(self) -> Optional[dict[str, Any]]:
        settings = self.settings.telemetry
        if self.telemetry is None or settings is None:
            return None
        return {"fleet": settings.fleet, "device_id": settings.device_id, **self.telemetry.status()}

    def _write_state(self) -> None:
        try:
            write_state(self.store.home, self.snapshot())
        except OSError as e:  # a full or read-only disk: say so once, keep serving
            if not self._state_failing:
                _log.error("cannot write agent.json (%s); serving goes on", e.strerror or e)
            self._state_failing = True
            return
        if self._state_failing:
            _log.warning("agent.json can be written again")
        self._state_failing = False

    def _remove_state(self) -> None:
        remove_state(self.store.home)

    def start(self) -> None:
        """Load the installed models, then start every part in order.

        Raises EdgeshipError (a port in use, say) after stopping what had started.
        """
        self._watch()
        for component in self.components:
            try:
                component.start()
            except BaseException:
                self.stop()
                raise
            self._started.append(component)
        _log.info(
            "agent started (pid %d): %s",
            os.getpid(),
            ", ".join(c.name for c in self._started),
        )

    def stop(self) -> None:
        """Stop accepting requests, finish those in progress, stop the rest; telemetry last."""
        started, self._started = self._started, []
        # requests stop first (the API, then the inbox), then the watcher and agent.json;
        # telemetry last, so the window still open counts every request
        order = [c for c in started if c.name != "telemetry"]
        order += [c for c in started if c.name == "telemetry"]
        for component in order:
            _log.info("stopping %s", component.name)
            component.stop()
        _log.info("agent stopped")


def run_agent(store: Store, settings: AgentSettings) -> None:
    """Run an agent until SIGTERM or SIGINT, then stop it gracefully.

    Must be called from the main thread (signal handlers). Raises EdgeshipError when the agent
    cannot start.
    """
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, frame: Optional[FrameType]) -> None:
        received.append(signum)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        agent = Agent(store, settings)
        agent.start()
        try:
            while not stop.wait(1.0):
                pass
            _log.info("received %s: stopping", signal.Signals(received[0]).name)
        finally:
            agent.stop()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
