"""BundleVerifier and PayloadChecker on their own: the order of the steps, and the API order.

A bundle that fails several steps at once is reported by the first failing step of design.md §2
(size limits → manifest parse → signatures → expiry → target → sequence → payload), whatever else
is wrong with it.
"""

from __future__ import annotations

import copy
import hashlib
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from runtime.canonical import canonical_bytes
from runtime.errors import (
    BundleError,
    BundleSizeError,
    ExpiredError,
    ManifestError,
    PayloadError,
    RollbackError,
    SignatureError,
    TargetMismatchError,
)
from runtime.limits import DEFAULT_BUNDLE_LIMITS, BundleLimits
from runtime.manifest import parse_time
from runtime.trust import TrustPolicy
from runtime.verify import BundleVerifier, DeviceIdentity, PayloadChecker, parse_manifest
from tests.conftest import Keys
from tests.runtime import hostile as h

Edit = Callable[[dict[str, Any]], None]


@pytest.fixture(scope="module")
def template(build_bundle: Callable[..., Path]) -> dict[str, Any]:
    """A real manifest (iris 1.1.0, sequence 11) as a document."""
    return h.manifest_doc(h.unpack(build_bundle("1.1.0", 11)))


def signed(
    doc: dict[str, Any], keys: Keys, *names: str, edit: Optional[Edit] = None
) -> tuple[bytes, bytes]:
    """(manifest bytes, envelope bytes) for a copy of ``doc`` changed by ``edit``."""
    changed = copy.deepcopy(doc)
    if edit is not None:
        edit(changed)
    data = canonical_bytes(changed)
    return data, h.envelope(data, [keys.key(n) for n in names])


def verifier(
    keys: Keys,
    doc: dict[str, Any],
    *,
    floors: Optional[dict[str, int]] = None,
    arch: Optional[str] = None,
    allow_any_target: bool = False,
    profiles: Optional[frozenset[str]] = None,
    limits: BundleLimits = DEFAULT_BUNDLE_LIMITS,
) -> BundleVerifier:
    policy = TrustPolicy.create([(keys.public("release"), "release")])
    device = DeviceIdentity(arch or doc["target"]["arch"], profiles, allow_any_target)
    now = parse_time(doc["created"], "created") + timedelta(days=1)
    return BundleVerifier(policy, device, now=now, floors=floors, limits=limits)


def expiring(doc: dict[str, Any]) -> None:
    """Expire the bundle the moment it was made (the verifiers here run a day later)."""
    doc["expires"] = doc["created"]


def everything_wrong_after(step: str) -> Edit:
    """An edit that breaks every step after ``step`` (and none before it)."""
    steps = ["expiry", "target", "sequence"]

    def edit(doc: dict[str, Any]) -> None:
        later = steps[steps.index(step) :] if step in steps else steps
        if "expiry" in later:
            expiring(doc)
        if "target" in later:
            doc["target"].update(profile="elsewhere", arch="elsewhere")
        if "sequence" in later:
            doc["sequence"] = 1

    return edit


@pytest.mark.parametrize(
    ("signer", "first_broken", "error"),
    [
        ("stranger", "expiry", SignatureError),
        ("release", "expiry", ExpiredError),
        ("release", "target", TargetMismatchError),
        ("release", "sequence", RollbackError),
    ],
)
def test_the_first_failing_step_is_reported(
    template: dict[str, Any], keys: Keys, signer: str, first_broken: str, error: type[BundleError]
) -> None:
    manifest, envelope = signed(template, keys, signer, edit=everything_wrong_after(first_broken))
    check = verifier(keys, template, floors={"iris": 10})
    with pytest.raises(error) as excinfo:
        check.check_manifest(manifest, envelope)
    assert type(excinfo.value) is error


def test_expired_bundle_by_an_untrusted_key_fails_on_signatures(
    template: dict[str, Any], keys: Keys
) -> None:
    manifest, envelope = signed(template, keys, "stranger", edit=expiring)
    with pytest.raises(SignatureError, match="untrusted") as excinfo:
        verifier(keys, template).check_manifest(manifest, envelope)
    assert excinfo.value.step == "signatures"
    # the same bundle signed by a trusted key reaches the expiry step
    _, trusted = signed(template, keys, "release", edit=expiring)
    with pytest.raises(ExpiredError):
        verifier(keys, template).check_manifest(manifest, trusted)


def test_size_limit_comes_before_parsing_and_parsing_before_signatures(
    template: dict[str, Any], keys: Keys
) -> None:
    small = verifier(keys, template, limits=BundleLimits(max_manifest_bytes=10))
    with pytest.raises(BundleSizeError):
        small.check_manifest(b"not json at all", b"not json either")
    with pytest.raises(ManifestError):
        verifier(keys, template).check_manifest(b"not json", b"not json either")


def test_floor_is_the_higher_of_history_and_policy_and_equal_passes(
    template: dict[str, Any], keys: Keys
) -> None:
    manifest, envelope = signed(template, keys, "release")
    check = verifier(keys, template, floors={"iris": 11, "other": 99})
    assert check.check_manifest(manifest, envelope).manifest.sequence == 11  # reinstall is fine
    check.policy = check.policy.with_changes(min_sequence=12)
    assert check.floor("iris") == 12
    assert check.floor("never-seen") == 12
    with pytest.raises(RollbackError, match="floor 12"):
        check.check_manifest(manifest, envelope)


def test_target_checks_arch_then_profile_unless_any_target_is_allowed(
    template: dict[str, Any], keys: Keys
) -> None:
    manifest, envelope = signed(template, keys, "release")
    with pytest.raises(TargetMismatchError, match="this device is riscv64"):
        verifier(keys, template, arch="riscv64").check_manifest(manifest, envelope)
    only = frozenset({"raspberry-pi-5"})
    with pytest.raises(TargetMismatchError, match="accepts raspberry-pi-5"):
        verifier(keys, template, profiles=only).check_manifest(manifest, envelope)
    lenient = verifier(keys, template, arch="riscv64", profiles=only, allow_any_target=True)
    assert lenient.check_manifest(manifest, envelope).signers


def test_payload_checker_refuses_calls_out_of_order(template: dict[str, Any]) -> None:
    manifest = parse_manifest(canonical_bytes(template))
    checker = PayloadChecker(manifest, BundleLimits())
    with pytest.raises(RuntimeError, match="begin"):
        checker.end("0" * 64)
    entry = manifest.files[0]
    checker.begin("payload/" + entry.path, "file", entry.size)
    with pytest.raises(RuntimeError, match="end"):
        checker.begin("payload/" + manifest.files[1].path, "file", manifest.files[1].size)
    with pytest.raises(RuntimeError, match="end"):
        checker.finish()
    checker.end(entry.sha256)
    with pytest.raises(PayloadError, match="missing"):
        checker.finish()


def test_payload_checker_order_of_member_checks(template: dict[str, Any]) -> None:
    """Path safety is judged before the member type, and both before the manifest lookup."""
    manifest = parse_manifest(canonical_bytes(template))
    for name, kind, match in [
        ("/payload/model.onnx", "symlink", "absolute"),
        ("payload/../model.onnx", "hardlink", "escapes"),
        ("payload/unlisted.bin", "fifo", "is a fifo"),
        ("payload/unlisted.bin", "file", "not listed"),
    ]:
        with pytest.raises(PayloadError, match=match):
            PayloadChecker(manifest, BundleLimits()).begin(name, kind, 0)


def test_payload_checker_accepts_exactly_the_manifest(template: dict[str, Any]) -> None:
    manifest = parse_manifest(canonical_bytes(template))
    checker = PayloadChecker(manifest, BundleLimits())
    for entry in manifest.files:
        checker.begin("payload/" + entry.path, "file", entry.size)
        checker.end(entry.sha256)
    checker.finish()
    wrong = PayloadChecker(manifest, BundleLimits())
    entry = manifest.files[0]
    wrong.begin("payload/" + entry.path, "file", entry.size)
    with pytest.raises(PayloadError, match="SHA-256"):
        wrong.end(hashlib.sha256(b"other").hexdigest())


@pytest.mark.parametrize(
    ("old", "new", "match"),
    [
        (b'"target":{', b'"target":{"arch":"x",', "'arch' appears twice"),
        (b'"rtol":0.001', b'"rtol":-1e999', "not finite"),
        (b'"rtol":0.001', b'"rtol":Infinity', "Infinity is not allowed"),
        (b'"description":""', b'"description":' + b"[" * 50000 + b"]" * 50000, "not JSON"),
        (b'"sequence":11', b'"sequence":1' + b"0" * 5000, r"not JSON|manifest\.sequence"),
        # found by fuzz/fuzz_manifest.py: float() of a huge integer raised OverflowError
        (b'"atol":0.0001', b'"atol":1' + b"0" * 400, "selftest.atol: number out of range"),
        (b'"rtol":0.001', b'"rtol":-1' + b"0" * 400, "selftest.rtol: number out of range"),
    ],
)
def test_parse_manifest_is_stricter_than_json(
    template: dict[str, Any], old: bytes, new: bytes, match: str
) -> None:
    data = canonical_bytes(template)
    assert old in data
    with pytest.raises(ManifestError, match=match):
        parse_manifest(data.replace(old, new, 1))


def test_parse_manifest_refuses_a_path_that_is_also_a_folder(template: dict[str, Any]) -> None:
    def listing(*paths: str) -> bytes:
        doc = dict(template)
        extra = [{"path": p, "sha256": "0" * 64, "size": 0} for p in paths]
        doc["files"] = [*template["files"], *extra]
        return canonical_bytes(doc)

    assert len(parse_manifest(listing("a/b", "a/c", "ab/b")).files) == len(template["files"]) + 3
    with pytest.raises(ManifestError, match="'a/b' is both a file and a folder"):
        parse_manifest(listing("a/b/c/d", "a/b"))


@pytest.mark.parametrize("moment", ["0603-01-01T00:00:00Z", "0001-01-01T00:00:00Z"])
def test_a_parsed_manifest_survives_its_round_trip(template: dict[str, Any], moment: str) -> None:
    """Found by fuzz/fuzz_manifest.py: a year before 1000 was written back unpadded ("603-…"),
    which the parser then refused."""
    doc = {**template, "expires": moment, "created": moment}
    manifest = parse_manifest(canonical_bytes(doc))
    again = parse_manifest(canonical_bytes(manifest.to_dict()))
    assert again.to_dict() == manifest.to_dict()
    assert manifest.to_dict()["expires"] == moment
