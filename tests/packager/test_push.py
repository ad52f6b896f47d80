"""edgeship push: to a real sshd on a loopback port (then the real edgeship-device installs it
there), and to a folder."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from packager.cli import main
from packager.push import push
from packager.ssh import SshDestination, SshSettings
from runtime.errors import PayloadError, UsageError
from tests.broker import free_port
from tests.sshd import Sshd

DEVICE_COMMAND = Path(sys.executable).parent / "edgeship-device"


def tamper_manifest(bundle: Path, out: Path) -> Path:
    """The signed manifest claims another version: well-formed, payload intact, so only the
    device's signature check can refuse it."""
    data = bytearray(bundle.read_bytes())
    end = 512 + int(data[124:136].rstrip(b"\0 "), 8)  # the manifest is the first member
    at = data.index(b'"version":"1.0.0"', 512, end)
    data[at : at + 17] = b'"version":"1.0.9"'
    out.write_bytes(bytes(data))
    return out


def damage_payload(bundle: Path, out: Path) -> Path:
    """One byte of the model file flipped: the payload no longer matches the manifest."""
    data = bytearray(bundle.read_bytes())
    offset = 0
    while data[offset] != 0:
        name = data[offset : offset + 100].rstrip(b"\0").decode()
        size = int(data[offset + 124 : offset + 136].rstrip(b"\0 "), 8)
        if name.startswith("payload/") and name.endswith(".onnx"):
            data[offset + 512 + size // 2] ^= 0xFF
            out.write_bytes(bytes(data))
            return out
        offset += 512 + -(-size // 512) * 512
    raise AssertionError("no model member")


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    with Sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server


@pytest.fixture
def run():
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(main, ["push", *map(str, args)], prog_name="edgeship")

    return invoke


@pytest.fixture
def over_ssh(sshd, device, tmp_path, run):
    """``edgeship push BUNDLE`` to this test's device home through the test sshd."""
    assert DEVICE_COMMAND.is_file(), DEVICE_COMMAND
    remote_dir = tmp_path / "remote dir 'quoted' $HOME"

    def invoke(bundle, *extra, home=device.home, folder=remote_dir):
        return run(
            bundle,
            "--to",
            sshd.url(str(folder)),
            *sshd.client_args(),
            "--remote-command",
            DEVICE_COMMAND,
            "--remote-home",
            home,
            *extra,
        )

    invoke.remote_dir = remote_dir
    return invoke


def test_good_bundle_installs_remotely_and_reports(over_ssh, device, build_bundle):
    bundle = build_bundle("1.0.0", 10)
    result = over_ssh(bundle, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    landed = over_ssh.remote_dir / "iris-1.0.0-x86_64-generic.eship"
    assert doc["path"] == str(landed) and doc["installed"] is True
    remote = doc["remote"]
    assert (remote["name"], remote["version"], remote["sequence"]) == ("iris", "1.0.0", 10)
    assert remote["slot"] == "a" and remote["selftest"]["passed"]
    assert landed.read_bytes() == bundle.read_bytes()
    assert sorted(p.name for p in over_ssh.remote_dir.iterdir()) == [landed.name]
    assert device.active_slot("iris") == "a"

    again = over_ssh(bundle)
    assert again.exit_code == 0, again.output
    assert "already active (slot a)" in again.stdout


def test_human_output_names_the_installed_version(over_ssh, build_bundle):
    result = over_ssh(build_bundle("1.0.0", 10))
    assert result.exit_code == 0, result.output
    assert "installed iris 1.0.0 (sequence 10) in slot a; self-test passed" in result.stdout


def test_tampered_bundle_is_refused_remotely(over_ssh, device, build_bundle, tmp_path):
    bad = tamper_manifest(build_bundle("1.0.0", 10), tmp_path / "bad.eship")
    result = over_ssh(bad)
    assert result.exit_code == 1, result.output
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("edgeship: error: ssh://") and "install failed: signatures:" in line
    assert device.active_slot("iris") is None


def test_a_lower_sequence_is_refused_remotely(over_ssh, device, build_bundle):
    assert over_ssh(build_bundle("1.1.0", 20)).exit_code == 0
    result = over_ssh(build_bundle("1.0.0", 10))
    assert result.exit_code == 1
    assert "install failed: sequence:" in result.stderr
    assert device.slot_manifest("iris", "a").version == "1.1.0"


def test_the_device_exit_code_is_passed_on(over_ssh, build_bundle, tmp_path):
    result = over_ssh(build_bundle("1.0.0", 10), home=tmp_path / "never-initialized")
    assert result.exit_code == 3, result.output  # the device's trust policy is missing
    assert "install failed:" in result.stderr and "trust" in result.stderr


def test_a_damaged_bundle_is_not_sent(over_ssh, build_bundle, tmp_path):
    bad = damage_payload(build_bundle("1.0.0", 10), tmp_path / "bad.eship")
    result = over_ssh(bad)
    assert result.exit_code == 1
    assert "payload:" in result.stderr and "not sent" in result.stderr
    assert not over_ssh.remote_dir.exists()


def test_closed_port_is_a_transport_error(run, sshd, build_bundle, tmp_path):
    url = f"ssh://{sshd.user}@127.0.0.1:{free_port()}/{tmp_path}/x"
    result = run(build_bundle("1.0.0", 10), "--to", url, *sshd.client_args())
    assert result.exit_code == 7, result.output
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("edgeship: error: ssh to ") and "Connection refused" in line


def test_a_wrong_key_is_a_transport_error(run, sshd, build_bundle, tmp_path):
    from tests.sshd import keygen

    stranger = keygen(tmp_path / "stranger")
    args = sshd.client_args()
    args[1] = str(stranger)
    result = run(build_bundle("1.0.0", 10), "--to", sshd.url(str(tmp_path / "x")), *args)
    assert result.exit_code == 7, result.output
    assert "Permission denied" in result.stderr


def test_a_missing_remote_command_is_a_transport_error(over_ssh, build_bundle, tmp_path):
    missing = tmp_path / "no-such-command"
    result = over_ssh(build_bundle("1.0.0", 10), "--remote-command", missing)
    assert result.exit_code == 7, result.output
    assert "install ended with status 127" in result.stderr


def test_no_install_only_copies(over_ssh, device, build_bundle):
    bundle = build_bundle("1.0.0", 10)
    result = over_ssh(bundle, "--no-install", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["installed"] is False and doc["remote"] is None
    assert Path(doc["path"]).read_bytes() == bundle.read_bytes()
    assert device.active_slot("iris") is None


def test_folder_push_writes_only_complete_files(build_bundle, tmp_path):
    bundle = build_bundle("1.0.0", 10)
    folder = tmp_path / "sdcard"
    folder.mkdir()
    final = folder / "iris-1.0.0-x86_64-generic.eship"
    part = folder / f".{final.name}.part"
    seen = []

    def progress(done, total):
        seen.append((done, total, final.exists(), part.exists()))

    result = push(bundle, str(folder), progress=progress)
    assert seen and seen[-1][0] == seen[-1][1] == bundle.stat().st_size
    assert all(not final_exists and part_exists for _, _, final_exists, part_exists in seen)
    assert result.path == str(final) and result.remote is None
    assert final.read_bytes() == bundle.read_bytes()
    assert sorted(p.name for p in folder.iterdir()) == [final.name]


def test_folder_push_through_the_cli(run, build_bundle, tmp_path, device):
    from runtime.inbox import Inbox

    bundle = build_bundle("1.0.0", 10)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    result = run(bundle, "--to", inbox, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["path"] == str(inbox / bundle.name)
    watcher = Inbox(device, inbox)
    watcher.poll_once()
    assert [r.ok for r in watcher.poll_once()] == [True]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--to", "{tmp}/missing"], 2, "is not a folder"),
        (["--to", "http://host/x"], 2, "only ssh:// destinations"),
        (["--to", "ssh://host"], 2, "name the remote folder"),
        (["--to", "ssh://-oProxyCommand=x/p"], 2, "may not start with '-'"),
        (["--to", "ssh://host:99999/p"], 2, "bad port"),
        (["--to", "{tmp}", "--remote-home", "/x"], 2, "ssh:// destinations only"),
    ],
)
def test_bad_destinations_are_usage_errors(run, build_bundle, tmp_path, args, code, message):
    args = [a.format(tmp=tmp_path) for a in args]
    result = run(build_bundle("1.0.0", 10), *args)
    assert result.exit_code == code, result.output
    assert message in result.stderr


def test_a_missing_bundle_is_a_usage_error(run, tmp_path):
    result = run(tmp_path / "nope.eship", "--to", tmp_path)
    assert result.exit_code == 2 and "cannot read" in result.stderr


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("ssh://pi@dev-7/var/lib/edgeship/inbox", ("dev-7", "/var/lib/edgeship/inbox", "pi", None)),
        ("ssh://dev-7:2222/srv/x", ("dev-7", "/srv/x", None, 2222)),
        ("ssh://pi@[::1]:22/~/bundles", ("::1", "bundles", "pi", 22)),
        ("ssh://pi@dev-7/~", ("dev-7", ".", "pi", None)),
        ("ssh://pi@dev-7/my%20dir", ("dev-7", "/my dir", "pi", None)),
    ],
)
def test_ssh_urls(url, expected):
    d = SshDestination.parse(url)
    assert (d.host, d.path, d.user, d.port) == expected


def test_ssh_settings_refused_for_a_folder(build_bundle, tmp_path):
    with pytest.raises(UsageError):
        push(build_bundle("1.0.0", 10), str(tmp_path), SshSettings(options=("A=b",)))


def test_damaged_bundle_refused_by_the_library(build_bundle, tmp_path):
    bad = damage_payload(build_bundle("1.0.0", 10), tmp_path / "bad.eship")
    with pytest.raises(PayloadError):
        push(bad, str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.eship"]
