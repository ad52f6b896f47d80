"""Installing and rolling back bundles: the device-side workflow over store, verifier and
self-test.

Install: verify while streaming into a staging folder → fsync → self-test → raise the floor →
move into the inactive slot → swap ``current`` → record history. Any failure before the swap leaves
the active model as it was; the staging folder is removed on the next store operation if a crash
left it behind.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import devices
from runtime.bundle import Progress, read_bundle
from runtime.clock import trusted_time
from runtime.errors import PayloadError, StoreError
from runtime.fsutil import out_of_space
from runtime.manifest import Manifest, format_time
from runtime.selftest import SelfTestReport, run_selftest
from runtime.store import SLOTS, Store
from runtime.verify import MANIFEST_MEMBER, SIGNATURES_MEMBER, BundleVerifier, DeviceIdentity


@dataclass(frozen=True)
class InstallResult:
    manifest: Manifest
    slot: str
    previous_slot: Optional[str]
    selftest: Optional[SelfTestReport]
    signers: frozenset[str]
    unchanged: bool = False

    def to_dict(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "name": m.name,
            "version": m.version,
            "sequence": m.sequence,
            "profile": m.target.profile,
            "slot": self.slot,
            "previous_slot": self.previous_slot,
            "unchanged": self.unchanged,
            "signers": sorted(self.signers),
            "selftest": self.selftest.to_dict() if self.selftest else None,
        }


def this_device(allow_any_target: bool = False) -> DeviceIdentity:
    return DeviceIdentity(arch=devices.host_arch(), allow_any_target=allow_any_target)


def _now(now: Optional[datetime]) -> datetime:
    return now if now is not None else datetime.now(timezone.utc)


def device_time(store: Store, clock: Optional[datetime] = None) -> datetime:
    """The time verification runs at: the device clock (``clock``, default now), but never
    earlier than the newest ``created`` of a bundle in the store (``runtime.clock``)."""
    known = [
        store.slot_manifest(name, slot).created
        for name in store.names()
        for slot in SLOTS
        if store.slot_dir(name, slot).is_dir()
    ]
    return trusted_time(_now(clock), known)


def install_bundle(
    store: Store,
    bundle: Path,
    *,
    allow_any_target: bool = False,
    now: Optional[datetime] = None,
    progress: Optional[Progress] = None,
) -> InstallResult:
    """Verify, self-test and activate ``bundle``. Raises a BundleError (rejected), SelfTestError
    (kept the old model), TrustPolicyError (device not initialized), or StoreError (store
    damaged, or the disk full: the old model stays active).

    ``now`` is the device clock; verification runs at :func:`device_time`."""
    with out_of_space(f"cannot install {bundle}"), store.lock():
        policy = store.policy()
        verifier = BundleVerifier(
            policy,
            this_device(allow_any_target),
            now=device_time(store, now),
            floors=store.floors(),
        )
        staged = store.staging_dir()
        result = read_bundle(bundle, verifier, dest=staged, progress=progress)
        manifest = result.verified.manifest
        name = manifest.name
        active = store.active_slot(name)
        if active is not None and _same_manifest(store.slot_dir(name, active), staged):
            shutil.rmtree(staged)
            return InstallResult(
                manifest,
                active,
                store.other_slot(name),
                None,
                result.verified.signers,
                unchanged=True,
            )
        _, report = run_selftest(staged)
        state = store.state(name)
        store.model_dir(name).mkdir(parents=True, exist_ok=True)
        state.highest_sequence = max(state.highest_sequence, manifest.sequence)
        store.save_state(name, state)  # the floor rises before the swap
        slot = store.place_slot(name, staged)
        store.activate(name, slot)
        state.record(
            {
                "at": format_time(_now(None)),
                "action": "install",
                "slot": slot,
                "version": manifest.version,
                "sequence": manifest.sequence,
                "selftest": report.to_dict(),
            }
        )
        store.save_state(name, state)
        return InstallResult(manifest, slot, active, report, result.verified.signers)


def _same_manifest(a: Path, b: Path) -> bool:
    digest = [hashlib.sha256((p / MANIFEST_MEMBER).read_bytes()).digest() for p in (a, b)]
    return digest[0] == digest[1]


@dataclass(frozen=True)
class RollbackResult:
    name: str
    from_version: str
    to_version: str
    slot: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "from": self.from_version,
            "to": self.to_version,
            "slot": self.slot,
        }


def rollback(store: Store, name: str, now: Optional[datetime] = None) -> RollbackResult:
    """Make the previous (older) version active again.

    The previous slot is checked as if it were being installed, except for the anti-rollback
    floor: its signatures must still satisfy the current trust policy (a since-revoked key is
    refused), it must not have expired, and its files must match its manifest. The floor is not
    lowered: rollback is an explicit act on the device. Raises StoreError when there is nothing
    older to go back to, a BundleError when the previous version is no longer acceptable.
    """
    with out_of_space(f"cannot roll {name} back"), store.lock():
        active = store.active_slot(name)
        if active is None:
            raise StoreError(f"no model called {name!r} is installed")
        other = store.other_slot(name)
        current = store.slot_manifest(name, active)
        previous = store.slot_manifest(name, other) if other else None
        if other is None or previous is None:
            raise StoreError(f"{name} has no previous version to roll back to")
        if previous.sequence > current.sequence:
            raise StoreError(
                f"{name}: the other slot holds the newer {previous.version}; nothing older to "
                f"roll back to (install its bundle again to go forward)"
            )
        folder = store.slot_dir(name, other)
        verifier = BundleVerifier(store.policy(), this_device(True), now=device_time(store, now))
        verifier.check_manifest(
            (folder / MANIFEST_MEMBER).read_bytes(), (folder / SIGNATURES_MEMBER).read_bytes()
        )
        check_slot_files(folder, previous)
        store.activate(name, other)
        state = store.state(name)
        state.record(
            {
                "at": format_time(_now(None)),
                "action": "rollback",
                "slot": other,
                "version": previous.version,
                "sequence": previous.sequence,
            }
        )
        store.save_state(name, state)
        return RollbackResult(name, current.version, previous.version, other)


def check_slot_files(folder: Path, manifest: Manifest) -> None:
    """Re-hash a slot's payload against its manifest; raises PayloadError on any difference."""
    for entry in manifest.files:
        path = folder / "payload" / entry.path
        digest = hashlib.sha256()
        try:
            with path.open("rb") as f:
                while chunk := f.read(1024 * 1024):
                    digest.update(chunk)
        except FileNotFoundError as e:
            raise PayloadError(f"{path} is missing") from e
        if digest.hexdigest() != entry.sha256:
            raise PayloadError(f"{path} does not match its manifest")
