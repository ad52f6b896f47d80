"""Telemetry settings: where to send, as whom, how often, and the limits (docs/telemetry.md).

:meth:`TelemetrySettings.from_options` turns the agent's command-line options into settings. The
MQTT password is read from a file (``--password-file``) or the ``EDGESHIP_MQTT_PASSWORD``
environment variable, never taken from the command line, where every user of the machine could
read it in the process list.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional

from runtime.errors import TelemetryMessageError, UsageError
from runtime.telemetry.connection import PROTOCOLS, BrokerURL, ConnectionOptions, ReconnectPolicy
from runtime.telemetry.messages import DEFAULT_PREFIX, check_id
from runtime.telemetry.spool import SpoolLimits
from runtime.telemetry.window import MAX_SAMPLE_INPUTS, WindowLimits

log = logging.getLogger(__name__)

PASSWORD_ENV = "EDGESHIP_MQTT_PASSWORD"  # noqa: S105 - a variable name, not a password
MAX_PASSWORD_BYTES = 4096
"""Largest password file read (bytes)."""
MIN_INTERVAL_S = 0.05
MAX_INTERVAL_S = 86_400.0
PREFIX_RE = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+){0,7}$")
"""Topic prefix: up to eight levels of letters, digits, '.', '_', '-' (no wildcards)."""


@dataclass(frozen=True)
class TelemetrySettings:
    """Everything a :class:`~runtime.telemetry.link.TelemetryLink` needs. Raises UsageError for
    settings that cannot work (bad ids, TLS files without ``mqtts``, a password without a user)."""

    broker: BrokerURL
    fleet: str
    device_id: str
    home: Path
    """The device store; the spool is ``home/spool.sqlite``."""
    interval_s: float = 10.0
    """Length of a telemetry window (seconds)."""
    prefix: str = DEFAULT_PREFIX
    username: Optional[str] = None
    password: Optional[str] = field(default=None, repr=False)
    ca: Optional[Path] = None
    cert: Optional[Path] = None
    key: Optional[Path] = None
    protocol: str = "auto"
    """``auto`` (MQTT 5, falling back to 3.1.1 when the broker refuses 5), ``5`` or ``3.1.1``."""
    client_id: Optional[str] = None
    """MQTT client id; default: the device id (what per-client ACL patterns like ``%c`` match)."""
    sample_inputs: int = 0
    """Raw input rows per model and window sent with telemetry. 0, the default, keeps raw inputs
    on the device: only aggregates leave it. Anything above 0 sends request data to the broker."""
    spool: SpoolLimits = field(default_factory=SpoolLimits)
    window: WindowLimits = field(default_factory=WindowLimits)
    reconnect: ReconnectPolicy = field(default_factory=ReconnectPolicy)
    max_inflight: int = 20
    """Spooled messages sent and not yet acknowledged, at most."""
    keepalive_s: int = 30

    def __post_init__(self) -> None:
        for value, what in ((self.fleet, "fleet"), (self.device_id, "device id")):
            try:
                check_id(value, what)
            except TelemetryMessageError as e:
                raise UsageError(str(e)) from e
        if not PREFIX_RE.match(self.prefix):
            raise UsageError(
                f"topic prefix {self.prefix!r} must be levels of letters, digits, "
                "'.', '_' or '-' separated by '/'"
            )
        if not MIN_INTERVAL_S <= self.interval_s <= MAX_INTERVAL_S:
            raise UsageError(
                f"the telemetry interval must be between {MIN_INTERVAL_S} and "
                f"{MAX_INTERVAL_S:.0f} seconds"
            )
        if self.protocol not in PROTOCOLS:
            raise UsageError(f"MQTT protocol must be one of {', '.join(PROTOCOLS)}")
        if not self.broker.tls and (self.ca or self.cert or self.key):
            raise UsageError("--ca, --cert and --key need an mqtts:// broker URL")
        if (self.cert is None) != (self.key is None):
            raise UsageError("a client certificate needs both --cert and --key")
        if self.password is not None and not self.username:
            raise UsageError(f"a password (file or {PASSWORD_ENV}) needs --username")
        if not 0 <= self.sample_inputs <= MAX_SAMPLE_INPUTS:
            raise UsageError(f"sample_inputs must be between 0 and {MAX_SAMPLE_INPUTS}")

    @property
    def spool_path(self) -> Path:
        return self.home / "spool.sqlite"

    def connection(self) -> ConnectionOptions:
        """The MQTT connection options these settings describe."""
        return ConnectionOptions(
            url=self.broker,
            client_id=self.client_id or self.device_id,
            username=self.username,
            password=self.password,
            ca=self.ca,
            cert=self.cert,
            key=self.key,
            protocol=self.protocol,
            keepalive_s=self.keepalive_s,
            max_inflight=self.max_inflight,
            reconnect=self.reconnect,
        )

    @classmethod
    def from_options(
        cls,
        *,
        broker: str,
        fleet: str,
        device_id: str,
        home: Path,
        interval_s: float = 10.0,
        prefix: str = DEFAULT_PREFIX,
        username: Optional[str] = None,
        password_file: Optional[Path] = None,
        ca: Optional[Path] = None,
        cert: Optional[Path] = None,
        key: Optional[Path] = None,
        protocol: str = "auto",
        sample_inputs: int = 0,
        environ: Optional[Mapping[str, str]] = None,
    ) -> TelemetrySettings:
        """Settings from command-line options. The password comes from ``password_file`` or,
        without one, from ``$EDGESHIP_MQTT_PASSWORD`` (``environ`` defaults to os.environ).

        Raises UsageError for a bad URL, id or interval, a missing or unreadable file, an
        oversized or empty password file, or options that do not go together.
        """
        try:
            url = BrokerURL.parse(broker)
        except ValueError as e:
            raise UsageError(str(e)) from e
        for path, what in ((ca, "--ca"), (cert, "--cert"), (key, "--key")):
            if path is not None and not os.access(path, os.R_OK):
                raise UsageError(f"{what} {path}: not a readable file")
        env = os.environ if environ is None else environ
        if password_file is not None:
            password: Optional[str] = read_password(password_file)
        else:
            password = env.get(PASSWORD_ENV) or None
        return cls(
            broker=url,
            fleet=fleet,
            device_id=device_id,
            home=home,
            interval_s=interval_s,
            prefix=prefix.strip("/"),
            username=username,
            password=password,
            ca=ca,
            cert=cert,
            key=key,
            protocol=protocol,
            sample_inputs=sample_inputs,
        )


def read_password(path: Path) -> str:
    """The first line of ``path`` (at most MAX_PASSWORD_BYTES); raises UsageError."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_PASSWORD_BYTES + 1)
            mode = os.fstat(f.fileno()).st_mode
    except OSError as e:
        raise UsageError(f"password file {path}: {e.strerror or e}") from e
    if len(data) > MAX_PASSWORD_BYTES:
        raise UsageError(f"password file {path} is over {MAX_PASSWORD_BYTES} bytes")
    try:
        password = data.decode("utf-8").splitlines()[0] if data.strip() else ""
    except UnicodeDecodeError as e:
        raise UsageError(f"password file {path} is not UTF-8 text") from e
    if not password:
        raise UsageError(f"password file {path} is empty")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("password file %s can be read by other users (chmod 600 it)", path)
    return password
