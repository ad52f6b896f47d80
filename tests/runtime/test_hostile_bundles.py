# ruff: noqa: E501 - the case table keeps one case per line
"""Hostile bundles: each one is refused by ``install_bundle`` with the error of the step that
catches it, and leaves the device exactly as it was.

Every case starts from real bundles built by the packager and breaks one thing (hostile.py). The
verification order of design.md §2 decides which step reports a case: size limits → manifest
parse → signatures → expiry → target → sequence → payload; archive damage is reported by the step
that meets it (a bad header before the manifest is read is an archive error, not a signature one).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

import devices
from runtime.bundle import read_bundle
from runtime.errors import (
    BundleError,
    BundleFormatError,
    BundleSizeError,
    ExpiredError,
    ManifestError,
    PayloadError,
    RollbackError,
    SignatureError,
    TargetMismatchError,
)
from runtime.install import install_bundle, this_device
from runtime.limits import BundleLimits, MiB
from runtime.signing import key_id
from runtime.tarfmt import BLOCK, END_OF_ARCHIVE
from runtime.trust import TrustPolicy
from runtime.verify import BundleVerifier
from tests.conftest import Keys
from tests.runtime import hostile as h
from tests.runtime.hostile import MANIFEST, MODEL, SELFTEST, SIGNATURES, Member

HOST_TARGET, OTHER_TARGET = (
    ("aarch64-generic", "x86_64-generic")
    if devices.host_arch() == "aarch64"
    else ("x86_64-generic", "aarch64-generic")
)


Edit = Callable[[dict[str, Any]], None]


@dataclass
class Kit:
    """What a case builds from: the template bundle (1.1.0, sequence 11, signed by 'release',
    installable as it is), other real builds, the keys, and a folder to write into."""

    keys: Keys
    built: Callable[..., Path]
    base: list[Member]
    folder: Path

    def key(self, *names: str) -> list[Path]:
        return [self.keys.key(n) for n in names]

    def signed(self, edit: Edit) -> Path:
        """The template with its manifest edited and validly re-signed by 'release'."""
        return self.bundle(h.resigned(self.base, self.key("release"), edit))

    def bundle(self, members: list[Member], trailer: bytes = END_OF_ARCHIVE) -> Path:
        return self.raw(h.pack(members, trailer))

    def raw(self, data: bytes) -> Path:
        return h.write(self.folder / "hostile.eship", data)

    def cut(self, at: int) -> Path:
        return self.raw(h.pack(self.base)[:at])


def setting(path: str, value: Any) -> Edit:
    """An edit that sets the dotted ``path`` of the manifest (``files.0.path``) to ``value``."""

    def edit(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[int(last) if isinstance(node, list) else last] = value

    return edit


def trusting(
    *names: str, threshold: int = 1, revoked: tuple[str, ...] = (), min_sequence: int = 0
) -> Callable[[Keys], TrustPolicy]:
    def policy(keys: Keys) -> TrustPolicy:
        return TrustPolicy.create([(keys.public(n), n) for n in names], threshold).with_changes(
            revoked=frozenset(key_id(keys.public(n)) for n in revoked), min_sequence=min_sequence
        )

    return policy


def manifest_text(kit: Kit, old: bytes, new: bytes) -> Path:
    """The template with manifest bytes edited as text, then validly signed as they are."""
    data = h.get(kit.base, MANIFEST).data
    assert old in data
    return kit.bundle(
        h.resigned(kit.base, kit.key("release"), manifest_bytes=data.replace(old, new, 1))
    )


def envelope(kit: Kit, data: bytes) -> Path:
    return kit.bundle(h.replace(kit.base, SIGNATURES, data=data))


def member(kit: Kit, name: str, **changes: Any) -> Path:
    return kit.bundle(h.replace(kit.base, name, **changes))


def in_place_of_model(kit: Kit, new: Member) -> Path:
    """The template with its model member replaced by ``new`` (the manifest still lists it)."""
    at = [m.name for m in kit.base].index(MODEL)
    return kit.bundle(h.insert(h.drop(kit.base, MODEL), at, new))


def header_edit(kit: Kit, name: str, field: tuple[int, int], value: bytes) -> Path:
    """The template with one header field of member ``name`` overwritten (checksum fixed)."""
    data = bytearray(h.pack(kit.base))
    at = h.offset_of(kit.base, name)
    data[at : at + BLOCK] = h.set_field(bytes(data[at : at + BLOCK]), field, value)
    return kit.raw(bytes(data))


def bad_checksum(kit: Kit, name: str) -> Path:
    data = bytearray(h.pack(kit.base))
    data[h.offset_of(kit.base, name) + 60] ^= 0x01  # inside the name field's NUL padding
    return kit.raw(bytes(data))


def sparse(kit: Kit, size: int) -> Path:
    path = kit.folder / "huge.eship"
    with path.open("wb") as f:
        f.truncate(size)
    return path


def signatures_by(kit: Kit, *names: str) -> Path:
    data = h.get(kit.base, MANIFEST).data
    return envelope(kit, h.envelope(data, kit.key(*names)))


def payload_with(kit: Kit, **extra: bytes) -> Path:
    payload = {**h.payload_of(kit.base), **{k.replace("__", "/"): v for k, v in extra.items()}}
    return kit.bundle(h.with_payload(kit.base, kit.key("release"), payload))


def tampered(members: list[Member]) -> list[Member]:
    return h.replace(members, MODEL, data=h.flip_byte(h.get(members, MODEL).data, 100))


def one_sig(kit: Kit, sig: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(h.get(kit.base, SIGNATURES).data)
    doc["signatures"] = [{"keyid": key_id(kit.keys.public("release")), "sig": sig}]
    return doc


def device_link(kit: Kit) -> Path:
    path = kit.folder / "zero.eship"
    path.symlink_to("/dev/zero")
    return path


def fifo(kit: Kit) -> Path:
    path = kit.folder / "fifo.eship"
    os.mkfifo(path)
    return path


@dataclass(frozen=True)
class Case:
    id: str
    make: Callable[[Kit], Path]
    error: type[BundleError]
    step: str
    match: str
    policy: Optional[Callable[[Keys], TrustPolicy]] = None
    days_later: int = 0


# fmt: off
CASES = [
    # --- size limits: checked before anything is parsed ---------------------------------------
    Case("bundle-over-max-size", lambda k: sparse(k, 4096 * MiB + 1), BundleSizeError, "size-limits", "bundle is 4294967297 bytes"),
    Case("manifest-over-1mib", lambda k: k.signed(setting("description", "x" * MiB)), BundleSizeError, "size-limits", "manifest.json is .* the limit is 1048576"),
    Case("signatures-over-64kib", lambda k: envelope(k, h.envelope_doc([], pad="x" * 70000)), BundleSizeError, "size-limits", "signatures.json is"),
    # --- the archive itself ------------------------------------------------------------------
    Case("empty-file", lambda k: k.raw(b""), BundleFormatError, "archive", "empty file"),
    Case("random-bytes", lambda k: k.raw(random.Random(7).randbytes(8192)), BundleFormatError, "archive", "not a tar archive"),
    Case("shorter-than-a-header", lambda k: k.raw(b"#!/bin/sh\nrm -rf /\n"), BundleFormatError, "archive", "not a tar archive"),
    Case("zip-file", lambda k: k.raw(h.get(k.base, SELFTEST).data), BundleFormatError, "archive", "not a tar archive"),
    Case("only-end-marker", lambda k: k.raw(END_OF_ARCHIVE), BundleFormatError, "archive", "ends before manifest.json"),
    Case("not-ustar-magic", lambda k: header_edit(k, MANIFEST, (257, 263), b"GARBAG"), BundleFormatError, "archive", "not a ustar archive"),
    Case("bad-checksum-first-header", lambda k: bad_checksum(k, MANIFEST), BundleFormatError, "archive", "not a tar archive"),
    Case("bad-checksum-payload-header", lambda k: bad_checksum(k, SELFTEST), BundleFormatError, "archive", "checksum mismatch"),
    Case("negative-size-field", lambda k: header_edit(k, MANIFEST, h.SIZE, b"-0000000001\0"), BundleFormatError, "archive", "bad size field"),
    Case("non-octal-size-field", lambda k: header_edit(k, MODEL, h.SIZE, b"0000000009\0"), BundleFormatError, "archive", "bad size field"),
    Case("prefixed-octal-size-field", lambda k: header_edit(k, MANIFEST, h.SIZE, b"0o17\0"), BundleFormatError, "archive", "bad size field"),
    Case("payload-before-manifest", lambda k: k.bundle(k.base[2:] + k.base[:2]), BundleFormatError, "archive", "expected member 'manifest.json' here, found 'payload/model.onnx'"),
    Case("signatures-before-manifest", lambda k: k.bundle([k.base[1], k.base[0], *k.base[2:]]), BundleFormatError, "archive", "expected member 'manifest.json'"),
    Case("manifest-is-a-symlink", lambda k: member(k, MANIFEST, kind=b"2", data=b"", linkname="/etc/passwd"), BundleFormatError, "archive", "manifest.json is a symlink"),
    Case("ends-after-manifest", lambda k: k.bundle(k.base[:1]), BundleFormatError, "archive", "ends before signatures.json"),
    Case("truncated-in-payload", lambda k: k.cut(h.offset_of(k.base, MODEL) + BLOCK + 100), BundleFormatError, "archive", "ends inside a member"),
    Case("truncated-in-header", lambda k: k.cut(h.offset_of(k.base, SELFTEST) + 200), BundleFormatError, "archive", "ends inside a header"),
    Case("truncated-no-end-marker", lambda k: k.cut(len(h.pack(k.base)) - len(END_OF_ARCHIVE)), BundleFormatError, "archive", "truncated archive"),
    Case("data-after-end-marker", lambda k: k.bundle(k.base, END_OF_ARCHIVE + b"#!/bin/sh\n" + bytes(502)), BundleFormatError, "archive", "after the end-of-archive"),
    Case("member-after-end-marker", lambda k: k.bundle(k.base, END_OF_ARCHIVE + h.pack([Member("payload/x.bin", b"x")], b"")), BundleFormatError, "archive", "after the end-of-archive"),
    Case("bundle-path-is-a-device", device_link, BundleFormatError, "archive", "not a regular file"),
    Case("bundle-path-is-a-fifo", fifo, BundleFormatError, "archive", "not a regular file"),
    # --- manifest parse ----------------------------------------------------------------------
    Case("manifest-not-json", lambda k: manifest_text(k, b"{", b"{{"), ManifestError, "manifest", "not JSON"),
    Case("manifest-not-utf8", lambda k: manifest_text(k, b'"description":""', b'"description":"\xff"'), ManifestError, "manifest", "not JSON"),
    Case("manifest-with-nan", lambda k: manifest_text(k, b'"atol":0.0001', b'"atol":NaN'), ManifestError, "manifest", "NaN is not allowed"),
    Case("manifest-with-overflowing-float", lambda k: manifest_text(k, b'"atol":0.0001', b'"atol":1e999'), ManifestError, "manifest", "not finite"),
    Case("manifest-with-huge-integer-tolerance", lambda k: manifest_text(k, b'"atol":0.0001', b'"atol":1' + b"0" * 400), ManifestError, "manifest", "selftest.atol: number out of range"),  # found by fuzz/fuzz_manifest.py
    Case("manifest-with-duplicate-key", lambda k: manifest_text(k, b'{"created"', b'{"sequence":99,"created"'), ManifestError, "manifest", "'sequence' appears twice"),
    Case("manifest-nested-too-deep", lambda k: manifest_text(k, b'"description":""', b'"description":' + b"[" * 100000 + b"]" * 100000), ManifestError, "manifest", "not JSON"),
    Case("manifest-is-a-list", lambda k: k.bundle(h.resigned(k.base, k.key("release"), manifest_bytes=b"[]")), ManifestError, "manifest", "expected a JSON object"),
    Case("sequence-as-string", lambda k: k.signed(setting("sequence", "11")), ManifestError, "manifest", "sequence: expected int, got str"),
    Case("sequence-as-bool", lambda k: k.signed(setting("sequence", True)), ManifestError, "manifest", "sequence: expected a number, got a boolean"),
    Case("files-not-a-list", lambda k: k.signed(setting("files", {"model.onnx": 1})), ManifestError, "manifest", "files: expected list"),
    Case("unknown-format-version", lambda k: k.signed(setting("format", "edgeship.bundle/v2")), ManifestError, "manifest", "unknown format version"),
    Case("missing-required-field", lambda k: k.signed(lambda d: d.pop("name")), ManifestError, "manifest", "manifest.name: missing"),
    Case("model-file-not-listed", lambda k: k.signed(setting("model.file", "other.onnx")), ManifestError, "manifest", "'other.onnx' is referenced but not listed"),
    Case("manifest-lists-dotdot-path", lambda k: k.signed(setting("files.0.path", "../model.onnx")), ManifestError, "manifest", "not a safe path"),
    Case("manifest-lists-absolute-path", lambda k: k.signed(setting("files.0.path", "/etc/model.onnx")), ManifestError, "manifest", "not a safe path"),
    Case("manifest-lists-file-inside-a-file", lambda k: payload_with(k, x=b"1", x__y=b"2"), ManifestError, "manifest", "'x' is both a file and a folder"),
    # --- signatures --------------------------------------------------------------------------
    Case("tampered-manifest-field", lambda k: k.bundle(h.replace(k.base, MANIFEST, data=h.get(k.base, MANIFEST).data.replace(b'"version":"1.1.0"', b'"version":"9.9.9"'))), SignatureError, "signatures", "does not match the manifest"),
    Case("signed-by-stranger", lambda k: signatures_by(k, "stranger"), SignatureError, "signatures", "untrusted key"),
    Case("signed-by-revoked-key", lambda k: signatures_by(k, "second"), SignatureError, "signatures", "revoked key", trusting("release", "second", revoked=("second",))),
    Case("below-threshold", lambda k: signatures_by(k, "release"), SignatureError, "signatures", "1 valid signature.*2 required", trusting("release", "second", threshold=2)),
    Case("duplicate-signature-counts-once", lambda k: signatures_by(k, "release", "release"), SignatureError, "signatures", "1 valid signature.*2 required", trusting("release", "second", threshold=2)),
    Case("too-many-signatures", lambda k: signatures_by(k, *["release"] * 17), SignatureError, "signatures", "more than 16 signatures"),
    Case("signatures-not-json", lambda k: envelope(k, b"not json"), SignatureError, "signatures", "not JSON"),
    Case("signature-not-base64", lambda k: envelope(k, json.dumps(one_sig(k, "!!not base64!!")).encode()), SignatureError, "signatures", "not base64"),
    Case("signature-wrong-length", lambda k: envelope(k, json.dumps(one_sig(k, "AAAA")).encode()), SignatureError, "signatures", "does not match the manifest"),
    Case("no-signatures", lambda k: envelope(k, h.envelope_doc([])), SignatureError, "signatures", "no signatures"),
    Case("wrong-payload-type", lambda k: envelope(k, h.envelope_doc([], payloadType="text/plain")), SignatureError, "signatures", "payloadType"),
    # --- expiry, target, sequence ------------------------------------------------------------
    Case("expired", lambda k: k.built(version="1.1.0", sequence=11, expires_days=1), ExpiredError, "expiry", "expired at", days_later=3),
    Case("expired-and-untrusted-reports-signatures", lambda k: k.bundle(h.resigned(h.unpack(k.built(version="1.1.0", sequence=11, expires_days=1)), k.key("stranger"))), SignatureError, "signatures", "untrusted", days_later=3),
    Case("wrong-target", lambda k: k.built(version="1.1.0", sequence=11, target=OTHER_TARGET), TargetMismatchError, "target", f"bundle is for {OTHER_TARGET}"),
    Case("sequence-below-installed", lambda k: k.built(version="0.9.0", sequence=9), RollbackError, "sequence", "sequence 9, below this device's floor 10"),
    Case("sequence-below-policy-minimum", lambda k: k.signed(setting("sequence", 20)), RollbackError, "sequence", "sequence 20, below this device's floor 50", trusting("release", min_sequence=50)),
    # --- payload members ---------------------------------------------------------------------
    Case("tampered-model-byte", lambda k: k.bundle(tampered(k.base)), PayloadError, "payload", "model.onnx: SHA-256 does not match"),
    Case("tampered-selftest-byte", lambda k: member(k, SELFTEST, data=h.flip_byte(h.get(k.base, SELFTEST).data, -1)), PayloadError, "payload", "selftest.npz: SHA-256 does not match"),
    Case("active-bundle-with-tampered-model", lambda k: k.bundle(tampered(h.unpack(k.built(version="1.0.0", sequence=10)))), PayloadError, "payload", "model.onnx: SHA-256 does not match"),
    Case("ustar-prefix-escapes", lambda k: header_edit(k, MODEL, h.PREFIX, b".."), PayloadError, "payload", "'../payload/model.onnx' escapes the bundle root"),
    Case("missing-member", lambda k: k.bundle(h.drop(k.base, SELFTEST)), PayloadError, "payload", "missing payload member.*selftest.npz"),
    Case("extra-member", lambda k: k.bundle([*k.base, Member("payload/extra.bin", b"x")]), PayloadError, "payload", "'payload/extra.bin' is not listed"),
    Case("duplicate-member", lambda k: k.bundle([*k.base, h.get(k.base, MODEL)]), PayloadError, "payload", "appears twice"),
    Case("member-outside-payload", lambda k: in_place_of_model(k, Member("model.onnx", h.get(k.base, MODEL).data)), PayloadError, "payload", "not a payload file"),
    Case("dotdot-path", lambda k: in_place_of_model(k, Member("payload/../../evil.onnx", b"x")), PayloadError, "payload", "escapes the bundle root"),
    Case("absolute-path", lambda k: in_place_of_model(k, Member("/etc/cron.d/evil", b"x")), PayloadError, "payload", "absolute path"),
    Case("symlink-member", lambda k: member(k, MODEL, kind=b"2", data=b"", linkname="/etc/passwd"), PayloadError, "payload", "is a symlink"),
    Case("hardlink-member", lambda k: member(k, MODEL, kind=b"1", data=b"", linkname=SELFTEST), PayloadError, "payload", "is a hardlink"),
    Case("character-device-member", lambda k: member(k, MODEL, kind=b"3", data=b""), PayloadError, "payload", "is a character device"),
    Case("block-device-member", lambda k: member(k, MODEL, kind=b"4", data=b""), PayloadError, "payload", "is a block device"),
    Case("directory-member", lambda k: in_place_of_model(k, Member("payload/", kind=b"5", mode=0o755)), PayloadError, "payload", "is a directory"),
    Case("fifo-member", lambda k: member(k, MODEL, kind=b"6", data=b""), PayloadError, "payload", "is a fifo"),
    Case("pax-header-member", lambda k: k.bundle(h.insert(k.base, 2, Member("payload/PaxHeaders/model.onnx", b"30 path=payload/evil.onnx\n", kind=b"x"))), PayloadError, "payload", "is a pax header"),
    Case("gnu-long-name-member", lambda k: k.bundle(h.insert(k.base, 2, Member("././@LongLink", b"payload/" + b"a" * 120 + b"\0", kind=b"L"))), PayloadError, "payload", "GNU long name"),
    Case("unknown-type-member", lambda k: member(k, MODEL, kind=b"Z"), PayloadError, "payload", "is a unknown type"),
    Case("member-larger-than-declared", lambda k: member(k, MODEL, data=h.get(k.base, MODEL).data + b"\0"), PayloadError, "payload", "larger than the"),
    Case("member-smaller-than-declared", lambda k: member(k, MODEL, data=h.get(k.base, MODEL).data[:-1]), PayloadError, "payload", "smaller than the"),
]
# fmt: on


@pytest.fixture(scope="module")
def built(build_bundle: Callable[..., Path]) -> Callable[..., Path]:
    """``build_bundle`` with the target of this host by default, each distinct build made once."""
    cache: dict[tuple[tuple[str, Any], ...], Path] = {}

    def get(**options: Any) -> Path:
        options.setdefault("target", HOST_TARGET)
        key = tuple(sorted(options.items()))
        if key not in cache:
            cache[key] = build_bundle(**options)
        return cache[key]

    return get


@pytest.fixture
def kit(built: Callable[..., Path], keys: Keys, tmp_path: Path) -> Kit:
    folder = tmp_path / "bundles"
    folder.mkdir()
    return Kit(keys, built, h.unpack(built(version="1.1.0", sequence=11)), folder)


@pytest.fixture
def installed(device: Any, built: Callable[..., Path]) -> Any:
    """The device with iris 1.0.0 (sequence 10) active."""
    install_bundle(device, built(version="1.0.0", sequence=10))
    return device


def test_the_table_is_large_and_its_ids_unique() -> None:
    assert len(CASES) >= 36
    assert len({c.id for c in CASES}) == len(CASES)


def test_the_template_and_its_rebuilt_forms_install(installed: Any, kit: Kit) -> None:
    """Control: the cases break one thing each, not the way they are written."""
    assert install_bundle(installed, kit.bundle(kit.base)).manifest.version == "1.1.0"
    payload = h.with_payload(kit.base, kit.key("release"), h.payload_of(kit.base))
    assert install_bundle(installed, kit.bundle(payload)).unchanged
    bumped = h.resigned(kit.base, kit.key("release"), setting("sequence", 12))
    assert install_bundle(installed, kit.bundle(bumped)).manifest.sequence == 12


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_hostile_bundle_is_rejected_and_changes_nothing(
    case: Case, installed: Any, kit: Kit, keys: Keys
) -> None:
    if case.policy is not None:
        installed.save_policy(case.policy(keys))
    bundle = case.make(kit)
    before = h.snapshot(installed.models_dir)
    assert before["iris/current"] == "-> slots/a"
    assert "iris/state.json" in before
    now = datetime.now(timezone.utc) + timedelta(days=case.days_later)
    with pytest.raises(case.error, match=case.match) as excinfo:
        install_bundle(installed, bundle, now=now)
    assert type(excinfo.value) is case.error
    assert excinfo.value.step == case.step
    assert h.snapshot(installed.models_dir) == before
    with installed.lock():
        pass
    assert not installed.tmp_dir.exists() or not any(installed.tmp_dir.iterdir())


def test_snapshot_sees_every_kind_of_change(installed: Any) -> None:
    """The untouched-device check can fail: a changed byte, link or new file shows."""
    before = h.snapshot(installed.models_dir)
    state = installed.model_dir("iris") / "state.json"
    state.write_bytes(state.read_bytes() + b" ")
    assert h.snapshot(installed.models_dir) != before
    state.write_bytes(state.read_bytes()[:-1])
    assert h.snapshot(installed.models_dir) == before
    (installed.slot_dir("iris", "a") / "payload" / "stray").write_bytes(b"")
    assert h.snapshot(installed.models_dir) != before
    (installed.slot_dir("iris", "a") / "payload" / "stray").unlink()
    (installed.model_dir("iris") / "current").unlink()
    (installed.model_dir("iris") / "current").symlink_to("slots/b")
    assert h.snapshot(installed.models_dir) != before


def test_wrong_target_installs_when_any_target_is_allowed(installed: Any, kit: Kit) -> None:
    bundle = kit.built(version="1.1.0", sequence=11, target=OTHER_TARGET)
    result = install_bundle(installed, bundle, allow_any_target=True)
    assert result.manifest.target.profile == OTHER_TARGET
    assert installed.active_slot("iris") == "b"


def test_read_bundle_enforces_smaller_limits_before_writing(
    installed: Any, kit: Kit, tmp_path: Path
) -> None:
    bundle = kit.bundle(kit.base)
    size = bundle.stat().st_size
    for limits, match in [
        (BundleLimits(max_bundle_bytes=size - 1), f"bundle is {size} bytes"),
        (BundleLimits(max_manifest_bytes=100), "manifest.json is"),
        (BundleLimits(max_signatures_bytes=10), "signatures.json is"),
        (BundleLimits(max_members=1), "more than 1 payload files"),
    ]:
        verifier = BundleVerifier(
            installed.policy(), this_device(), now=datetime.now(timezone.utc), limits=limits
        )
        dest = tmp_path / f"dest-{hashlib.sha256(match.encode()).hexdigest()[:8]}"
        dest.mkdir()
        with pytest.raises(BundleSizeError, match=match) as excinfo:
            read_bundle(bundle, verifier, dest=dest)
        assert excinfo.value.step == "size-limits"
        assert list(dest.iterdir()) == []
    verifier = BundleVerifier(installed.policy(), this_device(), now=datetime.now(timezone.utc))
    assert read_bundle(bundle, verifier).bundle_bytes == size
