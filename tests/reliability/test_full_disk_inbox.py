"""A full inbox: ``edgeship push --to DIR`` onto a full card, and
a device inbox whose disk is full when it moves a bundle it has handled. Each gives one clear
error or log line, leaves the right model active, corrupts nothing and does not loop.

The disks are small tmpfs mounts made for the test, filled with a file (no bytes left) and, where
a folder must not be creatable, with empty files (no inodes left); one push runs under
``RLIMIT_FSIZE`` instead.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator, Optional

import pytest

from runtime.fsck import check_store
from runtime.inbox import FAILED, INSTALLED, REASON_SUFFIX, Inbox, InboxResult
from runtime.install import install_bundle
from runtime.store import Store
from runtime.trust import TrustPolicy
from tests.conftest import BuildBundle, Keys
from tests.reliability.disk import KiB, file_size_limit, leave_free, tmpfs, use_up_inodes

EDGESHIP = Path(sys.executable).parent / "edgeship"
FS_SIZE = 1024 * KiB
INODES = 64
"""Files and folders the inbox's tmpfs may hold, so that its inodes can be used up quickly."""


@pytest.fixture
def fs(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "fs", FS_SIZE, nr_inodes=INODES) as mount_point:
        yield mount_point


@pytest.fixture(scope="module")
def bundles(build_bundle: BuildBundle) -> dict[str, Path]:
    return {
        "1.0.0": build_bundle("1.0.0", 10),
        "1.1.0": build_bundle("1.1.0", 11),
        "stranger": build_bundle("1.2.0", 12, key_names=("stranger",)),
    }


class Fillers:
    """What fills a file system: one big file (bytes) and empty files (inodes)."""

    def __init__(self, fs: Path) -> None:
        self.fs = fs
        self.made: list[Path] = []

    def fill(self, inodes: bool = False, free: int = 0) -> None:
        leave_free(self.fs, self.fs / "filler", free)
        self.made.append(self.fs / "filler")
        if inodes:
            self.made.extend(use_up_inodes(self.fs))

    def remove(self) -> None:
        for path in self.made:
            path.unlink(missing_ok=True)
        self.made = []


def listing(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


# --- edgeship push --to DIR -------------------------------------------------------------------


def push(
    bundle: Path, to: Path, preexec: Optional[Callable[[], None]] = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(EDGESHIP), "push", str(bundle), "--to", str(to)],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=preexec,
    )


@pytest.mark.parametrize("free", [0, 4 * KiB, 8 * KiB], ids=["no-room", "4KiB", "8KiB"])
def test_push_onto_a_full_card(fs: Path, bundles: dict[str, Path], free: int) -> None:
    bundle = bundles["1.0.0"]
    assert bundle.stat().st_size > free + 4 * KiB  # the copy stops before its end
    card = fs / "inbox"
    card.mkdir()
    fillers = Fillers(fs)
    fillers.fill(free=free)
    done = push(bundle, card)
    assert done.returncode == 7, (done.returncode, done.stderr)
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line == (f"edgeship: error: cannot write {card / bundle.name}: No space left on device")
    assert listing(card) == set()  # no .part, no half-written bundle
    fillers.remove()
    assert push(bundle, card).returncode == 0
    assert listing(card) == {bundle.name}
    assert (card / bundle.name).read_bytes() == bundle.read_bytes()


def test_push_under_a_file_size_limit(tmp_path: Path, bundles: dict[str, Path]) -> None:
    bundle = bundles["1.0.0"]
    card = tmp_path / "card"
    card.mkdir()
    done = push(bundle, card, preexec=file_size_limit(8 * KiB))
    assert done.returncode == 7, (done.returncode, done.stderr)
    [line] = done.stderr.splitlines()
    assert line == f"edgeship: error: cannot write {card / bundle.name}: File too large"
    assert listing(card) == set()


# --- the device inbox -------------------------------------------------------------------------


@pytest.fixture
def device_store(tmp_path: Path, keys: Keys, bundles: dict[str, Path]) -> Store:
    """A device store on the ordinary disk with iris 1.0.0 active."""
    store = Store(tmp_path / "device")
    store.save_policy(TrustPolicy.create([(keys.public("release"), "release")]))
    install_bundle(store, bundles["1.0.0"])
    return store


def active_version(store: Store) -> str:
    slot = store.active_slot("iris")
    assert slot is not None
    return store.slot_manifest("iris", slot).version


def taken(inbox: Inbox) -> list[InboxResult]:
    """Poll until the inbox takes something (a file is taken once it was seen unchanged)."""
    first = inbox.poll_once()
    return first or inbox.poll_once()


def moves_refused(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "edgeship.inbox" and r.levelno >= logging.WARNING
    ]


def test_installed_bundle_that_cannot_be_moved(
    fs: Path, device_store: Store, bundles: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """The disk of the inbox has no room for ``installed/``: the new version is active, the
    bundle stays in the inbox with one log line, and is not installed again poll after poll."""
    inbox_dir = fs / "inbox"
    inbox_dir.mkdir()
    bundle = shutil.copy(bundles["1.1.0"], inbox_dir)
    fillers = Fillers(fs)
    fillers.fill(inodes=True)
    inbox = Inbox(device_store, inbox_dir)
    [result] = taken(inbox)
    assert result.ok and result.moved_to is None
    assert result.install is not None and result.install["version"] == "1.1.0"
    assert active_version(device_store) == "1.1.0"
    [line] = moves_refused(caplog)
    assert line.startswith(f"inbox: cannot move {bundle} to installed/ (")
    assert "No space left on device" in line
    assert line.endswith("it stays and is not taken again until it changes or the agent restarts")
    for _ in range(3):
        assert inbox.poll_once() == []
    assert listing(inbox_dir) == {bundles["1.1.0"].name}
    assert len(moves_refused(caplog)) == 1
    # with room again, the next agent finds the version already active and moves the file
    fillers.remove()
    [again] = taken(Inbox(device_store, inbox_dir))
    assert again.ok and again.install is not None and again.install["unchanged"]
    assert again.moved_to == inbox_dir / INSTALLED / bundles["1.1.0"].name
    assert check_store(device_store).ok


def test_refused_bundle_that_cannot_be_moved(
    fs: Path, device_store: Store, bundles: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """A bundle signed by an unknown key, in an inbox with no room for ``failed/``: refused, the
    old version stays active, and it is not tried again."""
    inbox_dir = fs / "inbox"
    inbox_dir.mkdir()
    shutil.copy(bundles["stranger"], inbox_dir)
    Fillers(fs).fill(inodes=True)
    inbox = Inbox(device_store, inbox_dir)
    [result] = taken(inbox)
    assert not result.ok and result.moved_to is None
    assert result.error == "SignatureError" and result.step == "signatures"
    assert active_version(device_store) == "1.0.0"
    [line] = moves_refused(caplog)
    assert f"to {FAILED}/ (" in line and "No space left on device" in line
    for _ in range(3):
        assert inbox.poll_once() == []
    assert listing(inbox_dir) == {bundles["stranger"].name}
    assert check_store(device_store).ok


def test_install_and_reason_on_a_full_disk(
    fs: Path, keys: Keys, bundles: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """Device home and inbox on one full disk: the install fails for lack of room and the old
    version stays active; the bundle goes to ``failed/``, but its reason cannot be written:
    one log line says so, no temporary file is left, and the bundle is not tried again."""
    store = Store(fs / "device")
    store.save_policy(TrustPolicy.create([(keys.public("release"), "release")]))
    install_bundle(store, bundles["1.0.0"])
    inbox_dir = fs / "inbox"
    inbox_dir.mkdir()
    name = bundles["1.1.0"].name
    shutil.copy(bundles["1.1.0"], inbox_dir)
    fillers = Fillers(fs)
    fillers.fill()
    inbox = Inbox(store, inbox_dir)
    [result] = taken(inbox)
    assert not result.ok and result.error == "StoreError"
    assert "No space left on device" in (result.message or "")
    assert result.moved_to == inbox_dir / FAILED / name
    assert listing(inbox_dir / FAILED) == {name}  # no reason, and no temporary file
    [line] = moves_refused(caplog)
    assert line.startswith(f"inbox: {name} refused (cannot ")
    assert f"and its {REASON_SUFFIX} cannot be written: " in line
    assert "No space left on device" in line
    for _ in range(3):
        assert inbox.poll_once() == []
    assert active_version(store) == "1.0.0"
    assert check_store(store).ok
    # with room again, the bundle put back into the inbox installs
    fillers.remove()
    (inbox_dir / FAILED / name).rename(inbox_dir / name)
    [again] = taken(inbox)
    assert again.ok and again.moved_to == inbox_dir / INSTALLED / name
    assert active_version(store) == "1.1.0"
    assert check_store(store).ok
