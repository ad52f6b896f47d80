"""``edgeship fleet monitor|status|alerts``: thin commands over packager/fleet."""

from __future__ import annotations

import gc
import json
import logging
import os
import signal
import socket
from pathlib import Path
from typing import Any, Optional

import click

from packager.fleet.connection import BrokerSettings
from packager.fleet.hooks import HookRunner
from packager.fleet.logs import setup_logging
from packager.fleet.monitor import Monitor, MonitorSettings
from packager.fleet.rules import Rule, load_rules
from packager.fleet.status import alert_rows, alerts_table, fleet_status, status_table
from packager.fleet.store import DEFAULT_DB, open_store, redact
from packager.fleet.writer import GC_THRESHOLDS, WriterSettings
from runtime.cli import emit, json_option
from runtime.errors import UsageError
from runtime.telemetry.messages import DEFAULT_PREFIX, ID_RE

PASSWORD_ENV = "EDGESHIP_MQTT_PASSWORD"  # noqa: S105 - a variable name
MAX_PASSWORD_BYTES = 4096

db_option = click.option(
    "--db",
    default=DEFAULT_DB,
    show_default=True,
    envvar="EDGESHIP_FLEET_DB",
    help="Fleet database: sqlite:///PATH.db or postgresql://USER@HOST:PORT/DB "
    "(env EDGESHIP_FLEET_DB).",
)
_file = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.group()
def fleet() -> None:
    """Watch the fleet: ingest device telemetry, show devices and alerts."""


def _password(path: Optional[Path]) -> Optional[str]:
    if path is None:
        return os.environ.get(PASSWORD_ENV)
    data = path.read_bytes()[: MAX_PASSWORD_BYTES + 1]
    if len(data) > MAX_PASSWORD_BYTES:
        raise UsageError(f"{path}: a password file holds at most {MAX_PASSWORD_BYTES} bytes")
    return data.decode("utf-8", "replace").rstrip("\r\n")


def _check_group(_ctx: click.Context, _param: click.Parameter, value: Optional[str]) -> Any:
    if value is not None and not ID_RE.match(value):
        raise click.BadParameter("letters, digits, '.', '_', '-' (at most 64)")
    return value


def _summary(counts: dict[str, Any]) -> str:
    reasons = ", ".join(f"{k} {v}" for k, v in counts["bad_by_reason"].items())
    lag = "" if counts["lag_p99_ms"] is None else f", lag p99 {counts['lag_p99_ms']:.0f} ms"
    return (
        f"monitor stopped: received {counts['received']}, stored {counts['stored']}, "
        f"duplicates {counts['duplicates']}, bad {counts['bad']}"
        + (f" ({reasons})" if reasons else "")
        + f", alerts opened {counts['alerts_opened']}, cleared {counts['alerts_cleared']}{lag}"
    )


@fleet.command()
@click.option(
    "--broker", required=True, metavar="URL", help="mqtt://HOST:PORT or mqtts://HOST:PORT."
)
@db_option
@click.option("--prefix", default=DEFAULT_PREFIX, show_default=True, help="Topic prefix.")
@click.option("--share", metavar="GROUP", callback=_check_group,
              help="Split telemetry and events with other monitors of this shared "
                   "subscription group (MQTT 5).")  # fmt: skip
@click.option("--client-id", metavar="ID",
              help="MQTT client id, naming the persistent session; unique per monitor process "
                   "[default: edgeship-monitor-HOSTNAME].")  # fmt: skip
@click.option("--username", help="Broker user name.")
@click.option("--password-file", type=_file, help=f"File holding the broker password (or env {PASSWORD_ENV}).")  # fmt: skip  # noqa: E501
@click.option("--ca", type=_file, help="CA certificates the broker's certificate must chain to.")
@click.option("--cert", type=_file, help="Client certificate (PEM).")
@click.option("--key", type=_file, help="Client certificate's private key (PEM).")
@click.option("--rules", type=_file, help="Alert rules (TOML, docs/fleet.md).")
@click.option("--hook", metavar="CMD", help="Command run for each opened alert, alert JSON on stdin.")  # fmt: skip  # noqa: E501
@click.option("--hook-timeout", default=60.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds a hook may run before it is killed.")  # fmt: skip
@click.option("--check-interval", default=5.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds between checks of the offline and version-skew rules.")  # fmt: skip
@click.option("--json-log", is_flag=True, help="Log lines (stderr) and the summary as JSON.")
def monitor(broker: str, db: str, prefix: str, share: Optional[str], client_id: Optional[str],
            username: Optional[str], password_file: Optional[Path], ca: Optional[Path],
            cert: Optional[Path], key: Optional[Path], rules: Optional[Path], hook: Optional[str],
            hook_timeout: float, check_interval: float, json_log: bool) -> None:  # fmt: skip
    """Subscribe to every device, store its messages, judge the alert rules.

    Runs until SIGTERM or SIGINT, then stores what it holds and prints a summary.
    """
    setup_logging(json_log)
    gc.set_threshold(*GC_THRESHOLDS)  # a long-lived process receiving many small messages
    if (cert is None) != (key is None):
        raise UsageError("--cert and --key go together")
    loaded: tuple[Rule, ...] = load_rules(rules) if rules else ()
    settings = BrokerSettings.from_url(
        broker,
        ca=ca,
        cert=cert,
        key=key,
        username=username,
        password=_password(password_file),
        client_id=client_id or f"edgeship-monitor-{socket.gethostname()}"[:64],
    )
    hook_runner = HookRunner.from_command(hook, hook_timeout) if hook else None
    writer = WriterSettings(db=db, prefix=prefix, rules=loaded, check_interval_s=check_interval,
                            json_log=json_log)  # fmt: skip
    watcher = Monitor(settings, writer, hook_runner, MonitorSettings(share=share))
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: watcher.stop())
    logging.getLogger(__name__).info(
        "monitoring %s into %s (%d alert rules)", settings.describe(), redact(db), len(loaded)
    )
    counts = watcher.run().to_dict()
    click.echo(json.dumps(counts) if json_log else _summary(counts))


@fleet.command()
@db_option
@click.option("--fleet", "fleet_name", metavar="FLEET", help="Only this fleet.")
@json_option
def status(db: str, fleet_name: Optional[str], as_json: bool) -> None:
    """Devices: online, models and versions, last seen, p95 latency, errors, drift, alerts."""
    with open_store(db) as store:
        rows = fleet_status(store, fleet_name)
    emit(rows, as_json, lambda r: click.echo(status_table(r)))


@fleet.command()
@db_option
@click.option("--all", "show_all", is_flag=True, help="Cleared alerts too.")
@click.option("--limit", default=1000, show_default=True, type=click.IntRange(min=1),
              help="Most alerts shown (newest first).")  # fmt: skip
@json_option
def alerts(db: str, show_all: bool, limit: int, as_json: bool) -> None:
    """Open alerts (newest first), or all of them with --all."""
    with open_store(db) as store:
        found = store.alerts(include_cleared=show_all, limit=limit)
    emit(alert_rows(found), as_json, lambda _: click.echo(alerts_table(found)))
