"""Store consistency check: is the device store what the install protocol promises?

The store layout and its invariants are those of ``runtime.store`` and docs/adr/0003:

- every ``models/NAME/current`` is a link to ``slots/a`` or ``slots/b``, and that slot exists;
- every slot holds a complete bundle: ``manifest.json``, ``signatures.json`` and exactly the
  payload files its manifest lists, with the listed sizes and SHA-256 digests;
- the active slot's manifest is signed well enough for the current trust policy;
- ``state.json`` parses and its floor is at least the sequence of every slot.

:func:`check_store` reads and never writes; it separates three kinds of findings. *Problems* are
damage (the command exits 6). *Warnings* are states the protocol allows but a person should know
about: the active version has expired, the previous version would no longer pass a rollback's
checks, a model's first install was interrupted before anything became active. *Leftovers* are
what an interrupted operation leaves behind (staging folders, temporary links and state files):
they are not damage, and the next store operation (install, rollback, or :func:`clear_leftovers`)
removes them.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from runtime.clock import DEFAULT_CLOCK_LIMITS, ClockLimits
from runtime.errors import (
    BundleError,
    BundleFormatError,
    BundleSizeError,
    EdgeshipError,
    PayloadError,
    TrustPolicyError,
)
from runtime.install import check_slot_files
from runtime.limits import DEFAULT_BUNDLE_LIMITS, BundleLimits
from runtime.manifest import NAME_RE, Manifest, format_time
from runtime.signing import Envelope
from runtime.store import SLOTS, Store
from runtime.trust import TrustPolicy
from runtime.verify import MANIFEST_MEMBER, SIGNATURES_MEMBER, parse_manifest

MODEL_ENTRIES = frozenset({"current", "slots", "state.json"})


@dataclass(frozen=True)
class Finding:
    """One thing the check found, at ``path``."""

    path: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "message": self.message}


@dataclass(frozen=True)
class ModelCheck:
    """What the check saw of one model: its active slot and version, and its floor."""

    name: str
    active_slot: Optional[str]
    version: Optional[str]
    sequence: Optional[int]
    floor: Optional[int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "active_slot": self.active_slot,
            "version": self.version,
            "sequence": self.sequence,
            "floor": self.floor,
        }


@dataclass(frozen=True)
class StoreCheck:
    """The result of :func:`check_store`. ``ok`` means no problems (warnings and leftovers
    allowed)."""

    home: str
    problems: tuple[Finding, ...]
    warnings: tuple[Finding, ...]
    leftovers: tuple[str, ...]
    models: tuple[ModelCheck, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "home": self.home,
            "ok": self.ok,
            "problems": [p.to_dict() for p in self.problems],
            "warnings": [w.to_dict() for w in self.warnings],
            "leftovers": list(self.leftovers),
            "models": [m.to_dict() for m in self.models],
        }


def leftovers(store: Store) -> list[Path]:
    """What interrupted operations left behind: the paths ``Store.lock`` clears on entry."""
    return store.leftovers()


def clear_leftovers(store: Store) -> tuple[str, ...]:
    """Remove what interrupted operations left behind, exactly as the next install or rollback
    would (by taking the store lock); returns what was there. Raises TrustPolicyError when the
    store was never initialized."""
    before = tuple(str(p) for p in leftovers(store))
    with store.lock():
        pass
    return before


def check_store(
    store: Store,
    now: Optional[datetime] = None,
    *,
    limits: BundleLimits = DEFAULT_BUNDLE_LIMITS,
    clock: ClockLimits = DEFAULT_CLOCK_LIMITS,
) -> StoreCheck:
    """Check every model in ``store`` against the store's invariants; never writes.

    ``now`` (default: the system clock) is only used to warn about expired versions. Raises
    nothing for a damaged store: damage is reported as problems.
    """
    run = _Check(store, now or datetime.now(timezone.utc), limits, clock)
    run.all()
    return StoreCheck(
        str(store.home),
        tuple(run.problems),
        tuple(run.warnings),
        tuple(str(p) for p in leftovers(store)) if store.home.is_dir() else (),
        tuple(run.models),
    )


class _Check:
    """One run of the check, collecting findings."""

    def __init__(
        self, store: Store, now: datetime, limits: BundleLimits, clock: ClockLimits
    ) -> None:
        self.store = store
        self.now = now
        self.limits = limits
        self.clock = clock
        self.problems: list[Finding] = []
        self.warnings: list[Finding] = []
        self.models: list[ModelCheck] = []
        self.policy: Optional[TrustPolicy] = None

    def problem(self, path: Path, message: str) -> None:
        self.problems.append(Finding(str(path), message))

    def warning(self, path: Path, message: str) -> None:
        self.warnings.append(Finding(str(path), message))

    def all(self) -> None:
        store = self.store
        if not store.home.is_dir():
            self.problem(store.home, "no device store here")
            return
        try:
            self.policy = store.policy()
        except TrustPolicyError as e:
            self.problem(store.trust_path, f"{e} (signatures cannot be checked)")
        if not store.models_dir.exists():
            return
        if not _is_dir(store.models_dir):
            self.problem(store.models_dir, "is not a folder")
            return
        for entry in sorted(store.models_dir.iterdir()):
            if not NAME_RE.match(entry.name) or not _is_dir(entry):
                self.problem(entry, "not part of the store (not a model folder)")
                continue
            self.model(entry)

    def model(self, folder: Path) -> None:
        name = folder.name
        for entry in sorted(folder.iterdir()):
            if entry.name not in MODEL_ENTRIES and not _is_leftover_name(entry.name):
                self.problem(entry, "not part of the store")
        slots = self.slots(folder)
        active = self.active(folder, slots)
        manifests: dict[str, Manifest] = {}
        for slot in slots:
            manifest = self.slot(name, folder / "slots" / slot, is_active=slot == active)
            if manifest is not None:
                manifests[slot] = manifest
        floor = self.floor(folder, manifests, active)
        current = manifests.get(active) if active else None
        self.models.append(
            ModelCheck(
                name,
                active,
                current.version if current else None,
                current.sequence if current else None,
                floor,
            )
        )

    def slots(self, folder: Path) -> list[str]:
        slots_dir = folder / "slots"
        if not slots_dir.exists():
            return []
        if not _is_dir(slots_dir):
            self.problem(slots_dir, "is not a folder")
            return []
        found = []
        for entry in sorted(slots_dir.iterdir()):
            if entry.name in SLOTS and _is_dir(entry):
                found.append(entry.name)
            else:
                self.problem(entry, "not part of the store (slots are folders a and b)")
        return found

    def active(self, folder: Path, slots: list[str]) -> Optional[str]:
        """The slot ``current`` names, or None (reported) when it names none."""
        link = folder / "current"
        if not os.path.lexists(link):
            self.warning(
                folder,
                "no version is active (its first install was interrupted before the swap)",
            )
            return None
        if not link.is_symlink():
            self.problem(link, "is not a symbolic link")
            return None
        target = os.readlink(link)
        slot = target.rsplit("/", 1)[-1]
        if target != f"slots/{slot}" or slot not in SLOTS:
            self.problem(link, f"points at {target!r}, not at slots/a or slots/b")
            return None
        if slot not in slots:
            self.problem(link, f"points at slots/{slot}, which does not exist")
            return None
        return slot

    def slot(self, name: str, folder: Path, *, is_active: bool) -> Optional[Manifest]:
        """Check one slot; returns its manifest when it can be read."""
        try:
            manifest_bytes = _read_bounded(folder / MANIFEST_MEMBER, self.limits.max_manifest_bytes)
            envelope_bytes = _read_bounded(
                folder / SIGNATURES_MEMBER, self.limits.max_signatures_bytes
            )
            manifest = parse_manifest(manifest_bytes)
        except (OSError, EdgeshipError) as e:
            self.problem(folder, f"not a complete bundle: {e}")
            return None
        if manifest.name != name:
            self.problem(folder / MANIFEST_MEMBER, f"is the manifest of {manifest.name!r}")
        if self.policy is not None:
            try:
                envelope = Envelope.from_bytes(envelope_bytes, self.limits)
                self.policy.check_signatures(manifest_bytes, envelope)
            except BundleError as e:
                if is_active:
                    self.problem(folder / SIGNATURES_MEMBER, f"{e.step}: {e}")
                else:
                    self.warning(
                        folder / SIGNATURES_MEMBER,
                        f"a rollback to {manifest.version} would be refused: {e.step}: {e}",
                    )
        expires = manifest.expires
        if expires is not None and self.now >= expires + self.clock.max_skew:
            role = "the active" if is_active else "the previous"
            self.warning(
                folder / MANIFEST_MEMBER,
                f"{role} version {manifest.version} expired at {format_time(expires)}",
            )
        self.files(folder, manifest)
        return manifest

    def files(self, folder: Path, manifest: Manifest) -> None:
        """Exactly the listed files, regular, of the listed sizes and digests."""
        listed = {f"payload/{f.path}" for f in manifest.files}
        expected = {MANIFEST_MEMBER, SIGNATURES_MEMBER} | listed
        odd = set()  # not regular files: never opened, so hashing never follows or blocks
        for path in sorted(folder.rglob("*")):
            relative = path.relative_to(folder).as_posix()
            mode = path.lstat().st_mode
            if stat.S_ISDIR(mode):
                continue
            if not stat.S_ISREG(mode):
                self.problem(path, "is not a regular file")
                odd.add(relative)
            elif relative not in expected:
                self.problem(path, "is not listed in the manifest")
        hashable = not odd
        for entry in manifest.files:
            path = folder / "payload" / entry.path
            if f"payload/{entry.path}" in odd:
                continue
            try:
                size = path.lstat().st_size
            except FileNotFoundError:
                self.problem(path, "is missing")
                hashable = False
                continue
            if size != entry.size:
                self.problem(path, f"is {size} bytes, the manifest says {entry.size}")
                hashable = False
        if hashable:
            try:
                check_slot_files(folder, manifest)
            except (PayloadError, OSError) as e:
                self.problem(folder / "payload", str(e))

    def floor(
        self, folder: Path, manifests: dict[str, Manifest], active: Optional[str]
    ) -> Optional[int]:
        path = folder / "state.json"
        if not path.exists():
            if active is not None:
                self.problem(path, "is missing: the anti-rollback floor is not recorded")
            return None
        try:
            state = self.store.state(folder.name)
        except EdgeshipError as e:
            self.problem(path, str(e))
            return None
        for slot, manifest in sorted(manifests.items()):
            if state.highest_sequence < manifest.sequence:
                self.problem(
                    path,
                    f"floor {state.highest_sequence} is below the sequence {manifest.sequence} "
                    f"of slot {slot}",
                )
        return state.highest_sequence


def _is_dir(path: Path) -> bool:
    """A real folder, not a link to one."""
    return stat.S_ISDIR(path.lstat().st_mode)


def _is_leftover_name(name: str) -> bool:
    return name == ".current.tmp" or (name.startswith(".state.json.") and name.endswith(".tmp"))


def _read_bounded(path: Path, limit: int) -> bytes:
    """Read a regular file of at most ``limit`` bytes; never follows a link or blocks on a FIFO."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise BundleFormatError(f"{path.name} is not a regular file")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise BundleSizeError(f"{path.name} is larger than {limit} bytes")
    return data
