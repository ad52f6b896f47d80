"""devices/systemd and devices/container: the files a device runs the agent with.

The unit is checked by systemd's own verifier, and every option the unit, its example defaults
file and the container image pass to ``edgeship-device agent`` must be one the real command takes.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "devices" / "systemd" / "edgeship-agent.service"
DEFAULTS = ROOT / "devices" / "systemd" / "edgeship-agent.default"
CONTAINERFILE = ROOT / "devices" / "container" / "Containerfile"
DEVICE_COMMAND = Path(sys.executable).parent / "edgeship-device"


def parse_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Sections of a systemd unit as (key, value) lists (keys may repeat)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"{path}: stray line {raw!r}"
        current.append((key.strip(), value.strip()))
    return sections


def values(section: list[tuple[str, str]], key: str) -> list[str]:
    return [v for k, v in section if k == key]


def containerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


@pytest.fixture(scope="module")
def agent_help() -> str:
    assert DEVICE_COMMAND.is_file(), DEVICE_COMMAND
    result = subprocess.run(
        [str(DEVICE_COMMAND), "agent", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def options_of(argv: list[str]) -> list[str]:
    return [a.split("=", 1)[0] for a in argv if a.startswith("--")]


def test_unit_runs_the_agent_with_options_it_takes(agent_help):
    service = parse_unit(UNIT)["Service"]
    [exec_start] = values(service, "ExecStart")
    argv = shlex.split(exec_start)
    assert argv[0].endswith("/edgeship-device") and argv[1] == "agent"
    assert argv[-1] == "$EDGESHIP_AGENT_OPTS"  # systemd splits it into words
    options = options_of(argv)
    assert {"--serve", "--inbox"} <= set(options)
    for option in options:
        assert re.search(rf"(^|\s){re.escape(option)}\b", agent_help), option
    assert argv[argv.index("--serve") + 1] == "127.0.0.1:8080"
    assert argv[argv.index("--inbox") + 1] == "/var/lib/edgeship/inbox"


def test_example_defaults_use_options_the_agent_takes(agent_help):
    lines = [ln for ln in DEFAULTS.read_text().splitlines() if "EDGESHIP_AGENT_OPTS=" in ln]
    example = next(ln for ln in lines if ln.startswith("#"))
    [value] = shlex.split(example.split("=", 1)[1])  # the shell's quotes, as systemd reads them
    argv = value.split()
    assert set(options_of(argv)) == {"--broker", "--fleet", "--device-id", "--telemetry-interval"}
    for option in options_of(argv):
        assert re.search(rf"(^|\s){re.escape(option)}\b", agent_help), option


def test_unit_is_unprivileged_restarting_and_hardened():
    unit = parse_unit(UNIT)
    service = dict(unit["Service"])
    assert service["User"] == "edgeship" and service["Group"] == "edgeship"
    assert "edgeship" in service["StateDirectory"].split()
    assert "EDGESHIP_HOME=/var/lib/edgeship" in values(unit["Service"], "Environment")
    assert service["EnvironmentFile"] == "-/etc/default/edgeship-agent"
    assert service["Restart"] == "on-failure" and int(service["RestartSec"]) > 0
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["ReadWritePaths"] == "/var/lib/edgeship"
    assert service["PrivateTmp"] == "yes" and service["ProtectHome"] == "yes"
    assert service["CapabilityBoundingSet"] == ""
    assert dict(unit["Install"])["WantedBy"] == "multi-user.target"


def test_systemd_accepts_the_unit(tmp_path):
    """systemd-analyze verify: unknown keys, bad values and a missing command are all reported
    (the command is pointed at this checkout's edgeship-device)."""
    text = UNIT.read_text().replace("/opt/edgeship/bin/edgeship-device", str(DEVICE_COMMAND))
    unit = tmp_path / UNIT.name
    unit.write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_container_image_runs_the_agent_unprivileged(agent_help):
    steps = containerfile_instructions(CONTAINERFILE)
    final = steps[max(i for i, (word, _) in enumerate(steps) if word == "FROM") :]
    assert re.match(r"\S*python:3\.\d+-slim", final[0][1])
    args = dict(final)
    assert json.loads(args["ENTRYPOINT"]) == ["edgeship-device"]
    cmd = json.loads(args["CMD"])
    assert cmd[0] == "agent" and cmd[cmd.index("--serve") + 1] == "0.0.0.0:8080"
    for option in options_of(cmd):
        assert re.search(rf"(^|\s){re.escape(option)}\b", agent_help), option
    users = [rest for word, rest in final if word == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert "EDGESHIP_HOME=/var/lib/edgeship" in args["ENV"].split()
    assert json.loads(args["VOLUME"]) == ["/var/lib/edgeship"]
    installs = [rest for word, rest in final if word == "RUN" and "pip install" in rest]
    assert len(installs) == 1 and "[onnx]" in installs[0]
    assert not re.search(r"\[[^\]]*(host|torch|dev)", installs[0])
