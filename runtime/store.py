"""The device store of design.md §3: trust policy, models with A/B slots, and their state.

::

    HOME/trust.toml                  trust policy
    HOME/models/NAME/slots/a|b       extracted, verified bundles
    HOME/models/NAME/current         -> slots/a (swapped atomically)
    HOME/models/NAME/state.json      highest sequence ever installed, history
    HOME/tmp/                        staging for installs (cleared on every write operation)

The ``current`` link is the one truth for which slot is active; a slot folder exists only once it
holds a complete, verified bundle (it is renamed into place). ``state.json`` keeps what cannot be
derived: the anti-rollback floor and a bounded history.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional

from runtime.errors import StoreError
from runtime.fsutil import atomic_symlink, atomic_write
from runtime.manifest import NAME_RE, Manifest
from runtime.verify import MANIFEST_MEMBER, parse_manifest

if TYPE_CHECKING:  # loading the crypto library costs a process that only serves models
    from runtime.trust import TrustPolicy

SLOTS = ("a", "b")
HISTORY_LIMIT = 50
MAX_STATE_BYTES = 1024 * 1024


def default_home() -> Path:
    """``$EDGESHIP_HOME``, else /var/lib/edgeship as root, else ~/.local/share/edgeship."""
    env = os.environ.get("EDGESHIP_HOME")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/edgeship")
    return Path.home() / ".local" / "share" / "edgeship"


@dataclass
class ModelState:
    """What ``state.json`` holds for one model."""

    highest_sequence: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    def record(self, entry: dict[str, Any]) -> None:
        self.history.append(entry)
        del self.history[:-HISTORY_LIMIT]

    def to_dict(self) -> dict[str, Any]:
        return {"highest_sequence": self.highest_sequence, "history": self.history}

    @classmethod
    def from_dict(cls, doc: Any, where: str) -> ModelState:
        if not isinstance(doc, dict) or not isinstance(doc.get("highest_sequence"), int):
            raise StoreError(f"{where}: malformed state (run 'edgeship-device status' to check)")
        history = doc.get("history", [])
        return cls(doc["highest_sequence"], list(history) if isinstance(history, list) else [])


class Store:
    """A device's store rooted at ``home``. Methods that change it take the store lock."""

    def __init__(self, home: Path) -> None:
        self.home = home

    @property
    def trust_path(self) -> Path:
        return self.home / "trust.toml"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def tmp_dir(self) -> Path:
        return self.home / "tmp"

    def model_dir(self, name: str) -> Path:
        if not NAME_RE.match(name):
            raise StoreError(f"{name!r} is not a valid model name")
        return self.models_dir / name

    # --- trust ----------------------------------------------------------------------------------

    def initialized(self) -> bool:
        return self.trust_path.exists()

    def policy(self) -> TrustPolicy:
        from runtime.trust import TrustPolicy

        return TrustPolicy.load(self.trust_path)

    def save_policy(self, policy: TrustPolicy) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        policy.save(self.trust_path)

    # --- locking and staging --------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Serialize changes to the store across processes; clears stale staging on entry.

        Raises TrustPolicyError when the store was never initialized.
        """
        if not self.initialized():
            self.policy()  # raises the "run init first" error
        with (self.home / ".lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                self._clear_tmp()
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def leftovers(self) -> list[Path]:
        """What interrupted operations left behind: staging entries in ``tmp/`` and half-made
        link, state and policy files. ``lock`` clears exactly these on entry."""
        found: list[Path] = []
        if self.tmp_dir.is_dir():
            found.extend(sorted(self.tmp_dir.iterdir()))
        if self.models_dir.is_dir():
            found.extend(sorted(self.models_dir.glob("*/.current.tmp")))
            found.extend(sorted(self.models_dir.glob("*/.state.json.*.tmp")))
        found.extend(sorted(self.home.glob(".trust.toml.*.tmp")))
        return found

    def _clear_tmp(self) -> None:
        import shutil  # the write path's modules stay out of processes that only read the store

        for leftover in self.leftovers():
            if leftover.parent != self.tmp_dir:  # tmp/ goes as a whole below
                leftover.unlink()
        if self.tmp_dir.exists():
            shutil.rmtree(self.tmp_dir)

    def staging_dir(self) -> Path:
        import tempfile

        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        staged = Path(tempfile.mkdtemp(prefix="stage-", dir=self.tmp_dir))
        staged.chmod(0o755)
        return staged

    # --- models ---------------------------------------------------------------------------------

    def names(self) -> list[str]:
        if not self.models_dir.is_dir():
            return []
        return sorted(p.name for p in self.models_dir.iterdir() if NAME_RE.match(p.name))

    def active_slot(self, name: str) -> Optional[str]:
        link = self.model_dir(name) / "current"
        try:
            target = os.readlink(link)
        except FileNotFoundError:
            return None
        slot = Path(target).name
        if target != f"slots/{slot}" or slot not in SLOTS:
            raise StoreError(f"{link} points somewhere unexpected: {target}")
        return slot

    def slot_dir(self, name: str, slot: str) -> Path:
        return self.model_dir(name) / "slots" / slot

    def other_slot(self, name: str) -> Optional[str]:
        """The inactive slot if it holds a complete bundle (what rollback would return to)."""
        active = self.active_slot(name)
        if active is None:
            return None
        other = SLOTS[1 - SLOTS.index(active)]
        return other if self.slot_dir(name, other).is_dir() else None

    def active_dir(self, name: str) -> Path:
        """The folder of the active bundle; raises StoreError if no such model is installed."""
        slot = self.active_slot(name)
        if slot is None:
            known = ", ".join(self.names()) or "none"
            raise StoreError(f"no model called {name!r} is installed (installed: {known})")
        return self.slot_dir(name, slot)

    def slot_manifest(self, name: str, slot: str) -> Manifest:
        path = self.slot_dir(name, slot) / MANIFEST_MEMBER
        try:
            return parse_manifest(path.read_bytes())
        except FileNotFoundError as e:
            raise StoreError(f"{path} is missing: the store is damaged") from e

    def state(self, name: str) -> ModelState:
        path = self.model_dir(name) / "state.json"
        try:
            with path.open("rb") as f:
                data = f.read(MAX_STATE_BYTES + 1)
        except FileNotFoundError:
            return ModelState()
        try:
            return ModelState.from_dict(json.loads(data), str(path))
        except ValueError as e:
            raise StoreError(f"{path} is not JSON: {e}") from e

    def save_state(self, name: str, state: ModelState) -> None:
        data = json.dumps(state.to_dict(), indent=1, sort_keys=True).encode("utf-8")
        atomic_write(self.model_dir(name) / "state.json", data)

    def floors(self) -> dict[str, int]:
        """The anti-rollback floor of every installed model: the highest sequence ever installed,
        or an installed slot's sequence if that is higher (a crash before the state write)."""
        floors = {}
        for name in self.names():
            highest = self.state(name).highest_sequence
            for slot in SLOTS:
                if self.slot_dir(name, slot).is_dir():
                    highest = max(highest, self.slot_manifest(name, slot).sequence)
            floors[name] = highest
        return floors

    def place_slot(self, name: str, staged: Path) -> str:
        """Move a verified, self-tested staging folder into the inactive slot; return the slot."""
        import shutil
        import tempfile

        active = self.active_slot(name)
        slot = "a" if active is None else SLOTS[1 - SLOTS.index(active)]
        target = self.slot_dir(name, slot)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            trash = Path(tempfile.mkdtemp(prefix="old-", dir=self.tmp_dir))
            os.replace(target, trash / slot)
            shutil.rmtree(trash)
        os.replace(staged, target)
        return slot

    def activate(self, name: str, slot: str) -> None:
        """Point ``current`` at ``slot`` in one atomic rename."""
        if not self.slot_dir(name, slot).is_dir():
            raise StoreError(f"slot {slot} of {name} is empty")
        atomic_symlink(f"slots/{slot}", self.model_dir(name) / "current")
