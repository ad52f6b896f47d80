"""runtime/inbox.py: the folder the agent installs from, driven poll by poll on real bundles."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest

from runtime.inbox import Inbox
from runtime.limits import InboxLimits
from runtime.store import Store


def tamper(bundle: Path, out: Path) -> Path:
    """A copy of ``bundle`` whose signed manifest claims another version: still a well-formed
    archive with intact payload digests, so only the signature check can refuse it."""
    data = bytearray(bundle.read_bytes())
    end = 512 + int(data[124:136].rstrip(b"\0 "), 8)  # the manifest is the first member
    at = data.index(b'"version":"1.0.0"', 512, end)
    data[at : at + 17] = b'"version":"1.0.9"'
    out.write_bytes(bytes(data))
    return out


@pytest.fixture
def inbox_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "inbox"
    folder.mkdir()
    return folder


@pytest.fixture
def events() -> list[tuple[str, dict[str, Any]]]:
    return []


@pytest.fixture
def inbox(device: Store, inbox_dir: Path, events) -> Inbox:
    return Inbox(device, inbox_dir, on_event=lambda kind, doc: events.append((kind, doc)))


def test_good_bundle_is_installed_and_moved(inbox, inbox_dir, device, build_bundle, events):
    bundle = build_bundle("1.0.0", 10)
    shutil.copy(bundle, inbox_dir / bundle.name)
    assert inbox.poll_once() == []  # seen once: not yet known to be complete
    [result] = inbox.poll_once()
    assert result.ok and result.file == bundle.name
    assert result.install["version"] == "1.0.0" and result.install["selftest"]["passed"]
    assert result.moved_to == inbox_dir / "installed" / bundle.name
    assert result.moved_to.read_bytes() == bundle.read_bytes()
    assert not (inbox_dir / bundle.name).exists()
    assert device.active_slot("iris") == "a"
    assert [kind for kind, _ in events] == ["install"]
    assert events[0][1]["file"] == bundle.name and events[0][1]["sequence"] == 10
    assert inbox.poll_once() == [] and inbox.poll_once() == []


def test_tampered_bundle_is_moved_to_failed_with_reason(
    inbox, inbox_dir, device, build_bundle, events
):
    bad = tamper(build_bundle("1.0.0", 10), inbox_dir / "iris-bad.eship")
    inbox.poll_once()
    [result] = inbox.poll_once()
    assert not result.ok
    assert (result.error, result.step, result.exit_code) == ("SignatureError", "signatures", 1)
    assert result.moved_to == inbox_dir / "failed" / bad.name
    reason = (inbox_dir / "failed" / "iris-bad.eship.reason.txt").read_text()
    assert "step: signatures" in reason and "error: SignatureError" in reason
    assert f"message: {result.message}" in reason
    assert device.active_slot("iris") is None
    assert events == [
        (
            "install-failed",
            {
                "source": "inbox",
                "file": bad.name,
                "error": "SignatureError",
                "step": "signatures",
                "message": result.message,
            },
        )
    ]
    assert inbox.poll_once() == [] and inbox.poll_once() == []  # never retried


def test_partial_and_hidden_files_are_ignored(inbox, inbox_dir, device, build_bundle):
    bundle = build_bundle("1.0.0", 10)
    shutil.copy(bundle, inbox_dir / f"{bundle.name}.part")
    shutil.copy(bundle, inbox_dir / f".{bundle.name}")
    shutil.copy(bundle, inbox_dir / "notes.txt")
    for _ in range(3):
        assert inbox.poll_once() == []
    assert device.active_slot("iris") is None
    assert sorted(p.name for p in inbox_dir.iterdir()) == sorted(
        [f"{bundle.name}.part", f".{bundle.name}", "notes.txt"]
    )


def test_a_growing_file_waits_until_it_stops_changing(inbox, inbox_dir, device, build_bundle):
    data = build_bundle("1.0.0", 10).read_bytes()
    target = inbox_dir / "iris.eship"
    assert inbox.poll_once() == []
    target.write_bytes(data[: len(data) // 2])
    assert inbox.poll_once() == []  # first sight
    with target.open("ab") as f:
        f.write(data[len(data) // 2 :])
    assert inbox.poll_once() == []  # it grew since the last poll: still being written
    assert target.exists() and device.active_slot("iris") is None
    [result] = inbox.poll_once()
    assert result.ok and device.active_slot("iris") == "a"


def test_a_rewritten_file_is_a_new_file(inbox, inbox_dir, build_bundle):
    target = inbox_dir / "iris.eship"
    target.write_bytes(build_bundle("1.0.0", 10).read_bytes())
    inbox.poll_once()
    replacement = inbox_dir / ".swap"
    replacement.write_bytes(target.read_bytes())
    os.replace(replacement, target)  # same size, but another file (inode)
    assert inbox.poll_once() == []
    assert len(inbox.poll_once()) == 1


def test_at_most_max_files_per_poll_oldest_first(device, inbox_dir, build_bundle):
    inbox = Inbox(device, inbox_dir, limits=InboxLimits(max_files_per_poll=1))
    first = build_bundle("1.0.0", 10)
    second = build_bundle("1.1.0", 11)
    shutil.copy(second, inbox_dir / second.name)
    shutil.copy(first, inbox_dir / first.name)
    os.utime(inbox_dir / second.name, ns=(2_000_000_000_000_000_000,) * 2)
    os.utime(inbox_dir / first.name, ns=(1_000_000_000_000_000_000,) * 2)
    inbox.poll_once()
    assert [r.install["version"] for r in inbox.poll_once()] == ["1.0.0"]
    assert [r.install["version"] for r in inbox.poll_once()] == ["1.1.0"]
    assert device.slot_manifest("iris", device.active_slot("iris")).version == "1.1.0"


@pytest.mark.parametrize(
    ("make", "error", "step"),
    [
        pytest.param(
            lambda folder, bundle: (folder / "big.eship").write_bytes(bundle.read_bytes()),
            "BundleSizeError",
            "size-limits",
            id="over-the-size-limit",
        ),
        pytest.param(
            lambda folder, bundle: (folder / "link.eship").symlink_to(bundle),
            "BundleFormatError",
            "archive",
            id="symlink",
        ),
        pytest.param(
            lambda folder, bundle: os.mkfifo(folder / "fifo.eship"),
            "BundleFormatError",
            "archive",
            id="fifo",
        ),
        pytest.param(
            lambda folder, bundle: (folder / "junk.eship").write_bytes(b"\0" * 10_000),
            "BundleFormatError",
            "archive",
            id="not-a-bundle",
        ),
        pytest.param(
            lambda folder, bundle: (folder / "empty.eship").write_bytes(b""),
            "BundleFormatError",
            "archive",
            id="empty",
        ),
    ],
)
def test_hostile_files_are_refused_and_set_aside(
    device, inbox_dir, build_bundle, make, error, step
):
    bundle = build_bundle("1.0.0", 10)
    limits = InboxLimits(max_bundle_bytes=bundle.stat().st_size - 1)
    inbox = Inbox(device, inbox_dir, limits=limits)
    make(inbox_dir, bundle)
    inbox.poll_once()
    [result] = inbox.poll_once()
    assert (result.error, result.step) == (error, step), result.message
    assert result.moved_to is not None and result.moved_to.parent == inbox_dir / "failed"
    assert Path(f"{result.moved_to}.reason.txt").is_file()
    assert device.active_slot("iris") is None
    assert bundle.is_file()  # a link was moved, never its target


def test_a_missing_folder_is_an_empty_poll(device, tmp_path):
    inbox = Inbox(device, tmp_path / "not-mounted")
    assert inbox.poll_once() == [] and inbox.poll_once() == []
    assert not (tmp_path / "not-mounted").exists()


def test_an_uninitialized_device_refuses_with_a_reason(tmp_path, inbox_dir, build_bundle):
    inbox = Inbox(Store(tmp_path / "blank"), inbox_dir)
    bundle = build_bundle("1.0.0", 10)
    shutil.copy(bundle, inbox_dir / bundle.name)
    inbox.poll_once()
    [result] = inbox.poll_once()
    assert result.error in ("TrustPolicyError", "StoreError") and result.exit_code in (3, 6)
    assert (inbox_dir / "failed" / f"{bundle.name}.reason.txt").is_file()


def test_run_installs_until_stopped(inbox, inbox_dir, device, build_bundle, events):
    bundle = build_bundle("1.0.0", 10)
    shutil.copy(bundle, inbox_dir / bundle.name)
    stop = threading.Event()
    installed = threading.Event()
    inbox.on_event = lambda kind, doc: (events.append((kind, doc)), installed.set())
    worker = threading.Thread(target=inbox.run, args=(stop, 0.05))
    worker.start()
    try:
        assert installed.wait(120)
    finally:
        stop.set()
        worker.join(60)
    assert not worker.is_alive()
    assert [kind for kind, _ in events] == ["install"]
    assert device.active_slot("iris") == "a"
    assert (inbox_dir / "installed" / bundle.name).is_file()
