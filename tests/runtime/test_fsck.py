"""The store consistency check (runtime/fsck.py) and ``edgeship-device check``: a table of real
damage done to a real store, the states the protocol allows, and leftovers."""

from __future__ import annotations

import json
import os
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

import pytest
from click.testing import CliRunner

from runtime.cli import main
from runtime.fsck import check_store, clear_leftovers, leftovers
from runtime.install import install_bundle
from runtime.signing import key_id
from runtime.store import Store
from runtime.trust import TrustPolicy
from runtime.verify import MANIFEST_MEMBER, SIGNATURES_MEMBER
from tests.runtime import hostile as h


@pytest.fixture(scope="module")
def bundles(build_bundle) -> dict[str, Path]:
    return {
        "v1": build_bundle("1.0.0", 10),
        "v2": build_bundle("1.1.0", 11),
        "stranger": build_bundle("1.1.0", 11, key_names=("stranger",)),
        "v1-second": build_bundle("1.0.0", 10, key_names=("second",)),
    }


@pytest.fixture
def two_versions(device: Store, bundles) -> Store:
    """iris 1.0.0 in slot a, 1.1.0 in slot b (active)."""
    install_bundle(device, bundles["v1"])
    install_bundle(device, bundles["v2"])
    return device


def model(store: Store) -> Path:
    return store.model_dir("iris")


def active(store: Store) -> Path:
    return model(store) / "slots" / "b"


def relink(store: Store, target: str) -> None:
    link = model(store) / "current"
    link.unlink()
    link.symlink_to(target)


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))


def signed_by_stranger(store: Store, bundles: dict[str, Path]) -> None:
    members = h.unpack(bundles["stranger"])
    (active(store) / SIGNATURES_MEMBER).write_bytes(h.get(members, SIGNATURES_MEMBER).data)


def state(doc: dict) -> Callable[[Store], None]:
    return lambda s: (model(s) / "state.json").write_text(json.dumps(doc))


# (id, damage, where the problem is reported: a path relative to the home, what it says)
DAMAGE = [
    ("link-to-nowhere", lambda s, b: relink(s, "slots/c"), "models/iris/current", "not at slots"),
    ("link-escapes", lambda s, b: relink(s, "../../.."), "models/iris/current", "not at slots"),
    (
        "link-to-missing-slot",
        lambda s, b: shutil.rmtree(model(s) / "slots" / "a") or relink(s, "slots/a"),
        "models/iris/current",
        "does not exist",
    ),
    (
        "link-is-a-folder",
        lambda s, b: (model(s) / "current").unlink() or (model(s) / "current").mkdir(),
        "models/iris/current",
        "not a symbolic link",
    ),
    (
        "payload-byte-flipped",
        lambda s, b: flip_last_byte(active(s) / "payload" / "model.onnx"),
        "models/iris/slots/b/payload",
        "does not match",
    ),
    (
        "payload-truncated",
        lambda s, b: os.truncate(active(s) / "payload" / "model.onnx", 10),
        "models/iris/slots/b/payload/model.onnx",
        "is 10 bytes",
    ),
    (
        "payload-missing",
        lambda s, b: (active(s) / "payload" / "selftest.npz").unlink(),
        "models/iris/slots/b/payload/selftest.npz",
        "missing",
    ),
    (
        "payload-extra-file",
        lambda s, b: (active(s) / "payload" / "extra.bin").write_bytes(b"x"),
        "models/iris/slots/b/payload/extra.bin",
        "not listed",
    ),
    (
        "payload-is-a-link",
        lambda s, b: (
            (active(s) / "payload" / "model.onnx").unlink()
            or (active(s) / "payload" / "model.onnx").symlink_to("/etc/hostname")
        ),
        "models/iris/slots/b/payload/model.onnx",
        "not a regular file",
    ),
    (
        "payload-is-a-fifo",
        lambda s, b: (
            (active(s) / "payload" / "model.onnx").unlink()
            or os.mkfifo(active(s) / "payload" / "model.onnx")
        ),
        "models/iris/slots/b/payload/model.onnx",
        "not a regular file",
    ),
    (
        "manifest-missing",
        lambda s, b: (active(s) / MANIFEST_MEMBER).unlink(),
        "models/iris/slots/b",
        "not a complete bundle",
    ),
    (
        "manifest-edited",
        lambda s, b: (active(s) / MANIFEST_MEMBER).write_bytes(
            (active(s) / MANIFEST_MEMBER).read_bytes().replace(b'"1.1.0"', b'"1.1.1"')
        ),
        "models/iris/slots/b/signatures.json",
        "signatures:",
    ),
    (
        "signed-by-an-untrusted-key",
        signed_by_stranger,
        "models/iris/slots/b/signatures.json",
        "untrusted",
    ),
    (
        "state-not-json",
        lambda s, b: (model(s) / "state.json").write_text("{"),
        "models/iris/state.json",
        "not JSON",
    ),
    (
        "state-malformed",
        lambda s, b: state({"highest_sequence": "11"})(s),
        "models/iris/state.json",
        "malformed",
    ),
    (
        "floor-below-the-active-sequence",
        lambda s, b: state({"highest_sequence": 10, "history": []})(s),
        "models/iris/state.json",
        "below the sequence 11",
    ),
    (
        "state-missing",
        lambda s, b: (model(s) / "state.json").unlink(),
        "models/iris/state.json",
        "missing",
    ),
    (
        "stray-file-in-models",
        lambda s, b: (s.models_dir / "notes.txt").write_text("x"),
        "models/notes.txt",
        "not part of the store",
    ),
    (
        "stray-slot",
        lambda s, b: (model(s) / "slots" / "c").mkdir(),
        "models/iris/slots/c",
        "slots are folders a and b",
    ),
    ("trust-policy-missing", lambda s, b: s.trust_path.unlink(), "trust.toml", "no trust policy"),
]


def test_a_healthy_store_passes(two_versions):
    result = check_store(two_versions)
    assert result.ok, result.problems
    assert (result.problems, result.warnings, result.leftovers) == ((), (), ())
    [m] = result.models
    assert (m.name, m.active_slot, m.version, m.sequence, m.floor) == ("iris", "b", "1.1.0", 11, 11)


@pytest.mark.parametrize(
    ("damage", "where", "says"), [d[1:] for d in DAMAGE], ids=[d[0] for d in DAMAGE]
)
def test_damage_is_found_and_named(two_versions, bundles, damage, where, says):
    damage(two_versions, bundles)
    result = check_store(two_versions)
    assert not result.ok
    found = [p.message for p in result.problems if p.path == str(two_versions.home / where)]
    assert len(found) == 1, result.problems
    assert says in found[0]


def test_leftovers_are_not_damage_and_the_next_operation_clears_them(two_versions):
    staged = two_versions.staging_dir()
    (staged / "payload").mkdir()
    (staged / "payload" / "model.onnx").write_bytes(b"half")
    (model(two_versions) / ".current.tmp").symlink_to("slots/a")
    (model(two_versions) / ".state.json.x1.tmp").write_text("{")
    (two_versions.home / ".trust.toml.x2.tmp").write_text("")
    result = check_store(two_versions)
    assert result.ok, result.problems
    assert len(result.leftovers) == 4
    assert clear_leftovers(two_versions) == result.leftovers
    assert check_store(two_versions).leftovers == ()
    # what the check calls leftovers is exactly what the store lock removes
    (model(two_versions) / ".current.tmp").symlink_to("slots/a")
    two_versions.staging_dir()
    assert len(leftovers(two_versions)) == 2
    with two_versions.lock():
        assert leftovers(two_versions) == []


def test_an_interrupted_first_install_is_a_warning(device, bundles):
    install_bundle(device, bundles["v1"])
    (model(device) / "current").unlink()
    result = check_store(device)
    assert result.ok
    assert [w.message for w in result.warnings] == [
        "no version is active (its first install was interrupted before the swap)"
    ]
    assert result.models[0].active_slot is None


def test_a_previous_version_signed_by_a_revoked_key_is_a_warning(device, bundles, keys):
    both = [(keys.public("release"), "release"), (keys.public("second"), "second")]
    device.save_policy(TrustPolicy.create(both))
    install_bundle(device, bundles["v1-second"])
    install_bundle(device, bundles["v2"])
    revoke = lambda name: device.save_policy(  # noqa: E731
        TrustPolicy.create(both).with_changes(revoked=frozenset({key_id(keys.public(name))}))
    )
    revoke("second")
    result = check_store(device)
    assert result.ok, result.problems
    [warning] = result.warnings
    assert "rollback to 1.0.0 would be refused" in warning.message
    assert "revoked" in warning.message
    # the key of the active version revoked: the store holds what the policy refuses
    revoke("release")
    result = check_store(device)
    assert not result.ok
    assert [p.path for p in result.problems] == [str(active(device) / SIGNATURES_MEMBER)]


def test_an_expired_active_version_is_a_warning(two_versions):
    later = datetime.now(timezone.utc) + timedelta(days=3650)
    result = check_store(two_versions, now=later)
    assert result.ok
    assert {w.message.split(" version")[0] for w in result.warnings} == {
        "the active",
        "the previous",
    }


def test_no_store_at_all(tmp_path):
    result = check_store(Store(tmp_path / "nothing"))
    assert not result.ok
    assert result.problems[0].message == "no device store here"


# --- the command ---------------------------------------------------------------------------------


def run(store: Store, *args: str):
    return CliRunner().invoke(main, ["check", *args, "--home", str(store.home)])


def test_check_command_passes_and_reports_json(two_versions):
    result = run(two_versions, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["ok"] and doc["models"][0]["version"] == "1.1.0" and doc["cleared"] == []
    human = run(two_versions)
    assert human.exit_code == 0 and "is consistent" in human.output


def test_check_command_exits_6_on_damage(two_versions):
    flip_last_byte(active(two_versions) / "payload" / "model.onnx")
    result = run(two_versions, "--json")
    assert result.exit_code == 6
    doc = json.loads(result.stdout)
    assert not doc["ok"] and "does not match" in doc["problems"][0]["message"]
    assert result.stderr.strip().endswith(
        f": error: {two_versions.home}: 1 problem(s): the store is damaged"
    )


def test_check_command_clears_leftovers(two_versions):
    two_versions.staging_dir()
    before = run(two_versions, "--json")
    assert before.exit_code == 0 and len(json.loads(before.output)["leftovers"]) == 1
    after = json.loads(run(two_versions, "--clear", "--json").output)
    assert len(after["cleared"]) == 1 and after["leftovers"] == []
