"""Key lifecycle on a real device store: rotating the signing key with a signed trust policy
update, revoking a compromised key, and threshold (2-of-3) signing (runtime/rotation.py).

Bundles are one real build, re-signed with the keys each case needs (tests/runtime/hostile.py).
Host commands run through ``edgeship trust``, device commands through ``edgeship-device``.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any, Callable

import pytest
from click.testing import CliRunner

from packager.cli import main as host_main
from packager.keys import load_private_key
from runtime.canonical import canonical_bytes
from runtime.cli import main as device_main
from runtime.errors import SignatureError, TrustUpdateError
from runtime.install import install_bundle, rollback
from runtime.limits import TrustUpdateLimits
from runtime.rotation import TrustUpdate, apply_updates, check_update, policy_bytes
from runtime.signing import PAYLOAD_TYPE, Signature, key_id, sign
from runtime.store import Store
from runtime.trust import TrustPolicy
from tests.conftest import Keys
from tests.runtime import hostile as h

ABC = ("release", "second", "third")


@pytest.fixture(scope="module")
def base(build_bundle: Callable[..., Path]) -> list[h.Member]:
    return h.unpack(build_bundle("1.0.0", 10))


@pytest.fixture
def bundle(base: list[h.Member], keys: Keys, tmp_path: Path) -> Callable[..., Path]:
    """``bundle(sequence, *key_names)``: the iris bundle at that sequence, signed by those keys
    (in order; a name given twice signs twice)."""

    def make(sequence: int, *names: str) -> Path:
        def edit(doc: dict[str, Any]) -> None:
            doc["sequence"] = sequence
            doc["version"] = f"1.0.{sequence}"

        members = h.resigned(base, [keys.key(n) for n in names], edit)
        return h.write(tmp_path / f"iris-{sequence}-{'-'.join(names)}.eship", h.pack(members))

    return make


def kid(keys: Keys, name: str) -> str:
    return key_id(keys.public(name))


def policy(keys: Keys, names: tuple[str, ...], threshold: int = 1, **changes: Any) -> TrustPolicy:
    made = TrustPolicy.create([(keys.public(n), n) for n in names], threshold)
    return made.with_changes(**changes)


def update(keys: Keys, new: TrustPolicy, *signers: str) -> TrustUpdate:
    return TrustUpdate.unsigned(new).signed_by(load_private_key(keys.key(n)) for n in signers)


def write_update(folder: Path, upd: TrustUpdate) -> Path:
    path = folder / f"trust-v{upd.policy.version}-{len(list(folder.iterdir()))}.json"
    path.write_bytes(upd.to_bytes())
    return path


def store_with(tmp_path: Path, start: TrustPolicy) -> Store:
    store = Store(tmp_path / "device")
    store.save_policy(start)
    return store


def install(store: Store, path: Path) -> Any:
    return install_bundle(store, path, allow_any_target=True)


@pytest.fixture
def cli(tmp_path: Path) -> Callable[..., Any]:
    runner = CliRunner()
    home = tmp_path / "home"

    def invoke(side: str, *args: str) -> Any:
        if side == "host":
            return runner.invoke(host_main, list(args))
        return runner.invoke(device_main, [*args, "--home", str(home)])

    return invoke


# --- rotation ----------------------------------------------------------------------------------


def test_rotate_from_a_to_b_end_to_end(cli, keys, bundle, iris, tmp_path):
    a_old, b_new, a_after = bundle(10, "release"), bundle(11, "second"), bundle(12, "release")
    assert cli("device", "init", "--trust", str(keys.pub("release"))).exit_code == 0
    assert cli("device", "install", str(a_old), "--allow-any-target").exit_code == 0

    new_toml, signed = tmp_path / "new.toml", tmp_path / "rotate.json"
    made = cli("host", "trust", "new", "--trust", str(keys.pub("second")), "--out", str(new_toml))
    assert made.exit_code == 0, made.output
    for key in ("release", "second"):  # the two key holders sign in turn
        source = signed if signed.exists() else new_toml
        out = cli(
            "host",
            "trust",
            "sign",
            str(source),
            "--key",
            str(keys.key(key)),
            "--out",
            str(signed),
            "--json",
        )
        assert out.exit_code == 0, out.output
    assert json.loads(out.output)["signers"] == sorted([kid(keys, "release"), kid(keys, "second")])

    applied = cli("device", "trust", "update", str(signed), "--json")
    assert applied.exit_code == 0, applied.output
    doc = json.loads(applied.output)
    assert (doc["previous_version"], doc["version"]) == (1, 2)
    assert [k["id"] for k in doc["keys"]] == [kid(keys, "second")]

    # the model installed before the rotation keeps serving
    served = cli("device", "predict", "iris", "--input", str(iris["rows"]), "--json")
    assert served.exit_code == 0, served.output
    assert json.loads(served.output)["version"] == "1.0.10"
    # bundles signed by the new key install; bundles signed only by the old one are refused
    assert cli("device", "install", str(b_new), "--allow-any-target").exit_code == 0
    refused = cli("device", "install", str(a_after), "--allow-any-target")
    assert refused.exit_code == 1
    assert "signatures:" in refused.output and "untrusted" in refused.output
    shown = json.loads(cli("device", "trust", "show", "--json").output)
    assert shown["version"] == 2 and shown["threshold"] == 1
    # the previous slot was signed by the retired key: rolling back to it is refused as well
    assert cli("device", "rollback", "iris").exit_code == 1


@pytest.mark.parametrize(("signers", "missing"), [(("second",), "current"), (("release",), "new")])
def test_rotation_needs_old_and_new_keys(keys, tmp_path, signers, missing):
    store = store_with(tmp_path, policy(keys, ("release",)))
    before = store.trust_path.read_bytes()
    upd = update(keys, policy(keys, ("second",), version=2), *signers)
    with pytest.raises(TrustUpdateError, match=f"signed by 0 of the {missing} policy's keys"):
        apply_updates(store, [write_update(tmp_path, upd)])
    assert store.trust_path.read_bytes() == before


def test_old_bundles_still_install_while_their_key_stays_trusted(keys, bundle, tmp_path):
    store = store_with(tmp_path, policy(keys, ("release",)))
    install(store, bundle(10, "release"))
    install(store, bundle(11, "release"))
    add_b = update(keys, policy(keys, ("release", "second"), version=2), "release", "second")
    apply_updates(store, [write_update(tmp_path, add_b)])
    assert rollback(store, "iris").to_version == "1.0.10"
    assert install(store, bundle(12, "second")).manifest.sequence == 12
    assert install(store, bundle(13, "release")).manifest.sequence == 13


def test_replayed_older_and_skipping_versions_are_refused(keys, tmp_path):
    store = store_with(tmp_path, policy(keys, ("release",)))
    ab = ("release", "second")
    v2 = write_update(tmp_path, update(keys, policy(keys, ab, version=2), *ab))
    v3 = write_update(tmp_path, update(keys, policy(keys, ab, 2, version=3), *ab))
    v4 = write_update(tmp_path, update(keys, policy(keys, ab, 2, version=4, min_sequence=5), *ab))
    v1 = write_update(tmp_path, update(keys, policy(keys, ab, version=1), *ab))
    with pytest.raises(TrustUpdateError, match="apply version 2 first"):
        apply_updates(store, [v3])
    assert apply_updates(store, [v2]).policy.version == 2
    for stale in (v2, v1):
        with pytest.raises(TrustUpdateError, match="old or replayed"):
            apply_updates(store, [stale])
    with pytest.raises(TrustUpdateError, match="apply version 3 first"):
        apply_updates(store, [v4])
    # a chain is applied in order, all or nothing
    with pytest.raises(TrustUpdateError, match="old or replayed"):
        apply_updates(store, [v3, v2])
    assert store.policy().version == 2
    result = apply_updates(store, [v3, v4])
    assert (result.previous_version, result.applied, store.policy().version) == (2, 2, 4)
    assert store.policy().min_sequence == 5 and store.policy().threshold == 2


def test_trust_update_cli_refusal_leaves_the_policy(cli, keys, tmp_path):
    assert cli("device", "init", "--trust", str(keys.pub("release"))).exit_code == 0
    upd = update(keys, policy(keys, ("stranger",), version=2), "stranger")
    refused = cli("device", "trust", "update", str(write_update(tmp_path, upd)))
    assert refused.exit_code == 1 and "signed by 0 of the current policy's keys" in refused.output
    assert json.loads(cli("device", "trust", "show", "--json").output)["version"] == 1
    assert cli("device", "trust", "update", str(tmp_path / "missing.json")).exit_code == 2


# --- revocation --------------------------------------------------------------------------------


def test_revoked_key_fails_at_the_signatures_step(cli, keys, bundle, tmp_path):
    args = [a for n in ABC for a in ("--trust", str(keys.pub(n)))]
    assert cli("device", "init", *args).exit_code == 0
    assert cli("device", "install", str(bundle(10, "third")), "--allow-any-target").exit_code == 0

    new_toml, signed = tmp_path / "revoke.toml", tmp_path / "revoke.json"
    made = cli(
        "host",
        "trust",
        "new",
        *args,
        "--revoke",
        kid(keys, "third"),
        "--previous",
        str(tmp_path / "home" / "trust.toml"),
        "--out",
        str(new_toml),
    )
    assert made.exit_code == 0, made.output
    assert (
        cli(
            "host",
            "trust",
            "sign",
            str(new_toml),
            "--key",
            str(keys.key("release")),
            "--out",
            str(signed),
        ).exit_code
        == 0
    )
    assert cli("device", "trust", "update", str(signed)).exit_code == 0

    refused = cli("device", "install", str(bundle(11, "third")), "--allow-any-target")
    assert refused.exit_code == 1
    assert "error: signatures:" in refused.output and "revoked" in refused.output
    assert cli("device", "install", str(bundle(12, "second")), "--allow-any-target").exit_code == 0
    shown = cli("device", "trust", "show")
    assert "REVOKED" in shown.output and "version 2" in shown.output


def test_a_revoked_key_cannot_approve_the_next_policy(keys, tmp_path):
    store = store_with(tmp_path, policy(keys, ABC, 2))
    revoke_c = policy(keys, ABC, 2, version=2, revoked=frozenset({kid(keys, "third")}))
    apply_updates(store, [write_update(tmp_path, update(keys, revoke_c, "release", "second"))])
    again = policy(keys, ABC, 2, version=3, revoked=revoke_c.revoked)
    with pytest.raises(TrustUpdateError, match=r"signed by 1 of the current.*1 by revoked"):
        apply_updates(store, [write_update(tmp_path, update(keys, again, "release", "third"))])
    assert store.policy().version == 2


# --- threshold 2-of-3 ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("signers", "accepted"),
    [
        (("release",), False),
        (("release", "release"), False),  # the same key twice counts once
        (("release", "stranger"), False),
        (("release", "second"), True),
        (("second", "third"), True),
        (("third", "release", "second"), True),
    ],
)
def test_two_of_three(keys, bundle, tmp_path, signers, accepted):
    store = store_with(tmp_path, policy(keys, ABC, 2))
    path = bundle(10, *signers)
    if accepted:
        assert len(install(store, path).signers) == len(set(signers))
    else:
        with pytest.raises(SignatureError, match="2 required"):
            install(store, path)
        assert store.names() == []


@pytest.mark.parametrize(
    ("signers", "accepted"),
    [(("release",), False), (("release", "release"), False), (("second", "third"), True)],
)
def test_two_of_three_updates(keys, tmp_path, signers, accepted):
    store = store_with(tmp_path, policy(keys, ABC, 2))
    upd = write_update(tmp_path, update(keys, policy(keys, ABC, 2, version=2), *signers))
    if accepted:
        assert apply_updates(store, [upd]).policy.version == 2
    else:
        with pytest.raises(TrustUpdateError, match="signed by 1 of the current"):
            apply_updates(store, [upd])


# --- the update document -------------------------------------------------------------------------


def _doc(upd: TrustUpdate) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(upd.to_bytes())
    return doc


def _with_body(upd: TrustUpdate, keys: Keys, body: bytes) -> bytes:
    doc = _doc(upd)
    doc["payload"] = base64.b64encode(body).decode()
    doc["signatures"] = [
        sign(
            body, load_private_key(keys.key("release")), "application/vnd.edgeship.trust+json"
        ).to_dict()
    ]
    return json.dumps(doc).encode()


def _edit(**fields: Any) -> Callable[[TrustUpdate, Keys], bytes]:
    def make(upd: TrustUpdate, _keys: Keys) -> bytes:
        return json.dumps({**_doc(upd), **fields}).encode()

    return make


def _policy_edit(change: Callable[[dict[str, Any]], None]) -> Callable[[TrustUpdate, Keys], bytes]:
    def make(upd: TrustUpdate, keys: Keys) -> bytes:
        doc = upd.policy.to_dict()
        change(doc)
        return _with_body(upd, keys, canonical_bytes(doc))

    return make


def _manifest_typed(upd: TrustUpdate, keys: Keys) -> bytes:
    """Signed by the right key over the right bytes, but as a bundle manifest."""
    sig = sign(upd.body, load_private_key(keys.key("release")), PAYLOAD_TYPE)
    return json.dumps({**_doc(upd), "signatures": [sig.to_dict()]}).encode()


HOSTILE_UPDATES: dict[str, tuple[Callable[[TrustUpdate, Keys], bytes], str]] = {
    "not-json": (lambda u, k: b"\xff{", "not JSON"),
    "a-list": (lambda u, k: b"[]", "exactly the fields"),
    "extra-field": (_edit(note="hi"), "exactly the fields"),
    "format": (_edit(format="edgeship.trust-update/v9"), "format must be"),
    "payload-type": (_edit(payloadType=PAYLOAD_TYPE), "payloadType must be"),
    "payload-not-b64": (_edit(payload="***"), "payload: not base64"),
    "no-signatures": (_edit(signatures=[]), "no signatures"),
    "sig-not-b64": (_edit(signatures=[{"keyid": "0" * 64, "sig": "!"}]), "sig: not base64"),
    "sig-short": (_edit(signatures=[{"keyid": "0" * 64, "sig": "AAAA"}]), "not an Ed25519"),
    "keyid-upper": (_edit(signatures=[{"keyid": "A" * 64, "sig": "A" * 88}]), "64 lowercase"),
    "sig-extra": (_edit(signatures=[{"keyid": "0" * 64, "sig": "", "x": 1}]), "exactly the"),
    "too-many": (_edit(signatures=[{"keyid": "0" * 64, "sig": ""}] * 17), "more than 16"),
    "duplicate-key": (lambda u, k: b'{"format":1,"format":2}', "appears twice"),
    "nan": (lambda u, k: b'{"format":NaN}', "not JSON"),
    "oversized": (lambda u, k: b" " * (256 * 1024 + 1), "larger than"),
    "body-not-canonical": (lambda u, k: _with_body(u, k, u.body + b" "), "canonical"),
    "body-extra": (_policy_edit(lambda d: d.update(extra=1)), "must have exactly"),
    "body-missing": (_policy_edit(lambda d: d.pop("min_sequence")), "must have exactly"),
    "body-key-id-wrong": (_policy_edit(lambda d: d["keys"][0].update(id="0" * 64)), "match"),
    "body-key-short": (_policy_edit(lambda d: d["keys"][0].update(ed25519="AAAA")), "Ed25519"),
    "body-key-no-name": (_policy_edit(lambda d: d["keys"][0].pop("name")), "exactly"),
    "body-threshold": (_policy_edit(lambda d: d.update(threshold=9)), "threshold 9"),
    "body-version-bool": (_policy_edit(lambda d: d.update(version=True)), "version must"),
    "body-revoked-bad": (_policy_edit(lambda d: d.update(revoked=["x"])), "revoked key id"),
    "body-keys-many": (_policy_edit(lambda d: d.update(keys=d["keys"] * 65)), "at most 64"),
    "manifest-typed-signature": (_manifest_typed, "signed by 0 of the current"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_UPDATES))
def test_hostile_updates_are_refused(keys, tmp_path, case):
    store = store_with(tmp_path, policy(keys, ("release",)))
    before = store.trust_path.read_bytes()
    make, message = HOSTILE_UPDATES[case]
    good = update(keys, policy(keys, ("release",), version=2), "release")
    path = tmp_path / "hostile.json"
    path.write_bytes(make(good, keys))
    with pytest.raises(TrustUpdateError, match=message):
        apply_updates(store, [path])
    assert store.trust_path.read_bytes() == before


def test_limits_are_configurable(keys):
    upd = update(keys, policy(keys, ("release",), version=2), "release")
    with pytest.raises(TrustUpdateError, match="larger than 100 bytes"):
        TrustUpdate.from_bytes(upd.to_bytes(), TrustUpdateLimits(max_document_bytes=100))
    assert TrustUpdate.from_bytes(upd.to_bytes()).body == policy_bytes(upd.policy)


def test_signing_again_replaces_a_keys_signature(keys):
    upd = update(keys, policy(keys, ("release",), version=2), "release", "release", "second")
    assert sorted(s.keyid for s in upd.signatures) == sorted(
        [kid(keys, "release"), kid(keys, "second")]
    )
    assert isinstance(upd.signatures[0], Signature)


def test_check_update_is_pure_and_returns_the_new_policy(keys):
    current = policy(keys, ("release",))
    upd = update(keys, policy(keys, ("second",), version=2), "release", "second")
    assert check_update(current, upd).version == 2
    assert check_update(current, TrustUpdate.from_bytes(upd.to_bytes())).keys[0].name == "second"


def test_policies_without_a_version_load_as_version_1(keys, tmp_path):
    store = store_with(tmp_path, policy(keys, ("release",)))
    text = store.trust_path.read_text()
    store.trust_path.write_text("\n".join(x for x in text.splitlines() if "version" not in x))
    assert store.policy().version == 1
    upd = update(keys, policy(keys, ("release",), version=2), "release")
    assert apply_updates(store, [write_update(tmp_path, upd)]).previous_version == 1
    assert "version = 2" in store.trust_path.read_text()
