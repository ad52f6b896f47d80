"""``edgeship trust new`` / ``trust sign`` (packager/trust_doc.py) through the real CLI."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from packager.cli import main
from packager.trust_doc import read_policy
from runtime.rotation import TrustUpdate
from runtime.signing import key_id
from runtime.trust import TrustPolicy


@pytest.fixture
def run():
    runner = CliRunner()
    return lambda *args: runner.invoke(main, ["trust", *map(str, args)])


@pytest.fixture
def previous(tmp_path, keys):
    """A device's trust.toml at version 3 with a revoked key and a minimum sequence."""
    path = tmp_path / "trust.toml"
    policy = TrustPolicy.create([(keys.public("release"), "release")]).with_changes(
        version=3, revoked=frozenset({"ab" * 32}), min_sequence=40
    )
    policy.save(path)
    return path


def test_new_follows_the_previous_policy(run, keys, tmp_path, previous):
    out = tmp_path / "next.toml"
    made = run("new", "--trust", keys.pub("second"), "--previous", previous, "--out", out, "--json")
    assert made.exit_code == 0, made.output
    policy = read_policy(out)
    assert (policy.version, policy.min_sequence, policy.threshold) == (4, 40, 1)
    assert policy.revoked == frozenset({"ab" * 32})
    assert [k.keyid for k in policy.keys] == [key_id(keys.public("second"))]
    assert json.loads(made.output)["version"] == 4


def test_new_refuses_a_version_devices_would_refuse(run, keys, tmp_path, previous):
    made = run("new", "--trust", keys.pub("second"), "--previous", previous, "--version", 6,
               "--out", tmp_path / "x.toml")  # fmt: skip
    assert made.exit_code == 2 and "accept only 4 next" in made.output


def test_new_refuses_a_threshold_no_bundle_could_meet(run, keys, tmp_path):
    made = run("new", "--trust", keys.pub("second"), "--threshold", 2, "--out", tmp_path / "x")
    assert made.exit_code == 3 and "threshold 2" in made.output


def test_sign_collects_signatures_in_passes(run, keys, tmp_path):
    policy, update = tmp_path / "p.toml", tmp_path / "u.json"
    assert run("new", "--trust", keys.pub("second"), "--out", policy).exit_code == 0
    first = run("sign", policy, "--key", keys.key("release"), "--out", update, "--json")
    assert json.loads(first.output)["new_keys_signed"] == 0
    second = run("sign", update, "--key", keys.key("second"), "--out", update, "--json")
    doc = json.loads(second.output)
    assert doc["new_keys_signed"] == 1 and len(doc["signers"]) == 2
    assert len(TrustUpdate.from_bytes(update.read_bytes()).signatures) == 2


@pytest.mark.parametrize(
    ("content", "code", "message"),
    [(b"not = [toml", 3, "neither an update"), (b'{"format": 1}', 1, "exactly the fields")],
)
def test_sign_refuses_what_is_not_a_policy(run, keys, tmp_path, content, code, message):
    source = tmp_path / "source"
    source.write_bytes(content)
    signed = run("sign", source, "--key", keys.key("release"), "--out", tmp_path / "u.json")
    assert signed.exit_code == code and message in signed.output
