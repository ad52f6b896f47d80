"""Telemetry settings from command-line options: URLs, ids, TLS files, and passwords that never
come from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from runtime.errors import UsageError
from runtime.telemetry.connection import Backoff, BrokerURL, ReconnectPolicy
from runtime.telemetry.link import TelemetrySettings
from runtime.telemetry.settings import MAX_PASSWORD_BYTES, PASSWORD_ENV


def options(tmp_path: Path, **changes: Any) -> TelemetrySettings:
    base: dict[str, Any] = {
        "broker": "mqtt://broker.local",
        "fleet": "lab",
        "device_id": "dev-7",
        "home": tmp_path,
        "environ": {},
    }
    base.update(changes)
    return TelemetrySettings.from_options(**base)


def test_defaults(tmp_path: Path) -> None:
    settings = options(tmp_path)
    assert settings.broker == BrokerURL("mqtt", "broker.local", 1883)
    assert (settings.interval_s, settings.prefix, settings.sample_inputs) == (
        10.0,
        "edgeship/v1",
        0,
    )
    assert settings.spool_path == tmp_path / "spool.sqlite"
    connection = settings.connection()
    assert connection.client_id == "dev-7" and connection.password is None
    assert options(tmp_path, broker="mqtts://[::1]").broker.port == 8883


def test_password_from_a_file_wins_over_the_environment(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    secret.chmod(0o600)
    env = {PASSWORD_ENV: "from-env"}
    with_file = options(tmp_path, username="dev-7", password_file=secret, environ=env)
    assert with_file.password == "from-file"
    assert options(tmp_path, username="dev-7", environ=env).password == "from-env"
    assert "from-file" not in repr(with_file) and "from-file" not in repr(with_file.connection())


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"broker": "mqtt://user:pw@host"}, "must not hold credentials"),
        ({"broker": "http://host"}, "mqtt:// or mqtts://"),
        ({"broker": "mqtt://host/path"}, "scheme://HOST"),
        ({"broker": "mqtt://host:99999"}, "port"),
        ({"broker": "mqtt://"}, "no host"),
        ({"device_id": "dev/1"}, "not a valid id"),
        ({"fleet": "+"}, "not a valid id"),
        ({"interval_s": 0.0}, "interval"),
        ({"prefix": "edge/#"}, "topic prefix"),
        ({"ca": "CA"}, "need an mqtts://"),
        ({"broker": "mqtts://h", "cert": "CA"}, "both --cert and --key"),
        ({"environ": {PASSWORD_ENV: "x"}}, "needs --username"),
        ({"protocol": "4"}, "protocol"),
        ({"broker": "mqtts://h", "ca": "missing.pem"}, "not a readable file"),
        ({"sample_inputs": 1000}, "sample_inputs"),
    ],
)
def test_bad_options_are_usage_errors(
    tmp_path: Path, changes: dict[str, Any], message: str
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("pem")
    for key in ("ca", "cert"):
        if changes.get(key) == "CA":
            changes[key] = ca
    if changes.get("ca") == "missing.pem":
        changes["ca"] = tmp_path / "missing.pem"
    with pytest.raises(UsageError, match=message):
        options(tmp_path, **changes)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty"),
        (b"\n\n", "empty"),
        (b"x" * (MAX_PASSWORD_BYTES + 1), "over"),
        (b"\xff\xfe", "UTF-8"),
        (None, "No such file"),
    ],
)
def test_bad_password_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "pw"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UsageError, match=message):
        options(tmp_path, username="u", password_file=path)


def test_a_readable_password_file_is_warned_about(tmp_path: Path, caplog) -> None:
    path = tmp_path / "pw"
    path.write_text("secret")
    path.chmod(0o644)
    assert options(tmp_path, username="u", password_file=path).password == "secret"
    assert "can be read by other users" in caplog.text


def test_backoff_doubles_to_the_cap_with_jitter_and_resets() -> None:
    backoff = Backoff(ReconnectPolicy(initial_s=1.0, max_s=8.0, jitter=0.25))
    delays = [backoff.next_delay() for _ in range(6)]
    for delay, base in zip(delays, (1, 2, 4, 8, 8, 8)):
        assert 0.75 * base <= delay <= base
    backoff.reset()
    assert backoff.next_delay() <= 1.0
    with pytest.raises(ValueError):
        ReconnectPolicy(initial_s=2.0, max_s=1.0)
