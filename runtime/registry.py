"""The models a long-running process serves: the active version of each installed name, loaded
once and swapped atomically when the store's ``current`` link moves (an install or a rollback by
this process or any other).

A request holds the :class:`LoadedModel` it got for its whole run, so a swap never mixes two
versions in one answer; the old model is dropped when its last request ends.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Optional

from runtime.errors import EdgeshipError, StoreError
from runtime.limits import DEFAULT_INPUT_LIMITS, InputLimits
from runtime.model import LoadedModel
from runtime.store import Store
from runtime.verify import MANIFEST_MEMBER

CHECK_INTERVAL_S = 0.25
"""How often a name's ``current`` link is looked at again on the request path (seconds)."""


@dataclass(frozen=True)
class _Entry:
    model: LoadedModel
    identity: tuple[str, int, int]
    checked: float


class ModelRegistry:
    """Thread-safe map from model name to its loaded active version."""

    def __init__(
        self,
        store: Store,
        limits: InputLimits = DEFAULT_INPUT_LIMITS,
        check_interval_s: float = CHECK_INTERVAL_S,
    ) -> None:
        self.store = store
        self.limits = limits
        self.check_interval_s = check_interval_s
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}

    def _identity(self, name: str) -> Optional[tuple[str, int, int]]:
        """Which bundle ``current`` shows now: (link target, manifest inode, manifest mtime)."""
        current = self.store.model_dir(name) / "current"
        try:
            target = os.readlink(current)
            st = (current / MANIFEST_MEMBER).stat()
        except FileNotFoundError:
            return None
        return target, st.st_ino, st.st_mtime_ns

    def get(self, name: str) -> LoadedModel:
        """The active version of ``name``, reloading it if the store changed since it was loaded.

        Raises StoreError if no such model is installed, ModelError if it cannot be loaded (the
        previously loaded version, if any, keeps serving in that case).
        """
        entry = self._entries.get(name)
        now = time.monotonic()
        if entry is not None and now - entry.checked < self.check_interval_s:
            return entry.model
        identity = self._identity(name)
        if identity is None:
            if entry is not None:
                with self._lock:
                    self._entries.pop(name, None)
            self.store.active_dir(name)  # raises the "not installed" StoreError
            raise StoreError(f"model {name!r} is not installed")
        if entry is not None and entry.identity == identity:
            self._entries[name] = _Entry(entry.model, identity, now)
            return entry.model
        return self._load(name, identity, entry)

    def _load(
        self, name: str, identity: tuple[str, int, int], old: Optional[_Entry]
    ) -> LoadedModel:
        with self._lock:
            loading = self._loading.setdefault(name, threading.Lock())
        with loading:  # one load per name at a time; others wait and reuse it
            entry = self._entries.get(name)
            if entry is not None and entry.identity == identity:
                return entry.model
            try:
                model = LoadedModel.open(self.store.active_dir(name), self.limits)
            except Exception:
                if old is not None:  # keep serving what worked, look again later
                    self._entries[name] = _Entry(old.model, old.identity, time.monotonic())
                raise
            self._entries[name] = _Entry(model, identity, time.monotonic())
            return model

    def refresh(self) -> list[str]:
        """Look at every installed name now; load what changed. Returns the names (re)loaded."""
        changed = []
        for name in self.store.names():
            before = self._entries.get(name)
            if before is not None:
                self._entries[name] = _Entry(before.model, before.identity, 0.0)
            try:
                model = self.get(name)
            except EdgeshipError:  # not loadable now: the previous version keeps serving
                continue
            if before is None or before.model is not model:
                changed.append(name)
        for name in set(self._entries) - set(self.store.names()):
            with self._lock:
                self._entries.pop(name, None)
        return changed

    def loaded(self) -> dict[str, LoadedModel]:
        """The models loaded right now, by name."""
        return {name: entry.model for name, entry in self._entries.items()}
