"""Install, self-test, A/B slots, rollback and anti-rollback on a real store."""

from __future__ import annotations

import io
import json
import os
import zipfile

import numpy as np
import pytest

from runtime.errors import PayloadError, RollbackError, SelfTestError, StoreError
from runtime.install import install_bundle, rollback
from runtime.model import LoadedModel
from tests.runtime.rebuild import resign


def snapshot(store):
    files = {}
    for path in sorted(store.models_dir.rglob("*")):
        if path.is_symlink():
            files[str(path)] = "->" + os.readlink(path)
        elif path.is_file():
            files[str(path)] = path.read_bytes()
    return files


def bad_golden(payload):
    """Change one golden output value inside selftest.npz."""
    src = zipfile.ZipFile(io.BytesIO(payload["selftest.npz"]))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "out/probabilities.npy":
                array = np.load(io.BytesIO(data))
                array[0, 0] += 0.5
                member = io.BytesIO()
                np.save(member, array)
                data = member.getvalue()
            dst.writestr(info, data)
    payload["selftest.npz"] = buf.getvalue()


def test_upgrade_rollback_and_history(device, build_bundle):
    first = install_bundle(device, build_bundle("1.0.0", 10))
    second = install_bundle(device, build_bundle("1.1.0", 11))
    assert (first.slot, second.slot, second.previous_slot) == ("a", "b", "a")
    assert LoadedModel.open(device.active_dir("iris")).manifest.version == "1.1.0"
    back = rollback(device, "iris")
    assert (back.from_version, back.to_version, back.slot) == ("1.1.0", "1.0.0", "a")
    assert os.readlink(device.model_dir("iris") / "current") == "slots/a"
    actions = [h["action"] for h in device.state("iris").history]
    assert actions == ["install", "install", "rollback"]
    # the floor stays at the highest sequence ever installed
    assert device.floors()["iris"] == 11
    with pytest.raises(RollbackError):
        install_bundle(device, build_bundle("1.0.1", 10))


def test_third_install_replaces_the_older_slot(device, build_bundle):
    for i, version in enumerate(("1.0.0", "1.1.0", "1.2.0")):
        install_bundle(device, build_bundle(version, 10 + i))
    assert device.active_slot("iris") == "a"
    assert device.slot_manifest("iris", "b").version == "1.1.0"


def test_reinstalling_the_active_bundle_is_harmless(device, build_bundle):
    bundle = build_bundle("1.0.0", 10)
    install_bundle(device, bundle)
    before = snapshot(device)
    again = install_bundle(device, bundle)
    assert again.unchanged
    assert snapshot(device) == before


def test_failed_selftest_keeps_the_old_model(device, build_bundle, keys, tmp_path):
    install_bundle(device, build_bundle("1.0.0", 10))
    before = snapshot(device)
    broken = resign(
        build_bundle("1.1.0", 11),
        tmp_path / "broken.eship",
        keys.key("release"),
        edit_payload=bad_golden,
    )
    with pytest.raises(SelfTestError, match="probabilities"):
        install_bundle(device, broken)
    assert snapshot(device) == before
    with device.lock():
        pass
    assert not device.tmp_dir.exists()


def test_latency_budget_is_enforced(device, build_bundle, keys, tmp_path):
    slow = resign(
        build_bundle("1.0.0", 10),
        tmp_path / "slow.eship",
        keys.key("release"),
        edit_manifest=lambda d: d["selftest"].update(max_latency_ms=1e-6),
    )
    with pytest.raises(SelfTestError, match="budget"):
        install_bundle(device, slow)
    assert device.names() == []


def test_models_side_by_side(device, build_bundle):
    install_bundle(device, build_bundle("1.0.0", 10, name="one"))
    install_bundle(device, build_bundle("2.0.0", 5, name="two"))
    assert device.names() == ["one", "two"]
    assert device.floors() == {"one": 10, "two": 5}


def test_rollback_without_previous_version(device, build_bundle):
    with pytest.raises(StoreError, match="no model"):
        rollback(device, "iris")
    install_bundle(device, build_bundle())
    with pytest.raises(StoreError, match="no previous version"):
        rollback(device, "iris")


def test_rollback_refuses_a_damaged_previous_slot(device, build_bundle):
    install_bundle(device, build_bundle("1.0.0", 10))
    install_bundle(device, build_bundle("1.1.0", 11))
    model = device.slot_dir("iris", "a") / "payload" / "model.onnx"
    model.write_bytes(model.read_bytes() + b"x")
    with pytest.raises(PayloadError):
        rollback(device, "iris")
    assert device.active_slot("iris") == "b"


def test_crash_leftovers_are_cleared(device, build_bundle):
    install_bundle(device, build_bundle("1.0.0", 10))
    leftover = device.staging_dir()
    (leftover / "payload").mkdir()
    (leftover / "payload" / "model.onnx").write_bytes(b"half")
    (device.model_dir("iris") / ".current.tmp").symlink_to("slots/b")
    install_bundle(device, build_bundle("1.1.0", 11))
    assert not leftover.exists()
    assert not (device.model_dir("iris") / ".current.tmp").is_symlink()


def test_floor_survives_a_crash_between_swap_and_state_write(device, build_bundle):
    install_bundle(device, build_bundle("1.0.0", 10))
    install_bundle(device, build_bundle("1.1.0", 12))
    (device.model_dir("iris") / "state.json").write_text(
        json.dumps({"highest_sequence": 10, "history": []})
    )
    with pytest.raises(RollbackError):
        install_bundle(device, build_bundle("1.0.5", 11))


def test_slot_folders_are_readable_by_other_users(device, build_bundle):
    install_bundle(device, build_bundle())
    assert device.slot_dir("iris", "a").stat().st_mode & 0o755 == 0o755


def test_rollback_twice_does_not_go_forward(device, build_bundle):
    install_bundle(device, build_bundle("1.0.0", 10))
    install_bundle(device, build_bundle("1.1.0", 11))
    rollback(device, "iris")
    with pytest.raises(StoreError, match=r"newer 1\.1\.0"):
        rollback(device, "iris")
    assert install_bundle(device, build_bundle("1.1.0", 11)).slot == "b"  # forward again


def test_rollback_refuses_a_version_signed_by_a_since_revoked_key(device, build_bundle, keys):
    from runtime.errors import SignatureError
    from runtime.signing import key_id
    from runtime.trust import TrustPolicy

    both = [(keys.public("release"), "release"), (keys.public("second"), "second")]
    device.save_policy(TrustPolicy.create(both))
    install_bundle(device, build_bundle("1.0.0", 10, key_names=("second",)))
    install_bundle(device, build_bundle("1.1.0", 11))
    revoked = frozenset({key_id(keys.public("second"))})
    device.save_policy(TrustPolicy.create(both).with_changes(revoked=revoked))
    with pytest.raises(SignatureError, match="revoked"):
        rollback(device, "iris")
    assert device.active_slot("iris") == "b"


def test_rollback_refuses_an_expired_previous_version(device, build_bundle):
    from datetime import datetime, timedelta, timezone

    from runtime.errors import ExpiredError

    install_bundle(device, build_bundle("1.0.0", 10, expires_days=1))
    install_bundle(device, build_bundle("1.1.0", 11))
    later = datetime.now(timezone.utc) + timedelta(days=3)
    with pytest.raises(ExpiredError):
        rollback(device, "iris", now=later)


def test_policy_that_can_never_be_met_is_refused(keys):
    from runtime.errors import TrustPolicyError
    from runtime.signing import key_id
    from runtime.trust import TrustPolicy

    policy = TrustPolicy.create([(keys.public("release"), "r"), (keys.public("second"), "s")], 2)
    with pytest.raises(TrustPolicyError, match="no bundle could ever be installed"):
        policy.with_changes(revoked=frozenset({key_id(keys.public("second"))}))
    with pytest.raises(TrustPolicyError, match="64 lowercase hex"):
        policy.with_changes(threshold=1, revoked=frozenset({"nothex"}))
